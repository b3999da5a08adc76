"""The whole system on the embedded default (SmolLM2-135M-Instruct, CPU): does self-training help
on problems the loop never saw?

    .venv/bin/python bench/embedded_experiment.py [--rounds 2] [--tasks-per-round 40] [--out DIR]

1. Held-out pass@1 of the base model: the 33 held-out HumanEval problems, one greedy patch
   reply each through the loop's protocol, graded by the hidden tests in the sandbox.
2. K rounds: the loop (1 iteration: patch with retries, then generated tests) on the next
   ``--tasks-per-round`` train-split problems with the current model; every archived sample
   from every round goes to DIR/samples.jsonl; then a training burst (trainer container, CPU)
   and the gate (the current model vs the new adapter on the held-out problems, paired).
3. Held-out pass@1 of the model that is current at the end (the promoted adapter, or the base
   when none was promoted), the paired difference against the base with its bootstrap 95 %
   interval, whether that interval excludes zero, the contamination check, and wall times.

Everything lands in DIR (results.json, per-round runs, adapters/, audit.jsonl); a re-run with
the same --out continues: finished task runs and cached held-out results are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402

from orchestrator import gate  # noqa: E402
from orchestrator.adapters import Registry  # noqa: E402
from orchestrator.archive import Archive  # noqa: E402
from orchestrator.audit import AuditLog  # noqa: E402
from orchestrator.backends import make_backend  # noqa: E402
from orchestrator.config import RunConfig  # noqa: E402
from orchestrator.embedded_model import ensure_converted  # noqa: E402
from orchestrator.humaneval_eval import contamination, summarize, task_ids  # noqa: E402
from orchestrator.loop import Loop  # noqa: E402
from orchestrator.sandbox import SandboxLimits  # noqa: E402
from orchestrator.state import AgentState, state_path  # noqa: E402
from orchestrator.tasks import humaneval_task  # noqa: E402
from orchestrator.trainer_runner.config import TrainConfig  # noqa: E402
from orchestrator.training import burst  # noqa: E402


def loop_on_task(exp: Path, rnd: int, tid: str, config: RunConfig, backend, console: Console) -> AgentState:
    run_dir = exp / f"round{rnd}" / tid.replace("/", "-")
    if state_path(run_dir).exists() and AgentState.load(state_path(run_dir)).step == "done":
        return AgentState.load(state_path(run_dir))
    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished task run starts over
    task = humaneval_task(tid, exp / f"round{rnd}" / "tasks")
    return Loop(run_dir, config, backend, task=task, console=console).run()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tasks-per-round", type=int, default=40)
    ap.add_argument("--iterations", type=int, default=1, help="loop iterations per task")
    ap.add_argument("--heldout", default="", help="comma-separated held-out ids (default: all 33)")
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("runs/embedded-experiment"))
    args = ap.parse_args()

    console = Console(stderr=True)
    exp = args.out
    exp.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    walls: dict[str, float] = {}
    config = RunConfig.load()
    config.run.max_iterations, config.run.train_every, config.run.plateau_patience = args.iterations, 0, 0
    config.gate.tasks = args.heldout.split(",") if args.heldout else []
    backend = make_backend("local", config)
    model_dir = ensure_converted()
    limits = SandboxLimits.load()
    registry = Registry(exp)
    audit = AuditLog(exp / "audit.jsonl")
    archive = Archive(exp / "samples.jsonl")
    heldout = gate.gate_ids(config.gate)
    train = task_ids("train")

    def say(msg):
        console.print(msg)

    # 1. base on the held-out problems (cached in adapters/heldout/base.jsonl; the gate reuses it)
    t0 = time.perf_counter()
    backend.load_adapter(None, None)
    base = gate.model_results(backend, registry, heldout, limits,
                              on_problem=lambda r: say(f"base {r.task_id}: {r.correct}/{r.n} {r.verdicts}"))
    walls["base_heldout_s"] = time.perf_counter() - t0
    say(f"base held-out pass@1 {summarize(base)}")

    rounds = []
    current = registry.current()
    if current:
        backend.load_adapter(registry.path(current), current)
    for rnd in range(args.rounds):
        t0 = time.perf_counter()
        window = [train[(rnd * args.tasks_per_round + i) % len(train)] for i in range(args.tasks_per_round)]
        solved = accepted = 0
        for i, tid in enumerate(window):
            say(f"[round {rnd + 1}/{args.rounds}] task {i + 1}/{len(window)} {tid} "
                f"(model {backend.adapter_id or 'base'})")
            state = loop_on_task(exp, rnd, tid, config, backend, console)
            solved += state.max_reward > 0 and state.best_reward >= state.max_reward
            accepted += sum(r.patch_accepted for r in state.history)
            run_samples = exp / f"round{rnd}" / tid.replace("/", "-") / "samples.jsonl"
            if run_samples.exists():
                for line in run_samples.read_text().splitlines():
                    if line.strip():
                        obj = json.loads(line)
                        archive.add(obj["messages"], obj.get("provenance", {}) | {"round": rnd})
        loop_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        result = burst(exp, exp / "samples.jsonl", len(archive), backend, audit, model_dir,
                       TrainConfig(max_steps=args.train_steps), config.gate, limits, iteration=rnd + 1, say=say)
        rounds.append({"round": rnd + 1, "tasks": len(window), "solved": solved, "patches_accepted": accepted,
                       "samples_total": len(archive), "adapter": result.adapter, "promoted": result.promoted,
                       "improved_beyond_noise": result.improved, "decision": result.reason,
                       "loop_s": round(loop_s, 1), "train_and_gate_s": round(time.perf_counter() - t1, 1)})
        say(f"round {rnd + 1}: {rounds[-1]}")

    # 3. the model that is current now vs the base, paired on the same held-out problems
    t0 = time.perf_counter()
    final_id = registry.current()
    backend.load_adapter(registry.path(final_id) if final_id else None, final_id)
    final = gate.model_results(backend, registry, heldout, limits)
    walls["final_heldout_s"] = time.perf_counter() - t0
    comparison = gate.compare(base, final)
    hits = contamination(exp / "samples.jsonl", "heldout")
    walls["total_s"] = time.perf_counter() - started
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "model": backend.model_id, "heldout_problems": len(heldout), "train_tasks_per_round": args.tasks_per_round,
        "rounds": rounds, "final_adapter": final_id or "base",
        "base": comparison["current"], "final": comparison["new"],
        "difference": comparison["difference"], "difference_ci95": comparison["ci95"],
        "difference_excludes_zero": comparison["excludes_zero"],
        "contamination_hits": len(hits), "samples": len(archive),
        "wall_s": {k: round(v, 1) for k, v in walls.items()},
    }
    (exp / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
