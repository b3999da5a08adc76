"""The embedded default: which PyPI-shipped model can close the loop on this machine, by measurement.

    .venv/bin/python bench/embedded_default.py [--models qwen2.5-coder-0.5b,smollm2-135m] [--tokens 128]
                                               [--no-vllm] [--train-steps 4]

Per embedded model (orchestrator/models/embedded_model.py; prepared with `rsi models embedded NAME`):

- **tokens/s, transformers in process** (the local backend's load: the model's dtype, 2 threads):
  ``--tokens`` new tokens, greedy, EOS ignored, on the code-format patch prompts of three HumanEval
  train problems, one request at a time (after one warm-up request);
- **tokens/s, vLLM** (the #12 engine, orchestrator/models/engine.py, on the same converted directory, where
  ``make vllm`` built its venv): one request, and ``k`` samples in one request with ``n`` (how the
  rounds ask for candidates);
- **LoRA step time on the CPU** (the trainer container, the rounds' TrainConfig but ``--train-steps``
  steps): samples are the same problems' code-format prompts with the canonical solution as the
  reply; the trainer's own per-step times and tokens/s;
- **pass@1 on the 30 train problems in the model's chosen format** and the mean reply length, read
  from bench/results/reply_format.json (bench/reply_format.py);
- **one round of the closed loop, estimated** from those rates, for the ``[rounds]``/``[gate]``
  settings of policies/run.toml (a full run) and of policies/demo.toml (``make run``):
  ``tasks_per_round x k`` candidates (mean reply length, at the vLLM batched rate where measured,
  else the local rate), their sandbox runs (the reply-format bench's grading time per run,
  ``concurrency`` at a time), a burst of ``train_steps`` steps, and the gate (its held-out problems
  plus the impossible-task canaries, greedy, one request at a time, for the new adapter and, in the
  first round, the base model). The default for `make run` is the model with the best train pass@1
  whose make-run round fits 15 minutes.

``--merge`` adds models to an earlier results file (measure them one at a time); ``--estimate-only``
recomputes pass@1 and the estimates from bench/results/reply_format.json without measuring.

The load average is recorded before and after each measurement: on a shared machine the rates are
lower bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.reply_format import request  # noqa: E402
from bench.results_io import RESULTS, Recorder  # noqa: E402
from orchestrator.config import RunConfig  # noqa: E402
from orchestrator.models.embedded_model import ensure_converted, get  # noqa: E402
from orchestrator.evaluation.humaneval import task_ids  # noqa: E402
from orchestrator.agent.tasks import humaneval_problems  # noqa: E402

NAME = "embedded_default"
DEMO = Path(__file__).resolve().parent.parent / "policies" / "demo.toml"  # make run's config
BUDGET_S = 15 * 60


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def prompts_for(ids: list[str], tmp: Path) -> list[list[dict]]:
    return [request(tid, "code", tmp)[3] for tid in ids]


def local_rate(model, prompts: list[list[dict]], tokens: int) -> dict:
    import torch

    from orchestrator.models.backends import LocalBackend

    t0 = time.perf_counter()
    backend = LocalBackend(ensure_converted(model.name), model.model_id, max_new_tokens=tokens, dtype=model.dtype)
    load_s = time.perf_counter() - t0
    tok = backend.tokenizer
    runs, before = [], load()
    for i, msgs in enumerate([prompts[0]] + prompts):  # the first one warms up
        inputs = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = backend.model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                         pad_token_id=tok.pad_token_id or tok.eos_token_id)
        seconds = time.perf_counter() - t0
        if i:
            runs.append({"prompt_tokens": int(inputs["input_ids"].shape[1]),
                         "new_tokens": int(out.shape[1] - inputs["input_ids"].shape[1]), "seconds": round(seconds, 2)})
    del backend
    total = sum(r["new_tokens"] for r in runs)
    return {"dtype": model.dtype, "threads": torch.get_num_threads(), "load_s": round(load_s, 1),
            "tokens_per_s": round(total / sum(r["seconds"] for r in runs), 2), "requests": runs,
            "load_avg_before": before, "load_avg_after": load()}


def vllm_rate(model, prompts: list[list[dict]], tokens: int, k: int) -> dict:
    import requests

    from orchestrator.models.engine import Engine, EngineError, EngineSpec, available

    if not available():
        return {"skipped": "no vLLM venv (make vllm)"}
    t0 = time.perf_counter()
    try:
        engine = Engine(EngineSpec(ensure_converted(model.name))).start(say=lambda s: print(s, file=sys.stderr))
    except EngineError as exc:
        return {"skipped": f"the engine did not start: {exc}"}
    start_s = time.perf_counter() - t0
    url = engine.base_url + "/chat/completions"

    def ask(msgs, n=1, seed=None):
        body = {"model": "base", "messages": msgs, "max_tokens": tokens, "min_tokens": tokens, "n": n,
                "temperature": 0.8 if n > 1 else 0.0, "ignore_eos": True}
        if seed is not None:
            body["seed"] = seed
        t = time.perf_counter()
        r = requests.post(url, json=body, headers=engine.headers, timeout=1800)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"], time.perf_counter() - t

    try:
        before = load()
        ask(prompts[0])  # warm-up
        single = [ask(m) for m in prompts]
        batched = [ask(m, n=k, seed=7) for m in prompts]
        after = load()
    finally:
        engine.stop()
    rate = lambda runs: round(sum(t for t, _ in runs) / sum(s for _, s in runs), 2)  # noqa: E731
    return {"start_s": round(start_s, 1), "tokens_per_s_single": rate(single), f"tokens_per_s_n{k}": rate(batched),
            "k": k, "raw_single": single, "raw_batched": batched, "load_avg_before": before, "load_avg_after": after}


def lora_steps(model, ids: list[str], steps: int, tmp: Path) -> dict:
    from orchestrator.training.launcher import run_training
    from orchestrator.training.runner.config import TrainConfig

    problems = humaneval_problems()
    tmp.mkdir(parents=True, exist_ok=True)
    samples = tmp / "samples.jsonl"
    with open(samples, "w") as fh:
        for tid, msgs in zip(ids, prompts_for(ids, tmp / "prompts")):
            p = problems[tid]
            reply = f"```python\n{p['prompt']}{p['canonical_solution']}```"
            fh.write(json.dumps({"messages": msgs + [{"role": "assistant", "content": reply}]}) + "\n")
    cfg = TrainConfig(base_model=model.model_id, max_steps=steps)
    before, t0 = load(), time.perf_counter()
    m = run_training(samples, tmp / "adapter", cfg, ensure_converted(model.name))
    wall = time.perf_counter() - t0
    timed = m["step_seconds"][1:] or m["step_seconds"]  # the first step warms up
    return {"samples": len(ids), "steps": m["steps"], "batch_size": cfg.batch_size, "tokens": m["tokens"],
            "tokens_per_step": round(m["tokens"] / max(1, m["steps"]), 1),
            "step_s_median": round(statistics.median(timed), 2), "step_s_first": m["step_seconds"][0],
            "tokens_per_s": m["tokens_per_s"], "peak_rss_gib": m["peak_memory_gib"], "container_wall_s": round(wall, 1),
            "loss_first": m["losses"][0], "loss_last": m["losses"][-1], "load_avg_before": before,
            "load_avg_after": load()}


def unit_costs(entry: dict, fmt: dict, k: int) -> dict:
    """Seconds per sampled candidate, per greedy reply, per sandbox run, per training step."""
    tokens = fmt["mean_tokens"]
    vllm = entry.get("vllm", {})
    sample_rate = vllm.get(f"tokens_per_s_n{k}") or entry["local"]["tokens_per_s"]
    greedy_rate = vllm.get("tokens_per_s_single") or entry["local"]["tokens_per_s"]
    return {"engine": "vllm" if vllm.get("tokens_per_s_single") else "local",
            "candidate_s": round(tokens / sample_rate, 2), "greedy_reply_s": round(tokens / greedy_rate, 2),
            "sandbox_run_s": fmt["grading_s_per_run"], "train_step_s": entry["lora"]["step_s_median"]}


def round_estimate(units: dict, config: RunConfig) -> dict:
    """Seconds for one round of the closed loop under ``config``: candidates, their verification, a
    burst, and the gate (the new adapter and, in the first round, the base model answer every gate
    problem and the impossible-task canaries)."""
    rc, gate = config.rounds, config.gate
    tasks, k, steps = rc.tasks_per_round, rc.k, rc.train_steps
    concurrency = rc.concurrency or os.cpu_count() or 1
    gate_problems = len(task_ids(gate.split, gate.tasks or None)) + gate.impossible_tasks
    parts = {"candidates_s": tasks * k * units["candidate_s"],
             "verification_s": tasks * k * units["sandbox_run_s"] / concurrency,
             "training_s": steps * units["train_step_s"],
             "gate_s": 2 * gate_problems * (units["greedy_reply_s"] + units["sandbox_run_s"])}
    total = sum(parts.values())
    return {"tasks": tasks, "k": k, "train_steps": steps, "gate_problems": gate_problems,
            **{key: round(v) for key, v in parts.items()}, "round_s": round(total), "fits_15_min": total <= BUDGET_S}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="qwen2.5-coder-0.5b,smollm2-135m")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--train-steps", type=int, default=4)
    ap.add_argument("--train-samples", type=int, default=8)
    ap.add_argument("--merge", action="store_true",
                    help="keep the models of an earlier run in --out (measure them one at a time)")
    ap.add_argument("--estimate-only", action="store_true",
                    help="measure nothing: recompute pass@1 and the estimates for the models already in --out")
    ap.add_argument("--out", type=Path, default=RESULTS / f"{NAME}.json")
    args = ap.parse_args()
    rec = Recorder(NAME)
    config = RunConfig.load()
    path = RESULTS / "reply_format.json"
    formats = json.loads(path.read_text())["models"] if path.exists() else {}
    ids = task_ids("train")
    results = {}
    if (args.merge or args.estimate_only) and args.out.exists():  # models measured in an earlier run
        results = json.loads(args.out.read_text()).get("models", {})
    for name in [] if args.estimate_only else args.models.split(","):
        model = get(name)
        entry = {"model_id": model.model_id, "dtype": model.dtype}
        with tempfile.TemporaryDirectory(prefix="rsi-embedded-default-") as tmp:
            print(f"{name}: local tokens/s ...", file=sys.stderr)
            entry["local"] = local_rate(model, prompts_for(ids[:3], Path(tmp)), args.tokens)
            print(json.dumps(entry["local"]), file=sys.stderr)
            if not args.no_vllm:
                print(f"{name}: vLLM tokens/s ...", file=sys.stderr)
                entry["vllm"] = vllm_rate(model, prompts_for(ids[:3], Path(tmp) / "v"), args.tokens, config.rounds.k)
                print(json.dumps(entry["vllm"]), file=sys.stderr)
            print(f"{name}: LoRA steps ...", file=sys.stderr)
            entry["lora"] = lora_steps(model, ids[:args.train_samples], args.train_steps, Path(tmp) / "train")
        if "skipped" in entry.get("vllm", {}):
            entry["vllm_skipped"] = entry.pop("vllm")["skipped"]
        results[name] = entry
    for name, entry in results.items():
        if name not in formats:  # no pass@1 yet (bench/reply_format.py --model NAME): rates only
            continue
        chosen = formats[name]["chosen"]
        fmt = formats[name]["formats"][chosen]
        entry.update({"chosen_format": chosen, "train_pass@1": fmt["pass@1"], "train_solved": fmt["solved"],
                      "train_problems": fmt["problems"], "train_ci95": fmt["ci95"], "mean_tokens": fmt["mean_tokens"]})
        units = entry["unit_costs"] = unit_costs(entry, fmt, config.rounds.k)
        entry["round_defaults"] = round_estimate(units, config)
        entry["round_make_run"] = round_estimate(units, RunConfig.load(DEMO))
        print(json.dumps({name: [entry["round_defaults"], entry["round_make_run"]]}), file=sys.stderr)
    fitting = [n for n, e in results.items() if e.get("round_make_run", {}).get("fits_15_min")]
    best = max(fitting, key=lambda n: results[n]["train_pass@1"]) if fitting else None
    rec.write({"models": results, "budget_s": BUDGET_S, "default": best,
               "rule": "the highest train pass@1 among the models whose make-run round fits the budget"},
              args.out)
    print(json.dumps({"default": best}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
