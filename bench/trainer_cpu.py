"""The CPU trainer container on the embedded SmolLM2-135M: loss, tokens/s, peak RSS, wall time.

    .venv/bin/python bench/trainer_cpu.py [--samples 8] [--steps 12] [--out FILE]

Same data and settings as tests/test_trainer.py (8 copies of one short patch reply, batch 2,
lr 1e-3, LoRA r 16 / alpha 32 on the 7 projections, full precision, adamw_torch): one run of
``run_training`` in the network-less trainer image ``rsi-trainer:cpu``. Wall time is measured
around the whole call (container create to adapter on disk); the rest comes from the trainer's
own metrics.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_io import Recorder  # noqa: E402
from orchestrator.models.embedded_model import ensure_converted  # noqa: E402
from orchestrator.training.launcher import TrainerLimits, run_training  # noqa: E402
from orchestrator.training.runner.config import TrainConfig  # noqa: E402

REPLY = json.dumps({"rationale": "use plus", "edits": [{"path": "example.py",
                                                       "content": "def add(a, b):\n    return a + b\n"}]})


def sample(i: int) -> dict:
    return {"messages": [{"role": "system", "content": "Reply with one JSON object."},
                         {"role": "user", "content": f"Fix add in example.py: def add(a, b): return a - b (case {i})"},
                         {"role": "assistant", "content": REPLY}]}


def pinned() -> dict:
    """The trainer image's stack as pinned in trainer_image/requirements-cpu.txt."""
    req = Path(__file__).resolve().parent.parent / "trainer_image" / "requirements-cpu.txt"
    return dict(line.strip().split("==", 1) for line in req.read_text().splitlines()
                if "==" in line and not line.lstrip().startswith("#"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rec = Recorder("trainer_cpu")
    config = TrainConfig(max_steps=args.steps, batch_size=2, learning_rate=1e-3, max_length=512)
    model_dir = ensure_converted()
    limits = TrainerLimits()
    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(tmp) / "s.jsonl"
        samples.write_text("".join(json.dumps(sample(i)) + "\n" for i in range(args.samples)))
        t0 = time.perf_counter()
        try:
            metrics = run_training(samples, Path(tmp) / "adapter", config, model_dir, limits=limits)
        except Exception as exc:  # noqa: BLE001 - a failed run is a result too (e.g. the timeout under load)
            wall = time.perf_counter() - t0
            print(f"trainer run failed after {wall:.1f} s: {exc}")
            rec.write({"image": limits.image_cpu, "samples": args.samples, "outcome": "failed",
                       "error": f"{type(exc).__name__}: {exc}"[:500], "container_wall_s": round(wall, 1),
                       "timeout_s": limits.timeout_s, "image_packages": pinned()}, args.out)
            raise SystemExit(1) from exc
        wall = time.perf_counter() - t0
    losses = metrics["losses"]
    print(f"loss {losses[0]} -> {losses[-1]} ({len(losses)} logged steps); tokens/s {metrics['tokens_per_s']}; "
          f"peak RSS {metrics['peak_memory_gib']} GiB; wall {wall:.1f} s")
    rec.write({
        "image": limits.image_cpu,
        "outcome": "ok",
        "samples": args.samples,
        "tokens_per_sample": round(metrics["tokens"] / max(1, metrics["steps"] * config.batch_size), 1),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "logged_steps": len(losses),
        "tokens_per_s": metrics["tokens_per_s"],
        "peak_rss_gib": metrics["peak_memory_gib"],
        "container_wall_s": round(wall, 1),
        "train_seconds": metrics["train_seconds"],
        "image_packages": pinned(),
        "raw_metrics": metrics,
    }, args.out)


if __name__ == "__main__":
    main()
