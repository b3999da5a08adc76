"""Hash-chained audit log: one structlog JSON line per model reply and per sandbox run.

Each line carries ``seq`` and ``prev``, the SHA-256 of the previous line's bytes (the
canonical JSON: sorted keys, no spaces); the first line's ``prev`` is 64 zeros. A head
file beside the log (``audit.jsonl.head``: line count and last hash, replaced
atomically after each append) anchors the end, so removing or editing the last line
shows too. ``verify`` names the first bad line.

Lines are ``text.json_line``: a reply's lone surrogates and U+2028/U+2029/U+0085 are written as
JSON ``\\u`` escapes, so every event is kept exactly, as one line of valid UTF-8 (a log written
before, with those three characters raw, still verifies).
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import structlog

from orchestrator.store.archive import append_line, cut_torn_tail
from orchestrator.store.text import json_line, jsonl_lines

GENESIS = "0" * 64


def canonical(obj: dict) -> str:
    return json_line(obj, sort_keys=True, separators=(",", ":"))


def _legacy_canonical(obj: dict) -> str:
    """The canonical form before U+2028/U+2029/U+0085 were escaped."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sha(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


class _LineFile:
    """structlog logger that appends each whole line in one write and fsyncs it."""

    def __init__(self, path: Path):
        self.path = path

    def msg(self, message: str) -> None:
        append_line(self.path, message)

    info = msg

    def close(self) -> None:
        pass


class AuditLog:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + ".head")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.recovered = cut_torn_tail(self.path)  # a line torn by a crash was never written
        self.seq, self.prev = self._resume()
        self._file = _LineFile(self.path)
        self._log = structlog.wrap_logger(
            self._file, processors=[self._stamp, self._chain, self._render], context_class=dict,
            wrapper_class=structlog.BoundLogger)  # never level-filtered

    def _resume(self) -> tuple[int, str]:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0, GENESIS
        result = verify(self.path)
        if not result.ok:
            raise RuntimeError(f"refusing to append to a tampered audit log: {result.message}")
        return result.lines, result.last_hash

    # structlog processors
    @staticmethod
    def _stamp(_, __, event: dict) -> dict:
        event["ts"] = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        return event

    def _chain(self, _, __, event: dict) -> dict:
        event["seq"] = self.seq
        event["prev"] = self.prev
        return event

    def _render(self, _, __, event: dict) -> str:
        line = canonical(event)
        self.seq += 1
        self.prev = _sha(line)
        return line

    def append(self, event: str, **fields) -> None:
        self._log.info(event, **fields)
        head = {"lines": self.seq, "last": self.prev}
        tmp = self.head_path.with_suffix(".tmp")
        tmp.write_text(canonical(head))
        os.replace(tmp, self.head_path)

    def close(self) -> None:
        self._file.close()


class VerifyResult:
    def __init__(self, ok: bool, lines: int, last_hash: str, bad_line: int | None = None, message: str = ""):
        self.ok, self.lines, self.last_hash, self.bad_line, self.message = ok, lines, last_hash, bad_line, message


def _read_head(path: Path) -> dict | None:
    head_path = path.with_name(path.name + ".head")
    if not head_path.exists():
        return None
    try:
        head = json.loads(head_path.read_text())
    except ValueError:
        return {}
    return head if isinstance(head, dict) else {}


def verify(path: Path | str) -> VerifyResult:
    """Check the chain and the head; ``bad_line`` (1-based) is the first line that is not
    vouched for: wrong seq or prev, not canonical JSON, or its hash is not the next line's
    ``prev`` (the head's ``last`` for the final line)."""
    path = Path(path)
    lines: list[str] = []
    problems: dict[int, str] = {}
    seq_ahead: set[int] = set()
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                problems.setdefault(n, "incomplete line")
            line = raw.rstrip(b"\n").decode("utf-8", "replace")
            lines.append(line)
            try:
                obj = json.loads(line)
            except ValueError:
                problems.setdefault(n, "not JSON")
                continue
            if not isinstance(obj, dict) or obj.get("seq") != n - 1:
                problems.setdefault(n, "out of sequence (a line was inserted, deleted or moved here)")
                seq = obj.get("seq") if isinstance(obj, dict) else None
                if isinstance(seq, int) and seq > n - 1:
                    seq_ahead.add(n)  # lines are missing before this one
            elif canonical(obj) != line and _legacy_canonical(obj) != line:
                problems.setdefault(n, "not in canonical form (edited)")
    n = len(lines)
    hashes = [_sha(line) for line in lines]
    prevs = []
    for line in lines:
        try:
            obj = json.loads(line)
            prevs.append(obj.get("prev") if isinstance(obj, dict) else None)
        except ValueError:
            prevs.append(None)
    head = _read_head(path)
    head_lines = head.get("lines") if isinstance(head, dict) and isinstance(head.get("lines"), int) else None
    if n and head is None:
        problems.setdefault(n, "head file is missing")
    elif head is not None and head_lines is None and n:
        problems.setdefault(1, "head file is unreadable")
    elif head_lines is not None and head_lines > n:
        problems.setdefault(n + 1, f"log ends early: the head says {head_lines} lines")
    elif head_lines is not None and n - head_lines > 1:
        problems.setdefault(head_lines + 1, f"log is longer than the head says ({head_lines} lines)")
    if n and prevs[0] != GENESIS:
        problems.setdefault(1, "first line does not start the chain")
    last = (head or {}).get("last")
    for i in range(n):  # line i+1 is vouched for by the next line's prev, or by the head
        if head_lines is not None and 0 < head_lines < n and i == head_lines - 1 and last != hashes[i]:
            problems.setdefault(i + 1, "edited (its hash is not the one the head recorded)")
        if i + 1 < n:
            voucher = prevs[i + 1]
        elif head_lines == n:
            voucher = last
        else:
            break  # head one line behind (crash between append and head update), or reported above
        if voucher != hashes[i]:
            later = prevs[i + 2] if i + 2 < n else (last if head_lines == n else hashes[i + 1])
            next_ok = i + 1 < n and later == hashes[i + 1]
            if i + 2 in seq_ahead:
                blamed = i + 2  # lines were removed just before it: the gap explains the broken link
            else:
                blamed = i + 1 if (i + 1 == n or next_ok) else i + 2
            problems.setdefault(blamed, "edited (its hash does not match the chain)")
    if problems:
        bad = min(problems)
        return VerifyResult(False, n, hashes[-1] if hashes else GENESIS, bad, f"line {bad}: {problems[bad]}")
    return VerifyResult(True, n, hashes[-1] if hashes else GENESIS)


def read_events(path: Path | str) -> list[dict]:
    """The log's events, in order. Split on ``\\n`` only; a line that is not a JSON object (a log
    edited by hand: ``verify`` names it) is shown as an ``unreadable_line`` event, never a traceback."""
    events = []
    lines = jsonl_lines(Path(path).read_bytes().decode("utf-8", "replace"))
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        events.append(obj if isinstance(obj, dict) else {"event": "unreadable_line", "line": n})
    return events
