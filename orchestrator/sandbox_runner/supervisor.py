"""The sandbox's PID 1: runs pytest once on /workspace and prints one graded report.

Why PID 1: in a PID namespace, init cannot be killed by the processes it guards
(signals without a handler are dropped), it reaps orphans, and once it marks itself
non-dumpable, processes of the same UID can read neither ``/proc/1/environ`` (where
the per-run key arrives) nor ``/proc/1/fd`` (the container's stdout). pytest gets
fresh pipes for its output and a private pipe for results, and an environment built
from scratch. When the host passes RSI_NONCE, the report is authenticated with
HMAC-SHA256 under that key, so nothing printed by the code under test can pass for it.

Standalone (``docker run --rm -v "$PWD:/workspace:ro" IMAGE``) it prints the JSON
report and exits 0 only on ``pass``.
"""

from __future__ import annotations

import ast
import ctypes
import hashlib
import hmac
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time

from .grader import grade

WORKSPACE = os.environ.get("RSI_WORKSPACE", "/workspace")
PLUGIN_PATH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_MODULE = __package__ + ".reporter"
FRAME_TAG = "RSI1"
MAX_EVENT_BYTES = 16 * 1024 * 1024
MAX_SCAN_BYTES = 1024 * 1024
SKIP_DIRS = {"__pycache__", "node_modules", "site-packages"}
_PR_SET_DUMPABLE = 4


def make_non_dumpable() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except OSError:
        return False


def expected_tests(root: str) -> list[str]:
    """Node-id prefixes of the tests visible in the source (a lower bound on what
    pytest must collect): module-level ``test*`` functions and ``test*`` methods of
    ``Test*`` classes without ``__init__``, in ``test_*.py`` / ``*_test.py`` files."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS)
        for name in sorted(filenames):
            if not name.endswith(".py") or not (name.startswith("test_") or name.endswith("_test.py")):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
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


def write_canaries(scratch: str) -> dict:
    """A module of canary tests with unpredictable names and known outcomes."""
    tag = secrets.token_hex(8)
    first, last, xfail = (f"test_rsi_canary_{secrets.token_hex(8)}" for _ in range(3))
    n = 100 + secrets.randbelow(900)
    total = n * (n - 1) // 2
    path = os.path.join(scratch, f"rsi_canary_{tag}.py")
    with open(path, "w") as fh:
        fh.write(
            "import pytest\n\n"
            f"def {first}():\n    assert sum(range({n})) == {total}\n\n"
            f"def {last}():\n    assert sorted([{n}, 1]) == [1, {n}]\n\n"
            f"@pytest.mark.xfail(strict=True, reason='rsi canary')\n"
            f"def {xfail}():\n    assert sum(range({n})) == {total + 1}\n"
        )
    return {"file": path, "first": first, "last": [last, xfail], "pass": [first, last], "xfail": [xfail]}


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


def _child_env(result_fd: int, canaries: dict) -> dict:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": tempfile.gettempdir(),
        "LANG": "C.UTF-8",
        "PYTHONPATH": PLUGIN_PATH,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        "RSI_RESULT_FD": str(result_fd),
        "RSI_CANARY_FILE": canaries["file"],
        "RSI_CANARY_FIRST": canaries["first"],
        "RSI_CANARY_LAST": ",".join(canaries["last"]),
    }


def collect_evidence(timeout_s: float, tail_bytes: int) -> dict:
    """Run pytest once and return the raw evidence for the grader."""
    start = time.monotonic()
    scratch = tempfile.mkdtemp(prefix="rsi-")
    canaries = write_canaries(scratch)
    expected = expected_tests(WORKSPACE)
    oom_before = _oom_kills()
    res_r, res_w = os.pipe()
    out_r, out_w = os.pipe()
    args = [
        sys.executable, "-m", "pytest", "-p", PLUGIN_MODULE, "-p", "no:cacheprovider",
        "-q", "--rootdir", WORKSPACE, "--color=no", WORKSPACE,
    ]
    proc = subprocess.Popen(
        args, cwd=WORKSPACE, env=_child_env(res_w, canaries), stdin=subprocess.DEVNULL,
        stdout=out_w, stderr=out_w, pass_fds=(res_w,), start_new_session=True,
    )
    os.close(res_w)
    os.close(out_w)
    events_reader = _Reader(res_r, max_bytes=MAX_EVENT_BYTES)
    output_reader = _Reader(out_r, tail_bytes=tail_bytes)
    events_reader.start()
    output_reader.start()

    timed_out = threading.Event()

    def kill_everything() -> None:
        if os.getpid() == 1:
            try:
                os.kill(-1, signal.SIGKILL)  # every process in the namespace but init
            except OSError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass

    def on_timeout() -> None:
        timed_out.set()
        kill_everything()

    timer = threading.Timer(timeout_s, on_timeout)
    timer.daemon = True
    timer.start()
    status = _wait_for(proc.pid)
    timer.cancel()
    kill_everything()  # orphans never outlive the run
    _reap_all()
    events_reader.join(5)
    output_reader.join(5)

    if os.WIFEXITED(status):
        exit_code = os.WEXITSTATUS(status)
    else:
        exit_code = -os.WTERMSIG(status)
    events, stream_errors = _parse_events(bytes(events_reader.data))
    if events_reader.overflow:
        stream_errors.append(f"more than {MAX_EVENT_BYTES} bytes of events")
    tail = bytes(output_reader.data[-tail_bytes:]).decode("utf-8", "replace")
    return {
        "events": events,
        "stream_errors": stream_errors,
        "exit_code": exit_code,
        "timed_out": timed_out.is_set(),
        "oom_killed": _oom_kills() > oom_before,
        "expected": expected,
        "canaries": {"pass": canaries["pass"], "xfail": canaries["xfail"]},
        "output": tail,
        "output_bytes": output_reader.total,
        "duration_s": time.monotonic() - start,
    }


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
            events.append(json.loads(line))
        except ValueError:
            errors.append("a line that is not JSON")
    return events, errors


def frame(payload: dict, key: bytes) -> str:
    """One authenticated line: ``RSI1 <hmac-sha256 hex> <json>``."""
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    mac = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
    return f"{FRAME_TAG} {mac} {body}\n"


def main() -> int:
    make_non_dumpable()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE):
        signal.signal(sig, lambda *_: None)  # handlers, unlike SIG_IGN, reset at exec
    nonce = os.environ.pop("RSI_NONCE", "")
    timeout_s = float(os.environ.get("RSI_TIMEOUT", "60"))
    tail_bytes = int(os.environ.get("RSI_OUTPUT_TAIL", "16384"))
    evidence = collect_evidence(timeout_s, tail_bytes)
    report = grade(evidence)
    if nonce:
        out = frame({"evidence": evidence, "graded": report}, bytes.fromhex(nonce))
    else:
        out = json.dumps(report) + "\n"
    data = out.encode()
    while data:
        data = data[os.write(1, data) :]
    return 0 if report["verdict"] == "pass" else 1
