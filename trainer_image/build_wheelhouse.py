"""Download the trainer's pinned wheels on the host (no pip network inside the image build).

    python trainer_image/build_wheelhouse.py cpu                       # -> trainer_image/wheelhouse/
    python trainer_image/build_wheelhouse.py gpu [--python-version V]  # -> trainer_image/wheelhouse-gpu/

CPU: the complete pinned list for this machine's Python (3.11, as on the Debian bookworm base),
without dependencies. GPU: manylinux x86_64 wheels with their whole closure, for the Python of the
image's base: 3.11 for the default Debian bookworm base (the CUDA torch wheel from PyPI brings the
CUDA runtime as nvidia-* wheels; the driver comes from the host), 3.12 for an Ubuntu 24.04 CUDA base
(``rsi images build --trainer gpu --trainer-base-image nvidia/cuda:...``). Unsloth's wheel carries a
web UI (``studio/``, ~120 MB) the trainer never imports; it is stripped.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = {"cpu": HERE / "wheelhouse", "gpu": HERE / "wheelhouse-gpu"}
DEBIAN_PYTHON = "3.11"  # bookworm's python3, the default base of both images
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]


def download_command(variant: str, python_version: str = DEBIAN_PYTHON, python: str = sys.executable) -> list[str]:
    cmd = [python, "-m", "pip", "download", "-q", "-d", str(OUT[variant]), "-r", str(HERE / f"requirements-{variant}.txt")]
    if variant == "gpu":  # with dependencies: the full closure, for the base's Python and manylinux x86_64
        cmd += ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
        for platform in PLATFORMS:
            cmd += ["--platform", platform]
    else:
        cmd += ["--no-deps"]  # the CPU list is complete (and leaves triton out on purpose)
    return cmd


def strip_studio(wheel: Path) -> None:
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as zin:
        if not any(i.filename.startswith("studio/") for i in zin.infolist()):
            return
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
            for item in zin.infolist():
                if not item.filename.startswith("studio/"):
                    zout.writestr(item, zin.read(item.filename))
    os.replace(tmp, wheel)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variant", nargs="?", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--python-version", default=DEBIAN_PYTHON, help="gpu: the image base's Python (default 3.11)")
    args = ap.parse_args(argv)
    out = OUT[args.variant]
    out.mkdir(exist_ok=True)
    subprocess.run(download_command(args.variant, args.python_version), check=True)
    for wheel in out.glob("unsloth-*.whl"):
        strip_studio(wheel)
    print(f"wheelhouse: {len(list(out.glob('*.whl')))} wheels in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
