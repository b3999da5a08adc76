"""Hash-chained audit log: one structlog JSON line per model reply and per sandbox run.

Each line carries ``seq`` and ``prev``, the SHA-256 of the previous line's bytes (the
canonical JSON: sorted keys, no spaces); the first line's ``prev`` is 64 zeros. A head
file beside the log (``audit.jsonl.head``: line count and last hash, replaced
atomically after each append) anchors the end, so removing or editing the last line
shows too. ``verify`` names the first bad line.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import structlog

GENESIS = "0" * 64


def canonical(obj: dict) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sha(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


class _FsyncFile:
    """structlog logger that appends whole lines and fsyncs each one."""

    def __init__(self, path: Path):
        self.fh = open(path, "a", encoding="utf-8")

    def msg(self, message: str) -> None:
        self.fh.write(message + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    info = msg

    def close(self) -> None:
        self.fh.close()


class AuditLog:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + ".head")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.seq, self.prev = self._resume()
        self._file = _FsyncFile(self.path)
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


def verify(path: Path | str) -> VerifyResult:
    """Check the chain and the head; ``bad_line`` is 1-based."""
    path = Path(path)
    prev, n = GENESIS, 0
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                return VerifyResult(False, n - 1, prev, n, f"line {n}: incomplete line")
            line = raw[:-1].decode("utf-8", "replace")
            try:
                obj = json.loads(line)
            except ValueError:
                return VerifyResult(False, n - 1, prev, n, f"line {n}: not JSON")
            if not isinstance(obj, dict) or obj.get("prev") != prev or obj.get("seq") != n - 1:
                return VerifyResult(False, n - 1, prev, n, f"line {n}: chain broken (edited, inserted, "
                                                           "deleted or reordered at or before this line)")
            if canonical(obj) != line:
                return VerifyResult(False, n - 1, prev, n, f"line {n}: not in canonical form")
            prev = _sha(line)
    head_path = path.with_name(path.name + ".head")
    if head_path.exists():
        try:
            head = json.loads(head_path.read_text())
        except ValueError:
            return VerifyResult(False, n, prev, n, "head file is not JSON")
        if head.get("lines") != n or head.get("last") != prev:
            bad = min(n + 1, head.get("lines", n) if isinstance(head.get("lines"), int) else n)
            return VerifyResult(False, n, prev, bad or 1,
                                f"line {bad or 1}: log does not end where the head says "
                                f"({head.get('lines')} lines); lines were removed or edited at the end")
    elif n:
        return VerifyResult(False, n, prev, n, "head file is missing")
    return VerifyResult(True, n, prev)


def read_events(path: Path | str) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
