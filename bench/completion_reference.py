"""Reference point for the embedded experiment: the base model *without* the patch protocol.

    .venv/bin/python bench/completion_reference.py [--split heldout] [--max-new-tokens 300]

Plain HumanEval-style completion (the prompt as raw text, no chat template, greedy, cut at the
usual stop sequences), the way the ~6 % pass@1 quoted for SmolLM2-135M was measured. Each
completion is then wrapped as a patch reply (``example.py`` = prompt + completion) and graded by
the same hidden tests in the same sandbox as `rsi eval`, through the replay backend. The gap between
this number and `rsi eval` on the local backend is the cost of asking a 135M model for whole-file
JSON patches.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.backends import ReplayBackend  # noqa: E402
from orchestrator.embedded_model import ensure_converted  # noqa: E402
from orchestrator.humaneval_eval import evaluate, summarize, task_ids  # noqa: E402
from orchestrator.tasks import humaneval_problems  # noqa: E402

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="heldout", choices=["heldout", "train", "all"])
    ap.add_argument("--max-new-tokens", type=int, default=300)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_converted()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = task_ids(args.split)
    t0 = time.perf_counter()
    lines = []
    for tid in ids:
        prompt = humaneval_problems()[tid]["prompt"]
        code = prompt + complete(model, tokenizer, prompt, args.max_new_tokens)
        lines.append({"phase": "patch", "task": tid, "reply": json.dumps(
            {"rationale": "plain completion", "edits": [{"path": "example.py", "content": code}]})})
    gen_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        replies = Path(tmp) / "replies.jsonl"
        replies.write_text("".join(json.dumps(x) + "\n" for x in lines))
        results = evaluate(ReplayBackend(replies), ids)
    s = summarize(results)
    s.update(split=args.split, mode="plain completion, greedy", solved=[r.task_id for r in results if r.correct],
             rejected=sum(r.rejected for r in results), generation_s=round(gen_s, 1))
    print(json.dumps(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
