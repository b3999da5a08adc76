"""Iteration wall time on the embedded default, broken down by step.

    .venv/bin/python bench/iteration_breakdown.py [--iterations 4] [--task seed]

Runs the real loop (local SmolLM2 on CPU, real sandbox) for a fixed number of
iterations (no plateau or solved stop) and sums each step's time from the run's state:
generation, validation, sandbox (evaluation), mutation gate (generated-test checks),
archive. Prints the share of everything except generation (target: <= 20 %).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.backends import make_backend  # noqa: E402
from orchestrator.config import RunConfig  # noqa: E402
from orchestrator.loop import Loop  # noqa: E402
from orchestrator.tasks import humaneval_task, seed_task  # noqa: E402

KEYS = ("generation", "validation", "sandbox", "mutation_gate", "archive")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--task", default="seed")
    args = ap.parse_args()
    cfg = RunConfig.load()
    cfg.run.max_iterations, cfg.run.plateau_patience, cfg.run.stop_when_solved = args.iterations, 0, False
    cfg.run.train_every = 0  # generation vs the rest; training bursts are measured by the trainer bench
    backend = make_backend("local", cfg)
    with tempfile.TemporaryDirectory() as tmp:
        task = seed_task() if args.task == "seed" else humaneval_task(args.task, Path(tmp) / "task")
        start = time.perf_counter()
        state = Loop(Path(tmp) / "run", cfg, backend, task=task).run()
        total = time.perf_counter() - start
    sums = {k: sum(r.timings.get(k, 0.0) for r in state.history) for k in KEYS}
    wall = sum(r.timings.get("wall", 0.0) for r in state.history)
    other = wall - sum(sums.values())
    print(f"machine: {platform.machine()} cpus={len(os.sched_getaffinity(0))}; model {state.model_id}; "
          f"task {state.task_id}; {len(state.history)} iterations; run wall {total:.1f}s")
    for k in KEYS:
        print(f"  {k:14s} {sums[k]:7.1f}s  {100 * sums[k] / wall:5.1f}%")
    print(f"  {'other':14s} {other:7.1f}s  {100 * other / wall:5.1f}%  (prompts, git, state writes)")
    non_gen = wall - sums["generation"]
    print(f"per iteration {wall / max(1, len(state.history)):.1f}s; everything except generation "
          f"{100 * non_gen / wall:.1f}% (target <= 20%)")


if __name__ == "__main__":
    main()
