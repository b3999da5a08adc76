"""The embedded experiment, redone with rounds over many tasks: does the model improve on held-out
tasks from its own verified work?

    .venv/bin/python bench/rounds_experiment.py [--rounds 3] [--tasks-per-round 16] [--k 4] [--seeds 0,1]
        [--heldout-bugfix 32] [--backend auto] [--out DIR]

Per seed (a separate run directory each):
1. the base model on the held-out tasks: the held-out HumanEval problems (``--gate-tasks``, default
   all 33; the gate promotes on the same ones) and held-out bug-fix tasks (the first bug of each
   held-out problem, ``--heldout-bugfix`` of them), one greedy reply each in the model's reply
   format, verified like an archived sample (every in-process and every judged test passes);
2. ``--rounds`` rounds (orchestrator/agent/rounds.py) over ``--suite`` (default bugfix-train+humaneval-train):
   k sampled candidates per task, verified in the sandbox, archived, a training burst, the gate;
3. the model that is current at the end (the last promoted adapter, or the base) on the same
   held-out tasks; the paired per-task difference final - base with its bootstrap 95 % interval, for
   each held-out set. Improvement is claimed only where the interval excludes zero.

Raw numbers: bench/results/rounds_experiment.json (machine, date, command); every run directory
(rounds.json, samples.jsonl, adapters/, audit.jsonl, report.md) stays under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402

from bench.results_io import Recorder  # noqa: E402
from orchestrator.training import gate  # noqa: E402
from orchestrator.training.adapters import Registry  # noqa: E402
from orchestrator.config import RunConfig  # noqa: E402
from orchestrator.evaluation.humaneval import ProblemResult, contamination, paired_difference, summarize  # noqa: E402
from orchestrator.agent.rounds import Rounds, RoundsState, Trainer, evaluate_tasks, is_rounds_dir  # noqa: E402
from orchestrator.sandbox.container import SandboxLimits  # noqa: E402
from orchestrator.evaluation.suites import load_suite  # noqa: E402


def heldout_results(kind: str, backend, tasks, run_dir: Path, limits, say) -> list[ProblemResult]:
    """Held-out results of the backend's current model (one greedy reply per task in the model's reply
    format, verified like an archived sample: every in-process and judged test passes), cached per
    model in the run dir."""
    path = run_dir / f"heldout_{kind}" / f"{backend.adapter_id or 'base'}.jsonl"
    ids = [t.id for t in tasks]
    if path.exists():
        lines = path.read_text().splitlines()
        if lines and json.loads(lines[0]) == {"model": backend.model_id, "tasks": ids}:
            done = [ProblemResult.model_validate_json(x) for x in lines[1:] if x.strip()]
            if [r.task_id for r in done] == ids:
                return done
    res = evaluate_tasks(backend, tasks, limits, run_dir / "work" / "heldout",
                         on_task=lambda r: say(f"{backend.adapter_id or 'base'} {r.task_id}: {r.correct} {r.verdicts}"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": backend.model_id, "tasks": ids}) + "\n"
                    + "".join(r.model_dump_json() + "\n" for r in res))
    return res


def one_seed(seed: int, args, backend, trainer, say) -> dict:
    out = args.out / f"seed{seed}"
    config = RunConfig.load(args.config)
    r = config.rounds
    r.seed, r.rounds, r.tasks_per_round, r.k, r.train_steps = seed, args.rounds, args.tasks_per_round, args.k, \
        args.train_steps
    r.max_wall_s = args.max_wall or 0
    r.suite = args.suite
    config.gate.tasks = args.gate_tasks.split(",") if args.gate_tasks else []
    limits = SandboxLimits.load()
    walls: dict[str, float] = {}
    gate_ids = gate.gate_ids(config.gate)
    heldout_he = [t for t in load_suite("humaneval-heldout", seed).tasks if t.id in gate_ids]
    heldout_bf = [t for t in load_suite("bugfix-heldout", seed).tasks if t.id.endswith("#0")][:args.heldout_bugfix]
    out.mkdir(parents=True, exist_ok=True)

    # the driver first (it creates the run directory), or its resume
    driver = Rounds(out, config, backend, None if is_rounds_dir(out) else load_suite(args.suite, seed), trainer=trainer) \
        if is_rounds_dir(out) or not any(out.iterdir()) else None
    if driver is None:
        raise SystemExit(f"{out} holds something that is not a rounds run; choose another --out")
    registry = Registry(out)

    t0 = time.perf_counter()
    if backend.adapter_id:  # the base first, whatever a resumed run had loaded
        backend.load_adapter(None, None)
    base_he = heldout_results("humaneval", backend, heldout_he, out, limits, say)
    base_bf = heldout_results("bugfix", backend, heldout_bf, out, limits, say)
    walls["base_heldout_s"] = time.perf_counter() - t0
    if driver.state.current_adapter:
        backend.load_adapter(registry.path(driver.state.current_adapter), driver.state.current_adapter)

    t0 = time.perf_counter()
    state: RoundsState = driver.run()
    walls["rounds_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    final_id = registry.current()
    backend.load_adapter(registry.path(final_id) if final_id else None, final_id)
    final_he = heldout_results("humaneval", backend, heldout_he, out, limits, say)
    final_bf = heldout_results("bugfix", backend, heldout_bf, out, limits, say)
    walls["final_heldout_s"] = time.perf_counter() - t0

    def paired(a, b):
        d = paired_difference([x.correct for x in a], [x.correct for x in b])
        return {"base": summarize(a), "final": summarize(b), **d}

    return {
        "seed": seed, "run_dir": str(out), "final_model": final_id or "base", "stop_reason": state.stop_reason,
        "humaneval_heldout": paired(base_he, final_he), "bugfix_heldout": paired(base_bf, final_bf),
        "rounds": [{"round": x.round, "tasks": len(x.task_ids), "tasks_done": len(x.done),
                    "solved_tasks": x.solved_tasks, "candidates": x.candidates, "accepted": x.accepted,
                    "verified": x.verified, "generated": x.generated, "samples_added": x.samples_added,
                    "samples_total": x.samples_total, "rejections": x.rejections, "verdicts": x.verdicts,
                    "hack_screen": x.hack_screen, "timings_s": {k: round(v, 1) for k, v in x.timings.items()},
                    "adapter": x.burst.adapter if x.burst else None,
                    "promoted": x.burst.promoted if x.burst else False,
                    "improved_beyond_noise": x.burst.improved if x.burst else False,
                    "gate": x.burst.reason if x.burst else None,
                    "train_and_gate_s": round(x.burst.duration_s, 1) if x.burst else None} for x in state.rounds],
        "samples": state.samples, "generated": state.generated,
        "contamination_hits": len(contamination(out / "samples.jsonl", "heldout")),
        "wall_s": {k: round(v, 1) for k, v in walls.items()} | {"rounds_state_elapsed_s": round(state.elapsed_s, 1)},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tasks-per-round", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--max-wall", type=float, default=None, help="wall-time budget of each seed's rounds (s)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--suite", default="bugfix-train+humaneval-train")
    ap.add_argument("--gate-tasks", default="", help="held-out HumanEval ids for the gate and the result (default: all 33)")
    ap.add_argument("--heldout-bugfix", type=int, default=32)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--base-url", default=None)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/rounds-experiment"))
    ap.add_argument("--results", type=Path, default=None, help="default: bench/results/rounds_experiment.json")
    args = ap.parse_args()

    from orchestrator.models.backends import make_backend, resolve_backend

    rec = Recorder("rounds_experiment")
    console = Console(stderr=True)
    config = RunConfig.load(args.config)
    backend = make_backend(resolve_backend(args.backend), config, None, args.base_url)
    from orchestrator.models.embedded_model import ensure_converted

    trainer = Trainer(model_dir=getattr(backend, "model_dir", None) or ensure_converted(), max_steps=args.train_steps)
    started = time.perf_counter()
    try:
        per_seed = [one_seed(int(s), args, backend, trainer, console.print) for s in args.seeds.split(",")]
    finally:
        backend.close()
    results = {"backend": backend.name, "model": backend.model_id, "suite": args.suite, "rounds": args.rounds,
               "tasks_per_round": args.tasks_per_round, "k": args.k, "train_steps": args.train_steps,
               "seeds": per_seed, "total_wall_s": round(time.perf_counter() - started, 1)}
    rec.write(results, args.results)
    print(json.dumps({s["seed"]: {k: s[k]["difference"] for k in ("humaneval_heldout", "bugfix_heldout")}
                      for s in per_seed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
