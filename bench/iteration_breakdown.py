"""Iteration wall time on the embedded default, broken down by step.

    .venv/bin/python bench/iteration_breakdown.py [--iterations 4] [--task seed]

Runs the real loop (local SmolLM2 on CPU, real sandbox) for a fixed number of
iterations (no plateau or solved stop) and sums each step's time from the run's state:
generation, validation, sandbox (evaluation), mutation gate (generated-test checks),
archive. Prints the share of everything except generation (target: <= 20 %).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_io import Recorder  # noqa: E402
from orchestrator.models.backends import ReplayBackend, make_backend  # noqa: E402
from orchestrator.config import RunConfig  # noqa: E402
from orchestrator.agent.loop import Loop  # noqa: E402
from orchestrator.agent.tasks import humaneval_task, seed_task  # noqa: E402

KEYS = ("generation", "validation", "sandbox", "mutation_gate", "archive")


def accepted_replies(path: Path, iterations: int) -> Path:
    """Replies the policy accepts every time: patches (improving, then not) and mutant-killing tests."""
    fixes = ["def add(a, b):\n    return a + b\n\n\ndef is_even(n):\n    return n % 2 == 1\n",
             "def add(a, b):\n    return a + b\n\n\ndef is_even(n):\n    return n % 2 == 0\n"]
    lines = []
    for i in range(iterations):
        fix = fixes[min(i, 1)]
        lines.append({"phase": "patch", "reply": json.dumps({"rationale": "fix", "edits": [
            {"path": "example.py", "content": fix}]})})
        lines.append({"phase": "tests", "reply": json.dumps({"rationale": "edge", "tests": [
            {"path": f"test_gen_{i}.py", "content": f"from example import add\n\n\ndef test_gen_{i}():\n"
                                                  f"    assert add({i}, 3) == {i + 3}\n"}]})})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def run(cfg, backend, task_name: str, tmp: Path):
    task = seed_task() if task_name == "seed" else humaneval_task(task_name, tmp / "task")
    start = time.perf_counter()
    state = Loop(tmp / "run", cfg, backend, task=task).run()
    return state, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--task", default="seed")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rec = Recorder("iteration_breakdown")
    cfg = RunConfig.load()
    cfg.run.max_iterations, cfg.run.plateau_patience, cfg.run.stop_when_solved = args.iterations, 0, False
    cfg.run.train_every = 0  # generation vs the rest; training bursts are measured by the trainer bench
    with tempfile.TemporaryDirectory() as tmp:
        state, total = run(cfg, make_backend("local", cfg), args.task, Path(tmp))
    with tempfile.TemporaryDirectory() as tmp:
        replay = ReplayBackend(accepted_replies(Path(tmp) / "r.jsonl", args.iterations))
        rstate, _ = run(cfg, replay, "seed", Path(tmp))
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
    rsums = {k: sum(r.timings.get(k, 0.0) for r in rstate.history) for k in KEYS}
    rwall = sum(r.timings.get("wall", 0.0) for r in rstate.history)
    n = max(1, len(rstate.history))
    print(f"replayed, every reply accepted ({n} iterations, seed): non-generation per iteration "
          f"{(rwall - rsums['generation']) / n:.2f}s")
    for k in KEYS[1:]:
        print(f"  {k:14s} {rsums[k] / n:6.2f}s per iteration")
    gen_per_iter = sums["generation"] / max(1, len(state.history))
    share = (rwall - rsums["generation"]) / n / ((rwall - rsums["generation"]) / n + gen_per_iter)
    print(f"with SmolLM2's generation time per iteration ({gen_per_iter:.1f}s) and every reply accepted, "
          f"everything except generation would be {100 * share:.1f}% of an iteration")
    refused = sum(1 for r in state.history if not r.patch_accepted)
    sandbox_runs = sum(1 for r in state.history if r.timings.get("sandbox", 0.0) > 0)
    rec.write({
        "task": state.task_id, "model": state.model_id, "iterations": len(state.history),
        "run_wall_s": round(total, 1),
        "model_run": {
            "steps_s": {k: round(v, 2) for k, v in sums.items()},
            "steps_share_pct": {k: round(100 * v / wall, 1) for k, v in sums.items()},
            "other_s": round(other, 2), "iterations_wall_s": round(wall, 1),
            "per_iteration_s": round(wall / max(1, len(state.history)), 1),
            "generation_per_iteration_s": round(gen_per_iter, 1),
            "non_generation_pct": round(100 * non_gen / wall, 1),
            "iterations_with_patch_refused": refused,
            "iterations_with_a_sandbox_evaluation": sandbox_runs,
            "raw_history": [r.model_dump() for r in state.history],
        },
        "replayed_run": {
            "iterations": n,
            "non_generation_per_iteration_s": round((rwall - rsums["generation"]) / n, 2),
            "per_iteration_s": {k: round(rsums[k] / n, 2) for k in KEYS[1:]},
        },
        "projection_non_generation_pct": round(100 * share, 1),
        "projection_note": "replayed run's non-generation time per iteration against the model run's generation "
                           "time per iteration: two runs combined, not one measured iteration",
        "target_non_generation_pct": 20,
    }, args.out)


if __name__ == "__main__":
    main()
