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
import stat
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
            if "after" in reply:  # the arguments as the call left them (in-process, the caller sees that)
                _reflect(args, kwargs, reply["after"])
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


# Exceptions that end an iteration where they are raised (``map``, ``zip``, a ``for`` loop over a
# candidate's results, ``all``): re-raised in the judge they would end a table of cases as if it were
# exhausted, so no assert runs. Like PEP 479 for generators, they arrive as CandidateError.
CONTROL_FLOW = (StopIteration, StopAsyncIteration)


_MUTABLE = (list, dict, set, bytearray)


def _reflect(args: tuple, kwargs: dict, after) -> None:
    """Apply what the call did to its mutable arguments (lists, dicts, sets, bytearrays the test passed)
    to the test's own objects, in place, as an in-process call would have: a hidden test that checks
    an argument after the call sees what the candidate did to it. ``after`` is the worker's plain-data
    copy of the arguments after the call (``{"args": wire, "kwargs": wire}``); anything malformed is a
    CandidateError. Only objects the test handed over change, and only to plain data."""
    if type(after) is not dict:
        raise CodecError("malformed arguments after the call")
    if after.get("nonplain"):
        raise CandidateError(f"the call left an argument holding a value that is not plain data: "
                             f"{str(after['nonplain'])[:200]}")
    new_args, new_kwargs = decode(after.get("args")), decode(after.get("kwargs"))
    if type(new_args) is not list or type(new_kwargs) is not dict or len(new_args) != len(args) \
            or set(new_kwargs) != set(kwargs):
        raise CodecError("arguments after the call do not match the call")
    pairs = list(zip(args, new_args)) + [(kwargs[k], new_kwargs[k]) for k in kwargs]
    for old, new in pairs:
        if type(old) not in _MUTABLE:
            continue
        if type(new) is not type(old):
            raise CodecError("an argument changed type during the call")
        if old == new:
            continue
        if type(old) in (list, bytearray):
            old[:] = new
        else:
            old.clear()
            old.update(new)


def _exception(name, msg) -> BaseException:
    klass = getattr(builtins, name, None) if type(name) is str else None
    text = msg if type(msg) is str else ""
    if isinstance(klass, type) and issubclass(klass, Exception) and not issubclass(klass, CandidateError) \
            and not issubclass(klass, CONTROL_FLOW):
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


# Where the judge works: a tmpfs that only the judge's UID can enter (mode 0700, owned by it; the
# container settings mount it, orchestrator/sandbox/container.py). The candidate's UID never had
# write access to it or to any of its ancestors (``/`` is the read-only root), so no ``conftest.py``,
# ``pytest.ini``, ``pyproject.toml``, ``tox.ini``, ``setup.cfg`` or ``__pycache__`` the candidate
# planted can lie on the judge's rootdir, inifile or conftest path.
JUDGE_HOME = "/rsi-judge"
# The judge's own pytest: a pinned release (sandbox_image/judge-requirements.txt) with its own copies
# of pluggy, iniconfig, packaging and pygments, first on the judge's path, imported before any
# proxy exists; nothing of the workspace is ever on this path.
JUDGE_PYTEST = "/opt/rsi/judge-pytest"
# What pytest and Python read from the environment: the supervisor starts the judge with a fixed
# environment (supervisor.BASE_ENV) and ``python -I`` (no PYTHON* variables, no user site, no
# current directory on sys.path); these are dropped here as well.
DROPPED_ENV = ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DEBUG", "PYTEST_CURRENT_TEST", "PYTEST_THEME",
               "PYTEST_THEME_MODE", "PY_COLORS", "NO_COLOR", "FORCE_COLOR", "TMPDIR", "TEMP", "TMP",
               "PYTHONSTARTUP", "PYTHONPATH", "PYTHONHOME", "PYTHONPYCACHEPREFIX", "PYTHONUSERBASE",
               "PYTHONBREAKPOINT", "PYTHONINSPECT", "COLUMNS", "CI", "BUILD_NUMBER")
JUDGE_INI = "[pytest]\npython_files = *.py\naddopts =\n"


class Refused(Exception):
    """The judge's own ground is not out of the candidate's reach: no judged test runs."""


def private_root(base: str = JUDGE_HOME) -> str:
    """A fresh directory for this run under ``base``, after proving that ``base`` belongs to this
    UID alone (mode 0700, no symlink) and that every ancestor is root's and writable by no one
    else. Anything else raises ``Refused``: the judge then runs nothing (an error, never a pass)."""
    uid = os.getuid()
    try:
        st = os.lstat(base)
    except OSError as exc:
        raise Refused(f"{base} is missing ({exc.strerror}): the container lacks the judge's private tmpfs")
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        raise Refused(f"{base} is not a directory of the judge's UID alone "
                      f"(uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})")
    parent = os.path.dirname(base.rstrip("/")) or "/"
    while True:
        pst = os.lstat(parent)
        if not stat.S_ISDIR(pst.st_mode) or pst.st_uid != 0 or pst.st_mode & 0o022:
            raise Refused(f"{parent}, above the judge's directory, is writable by others or not root's")
        if parent == "/":
            break
        parent = os.path.dirname(parent)
    return tempfile.mkdtemp(prefix="rsi-judge-", dir=base)  # 0700


def pytest_args(tests_dir: str, ini: str) -> list[str]:
    """The judge's pytest command line: an explicit ini (no inifile or rootdir search up the tree),
    rootdir and confcutdir at the judged directory (no ``conftest.py`` from any ancestor), no cache,
    only the reporter as a plugin (entry-point plugins are off: PYTEST_DISABLE_PLUGIN_AUTOLOAD)."""
    return ["-c", ini, "--rootdir", tests_dir, "--confcutdir", tests_dir, "-p", __package__ + ".reporter",
            "-p", "no:cacheprovider", "-q", "--color=no", "-o", "python_files=*.py", tests_dir]


def main() -> int:
    cfg = json.loads(sys.stdin.read())
    req_fd = int(os.environ.pop("RSI_REQ_FD"))
    resp_fd = int(os.environ.pop("RSI_RESP_FD"))
    stats_fd = int(os.environ.pop("RSI_STATS_FD"))
    for name in DROPPED_ENV:
        os.environ.pop(name, None)
    try:
        private = private_root(os.environ.pop("RSI_JUDGE_HOME", "") or JUDGE_HOME)
    except Refused as exc:
        sys.stderr.write(f"rsi-judge: refused: {exc}\n")
        return 3
    os.environ["TMPDIR"] = tempfile.tempdir = private
    os.environ["HOME"] = private
    tests_dir = os.path.join(private, "judged")
    os.mkdir(tests_dir, 0o700)
    _write_tests(tests_dir, cfg["tests"])
    ini = os.path.join(private, "judge.ini")
    with open(ini, "w", encoding="utf-8") as fh:
        fh.write(JUDGE_INI)
    os.chdir(tests_dir)
    if os.path.isdir(JUDGE_PYTEST) and JUDGE_PYTEST not in sys.path:
        sys.path.insert(0, JUDGE_PYTEST)
    import pytest  # and its dependencies: before the finder, so no workspace name can stand in for them

    channel = _Channel(req_fd, resp_fd)
    roots = {m for m in cfg.get("modules", []) if m not in sys.modules and m not in sys.stdlib_module_names}
    sys.meta_path.insert(0, _Finder(roots, channel))
    code = pytest.main(pytest_args(tests_dir, ini))
    write_frame(stats_fd, json.dumps(STATS).encode())
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
