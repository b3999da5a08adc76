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

import base64
import hashlib
import hmac
import json
import os
import random
import secrets
import shutil
import socket
import stat
import tempfile
import threading
import time
import tomllib
import zlib
from pathlib import Path
from typing import Literal

import docker
import requests
import structlog
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from orchestrator.protocol.policy import POLICIES_DIR
from orchestrator.sandbox import evidence
from orchestrator.sandbox.runner.baseline import rebase
from orchestrator.sandbox.runner.codec import CodecError
from orchestrator.sandbox.runner.codec import loads as bounded_loads
from orchestrator.sandbox.runner.grader import VERDICTS, grade
from orchestrator.sandbox.runner.supervisor import FRAME_TAG
from orchestrator.sandbox.runner.testpaths import resolve as resolve_testpaths
from orchestrator.sandbox.runner.testpaths import within
from orchestrator.store.text import escape_surrogates_in

log = structlog.get_logger(__name__)

LABEL = "org.rsi-lab.sandbox"
LABEL_PID = "org.rsi-lab.pid"
LABEL_HOST = "org.rsi-lab.host"
SKIP_NAMES = {".git", "__pycache__", ".pytest_cache", ".venv", ".mypy_cache"}
MAX_STAGE_DEPTH = 64
JUDGE_CHUNK = 100_000       # characters per environment variable (the kernel allows 128 KiB)
MAX_JUDGE_CHUNKS = 16
# The supervisor's capabilities: switching to the candidate's and the judge's UIDs, emptying
# their bounding sets, killing their leftovers. Untrusted code holds none (setpriv).
SUPERVISOR_CAPS = ["SETUID", "SETGID", "SETPCAP", "KILL"]


class InfraError(RuntimeError):
    """The sandbox could not run at all (no daemon, no image): not a verdict on the code."""


_UIDGID = r"^[1-9][0-9]{0,9}:[1-9][0-9]{0,9}$"


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
    user: str = Field("10001:10001", pattern=_UIDGID)
    # "auto": a fresh UID per container that no account or process on this host has (fresh_uid), so no
    # host user can reach the judge through /proc/<pid>/root; a fixed "UID:GID" is honoured as given.
    judge_user: str = Field("auto", pattern=f"^auto$|{_UIDGID}")
    call_timeout_s: float = Field(10, gt=0)
    shm_size: str = "1m"
    nofile: int = Field(1024, ge=64)
    fsize_mb: int = Field(64, ge=1)
    output_tail_bytes: int = Field(16384, ge=0)
    max_report_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    max_workspace_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    max_workspace_files: int = Field(100_000, ge=16)
    runtime: str = ""
    # Where runs go (orchestrator/sandbox/interface.py): "docker" (one fresh container per run), "docker-pool"
    # (pre-started single-use containers), "ray" (Ray tasks on a cluster's nodes), "fake" (unit tests).
    provider: str = "docker"
    pool_size: int = Field(0, ge=0)          # warm containers kept by docker-pool; 0 = from cores and memory
    ray_address: str = ""                    # the cluster the ray provider joins (`rsi run --ray ADDRESS`)
    ray_node_provider: str = "docker-pool"   # what each Ray node runs its sandbox with (docker, docker-pool)
    ray_attempts: int = Field(3, ge=1)       # tries per run before an infrastructure error is reported

    @model_validator(mode="after")
    def _distinct_users(self) -> "SandboxLimits":
        if self.judge_user != "auto" and self.user.split(":")[0] == self.judge_user.split(":")[0]:
            raise ValueError("user and judge_user must be different UIDs (the judge is kept apart by its UID)")
        return self

    @classmethod
    def load(cls, path: Path | None = None, **overrides) -> "SandboxLimits":
        path = path or POLICIES_DIR / "sandbox.toml"
        data = tomllib.loads(Path(path).read_text()).get("sandbox", {}) if Path(path).exists() else {}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


Verdict = Literal[VERDICTS]  # pass, fail, error, timeout, tampered: the grader's (runner/grader.py)


class PhaseResult(BaseModel):
    """One graded phase of a run (the fields the grader returns). A container's text can hold lone
    surrogates (a JSON ``\\udc80`` in its report): they are kept as their backslash escape, so a
    result always serialises (the raw evidence, saved apart, keeps them exactly)."""

    @model_validator(mode="before")
    @classmethod
    def _text(cls, data):
        return escape_surrogates_in(data) if isinstance(data, dict) else data

    verdict: Verdict
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
    excused: list[str] = []  # skips/xfails the baseline explains (run_tests(baseline=...)); never passes


class JudgedResult(PhaseResult):
    """The judged phase: hidden tests run out of the candidate's reach (see README)."""

    calls: dict[str, int] = {}


class SandboxResult(PhaseResult):
    """The visible phase (in-process, the model's feedback) and, when asked for, the judged one."""

    container_exit: int | None = None
    judged: JudgedResult | None = None
    evidence_id: str | None = None  # the run's saved evidence (orchestrator/sandbox/evidence.py), when recorded
    _evidence: dict | None = PrivateAttr(default=None)  # what the host graded (re-gradable)


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
    # The low-level list: containers.list() inspects each one and fails on one removed meanwhile.
    for c in client.api.containers(all=True, filters={"label": LABEL}):
        labels = c.get("Labels") or {}
        if labels.get(LABEL_HOST) == socket.gethostname() and not _owner_alive(labels.get(LABEL_PID, "")):
            try:
                client.api.remove_container(c["Id"], force=True)
                removed += 1
            except docker.errors.APIError:
                pass
            for mount in c.get("Mounts") or []:  # a pool container's own staging directory (docker-pool)
                source = str(mount.get("Source") or "")
                if mount.get("Destination") == "/workspace" and \
                        os.path.dirname(source) == tempfile.gettempdir() and \
                        os.path.basename(source).startswith("rsi-pool-"):
                    shutil.rmtree(source, ignore_errors=True)
    if removed:
        log.info("sandbox.swept", containers=removed)
    return removed


class StagingError(Exception):
    """The workspace itself cannot be staged (too deep, names too long, a path that collides):
    the run's verdict is ``error``; nothing of the host is at fault."""


def stage_workspace(src: Path, dst: Path, max_bytes: int, overlay: dict[str, str] | None = None,
                    exclude: set[str] | None = None, max_files: int = 100_000) -> None:
    """Copy regular files and directories; copy symlinks as links (never followed).
    ``exclude``: relative paths left out; ``overlay``: relative path -> text written on top.
    Anything in the workspace that cannot be staged raises ``StagingError``."""
    exclude = exclude or set()
    total = entries = 0
    try:
        for dirpath, dirnames, filenames in os.walk(src, followlinks=False, onerror=_raise):
            rel = Path(dirpath).relative_to(src)
            if len(rel.parts) > MAX_STAGE_DEPTH:
                raise StagingError(f"the workspace is nested deeper than {MAX_STAGE_DEPTH} directories")
            dirnames[:] = [d for d in dirnames if d not in SKIP_NAMES]
            entries += len(dirnames) + len(filenames)
            if entries > max_files:
                raise StagingError(f"the workspace has more than {max_files} files and directories")
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
                    total += copy_regular(source, target, max_bytes - total) - st.st_size
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for rel_path, text in (overlay or {}).items():
            parts = Path(rel_path).parts
            if Path(rel_path).is_absolute() or ".." in parts or any(
                    os.path.islink(dst.joinpath(*parts[:i])) for i in range(1, len(parts) + 1)):
                raise StagingError(f"overlay path {rel_path} would leave the staging directory")
            target = dst / rel_path
            if os.path.lexists(target) and not stat.S_ISREG(os.lstat(target).st_mode):
                raise StagingError(f"the workspace has a directory where {rel_path} must go")
            target.parent.mkdir(parents=True, exist_ok=True)
            for parent in target.relative_to(dst).parents:
                os.chmod(dst / parent, 0o755)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
    except (StagingError, InfraError):
        raise
    except (OSError, RecursionError, ValueError) as exc:
        raise StagingError(f"cannot stage the workspace ({type(exc).__name__}: "
                           f"{getattr(exc, 'strerror', None) or exc})"[:300]) from None


def _raise(exc: OSError) -> None:
    raise exc


def copy_regular(source: str, target: Path, budget: int) -> int:
    """Copy one regular file of the workspace into the stage; returns the bytes copied. The source is
    opened without following a link and without blocking (a FIFO swapped in after the ``lstat`` is
    refused, not waited on), and must still be a regular file once open; the target is created anew
    (O_EXCL|O_NOFOLLOW): nothing already at that name, a link included, is ever written through. A
    file that grows past ``budget`` while it is copied is refused like a large workspace."""
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise StagingError(f"{os.path.basename(source)} stopped being a regular file while it was staged")
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        copied = 0
        try:
            while chunk := os.read(src, 1 << 20):
                copied += len(chunk)
                if copied > budget + st.st_size:
                    raise InfraError("workspace grew past its size limit while it was staged")
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view):]
            os.fchmod(dst, 0o755 if st.st_mode & 0o111 else 0o644)
        finally:
            os.close(dst)
        return copied
    finally:
        os.close(src)


# Canaries: tests with known outcomes, staged at random places among the workspace's own test
# files, named like them, so that blanket tampering with collection, execution or reporting
# changes a canary's outcome. Bodies vary; none names rsi.
_WORDS = ["parse", "value", "empty", "edge", "basic", "input", "order", "result", "format", "limits",
          "cases", "round", "mixed", "large", "small", "negative", "unicode", "default", "repeat", "none",
          "handles", "returns", "keeps", "simple", "nested", "single", "many", "zero", "bounds", "types"]


def _canary_body(rng: random.Random, must_pass: bool) -> str:
    a, b, c = rng.randint(2, 999), rng.randint(2, 999), rng.randint(2, 999)
    off = 0 if must_pass else rng.randint(1, 9)
    forms = [f"assert sorted([{a}, {b}, {c}]) == {sorted([a, b, c + off])}",
             f"assert {a} * {b} == {a * b + off}",
             f"assert sum(range({a})) == {a * (a - 1) // 2 + off}",
             f"assert len(str({a * b})) == {len(str(a * b)) + off}",
             f"assert max({a}, {b}) - min({a}, {b}) == {abs(a - b) + off}"]
    return rng.choice(forms)


def _test_files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in SKIP_NAMES
                       and not os.path.islink(os.path.join(dirpath, d))]
        out += [Path(dirpath) / f for f in filenames if f.endswith(".py")
                and (f.startswith("test_") or f.endswith("_test.py"))
                and not os.path.islink(os.path.join(dirpath, f))]
    return sorted(out)


def stage_canaries(root: Path, rng: random.Random) -> dict:
    """Write two must-pass tests and one strict xfail next to randomly chosen test files;
    return their node ids."""
    paths = resolve_testpaths(str(root))  # only where pytest collects (the project's testpaths)
    files = [f for f in _test_files(root) if within(f.relative_to(root).as_posix(), paths)]
    out = {"pass": [], "xfail": []}
    if not files:
        return out
    # A canary must land where pytest collects: next to a test file whose directory is in the
    # testpaths (a testpaths entry naming a file collects that file only; then none is staged).
    files = [f for f in files if within((f.parent / "test_new.py").relative_to(root).as_posix(), paths)]
    if not files:
        return out
    for kind in ("pass", "pass", "xfail"):
        near = rng.choice(files)
        test = f"test_{'_'.join(rng.sample(_WORDS, 2))}"
        body = _canary_body(rng, kind == "pass")
        marker = "import pytest\n\n\n@pytest.mark.xfail(strict=True)\n" if kind == "xfail" else ""
        for _ in range(50):
            words = "_".join(rng.sample(_WORDS, 2))
            name = f"test_{words}.py" if near.name.startswith("test_") else f"{words}_test.py"
            if write_new_file(near.parent / name, f"{marker}def {test}():\n    {body}\n"):
                break
        else:
            raise StagingError("no free name for a canary test beside the workspace's tests")
        out[kind].append(f"{(near.parent / name).relative_to(root).as_posix()}::{test}")
    return out


def write_new_file(path: Path, text: str) -> bool:
    """Create ``path`` and write ``text``; False when the name is taken by anything at all (a file, a
    directory, a FIFO, a live or dangling symlink). Never follows a link: the parent is opened with
    O_NOFOLLOW|O_DIRECTORY and the file created relative to it with O_CREAT|O_EXCL|O_NOFOLLOW."""
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fd = os.open(path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
    except FileExistsError:
        return False
    except OSError as exc:
        raise StagingError(f"cannot stage a canary test ({exc.strerror})") from None
    finally:
        os.close(dir_fd)
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return True


def judge_environment(tests: dict[str, str]) -> dict[str, str]:
    """Judged tests for the supervisor's environment: zlib + base64 in chunks. The supervisor
    pops them; no process of the candidate's UID can read PID 1's environment."""
    blob = base64.b64encode(zlib.compress(json.dumps(tests).encode(), 9)).decode("ascii")
    chunks = [blob[i:i + JUDGE_CHUNK] for i in range(0, len(blob), JUDGE_CHUNK)] or [""]
    if len(chunks) > MAX_JUDGE_CHUNKS:
        raise InfraError(f"judged tests are too large ({len(blob)} bytes compressed; "
                         f"at most {JUDGE_CHUNK * MAX_JUDGE_CHUNKS})")
    return {f"RSI_JUDGE_{i}": c for i, c in enumerate(chunks)}


def parse_report(raw: bytes, key: bytes) -> tuple[dict | None, list[str]]:
    """Find the one authenticated report in the container's stdout (bounded parsing)."""
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
                payload = bounded_loads(body, max_bytes=len(body), max_depth=64)
            except CodecError as exc:
                problems.append(f"report frame is not JSON within limits ({exc})")
            if not isinstance(payload, dict):
                payload = None
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


def hardened(memory: str, pids: int, tmp: str, cpus: float = 0) -> dict:
    """What every container rsi starts gets, sandbox and trainer alike (the one place it is spelled):
    no network, a read-only root, every capability dropped, no privilege gain, memory without swap, a
    pid cap, a size-capped ``/tmp`` (``tmp``: its tmpfs options), no engine log (the host reads the
    stream itself, bounded), a CPU cap when ``cpus`` > 0."""
    kwargs = dict(
        network_mode="none",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        mem_limit=memory,
        memswap_limit=memory,
        pids_limit=pids,
        tmpfs={"/tmp": tmp},
        log_config=docker.types.LogConfig(type="none"),
    )
    if cpus:
        kwargs["nano_cpus"] = int(cpus * 1e9)
    return kwargs


JUDGE_HOME = "/rsi-judge"  # runner/judge.py: the judge works only here


def fresh_uid() -> int:
    """A UID that no account in the password database and no running process on this host has: a
    process with a fixed UID (the judge's, the trainer's) can be reached by a host account with the same
    UID through ``/proc/<pid>/root`` (its mounts, its private folders), whatever the folder modes say."""
    import pwd

    taken = {entry.pw_uid for entry in pwd.getpwall()}
    for _ in range(64):
        uid = 1_000_000_000 + secrets.randbelow(1_000_000_000)
        if uid in taken:
            continue
        try:
            if any(os.stat(f"/proc/{d}").st_uid == uid for d in os.listdir("/proc") if d.isdigit()):
                continue
        except OSError:
            pass
        return uid
    raise InfraError("no free UID found for the judge or the trainer")


def judge_user_for(limits: SandboxLimits) -> str:
    """The judge's ``UID:GID`` for one container: a fresh one when ``judge_user`` is "auto" (the default)."""
    if limits.judge_user != "auto":
        return limits.judge_user
    uid = fresh_uid()
    return f"{uid}:{uid}"


def judge_tmpfs(limits: SandboxLimits, judge_user: str) -> str:
    """The judge's own tmpfs: owned by the judge's UID, mode 0700, so the candidate's UID can neither
    enter nor plant anything in it (a ``conftest.py``, ``pytest.ini`` or ``__pycache__`` there, or in an
    ancestor, would be loaded by the judge's pytest). The judge checks this itself before it runs."""
    uid, gid = judge_user.split(":")
    return f"size={limits.tmpfs_size},mode=0700,uid={uid},gid={gid},noexec,nosuid,nodev"


def container_settings(limits: SandboxLimits, judge_user: str | None = None) -> dict:
    """The settings every sandbox container gets: ``hardened`` plus the sandbox's own (the supervisor's
    capabilities, ulimits, private IPC, a fixed hostname, the runtime)."""
    base = hardened(limits.memory, limits.pids, f"size={limits.tmpfs_size},mode=1777,noexec,nosuid,nodev",
                    limits.cpus)
    base["tmpfs"] = {**base["tmpfs"], JUDGE_HOME: judge_tmpfs(limits, judge_user or judge_user_for(limits))}
    kwargs = dict(
        **base,
        shm_size=limits.shm_size,
        cap_add=list(SUPERVISOR_CAPS),
        user="0:0",
        ulimits=[
            docker.types.Ulimit(name="nofile", soft=limits.nofile, hard=limits.nofile),
            docker.types.Ulimit(name="fsize", soft=limits.fsize_mb << 20, hard=limits.fsize_mb << 20),
            docker.types.Ulimit(name="core", soft=0, hard=0),
        ],
        stdin_open=False,
        ipc_mode="private",
        hostname="sandbox",
    )
    if limits.runtime:
        kwargs["runtime"] = limits.runtime
    return kwargs


def _create(client, limits: SandboxLimits, stage: str, nonce: str, timeout_s: float,
            canaries: dict | None = None, judge: dict[str, str] | None = None):
    judge_ids = judge_user_for(limits)
    env = {"RSI_NONCE": nonce, "RSI_TIMEOUT": str(timeout_s), "RSI_OUTPUT_TAIL": str(limits.output_tail_bytes),
           "RSI_USER": limits.user, "RSI_JUDGE_USER": judge_ids,
           "RSI_CALL_TIMEOUT": str(limits.call_timeout_s), "RSI_CANARIES": json.dumps(canaries or {})}
    if judge is not None:
        env.update(judge_environment(judge))
    return client.containers.create(
        image=limits.image,
        detach=True,
        environment=env,
        volumes={stage: {"bind": "/workspace", "mode": "ro"}},
        labels={LABEL: "1", LABEL_PID: str(os.getpid()), LABEL_HOST: socket.gethostname()},
        name=f"rsi-sandbox-{nonce[:16]}",  # known before create returns: an interrupted create is still found
        **container_settings(limits, judge_ids),
    )


_swept = False
_runtimes_seen: set[str] = set()


def check_runtime(client, runtime: str) -> None:
    """A configured OCI runtime the engine does not know is one clear line, not an API error."""
    if runtime in _runtimes_seen:
        return
    try:
        known = set((client.info().get("Runtimes") or {}).keys())
    except docker.errors.APIError as exc:
        raise InfraError(f"cannot ask the Docker engine for its runtimes: {exc}") from exc
    if runtime not in known:
        raise InfraError(
            f"the sandbox runtime {runtime!r} is not registered with the Docker engine (it has: "
            f"{', '.join(sorted(known)) or 'none'}); for gVisor: apt-get install runsc, add "
            '{"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", '
            '"--platform=ptrace"]}}} to /etc/docker/daemon.json and reload dockerd (kill -HUP)')
    _runtimes_seen.add(runtime)


def run_tests(workspace: Path | str, limits: SandboxLimits | None = None, timeout_s: float | None = None,
              client=None, overlay: dict[str, str] | None = None, exclude: set[str] | None = None,
              judge: dict[str, str] | None = None, baseline: "SandboxResult | None" = None) -> SandboxResult:
    """Run the workspace's tests once in a fresh container and grade them. ``judge``: hidden
    tests ({relative path: source}) run by the judge, out of the candidate's reach; they are
    never written into the workspace the candidate sees. ``baseline``: the result of the same
    kind of run on the untouched project (or the last accepted state): skips and xfails it
    explains do not fail this run (``with_baseline``). The run goes to the provider named by
    ``limits.provider`` (policies/sandbox.toml); an explicit ``client`` means this engine, directly."""
    limits = limits or SandboxLimits.load()
    if client is None and (limits.provider != "docker" or _sandboxes().overridden()):
        result = _sandboxes().provider_for(limits).run(workspace, limits, overlay=overlay, exclude=exclude,
                                                       judge=judge, timeout_s=timeout_s)
    else:
        result = run_in_fresh_container(workspace, limits, timeout_s, client, overlay, exclude, judge)
    if baseline is not None:
        result = with_baseline(result, baseline)
    if result._evidence is not None and evidence.recording() is not None:
        result.evidence_id = evidence.save(result, result._evidence, baseline)
    return result


def with_baseline(result: SandboxResult, baseline: SandboxResult) -> SandboxResult:
    """``result`` judged against ``baseline`` (sandbox/runner/baseline.py ``rebase``), phase by
    phase: a skip, xfail or xpass is excused only where the baseline has the same test with the
    same outcome and reason in a file the model cannot write; a test of the baseline that is no
    longer collected fails the run. Counts are never changed, so the reward (tests that ran and
    passed) is the same with or without a baseline."""
    from orchestrator.protocol.policy import Policy, model_cannot_write

    policy = Policy.load()

    def rebased(phase: PhaseResult, base: PhaseResult) -> dict:
        out = rebase(phase.model_dump(exclude={"judged"}), base.model_dump(exclude={"judged"}),
                     protected=lambda rel: model_cannot_write(rel, policy))
        return {"verdict": out["verdict"], "reasons": out["reasons"], "excused": out["excused"]}

    update = rebased(result, baseline)
    if result.judged is not None and baseline.judged is not None:
        update["judged"] = result.judged.model_copy(update=rebased(result.judged, baseline.judged))
    return result.model_copy(update=update)


def _sandboxes():
    from orchestrator.sandbox import interface as sandboxes

    return sandboxes


def run_in_fresh_container(workspace: Path | str, limits: SandboxLimits, timeout_s: float | None = None,
                           client=None, overlay: dict[str, str] | None = None, exclude: set[str] | None = None,
                           judge: dict[str, str] | None = None) -> SandboxResult:
    """The ``docker`` provider: one container created, started, waited for and removed per run."""
    global _swept
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
    if limits.runtime:
        check_runtime(client, limits.runtime)

    nonce = secrets.token_hex(32)
    started = time.monotonic()
    container = None
    reader = None
    host_timed_out = False
    oom = False
    container_exit = None
    phases = 2 if judge is not None else 1
    stage = tempfile.mkdtemp(prefix="rsi-stage-")
    try:
        os.chmod(stage, 0o755)
        try:
            stage_workspace(workspace.resolve(), Path(stage), limits.max_workspace_bytes, overlay, exclude,
                            max_files=limits.max_workspace_files)
            canaries = stage_canaries(Path(stage), random.Random(nonce))
        except StagingError as exc:
            return _not_run(str(exc), started)
        container = _create(client, limits, stage, nonce, timeout_s, canaries, judge)
        stream = container.attach(stdout=True, stderr=False, stream=True, logs=False)
        reader = _StdoutReader(stream, limits.max_report_bytes)
        reader.start()
        container.start()
        container_exit, host_timed_out = wait_or_kill(container, timeout_s * phases + limits.grace_s)
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

    return result_from_output(bytes(reader.data), reader.overflow, nonce, limits, canaries, judge is not None,
                              host_timed_out, oom, container_exit, started)


def result_from_output(raw: bytes, overflow: bool, nonce: str, limits: SandboxLimits, canaries: dict,
                       judged: bool, host_timed_out: bool, oom: bool, container_exit: int | None,
                       started: float) -> SandboxResult:
    """Grade one container's stdout on the host (every provider): the authenticated report's
    evidence, amended with what only the host knows (its clock, the engine's OOM flag, the
    canaries it staged), re-graded here; nothing the container graded is taken as is."""
    payload, problems = parse_report(raw, bytes.fromhex(nonce))
    if overflow:
        problems.append(f"container printed more than {limits.max_report_bytes} bytes")
    evidence = payload.get("evidence") if payload else None
    evidence = dict(evidence) if isinstance(evidence, dict) else {"events": [], "exit_code": None}
    stream_errors = evidence.get("stream_errors")
    evidence["stream_errors"] = (list(stream_errors) if isinstance(stream_errors, list) else []) + problems
    evidence["timed_out"] = bool(evidence.get("timed_out")) or host_timed_out
    evidence["oom_killed"] = bool(evidence.get("oom_killed")) or oom
    evidence["duration_s"] = time.monotonic() - started
    evidence["canaries"] = canaries  # the host's own record, not the container's
    if judged and not isinstance(evidence.get("judge"), dict):
        evidence["judge"] = {"refused": "the sandbox sent no judged evidence"}
    if isinstance(evidence.get("judge"), dict) and oom:
        evidence["judge"]["oom_killed"] = True
    if isinstance(evidence.get("judge"), dict) and host_timed_out:
        evidence["judge"]["timed_out"] = True
    result = SandboxResult(**grade(evidence), container_exit=container_exit)
    result._evidence = evidence
    if not payload and not result.timed_out and not problems:
        result.reasons.insert(0, f"the sandbox produced no report (container exit {container_exit})")
    log.info("sandbox.run", verdict=result.verdict, passed=result.passed, failed=result.failed,
             errors=result.errors, skipped=result.skipped, duration_s=round(result.duration_s, 3),
             judged=result.judged.verdict if result.judged else None)
    return result


def _not_run(reason: str, started: float) -> SandboxResult:
    return SandboxResult(verdict="error", reasons=[reason], duration_s=time.monotonic() - started)
