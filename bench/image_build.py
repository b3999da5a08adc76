"""Build time and size of the CPU trainer image from the wheelhouse, offline, with no build cache.

    .venv/bin/python bench/image_build.py [--keep] [--out FILE]

Builds the same Dockerfile and context as ``rsi images build`` (``build_trainer_image``), under a
separate tag (``rsi-trainer:bench-build``, so the image the tests use is left alone) with the
engine's layer cache off, on the offline Debian base ``rsi-trainer-base:bookworm`` (built first if
missing, and not counted). Needs ``make trainer-wheels``. The bench tag is removed afterwards
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker  # noqa: E402
from docker.models.images import ImageCollection  # noqa: E402

from bench.results_io import Recorder  # noqa: E402
from orchestrator.sandbox import images  # noqa: E402

TAG = "rsi-trainer:bench-build"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="cpu")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rec = Recorder(f"image_build_{args.variant}")
    client = docker.from_env()
    base = images.TRAINER_OFFLINE_BASE
    if not images._has_image(client, base):
        images.build_offline_base(client, base, images.TRAINER_PACKAGES)
    real = ImageCollection.build

    def no_cache(self, **kwargs):
        return real(self, **kwargs, nocache=True)

    ImageCollection.build = no_cache
    wheels = sorted(images.WHEELHOUSE.glob("*.whl"))
    t0 = time.perf_counter()
    images.build_trainer_image(client, args.variant, tag=TAG, force=True)
    seconds = time.perf_counter() - t0
    ImageCollection.build = real
    size = client.images.get(TAG).attrs["Size"]
    print(f"{TAG}: built in {seconds:.1f} s ({seconds / 60:.1f} min), {size / 1e9:.2f} GB, {len(wheels)} wheels")
    path = rec.write({
        "variant": args.variant,
        "tag": TAG,
        "base_image": base,
        "no_cache": True,
        "wheels": len(wheels),
        "wheelhouse_gb": round(sum(w.stat().st_size for w in wheels) / 1e9, 2),
        "build_s": round(seconds, 1),
        "build_min": round(seconds / 60, 1),
        "image_size_gb": round(size / 1e9, 2),
    }, args.out)
    if not args.keep:  # after the results are stored: a slow engine must not lose the measurement
        try:
            docker.from_env(timeout=600).images.remove(TAG, noprune=False)
        except Exception as exc:  # noqa: BLE001 - an API error or a read timeout of a loaded engine
            print(f"could not remove {TAG}: {exc} (results are in {path})", file=sys.stderr)


if __name__ == "__main__":
    main()
