"""The GPU check (issue 15), driven by bench/gpu_check.sh; see that file for how to run it.

1. The trainer entry point (``python -m rsi_trainer``, the image's command) on a random-init
   gpt-oss-architecture model with harmony-formatted samples -> a LoRA adapter; the adapter is
   loaded with plain PEFT on the GPU and greedy output must change (and should be the trained reply).
2. bench/trainer_gpu.py, both arms (our entry point vs transformers + bitsandbytes + PEFT + TRL), on
   the Llama and the gpt-oss architecture, then extra variants while the time budget lasts.

Every step's result is merged into OUT/gpu_check.json as soon as it is known, so a run cut short
still returns what it measured. ``--smoke`` runs the same steps on the CPU with tiny models.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import trainer_gpu  # noqa: E402

START = time.monotonic()
REPLY = " ".join(f"w{100 + i}" for i in range(20))


def elapsed() -> float:
    return time.monotonic() - START


class Results:
    """OUT/gpu_check.json in bench/results_io's format (script, command, date, machine; the GPU in
    ``gpu``), rewritten after every step: copy it to bench/results/gpu_check.json to quote it."""

    def __init__(self, path: Path):
        from results_io import Recorder

        self.path, self.recorder = path, Recorder("gpu_check")
        self.data = {"gpu": {}, "steps": {}}

    def put(self, key: str, value) -> None:
        if key == "gpu":
            self.data["gpu"] = value
        else:
            self.data["steps"][key] = value
        self.save()
        print(f"gpu-check: {key}: {json.dumps(value)[:600]}", flush=True)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        self.recorder.write(self.data, out=tmp)
        os.replace(tmp, self.path)


def gpu_info() -> dict:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        return {"nvidia_smi": out}
    except Exception as exc:  # noqa: BLE001
        return {"nvidia_smi": f"unavailable: {exc}"}


def entry_point_check(work: Path, model_dir: Path, smoke: bool, timeout: float) -> dict:
    """Train through the real entry point, then load the adapter with PEFT and compare greedy output."""
    import torch

    from orchestrator.training.runner.config import TrainConfig

    work.mkdir(parents=True, exist_ok=True)
    model_dir = trainer_gpu.build_model(model_dir, "gpt_oss", smoke)  # the benchmark's gpt-oss model
    samples = work / "samples.jsonl"
    with open(samples, "w") as fh:
        for i in range(64):
            prompt = " ".join(f"w{1000 + (i * 7 + j) % 500}" for j in range(8 + i % 16))
            fh.write(json.dumps({"messages": [{"role": "system", "content": "w1 w2 w3"},
                                              {"role": "user", "content": prompt},
                                              {"role": "assistant", "content": REPLY}]}) + "\n")
    cfg = TrainConfig(max_steps=12 if smoke else 40, batch_size=4, learning_rate=2e-3, max_length=256,
                      target_modules=trainer_gpu.LORA_TARGETS["gpt_oss"])
    (work / "config.json").write_text(cfg.model_dump_json())
    # the image copies orchestrator/training/runner to /opt/rsi/rsi_trainer: same here, through a link
    pkg = work / "pkg"
    pkg.mkdir(exist_ok=True)
    link = pkg / "rsi_trainer"
    if not link.exists():
        link.symlink_to(ROOT / "orchestrator" / "training" / "runner")
    adapter = work / "adapter"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(pkg)]))}
    cmd = [sys.executable, "-m", "rsi_trainer", "--samples", str(samples), "--config", str(work / "config.json"),
           "--model-dir", str(model_dir), "--output", str(adapter)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, timeout=timeout)
    result = {"command": " ".join(["python", "-m"] + cmd[2:]), "exit": proc.returncode,
              "train_process_s": round(time.monotonic() - t0, 1)}
    if proc.returncode != 0 or not (adapter / "adapter_model.safetensors").exists():
        result["ok"] = False
        return result
    metrics = json.loads((adapter / "metrics.json").read_text())
    result["metrics"] = {k: metrics[k] for k in ("steps", "device", "load_in_4bit", "optim", "packing", "padding_free",
                                                  "sampling", "peak_memory_gib", "tokens_per_s")}
    result["losses_first_last"] = [metrics["losses"][0], metrics["losses"][-1]]
    result["adapter_bytes"] = (adapter / "adapter_model.safetensors").stat().st_size

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if device == "cuda" else torch.float32,
                                                attn_implementation="eager").to(device).eval()
    messages = [{"role": "system", "content": "w1 w2 w3"}, {"role": "user", "content": "w1003 w1010 w1017 w1024"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = {k: v.to(device) for k, v in ids.items()}

    def greedy(model) -> str:
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=26, do_sample=False, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=False)

    before = greedy(base)
    model = PeftModel.from_pretrained(base, str(adapter)).to(device).eval()
    after = greedy(model)
    result.update(before=before, after=after, changed=before != after, device=device,
                  learned_reply=after.split("<|message|>")[-1].replace("<|return|>", "").split() == REPLY.split(),
                  lora_modules=sum(1 for n, _ in model.named_modules() if n.endswith("lora_A")))
    result["ok"] = result["changed"]
    del model, base  # the benchmark's processes get the GPU to themselves
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def summarize(path: Path) -> dict:
    """Add each benchmark pair's ratios (ours / baseline: tokens/s and peak memory) to a stored
    results file, so the figures BENCHMARKS.md quotes are in it: ``gpu_check.py --summarize FILE``."""
    data = json.loads(path.read_text())
    ratios = {}
    for key, step in data.get("steps", {}).items():
        b, o = step.get("baseline") or {}, step.get("ours") or {}
        if b.get("tokens_per_s") and o.get("tokens_per_s"):
            ratios[key] = {"tokens_per_s": round(o["tokens_per_s"] / b["tokens_per_s"], 2),
                           "peak_memory": round(o["peak_gib"] / b["peak_gib"], 2)}
    data["ratios_ours_over_baseline"] = ratios
    path.write_text(json.dumps(data, indent=2) + "\n")
    return ratios


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--summarize":
        print(json.dumps(summarize(Path(sys.argv[2]))))
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True, help="where gpu_check.json goes")
    ap.add_argument("--work", type=Path, default=Path("/tmp/rsi-gpu-check"))
    ap.add_argument("--budget-s", type=float, default=470, help="stop starting new steps after this")
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU: the mechanics only")
    ap.add_argument("--skip-entry-point", action="store_true", help="only the benchmark pairs (a rerun)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    results = Results(args.out / "gpu_check.json")
    results.put("gpu", gpu_info() | trainer_gpu.machine())

    def left() -> float:
        return args.budget_s - elapsed()

    if args.skip_entry_point:
        results.put("entry_point_gpt_oss", {"ok": True, "skipped": "--skip-entry-point (measured in an earlier run)"})
    try:
        if args.skip_entry_point:
            raise StopIteration
        results.put("entry_point_gpt_oss", entry_point_check(args.work / "entry_point", args.work / "bench" / "gpt_oss_model",
                                                                 args.smoke, max(90, left() - 300)))
    except StopIteration:
        pass
    except Exception as exc:  # noqa: BLE001 - record and go on to the benchmark
        results.put("entry_point_gpt_oss", {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]})

    # (arch, data, packing override, arms, seconds it needs at least)
    plan = [("llama", "varied", None, "both", 100), ("gpt_oss", "varied", None, "both", 100),
            ("llama", "varied", "off", "ours", 50), ("llama", "uniform", None, "both", 100),
            ("gpt_oss", "uniform", None, "both", 100)]
    bench = str(ROOT / "bench" / "trainer_gpu.py")
    for arch, data, packing, arm, need in plan:
        key = f"bench_{arch}_{data}" + (f"_packing_{packing}" if packing else "")
        if left() < need:
            results.put(key, {"skipped": f"time budget ({left():.0f} s left, needs ~{need} s)"})
            continue
        cmd = [sys.executable, bench, "--arch", arch, "--data", data, "--arm", arm, "--out", str(args.work / "bench"),
               "--deadline", f"{time.time() + left() - 5:.0f}"]
        if packing:
            cmd += ["--packing", packing]
        if args.smoke:
            cmd.append("--smoke")
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, timeout=max(30, left() + 10))  # pairs end their arms by the deadline
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        work = args.work / "bench" / f"{arch}_{data}" / (f"packing_{packing}" if packing else "default")
        out = work / ("result.json" if arm == "both" else f"{arm}.json")
        value = json.loads(out.read_text()) if out.exists() else {"error": f"exit {rc}"}
        value["wall_s"] = round(time.monotonic() - t0, 1)
        results.put(key, value)
    ok = results.data["steps"]["entry_point_gpt_oss"].get("ok")
    print(f"gpu-check: done in {elapsed():.0f} s, entry point check {'passed' if ok else 'FAILED'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
