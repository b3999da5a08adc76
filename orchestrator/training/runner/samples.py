"""Read and validate the SFT archive before any model is loaded.

Records are split on ``\\n`` only: ``str.splitlines`` would also split at U+2028, U+2029, U+0085,
form feeds and more, which an archive written before they were escaped holds raw inside its strings.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

ROLES = {"system", "user", "assistant"}
_SURROGATE = re.compile("[\ud800-\udfff]")


class BadSamples(ValueError):
    """The samples file cannot be trained on; the message says why."""


def load_samples(path: Path, min_samples: int, max_samples: int, max_bytes: int) -> tuple[list[dict], str]:
    """(prompt-completion rows, sha256 of the file). Raises BadSamples with a clear message."""
    if not path.is_file():
        raise BadSamples(f"samples file {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise BadSamples("samples file is empty")
    if size > max_bytes:
        raise BadSamples(f"samples file is {size} bytes, more than the limit of {max_bytes}")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    rows = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadSamples(f"samples file is not UTF-8 (byte {exc.start})") from None
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise BadSamples(f"line {n}: not JSON ({exc.msg})") from None
        msgs = obj.get("messages") if isinstance(obj, dict) else None
        if not isinstance(msgs, list) or len(msgs) < 2:
            raise BadSamples(f"line {n}: needs a 'messages' list with a prompt and a reply")
        for m in msgs:
            if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
                raise BadSamples(f"line {n}: each message needs a role (system/user/assistant) and text content")
            if _SURROGATE.search(m["content"]):
                raise BadSamples(f"line {n}: a message holds a lone surrogate (not Unicode text)")
        if msgs[-1]["role"] != "assistant" or not msgs[-1]["content"].strip():
            raise BadSamples(f"line {n}: the last message must be the assistant's (non-empty) reply")
        rows.append({"prompt": msgs[:-1], "completion": [msgs[-1]]})
        if len(rows) > max_samples:
            raise BadSamples(f"more than {max_samples} samples")
    if len(rows) < min_samples:
        raise BadSamples(f"{len(rows)} samples, fewer than the minimum of {min_samples}")
    return rows, digest
