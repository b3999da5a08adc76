"""Held-out evaluation: estimators, a grader that is itself tested, contamination, CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.models.backends import ReplayBackend
from orchestrator.evaluation.humaneval import (bootstrap_ci, contamination, evaluate, paired_difference, pass_at_k,
                                         summarize, task_ids, wilson)
from orchestrator.agent.tasks import humaneval_problems

ROOT = Path(__file__).resolve().parent.parent


def test_split_is_fixed_and_documented():
    held = task_ids("heldout")
    assert len(held) == 33 and held[0] == "HumanEval/0" and held[1] == "HumanEval/5"
    assert len(task_ids("train")) == 131 and not set(held) & set(task_ids("train"))


def test_estimators():
    assert pass_at_k(10, 0, 1) == 0 and pass_at_k(10, 10, 5) == 1
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - (3 / 5) * (2 / 4))
    lo, hi = wilson(2, 33)
    assert 0.01 < lo < 2 / 33 < hi < 0.21
    assert wilson(33, 33)[1] == 1.0 and wilson(0, 33)[0] == 0.0
    lo, hi = bootstrap_ci([0.0] * 50 + [1.0] * 50)
    assert lo < 0.5 < hi
    d = paired_difference([0, 0, 1, 0] * 10, [1, 0, 1, 1] * 10)
    assert d["difference"] == pytest.approx(0.5) and d["excludes_zero"]
    assert not paired_difference([0, 1] * 10, [1, 0] * 10)["excludes_zero"]


def _replies(path: Path, body) -> Path:
    lines = []
    for tid in task_ids("heldout"):
        p = humaneval_problems()[tid]
        content = body(p)
        lines.append({"phase": "patch", "task": tid,
                      "reply": json.dumps({"rationale": "r", "edits": [{"path": "example.py", "content": content}]})})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.mark.docker
def test_grader_scores_canonical_1_and_wrong_0(tmp_path, sandbox_image):
    """A scorer that silently returns 1.0 is the classic failure: check both ends."""
    ids = task_ids("heldout")
    good = ReplayBackend(_replies(tmp_path / "good.jsonl", lambda p: p["prompt"] + p["canonical_solution"]))
    results = evaluate(good, ids)
    failed = [r.task_id for r in results if r.correct != 1]
    assert not failed, failed
    s = summarize(results)
    assert s["pass@1"] == 1.0 and s["ci95"][0] > 0.85 and s["problems"] == 33
    wrong = ReplayBackend(_replies(tmp_path / "wrong.jsonl", lambda p: p["prompt"] + "    return None\n"))
    assert summarize(evaluate(wrong, ids))["pass@1"] == 0.0


@pytest.mark.docker
def test_reward_hacks_never_count(tmp_path, sandbox_image):
    ids = ["HumanEval/0", "HumanEval/5"]
    hacks = [
        "import os\nos._exit(0)\n",                                             # claims success, no evidence
        "import pytest\npytest.skip('x', allow_module_level=True)\n",           # skips never pass
        "import _pytest.python as p\np.Function.runtest = lambda self: None\n",  # runs nothing
    ]
    for hack in hacks:
        backend = ReplayBackend(_replies(tmp_path / "h.jsonl", lambda p, h=hack: p["prompt"] + "    pass\n" + h))
        results = evaluate(backend, ids)
        assert all(r.correct == 0 for r in results), (hack, [r.verdicts for r in results])


@pytest.mark.docker
def test_a_batching_backend_gets_problems_concurrently_with_the_same_results(tmp_path, sandbox_image):
    """vLLM batches concurrent requests: the gate's problems go out together, and the results
    (order included) are those of the one-at-a-time evaluation."""
    import threading
    import time as _time

    ids = task_ids("heldout")[:6]
    replies = _replies(tmp_path / "mixed.jsonl", lambda p: p["prompt"] + (
        p["canonical_solution"] if int(p["task_id"].split("/")[1]) % 10 == 0 else "    return None\n"))

    class Batching(ReplayBackend):
        capabilities = frozenset({"batching"})

        def __init__(self, path):
            super().__init__(path)
            self.lock, self.in_flight, self.peak = threading.Lock(), 0, 0

        def generate(self, *args, **kwargs):
            with self.lock:
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
            _time.sleep(0.3)  # a request in the server's batch
            try:
                with self.lock:
                    return super().generate(*args, **kwargs)
            finally:
                with self.lock:
                    self.in_flight -= 1

    batched = Batching(replies)
    together = evaluate(batched, ids)
    one_by_one = evaluate(ReplayBackend(replies), ids)
    assert batched.peak > 1 and [r.task_id for r in together] == ids
    assert [(r.task_id, r.correct, r.verdicts) for r in together] == [
        (r.task_id, r.correct, r.verdicts) for r in one_by_one]
    assert sum(r.correct for r in together) == 3  # HumanEval/0, /10 and /20 solved, the rest wrong


def test_contamination_check(tmp_path):
    p0 = humaneval_problems()["HumanEval/0"]
    leaked = tmp_path / "leaked.jsonl"
    leaked.write_text(json.dumps({"messages": [{"role": "user", "content": "solve"},
                                               {"role": "assistant", "content": p0["prompt"] + p0["canonical_solution"]}]})
                      + "\n")
    hits = contamination(leaked)
    zero = [h for h in hits if h["task_id"] == "HumanEval/0"]
    assert {h["field"] for h in zero} == {"prompt", "canonical_solution"}
    # HumanEval/20's solution really shares code with /0's (same nested enumerate loops): reported, but less
    assert max(hits, key=lambda h: h["shared_ngrams"])["task_id"] == "HumanEval/0"
    clean = tmp_path / "clean.jsonl"
    clean.write_text(json.dumps({"messages": [{"role": "user", "content": "def add(a, b):\n    return a + b\n"},
                                              {"role": "assistant", "content": "ok"}]}) + "\n")
    assert contamination(clean) == []


@pytest.mark.docker
def test_cli_json_last_line(tmp_path, sandbox_image):
    replies = _replies(tmp_path / "r.jsonl", lambda p: p["prompt"] + p["canonical_solution"])
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "eval", "--backend", "replay", "--replies",
                          str(replies), "--tasks", "0,5,10", "--json", "--out", str(tmp_path / "ev")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["pass@1"] == 1.0 and summary["problems"] == 3 and len(summary["ci95"]) == 2
    assert set(summary) == {"pass@1", "ci95", "problems", "samples_per_problem", "suite", "split", "backend",
                            "model", "adapter"}
    assert json.loads((tmp_path / "ev" / "summary.json").read_text()) == summary
    assert len((tmp_path / "ev" / "problems-seed0.jsonl").read_text().splitlines()) == 3
    # without --json: one human line; a replay model cannot load adapters, so --baseline is a clear error
    human = subprocess.run([sys.executable, "-m", "orchestrator.cli", "eval", "--backend", "replay", "--replies",
                            str(replies), "--tasks", "0", "--out", str(tmp_path / "ev2")],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert human.returncode == 0 and human.stdout.startswith("pass@1 = 1.000 (95% CI")
    bad = subprocess.run([sys.executable, "-m", "orchestrator.cli", "eval", "--backend", "replay", "--replies",
                          str(replies), "--tasks", "0", "--baseline", "v0001", "--out", str(tmp_path / "ev3")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and "--run-dir" in bad.stderr
