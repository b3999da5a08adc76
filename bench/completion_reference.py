"""Reference point for the embedded experiment: the base model *without* the patch protocol.

    .venv/bin/python bench/completion_reference.py [--mode raw|chat] [--split heldout] [--max-new-tokens 300]

Two common ways to ask a model for HumanEval, greedy:
- ``raw``: the prompt as plain text (no chat template), cut at the usual stop sequences;
- ``chat``: the chat template, "complete this function" with the prompt in a code block; the
  first code block of the answer is taken (a full definition replaces the stub; otherwise it is
  appended as the body).
Each answer is wrapped as a patch reply (``example.py``) and graded by the same hidden tests in the
same sandbox as `rsi eval`, through the replay backend. The gap between these numbers and `rsi eval`
on the local backend is the cost of asking the model for whole-file JSON patches.
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
from orchestrator.models.backends import ReplayBackend  # noqa: E402
from orchestrator.models.embedded_model import ensure_converted  # noqa: E402
from orchestrator.evaluation.humaneval import evaluate, summarize, task_ids  # noqa: E402
from orchestrator.agent.tasks import humaneval_problems  # noqa: E402

STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")


def complete(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    import torch

    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    cut = min([text.find(s) for s in STOPS if s in text] or [len(text)])
    return text[:cut]


def chat_complete(model, tokenizer, prompt: str, entry_point: str, max_new_tokens: int) -> str:
    import re

    import torch

    msgs = [{"role": "user", "content": "Complete the following Python function. Reply with the whole function "
                                        f"in a Python code block.\n```python\n{prompt}```"}]
    inputs = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    m = re.search(r"```(?:python)?\n(.*?)(?:```|$)", text, re.S)
    code = m.group(1) if m else text
    return prompt + "\n" + code if f"def {entry_point}" in code else prompt + code


def _syntax_errors(results) -> int:
    """Answers the policy refused as not parsing as Python (first reason ``policy/syntax_error``)."""
    return sum(1 for r in results for reason in r.reasons if reason.startswith("policy/syntax_error"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default="raw", choices=["raw", "chat"])
    ap.add_argument("--split", default="heldout", choices=["heldout", "train", "all"])
    ap.add_argument("--max-new-tokens", type=int, default=300)
    ap.add_argument("--out", type=Path, default=None,
                    help="results JSON (default bench/results/completion_reference_MODE_SPLIT.json)")
    args = ap.parse_args()
    rec = Recorder(f"completion_reference_{args.mode}_{args.split}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_converted()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = task_ids(args.split)
    t0 = time.perf_counter()
    lines = []
    for tid in ids:
        problem = humaneval_problems()[tid]
        prompt = problem["prompt"]
        if args.mode == "raw":
            code = prompt + complete(model, tokenizer, prompt, args.max_new_tokens)
        else:
            code = chat_complete(model, tokenizer, prompt, problem["entry_point"], args.max_new_tokens)
        lines.append({"phase": "patch", "task": tid, "reply": json.dumps(
            {"rationale": f"{args.mode} completion", "edits": [{"path": "example.py", "content": code}]})})
    gen_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        replies = Path(tmp) / "replies.jsonl"
        replies.write_text("".join(json.dumps(x) + "\n" for x in lines))
        results = evaluate(ReplayBackend(replies), ids)
    s = summarize(results)
    s.update(split=args.split, mode=f"{args.mode} completion, greedy", solved=[r.task_id for r in results if r.correct],
             rejected=sum(r.rejected for r in results), generation_s=round(gen_s, 1))
    print(json.dumps(s))
    # The held-out and train parts of the same run, each with its own Wilson interval.
    parts = {}
    for part in ("heldout", "train"):
        ids_part = set(task_ids(part))
        sub = [r for r in results if r.task_id in ids_part]
        if sub:
            parts[part] = summarize(sub) | {"solved": [r.task_id for r in sub if r.correct],
                                            "correct": sum(r.correct for r in sub),
                                            "refused": sum(r.rejected for r in sub),
                                            "not_valid_python": _syntax_errors(sub)}
    rec.write({"split": args.split, "mode": args.mode, "max_new_tokens": args.max_new_tokens,
               "problems": len(results), "correct": sum(r.correct for r in results),
               "pass@1": s["pass@1"], "ci95": s["ci95"], "refused": s["rejected"],
               "not_valid_python": _syntax_errors(results),
               "solved": s["solved"], "generation_s": s["generation_s"], "parts": parts,
               "raw_per_problem": [r.model_dump() for r in results]}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
