"""Where a sandboxed run's time goes, and the engine's floor for starting a container.

    .venv/bin/python bench/container_start.py [--runs 12] [--floor-runs 12] [--out FILE]

1. Breakdown: ``--runs`` real ``run_tests`` calls on ``seeds/example``, instrumented from the
   outside (no change to the sandbox code): the Docker SDK calls the sandbox makes
   (``containers.create``, ``attach``, ``start``, ``wait``, ``reload``, ``remove``) and the staging
   copy (``stage_workspace``) are wrapped with timers. Medians per step over the runs.
2. Start floor: ``--floor-runs`` containers of the sandbox image whose entrypoint is ``/bin/true``,
   created and started one at a time, (a) with no options at all and (b) with the sandbox's own
   create options (network none, read-only root, tmpfs, caps dropped, log driver none...): median
   time of ``container.start()``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker  # noqa: E402
from docker.models.containers import Container, ContainerCollection  # noqa: E402

from bench.results_io import Recorder  # noqa: E402
from orchestrator.sandbox import container as sandbox  # noqa: E402

SEED = Path(__file__).resolve().parent.parent / "seeds" / "example"
STEPS = ("stage_copy", "create", "attach", "start", "wait", "reload", "remove")


class Timers:
    def __init__(self):
        self.current: dict[str, float] = defaultdict(float)

    def wrap(self, owner, attr: str, step: str):
        real = getattr(owner, attr)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.current[step] += time.perf_counter() - t0

        setattr(owner, attr, timed)


def med_ms(values) -> float:
    return round(statistics.median(values) * 1000, 1)


def sandbox_create_kwargs(limits, stage: str) -> dict:
    """The create() options the sandbox itself uses, captured by calling it with a recording client."""
    captured = {}

    class Recording:
        class containers:  # noqa: N801 - mimics client.containers
            @staticmethod
            def create(**kwargs):
                captured.update(kwargs)

    sandbox._create(Recording, limits, stage, "0" * 64, limits.timeout_s)
    return captured


def floor(client, image: str, runs: int, kwargs: dict) -> list[float]:
    times = []
    for _ in range(runs):
        c = client.containers.create(image, entrypoint=["/bin/true"], command=[], detach=True,
                                     **{k: v for k, v in kwargs.items() if k not in ("image", "name", "detach")})
        try:
            t0 = time.perf_counter()
            c.start()
            times.append(time.perf_counter() - t0)
            c.wait(timeout=30)
        finally:
            c.remove(force=True)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--floor-runs", type=int, default=12)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rec = Recorder("container_start")
    client = sandbox.connect()
    limits = sandbox.SandboxLimits.load()
    timers = Timers()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        subprocess.run(["cp", "-r", str(SEED), str(ws)], check=True)
        sandbox.run_tests(ws, limits=limits, client=client)  # warm-up, and the leftover sweep
        timers.wrap(sandbox, "stage_workspace", "stage_copy")
        timers.wrap(ContainerCollection, "create", "create")
        for attr in ("attach", "start", "wait", "reload", "remove"):
            timers.wrap(Container, attr, attr)
        per_run: list[dict] = []
        for _ in range(args.runs):
            timers.current = defaultdict(float)
            t0 = time.perf_counter()
            result = sandbox.run_tests(ws, limits=limits, client=client)
            total = time.perf_counter() - t0
            row = {k: timers.current.get(k, 0.0) for k in STEPS}
            row["total"] = total
            row["other"] = total - sum(row[k] for k in STEPS)
            row["verdict"] = result.verdict
            per_run.append(row)
    breakdown = {k: med_ms(r[k] for r in per_run) for k in (*STEPS, "other", "total")}
    print(f"breakdown, medians of {args.runs} instrumented runs (ms):")
    for k, v in breakdown.items():
        print(f"  {k:10s} {v:7.1f}")

    # The floor: a fresh docker client with no wrappers left in the way does not matter (the
    # wrappers only add timing), but time start() directly here.
    with tempfile.TemporaryDirectory() as stage:
        opts = sandbox_create_kwargs(limits, stage)
        opts.pop("labels", None)  # not a sandbox run: keep the leftover sweep away from these
        plain = floor(client, limits.image, args.floor_runs, {})
        hardened = floor(client, limits.image, args.floor_runs, opts)
    result = {
        "workspace": "seeds/example",
        "runs": args.runs,
        "breakdown_ms_median": breakdown,
        "raw_runs_ms": [{k: (round(v * 1000, 1) if isinstance(v, float) else v) for k, v in r.items()} for r in per_run],
        "floor_runs": args.floor_runs,
        "floor_start_ms_median": {"plain": med_ms(plain), "sandbox_options": med_ms(hardened)},
        "raw_floor_start_ms": {"plain": [round(x * 1000, 1) for x in plain],
                           "sandbox_options": [round(x * 1000, 1) for x in hardened]},
        "sandbox_options_used": sorted(k for k in opts if k not in ("image", "name", "detach")),
        "sandbox_image": limits.image,
        "docker_sdk": docker.__version__,
    }
    print(f"start() floor, medians of {args.floor_runs}: plain {result['floor_start_ms_median']['plain']} ms, "
          f"with the sandbox's options {result['floor_start_ms_median']['sandbox_options']} ms")
    rec.write(result, args.out)


if __name__ == "__main__":
    main()
