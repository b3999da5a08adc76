"""The loop's training burst: archive -> trainer container -> registry -> gate -> switch.

Every ``train_every`` iterations the loop calls the hook: it trains on all samples so far,
registers the adapter, scores the current model and the new adapter on the fixed task set,
and promotes the adapter only if it is not worse beyond the noise margin. The ``local``
backend then switches to whatever is current, without restarting the run.
"""

from __future__ import annotations

from pathlib import Path

from .adapters import Registry
from .evaluation import DEFAULT_GATE_TASKS, task_set_score
from .trainer import TrainerInputError, run_training
from .trainer_runner.config import TrainConfig


class TrainHook:
    def __init__(self, model_dir: Path, config: TrainConfig | None = None, gpu: bool = False,
                 gate_tasks=DEFAULT_GATE_TASKS, noise: float = 0.1):
        self.model_dir, self.config, self.gpu = Path(model_dir), config or TrainConfig(), gpu
        self.gate_tasks, self.noise = tuple(gate_tasks), noise

    def __call__(self, loop) -> None:
        registry = Registry(loop.run_dir)
        samples = loop.run_dir / "samples.jsonl"
        if len(loop.archive) < self.config.min_samples:
            loop.audit.append("training_skipped", iteration=loop.state.iteration, samples=len(loop.archive),
                              reason=f"fewer than {self.config.min_samples} samples")
            return
        loop.console.print(f"training on {len(loop.archive)} samples ...")
        staging = registry.staging_dir()
        try:
            metrics = run_training(samples, staging, self.config, self.model_dir, gpu=self.gpu,
                                   on_log=lambda lines: loop.audit.append("trainer_log", lines=lines[-60:]))
        except TrainerInputError as exc:
            loop.audit.append("training_refused", iteration=loop.state.iteration, reason=str(exc))
            return
        meta = registry.register(staging, self.config.base_model, self.config.model_dump(), metrics)
        loop.audit.append("adapter_trained", iteration=loop.state.iteration, adapter=meta.id, parent=meta.parent,
                          losses=metrics["losses"], samples=meta.samples, data_sha256=meta.data_sha256)
        backend = loop.backend
        previous = backend.adapter_id
        current_score = task_set_score(backend, self.gate_tasks, loop.limits)
        backend.load_adapter(registry.path(meta.id), meta.id)
        new_score = task_set_score(backend, self.gate_tasks, loop.limits)
        meta = registry.decide(meta.id, new_score, current_score, self.noise)
        if not meta.promoted:
            backend.load_adapter(registry.path(previous) if previous else None, previous)
        loop.state.current_adapter = backend.adapter_id
        loop.audit.append("adapter_decision", iteration=loop.state.iteration, adapter=meta.id,
                          promoted=meta.promoted, score=new_score, current_score=current_score,
                          decision=meta.decision)
        loop.console.print(f"adapter {meta.id}: {meta.decision}")
