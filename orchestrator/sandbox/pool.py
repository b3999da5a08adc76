"""``docker-pool``: pre-started, single-use hardened containers, each waiting for one workspace.

Each warm container is created with ``sandbox.container_settings`` (the same hardening and
limits as ``docker``), an empty per-container staging directory bind-mounted read-only at
/workspace, and stdin open to its PID 1 only. Started, its supervisor (``RSI_POOL=1``) starts
the visible phase's zygote as the candidate's UID (a fresh interpreter with pytest and the
reporter imported, ``sandbox/runner/zygote.py``) and blocks reading one go message on stdin.
A run takes one container out of the pool, stages the workspace into that container's own
directory, writes the go message (timeouts, canaries, judged tests; the report's HMAC key was
fixed at create, which is safe since a container serves once), waits for the exit, and hands
the container to a reaper that removes it. Nothing ever returns to the pool, so a workspace
never sees another one and a container never serves twice.

The pool refills in the background (size from cores and memory, or ``pool_size``). Containers
carry the sandbox labels with this process's PID: ``close()`` (also at exit) removes every one,
and a crashed process's are swept by the next start (``sandbox.sweep_leftovers``).
"""

from __future__ import annotations

import atexit
import json
import os
import random
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import docker
import structlog

from orchestrator.sandbox.container import (
    LABEL,
    LABEL_HOST,
    LABEL_PID,
    InfraError,
    SandboxLimits,
    SandboxResult,
    StagingError,
    _StdoutReader,
    check_runtime,
    connect,
    container_settings,
    judge_user_for,
    remove_quietly,
    result_from_output,
    stage_canaries,
    stage_workspace,
    sweep_leftovers,
    wait_or_kill,
)
from orchestrator.sandbox.interface import Sandbox, register
from orchestrator.sandbox.runner.supervisor import GO_MAGIC, MAX_GO_BYTES

log = structlog.get_logger(__name__)

LABEL_POOL = "org.rsi-lab.pool"
# The settings a container is created with; runs whose limits differ in these get a container of their own.
CONTAINER_KEYS = ("image", "memory", "cpus", "pids", "tmpfs_size", "user", "judge_user", "shm_size", "nofile",
                  "fsize_mb", "output_tail_bytes", "max_report_bytes", "runtime")


def _bytes(size: str) -> int:
    size = str(size).strip().lower()
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(size[-1:], 1)
    return int(float(size.rstrip("kmgb") or 0) * mult)


def default_size(limits: SandboxLimits) -> int:
    """Warm containers to keep: two per core (one running, one waiting), at most what the
    available memory holds at each container's cap (halved: the host needs its share)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    avail = 4 << 30
    try:
        with open("/proc/meminfo") as fh:  # MemAvailable: free memory plus what the page cache gives back
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) << 10
    except (OSError, ValueError, IndexError):
        pass
    by_memory = max(1, avail // 2 // max(_bytes(limits.memory), 1 << 20))
    return int(max(1, min(2 * cores, by_memory)))


def container_key(limits: SandboxLimits) -> tuple:
    return tuple(getattr(limits, k) for k in CONTAINER_KEYS)


@dataclass
class _Warm:
    name: str
    container: object
    stage: str
    nonce: str
    reader: _StdoutReader
    stdin: object
    key: tuple
    started: float


@register("docker-pool")
class DockerPool(Sandbox):
    def __init__(self, limits: SandboxLimits | None = None, client=None, size: int | None = None, **options):
        super().__init__(limits, **options)
        self.client = client
        self.size = int(size or self.limits.pool_size or default_size(self.limits))
        self.key = container_key(self.limits)
        self._cond = threading.Condition()
        self._ready: deque[_Warm] = deque()
        self._creating = 0
        self._names: set[str] = set()      # every container this pool made and has not removed yet
        self._reap: deque[_Warm] = deque()
        self._closed = False
        self._started = False
        self._threads: list[threading.Thread] = []
        self._last_error: str = ""
        self.served: list[str] = []        # container names, one per run (a container never serves twice)
        self.made: list[str] = []          # every container name this pool created

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "DockerPool":
        if self._started:
            return self
        self.client = self.client or connect()
        try:
            self.client.images.get(self.limits.image)
        except docker.errors.ImageNotFound as exc:
            raise InfraError(f"sandbox image {self.limits.image} not found; run `make images`") from exc
        sweep_leftovers(self.client)
        if self.limits.runtime:
            check_runtime(self.client, self.limits.runtime)
        atexit.register(self.close)
        self._started = True
        for i in range(min(self.size, 2)):  # creating is the engine's work; two at a time keep up
            t = threading.Thread(target=self._refill, name=f"rsi-pool-refill-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._reaper, name="rsi-pool-reaper", daemon=True)
        t.start()
        self._threads.append(t)
        log.info("sandbox.pool.start", size=self.size)
        return self

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            ready = list(self._ready)
            self._ready.clear()
            self._cond.notify_all()
        for t in self._threads:
            t.join(15)
        for warm in ready + list(self._reap):
            self._destroy(warm)
        self._reap.clear()
        for name in list(self._names):  # created by a thread that was interrupted mid-way
            try:
                remove_quietly(self.client.containers.get(name))
            except docker.errors.APIError:
                pass
            self._names.discard(name)

    # -- warm containers -------------------------------------------------------------------------
    def _make(self, limits: SandboxLimits) -> _Warm:
        nonce = secrets.token_hex(32)
        name = f"rsi-pool-{nonce[:16]}"
        stage = tempfile.mkdtemp(prefix="rsi-pool-")
        os.chmod(stage, 0o755)
        judge_ids = judge_user_for(limits)  # a fresh UID per container (judge_user "auto")
        settings = container_settings(limits, judge_ids)
        settings["stdin_open"] = True  # PID 1 reads its one go message there; children get /dev/null
        env = {"RSI_POOL": "1", "RSI_NONCE": nonce, "RSI_OUTPUT_TAIL": str(limits.output_tail_bytes),
               "RSI_USER": limits.user, "RSI_JUDGE_USER": judge_ids}
        self._names.add(name)
        self.made.append(name)
        container = None
        try:
            container = self.client.containers.create(
                image=limits.image, detach=True, environment=env,
                volumes={stage: {"bind": "/workspace", "mode": "ro"}},
                labels={LABEL: "1", LABEL_POOL: "1", LABEL_PID: str(os.getpid()), LABEL_HOST: socket.gethostname()},
                name=name, **settings)
            reader = _StdoutReader(container.attach(stdout=True, stderr=False, stream=True, logs=False),
                                   limits.max_report_bytes)
            reader.start()
            container.start()
            stdin = container.attach_socket(params={"stdin": 1, "stream": 1})
        except BaseException:
            remove_quietly(container if container is not None else self._get(name))
            self._names.discard(name)
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return _Warm(name, container, stage, nonce, reader, stdin, container_key(limits), time.monotonic())

    def _get(self, name: str):
        try:
            return self.client.containers.get(name)
        except docker.errors.APIError:
            return None

    def _refill(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._closed and len(self._ready) + self._creating >= self.size:
                    self._cond.wait()
                if self._closed:
                    return
                self._creating += 1
            warm = None
            try:
                warm = self._make(self.limits)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - reported to the next run that finds the pool empty
                failures += 1
                self._last_error = f"{type(exc).__name__}: {getattr(exc, 'explanation', None) or exc}"[:300]
                log.warning("sandbox.pool.create_failed", error=self._last_error)
            with self._cond:
                self._creating -= 1
                if warm is not None and not self._closed:
                    self._ready.append(warm)
                    warm = None
                self._cond.notify_all()
            if warm is not None:
                self._destroy(warm)
            if failures:
                time.sleep(min(5.0, 0.2 * 2 ** failures))

    def _take(self, limits: SandboxLimits, wait_s: float = 120.0) -> _Warm:
        if container_key(limits) != self.key:
            return self._make(limits)  # other container settings: a container of its own, same protocol
        deadline = time.monotonic() + wait_s
        with self._cond:
            while not self._ready:
                if self._closed:
                    raise InfraError("the sandbox pool is closed")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise InfraError(f"no warm sandbox container within {wait_s:.0f} s"
                                     + (f" (last create error: {self._last_error})" if self._last_error else ""))
                self._cond.wait(min(left, 1.0))
            warm = self._ready.popleft()
            self._cond.notify_all()  # a refill thread may start the next one
        return warm

    def _reaper(self) -> None:
        while True:
            with self._cond:
                while not self._reap and not self._closed:
                    self._cond.wait()
                if not self._reap:
                    return
                warm = self._reap.popleft()
            self._destroy(warm)

    def _destroy(self, warm: _Warm) -> None:
        try:
            warm.stdin.close()
        except Exception:  # noqa: BLE001
            pass
        remove_quietly(warm.container)
        self._names.discard(warm.name)
        shutil.rmtree(warm.stage, ignore_errors=True)

    def _retire(self, warm: _Warm) -> None:
        with self._cond:
            if self._closed:
                warm_now = True
            else:
                self._reap.append(warm)
                self._cond.notify_all()
                warm_now = False
        if warm_now:
            self._destroy(warm)

    # -- a run -----------------------------------------------------------------------------------
    def run(self, workspace: Path | str, limits: SandboxLimits | None = None, overlay=None, exclude=None,
            judge=None, timeout_s: float | None = None) -> SandboxResult:
        workspace, limits, timeout_s = self.inputs(workspace, limits, timeout_s)
        if not self._started:
            self.start()
        started = time.monotonic()
        phases = 2 if judge is not None else 1
        warm = self._take(limits)
        self.served.append(warm.name)
        try:
            try:
                stage_workspace(workspace.resolve(), Path(warm.stage), limits.max_workspace_bytes, overlay, exclude,
                            max_files=limits.max_workspace_files)
                canaries = stage_canaries(Path(warm.stage), random.Random(warm.nonce))
            except StagingError as exc:
                return SandboxResult(verdict="error", reasons=[str(exc)], duration_s=time.monotonic() - started)
            body = json.dumps({"timeout": timeout_s, "call_timeout": limits.call_timeout_s, "canaries": canaries,
                               "judge": judge}).encode()
            if len(body) > MAX_GO_BYTES:
                raise InfraError(f"judged tests are too large ({len(body)} bytes; at most {MAX_GO_BYTES})")
            try:
                raw = getattr(warm.stdin, "_sock", warm.stdin)
                raw.sendall(GO_MAGIC + len(body).to_bytes(4, "big") + body)
            except OSError as exc:
                raise InfraError(f"cannot reach the warm sandbox's stdin ({exc})") from exc
            container_exit, host_timed_out = wait_or_kill(warm.container, timeout_s * phases + limits.grace_s)
            warm.reader.join(5)
            warm.container.reload()
            oom = bool(warm.container.attrs["State"].get("OOMKilled"))
        except docker.errors.APIError as exc:
            raise InfraError(f"docker engine refused the sandbox: {exc.explanation or exc}") from exc
        finally:
            self._retire(warm)
        result = result_from_output(bytes(warm.reader.data), warm.reader.overflow, warm.nonce, limits, canaries,
                                    judge is not None, host_timed_out, oom, container_exit, started)
        return result
