"""``rsi report RUN_DIR`` for a rounds run: report.md and PNG plots from what the run recorded.

Sources: rounds.json (per round: tasks, candidates, verified, samples, refusals, verdicts,
hack-screen counters, the burst and its gate), the audit log (training losses, its hash chain) and
the adapter registry (the gate's paired comparisons, cached held-out results per model). Nothing is
recomputed.
"""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.agent.rounds import STATE_FILE, RoundsState
from orchestrator.evaluation.report import gate_tables, heldout_plot, loss_plot, save_plot
from orchestrator.store.audit import read_events, verify
from orchestrator.store.text import printable
from orchestrator.training.adapters import Registry
from orchestrator.training.gate import cached_summaries


def _plots(run_dir: Path, state: RoundsState, events: list[dict], heldout, adapters) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[str] = []
    rounds = [r.round for r in state.rounds]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar([x - 0.2 for x in rounds], [r.verified for r in state.rounds], width=0.4, label="verified candidates",
           color="tab:blue")
    ax.bar([x + 0.2 for x in rounds], [r.samples_added for r in state.rounds], width=0.4,
           label="new samples archived", color="tab:green")
    ax.plot(rounds, [r.samples_total for r in state.rounds], "o-", color="k", label="samples in the archive")
    ax.set_xticks(rounds)
    ax.set_xlabel("round")
    ax.set_ylabel("samples")
    save_plot(fig, ax, run_dir, "report_samples.png", "Samples per round", made)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    keys = sorted({k for r in state.rounds for k in r.hack_screen})
    bottom = [0] * len(rounds)
    for key in keys:
        vals = [r.hack_screen.get(key, 0) for r in state.rounds]
        ax.bar(rounds, vals, bottom=bottom, label=key)
        bottom = [b + v for b, v in zip(bottom, vals)]
    if not keys:
        ax.bar(rounds, [0] * len(rounds))
        ax.text(0.5, 0.5, "no candidate was caught by a hack screen", transform=ax.transAxes, ha="center")
    ax.set_xticks(rounds)
    ax.set_xlabel("round")
    ax.set_ylabel("candidates")
    save_plot(fig, ax, run_dir, "report_hack_screen.png", "Hack-screen counts per round (refused or not a clean verdict)",
              made)

    heldout_plot(heldout, adapters, run_dir, made, "gate problems")

    loss_plot(events, run_dir, made, "round")
    return made


def write_rounds_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    state = RoundsState.model_validate(json.loads((run_dir / STATE_FILE).read_text()))
    events = read_events(run_dir / "audit.jsonl")
    check = verify(run_dir / "audit.jsonl")
    registry = Registry(run_dir)
    adapters, heldout = registry.list(), cached_summaries(registry)
    plots = _plots(run_dir, state, events, heldout, adapters)
    lines = [
        f"# rsi-lab rounds run {state.run_id}", "",
        f"- suite: `{state.suite}` (seed {state.suite_seed}); backend `{state.backend}`, model `{state.model_id}`, "
        f"adapter now `{state.current_adapter or 'base'}`",
        f"- rounds: {len(state.rounds)}; replies generated: {state.generated}; samples archived: {state.samples}; "
        f"wall time {state.elapsed_s:.0f} s",
        f"- stop: **{state.stop_reason or 'not stopped (interrupted or running)'}**",
        *([f"- **archive off** for {n} task attempt(s): no hidden tests and none of their visible tests could be "
           "held back, so a pass cannot be told from a reply that reads the tests; nothing from them was archived"]
          if (n := sum(r.unjudged_tasks for r in state.rounds)) else []),
        f"- audit log: {'intact' if check.ok else 'TAMPERED: ' + check.message} ({check.lines} lines)", "",
        "| round | tasks | solved | candidates | accepted | verified | new samples | samples | generated | "
        "hack screen | adapter | gate |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in state.rounds:
        hs = sum(r.hack_screen.values())
        b = r.burst
        gate = "-" if b is None else (b.reason.split(":", 1)[0] if b.reason else "-")
        lines.append(f"| {r.round} | {len(r.done)}/{len(r.task_ids)} | {r.solved_tasks} | {r.candidates} | "
                     f"{r.accepted} | {r.verified} | {r.samples_added} | {r.samples_total} | {r.generated} | {hs} | "
                     f"{(b.adapter if b and b.adapter else '-')} | {gate} |")
    refusals: dict[str, int] = {}
    for r in state.rounds:
        for k, v in r.rejections.items():
            refusals[k] = refusals.get(k, 0) + v
    if refusals:
        lines += ["", "Refused candidates by reason (last attempt): "
                  + ", ".join(f"`{k}` {v}" for k, v in sorted(refusals.items(), key=lambda kv: -kv[1]))]
    lines += gate_tables(adapters, heldout)
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    out = run_dir / "report.md"
    # printable: a run's texts (stop reason, refusals, decisions) may quote a model or a container
    out.write_text("\n".join(printable(x) for x in lines) + "\n", encoding="utf-8")
    return out
