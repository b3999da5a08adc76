"""Tokens/s of the embedded default (SmolLM2-135M-Instruct): the local backend (transformers,
float32, one request at a time) against vLLM (CPU build, managed by orchestrator/models/engine.py), the
same prompts, one run; plus adapter load-to-first-token time.

- one request: prompt 0, ``--tokens`` new tokens (EOS ignored, greedy, no grammar);
- a batch of ``--batch`` (4: the rounds' candidates per task, ``[rounds] k``, one generate_many
  call): the local backend answers the prompts one after the other (its generate_many falls back
  to that); vLLM gets them as concurrent requests, and as one request with ``n`` (how
  generate_many asks it); vLLM also at ``--batch-large`` (8);
- the same on vLLM with a LoRA adapter (random rank-16 on all projections, as the trainer makes);
- adapter load-to-first-token: ``POST /v1/load_lora_adapter`` then a streamed request until its
  first token; and the backend's whole ``load_adapter`` (checks + load + load probe).

    .venv/bin/python bench/engine_throughput.py [--tokens 256] [--batch 4] [--batch-large 8]

Writes bench/results/engine_throughput.json (bench/results_io.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results_io import Recorder  # noqa: E402

from orchestrator.models.embedded_model import MODEL_ID, ensure_converted  # noqa: E402

PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number, with tests.",
    "Explain how a hash map handles collisions, then implement one in Python.",
    "Write a Python class for a bounded FIFO queue with push, pop and len.",
    "Implement binary search in Python and explain each step.",
    "Write a function that parses a CSV line with quoted fields.",
    "Write a Python function that merges two sorted lists into one.",
    "Describe the difference between a process and a thread, with Python examples.",
    "Write a function that checks whether a string is a palindrome, ignoring case.",
]


def messages(i: int) -> list[dict]:
    return [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]


def local_arm(tokens: int, batch: int) -> dict:
    import torch

    from orchestrator.models.backends import LocalBackend

    backend = LocalBackend(ensure_converted(), MODEL_ID, max_new_tokens=tokens)
    tok, model = backend.tokenizer, backend.model

    def one(i: int, n: int = tokens) -> int:
        inputs = tok.apply_chat_template(messages(i), add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 pad_token_id=tok.eos_token_id)
        return int(out.shape[1] - inputs["input_ids"].shape[1])

    one(0, 8)  # warm-up
    times, counts = [], []
    for i in range(batch):  # one after the other; the first is the single request
        t = time.perf_counter()
        counts.append(one(i))
        times.append(time.perf_counter() - t)
    n1, single_s, nb, batch_s = counts[0], times[0], sum(counts), sum(times)
    return {"single": {"tokens": n1, "seconds": round(single_s, 2), "tokens_per_s": round(n1 / single_s, 1)},
            "batch": {"requests": batch, "tokens": nb, "seconds": round(batch_s, 2),
                      "tokens_per_s": round(nb / batch_s, 1), "how": "one request after the other"}}


def _complete(url: str, model: str, i: int, tokens: int, n: int = 1, seed: int | None = None) -> int:
    body = {"model": model, "messages": messages(i), "max_tokens": tokens, "ignore_eos": True, "n": n,
            "temperature": 0.8 if n > 1 else 0.0}
    if seed is not None:
        body["seed"] = seed
    r = requests.post(f"{url}/chat/completions", json=body, headers=auth(url), timeout=1800)
    r.raise_for_status()
    return int(r.json()["usage"]["completion_tokens"])


def auth(url: str) -> dict:
    """The managed server's key (orchestrator/models/engine.py: every request but /health needs it)."""
    from orchestrator.models.engine import api_key_for

    return {"Authorization": f"Bearer {api_key_for(url)}"}


def vllm_arm(url: str, model: str, tokens: int, batch: int) -> dict:
    _complete(url, model, 0, 8)  # warm-up
    t = time.perf_counter()
    n1 = _complete(url, model, 0, tokens)
    single_s = time.perf_counter() - t
    t = time.perf_counter()
    with ThreadPoolExecutor(batch) as pool:
        nb = sum(pool.map(lambda i: _complete(url, model, i, tokens), range(batch)))
    batch_s = time.perf_counter() - t
    t = time.perf_counter()
    nn = _complete(url, model, 0, tokens, n=batch, seed=1)
    n_s = time.perf_counter() - t
    return {"single": {"tokens": n1, "seconds": round(single_s, 2), "tokens_per_s": round(n1 / single_s, 1)},
            "batch": {"requests": batch, "tokens": nb, "seconds": round(batch_s, 2),
                      "tokens_per_s": round(nb / batch_s, 1), "how": "concurrent requests, one per prompt"},
            "batch_n": {"n": batch, "tokens": nn, "seconds": round(n_s, 2), "tokens_per_s": round(nn / n_s, 1),
                        "how": "one request with n (generate_many)"}}


def make_adapter(out: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from orchestrator.training.runner.config import TrainConfig

    c = TrainConfig()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(ensure_converted(), dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, target_modules=c.target_modules))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    peft.save_pretrained(out)
    return out


def load_to_first_token(url: str, path: Path, name: str) -> float:
    t = time.perf_counter()
    requests.post(f"{url}/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)},
                  headers=auth(url), timeout=300).raise_for_status()
    with requests.post(f"{url}/chat/completions", stream=True, timeout=300, headers=auth(url),
                       json={"model": name, "messages": messages(0), "max_tokens": 8, "stream": True}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith(b"data: ") and b'"content"' in line:
                break
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4, help="batch size (the rounds' k candidates per task)")
    ap.add_argument("--batch-large", type=int, default=8, help="a larger batch, vLLM only")
    ap.add_argument("--loads", type=int, default=3, help="adapter loads timed")
    ap.add_argument("--skip-local", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rec = Recorder("engine_throughput")
    results: dict = {"model": MODEL_ID, "tokens_per_request": args.tokens, "batch": args.batch,
                     "batch_large": args.batch_large, "prompts": PROMPTS}

    if not args.skip_local:
        print("local backend ...", file=sys.stderr)
        results["local"] = local_arm(args.tokens, args.batch)
        print(results["local"], file=sys.stderr)
        rec.write(results | {"complete": False}, args.out)  # kept if a later arm fails

    from orchestrator.models.backends import VLLMBackend
    from orchestrator.models.engine import Engine, EngineSpec

    engine = Engine(EngineSpec(ensure_converted())).start(say=lambda s: print(s, file=sys.stderr))
    try:
        url = engine.base_url
        results["vllm"] = vllm_arm(url, "base", args.tokens, args.batch)
        print(results["vllm"], file=sys.stderr)
        rec.write(speedups(results) | {"complete": False}, args.out)
        results["vllm_large"] = vllm_arm(url, "base", args.tokens, args.batch_large)
        print(results["vllm_large"], file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            adapters = [make_adapter(Path(tmp) / f"a{i}", i) for i in range(args.loads + 1)]
            raw = [load_to_first_token(url, adapters[i], f"bench{i}") for i in range(args.loads)]
            results["adapter_load_to_first_token_s"] = {"median": round(statistics.median(raw), 3),
                                                        "raw": [round(x, 3) for x in raw]}
            results["vllm_lora"] = vllm_arm(url, "bench0", args.tokens, args.batch)
            print(results["vllm_lora"], file=sys.stderr)
            for i in range(args.loads):
                requests.post(f"{url}/unload_lora_adapter", json={"lora_name": f"bench{i}"}, headers=auth(url),
                              timeout=60)
            backend = VLLMBackend(url, MODEL_ID, api_key=engine.api_key)
            t = time.perf_counter()
            backend.load_adapter(adapters[-1], "v0001")
            results["backend_load_adapter_with_probe_s"] = round(time.perf_counter() - t, 3)
    finally:
        engine.stop()
    rec.write(speedups(results) | {"complete": True}, args.out)


def speedups(results: dict) -> dict:
    """vLLM's tokens/s over the local backend's, for the arms measured so far."""
    if "local" not in results or "vllm" not in results:
        return results
    local = results["local"]
    out = {"single": round(results["vllm"]["single"]["tokens_per_s"] / local["single"]["tokens_per_s"], 1)}
    for arm, prefix in (("vllm", ""), ("vllm_large", "large_"), ("vllm_lora", "lora_")):
        if arm in results:
            out[prefix + "batch_concurrent"] = round(results[arm]["batch"]["tokens_per_s"] / local["batch"]["tokens_per_s"], 1)
            out[prefix + "batch_n"] = round(results[arm]["batch_n"]["tokens_per_s"] / local["batch"]["tokens_per_s"], 1)
    return results | {"speedup_vs_local": out}


if __name__ == "__main__":
    main()
