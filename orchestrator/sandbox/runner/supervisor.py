"""The sandbox's PID 1: runs the workspace's tests, then the judged tests, and prints one report.

Started as ``python3 -I -m rsi_sandbox`` from ``/``: nothing in the workspace is on its
``sys.path``, so no workspace file can stand in for it, for pytest or for the standard
library. Why PID 1: in a PID namespace, init cannot be killed by the processes it guards
(signals without a handler are dropped), it reaps orphans, and it is non-dumpable.

Two phases, each with its own wall clock:
1. **visible**: pytest on /workspace with the reporter plugin, as the candidate's UID. Its
   results are evidence from the candidate's own process (cross-checked, never trusted).
2. **judged** (when the host sends judged tests): the judge (``judge.py``) runs them as a
   second UID in a process that never imports the candidate; calls into the candidate go
   as plain data through this process's broker to a worker (``worker.py``) running as the
   candidate's UID, with a per-call timeout. The worker's death fails the call, not the judge.

In rsi's containers the supervisor is root with every capability dropped but SETUID,
SETGID, SETPCAP and KILL; each child is started through ``setpriv`` with another UID, no
supplementary groups, an empty bounding set and no-new-privs, so untrusted code holds no
capability at all. The standalone image (``docker run --rm -v "$PWD:/workspace:ro" IMAGE``)
runs as an unprivileged user: the visible phase only, same JSON report, exit 0 only on
``pass``. When the host passes RSI_NONCE, the report is authenticated with HMAC-SHA256
under that key, so nothing printed by the code under test can pass for it.
"""

from __future__ import annotations

import ast
import base64
import ctypes
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib

from .baseline import apply_skip_mode, skip_mode_from_env
from .codec import MAX_FRAME, CodecError, loads, read_frame, write_frame
from .grader import grade
from .testpaths import resolve as resolve_testpaths
from .testpaths import within

WORKSPACE = "/workspace"
PACKAGE = __package__
PLUGIN_MODULE = PACKAGE + ".reporter"
PYTHON = sys.executable or "/usr/bin/python3"
FRAME_TAG = "RSI1"
# The result stream's budget scales with the suite: EVENT_BYTES_BASE plus EVENT_BYTES_PER_TEST for
# each collected test (a passing test sends its node id twice: once collected, once in its call
# report; the reporter leaves out passing setups and teardowns), never more than MAX_EVENT_BYTES in
# all (the supervisor holds it in the container's memory, and the host reads it back in one frame).
EVENT_BYTES_BASE = 16 * 1024 * 1024
EVENT_BYTES_PER_TEST = 2048
MAX_EVENT_BYTES = 112 * 1024 * 1024
MAX_SCAN_BYTES = 1024 * 1024
MAX_WORKER_STARTS = 16
SKIP_DIRS = {"__pycache__", "node_modules", "site-packages"}
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0", "PYTHONSAFEPATH": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
_PR_SET_DUMPABLE = 4


def make_non_dumpable() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except OSError:
        return False


def expected_tests(root: str, paths: list[str] | None = None) -> list[str]:
    """Node-id prefixes of the tests visible in the source (a lower bound on what
    pytest must collect): module-level ``test*`` functions and ``test*`` methods of
    ``Test*`` classes without ``__init__``, in ``test_*.py`` / ``*_test.py`` files, inside the
    project's ``testpaths`` (``paths``, root-relative; all of the root when empty or None)."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS)
        for name in sorted(filenames):
            if not name.endswith(".py") or not (name.startswith("test_") or name.endswith("_test.py")):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if not within(rel, paths or []):
                continue
            try:
                if os.path.islink(path) or os.path.getsize(path) > MAX_SCAN_BYTES:
                    continue
                with open(path, "rb") as fh:
                    tree = ast.parse(fh.read())
            except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
                continue  # pytest reports the collection error itself
            found.extend(_tests_in_module(tree, rel))
    return found


def _disabled(body) -> bool:
    for node in body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__test__" for t in node.targets
        ):
            return True
    return False


def _tests_in_module(tree: ast.Module, rel: str) -> list[str]:
    if _disabled(tree.body):
        return []
    out = []
    funcs = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, funcs) and node.name.startswith("test"):
            out.append(f"{rel}::{node.name}")
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            if _disabled(node.body) or node.bases:
                continue  # inherited tests and custom bases are left to pytest
            members = [n for n in node.body if isinstance(n, funcs)]
            if any(m.name == "__init__" for m in members):
                continue
            out.extend(f"{rel}::{node.name}::{m.name}" for m in members if m.name.startswith("test"))
    return out


class _Reader(threading.Thread):
    """Drains a pipe: keeps whole lines (events) or a byte tail (output), counts the rest."""

    def __init__(self, fd: int, tail_bytes: int = 0, max_bytes: int = 0):
        super().__init__(daemon=True)
        self.fd, self.tail_bytes, self.max_bytes = fd, tail_bytes, max_bytes
        self.data = bytearray()
        self.total = 0
        self.overflow = False

    def run(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.total += len(chunk)
            if self.tail_bytes:
                self.data += chunk
                if len(self.data) > 2 * self.tail_bytes:
                    del self.data[: len(self.data) - self.tail_bytes]
            elif len(self.data) + len(chunk) <= self.max_bytes:
                self.data += chunk
            else:
                self.overflow = True
        os.close(self.fd)




def _oom_kills() -> int:
    for path in ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"):
        try:
            with open(path) as fh:
                for line in fh:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return 0


class Users:
    """Who runs what. As root (rsi's containers) every child runs under another UID with no
    capability left; as anyone else (the standalone image) children run as that user and the
    judged phase is refused, since the judge could not be kept apart from the candidate."""

    def __init__(self, candidate: str, judge: str):
        self.privileged = os.geteuid() == 0 and bool(candidate) and bool(judge)
        self.candidate, self.judge = candidate, judge

    def wrap(self, args: list[str], who: str) -> list[str]:
        if not self.privileged:
            return args
        uid, gid = (self.candidate if who == "candidate" else self.judge).split(":")
        drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--no-new-privs", "--"]
        # The candidate is the first the OOM killer takes (raising one's own score needs no privilege).
        return (["choom", "-n", "1000", "--"] if who == "candidate" else []) + drop + args


def kill_everything(proc=None) -> None:
    if os.getpid() == 1:
        try:
            os.kill(-1, signal.SIGKILL)  # every process in the namespace but init
        except OSError:
            pass
    if proc is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass


def run_phase(args: list[str], env: dict, cwd: str, timeout_s: float, tail_bytes: int,
              stdin_data: bytes | None = None, extra_fds: tuple = (), helper=None) -> dict:
    """Run one pytest process to its end (or the wall clock), then kill every leftover process.
    ``helper`` (the broker) gets the output pipe at start and is stopped before any kill.
    Returns the raw evidence: events from the reporter's pipe, exit status, output tail."""
    phase = spawn_phase(args, env, cwd, tail_bytes, stdin_data is not None, extra_fds)
    return finish_phase(phase, timeout_s, stdin_data, helper)


def spawn_phase(args: list[str], env: dict, cwd: str, tail_bytes: int, with_stdin: bool = False,
                extra_fds: tuple = ()) -> dict:
    """Start a phase's process with its result and output pipes (``finish_phase`` runs the clock)."""
    start = time.monotonic()
    oom_before = _oom_kills()
    res_r, res_w = os.pipe()
    out_r, out_w = os.pipe()
    events_reader = _Reader(res_r, max_bytes=MAX_EVENT_BYTES)
    output_reader = _Reader(out_r, tail_bytes=tail_bytes)
    events_reader.start()
    output_reader.start()
    try:
        proc = subprocess.Popen(
            args, cwd=cwd, env={**env, "RSI_RESULT_FD": str(res_w)},
            stdin=subprocess.PIPE if with_stdin else subprocess.DEVNULL,
            stdout=out_w, stderr=out_w, pass_fds=(res_w, *extra_fds), start_new_session=True,
        )
    finally:
        os.close(res_w)
    return {"proc": proc, "out_w": out_w, "events": events_reader, "output": output_reader,
            "tail_bytes": tail_bytes, "start": start, "oom_before": oom_before}


def finish_phase(phase: dict, timeout_s: float, stdin_data: bytes | None = None, helper=None,
                 restart_clock: bool = False) -> dict:
    proc, out_w, tail_bytes = phase["proc"], phase["out_w"], phase["tail_bytes"]
    events_reader, output_reader = phase["events"], phase["output"]
    start, oom_before = phase["start"], phase["oom_before"]
    if restart_clock:  # a pre-started (pooled) phase: its clock starts at the go
        start, oom_before = time.monotonic(), _oom_kills()
    if helper is not None:
        helper.begin(out_w)
    if stdin_data is not None:
        try:
            proc.stdin.write(stdin_data)
            proc.stdin.close()
        except OSError:
            pass
    timed_out = threading.Event()

    def stop_all() -> None:
        if helper is not None:
            helper.stop()  # no new process may start once the kill has begun
        kill_everything(proc)

    def on_timeout() -> None:
        timed_out.set()
        stop_all()

    timer = threading.Timer(timeout_s, on_timeout)
    timer.daemon = True
    timer.start()
    status = _wait_for(proc.pid)
    timer.cancel()
    stop_all()  # orphans never outlive the phase
    _reap_all()
    os.close(out_w)
    if helper is not None:
        helper.join(5)
    events_reader.join(5)
    output_reader.join(5)
    exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
    events, stream_errors = _parse_events(bytes(events_reader.data))
    budget = event_budget(events)
    if events_reader.overflow or events_reader.total > budget:
        stream_errors.append(f"more than {min(budget, MAX_EVENT_BYTES)} bytes of events "
                             f"({events_reader.total} sent)")
    return {
        "events": events,
        "stream_errors": stream_errors,
        "exit_code": exit_code,
        "timed_out": timed_out.is_set(),
        "oom_killed": _oom_kills() > oom_before,
        "output": bytes(output_reader.data[-tail_bytes:] if tail_bytes else b"").decode("utf-8", "replace"),
        "output_bytes": output_reader.total,
        "duration_s": time.monotonic() - start,
    }


def event_budget(events: list) -> int:
    """Bytes the result stream may take: a base plus a share per collected test (the first
    ``collected`` event's ids; a second one is tampering the grader reports), within MAX_EVENT_BYTES."""
    for ev in events:
        if isinstance(ev, dict) and ev.get("e") == "collected" and isinstance(ev.get("ids"), list):
            return min(MAX_EVENT_BYTES, EVENT_BYTES_BASE + EVENT_BYTES_PER_TEST * len(ev["ids"]))
    return EVENT_BYTES_BASE


def pytest_targets(paths: list[str]) -> list[str]:
    """pytest's path arguments: the project's testpaths inside the workspace, else the workspace."""
    return [f"{WORKSPACE}/{p}" for p in paths] or [WORKSPACE]


def candidate_paths(value: str | None = None) -> dict:
    """``PYTHONPATH`` for the candidate's processes (the visible pytest run, the judge's worker)
    from a derived project image's ``RSI_PYTHONPATH`` (``/workspace/src`` for a src layout): only
    entries inside /workspace, never for PID 1 or the judge."""
    value = os.environ.get("RSI_PYTHONPATH", "") if value is None else value
    keep = [p for p in value.split(":") if (p == WORKSPACE or p.startswith(WORKSPACE + "/")) and ".." not in p]
    return {"PYTHONPATH": ":".join(keep)} if keep else {}


def collect_evidence(timeout_s: float, tail_bytes: int, users: Users | None = None,
                     canaries: dict | None = None) -> dict:
    """Run pytest once on the workspace and return the raw evidence for the grader."""
    users = users or Users("", "")
    paths = resolve_testpaths(WORKSPACE)  # the project's testpaths, read before any candidate code runs
    expected = expected_tests(WORKSPACE, paths)
    args = users.wrap([PYTHON, "-P", "-s", "-B", "-m", "pytest", "-p", PLUGIN_MODULE, "-p", "no:cacheprovider",
                       "-q", "--rootdir", WORKSPACE, "--color=no", *pytest_targets(paths)], "candidate")
    evidence = run_phase(args, {**BASE_ENV, "HOME": "/tmp", **candidate_paths()}, WORKSPACE, timeout_s, tail_bytes)
    evidence["expected"] = expected
    evidence["canaries"] = canaries or {"pass": [], "xfail": []}
    return evidence


def workspace_modules(root: str = WORKSPACE) -> list[str]:
    """Top-level module names the workspace provides (what the judge proxies)."""
    names = set()
    roots = [root] + ([os.path.join(root, "src")] if os.path.isdir(os.path.join(root, "src"))
                      and not os.path.exists(os.path.join(root, "src", "__init__.py")) else [])
    for base in roots:
        try:
            entries = sorted(os.listdir(base))
        except OSError:
            continue
        for name in entries[:10000]:
            path = os.path.join(base, name)
            stem = name[:-3] if name.endswith(".py") else name
            if not stem.isidentifier() or name.startswith("."):
                continue
            if name.endswith(".py") and os.path.isfile(path):
                names.add(stem)
            elif os.path.isdir(path) and not os.path.islink(path) and name not in SKIP_DIRS:
                names.add(name)
    return sorted(names - {"src", "tests", "test"})


class _Worker:
    def __init__(self, proc, req_w: int, resp_r: int):
        self.proc, self.req_w, self.resp_r = proc, req_w, resp_r

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        for fd in (self.req_w, self.resp_r):
            try:
                os.close(fd)
            except OSError:
                pass


class Broker(threading.Thread):
    """Relays the judge's calls to a worker that runs the candidate's code. Replies are
    tagged ``W`` (the worker's bytes, untrusted, decoded by the judge) or ``B`` (this
    process's own word: crash, timeout, oversize, unavailable). A worker that dies, hangs
    or floods is killed and replaced at the next call (at most MAX_WORKER_STARTS times)."""

    def __init__(self, req_r: int, resp_w: int, users: Users, call_timeout_s: float, deadline: float):
        super().__init__(daemon=True)
        self.req_r, self.resp_w, self.users = req_r, resp_w, users
        self.call_timeout_s, self.deadline = call_timeout_s, deadline
        self.out_w = -1
        self.worker: _Worker | None = None
        self.counts = {"starts": 0, "crash": 0, "timeout": 0, "oversize": 0, "unavailable": 0}
        self._lock = threading.Lock()
        self._stopped = False
        self._close_on_begin: tuple = ()

    def begin(self, out_w: int) -> None:
        self.out_w = out_w  # workers' output joins the phase's output tail
        for fd in self._close_on_begin:  # the judge's ends, now that it holds them
            os.close(fd)
        self.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True

    def _spawn(self) -> _Worker:
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        try:
            proc = subprocess.Popen(
                self.users.wrap([PYTHON, "-P", "-s", "-B", "-m", PACKAGE + ".worker"], "candidate"),
                cwd=WORKSPACE, env={**BASE_ENV, "HOME": "/tmp", **candidate_paths(), "RSI_REQ_FD": str(req_r),
                                    "RSI_RESP_FD": str(resp_w), "RSI_WORKSPACE": WORKSPACE},
                stdin=subprocess.DEVNULL, stdout=self.out_w, stderr=self.out_w,
                pass_fds=(req_r, resp_w), start_new_session=True)
        except OSError:
            os.close(req_w)
            os.close(resp_r)
            raise
        finally:
            os.close(req_r)
            os.close(resp_w)
        self.counts["starts"] += 1
        return _Worker(proc, req_w, resp_r)

    def _fail(self, kind: str) -> bytes:
        if self.worker is not None:
            self.worker.kill()
            self.worker = None
        self.counts[kind] += 1
        return b"B" + json.dumps({"error": kind}).encode()

    def relay(self, frame: bytes) -> bytes:
        if self.worker is None:
            with self._lock:
                if self._stopped or self.counts["starts"] >= MAX_WORKER_STARTS:
                    return self._fail("unavailable")
                try:
                    self.worker = self._spawn()
                except (OSError, ValueError):
                    return self._fail("unavailable")
        try:
            write_frame(self.worker.req_w, frame)
            reply = read_frame(self.worker.resp_r, MAX_FRAME,
                               deadline=min(time.monotonic() + self.call_timeout_s, self.deadline))
        except TimeoutError:
            return self._fail("timeout")
        except CodecError:
            return self._fail("oversize")
        except OSError:
            return self._fail("crash")
        if reply is None:
            return self._fail("crash")
        return b"W" + reply

    def run(self) -> None:
        try:
            while True:
                frame = read_frame(self.req_r, MAX_FRAME)
                if frame is None:
                    break
                write_frame(self.resp_w, self.relay(frame))
        except (OSError, CodecError):
            pass
        finally:
            if self.worker is not None:
                self.worker.kill()


RUNNER_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # /opt/rsi in the image


def judge_command() -> list[str]:
    """The judge's interpreter: ``-I`` (no PYTHON* variables, no user site, no current directory) and
    ``-S`` (no site module: no site-packages on the path and no ``.pth`` file run, so nothing a derived
    image's dependencies install can execute in the judge); its path is the standard library, its own
    pinned pytest and this package, set here."""
    from .judge import JUDGE_PYTEST

    boot = (f"import sys; sys.path[:0] = [{JUDGE_PYTEST!r}, {RUNNER_ROOT!r}]; import runpy; "
            f"runpy.run_module({PACKAGE + '.judge'!r}, run_name='__main__', alter_sys=True)")
    return [PYTHON, "-I", "-S", "-B", "-c", boot]


def collect_judged(tests: dict, timeout_s: float, tail_bytes: int, call_timeout_s: float, users: Users) -> dict:
    """Run the judged tests in the judge process; the candidate is reached only through the broker."""
    if not users.privileged:
        return {"refused": "the supervisor cannot switch users, so the judge cannot be kept apart "
                           "from the candidate (run as root with SETUID, SETGID, SETPCAP and KILL)"}
    req_r, req_w = os.pipe()    # judge -> broker
    resp_r, resp_w = os.pipe()  # broker -> judge
    stats_r, stats_w = os.pipe()
    stats_reader = _Reader(stats_r, max_bytes=65536)
    stats_reader.start()
    broker = Broker(req_r, resp_w, users, call_timeout_s, time.monotonic() + timeout_s)
    broker._close_on_begin = (req_w, resp_r, stats_w)
    env = {**BASE_ENV, "HOME": "/", "RSI_REQ_FD": str(req_w), "RSI_RESP_FD": str(resp_r),
           "RSI_STATS_FD": str(stats_w)}
    cfg = json.dumps({"tests": tests, "modules": workspace_modules()}).encode()
    evidence = run_phase(users.wrap(judge_command(), "judge"), env, "/",
                         timeout_s, tail_bytes, stdin_data=cfg, extra_fds=(req_w, resp_r, stats_w),
                         helper=broker)
    for fd in (req_r, resp_w):
        try:
            os.close(fd)
        except OSError:
            pass
    stats_reader.join(5)
    stats = {}
    raw = bytes(stats_reader.data)
    if len(raw) > 4:
        try:
            stats = loads(raw[4:])
        except CodecError:
            stats = {}
    evidence["calls"] = {**(stats if isinstance(stats, dict) else {}), **{f"broker_{k}": v for k, v in broker.counts.items()}}
    evidence["expected"] = []
    evidence["canaries"] = {"pass": [], "xfail": []}
    return evidence


def _judged_tests() -> dict | None:
    """The judged tests, sent by the host in RSI_JUDGE_0..N (zlib + base64 chunks of JSON)."""
    chunks, i = [], 0
    while f"RSI_JUDGE_{i}" in os.environ:
        chunks.append(os.environ.pop(f"RSI_JUDGE_{i}"))
        i += 1
    if not chunks:
        return None
    data = json.loads(zlib.decompress(base64.b64decode("".join(chunks))))
    return {str(k): str(v) for k, v in data.items()}


def _wait_for(pid: int) -> int:
    """Wait for ``pid``, reaping any other child (orphans re-parent to PID 1)."""
    while True:
        try:
            got, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        if got == pid:
            return status


def _reap_all() -> None:
    while True:
        try:
            os.waitpid(-1, os.WNOHANG if os.getpid() != 1 else 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        if os.getpid() != 1:
            return


def _parse_events(raw: bytes) -> tuple[list, list]:
    events, errors = [], []
    for line in raw.splitlines():
        try:
            events.append(loads(line))
        except CodecError as exc:
            errors.append(f"a line that is not JSON within limits ({exc})"[:200])
    return events, errors


def frame(payload: dict, key: bytes) -> str:
    """One authenticated line: ``RSI1 <hmac-sha256 hex> <json>``."""
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    mac = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
    return f"{FRAME_TAG} {mac} {body}\n"


GO_MAGIC = b"RSG1"
MAX_GO_BYTES = 64 * 1024 * 1024


def read_go(fd: int = 0) -> dict | None:
    """A pooled container's one run: ``RSG1`` + 4-byte big-endian length + JSON, read once from
    stdin (only the host writes there; no child ever holds this descriptor). None at EOF."""
    def exactly(n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = os.read(fd, min(n - len(buf), 1 << 20))
            except InterruptedError:
                continue
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    head = exactly(8)
    if head is None or head[:4] != GO_MAGIC:
        return None
    size = int.from_bytes(head[4:], "big")
    body = exactly(size) if size <= MAX_GO_BYTES else None
    if body is None:
        return None
    msg = json.loads(body)
    return msg if isinstance(msg, dict) else None


def start_visible(users: Users, tail_bytes: int) -> tuple[dict, int]:
    """The pooled visible phase, started before the workspace exists: the zygote (``zygote.py``)
    runs as the candidate's UID with pytest and the reporter imported, waiting on its go pipe."""
    go_r, go_w = os.pipe()
    args = users.wrap([PYTHON, "-P", "-s", "-B", "-m", PACKAGE + ".zygote"], "candidate")
    try:
        phase = spawn_phase(args, {**BASE_ENV, "HOME": "/tmp", **candidate_paths(), "RSI_GO_FD": str(go_r)},
                            WORKSPACE, tail_bytes, extra_fds=(go_r,))
    finally:
        os.close(go_r)
    return phase, go_w


def serve_once(nonce: str, tail_bytes: int, users: Users) -> int:
    """Pool mode: pre-start the visible phase, wait for the one go message, run, report, exit.
    The container serves exactly one workspace: this process exits after one report."""
    phase, go_w = start_visible(users, tail_bytes)
    try:
        go = read_go(0)
    except (OSError, ValueError):
        go = None
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # stdin is the host's channel only until the go
    os.close(devnull)
    if go is None:
        kill_everything(phase["proc"])
        _reap_all()
        return 3
    timeout_s = float(go.get("timeout", 60))
    call_timeout_s = float(go.get("call_timeout", 10))
    canaries = go.get("canaries") or {"pass": [], "xfail": []}
    judged = go.get("judge")
    judged = {str(k): str(v) for k, v in judged.items()} if isinstance(judged, dict) else None
    expected = expected_tests(WORKSPACE, resolve_testpaths(WORKSPACE))  # the zygote targets the same paths
    try:
        os.write(go_w, b"go")
    except OSError:
        pass
    os.close(go_w)
    evidence = finish_phase(phase, timeout_s, restart_clock=True)
    evidence["expected"] = expected
    evidence["canaries"] = canaries
    return _judge_and_report(evidence, judged, timeout_s, tail_bytes, call_timeout_s, users, nonce)


def _judge_and_report(evidence: dict, judged: dict | None, timeout_s: float, tail_bytes: int,
                      call_timeout_s: float, users: Users, nonce: str, skips: str = "") -> int:
    if judged is not None:
        try:
            evidence["judge"] = collect_judged(judged, timeout_s, tail_bytes, call_timeout_s, users)
        except Exception as exc:  # noqa: BLE001 - the judge could not start: an error, never a pass
            evidence["judge"] = {"refused": f"the judge could not run ({type(exc).__name__}: {exc})"[:500]}
    report = grade(evidence)
    if not nonce:  # standalone (no reward at stake): RSI_SKIPS picks the skip rule; the host grades strictly
        try:
            report = apply_skip_mode(report, skip_mode_from_env({"RSI_SKIPS": skips}))
        except ValueError as exc:
            report = {**report, "verdict": "error", "reasons": [str(exc)]}
    if nonce:
        out = frame({"evidence": evidence, "graded": report}, bytes.fromhex(nonce))
    else:
        out = json.dumps(report) + "\n"
    data = out.encode()
    while data:
        data = data[os.write(1, data) :]
    judged_ok = report.get("judged") is None or report["judged"]["verdict"] == "pass"
    return 0 if report["verdict"] == "pass" and judged_ok else 1


def scrub_environment() -> int:
    """Zero the process's original environment strings in memory. ``/proc/1/environ`` shows that
    memory, and not every runtime guards it by UID (gVisor 2022-12 lets any UID read it), so the
    per-run key, canary ids and judged tests must not stay there. Python's ``os.environ`` is a
    copy, so the values stay readable here. Returns the number of strings scrubbed."""
    try:
        libc = ctypes.CDLL(None)
        envp = ctypes.POINTER(ctypes.c_char_p).in_dll(libc, "environ")
        addrs = []
        i = 0
        while envp[i] is not None:
            addrs.append(ctypes.cast(envp, ctypes.POINTER(ctypes.c_void_p))[i])
            i += 1
        for addr in addrs:
            ctypes.memset(addr, 0, len(ctypes.string_at(addr)))
        return len(addrs)
    except (OSError, ValueError, AttributeError):
        return 0


def main() -> int:
    make_non_dumpable()
    scrub_environment()  # before any other process exists in the container
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE):
        signal.signal(sig, lambda *_: None)  # handlers, unlike SIG_IGN, reset at exec
    nonce = os.environ.pop("RSI_NONCE", "")
    skips = os.environ.pop("RSI_SKIPS", "")
    timeout_s = float(os.environ.pop("RSI_TIMEOUT", "60"))
    tail_bytes = int(os.environ.pop("RSI_OUTPUT_TAIL", "16384"))
    call_timeout_s = float(os.environ.pop("RSI_CALL_TIMEOUT", "10"))
    canaries = json.loads(os.environ.pop("RSI_CANARIES", "") or '{"pass": [], "xfail": []}')
    users = Users(os.environ.pop("RSI_USER", "10001:10001"), os.environ.pop("RSI_JUDGE_USER", "10002:10002"))
    pooled = os.environ.pop("RSI_POOL", "") == "1" and users.privileged
    judged = _judged_tests()
    os.chdir("/")
    if pooled:
        return serve_once(nonce, tail_bytes, users)
    evidence = collect_evidence(timeout_s, tail_bytes, users, canaries)
    return _judge_and_report(evidence, judged, timeout_s, tail_bytes, call_timeout_s, users, nonce, skips)
