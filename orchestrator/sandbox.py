"""Run a workspace's tests once in a fresh, network-less, resource-capped container.

One container per run, never reused. The workspace is copied (symlinks copied as
links, never followed; special files skipped) into a staging directory that is
bind-mounted read-only, so the caller's directory is never touched and nothing in
it can point the container at a host file. The host enforces the wall clock (kill,
then remove), reads at most ``max_report_bytes`` of the container's stdout (the only
writer there is the supervisor, PID 1), verifies the report's HMAC with a key made
for this run, and re-grades the evidence with what only the host sees: its own
timeout and the engine's OOM flag.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import socket
import stat
import tempfile
import threading
import time
import tomllib
from pathlib import Path

import docker
import requests
import structlog
from pydantic import BaseModel, ConfigDict, Field

from .policy import POLICIES_DIR
from .sandbox_runner.grader import grade
from .sandbox_runner.supervisor import FRAME_TAG

log = structlog.get_logger(__name__)

LABEL = "org.rsi-lab.sandbox"
LABEL_PID = "org.rsi-lab.pid"
LABEL_HOST = "org.rsi-lab.host"
SKIP_NAMES = {".git", "__pycache__", ".pytest_cache", ".venv", ".mypy_cache"}


class InfraError(RuntimeError):
    """The sandbox could not run at all (no daemon, no image): not a verdict on the code."""


class SandboxLimits(BaseModel):
    """Every limit of a sandboxed run; defaults in policies/sandbox.toml."""

    model_config = ConfigDict(extra="forbid")
    image: str = "rsi-sandbox:latest"
    timeout_s: float = Field(60, gt=0)
    grace_s: float = Field(10, ge=0)
    memory: str = "512m"
    cpus: float = Field(1.0, gt=0)
    pids: int = Field(128, ge=8)
    tmpfs_size: str = "64m"
    user: str = "10001:10001"
    nofile: int = Field(1024, ge=64)
    fsize_mb: int = Field(64, ge=1)
    output_tail_bytes: int = Field(16384, ge=0)
    max_report_bytes: int = Field(48 * 1024 * 1024, ge=1024)
    max_workspace_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    runtime: str = ""

    @classmethod
    def load(cls, path: Path | None = None, **overrides) -> "SandboxLimits":
        path = path or POLICIES_DIR / "sandbox.toml"
        data = tomllib.loads(Path(path).read_text()).get("sandbox", {}) if Path(path).exists() else {}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


class SandboxResult(BaseModel):
    verdict: str
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    exit_code: int | None = None
    timed_out: bool = False
    oom_killed: bool = False
    duration_s: float = 0.0
    output: str = ""
    output_bytes: int = 0
    reasons: list[str] = []
    tests: list[dict] = []
    container_exit: int | None = None


def connect():
    try:
        client = docker.from_env()
        client.ping()
        return client
    except Exception as exc:  # noqa: BLE001 - any failure here means "no daemon"
        raise InfraError(
            f"cannot reach the Docker daemon ({type(exc).__name__}); start dockerd or set DOCKER_HOST"
        ) from exc


def wait_or_kill(container, timeout_s: float) -> tuple[int | None, bool]:
    """(exit status, timed out). ``Container.wait(timeout=)`` is only an HTTP read timeout: the
    container keeps running, so on expiry the host kills it."""
    try:
        return container.wait(timeout=timeout_s).get("StatusCode"), False
    except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
        container.kill()
        return None, True


def remove_quietly(container) -> None:
    if container is not None:
        try:
            container.remove(force=True)
        except docker.errors.APIError:
            pass


def _owner_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True


def sweep_leftovers(client) -> int:
    """Remove sandbox containers left by crashed runs on this host."""
    removed = 0
    for c in client.containers.list(all=True, filters={"label": LABEL}):
        labels = c.labels
        if labels.get(LABEL_HOST) == socket.gethostname() and not _owner_alive(labels.get(LABEL_PID, "")):
            try:
                c.remove(force=True)
                removed += 1
            except docker.errors.APIError:
                pass
    if removed:
        log.info("sandbox.swept", containers=removed)
    return removed


def stage_workspace(src: Path, dst: Path, max_bytes: int, overlay: dict[str, str] | None = None,
                    exclude: set[str] | None = None) -> None:
    """Copy regular files and directories; copy symlinks as links (never followed).
    ``exclude``: relative paths left out; ``overlay``: relative path -> text written on top."""
    exclude = exclude or set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        rel = Path(dirpath).relative_to(src)
        dirnames[:] = [d for d in dirnames if d not in SKIP_NAMES]
        target_dir = dst / rel
        target_dir.mkdir(exist_ok=True)
        os.chmod(target_dir, 0o755)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            source = os.path.join(dirpath, name)
            target = target_dir / name
            if str(rel / name).removeprefix("./") in exclude:
                continue
            st = os.lstat(source)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(source), target)
            elif stat.S_ISREG(st.st_mode):
                total += st.st_size
                if total > max_bytes:
                    raise InfraError(f"workspace is larger than {max_bytes} bytes")
                shutil.copyfile(source, target, follow_symlinks=False)
                os.chmod(target, 0o755 if st.st_mode & 0o111 else 0o644)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    for rel_path, text in (overlay or {}).items():
        parts = Path(rel_path).parts
        if Path(rel_path).is_absolute() or ".." in parts or any(
                os.path.islink(dst.joinpath(*parts[:i])) for i in range(1, len(parts) + 1)):
            raise InfraError(f"overlay path {rel_path} would leave the staging directory")
        target = dst / rel_path
        target.parent.mkdir(parents=True, exist_ok=True)
        for parent in target.relative_to(dst).parents:
            os.chmod(dst / parent, 0o755)
        target.write_text(text)
        os.chmod(target, 0o644)


def parse_report(raw: bytes, key: bytes) -> tuple[dict | None, list[str]]:
    """Find the one authenticated report in the container's stdout."""
    payload, problems = None, []
    for line in raw.split(b"\n"):
        if not line.startswith(FRAME_TAG.encode() + b" "):
            continue  # only frames count; PID 1 is the only writer anyway
        try:
            _, mac, body = line.split(b" ", 2)
        except ValueError:
            problems.append("malformed report frame")
            continue
        want = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(mac, want):
            problems.append("a report frame failed authentication")
        elif payload is not None:
            problems.append("more than one report frame")
        else:
            try:
                payload = json.loads(body)
            except ValueError:
                problems.append("report frame is not JSON")
    return payload, problems


class _StdoutReader(threading.Thread):
    def __init__(self, stream, cap: int):
        super().__init__(daemon=True)
        self.stream, self.cap = stream, cap
        self.data = bytearray()
        self.overflow = False

    def run(self) -> None:
        try:
            for chunk in self.stream:
                if len(self.data) + len(chunk) > self.cap:
                    self.overflow = True
                    break
                self.data += chunk
        except Exception:  # noqa: BLE001 - socket closed by kill/remove
            pass


def _create(client, limits: SandboxLimits, stage: str, nonce: str, timeout_s: float):
    kwargs = dict(
        image=limits.image,
        detach=True,
        network_mode="none",
        mem_limit=limits.memory,
        memswap_limit=limits.memory,
        nano_cpus=int(limits.cpus * 1e9),
        pids_limit=limits.pids,
        read_only=True,
        tmpfs={"/tmp": f"size={limits.tmpfs_size},mode=1777,noexec,nosuid,nodev"},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        user=limits.user,
        environment={"RSI_NONCE": nonce, "RSI_TIMEOUT": str(timeout_s),
                     "RSI_OUTPUT_TAIL": str(limits.output_tail_bytes)},
        volumes={stage: {"bind": "/workspace", "mode": "ro"}},
        labels={LABEL: "1", LABEL_PID: str(os.getpid()), LABEL_HOST: socket.gethostname()},
        log_config=docker.types.LogConfig(type="none"),
        ulimits=[
            docker.types.Ulimit(name="nofile", soft=limits.nofile, hard=limits.nofile),
            docker.types.Ulimit(name="fsize", soft=limits.fsize_mb << 20, hard=limits.fsize_mb << 20),
            docker.types.Ulimit(name="core", soft=0, hard=0),
        ],
        stdin_open=False,
        ipc_mode="private",
        hostname="sandbox",
        name=f"rsi-sandbox-{nonce[:16]}",  # known before create returns: an interrupted create is still found
    )
    if limits.runtime:
        kwargs["runtime"] = limits.runtime
    return client.containers.create(**kwargs)


_swept = False


def run_tests(workspace: Path | str, limits: SandboxLimits | None = None, timeout_s: float | None = None,
              client=None, overlay: dict[str, str] | None = None, exclude: set[str] | None = None) -> SandboxResult:
    """Run the workspace's tests once in a fresh container and grade them."""
    global _swept
    limits = limits or SandboxLimits.load()
    timeout_s = float(timeout_s or limits.timeout_s)
    workspace = Path(workspace)
    if not workspace.is_dir():
        raise InfraError(f"workspace {workspace} is not a directory")
    client = client or connect()
    try:
        client.images.get(limits.image)
    except docker.errors.ImageNotFound as exc:
        raise InfraError(f"sandbox image {limits.image} not found; run `make images`") from exc
    if not _swept:
        sweep_leftovers(client)
        _swept = True

    nonce = secrets.token_hex(32)
    started = time.monotonic()
    container = None
    host_timed_out = False
    oom = False
    container_exit = None
    stage = tempfile.mkdtemp(prefix="rsi-stage-")
    try:
        os.chmod(stage, 0o755)
        stage_workspace(workspace.resolve(), Path(stage), limits.max_workspace_bytes, overlay, exclude)
        container = _create(client, limits, stage, nonce, timeout_s)
        stream = container.attach(stdout=True, stderr=False, stream=True, logs=False)
        reader = _StdoutReader(stream, limits.max_report_bytes)
        reader.start()
        container.start()
        container_exit, host_timed_out = wait_or_kill(container, timeout_s + limits.grace_s)
        reader.join(5)
        container.reload()
        oom = bool(container.attrs["State"].get("OOMKilled"))
    except docker.errors.APIError as exc:
        raise InfraError(f"docker engine refused the sandbox: {exc.explanation or exc}") from exc
    finally:
        if container is None:  # interrupted (Ctrl-C) between the engine creating it and create() returning
            try:
                container = client.containers.get(f"rsi-sandbox-{nonce[:16]}")
            except docker.errors.APIError:
                pass
        remove_quietly(container)
        shutil.rmtree(stage, ignore_errors=True)

    payload, problems = parse_report(bytes(reader.data), bytes.fromhex(nonce))
    if reader.overflow:
        problems.append(f"container printed more than {limits.max_report_bytes} bytes")
    evidence = dict((payload or {}).get("evidence") or {})
    if not payload:
        evidence = {"events": [], "exit_code": None}
    evidence["stream_errors"] = list(evidence.get("stream_errors") or []) + problems
    evidence["timed_out"] = bool(evidence.get("timed_out")) or host_timed_out
    evidence["oom_killed"] = bool(evidence.get("oom_killed")) or oom
    evidence["duration_s"] = time.monotonic() - started
    result = SandboxResult(**grade(evidence), container_exit=container_exit)
    if not payload and not result.timed_out and not problems:
        result.reasons.insert(0, f"the sandbox produced no report (container exit {container_exit})")
    log.info("sandbox.run", verdict=result.verdict, passed=result.passed, failed=result.failed,
             errors=result.errors, skipped=result.skipped, duration_s=round(result.duration_s, 3))
    return result
