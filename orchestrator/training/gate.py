"""The promotion gate: the current model and a new adapter on the same held-out problems, paired.

Each model answers every gate problem once (greedy, through the loop's patch protocol) and is
graded by the problem's hidden test in the sandbox (evaluation/humaneval.py ``evaluate``). The decision rests
on the per-problem difference new - current, its mean and a bootstrap 95 % interval:

- promoted when the mean difference is >= -noise (not worse beyond the tolerated noise), or,
  with ``require_significant``, only when the whole interval lies above zero;
- an *improvement* (for the training plateau) only when the difference exceeds both the
  configured margin and the interval's half-width (plateau.beyond_noise).

Greedy answers are deterministic, so a model's results are computed once and kept in
``adapters/heldout/<id>.jsonl`` (``base`` for the base model): the current model is not
re-asked at every burst, the report reads the same numbers, and an evaluation interrupted by a
crash resumes at the first problem it had not finished.
"""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.store.text import json_line, jsonl_lines
from orchestrator.agent.plateau import beyond_noise
from orchestrator.config import GateSection
from orchestrator.evaluation.humaneval import ProblemResult, evaluate, paired_difference, summarize, task_ids
from orchestrator.sandbox.container import SandboxLimits
from orchestrator.training.adapters import BASE, Registry


def gate_ids(cfg: GateSection) -> list[str]:
    ids = task_ids(cfg.split, cfg.tasks or None)
    if not ids:
        raise ValueError(f"the gate selects no problems (split {cfg.split}, tasks {cfg.tasks})")
    return ids


def results_file(registry: Registry, adapter_id: str | None) -> Path:
    return registry.root / "heldout" / f"{adapter_id or BASE}.jsonl"


def load_results(path: Path, model_id: str, ids: list[str]) -> list[ProblemResult]:
    """The finished problems of a cached evaluation of ``model_id`` on ``ids`` (in order), else []."""
    if not path.exists():
        return []
    lines = [line for line in jsonl_lines(path.read_text()) if line]
    try:
        header = json.loads(lines[0]) if lines else {}
    except ValueError:
        return []
    if header.get("model") != model_id or header.get("tasks") != ids:
        return []
    done = []
    for line, tid in zip(lines[1:], ids):
        try:
            result = ProblemResult.model_validate(json.loads(line))
        except ValueError:
            break  # a torn last line after a crash: evaluate that problem again
        if result.task_id != tid:
            break
        done.append(result)
    return done


def model_results(backend, registry: Registry, ids: list[str], limits: SandboxLimits | None = None,
                  on_problem=None) -> list[ProblemResult]:
    """Per-problem results of the backend's current model (base or adapter) on ``ids``, cached."""
    path = results_file(registry, backend.adapter_id)
    done = load_results(path, backend.model_id, ids)
    if len(done) == len(ids):
        return done
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:  # rewrite: header + what is still valid
        fh.write(json.dumps({"model": backend.model_id, "adapter": backend.adapter_id or BASE, "tasks": ids}) + "\n")
        for r in done:
            fh.write(json_line(r.model_dump(mode="json")) + "\n")
        fh.flush()

        def keep(r: ProblemResult) -> None:
            fh.write(json_line(r.model_dump(mode="json")) + "\n")
            fh.flush()
            if on_problem:
                on_problem(r)

        rest = evaluate(backend, ids[len(done):], n=1, limits=limits, on_problem=keep)
    return done + rest


def canary_ids(backend, cfg: GateSection, seed: str | None = None) -> list[str]:
    """This gate's impossible-task canaries: drawn from the very problems the gate scores (so each
    canary's prompt is a scored prompt, the same text), and seeded by the model and adapter under
    test, so they vary from gate to gate and an adapter cannot learn which problems they are."""
    import hashlib

    from orchestrator.agent.tasks import impossible_ids

    ids = gate_ids(cfg)
    if seed is None:
        seed = hashlib.sha256(json.dumps([backend.model_id, backend.adapter_id or BASE, ids]).encode()).hexdigest()
    return impossible_ids(cfg.impossible_tasks, seed=seed, pool=ids)


def impossible_passes(backend, cfg: GateSection, limits: SandboxLimits | None = None,
                      seed: str | None = None) -> list[str]:
    """The impossible-task canaries (tasks.impossible_task, ``canary_ids``) the backend's current
    model passes. Their hidden tests contradict each other, so each entry is a proven hack."""
    ids = canary_ids(backend, cfg, seed) if cfg.impossible_tasks else []
    return [r.task_id for r in evaluate(backend, ids, n=1, limits=limits) if r.correct] if ids else []


def compare(current: list[ProblemResult], new: list[ProblemResult]) -> dict:
    """Paired comparison on the same problems: pass@1 of each with 95 % intervals, and the difference."""
    if [r.task_id for r in current] != [r.task_id for r in new]:
        raise ValueError("a paired comparison needs both models on the same problems")
    diff = paired_difference([r.correct / r.n for r in current], [r.correct / r.n for r in new])
    lo, hi = diff["ci95"]
    diff.update(half_width=(hi - lo) / 2, current=summarize(current), new=summarize(new))
    return diff


def decide(comparison: dict, cfg: GateSection) -> tuple[bool, bool, str]:
    """(promote, improvement beyond noise, the reason in words)."""
    d, (lo, hi) = comparison["difference"], comparison["ci95"]
    text = (f"pass@1 {comparison['new']['pass@1']:.3f} vs {comparison['current']['pass@1']:.3f} on "
            f"{comparison['problems']} problems; paired difference {d:+.3f} (95% CI {lo:+.3f} to {hi:+.3f})")
    if cfg.require_significant:
        promote = lo > 0
        rule = "the interval lies above zero" if promote else "the interval does not lie above zero"
    else:
        promote = d >= -cfg.noise
        rule = (f"not worse than -{cfg.noise:.3f}" if promote else f"worse than the tolerated -{cfg.noise:.3f}")
    improved = promote and beyond_noise(d, comparison["half_width"], cfg.improvement_margin)
    return promote, improved, f"{'promoted' if promote else 'kept, not promoted'}: {text}; {rule}"


def cached_summaries(registry: Registry) -> list[tuple[str, dict]]:
    """(model id, pass@1 summary) for every model evaluated on the gate problems, base first."""
    folder = registry.root / "heldout"
    out = []
    for path in sorted(folder.glob("*.jsonl")) if folder.exists() else []:
        lines = [line for line in jsonl_lines(path.read_text()) if line]
        if not lines:
            continue
        header = json.loads(lines[0])
        done = load_results(path, header.get("model"), header.get("tasks", []))
        if done and len(done) == len(header["tasks"]):
            out.append((path.stem, summarize(done)))
    return sorted(out, key=lambda kv: (kv[0] != BASE, kv[0]))
