"""A training burst: samples -> trainer container -> registry -> held-out gate -> switch.

``burst`` trains on all samples so far, registers the adapter, scores the current model and the
new adapter on the same gate problems (gate.py: paired, held-out by default), records the
verdict and leaves the backend on whatever is current. ``TrainHook`` calls it from the loop every
``train_every`` iterations and counts bursts without a held-out improvement beyond noise (the
training plateau); the experiment in bench/ calls it between rounds.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import GateSection
from orchestrator.sandbox.container import SandboxLimits
from orchestrator.training import gate
from orchestrator.training.adapters import BASE, AdapterRefused, Registry
from orchestrator.training.launcher import TrainerInputError, run_training
from orchestrator.training.runner.config import TrainConfig


@dataclass
class BurstResult:
    adapter: str | None = None  # the new adapter, None when nothing was trained
    promoted: bool = False
    improved: bool = False      # promoted and better beyond noise (plateau.beyond_noise)
    comparison: dict | None = None
    reason: str = ""


def base_model_name(model_dir: Path) -> str:
    """The name of a base model directory: its own name, or the repository of a Hugging Face cache
    snapshot (``models--org--name/snapshots/HASH`` -> ``org/name``)."""
    model_dir = Path(model_dir)
    if model_dir.parent.name == "snapshots" and model_dir.parent.parent.name.startswith("models--"):
        return model_dir.parent.parent.name[len("models--"):].replace("--", "/")
    return model_dir.name


def burst(run_dir: Path, samples: Path, n_samples: int, backend, audit, model_dir: Path, config: TrainConfig,
          gate_cfg: GateSection, limits: SandboxLimits, gpu: bool = False, iteration: int = 0,
          say=print) -> BurstResult:
    registry = Registry(run_dir)
    if n_samples < config.min_samples:
        reason = f"fewer than {config.min_samples} samples ({n_samples})"
        audit.append("training_skipped", iteration=iteration, samples=n_samples, reason=reason)
        return BurstResult(reason=reason)
    say(f"training on {n_samples} samples ...")
    # the adapter's base is the model mounted into the trainer (not the config's default label)
    config = config.model_copy(update={"base_model": base_model_name(model_dir)})
    staging = registry.staging_dir()
    # the GPU profile's sleep mode frees the server's GPU memory during the burst (orchestrator/models/gpu.py)
    training_memory = getattr(backend, "training_memory", None) or contextlib.nullcontext
    try:
        with training_memory():
            metrics = run_training(samples, staging, config, model_dir, gpu=gpu,
                                   on_log=lambda lines: audit.append("trainer_log", lines=lines[-60:]))
    except TrainerInputError as exc:
        audit.append("training_refused", iteration=iteration, reason=str(exc))
        return BurstResult(reason=str(exc))
    meta = registry.register(staging, config.base_model, config.model_dump(), metrics)
    audit.append("adapter_trained", iteration=iteration, adapter=meta.id, parent=meta.parent,
                 losses=metrics["losses"], samples=meta.samples, data_sha256=meta.data_sha256)

    ids = gate.gate_ids(gate_cfg)
    previous = backend.adapter_id

    def progress(r):
        say(f"gate {backend.adapter_id or 'base'} {r.task_id}: {r.correct}/{r.n} {r.verdicts[0]}")

    say(f"gate: {len(ids)} {gate_cfg.split} problems, current model ({previous or 'base'}) then {meta.id}")
    current = gate.model_results(backend, registry, ids, limits, on_problem=progress)
    try:  # the backend serves it only after its checks (vllm: a load probe); else it stays on `previous`
        backend.load_adapter(registry.checked_path(meta.id), meta.id)
    except AdapterRefused as exc:
        reason = str(exc)
        registry.record_decision(meta.id, False, f"refused: {reason}", None, None)
        audit.append("adapter_refused", iteration=iteration, adapter=meta.id, reason=reason,
                     current=previous or BASE)
        say(f"adapter {meta.id}: {reason}; staying on {previous or 'base'}")
        return BurstResult(meta.id, False, False, None, reason)
    new = gate.model_results(backend, registry, ids, limits, on_problem=progress)
    comparison = gate.compare(current, new)
    promote, improved, decision = gate.decide(comparison, gate_cfg)
    hacked = gate.impossible_passes(backend, gate_cfg, limits)
    comparison["impossible_passed"] = hacked
    if hacked:  # a pass of a task no honest solution passes: a proven hack
        promote, improved = False, False
        decision = f"refused: passed impossible-task canaries {hacked} (a proven hack); {decision}"
        audit.append("proven_hack", iteration=iteration, adapter=meta.id, tasks=hacked)
        say(f"[bold red]adapter {meta.id} passed impossible tasks {hacked}: a proven hack[/]")
    meta = registry.record_decision(meta.id, promote, decision, comparison["new"]["pass@1"],
                                    comparison["current"]["pass@1"], comparison)
    if not meta.promoted:
        backend.load_adapter(registry.checked_path(previous), previous)
    audit.append("adapter_decision", iteration=iteration, adapter=meta.id, promoted=meta.promoted,
                 improved=improved, score=comparison["new"]["pass@1"], current_score=comparison["current"]["pass@1"],
                 difference=comparison["difference"], ci95=comparison["ci95"], problems=comparison["problems"],
                 decision=decision)
    say(f"adapter {meta.id}: {decision}")
    return BurstResult(meta.id, meta.promoted, improved, comparison, decision)


class TrainHook:
    """The loop's training step (every ``train_every`` iterations; backends that hot-load adapters),
    gated by the run config's [gate] section."""

    def __init__(self, model_dir: Path, config: TrainConfig | None = None, gpu: bool = False):
        self.model_dir, self.config, self.gpu = Path(model_dir), config or TrainConfig(), gpu

    def __call__(self, loop) -> BurstResult:
        """One burst on the loop's archive; reads the loop, changes nothing in it (``Loop.train`` applies
        the result to the state)."""
        return burst(loop.run_dir, loop.run_dir / "samples.jsonl", len(loop.archive), loop.backend, loop.audit,
                     self.model_dir, self.config, loop.config.gate, loop.limits, self.gpu,
                     loop.state.iteration, say=loop.console.print)
