"""The SFT archive: successful prompt -> response pairs in TRL's conversational format.

One JSON line per sample: ``{"messages": [...], "provenance": {...}, "sha256": ...}``.
Each line goes out in one ``write`` on an O_APPEND descriptor and is fsync'd; a torn
last line (a crash mid-write) is cut off when the archive is opened. Samples are
de-duplicated by the SHA-256 of their messages, so replaying a step after a crash never
adds a second copy.

Lines are written with ``text.json_line`` (U+2028/U+2029/U+0085 as ``\\u`` escapes, so a record is one
line for every reader); readers split on ``\\n`` only. A sample holding a lone surrogate (not
Unicode text: no tokenizer can train on it, and it came from no token a model generated) is refused,
not archived: ``add`` returns False and ``refused`` says why.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import structlog

from orchestrator.store.text import has_surrogates, json_line, jsonl_lines

log = structlog.get_logger()


def messages_digest(messages: list[dict]) -> str:
    # surrogatepass: the same digest as before for all text (a lone surrogate could not be hashed at all)
    text = json.dumps(messages, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def refusal(messages: list[dict]) -> str | None:
    """Why ``messages`` cannot be a training sample (None: it can)."""
    for n, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(content, str):
            return f"message {n} has no text content"
        if has_surrogates(content):
            return (f"message {n} ({m.get('role')}) holds a lone surrogate: not Unicode text, no tokenizer "
                    "can train on it")
    return None


def append_line(path: Path, line: str) -> None:
    """Append one whole line durably (single write on O_APPEND, then fsync)."""
    data = (line + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)


def cut_torn_tail(path: Path) -> bool:
    """Remove a last line that lacks its newline (written when the process died)."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return False
        fh.truncate(data.rfind(b"\n") + 1)
        fh.flush()
        os.fsync(fh.fileno())
    return True


class Archive:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cut_torn_tail(self.path)
        self.digests: set[str] = set()
        self.refused: str | None = None  # why the last add refused its sample (None: it did not)
        if self.path.exists():
            for line in jsonl_lines(self.path.read_bytes().decode("utf-8")):
                if line.strip():
                    self.digests.add(json.loads(line)["sha256"])

    def __len__(self) -> int:
        return len(self.digests)

    def add(self, messages: list[dict], provenance: dict) -> bool:
        """Append a sample; False when the same messages are already archived, or when the sample is
        refused (``refused`` then says why)."""
        self.refused = refusal(messages)
        if self.refused:
            log.warning("archive.refused", reason=self.refused, provenance=provenance)
            return False
        digest = messages_digest(messages)
        if digest in self.digests:
            return False
        line = json_line({"messages": messages, "provenance": provenance, "sha256": digest}, sort_keys=True)
        append_line(self.path, line)
        self.digests.add(digest)
        return True
