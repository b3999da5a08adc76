"""Build the sandbox image with the docker SDK, offline when no registry answers.

The base is ``BASE_IMAGE`` when given (or already present), else ``python:3.12-slim``
when a registry serves it, else a Debian bookworm root filesystem made with
``mmdebstrap`` (python3 + python3-pytest) and imported as ``rsi-base:bookworm``.
The sandbox image carries a label with the digest of its sources and base, so a
rebuild with nothing changed returns at once.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import docker
import structlog

log = structlog.get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SANDBOX_DOCKERFILE = REPO_ROOT / "sandbox_image" / "Dockerfile"
RUNNER_DIR = Path(__file__).resolve().parent / "runner"
REGISTRY_BASE = "python:3.12-slim"
OFFLINE_BASE = "rsi-base:bookworm"
DIGEST_LABEL = "org.rsi-lab.source-digest"
MMDEBSTRAP_PACKAGES = "python3,python3-pytest"
TRAINER_DOCKERFILE = REPO_ROOT / "trainer_image" / "Dockerfile"
TRAINER_RUNNER_DIR = Path(__file__).resolve().parents[1] / "training" / "runner"
WHEELHOUSE = REPO_ROOT / "trainer_image" / "wheelhouse"
GPU_WHEELHOUSE = REPO_ROOT / "trainer_image" / "wheelhouse-gpu"  # CUDA torch & co. (make trainer-gpu-image)
TRAINER_OFFLINE_BASE = "rsi-trainer-base:bookworm"
TRAINER_PACKAGES = "python3,python3-venv,ca-certificates"


def _has_image(client, ref: str) -> bool:
    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def build_offline_base(client, tag: str = OFFLINE_BASE, packages: str = MMDEBSTRAP_PACKAGES) -> str:
    """Debian bookworm with the given packages, from the Debian mirror, no registry."""
    if not shutil.which("mmdebstrap"):
        raise RuntimeError("no registry reachable and mmdebstrap missing: apt-get install -y mmdebstrap")
    with tempfile.TemporaryDirectory(prefix="rsi-rootfs-") as tmp:
        rootfs = os.path.join(tmp, "rootfs.tar")
        log.info("images.base.mmdebstrap", tag=tag)
        subprocess.run(
            ["mmdebstrap", "--quiet", "--variant=apt", f"--include={packages}", "bookworm", rootfs],
            check=True,
        )
        repo, _, version = tag.partition(":")
        client.api.import_image_from_file(rootfs, repository=repo, tag=version or "latest")
    return tag


def resolve_base(client, base_image: str | None = None) -> str:
    """The base image to build on, building the offline one when nothing else works."""
    if base_image:
        if not _has_image(client, base_image):
            client.images.pull(base_image)
        return base_image
    for ref in (OFFLINE_BASE, REGISTRY_BASE):
        if _has_image(client, ref):
            return ref
    try:
        client.images.pull(REGISTRY_BASE)
        return REGISTRY_BASE
    except docker.errors.APIError as exc:
        log.info("images.base.pull_failed", image=REGISTRY_BASE, error=str(exc)[:200])
    return build_offline_base(client)


JUDGE_REQUIREMENTS = REPO_ROOT / "sandbox_image" / "judge-requirements.txt"
JUDGE_WHEELS = REPO_ROOT / "sandbox_image" / "judge-wheels"


def judge_wheels(dest: Path = JUDGE_WHEELS) -> list[Path]:
    """The judge's pinned pytest as wheels (sandbox_image/judge-requirements.txt, every one checked by
    its hash), downloaded once on the host; wheels only, so nothing is built or run here."""
    pinned = [line.split("==")[0].strip().lower() for line in JUDGE_REQUIREMENTS.read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    have = sorted(dest.glob("*.whl")) if dest.exists() else []
    if {w.name.split("-")[0].lower() for w in have} >= set(pinned):
        return have
    dest.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                        "--only-binary=:all:", "--no-deps", "--require-hashes", "-d", str(dest),
                        "-r", str(JUDGE_REQUIREMENTS)], capture_output=True, text=True)
    if r.returncode:
        last = [line for line in (r.stderr + r.stdout).splitlines() if line.startswith("ERROR")][-1:]
        raise RuntimeError(f"cannot download the judge's pytest wheels: {' '.join(last) or r.returncode}")
    return sorted(dest.glob("*.whl"))


def _context_files() -> dict[str, bytes]:
    files = {"sandbox_image/Dockerfile": SANDBOX_DOCKERFILE.read_bytes()}
    for path in sorted(RUNNER_DIR.glob("*.py")):
        files[f"orchestrator/sandbox/runner/{path.name}"] = path.read_bytes()
    for wheel in judge_wheels():
        files[f"sandbox_image/judge-wheels/{wheel.name}"] = wheel.read_bytes()
    return files


def _context_tar(files: dict[str, bytes], big_files: dict[str, Path] | None = None):
    buf = tempfile.TemporaryFile()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        for name, path in (big_files or {}).items():
            tar.add(path, arcname=name)
    buf.seek(0)
    return buf


def build_sandbox_image(client=None, tag: str = "rsi-sandbox:latest", base_image: str | None = None,
                        force: bool = False) -> str:
    """Build (or find up to date) the sandbox image; returns its tag."""
    client = client or docker.from_env()
    base = resolve_base(client, base_image)
    files = _context_files()
    digest = hashlib.sha256()
    digest.update(client.images.get(base).id.encode())
    for name, data in files.items():
        digest.update(name.encode() + b"\0" + data)
    want = digest.hexdigest()
    if not force and _has_image(client, tag):
        if client.images.get(tag).labels.get(DIGEST_LABEL) == want:
            log.info("images.sandbox.up_to_date", tag=tag)
            return tag
    log.info("images.sandbox.build", tag=tag, base=base)
    client.images.build(
        fileobj=_context_tar(files), custom_context=True, dockerfile="sandbox_image/Dockerfile",
        tag=tag, buildargs={"BASE_IMAGE": base}, labels={DIGEST_LABEL: want}, rm=True, forcerm=True,
    )
    return tag


def wheelhouse_dir(variant: str) -> Path:
    """Each variant has its own wheelhouse: a CPU and a CUDA torch of the same version cannot share one."""
    return GPU_WHEELHOUSE if variant == "gpu" else WHEELHOUSE


def trainer_build_args(variant: str, base_image: str | None = None) -> dict[str, str]:
    """The Dockerfile's build arguments. Both variants build FROM the same Debian base by default (the
    GPU one gets the CUDA runtime from PyPI's CUDA torch wheels and the driver from the host through the
    NVIDIA container toolkit); ``base_image`` (e.g. nvidia/cuda:...-ubuntu24.04) keeps a registry base as
    an option, with a wheelhouse for its Python (build_wheelhouse.py gpu --python-version 3.12)."""
    if variant not in ("cpu", "gpu"):
        raise ValueError(f"unknown trainer variant {variant!r} (cpu or gpu)")
    return {"BASE_IMAGE": base_image or TRAINER_OFFLINE_BASE, "VARIANT": variant}


def build_trainer_image(client=None, variant: str = "cpu", tag: str | None = None, base_image: str | None = None,
                        force: bool = False) -> str:
    """Build the trainer image from the host-built wheelhouse (``make trainer-wheels`` /
    ``make trainer-gpu-image``)."""
    client = client or docker.from_env()
    tag = tag or f"rsi-trainer:{variant}"
    buildargs = trainer_build_args(variant, base_image)
    requirements = REPO_ROOT / "trainer_image" / f"requirements-{variant}.txt"
    wanted = [line.split("==")[0].lower().replace("_", "-") for line in requirements.read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    house = wheelhouse_dir(variant)
    wheels = sorted(house.glob("*.whl")) if house.exists() else []
    have = {w.name.split("-")[0].lower().replace("_", "-") for w in wheels}
    missing = [w for w in wanted if w not in have]
    cpu_torch = [w.name for w in wheels if variant == "gpu" and w.name.startswith("torch-") and "+cpu" in w.name]
    if cpu_torch:  # a pip configuration with a CPU find-links / index served it instead of PyPI's CUDA build
        raise RuntimeError(f"the GPU wheelhouse holds a CPU torch ({cpu_torch[0]}): remove it and rebuild with "
                           "PyPI's torch (e.g. PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= make trainer-gpu-image)")
    if missing:
        make = "make trainer-gpu-image" if variant == "gpu" else "make trainer-wheels"
        raise RuntimeError(f"trainer wheelhouse {house.name} lacks {', '.join(missing[:5])}...: run `{make}`")
    base_image = buildargs["BASE_IMAGE"]
    if base_image == TRAINER_OFFLINE_BASE:
        if not _has_image(client, base_image):
            build_offline_base(client, base_image, TRAINER_PACKAGES)
    elif not _has_image(client, base_image):
        client.images.pull(base_image)
    files = {"trainer_image/Dockerfile": TRAINER_DOCKERFILE.read_bytes(),
             f"trainer_image/requirements-{variant}.txt": requirements.read_bytes()}
    for path in sorted(TRAINER_RUNNER_DIR.glob("*.py")):
        files[f"orchestrator/training/runner/{path.name}"] = path.read_bytes()
    digest = hashlib.sha256(client.images.get(base_image).id.encode())
    for name, data in files.items():
        digest.update(name.encode() + b"\0" + data)
    for w in wheels:
        digest.update(f"{w.name}:{w.stat().st_size}".encode())
    want = digest.hexdigest()
    if not force and _has_image(client, tag) and client.images.get(tag).labels.get(DIGEST_LABEL) == want:
        log.info("images.trainer.up_to_date", tag=tag)
        return tag
    log.info("images.trainer.build", tag=tag, base=base_image, wheels=len(wheels))
    context = _context_tar(files, {f"trainer_image/wheelhouse/{w.name}": w for w in wheels})
    try:
        client.images.build(fileobj=context, custom_context=True, dockerfile="trainer_image/Dockerfile", tag=tag,
                            buildargs=buildargs, labels={DIGEST_LABEL: want},
                            rm=True, forcerm=True, timeout=3600)
    finally:
        context.close()
    return tag
