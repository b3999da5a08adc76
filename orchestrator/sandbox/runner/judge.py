"""The judge: runs the hidden tests in a process that never imports the candidate.

Started by the supervisor as the judge's own UID, with ``python3 -I`` (no workspace or
environment on ``sys.path``). It receives the hidden tests on stdin, writes them into a
private 0700 directory, and runs pytest on them in-process with the reporter plugin.
Importing any of the workspace's top-level modules (``from example import add``) yields a
proxy: calling ``add(2, 3)`` sends the plain-data arguments through the supervisor to a
worker that runs as the candidate's UID, and returns a fresh plain-data value (or raises
the same builtin exception type). A custom object, a function, a generator, a crash, a
hang or a malformed reply makes that call raise ``CandidateError``, so the test fails.

What the candidate cannot do from its worker: read these tests or any expected value (not
readable by its UID, never in its process), see, signal or trace this process (another
UID), or hand this process anything but plain data.
"""

from __future__ import annotations

import builtins
import importlib.abc
import importlib.machinery
import json
import os
import secrets
import sys
import tempfile
import types

from .codec import CodecError, decode, encode, loads, read_frame, write_frame

STATS = {"calls": 0, "nonplain": 0, "crashes": 0, "timeouts": 0, "malformed": 0, "raised": 0}


class CandidateError(Exception):
    """A call into the candidate's code that did not return plain data."""


class _Channel:
    def __init__(self, req_fd: int, resp_fd: int):
        self.req_fd, self.resp_fd = req_fd, resp_fd

    def call(self, module: str, name: str, args: tuple, kwargs: dict, iterate: bool = False):
        try:
            wire_args, wire_kwargs = encode(list(args)), encode(dict(kwargs))
        except CodecError as exc:
            raise TypeError(f"the judge passes only plain data to the candidate ({exc})") from None
        call_id = secrets.token_hex(8)
        STATS["calls"] += 1
        write_frame(self.req_fd, json.dumps(
            {"id": call_id, "mod": module, "fn": name, "args": wire_args, "kwargs": wire_kwargs,
             "iter": iterate}).encode())
        frame = read_frame(self.resp_fd)
        if frame is None or not frame:
            raise CandidateError("the supervisor closed the call channel")
        origin, body = frame[:1], frame[1:]
        if origin == b"B":  # the supervisor's own word: the worker died, hung or misbehaved
            kind = json.loads(body).get("error", "error")
            STATS["timeouts" if kind == "timeout" else "crashes"] += 1
            raise CandidateError(f"candidate call {module}.{name}: {kind}")
        try:
            reply = loads(body)
            if type(reply) is not dict or reply.get("id") != call_id:
                raise CodecError("reply does not answer this call")
            if "ok" in reply:
                return decode(reply["ok"])
            if "nonplain" in reply:
                STATS["nonplain"] += 1
                raise CandidateError(f"{module}.{name} returned a value that is not plain data: "
                                     f"{str(reply['nonplain'])[:200]}")
            if "raise" in reply:
                STATS["raised"] += 1
                raise _exception(reply.get("raise"), reply.get("msg"))
            raise CodecError("reply has no result")
        except CodecError as exc:
            STATS["malformed"] += 1
            raise CandidateError(f"{module}.{name}: malformed reply ({exc})") from None


def _exception(name, msg) -> BaseException:
    klass = getattr(builtins, name, None) if type(name) is str else None
    text = msg if type(msg) is str else ""
    if isinstance(klass, type) and issubclass(klass, Exception) and not issubclass(klass, CandidateError):
        try:
            return klass(text)
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs five arguments
            return CandidateError(f"candidate raised {name}: {text}")
    return CandidateError(f"candidate raised {str(name)[:100]}: {text}")


class RemoteFunction:
    """A function of the candidate's module, called out of process."""

    def __init__(self, channel: _Channel, module: str, name: str):
        self._channel, self._module, self.__name__ = channel, module, name
        self.__qualname__ = name

    def __call__(self, *args, **kwargs):
        return self._channel.call(self._module, self.__name__, args, kwargs)

    def rsi_list(self, *args, **kwargs) -> list:
        """The call's result iterated in the candidate's worker: its first ``ITER_ITEMS`` items, as a
        list of plain data (for functions that return iterators)."""
        return self._channel.call(self._module, self.__name__, args, kwargs, iterate=True)

    def __repr__(self) -> str:
        return f"<candidate function {self._module}.{self.__name__}>"


class ProxyModule(types.ModuleType):
    def __init__(self, name: str, channel: _Channel):
        super().__init__(name)
        self.__path__ = []  # a package, so submodules come through the finder too
        self._rsi_channel = channel

    def __getattr__(self, attr: str):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        fn = RemoteFunction(self._rsi_channel, self.__name__, attr)
        setattr(self, attr, fn)
        return fn


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: set[str], channel: _Channel):
        self.roots, self.channel = roots, channel

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".", 1)[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return ProxyModule(spec.name, self.channel)

    def exec_module(self, module):
        return None


def _write_tests(root: str, tests: dict) -> None:
    for rel, text in tests.items():
        parts = rel.split("/")
        if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"bad hidden test path {rel!r}")
        path = os.path.join(root, *parts)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)


def main() -> int:
    cfg = json.loads(sys.stdin.read())
    req_fd = int(os.environ.pop("RSI_REQ_FD"))
    resp_fd = int(os.environ.pop("RSI_RESP_FD"))
    stats_fd = int(os.environ.pop("RSI_STATS_FD"))
    private = tempfile.mkdtemp(prefix="rsi-judge-")  # 0700, this UID only
    os.environ["TMPDIR"] = tempfile.tempdir = private
    os.environ["HOME"] = private
    tests_dir = os.path.join(private, "judged")
    os.mkdir(tests_dir, 0o700)
    _write_tests(tests_dir, cfg["tests"])
    channel = _Channel(req_fd, resp_fd)
    roots = {m for m in cfg.get("modules", []) if m not in sys.modules and m not in sys.stdlib_module_names}
    sys.meta_path.insert(0, _Finder(roots, channel))
    os.chdir(tests_dir)
    import pytest

    code = pytest.main(["-p", __package__ + ".reporter", "-p", "no:cacheprovider", "-q", "--color=no",
                        "--rootdir", tests_dir, "-o", "python_files=*.py", tests_dir])
    write_frame(stats_fd, json.dumps(STATS).encode())
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
