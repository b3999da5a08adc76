"""Download the trainer's pinned wheels on the host (no pip network inside the image build).

    python trainer_image/build_wheelhouse.py [cpu|gpu]

CPU: wheels for this machine's Python (3.11, as on the Debian bookworm base). GPU: manylinux
x86_64 wheels for Python 3.12 (Ubuntu 24.04 CUDA base), with their dependencies. Unsloth's wheel carries a web UI
(``studio/``, ~120 MB) the trainer never imports; it is stripped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "wheelhouse"
PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
            "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
            "--platform", "manylinux2014_x86_64"]


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


def main() -> int:
    variant = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    OUT.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "-d", str(OUT), "-r", str(HERE / f"requirements-{variant}.txt")]
    if variant == "gpu":
        cmd += PLATFORM  # with dependencies: the full closure for the CUDA base
    else:
        cmd += ["--no-deps"]  # the CPU list is complete (and leaves triton out on purpose)
    subprocess.run(cmd, check=True)
    for wheel in OUT.glob("unsloth-*.whl"):
        strip_studio(wheel)
    print(f"wheelhouse: {len(list(OUT.glob('*.whl')))} wheels in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
