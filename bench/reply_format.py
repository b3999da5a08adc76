"""Reply format per model: valid-Python rate and pass@1 of each format on HumanEval train problems.

    .venv/bin/python bench/reply_format.py --model qwen2.5-coder-0.5b [--formats json,code] [--problems 30]

Each of the first ``--problems`` train problems (split rule in orchestrator/agent/tasks.py) is asked once per
format, greedy, on the local backend (transformers in process, the embedded model's own dtype),
through the loop's prompt path (``prompts.patch_messages`` with the request's format: ``json`` decodes
under the reply schema's grammar, ``code`` freely and stops after the first complete code block). Each
reply goes through the protocol (``protocol.check``: the code block turned into the JSON reply, then
schema and policy), and is graded by the problem's hidden test in the sandbox with the existing
``orchestrator.evaluation.humaneval.evaluate`` (over a replay of the protocol replies), as ``rsi eval`` grades.

Reported per format: replies accepted by schema and policy, replies whose file parses as Python
(``valid_python``), the rejection reasons, pass@1 with its Wilson interval, the paired difference
code - json with its bootstrap interval, tokens and tokens/s. The better format (pass@1, then the
valid-Python rate, then json, the contract) is the model's ``chosen`` default for
``[model.reply_formats]`` in policies/run.toml.

Generations are kept in ``--work`` (one JSONL per model and format) so an interrupted run resumes;
grading runs once every reply is there. Results of several models accumulate in one file.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_io import RESULTS, Recorder  # noqa: E402
from orchestrator.protocol import prompts  # noqa: E402
from orchestrator.protocol.policy import Policy  # noqa: E402
from orchestrator.protocol.pipeline import check  # noqa: E402
from orchestrator.protocol.reply_format import FORMATS, code_reply_to_json, for_request  # noqa: E402
from orchestrator.protocol.schema import ReplyError, parse_reply  # noqa: E402
from orchestrator.agent.tasks import humaneval_task, protected_files  # noqa: E402
from orchestrator.protocol.workspace import Workspace  # noqa: E402

NAME = "reply_format"


def request(tid: str, fmt_name: str, root: Path):
    """(workspace, policy, request format, messages) for one problem, as the loop builds them."""
    task = humaneval_task(tid, root / "tasks")
    ws = Workspace.create(task.source_dir, root / f"ws-{fmt_name}-{tid.replace('/', '_')}")
    policy = Policy.load()
    policy.protected = protected_files(ws.path)
    sources = [str(p.relative_to(ws.path)) for p in sorted(ws.path.rglob("*.py"))
               if str(p.relative_to(ws.path)) not in policy.protected and ".git" not in p.parts]
    fmt = for_request(fmt_name, "patch", sources, ws.path)
    return ws, policy, fmt, prompts.patch_messages(ws.path, sources, policy.protected, None, fmt)


def protocol_text(reply: str, fmt, policy: Policy) -> str:
    """What the protocol validates: the JSON reply (a code block converted), else the raw reply."""
    if fmt.name != "code":
        return reply
    try:
        return code_reply_to_json(reply, fmt.path, "patch", policy.limits.max_reply_bytes,
                                  policy.limits.max_file_bytes)
    except ReplyError:
        return reply  # refused again, for the same reason, when graded


def parses(text: str, max_bytes: int) -> bool:
    """The reply yields files that all parse as Python (whatever the policy says of their paths)."""
    try:
        files = parse_reply(text, "patch", max_bytes).files
        for f in files:
            ast.parse(f.content)
        return bool(files)
    except (ReplyError, SyntaxError, ValueError, RecursionError, MemoryError):
        return False


def generate(backend, ids: list[str], fmt_name: str, cache: Path, say) -> list[dict]:
    done = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["task"]] = row
    with tempfile.TemporaryDirectory(prefix="rsi-reply-format-") as tmp, open(cache, "a") as fh:
        for i, tid in enumerate(ids):
            if tid in done:
                continue
            ws, policy, fmt, messages = request(tid, fmt_name, Path(tmp))
            t0 = time.perf_counter()
            reply = backend.generate(messages, "patch", tid, fmt=fmt)
            seconds = time.perf_counter() - t0
            decision = check(reply, "patch", ws.path, policy, fmt)
            text = protocol_text(reply, fmt, policy)
            row = {"task": tid, "format": fmt.name, "reply": reply, "protocol_reply": text,
                   "tokens": backend.last_tokens, "seconds": round(seconds, 2), "accepted": decision.accepted,
                   "valid_python": parses(text, policy.limits.max_reply_bytes),
                   "reason": None if decision.accepted else (decision.reasons[0].code if decision.reasons else "?")}
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            done[tid] = row
            say(f"{fmt_name} {i + 1}/{len(ids)} {tid}: {row['tokens']} tokens in {seconds:.1f} s, "
                f"{'accepted' if row['accepted'] else 'refused ' + row['reason']}")
    return [done[t] for t in ids]


def grade(rows: list[dict], ids: list[str]) -> list:
    from orchestrator.models.backends import ReplayBackend
    from orchestrator.evaluation.humaneval import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        replies = Path(tmp) / "replies.jsonl"
        replies.write_text("".join(json.dumps({"phase": "patch", "task": r["task"], "reply": r["protocol_reply"]})
                                   + "\n" for r in rows))
        return evaluate(ReplayBackend(replies), ids)


def summary(rows: list[dict], results, grading_s: float) -> dict:
    from orchestrator.evaluation.humaneval import summarize

    n = len(rows)
    tokens = sum(r["tokens"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    reasons: dict[str, int] = {}
    for r in rows:
        if r["reason"]:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    s = summarize(results)
    return {"problems": n, "accepted": sum(r["accepted"] for r in rows),
            "valid_python": sum(r["valid_python"] for r in rows),
            "valid_python_rate": round(sum(r["valid_python"] for r in rows) / n, 3),
            "solved": sum(x.correct for x in results), "pass@1": round(s["pass@1"], 3),
            "ci95": [round(x, 3) for x in s["ci95"]], "rejections": reasons,
            "solved_tasks": [x.task_id for x in results if x.correct],
            "tokens": tokens, "mean_tokens": round(tokens / n, 1), "generation_s": round(seconds, 1),
            "tokens_per_s": round(tokens / seconds, 2) if seconds else None, "grading_s": round(grading_s, 1),
            "grading_s_per_run": round(grading_s / max(1, sum(r["accepted"] for r in rows)), 2)}


def choose(formats: dict) -> str:
    """pass@1, then the valid-Python rate, then json (the contract)."""
    return max(formats, key=lambda f: (formats[f]["pass@1"], formats[f]["valid_python_rate"], f == "json"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", help="embedded model name (rsi models embedded)")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--problems", type=int, default=30, help="the first N train problems")
    ap.add_argument("--tasks", default=None, help="only these train problems (comma-separated ids), e.g. to "
                                                  "generate a share of them in another process and --work dir")
    ap.add_argument("--max-new-tokens", type=int, default=1024, help="as [model] max_new_tokens")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's own, one per core; 1 is faster on a busy machine)")
    ap.add_argument("--work", type=Path, default=Path("runs/reply-format"))
    ap.add_argument("--out", type=Path, default=RESULTS / f"{NAME}.json")
    args = ap.parse_args()
    rec = Recorder(NAME)
    from orchestrator.models.backends import LocalBackend
    from orchestrator.models.embedded_model import ensure_converted, get
    from orchestrator.evaluation.humaneval import paired_difference, task_ids

    model = get(args.model)
    ids = task_ids("train", args.tasks.split(",") if args.tasks else None)[:args.problems]
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    backend = LocalBackend(ensure_converted(model.name), model.model_id, max_new_tokens=args.max_new_tokens,
                           dtype=model.dtype, threads=args.threads)
    load_s = time.perf_counter() - t0
    formats, per_problem = {}, {}
    work = args.work / model.name
    work.mkdir(parents=True, exist_ok=True)
    for fmt_name in args.formats.split(","):
        rows = generate(backend, ids, fmt_name, work / f"{fmt_name}.jsonl", say)
        say(f"grading {fmt_name} in the sandbox ...")
        t1 = time.perf_counter()
        results = grade(rows, ids)
        formats[fmt_name] = summary(rows, results, time.perf_counter() - t1)
        per_problem[fmt_name] = [x.correct for x in results]
        say(f"{model.model_id} {fmt_name}: {formats[fmt_name]}")
    import torch

    entry = {"model_id": model.model_id, "dtype": model.dtype, "backend": "local (transformers, in process)",
             "threads": torch.get_num_threads(),
             "max_new_tokens": args.max_new_tokens, "problems": ids, "load_s": round(load_s, 1),
             "formats": formats, "chosen": choose(formats), "command": rec.meta["command"],
             "date_utc": rec.meta["date_utc"], "load_avg_at_start": rec.meta["machine"]["load_avg_at_start"]}
    if {"json", "code"} <= set(per_problem):
        d = paired_difference(per_problem["json"], per_problem["code"])
        entry["code_minus_json"] = {"difference": round(d["difference"], 3), "ci95": [round(x, 3) for x in d["ci95"]],
                                    "excludes_zero": d["excludes_zero"]}
    models = {}
    if args.out.exists():
        models = json.loads(args.out.read_text()).get("models", {})
    models[model.name] = entry
    rec.write({"models": models}, args.out)
    print(json.dumps(entry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
