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
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402

from bench.results_io import Recorder  # noqa: E402
from orchestrator.training import gate  # noqa: E402
from orchestrator.training.adapters import Registry  # noqa: E402
from orchestrator.store.archive import Archive  # noqa: E402
from orchestrator.store.audit import AuditLog  # noqa: E402
from orchestrator.models.backends import make_backend  # noqa: E402
from orchestrator.config import RunConfig  # noqa: E402
from orchestrator.models.embedded_model import ensure_converted  # noqa: E402
from orchestrator.evaluation.humaneval import contamination, summarize, task_ids  # noqa: E402
from orchestrator.agent.loop import Loop  # noqa: E402
from orchestrator.sandbox.container import SandboxLimits  # noqa: E402
from orchestrator.agent.state import AgentState, state_path  # noqa: E402
from orchestrator.agent.tasks import humaneval_task  # noqa: E402
from orchestrator.training.runner.config import TrainConfig  # noqa: E402
from orchestrator.training.burst import burst  # noqa: E402


def loop_on_task(exp: Path, rnd: int, tid: str, config: RunConfig, backend, console: Console) -> AgentState:
    run_dir = exp / f"round{rnd}" / tid.replace("/", "-")
    if state_path(run_dir).exists() and AgentState.load(state_path(run_dir)).step == "done":
        return AgentState.load(state_path(run_dir))
    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished task run starts over
    task = humaneval_task(tid, exp / f"round{rnd}" / "tasks")
    return Loop(run_dir, config, backend, task=task, console=console).run()


def _cached(registry, backend, ids) -> bool:
    """Whether the held-out results of the backend's current model are already on disk (then the
    wall time measured for them is a cache read, not an evaluation)."""
    path = gate.results_file(registry, backend.adapter_id)
    return len(gate.load_results(path, backend.model_id, ids)) == len(ids)


def _first_code(reason: str) -> str:
    # str(Rejection) is "stage/code [path]: detail"
    head = reason.split(":", 1)[0].split(" ", 1)[0]
    return head if "/" in head else (head or "unknown")


def heldout_outcomes(results) -> dict:
    """Per held-out problem: graded verdicts, and refusals counted by their first reason's stage/code."""
    out: dict[str, dict[str, int]] = {"verdicts": {}, "refused_by_first_reason": {}}
    for r in results:
        for v in r.verdicts:
            out["verdicts"][v] = out["verdicts"].get(v, 0) + 1
        for reason in r.reasons:
            code = _first_code(reason)
            out["refused_by_first_reason"][code] = out["refused_by_first_reason"].get(code, 0) + 1
    return out


def refusal_counts(root: Path) -> dict:
    """Every model reply of the loop runs under ``root``, from their audit logs (``model_reply``
    events): per phase, how many replies, how many the policy accepted, and the refused ones counted
    by their first reason's stage/code; and every audit event counted by kind (sandbox runs by
    purpose), which says what reached the sandbox."""
    phases: dict[str, dict] = {}
    events: dict[str, int] = {}
    for audit in sorted(root.rglob("audit.jsonl")):
        if audit.parent == root:
            continue  # the experiment's own log (training/gate), not a loop run
        for line in audit.read_text().splitlines():
            if not line.strip():
                continue
            ev = json.loads(line)
            kind = ev.get("event", "?") + (f":{ev['purpose']}" if ev.get("event") == "sandbox_run" else "")
            events[kind] = events.get(kind, 0) + 1
            if ev.get("event") != "model_reply":
                continue
            p = phases.setdefault(ev.get("phase", "?"), {"replies": 0, "accepted": 0, "refused": 0,
                                                          "refused_by_first_reason": {}})
            p["replies"] += 1
            if ev.get("policy") == "accepted":
                p["accepted"] += 1
                continue
            p["refused"] += 1
            first = (ev.get("reasons") or [{}])[0]
            code = f"{first.get('stage', '?')}/{first.get('code', '?')}"
            p["refused_by_first_reason"][code] = p["refused_by_first_reason"].get(code, 0) + 1
    total = {k: sum(p[k] for p in phases.values()) for k in ("replies", "accepted", "refused")}
    return {"replies": total["replies"], "accepted": total["accepted"], "refused": total["refused"],
            "by_phase": phases, "audit_events": events}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tasks-per-round", type=int, default=40)
    ap.add_argument("--iterations", type=int, default=1, help="loop iterations per task")
    ap.add_argument("--heldout", default="", help="comma-separated held-out ids (default: all 33)")
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("runs/embedded-experiment"))
    ap.add_argument("--results", type=Path, default=None,
                    help="results JSON (default bench/results/embedded_experiment.json)")
    args = ap.parse_args()
    rec = Recorder("embedded_experiment")

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
    base_cached = _cached(registry, backend, heldout)
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
        rounds.append({"round": rnd + 1, "tasks": len(window), "first_task": window[0], "last_task": window[-1],
                       "solved": solved, "patches_accepted": accepted,
                       "samples_total": len(archive), "adapter": result.adapter, "promoted": result.promoted,
                       "improved_beyond_noise": result.improved, "decision": result.reason,
                       "loop_s": round(loop_s, 1), "loop_s_per_task": round(loop_s / len(window), 1),
                       "train_and_gate_s": round(time.perf_counter() - t1, 1),
                       "refusals": refusal_counts(exp / f"round{rnd}")})
        say(f"round {rnd + 1}: {rounds[-1]}")

    # 3. the model that is current now vs the base, paired on the same held-out problems
    t0 = time.perf_counter()
    final_id = registry.current()
    backend.load_adapter(registry.path(final_id) if final_id else None, final_id)
    final_cached = _cached(registry, backend, heldout)
    final = gate.model_results(backend, registry, heldout, limits)
    walls["final_heldout_s"] = time.perf_counter() - t0
    comparison = gate.compare(base, final)
    hits = contamination(exp / "samples.jsonl", "heldout")
    walls["total_s"] = time.perf_counter() - started
    results = {
        "machine": rec.meta["machine"],
        "model": backend.model_id, "heldout_problems": len(heldout), "train_tasks_per_round": args.tasks_per_round,
        "rounds": rounds, "final_adapter": final_id or "base",
        "base": comparison["current"], "final": comparison["new"],
        "difference": comparison["difference"], "difference_ci95": comparison["ci95"],
        "difference_excludes_zero": comparison["excludes_zero"],
        "contamination_hits": len(hits), "samples": len(archive),
        "wall_s": {k: round(v, 1) for k, v in walls.items()},
        "heldout_cached": {"base": base_cached, "final": final_cached},
        "base_heldout_outcomes": heldout_outcomes(base),
        "final_heldout_outcomes": heldout_outcomes(final),
        "refusals_all_rounds": refusal_counts(exp),
        "loop_s_total": round(sum(r["loop_s"] for r in rounds), 1),
        "loop_tasks_total": sum(r["tasks"] for r in rounds),
        "loop_s_per_task_all_rounds": round(sum(r["loop_s"] for r in rounds) / max(1, sum(r["tasks"] for r in rounds)), 1),
        "out_dir": str(exp),
    }
    (exp / "results.json").write_text(json.dumps(results, indent=2))
    rec.write(results, args.results)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
