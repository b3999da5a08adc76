"""Launch the trainer container: archived samples -> LoRA adapter, with no network.

The container sees only its inputs, read-only (the samples file, the JSON training config,
the base model directory) and one writable directory (the output). The root filesystem is
read-only, scratch is a size-capped tmpfs, capabilities are dropped, memory and time are
capped, and the engine's log is off: the host reads the output stream itself (bounded) and
forwards the last lines to the audit log. A GPU is requested only when asked for, with a
clear error when none is available.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import docker
import structlog
from pydantic import BaseModel, Field

from orchestrator.sandbox.container import (
    LABEL,
    LABEL_HOST,
    LABEL_PID,
    InfraError,
    connect,
    fresh_uid,
    hardened,
    remove_quietly,
    wait_or_kill,
)
from orchestrator.training.runner.config import TrainConfig

log = structlog.get_logger(__name__)
EXIT_BAD_INPUT = 2
TRAINER_UID = 10001


class TrainerInputError(ValueError):
    """The samples or config were refused by the trainer (nothing was written)."""


class TrainerError(RuntimeError):
    """Training failed or timed out (nothing was written)."""


class TrainerLimits(BaseModel):
    image_cpu: str = "rsi-trainer:cpu"
    image_gpu: str = "rsi-trainer:gpu"
    memory: str = "12g"
    cpus: float = Field(0, ge=0)  # 0: no CPU cap
    # OpenMP threads of the trainer; 0: the CPU cap rounded up if there is one, else the host's
    # OMP_NUM_THREADS if set, else torch's default (every core the container sees)
    threads: int = Field(0, ge=0)
    pids: int = 1024
    tmpfs_size: str = "4g"
    timeout_s: float = 3600
    log_lines: int = 200  # last lines kept for the audit log


class _Tail(threading.Thread):
    def __init__(self, stream, keep: int, cap_bytes: int = 64 << 20):
        super().__init__(daemon=True)
        self.stream, self.lines, self.cap = stream, deque(maxlen=keep), cap_bytes
        self.total = 0

    def run(self) -> None:
        buf = b""
        try:
            for chunk in self.stream:
                self.total += len(chunk)
                if self.total > self.cap:
                    continue  # keep draining, stop keeping
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    text = line.decode("utf-8", "replace").rstrip()
                    if text and "it/s]" not in text and "s/it]" not in text:  # progress bars
                        self.lines.append(text[-1000:])
        except Exception:  # noqa: BLE001 - the socket closes when the container goes
            pass
        if buf.strip():
            self.lines.append(buf.decode("utf-8", "replace")[-1000:])


def gpu_available(client) -> bool:
    return "nvidia" in (client.info().get("Runtimes") or {})


def trainer_threads(limits: TrainerLimits) -> int:
    """OpenMP threads for the trainer container (0: torch's default). More threads than free cores spin
    against each other: a host that shares its cores (``OMP_NUM_THREADS``) shares them with the trainer."""
    if limits.threads:
        return limits.threads
    if limits.cpus:
        return math.ceil(limits.cpus)
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else 0


def container_kwargs(image: str, samples: Path, config_file: Path, model_dir: Path, output: Path,
                     limits: TrainerLimits, gpu: bool, uid: int = TRAINER_UID) -> dict:
    # /tmp keeps exec here: compilers of the training stack (triton, torch inductor) load what they build there
    kwargs = dict(
        **hardened(limits.memory, limits.pids, f"size={limits.tmpfs_size},mode=1777", limits.cpus),
        image=image, detach=True, user=f"{uid}:{uid}",
        volumes={str(samples): {"bind": "/data/samples.jsonl", "mode": "ro"},
                 str(config_file): {"bind": "/data/config.json", "mode": "ro"},
                 str(model_dir): {"bind": "/model", "mode": "ro"},
                 str(output): {"bind": "/out", "mode": "rw"}},
        command=["--samples", "/data/samples.jsonl", "--config", "/data/config.json", "--model-dir", "/model",
                 "--output", "/out"],
        labels={LABEL: "trainer", LABEL_PID: str(os.getpid()), LABEL_HOST: socket.gethostname()},
        environment={"PYTHONUNBUFFERED": "1"},
    )
    if threads := trainer_threads(limits):
        kwargs["environment"].update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if gpu:
        kwargs["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
        # the Debian-based GPU image has no CUDA base to set these: the NVIDIA toolkit reads them to mount
        # the host driver's compute libraries (libcuda) into the container
        kwargs["environment"].update(NVIDIA_VISIBLE_DEVICES="all", NVIDIA_DRIVER_CAPABILITIES="compute,utility")
    return kwargs


def run_training(samples: Path, output: Path, config: TrainConfig, model_dir: Path, gpu: bool = False,
                 limits: TrainerLimits | None = None, client=None, on_log=None) -> dict:
    """Train in a fresh container; returns metrics.json. The adapter lands in ``output``."""
    limits = limits or TrainerLimits()
    client = client or connect()
    image = limits.image_gpu if gpu else limits.image_cpu
    if gpu and not gpu_available(client):
        raise InfraError("the GPU trainer was asked for but this Docker engine has no GPU runtime (nvidia); "
                         "install the NVIDIA container toolkit or train on the CPU")
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound as exc:
        raise InfraError(f"trainer image {image} not found; run `make images`"
                         + (" / `make trainer-gpu-image`" if gpu else "")) from exc
    samples, model_dir = Path(samples).resolve(), Path(model_dir).resolve()
    if not samples.is_file():
        raise TrainerInputError(f"samples file {samples} does not exist")
    if not (model_dir / "config.json").is_file():
        raise TrainerInputError(f"no model at {model_dir}")
    output = Path(output).resolve()
    if output.exists() and any(output.iterdir()):
        raise TrainerInputError(f"output directory {output} is not empty")
    output.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rsi-train-"))
    config_file = work / "config.json"
    config_file.write_text(config.model_dump_json())
    os.chmod(work, 0o755)
    os.chmod(config_file, 0o644)
    # The trainer writes into a folder only it and this process can reach: its parent is ours, mode 0700,
    # so no other host user (not even one with the trainer's UID) can enter it while it is written; the
    # container reaches it through its bind mount. The adapter is then copied out, as ours, into ``output``.
    private = Path(tempfile.mkdtemp(prefix="rsi-train-out-"))
    trainer_out = private / "out"
    trainer_out.mkdir()
    # The trainer runs as a fresh UID no host account or process has: with a fixed one (the image's
    # 10001), a host account with that UID reaches its output through /proc/<pid>/root, parents or not.
    uid = fresh_uid()
    if os.geteuid() == 0:
        os.chown(trainer_out, uid, uid)
    else:
        os.chmod(trainer_out, 0o777)
    try:
        return _train(client, image, samples, config_file, model_dir, trainer_out, output, limits, gpu, on_log, work,
                      uid)
    finally:
        shutil.rmtree(private, ignore_errors=True)


HOST_NAMES = {"meta.json"}  # written into an adapter's folder by the host's registry, never by the trainer
MAX_OUTPUT_FILES = 1000


def copy_out(src: Path, dst: Path, max_bytes: int = 8 << 30) -> None:
    """The trainer's output, copied as this process's own files (dirs 0755, files 0644): regular files
    and directories only, no link followed or kept, bounded in size and count; a name the host's
    registry writes (``meta.json``) is refused. Nothing the trainer's UID wrote stays writable by it.
    Anything wrong is a TrainerError."""
    try:
        _copy_out(src, dst, max_bytes)
    except OSError as exc:
        raise TrainerError(f"the trainer's output cannot be copied ({exc.strerror or exc}): refused") from None


def _copy_out(src: Path, dst: Path, max_bytes: int) -> None:
    total = files = 0
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        files += len(dirnames) + len(filenames)
        if files > MAX_OUTPUT_FILES:
            raise TrainerError(f"the trainer wrote more than {MAX_OUTPUT_FILES} files: refused")
        if Path(dirpath) == src and HOST_NAMES & set(dirnames + filenames):
            raise TrainerError(f"the trainer wrote {sorted(HOST_NAMES & set(dirnames + filenames))[0]}, a name "
                               "only the host's registry writes: refused")
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(mode=0o755, exist_ok=True)
        os.chmod(dst / rel, 0o755)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for name in filenames:
            source = os.path.join(dirpath, name)
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                out = os.open(dst / rel / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                with os.fdopen(out, "wb") as oh:
                    while chunk := fh.read(1 << 20):
                        total += len(chunk)
                        if total > max_bytes:
                            raise TrainerError(f"the trainer wrote more than {max_bytes} bytes")
                        oh.write(chunk)
                os.chmod(dst / rel / name, 0o644)


def _train(client, image, samples, config_file, model_dir, trainer_out: Path, output: Path, limits, gpu, on_log,
           work, uid: int) -> dict:
    container = None
    tail = None
    timed_out = False
    start = time.monotonic()
    try:
        container = client.containers.create(**container_kwargs(image, samples, config_file, model_dir,
                                                                trainer_out, limits, gpu, uid))
        tail = _Tail(container.attach(stdout=True, stderr=True, stream=True, logs=False), limits.log_lines)
        tail.start()
        container.start()
        status, timed_out = wait_or_kill(container, limits.timeout_s)
        tail.join(10)
    except docker.errors.APIError as exc:
        raise InfraError(f"docker engine refused the trainer: {exc.explanation or exc}") from exc
    finally:
        remove_quietly(container)
        shutil.rmtree(work, ignore_errors=True)
    lines = list(tail.lines) if tail else []
    if on_log:
        on_log(lines)
    log.info("trainer.finished", status=status, seconds=round(time.monotonic() - start, 1), timed_out=timed_out)
    message = next((ln for ln in reversed(lines) if ln.startswith("rsi-trainer: ")), lines[-1] if lines else "")
    if timed_out:
        raise TrainerError(f"training timed out after {limits.timeout_s} s")
    if status == EXIT_BAD_INPUT:
        raise TrainerInputError(message.removeprefix("rsi-trainer: "))
    if status != 0 or not (trainer_out / "metrics.json").is_file():
        raise TrainerError(f"trainer exited with {status}: {message}")
    try:
        copy_out(trainer_out, output)
        metrics = json.loads((output / "metrics.json").read_text())
        if not isinstance(metrics, dict) or not isinstance(metrics.get("losses"), list):
            raise TrainerError("the trainer's metrics.json is not a record with its losses: refused")
        # The samples' digest is the file the host mounted, whatever the trainer's metrics claim.
        metrics["data_sha256"] = hashlib.sha256(Path(samples).read_bytes()).hexdigest()
    except BaseException:
        _clean(output)  # a failed run leaves no adapter behind
        raise
    return metrics


def _clean(output: Path) -> None:
    """A failed run must leave no adapter behind."""
    for p in output.iterdir():
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
