"""Sandbox overhead against bare pytest, and parallel throughput.

    .venv/bin/python bench/sandbox_overhead.py [--pairs 15] [--parallel 1,2,4] [--runs 8]

Overhead: median over alternating pairs (bare pytest in a subprocess, then a sandboxed
run, on the same workspace) of the per-pair difference and ratio. Throughput: the
same number of sandboxed runs done one at a time, then N at a time; runs/s and the
ratio to one at a time, measured in this run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.sandbox import SandboxLimits, connect, run_tests  # noqa: E402

SEED = Path(__file__).resolve().parent.parent / "seeds" / "example"


def bare(workspace: Path) -> float:
    start = time.perf_counter()
    # Same switches as inside the sandbox (no plugin autoload, no cache, no bytecode writes).
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(workspace)],
                   cwd=workspace, capture_output=True, check=False,
                   env={"PATH": "/usr/bin:/bin", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    return time.perf_counter() - start


def sandboxed(workspace: Path, client, limits) -> float:
    start = time.perf_counter()
    run_tests(workspace, limits=limits, client=client)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=15)
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--parallel", default="1,2,4")
    args = ap.parse_args()
    client = connect()
    limits = SandboxLimits.load()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        subprocess.run(["cp", "-r", str(SEED), str(ws)], check=True)
        sandboxed(ws, client, limits)  # warm-up: page cache, image layers
        bare(ws)
        pairs = [(bare(ws), sandboxed(ws, client, limits)) for _ in range(args.pairs)]
        b = statistics.median(p[0] for p in pairs)
        s = statistics.median(p[1] for p in pairs)
        diff = statistics.median(p[1] - p[0] for p in pairs)
        print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={len(__import__('os').sched_getaffinity(0))}")
        print(f"overhead ({args.pairs} alternating pairs, seed workspace):")
        print(f"  bare pytest median      {b * 1000:8.1f} ms")
        print(f"  sandboxed median        {s * 1000:8.1f} ms")
        print(f"  overhead median         {diff * 1000:8.1f} ms  (ratio {s / b:.2f}x bare)")
        base_rate = None
        for n in [int(x) for x in args.parallel.split(",")]:
            start = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                list(pool.map(lambda _: run_tests(ws, limits=limits, client=client), range(args.runs)))
            rate = args.runs / (time.perf_counter() - start)
            base_rate = base_rate or rate
            print(f"  parallel={n}: {rate:5.2f} runs/s  ({rate / base_rate:.2f}x one at a time)")


if __name__ == "__main__":
    main()
