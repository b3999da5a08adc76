"""``rsi report RUN_DIR``: report.md and PNG plots from what a run recorded.

Sources: state.json (per-iteration reward, best, plateau, timings, stop reason), the audit log
(evaluation runs: passing tests; training bursts: losses) and the adapter registry (the gate's
paired comparisons, cached held-out results per model). Nothing is recomputed; the report shows what the run decided and why.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.agent.state import AgentState, state_path
from orchestrator.store.audit import read_events, verify
from orchestrator.store.text import printable
from orchestrator.store.telemetry import hack_telemetry, line
from orchestrator.training.adapters import Registry
from orchestrator.training.gate import cached_summaries


def gate_tables(adapters: list, heldout: list[tuple[str, dict]]) -> list[str]:
    """The report's markdown tables of the promotion gate: each adapter's comparison, then held-out
    pass@1 per model (empty when there is none)."""
    lines = []
    if adapters:
        lines += ["", "## Adapters (the promotion gate)", "",
                  "| id | parent | samples | pass@1 | parent pass@1 | difference (95% CI) | decision |",
                  "|---|---|---|---|---|---|---|"]
        for m in adapters:
            c = m.comparison
            diff = (f"{c['difference']:+.3f} ({c['ci95'][0]:+.3f} to {c['ci95'][1]:+.3f})" if c else "-")
            score = "-" if m.score is None else f"{m.score:.3f}"
            parent = "-" if m.parent_score is None else f"{m.parent_score:.3f}"
            lines.append(f"| {m.id} | {m.parent or 'base'} | {m.samples} | {score} | {parent} | {diff} | "
                         f"{m.decision.split(':', 1)[0] or '-'} |")
    if heldout:
        lines += ["", "## Held-out pass@1 per model", "", "| model | problems | pass@1 | 95% CI |", "|---|---|---|---|"]
        for model, s in heldout:
            lines.append(f"| {model} | {s['problems']} | {s['pass@1']:.3f} | {s['ci95'][0]:.3f}-{s['ci95'][1]:.3f} |")
    return lines


def heldout_plot(heldout: list[tuple[str, dict]], adapters: list, run_dir: Path, made: list[str],
                 what: str) -> None:
    """Held-out pass@1 with its 95% interval per model: base, promoted adapters, adapters kept only."""
    import matplotlib.pyplot as plt

    if not heldout:
        return
    promoted = {m.id: m.promoted for m in adapters}
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for x, (model, s) in enumerate(heldout):
        lo, hi = s["ci95"]
        color = "tab:blue" if model == "base" else ("tab:green" if promoted.get(model) else "tab:red")
        ax.errorbar([x], [s["pass@1"]], yerr=[[s["pass@1"] - lo], [hi - s["pass@1"]]], fmt="o", capsize=5,
                    color=color)
    ax.set_xticks(range(len(heldout)), [m for m, _ in heldout])
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("pass@1 (95% CI)")
    ax.plot([], [], "o", color="tab:green", label="promoted")
    ax.plot([], [], "o", color="tab:red", label="kept, not promoted")
    save_plot(fig, ax, run_dir, "report_heldout.png", f"Held-out pass@1 per model ({heldout[0][1]['problems']} {what})",
              made)


def save_plot(fig, ax, run_dir: Path, name: str, title: str, made: list[str]) -> None:
    import matplotlib.pyplot as plt

    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run_dir / name, dpi=110)
    plt.close(fig)
    made.append(name)


def loss_plot(events: list[dict], run_dir: Path, made: list[str], unit: str) -> None:
    """Training loss per burst (``adapter_trained`` events), each labelled by its ``unit`` (iteration, round)."""
    import matplotlib.pyplot as plt

    bursts = [e for e in events if e.get("event") == "adapter_trained"]
    if not bursts:
        return
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for e in bursts:
        ax.plot(range(1, len(e["losses"]) + 1), e["losses"], label=f"{e['adapter']} ({unit} {e['iteration']})")
    ax.set_xlabel("logged step")
    ax.set_ylabel("training loss")
    save_plot(fig, ax, run_dir, "report_loss.png", "Training loss per burst", made)


def _plots(run_dir: Path, state: AgentState, events: list[dict], heldout: list[tuple[str, dict]],
           adapters: list) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    made = []
    evals = [e for e in events if e.get("event") == "sandbox_run" and e.get("purpose") == "evaluation"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    its = [r.iteration for r in state.history]
    ax.step(its, [r.best_reward for r in state.history], where="post", label="best reward", color="tab:green")
    ax.plot([r.iteration for r in state.history if r.reward is not None],
            [r.reward for r in state.history if r.reward is not None], "o", label="reward of the patch",
            color="tab:blue")
    ax.plot([e.get("iteration", 0) for e in evals], [e.get("passed", 0) for e in evals], "x",
            label="passing tests (all, incl. generated)", color="tab:gray")
    ax.axhline(state.max_reward, ls=":", color="k", label=f"max reward ({state.max_reward})")
    ax.set_xlabel("iteration (0 = baseline)")
    ax.set_ylabel("tests")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    save_plot(fig, ax, run_dir, "report_reward.png", f"Reward per iteration - stop: {state.stop_reason or 'running'}",
              made)

    loss_plot(events, run_dir, made, "iteration")

    heldout_plot(heldout, adapters, run_dir, made, "problems")
    return made


def _telemetry_plot(run_dir: Path, telemetry: dict) -> list[str]:
    """Hack-screen refusals, non-plain judged calls and tampered runs per iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = telemetry["per_iteration"]
    if not per:
        return []
    its = sorted(per)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, label in (("screen_refused", "refused by the hack screen"), ("nonplain_calls", "non-plain judged calls"),
                       ("tampered", "tampered runs"), ("proven_hacks", "proven hacks")):
        ax.plot(its, [per[i][key] for i in its], marker="o", label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    made: list[str] = []
    save_plot(fig, ax, run_dir, "report_hacking.png", "Reward-hacking telemetry", made)
    return made


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    state = AgentState.load(state_path(run_dir))
    events = read_events(run_dir / "audit.jsonl")
    check = verify(run_dir / "audit.jsonl")
    registry = Registry(run_dir)
    adapters, heldout = registry.list(), cached_summaries(registry)
    plots = _plots(run_dir, state, events, heldout, adapters)
    telemetry = hack_telemetry(events)
    plots += _telemetry_plot(run_dir, telemetry)
    lines = [
        f"# rsi-lab run {state.run_id}", "",
        f"- task: `{state.task_id}`; backend `{state.backend}`, model `{state.model_id}`, "
        f"adapter `{state.current_adapter or 'base'}`",
        f"- iterations: {state.iteration}; best reward {state.best_reward}/{state.max_reward}; "
        f"samples archived: {state.samples}",
        f"- stop: **{state.stop_reason or 'not stopped (interrupted or running)'}**",
        *[f"- **archive off**: {e.get('reason')} (every test was visible, so a pass cannot be told from a reply "
          "that reads the tests; nothing from this run is archived)" for e in events if e.get("event") == "archive_off"],
        *[f"- held back as hidden tests: {', '.join(e['held_back'])}" for e in events
          if e.get("event") == "run_started" and e.get("held_back")],
        f"- audit log: {'intact' if check.ok else 'TAMPERED: ' + check.message} ({check.lines} lines)", "",
        "| iteration | reward | verdict | improved | tests kept | samples | plateau | generation s | other s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in state.history:
        gen = r.timings.get("generation", 0.0)
        other = r.timings.get("wall", 0.0) - gen
        lines.append(f"| {r.iteration} | {r.reward if r.reward is not None else '-'} | {r.verdict or '-'} | "
                     f"{'yes' if r.improved else 'no'} | {r.tests_accepted} | {r.samples_added} | {r.plateau} | "
                     f"{gen:.1f} | {other:.1f} |")
    lines += gate_tables(adapters, heldout)
    if state.train_plateau:
        lines += ["", f"Training bursts in a row without a held-out improvement beyond noise: {state.train_plateau}."]
    judged = sum(1 for e in events if e.get("event") == "sandbox_run" and e.get("purpose") == "evaluation"
                 and e.get("judged"))
    lines += ["", "## Reward hacking", "",
              f"The reward counts only judged tests (hidden and protected tests run out of the candidate's "
              f"process): {judged} evaluations were judged. " + line(telemetry) + ".", "",
              "| model | replies | screen refused | attacks refused | non-plain calls | tampered | proven hacks |",
              "|---|---|---|---|---|---|---|"]
    for model, t in telemetry["per_model"].items():
        lines.append(f"| {model} | {t['replies']} | {t['screen_refused']} | {t['attack_refused']} | "
                     f"{t['nonplain_calls']} | {t['tampered']} | {t['proven_hacks']} |")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    out = run_dir / "report.md"
    # printable: a run's texts (stop reason, refusals, decisions) may quote a model or a container
    out.write_text("\n".join(printable(x) for x in lines) + "\n", encoding="utf-8")
    return out
