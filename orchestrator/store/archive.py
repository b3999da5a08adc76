"""The SFT archive: successful prompt -> response pairs in TRL's conversational format.

One JSON line per sample: ``{"messages": [...], "provenance": {...}, "sha256": ...}``.
Each line goes out in one ``write`` on an O_APPEND descriptor and is fsync'd; a torn
last line (a crash mid-write) is cut off when the archive is opened. Samples are
de-duplicated by the SHA-256 of their messages, so replaying a step after a crash never
adds a second copy.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def messages_digest(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


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
        if self.path.exists():
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        self.digests.add(json.loads(line)["sha256"])

    def __len__(self) -> int:
        return len(self.digests)

    def add(self, messages: list[dict], provenance: dict) -> bool:
        """Append a sample; False when the same messages are already archived."""
        digest = messages_digest(messages)
        if digest in self.digests:
            return False
        line = json.dumps({"messages": messages, "provenance": provenance, "sha256": digest},
                          ensure_ascii=False, sort_keys=True)
        append_line(self.path, line)
        self.digests.add(digest)
        return True
