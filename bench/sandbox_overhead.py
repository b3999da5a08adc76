"""Sandbox overhead against bare pytest, and parallel throughput.

    .venv/bin/python bench/sandbox_overhead.py [--pairs 15] [--parallel 1,2,4] [--runs 8] [--out FILE]

Overhead: alternating pairs (bare pytest in a subprocess, then a sandboxed run, on the same
workspace); reported as the median of the per-pair differences (sandboxed - bare) and,
separately, the median of the per-pair ratios (sandboxed / bare), with every pair stored. Throughput: the
same number of sandboxed runs done one at a time, then N at a time; runs/s and the
ratio to one at a time, measured in this run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_io import Recorder  # noqa: E402
from orchestrator.sandbox.container import SandboxLimits, connect, run_tests  # noqa: E402

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
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default bench/results/sandbox_overhead.json)")
    args = ap.parse_args()
    rec = Recorder("sandbox_overhead")
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
        ratio = statistics.median(p[1] / p[0] for p in pairs)
        print(f"overhead ({args.pairs} alternating pairs, seed workspace):")
        print(f"  bare pytest, median                        {b * 1000:8.1f} ms")
        print(f"  sandboxed, median                          {s * 1000:8.1f} ms")
        print(f"  median of the paired differences (sb-bare) {diff * 1000:8.1f} ms")
        print(f"  median of the paired ratios (sb/bare)      {ratio:8.2f}x")
        throughput = []
        base_rate = None
        for n in [int(x) for x in args.parallel.split(",")]:
            start = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                list(pool.map(lambda _: run_tests(ws, limits=limits, client=client), range(args.runs)))
            rate = args.runs / (time.perf_counter() - start)
            base_rate = base_rate or rate
            throughput.append({"parallel": n, "runs": args.runs, "runs_per_s": round(rate, 2),
                               "vs_one_at_a_time": round(rate / base_rate, 2)})
            print(f"  parallel={n}: {rate:5.2f} runs/s  ({rate / base_rate:.2f}x one at a time)")
    rec.write({
        "workspace": "seeds/example",
        "pairs": args.pairs,
        "bare_ms_median": round(b * 1000, 1),
        "sandboxed_ms_median": round(s * 1000, 1),
        "paired_difference_ms_median": round(diff * 1000, 1),
        "paired_ratio_median": round(ratio, 2),
        "target_overhead_ms": 150,
        "target_met": diff * 1000 <= 150,
        "raw_pairs_ms": [{"bare": round(p[0] * 1000, 1), "sandboxed": round(p[1] * 1000, 1)} for p in pairs],
        "throughput": throughput,
        "sandbox_image": limits.image,
        "host_pytest": _pytest_version(),
    }, args.out)


def _pytest_version() -> str:
    import pytest

    return pytest.__version__


if __name__ == "__main__":
    main()
