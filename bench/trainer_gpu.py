"""GPU trainer benchmark: our trainer entry point (Unsloth, packing, length grouping) vs plain
transformers + bitsandbytes + PEFT + TRL, same random-init model, same data set, same batch
size, measured in the same run, each arm in its own process (Unsloth patches libraries).

Runs directly on a GPU machine (no Docker), see ../shared/gpu/README.md for the wheels:

    python bench/trainer_gpu.py --arch llama --out /tmp/bench       # both arms, prints the ratios
    python bench/trainer_gpu.py --arch gpt_oss --data uniform ...    # the other architecture / data
    python bench/trainer_gpu.py --arm ours --out DIR                 # one arm
    python bench/trainer_gpu.py --smoke --arm both --out DIR         # CPU mechanics check (tiny model)

Models (random init from a config; speed does not depend on the weights), with a word-level
tokenizer made on the fly:
  llama   ~0.83 B: hidden 2048, 16 layers; LoRA r=16 on all linear layers.
  gpt_oss ~0.28 B: hidden 1024, 8 layers, 8 experts top-2, harmony-style chat template; LoRA r=16
          on q/k/v/o (the experts are not nn.Linear); eager attention in the baseline (transformers
          has no SDPA path for gpt-oss's attention sinks).
Data (--data): `varied`: samples of 128-1024 tokens, uniform (what a loop archive looks like: short
test replies next to whole-file patches); `uniform`: every sample ~900 tokens (the earlier probe).
Both arms: 4-bit nf4 base, batch 4 rows, max_length 1024, adamw_8bit, gradient checkpointing, bf16,
loss on the reply only. The baseline batches 4 samples padded to the longest, in random order; our
trainer packs samples into rows of 1024 (so a step can hold more than 4 samples: reported as
tokens/step) and groups by length. Timed: steps after the warm-up (Unsloth compiles on its first
step); tokens are the ones TRL counts as processed (attention mask / packed length, no padding).
Target (issue 15): >= 2.0x the baseline's tokens/s at <= 0.6x its peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VOCAB = 32000
SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<pad>",
            "<|start|>", "<|message|>", "<|end|>", "<|channel|>", "<|return|>",
            "system", "user", "assistant", "analysis", "final"]
CHATML = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
          "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")
# Harmony's shape (gpt-oss): the assistant's reply goes to the final channel and ends with <|return|>.
HARMONY = ("{% for m in messages %}{% if m['role'] == 'assistant' %}<|start|> assistant <|channel|> final "
           "<|message|> {{ m['content'] }} <|return|> {% else %}<|start|> {{ m['role'] }} <|message|> "
           "{{ m['content'] }} <|end|> {% endif %}{% endfor %}"
           "{% if add_generation_prompt %}<|start|> assistant {% endif %}")
SIZES = {("llama", False): dict(layers=16, hidden=2048), ("llama", True): dict(layers=2, hidden=128),
         ("gpt_oss", False): dict(layers=8, hidden=1024, experts=8), ("gpt_oss", True): dict(layers=2, hidden=128, experts=4)}
LORA_TARGETS = {"llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                "gpt_oss": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def build_tokenizer(arch: str):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for i in range(VOCAB - len(SPECIALS)):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    eos = "<|return|>" if arch == "gpt_oss" else "<|im_end|>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token=eos, unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=SPECIALS[3:11])
    fast.chat_template = HARMONY if arch == "gpt_oss" else CHATML
    return fast


def build_model(model_dir: Path, arch: str, smoke: bool = False) -> Path:
    """A random-init checkpoint + tokenizer in model_dir (made on the GPU when there is one: faster)."""
    import torch

    if (model_dir / "config.json").exists():
        return model_dir
    size = SIZES[(arch, smoke)]
    tok = build_tokenizer(arch)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        h = size["hidden"]
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=h, intermediate_size=int(h * 2.75) // 64 * 64,
                          num_hidden_layers=size["layers"], num_attention_heads=max(1, h // 128),
                          num_key_value_heads=max(1, h // 512), max_position_embeddings=4096,
                          tie_word_embeddings=False, **ids)
        cls = LlamaForCausalLM
    else:
        from transformers import GptOssConfig, GptOssForCausalLM

        h = size["hidden"]
        cfg = GptOssConfig(vocab_size=VOCAB, hidden_size=h, intermediate_size=h, num_hidden_layers=size["layers"],
                           num_local_experts=size["experts"], num_experts_per_tok=2, head_dim=64,
                           num_attention_heads=max(1, h // 64), num_key_value_heads=max(1, h // 512),
                           sliding_window=128, max_position_embeddings=4096, tie_word_embeddings=False,
                           layer_types=["sliding_attention" if i % 2 == 0 else "full_attention"
                                        for i in range(size["layers"])], **ids)
        cls = GptOssForCausalLM
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = cls(cfg).to(torch.bfloat16)
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    n = sum(p.numel() for p in model.parameters())
    print(f"model: {arch}, {n / 1e9:.3f} B parameters, {size}", flush=True)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return model_dir


def build_samples(path: Path, n: int, data: str, seed: int = 0) -> Path:
    """n chat samples; `varied`: 128-1024 words (one word = one token), `uniform`: 880 words."""
    if path.exists():
        return path
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for _ in range(n):
            length = rng.randint(128, 1000) if data == "varied" else 880
            words = [f"w{rng.randrange(VOCAB - len(SPECIALS))}" for _ in range(length)]
            cut = length // 3
            fh.write(json.dumps({"messages": [{"role": "user", "content": " ".join(words[:cut])},
                                              {"role": "assistant", "content": " ".join(words[cut:])}]}) + "\n")
    return path


def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def arm_ours(model_dir: Path, samples_file: Path, out: Path, arch: str, steps: int, warmup: int, batch: int,
             smoke: bool = False, packing: bool | None = None) -> dict:
    """Our trainer entry point's train() with its GPU defaults (packing, length grouping)."""
    from orchestrator.training.runner.config import TrainConfig
    from orchestrator.training.runner.samples import load_samples
    from orchestrator.training.runner.train import train

    cfg = TrainConfig(max_steps=warmup + steps, batch_size=batch, max_length=1024, learning_rate=2e-4,
                      target_modules=LORA_TARGETS[arch], packing=packing,
                      load_in_4bit=None if _gpu() else False, group_by_length=True if smoke else None)
    rows, digest = load_samples(samples_file, 1, 10**6, 1 << 30)
    m = train(rows, digest, cfg, model_dir, out / "ours_adapter", warmup_steps=warmup)
    timed = m["step_seconds"][warmup:]
    return {"arm": "ours", "tokens_per_s": m["tokens_per_s_after_warmup"], "peak_gib": m["peak_memory_gib"],
            "s_per_step": statistics.median(timed), "tokens_per_step": m["tokens_per_s_after_warmup"] * sum(timed) / len(timed),
            "first_step_s": m["step_seconds"][0], "packing": m["packing"], "padding_free": m["padding_free"],
            "sampling": m["sampling"], "load_in_4bit": m["load_in_4bit"], "optim": m["optim"],
            "loss_first_last": [m["losses"][0], m["losses"][-1]]}


def arm_baseline(model_dir: Path, samples_file: Path, out: Path, arch: str, steps: int, warmup: int, batch: int,
                 smoke: bool = False, packing: bool | None = None) -> dict:
    """Plain transformers + bitsandbytes + PEFT + TRL, as their docs set QLoRA up."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from orchestrator.training.runner.samples import load_samples

    gpu = _gpu()
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    rows, _ = load_samples(samples_file, 1, 10**6, 1 << 30)
    tok = AutoTokenizer.from_pretrained(model_dir)
    kwargs = {}
    if gpu:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True)
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if gpu else torch.float32,
                                                 attn_implementation="eager" if arch == "gpt_oss" else "sdpa", **kwargs)
    if gpu:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                                             target_modules=LORA_TARGETS[arch]))
    seconds: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            sync()
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            sync()
            seconds.append(time.perf_counter() - self.t)

    args = SFTConfig(output_dir=str(out / "baseline_ckpt"), per_device_train_batch_size=batch, max_steps=warmup + steps,
                     max_length=1024, optim="adamw_8bit" if gpu else "adamw_torch", gradient_checkpointing=gpu,
                     bf16=gpu, logging_steps=1, save_strategy="no", report_to="none", learning_rate=2e-4,
                     completion_only_loss=True, use_cpu=not gpu)
    cls = SFTTrainer
    if not gpu:  # CPU smoke only: TRL's fused LM-head loss is a Triton (GPU) kernel; use the plain loss there
        from transformers import Trainer

        class CpuSFTTrainer(SFTTrainer):
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                self._seen = getattr(self, "_seen", 0) + int(inputs["attention_mask"].sum())
                self._metrics["train"]["num_tokens"] = [self._seen]
                return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

        cls = CpuSFTTrainer
    trainer = cls(model=model, processing_class=tok, train_dataset=Dataset.from_list(rows), args=args,
                  callbacks=[Timer()])
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    seen = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    timed = seconds[warmup:]
    tokens = seen[-1] - (seen[warmup - 1] if warmup else 0)
    if gpu:
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"arm": "baseline", "tokens_per_s": tokens / sum(timed), "peak_gib": peak,
            "s_per_step": statistics.median(timed), "tokens_per_step": tokens / len(timed),
            "first_step_s": seconds[0], "loss_first_last": [losses[0], losses[-1]]}


def machine() -> dict:
    info = {"host": platform.node(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        pass
    return info


def run_pair(args, work: Path) -> dict:
    """Both arms, each in its own process; returns the comparison (also written to work/result.json)."""
    results = {}
    for arm in ("baseline", "ours"):
        cmd = [sys.executable, __file__, "--arm", arm, "--arch", args.arch, "--data", args.data, "--out", str(args.out),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch)]
        if args.smoke:
            cmd.append("--smoke")
        if args.packing is not None:
            cmd += ["--packing", args.packing]
        start = time.monotonic()
        timeout = args.arm_timeout
        if args.deadline:  # what is left of the caller's budget, for this arm
            timeout = max(1.0, args.deadline - time.time())
        try:
            proc = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=timeout)
        except subprocess.TimeoutExpired:
            results[arm] = {"arm": arm, "error": f"timed out after {timeout:.0f} s"}
            continue
        if proc.returncode != 0:
            results[arm] = {"arm": arm, "error": f"exit {proc.returncode}"}
            continue
        results[arm] = json.loads((work / f"{arm}.json").read_text())
        results[arm]["process_s"] = round(time.monotonic() - start, 1)
    out = {"arch": args.arch, "data": args.data, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
           "command": " ".join([Path(sys.executable).name] + sys.argv), "machine": machine(), **results}
    base, ours = results.get("baseline", {}), results.get("ours", {})
    if base.get("tokens_per_s") and ours.get("tokens_per_s"):
        out["speedup"] = round(ours["tokens_per_s"] / base["tokens_per_s"], 3)
        out["memory_ratio"] = round(ours["peak_gib"] / base["peak_gib"], 3)
        print(f"[{args.arch}/{args.data}] baseline: {base['s_per_step']:.3f} s/step, {base['tokens_per_step']:,.0f} "
              f"tokens/step, {base['tokens_per_s']:,.0f} tokens/s, peak {base['peak_gib']:.2f} GiB")
        print(f"[{args.arch}/{args.data}] ours:     {ours['s_per_step']:.3f} s/step, {ours['tokens_per_step']:,.0f} "
              f"tokens/step, {ours['tokens_per_s']:,.0f} tokens/s, peak {ours['peak_gib']:.2f} GiB "
              f"(packing {ours['packing']}, padding-free {ours['padding_free']}, {ours['sampling']})")
        print(f"[{args.arch}/{args.data}] ratio: {out['speedup']:.2f}x tokens/s (target >= 2.0), "
              f"{out['memory_ratio']:.2f}x peak memory (target <= 0.6)", flush=True)
    (work / "result.json").write_text(json.dumps(out, indent=2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arm", choices=["ours", "baseline", "both"], default="both")
    ap.add_argument("--arch", choices=["llama", "gpt_oss"], default="llama")
    ap.add_argument("--data", choices=["varied", "uniform"], default="varied")
    ap.add_argument("--packing", choices=["on", "off"], default=None, help="override our arm's packing default")
    ap.add_argument("--out", type=Path, default=Path("/tmp/rsi-gpu-bench"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--arm-timeout", type=float, default=None, help="seconds per arm process")
    ap.add_argument("--deadline", type=float, default=None, help="unix time by which each arm must end")
    ap.add_argument("--smoke", action="store_true", help="CPU mechanics check: tiny model, no 4-bit, 2+1 steps")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.batch = 2, 1, 2
    args.out.mkdir(parents=True, exist_ok=True)
    # the model is shared by both data sets; samples and arm results are per data set (and packing override)
    work = args.out / f"{args.arch}_{args.data}" / (f"packing_{args.packing}" if args.packing else "default")
    work.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(args.out / f"{args.arch}_model", args.arch, args.smoke)
    samples = build_samples(args.out / f"samples_{args.data}.jsonl", (args.steps + args.warmup) * args.batch * 4,
                            args.data)
    if args.arm == "both":
        run_pair(args, work)
        return
    if args.arm == "ours":
        import unsloth  # noqa: F401  (before transformers)
    fn = arm_ours if args.arm == "ours" else arm_baseline
    packing = None if args.packing is None else args.packing == "on"
    result = fn(model_dir, samples, work, args.arch, args.steps, args.warmup, args.batch, smoke=args.smoke,
                packing=packing)
    (work / f"{args.arm}.json").write_text(json.dumps(result))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
