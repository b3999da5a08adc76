"""Trainer entry point: samples + config -> PEFT LoRA adapter + metrics.json.

    python -m rsi_trainer --samples S --config C --model-dir M --output O

Unsloth is imported before transformers/trl/peft (it patches them). On a GPU the base is
loaded in 4 bit, the optimizer is AdamW 8-bit, samples are packed into rows of max_length
(padding-free: Unsloth keeps packed samples apart in attention; it turns packing off itself
for architectures it cannot pack, e.g. gpt-oss) and batches are grouped by length (less
padding where packing is off); Unsloth's loss is chunked/fused. On the CPU Unsloth's fallback
trains in full precision with AdamW, unpacked, in random order. Loss covers the assistant's reply only (prompt-completion rows).
Rows are tokenized here (chat_tokens.py), not by TRL/Unsloth: only the chat template's own special
tokens become control tokens, a special-token string in a message stays ordinary text; a row the
template cannot render that way is left out and named (metrics' ``left_out``).
Everything is written to a temporary directory inside O and renamed into place at the
end, so a failed run leaves no adapter behind. Exit 0 on success, 2 on bad input, 1 on a
training failure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

from .chat_tokens import encode_rows
from .config import TrainConfig
from .samples import BadSamples, load_samples

EXIT_BAD_INPUT = 2


def _fail(message: str, code: int) -> int:
    print(f"rsi-trainer: {message}", file=sys.stderr, flush=True)
    return code


def _peak_memory_gib(gpu: bool) -> float:
    if gpu:
        import torch

        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _step_timer(sync=None):
    """A TrainerCallback recording each optimizer step's wall time (warm-up can be left out)."""
    from transformers import TrainerCallback

    sync = sync or (lambda: None)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kw):
            sync()
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            sync()
            self.seconds.append(time.perf_counter() - self._start)

    return StepTimer()


def _count_batches(trainer) -> list[int]:
    """Wrap the trainer's collator to count the real (unpadded) tokens of every batch, in order."""
    counts: list[int] = []
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        mask = batch.get("attention_mask") if hasattr(batch, "get") else None
        ids = batch["input_ids"]
        counts.append(int(mask.sum()) if mask is not None else int(ids.numel()))
        return batch

    trainer.data_collator = counting
    return counts


def train(rows: list[dict], digest: str, cfg: TrainConfig, model_dir: Path, out: Path, warmup_steps: int = 0) -> dict:
    import unsloth  # noqa: F401  (must come first: it patches transformers, trl and peft)
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from unsloth import FastLanguageModel

    gpu = torch.cuda.is_available()
    load_in_4bit = gpu if cfg.load_in_4bit is None else cfg.load_in_4bit
    if load_in_4bit and not gpu:
        raise ValueError("load_in_4bit needs a GPU")
    optim = cfg.optim or ("adamw_8bit" if gpu else "adamw_torch")
    packing = gpu if cfg.packing is None else cfg.packing
    group_by_length = gpu if cfg.group_by_length is None else cfg.group_by_length
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(model_dir), max_seq_length=cfg.max_length, load_in_4bit=load_in_4bit,
        dtype=None if gpu else torch.float32, local_files_only=True)
    model = FastLanguageModel.get_peft_model(
        model, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules, bias="none", random_state=cfg.seed,
        use_gradient_checkpointing="unsloth" if gpu else False)
    # Pre-tokenized (input_ids + completion_mask): TRL and Unsloth skip their own tokenization, which would
    # turn special-token strings inside a reply into control tokens.
    encoded, left_out = encode_rows(tokenizer, rows, cfg.max_length)
    for line in left_out:
        print(f"rsi-trainer: left out {line}", file=sys.stderr, flush=True)
    if not encoded:
        raise ValueError(f"no sample can be tokenized with its text kept as text ({left_out[0]})")
    dataset = Dataset.from_list(encoded)
    args = SFTConfig(
        output_dir=str(out / "checkpoints"), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, max_length=cfg.max_length, seed=cfg.seed,
        optim=optim, logging_steps=1, save_strategy="no", report_to="none", packing=packing,
        completion_only_loss=True, bf16=gpu and torch.cuda.is_bf16_supported(), fp16=False,
        dataloader_num_workers=0, use_cpu=not gpu, lr_scheduler_type="linear", warmup_steps=0,
        train_sampling_strategy="group_by_length" if group_by_length else "random")
    timer = _step_timer(torch.cuda.synchronize if gpu else None)
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=dataset, args=args, callbacks=[timer])
    batch_tokens = _count_batches(trainer)  # Unsloth's trainer logs no num_tokens: count what is fed
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    steps = result.global_step
    model.save_pretrained(str(out))
    losses = [round(h["loss"], 6) for h in trainer.state.log_history if "loss" in h]
    seen = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    if not seen and batch_tokens:  # cumulative tokens per step from the collator's own count
        seen = [sum(batch_tokens[:i + 1]) for i in range(min(steps, len(batch_tokens)))]
    timed = timer.seconds[warmup_steps:]
    steady = None
    if timed and len(seen) > warmup_steps:
        start_tokens = seen[warmup_steps - 1] if warmup_steps else 0
        steady = round((seen[-1] - start_tokens) / sum(timed), 2)
    return {
        "losses": losses, "steps": steps, "train_seconds": round(seconds, 3),
        "tokens": seen[-1] if seen else 0,  # as counted by TRL (what the steps actually processed)
        "tokens_per_s": round(seen[-1] / seconds, 2) if seen and seconds else 0.0,
        "step_seconds": [round(x, 4) for x in timer.seconds], "warmup_steps": warmup_steps,
        "tokens_per_s_after_warmup": steady,
        "peak_memory_gib": round(_peak_memory_gib(gpu), 3), "samples": len(encoded), "data_sha256": digest,
        "left_out": left_out,
        "device": "cuda" if gpu else "cpu", "load_in_4bit": load_in_4bit, "optim": optim,
        # what the trainer actually did (Unsloth may turn packing / padding-free off for an architecture)
        "packing": bool(getattr(trainer.args, "packing", False)),
        "padding_free": bool(getattr(trainer.args, "padding_free", False)),
        "sampling": trainer.args.train_sampling_strategy,
        "config": cfg.model_dump(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rsi-trainer")
    ap.add_argument("--samples", type=Path, required=True)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--output", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        cfg = TrainConfig.model_validate_json(args.config.read_text())
    except Exception as exc:  # noqa: BLE001 - any config problem is the caller's input
        return _fail(f"bad training config: {exc}", EXIT_BAD_INPUT)
    try:
        rows, digest = load_samples(args.samples, cfg.min_samples, cfg.max_samples, cfg.max_file_bytes)
    except BadSamples as exc:
        return _fail(f"bad samples: {exc}", EXIT_BAD_INPUT)
    if not (args.model_dir / "config.json").exists():
        return _fail(f"no model at {args.model_dir} (config.json missing)", EXIT_BAD_INPUT)
    args.output.mkdir(parents=True, exist_ok=True)
    tmp = args.output / ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    print(f"rsi-trainer: {len(rows)} samples, data {digest[:12]}, config {cfg.model_dump_json()}", flush=True)
    try:
        metrics = train(rows, digest, cfg, args.model_dir, tmp)
    except Exception as exc:  # noqa: BLE001
        shutil.rmtree(tmp, ignore_errors=True)
        return _fail(f"training failed: {type(exc).__name__}: {exc}", 1)
    shutil.rmtree(tmp / "checkpoints", ignore_errors=True)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    for name in os.listdir(tmp):
        os.replace(tmp / name, args.output / name)
    tmp.rmdir()
    print(f"rsi-trainer: done, losses {metrics['losses'][:3]}...{metrics['losses'][-3:]}", flush=True)
    return 0
