"""The candidate's side of the judge: imports the workspace's modules and serves calls.

Runs as the candidate's UID (never the judge's), started by the supervisor for the judged
phase. Each request frame names a module, a function and plain-data arguments; the reply
frame carries the plain-data return value, or the builtin type of the exception raised.
Everything here shares a process with the candidate's code, so nothing it says is
trusted: the judge decodes replies strictly and compares them with expected values the
candidate never sees.
"""

from __future__ import annotations

import builtins
import importlib
import json
import os
import sys

import itertools

from .codec import ITER_ITEMS, CodecError, decode, encode, loads, read_frame, write_frame

WORKSPACE = "/workspace"
MSG_CHARS = 2000


def builtin_exception_name(exc: BaseException) -> str:
    for klass in type(exc).__mro__:
        if getattr(builtins, klass.__name__, None) is klass:
            return klass.__name__
    return "Exception"


def _message(exc: BaseException) -> str:
    try:
        text = str(exc)
        return text[:MSG_CHARS] if type(text) is str else ""
    except BaseException:  # noqa: BLE001 - a hostile __str__
        return ""


def serve(req_fd: int, resp_fd: int) -> None:
    dumps = json.dumps
    while True:
        frame = read_frame(req_fd)
        if frame is None:
            return
        try:
            req = loads(frame)
            call_id = req["id"]
            args, kwargs = decode(req["args"]), decode(req["kwargs"])
        except (CodecError, KeyError, TypeError):
            write_frame(resp_fd, dumps({"id": None, "raise": "RuntimeError", "msg": "bad request"}).encode())
            continue
        try:
            module = importlib.import_module(req["mod"])
            result = getattr(module, req["fn"])(*args, **kwargs)
            if req.get("iter") is True:  # the judge asked for the items of an iterator, as a list
                result = list(itertools.islice(result, ITER_ITEMS))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the judge
            reply = {"id": call_id, "raise": builtin_exception_name(exc), "msg": _message(exc)}
        else:
            try:
                reply = {"id": call_id, "ok": encode(result)}
            except CodecError as exc:
                reply = {"id": call_id, "nonplain": str(exc)[:200]}
            except BaseException as exc:  # noqa: BLE001 - e.g. RecursionError in a cyclic value
                reply = {"id": call_id, "nonplain": type(exc).__name__}
        reply["after"] = _after(args, kwargs)
        write_frame(resp_fd, dumps(reply).encode())


def _after(args: list, kwargs: dict) -> dict:
    """The call's arguments as it left them (the judge applies changes to its own lists, dicts, sets
    and bytearrays, as an in-process caller would see them)."""
    try:
        return {"args": encode(list(args)), "kwargs": encode(dict(kwargs))}
    except CodecError as exc:
        return {"nonplain": str(exc)[:200]}
    except BaseException as exc:  # noqa: BLE001
        return {"nonplain": type(exc).__name__}


def main() -> int:
    req_fd = int(os.environ.pop("RSI_REQ_FD"))
    resp_fd = int(os.environ.pop("RSI_RESP_FD"))
    sys.path.insert(0, os.environ.pop("RSI_WORKSPACE", WORKSPACE))
    sys.argv = ["worker"]
    serve(req_fd, resp_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
