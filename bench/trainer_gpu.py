"""GPU trainer benchmark: our trainer entry point (Unsloth) vs plain transformers + bitsandbytes
+ PEFT + TRL, same random-init model, same data, same batch, measured in the same run.

Runs directly on a GPU machine (no Docker), see ../shared/gpu/README.md for the wheels:

    python bench/trainer_gpu.py --out /tmp/bench            # both arms, prints the ratios
    python bench/trainer_gpu.py --arm unsloth --out DIR     # one arm (each arm runs in its own
                                                            # process: Unsloth patches libraries)

Model: a random-init Llama of ~0.8 B parameters (hidden 2048, 16 layers) built from a config,
with a word-level tokenizer made on the fly (speed does not depend on the weights). Data:
synthetic chat samples of ~900 tokens. Both arms: 4-bit nf4 base, LoRA r=16 on all linear
layers, batch 4, adamw_8bit, gradient checkpointing, bf16; the Unsloth arm also packs rows
(padding-free). Timed: steps after the warm-up (Unsloth compiles on its first step).
Target (issue 5): >= 2.0x the baseline's tokens/s at <= 0.6x its peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "orchestrator"))  # trainer_runner as a top-level package, as in the image

VOCAB = 32000
WORDS_PER_SAMPLE = 880


def build_model_and_data(out: Path, layers: int, hidden: int, samples: int, seed: int = 0) -> tuple[Path, Path]:
    """A random-init Llama checkpoint + word-level tokenizer, and a samples.jsonl."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    model_dir, samples_file = out / "model", out / "samples.jsonl"
    if (model_dir / "config.json").exists() and samples_file.exists():
        return model_dir, samples_file
    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<pad>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for i in range(VOCAB - len(specials)):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>",
                                   unk_token="<unk>", pad_token="<pad>")
    fast.chat_template = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=int(hidden * 2.75) // 64 * 64,
                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 128), num_key_value_heads=max(1, hidden // 512),
                      max_position_embeddings=4096, bos_token_id=1, eos_token_id=4, pad_token_id=5,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(model_dir)
    fast.save_pretrained(model_dir)
    rng = random.Random(seed)
    with open(samples_file, "w") as fh:
        for _ in range(samples):
            words = [f"w{rng.randrange(VOCAB - len(specials))}" for _ in range(WORDS_PER_SAMPLE)]
            cut = WORDS_PER_SAMPLE // 3
            fh.write(json.dumps({"messages": [{"role": "user", "content": " ".join(words[:cut])},
                                              {"role": "assistant", "content": " ".join(words[cut:])}]}) + "\n")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e9:.2f} B parameters, {layers} layers, hidden {hidden}", flush=True)
    return model_dir, samples_file


def arm_unsloth(model_dir: Path, samples_file: Path, out: Path, steps: int, warmup: int, batch: int,
                smoke: bool = False) -> dict:
    from trainer_runner.config import TrainConfig
    from trainer_runner.samples import load_samples
    from trainer_runner.train import train

    cfg = TrainConfig(max_steps=warmup + steps, batch_size=batch, max_length=1024, load_in_4bit=not smoke,
                      optim="adamw_torch" if smoke else "adamw_8bit", packing=True, learning_rate=2e-4)
    rows, digest = load_samples(samples_file, 1, 10**6, 1 << 30)
    m = train(rows, digest, cfg, model_dir, out / "unsloth_adapter", warmup_steps=warmup)
    return {"arm": "unsloth", "tokens_per_s": m["tokens_per_s_after_warmup"], "peak_gib": m["peak_memory_gib"],
            "s_per_step": statistics.median(m["step_seconds"][warmup:])}


def arm_baseline(model_dir: Path, samples_file: Path, out: Path, steps: int, warmup: int, batch: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from trainer_runner.samples import load_samples

    rows, _ = load_samples(samples_file, 1, 10**6, 1 << 30)
    tok = AutoTokenizer.from_pretrained(model_dir)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                               bnb_4bit_use_double_quant=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, dtype=torch.bfloat16,
                                                 attn_implementation="sdpa")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"]))

    class Timer(TrainerCallback):
        seconds: list = []

        def on_step_begin(self, *a, **k):
            torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            torch.cuda.synchronize()
            Timer.seconds.append(time.perf_counter() - self.t)

    args = SFTConfig(output_dir=str(out / "baseline_ckpt"), per_device_train_batch_size=batch, max_steps=warmup + steps,
                     max_length=1024, optim="adamw_8bit", gradient_checkpointing=True, bf16=True, logging_steps=1,
                     save_strategy="no", report_to="none", learning_rate=2e-4, completion_only_loss=True)
    trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=Dataset.from_list(rows), args=args,
                         callbacks=[Timer()])
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    seen = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    timed = Timer.seconds[warmup:]
    return {"arm": "baseline", "tokens_per_s": (seen[-1] - seen[warmup - 1]) / sum(timed),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "s_per_step": statistics.median(timed)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arm", choices=["unsloth", "baseline", "both"], default="both")
    ap.add_argument("--out", type=Path, default=Path("/tmp/rsi-gpu-bench"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--smoke", action="store_true", help="CPU mechanics check: tiny model, no 4-bit, Unsloth arm")
    args = ap.parse_args()
    if args.smoke:
        args.arm, args.layers, args.hidden, args.steps, args.warmup, args.batch = "unsloth", 2, 256, 2, 1, 2
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir, samples = build_model_and_data(args.out, args.layers, args.hidden,
                                              samples=(args.steps + args.warmup) * args.batch * 2)
    if args.arm == "both":
        results = []
        for arm in ("baseline", "unsloth"):
            cmd = [sys.executable, __file__, "--arm", arm, "--out", str(args.out), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--batch", str(args.batch), "--layers", str(args.layers),
                   "--hidden", str(args.hidden)]
            subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            results.append(json.loads((args.out / f"{arm}.json").read_text()))
        base, uns = results
        print(f"baseline: {base['s_per_step']:.3f} s/step, {base['tokens_per_s']:,.0f} tokens/s, "
              f"peak {base['peak_gib']:.2f} GiB")
        print(f"unsloth:  {uns['s_per_step']:.3f} s/step, {uns['tokens_per_s']:,.0f} tokens/s, "
              f"peak {uns['peak_gib']:.2f} GiB")
        print(f"ratio: {uns['tokens_per_s'] / base['tokens_per_s']:.2f}x tokens/s (target >= 2.0), "
              f"{uns['peak_gib'] / base['peak_gib']:.2f}x peak memory (target <= 0.6)")
        return
    fn = arm_unsloth if args.arm == "unsloth" else arm_baseline
    if args.arm == "unsloth":
        import unsloth  # noqa: F401  (before transformers)
    kwargs = {"smoke": True} if args.smoke else {}
    result = fn(model_dir, samples, args.out, args.steps, args.warmup, args.batch, **kwargs)
    (args.out / f"{args.arm}.json").write_text(json.dumps(result))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
