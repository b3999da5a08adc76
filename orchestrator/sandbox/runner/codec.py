"""Plain data across a process boundary, and bounded JSON. Stdlib only.

The judge and the candidate's worker exchange values through this codec. Only plain data
crosses: None, bool, int, float (nan, inf and -0.0 included), str, bytes, list, tuple,
dict, set and frozenset, nested, with bounded size and depth. Types are checked exactly
(``type(x) is str``, never ``isinstance``), so a ``str`` subclass with a lying ``__eq__`` is
refused by an honest encoder; and the judge never trusts the encoder anyway (it runs in
the candidate's process): ``decode`` builds fresh builtins from tagged JSON and refuses
anything else. Nothing here unpickles, evaluates or imports.

Wire format (JSON): null/true/false/int/str as themselves; ``{"f": repr}`` float,
``{"b": base64}`` bytes, ``{"l": [...]}`` list, ``{"t": [...]}`` tuple, ``{"d": [[k, v], ...]}``
dict, ``{"s": [...]}`` set, ``{"fs": [...]}`` frozenset.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import struct
import time

MAX_DEPTH = 64
MAX_ITEMS = 200_000          # containers' elements, summed over one value
MAX_FRAME = 8 * 1024 * 1024  # bytes of one encoded message
MAX_INT_DIGITS = 4000
ITER_ITEMS = 1000          # a judged call that asks for a list gets an iterator's first items

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")


class CodecError(ValueError):
    """A value that is not plain data, or a message that is not well formed."""


def too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """Bracket depth outside JSON strings above ``limit`` (a linear guard, not a parser)."""
    depth = 0
    for m in _BRACKET.finditer(_STRING.sub("", text)):
        if m.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth = max(0, depth - 1)
    return False


def loads(data: bytes | str, max_bytes: int = MAX_FRAME, max_depth: int = MAX_DEPTH):
    """``json.loads`` for untrusted input: size and depth checked first; every failure is a
    ``CodecError`` (never RecursionError, MemoryError or a UnicodeDecodeError)."""
    if len(data) > max_bytes:
        raise CodecError(f"message larger than {max_bytes} bytes")
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        if too_deep(text, max_depth):
            raise CodecError(f"message nested deeper than {max_depth}")
        return json.loads(text)
    except CodecError:
        raise
    except (ValueError, RecursionError, MemoryError, TypeError) as exc:
        raise CodecError(f"not JSON ({type(exc).__name__})") from None


def encode(value) -> object:
    """Plain value -> JSON-able tree; ``CodecError`` names the first non-plain type."""
    budget = [MAX_ITEMS]

    def enc(x, depth: int):
        if depth > MAX_DEPTH - 2:
            raise CodecError(f"value nested deeper than {MAX_DEPTH - 2}")
        t = type(x)
        if x is None or t is bool or t is str:
            return x
        if t is int:
            if abs(x) >= 10 ** MAX_INT_DIGITS:
                raise CodecError("integer too large")
            return x
        if t is float:
            return {"f": repr(x)}
        if t is bytes:
            return {"b": base64.b64encode(x).decode("ascii")}
        if t in (list, tuple, set, frozenset):
            budget[0] -= len(x)
            if budget[0] < 0:
                raise CodecError("value has too many elements")
            tag = {list: "l", tuple: "t", set: "s", frozenset: "fs"}[t]
            return {tag: [enc(v, depth + 1) for v in x]}
        if t is dict:
            budget[0] -= len(x)
            if budget[0] < 0:
                raise CodecError("value has too many elements")
            return {"d": [[enc(k, depth + 2), enc(v, depth + 2)] for k, v in x.items()]}
        raise CodecError(f"not plain data: {t.__module__}.{t.__qualname__}"[:200])

    return enc(value, 0)


_FLOAT = re.compile(r"^-?(?:\d+\.\d*(?:e[+-]?\d+)?|\d+e[+-]?\d+|inf|nan)$")


def decode(tree) -> object:
    """JSON tree -> fresh builtins. Anything but the wire format is a ``CodecError``."""
    budget = [MAX_ITEMS]

    def dec(x, depth: int):
        if depth > MAX_DEPTH:
            raise CodecError("value nested too deep")
        t = type(x)
        if x is None or t is bool or t is str:
            return x
        if t is int:
            return x
        if t is dict and len(x) == 1:
            (tag, body), = x.items()
            if tag == "f" and type(body) is str and _FLOAT.match(body):
                return float(body)
            if tag == "b" and type(body) is str:
                try:
                    return base64.b64decode(body.encode("ascii"), validate=True)
                except (ValueError, UnicodeEncodeError):
                    raise CodecError("bad bytes") from None
            if type(body) is list:
                budget[0] -= len(body)
                if budget[0] < 0:
                    raise CodecError("value has too many elements")
                try:
                    if tag == "l":
                        return [dec(v, depth + 1) for v in body]
                    if tag == "t":
                        return tuple(dec(v, depth + 1) for v in body)
                    if tag == "s":
                        return {dec(v, depth + 1) for v in body}
                    if tag == "fs":
                        return frozenset(dec(v, depth + 1) for v in body)
                    if tag == "d":
                        out = {}
                        for pair in body:
                            if type(pair) is not list or len(pair) != 2:
                                raise CodecError("bad dict item")
                            out[dec(pair[0], depth + 1)] = dec(pair[1], depth + 1)
                        return out
                except TypeError:  # unhashable set element or dict key
                    raise CodecError("unhashable element") from None
        raise CodecError("not plain data on the wire")

    return dec(tree, 0)


# ----- frames: 4-byte big-endian length, then the payload -----

def write_frame(fd: int, payload: bytes) -> None:
    data = struct.pack(">I", len(payload)) + payload
    while data:
        data = data[os.write(fd, data):]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise TimeoutError
        try:
            chunk = os.read(fd, min(n - len(buf), 1 << 20))
        except InterruptedError:
            continue
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def read_frame(fd: int, max_bytes: int = MAX_FRAME, deadline: float | None = None) -> bytes | None:
    """One frame, or None at end of stream. ``TimeoutError`` past ``deadline`` (monotonic);
    ``CodecError`` for a frame larger than ``max_bytes``."""
    head = _read_exact(fd, 4, deadline)
    if head is None:
        return None
    (size,) = struct.unpack(">I", head)
    if size > max_bytes:
        raise CodecError(f"frame of {size} bytes is larger than {max_bytes}")
    return _read_exact(fd, size, deadline)
