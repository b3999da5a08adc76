"""Untrusted text (a model's reply, a container's output) on its way to disk and to people.

Three rules, shared by every file a run keeps and every renderer that shows one:

- **Lone surrogates are not text.** A JSON ``\\udc80`` escape (from a container's report or an
  HTTP reply) decodes to a Python ``str`` that cannot be encoded as UTF-8. Where text is kept as
  text (the agent's state, prompts) ``escape_surrogates`` replaces each one by its backslash escape
  (``\\udc80``, six visible characters), like Python's ``backslashreplace``; where a file must keep
  the exact value (the audit log), ``json_line`` writes it as a JSON ``\\u`` escape, which
  ``json.loads`` turns back into the same value.
- **A JSON Lines record is one line for every reader.** ``json_line`` also writes U+2028, U+2029
  and U+0085 (which ``str.splitlines`` treats as line ends) as ``\\u`` escapes; readers split on
  ``\\n`` only (``jsonl_lines``).
- **Nothing a model wrote reaches a terminal raw.** ``printable`` shows control characters (C0,
  DEL, C1: ANSI/OSC escape sequences, BEL, NEL), bidirectional overrides and lone surrogates as
  escapes, so no reply can move the cursor, set the window title, hide text or reorder it.
"""

from __future__ import annotations

import json
import re

_SURROGATE = re.compile("[\ud800-\udfff]")
# JSON-escaped in files: lone surrogates (not encodable) and the characters str.splitlines splits at
# that JSON leaves raw (C0 line ends are always escaped by json.dumps).
_JSON_RAW = re.compile("[\ud800-\udfff\u2028\u2029\u0085]")

_CONTROL = {c: f"\\x{c:02x}" for c in list(range(0, 32)) + [127] if c not in (9,)}
_CONTROL.update({c: f"\\u{c:04x}" for c in range(0x80, 0xA0)})
_CONTROL.update({c: f"\\u{c:04x}" for c in (0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E,
                                                0x2066, 0x2067, 0x2068, 0x2069, 0x061C)})
_CONTROL.update({c: f"\\u{c:04x}" for c in range(0xD800, 0xE000)})
_CONTROL_KEEP_NEWLINES = {c: v for c, v in _CONTROL.items() if c != 10}


def _u_escape(match: re.Match) -> str:
    return f"\\u{ord(match.group()):04x}"


def has_surrogates(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def escape_surrogates(text: str) -> str:
    """``text`` with each lone surrogate replaced by its backslash escape (``\\udc80``)."""
    return _SURROGATE.sub(_u_escape, text) if _SURROGATE.search(text) else text


def escape_surrogates_in(value):
    """``value`` (JSON-like: dicts, lists, tuples, strings) with ``escape_surrogates`` applied to every
    string in it, keys included; other values are returned as they are."""
    if isinstance(value, str):
        return escape_surrogates(value)
    if isinstance(value, dict):
        return {escape_surrogates_in(k): escape_surrogates_in(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(escape_surrogates_in(v) for v in value)
    return value


def json_line(obj, **kwargs) -> str:
    """``json.dumps(obj, ensure_ascii=False, **kwargs)`` that is always one line of valid UTF-8 for
    every reader: lone surrogates and U+2028/U+2029/U+0085 are written as ``\\u`` escapes (exact:
    ``json.loads`` gives back ``obj``)."""
    text = json.dumps(obj, ensure_ascii=False, **kwargs)
    # These characters are never JSON syntax, so they only occur inside strings, where an escape means the same.
    return _JSON_RAW.sub(_u_escape, text) if _JSON_RAW.search(text) else text


def jsonl_lines(text: str) -> list[str]:
    """The records of a JSON Lines text: split on ``\\n`` only (never ``str.splitlines``, which also
    splits at U+2028, U+0085, form feeds and more, inside a record's strings)."""
    return text.split("\n")


def printable(text, keep_newlines: bool = False) -> str:
    """Untrusted text (a reply, test ids, messages, output from a sandbox) for a terminal: control and
    bidirectional characters and lone surrogates shown as escapes, so nothing can redraw the screen.
    Tabs are kept; newlines too with ``keep_newlines`` (a diff, shown line by line)."""
    return str(text).translate(_CONTROL_KEEP_NEWLINES if keep_newlines else _CONTROL)
