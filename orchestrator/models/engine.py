"""A managed vLLM server: the inference engine behind the ``vllm`` backend.

``Engine(spec).start()`` runs vLLM's OpenAI-compatible server (from its own venv, ``.venv-vllm``,
built by ``make vllm``) on a base model with runtime LoRA loading enabled, waits for ``/health``
with a progress line and returns once it answers. ``stop()`` ends the server and every process it
started (its own session/process group). Nothing is left behind:

- normal exit and Ctrl-C: ``stop()`` from the caller's ``finally`` / context manager, and from
  ``atexit`` as a backstop;
- a crash or kill of the owning process: the server is started with ``PR_SET_PDEATHSIG``, so the
  kernel sends it SIGTERM when its parent dies, and it stops its own children;
- anything that still survived (a machine-wide SIGKILL...): each server is recorded in
  ``<cache>/engine/<pid>.json`` with its owner's identity; the next start finds records whose
  owner is gone and stops those servers (``reap_stale``).

Errors are one line (``EngineError``): vLLM not installed, model missing, port taken, server died
during start-up (with the tail of its log), no health within the timeout.

Access: each server has a random key (``Engine.api_key``, or ``EngineSpec.api_key``) that every
request but ``GET /health`` must carry (``Authorization: Bearer``). Other local users can reach
127.0.0.1, so without it anyone could load or swap the adapters the run serves. The key goes to the
server in its environment (``VLLM_API_KEY``; ``/proc/<pid>/environ`` is readable only by the
server's user, its command line by everyone), never on the command line, in the record or the log.
vLLM checks it only under ``/v1`` and a few other prefixes, so the server also loads
``vllm_guard.Guard`` (``--middleware``), which checks it on every path (the SageMaker
``/adapters`` routes load adapters too). ``api_key_for(url)`` gives the key of a server this
process started; the state directory (records, logs) is private to the user.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-vllm"
PR_SET_PDEATHSIG = 1
KEY_ENV = "RSI_VLLM_API_KEY"   # clients' key for an external server (`rsi serve` prints it)
GUARD_MODULE = "rsi_vllm_guard"
GUARD = Path(__file__).with_name("vllm_guard.py")
GUARD_PREFIX = "rsi-vllm-guard-"
_keys: dict[str, str] = {}     # root URL -> key, for the servers this process runs


def _root(url: str) -> str:
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def api_key_for(url: str) -> str | None:
    """The key of the server at ``url`` (root or ``/v1`` URL): one this process started, else
    ``RSI_VLLM_API_KEY`` (an external server, e.g. from `rsi serve`), else None."""
    return _keys.get(_root(url)) or os.environ.get(KEY_ENV) or None


def remember_key(url: str, key: str) -> None:
    """The key of a server this process started elsewhere (the GPU profile's container)."""
    _keys[_root(url)] = key


def forget_key(url: str, key: str | None) -> None:
    if key is not None and _keys.get(_root(url)) == key:
        _keys.pop(_root(url), None)


class EngineError(RuntimeError):
    """The inference server cannot be started or reached."""


def engine_python() -> Path:
    """The interpreter of the vLLM venv (``RSI_VLLM_PYTHON`` overrides)."""
    return Path(os.environ.get("RSI_VLLM_PYTHON") or VENV / "bin" / "python")


def available() -> bool:
    return engine_python().exists()


def state_dir() -> Path:
    root = os.environ.get("RSI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "rsi-lab")
    return Path(root) / "engine"


@dataclass
class EngineSpec:
    model_dir: Path
    served_name: str = "base"
    host: str = "127.0.0.1"
    port: int = 0                 # 0: a free port
    max_model_len: int = 2048
    max_lora_rank: int = 16
    max_loras: int = 2            # adapters in one batch (the gate's probe compares two)
    kv_cache_gib: float = 2       # VLLM_CPU_KVCACHE_SPACE (CPU build)
    startup_timeout_s: float = 600
    extra_args: list[str] = field(default_factory=list)  # e.g. the GPU command line (issue #15)
    python: Path | None = None
    api_key: str | None = field(default=None, repr=False)  # None: a new random key per start

    def command(self, port: int) -> list[str]:
        """The server's command line: world-readable in /proc, so it holds no key."""
        return [str(self.python or engine_python()), "-m", "vllm.entrypoints.openai.api_server",
                "--model", str(self.model_dir), "--served-model-name", self.served_name,
                "--enable-lora", "--max-lora-rank", str(self.max_lora_rank), "--max-loras", str(self.max_loras),
                "--max-model-len", str(self.max_model_len), "--host", self.host, "--port", str(port),
                # compact JSON: with free whitespace a small model fills the token budget with newlines
                "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
                "--middleware", f"{GUARD_MODULE}.Guard", "--disable-fastapi-docs",
                *self.extra_args]


def _proc_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a live process from a re-used pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")[:-1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _kill_group(pgid: int, proc: subprocess.Popen | None = None, timeout_s: float = 30) -> None:
    """SIGTERM the process group, wait, then SIGKILL what is left of it."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()  # reap the leader so the group can empty
        if not _group_alive(pgid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc is not None:
        proc.wait(timeout=10)


def reap_stale(say=None) -> list[int]:
    """Stop servers recorded by owners that no longer run (a killed ``rsi``); returns their pids."""
    reaped = []
    folder = state_dir()
    for record in sorted(folder.glob("*.json")) if folder.exists() else []:
        try:
            info = json.loads(record.read_text())
        except (OSError, ValueError):
            record.unlink(missing_ok=True)
            continue
        owner_alive = _proc_start_time(info["owner"]) == info["owner_start"]
        if owner_alive:
            continue
        pid = info["pid"]
        if _proc_start_time(pid) == info["start"] and _cmdline(pid) == info["cmdline"]:
            if say:
                say(f"stopping a stale vLLM server (pid {pid}, port {info['port']}) left by a killed run")
            _kill_group(pid)
            reaped.append(pid)
        guard = Path(info.get("guard") or "/nonexistent")
        if guard.name.startswith(GUARD_PREFIX) and guard.parent == Path(tempfile.gettempdir()):
            shutil.rmtree(guard, ignore_errors=True)  # the guard module's copy (no key in it)
        record.unlink(missing_ok=True)
    return reaped


def private_dir(folder: Path) -> Path:
    """``folder``, created if needed, owned by this user and closed to others (mode 0700): the
    servers' records and logs."""
    folder.mkdir(parents=True, exist_ok=True)
    if folder.stat().st_uid != os.geteuid():
        raise EngineError(f"{folder} belongs to another user: set RSI_CACHE to a directory of your own")
    folder.chmod(0o700)
    return folder


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    keep = [ln.strip()[:240] for ln in text if ln.strip()][-lines:]
    return " | ".join(keep) or "(empty log)"


class Engine:
    """One vLLM server process (group) owned by this process."""

    def __init__(self, spec: EngineSpec):
        self.spec = spec
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.log_path: Path | None = None
        self.record: Path | None = None
        self.api_key: str | None = None
        self._guard_dir: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.spec.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def headers(self) -> dict[str, str]:
        """What a request to this server needs."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _check(self) -> None:
        python = self.spec.python or engine_python()
        if not Path(python).exists():
            raise EngineError(f"vLLM is not installed: no {python} (run `make vllm`, or set RSI_VLLM_PYTHON)")
        model = Path(self.spec.model_dir)
        if not (model / "config.json").exists():
            raise EngineError(f"model missing: {model} is not a model directory (no config.json)")
        if self.spec.port and _port_taken(self.spec.host, self.spec.port):
            raise EngineError(f"port {self.spec.port} on {self.spec.host} is taken: stop what listens there "
                              "or choose another port")

    def start(self, say=print) -> "Engine":
        reap_stale(say)
        self._check()
        self.port = self.spec.port or free_port(self.spec.host)
        folder = private_dir(state_dir())
        self.log_path = folder / f"vllm-{os.getpid()}-{self.port}.log"
        self.api_key = self.spec.api_key or secrets.token_urlsafe(32)
        # the guard module alone on the server's import path, in a directory only this user can write
        self._guard_dir = tempfile.mkdtemp(prefix=GUARD_PREFIX)
        shutil.copyfile(GUARD, Path(self._guard_dir) / f"{GUARD_MODULE}.py")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", KEY_ENV)}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
                   VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", VLLM_API_KEY=self.api_key, PYTHONPATH=self._guard_dir)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{self.spec.kv_cache_gib:g}")
        cmd = self.spec.command(self.port)
        try:
            with open(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as log:
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             env=env, cwd=folder, start_new_session=True,
                                             preexec_fn=_die_with_parent)
        except BaseException:
            self._forget()
            raise
        remember_key(self.url, self.api_key)
        atexit.register(self.stop)
        self.record = folder / f"{self.proc.pid}.json"
        self.record.write_text(json.dumps({
            "pid": self.proc.pid, "start": _proc_start_time(self.proc.pid), "cmdline": _cmdline(self.proc.pid) or cmd,
            "owner": os.getpid(), "owner_start": _proc_start_time(os.getpid()), "port": self.port,
            "log": str(self.log_path), "guard": self._guard_dir}))
        try:
            self._wait_healthy(say)
        except BaseException:  # Ctrl-C during start-up included: no half-started server stays
            self.stop()
            raise
        return self

    def _wait_healthy(self, say) -> None:
        started = time.monotonic()
        next_note = started + 10
        name = Path(self.spec.model_dir).name
        say(f"vLLM: starting on {name} at {self.url} (log {self.log_path}) ...")
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise EngineError(f"vLLM exited with code {rc} during start-up: {log_tail(self.log_path)} "
                                  f"(log {self.log_path})")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    say(f"vLLM: ready in {time.monotonic() - started:.0f} s at {self.base_url}")
                    return
            except requests.RequestException:
                pass
            now = time.monotonic()
            if now - started > self.spec.startup_timeout_s:
                raise EngineError(f"vLLM did not answer /health within {self.spec.startup_timeout_s:.0f} s: "
                                  f"{log_tail(self.log_path, 1)} (log {self.log_path})")
            if now >= next_note:
                say(f"vLLM: still starting ({now - started:.0f} s) ...")
                next_note = now + 10
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        _kill_group(proc.pid, proc)
        if self.record is not None:
            self.record.unlink(missing_ok=True)
        self._forget()
        atexit.unregister(self.stop)

    def _forget(self) -> None:
        if self._guard_dir:
            shutil.rmtree(self._guard_dir, ignore_errors=True)
            self._guard_dir = None
        if self.port is not None:
            forget_key(self.url, self.api_key)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> "Engine":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
