"""Suites and the rounds driver without Docker: fakes for the model and the sandbox only."""

import ast
import json
import random

import pytest

from orchestrator.agent import rounds as rounds_mod
from orchestrator.models.backends import Backend
from orchestrator.config import RunConfig
from orchestrator.agent.rounds import BurstOutcome, Rounds, RoundsError, RoundsState, is_verified
from orchestrator.sandbox.container import SandboxResult
from orchestrator.evaluation.suites import (SEED_FIXED, SEED_TESTS, Suite, _bugfix_from_humaneval, _bugfix_from_seed,
                                 load_suite, select_tasks, split_check, split_test_module, verify_runs)
from orchestrator.agent.tasks import humaneval_problems, humaneval_split


# ----- suites -----

def test_split_check_partitions_the_asserts_deterministically():
    p = humaneval_problems()["HumanEval/2"]
    a = split_check(p["test"], random.Random(1))
    assert a == split_check(p["test"], random.Random(1))
    visible, hidden = a

    def asserts(src):
        check = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "check")
        return {ast.unparse(s) for s in check.body if isinstance(s, ast.Assert)}

    full = asserts(p["test"])
    assert asserts(visible) and asserts(hidden) and not asserts(visible) & asserts(hidden)
    assert asserts(visible) | asserts(hidden) == full


def test_bugfix_tasks_from_a_humaneval_problem():
    tid = "HumanEval/2"
    p = humaneval_problems()[tid]
    tasks = _bugfix_from_humaneval(tid, p, seed=0)
    assert tasks and tasks == _bugfix_from_humaneval(tid, p, seed=0)  # deterministic
    canonical = ast.unparse(ast.parse(p["prompt"] + p["canonical_solution"])) + "\n"
    for t in tasks:
        assert t.split == humaneval_split(tid) == "train" and t.source == tid and t.mutation
        assert t.files["example.py"] != canonical
        (hidden_name, hidden), = t.hidden_tests.items()
        # judge rules: the candidate is imported by name only, never `import example` or a star import
        assert f"from example import {p['entry_point']}" in hidden
        assert "import *" not in hidden and "import example" not in hidden
        # the visible tests kill the mutant; canonical code passes visible and hidden tests
        vis = t.files["test_example.py"]
        check_src = vis
        statuses = verify_runs([{"source": t.files["example.py"], "test": check_src, "style": "check"},
                                {"source": canonical, "test": check_src, "style": "check"}], p["entry_point"])
        assert statuses[0].startswith("fail:") and statuses[1] == "pass"


def test_prompt_helpers_are_defined_in_the_hidden_test():
    tasks = _bugfix_from_humaneval("HumanEval/38", humaneval_problems()["HumanEval/38"], seed=0)
    for t in tasks:
        hidden = next(iter(t.hidden_tests.values()))
        assert "def encode_cyclic" in hidden and "from example import decode_cyclic" in hidden


def test_seed_bugfix_tasks_and_split_test_module():
    visible, hidden = split_test_module(SEED_TESTS, random.Random(0))
    assert "def test_add" in visible and "def test_hidden_add" in hidden
    assert verify_runs([{"source": SEED_FIXED, "test": hidden, "style": "module"}], None) == ["pass"]
    tasks = _bugfix_from_seed(0)
    assert len(tasks) == 3 and all(t.split == "train" for t in tasks)
    for t in tasks:
        assert verify_runs([{"source": t.files["example.py"], "test": t.files["test_example.py"],
                             "style": "module"}], None)[0].startswith("fail:")


def test_no_train_task_comes_from_a_heldout_problem(tmp_path):
    """The split is by source problem: a bug-fix task inherits its problem's split."""
    problems = humaneval_problems()
    for tid in ["HumanEval/5", "HumanEval/10", "HumanEval/11"]:
        for t in _bugfix_from_humaneval(tid, problems[tid], seed=0):
            assert t.split == humaneval_split(tid)
    suite = load_suite("seed+bugfix-seed", cache=tmp_path)
    assert (tmp_path / "bugfix-seed-seed0-v2.json").exists()  # cached
    assert load_suite("seed+bugfix-seed", cache=tmp_path) == suite


def test_select_tasks_and_errors():
    s = select_tasks("bugfix:seed#1,seed")
    assert [t.id for t in s.tasks] == ["bugfix:seed#1", "seed"]
    from orchestrator.evaluation.suites import SuiteError

    with pytest.raises(SuiteError, match="unknown suite"):
        load_suite("nope")
    with pytest.raises(SuiteError, match="no bug-fix task"):
        select_tasks("bugfix:seed#99")


# ----- the driver, with a fake model and a fake sandbox -----

def reply(content):
    return json.dumps({"rationale": "fix", "edits": [{"path": "example.py", "content": content}]})


BAD = "not json at all"


class FakeBackend(Backend):
    """Candidate i of a task is the fix when i is even, a syntax error when odd; retries fix it."""

    name, model_id = "fake", "fake-model"
    capabilities = frozenset({"adapters"})

    def __init__(self, fixes: dict[str, str], crash_after: int | None = None):
        self.fixes, self.calls, self.crash_after = fixes, [], crash_after

    def generate_many(self, messages, phase, task=None, n=1, temperature=0.8, seed=None, fmt=None):
        self.calls.append((task, n, seed))
        if self.crash_after is not None and len(self.calls) > self.crash_after:
            raise KeyboardInterrupt("simulated kill")
        return [reply(self.fixes[task]) if i % 2 == 0 else BAD for i in range(n)]

    def generate(self, messages, phase, task=None, seed=None, fmt=None):
        if phase == "tests":
            return json.dumps({"rationale": "r", "tests": [{"path": "test_gen_edge.py", "content":
                               "from example import add\n\n\ndef test_gen_add():\n    assert add(2, 2) == 4\n"}]})
        if task not in self.fixes:  # a task this fake cannot solve (held-out): a wrong answer
            return reply("def nothing():\n    return None\n")
        return reply(self.fixes[task] + f"\n# retry {seed}\n")

    def load_adapter(self, path, adapter_id):
        self.adapter_id = adapter_id


def fake_run_tests(fixes):
    """In-process tests pass when example.py is a known fix; the judged copy says the same."""
    from orchestrator.sandbox.container import JudgedResult

    def run(workspace, limits=None, overlay=None, **kw):
        from pathlib import Path

        code = (overlay or {}).get("example.py") or (Path(workspace) / "example.py").read_text()
        ok = any(code.startswith(f) for f in fixes.values())
        names = [p.name for p in Path(workspace).glob("test_*.py")] + sorted(overlay or {})
        tests = [{"nodeid": f"{n}::test_x", "outcome": "passed" if ok else "failed",
                  "message": "" if ok else f"{n}:4: AssertionError"} for n in names]  # pytest's crash line
        judged = JudgedResult(verdict="pass" if ok else "fail", passed=2 if ok else 0, failed=0 if ok else 2,
                              tests=[{"nodeid": f"hidden/h.py::t{i}", "outcome": "passed" if ok else "failed"}
                                     for i in range(2)])
        return SandboxResult(verdict="pass" if ok else "fail", passed=len(names) if ok else 0,
                             failed=0 if ok else len(names), tests=tests, judged=judged)
    return run


@pytest.fixture(autouse=True)
def _no_docker(monkeypatch):
    """Every sandbox call of the driver goes to a fake that must be installed by the test."""
    def refuse(*a, **kw):
        raise AssertionError("this unit test reached the real sandbox")
    monkeypatch.setattr(rounds_mod, "run_tests", refuse)


def use_fake_sandbox(monkeypatch, fixes):
    fake = fake_run_tests(fixes)
    monkeypatch.setattr(rounds_mod, "run_tests", fake)
    monkeypatch.setattr(rounds_mod, "run_judged", lambda ws, protected, hidden, limits, judge_visible=True, **kw:
                        fake(ws, limits))


@pytest.fixture
def seed_suite():
    tasks = _bugfix_from_seed(0)
    return Suite(name="bugfix-seed", seed=0, tasks=tasks), {t.id: SEED_FIXED for t in tasks}


def cfg(**rounds):
    c = RunConfig.load()
    c.rounds.rounds, c.rounds.tasks_per_round, c.rounds.k, c.rounds.concurrency = 2, 2, 3, 2
    for k, v in rounds.items():
        setattr(c.rounds, k, v)
    return c


def test_driver_two_rounds_archives_verified_candidates(tmp_path, monkeypatch, seed_suite):
    suite, fixes = seed_suite
    use_fake_sandbox(monkeypatch, fixes)
    backend = FakeBackend(fixes)
    state = Rounds(tmp_path / "run", cfg(), backend, suite).run()
    assert state.stop_reason == "maximum of 2 rounds reached" and len(state.rounds) == 2
    r1 = state.rounds[0]
    assert r1.candidates == 6 and r1.verified == 6 and r1.accepted == 6  # odd candidates fixed by their retry
    assert r1.generated == 6 + 2 and r1.solved_tasks == 2
    # identical fixes for a task dedupe to one sample; each retry differs (seeded), so it is its own sample
    assert r1.samples_added == 2 * 2
    assert state.rounds[1].task_ids != r1.task_ids  # the next tasks of the permutation
    lines = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == state.samples
    prov = lines[0]["provenance"]
    assert {"run_id", "round", "task", "source", "candidate", "verdict_digest", "model", "reply_sha256"} <= set(prov)
    assert all("test_hidden" not in m["content"] for x in lines for m in x["messages"])
    assert r1.burst.reason.startswith("training is off")  # no trainer given
    assert [c[2] for c in backend.calls] == sorted(set(c[2] for c in backend.calls), key=[c[2] for c in backend.calls].index)


def test_driver_resumes_after_a_kill_with_the_same_samples(tmp_path, monkeypatch, seed_suite):
    suite, fixes = seed_suite
    use_fake_sandbox(monkeypatch, fixes)
    clean = Rounds(tmp_path / "clean", cfg(concurrency=1), FakeBackend(fixes), suite).run()
    want = sorted(json.loads(x)["sha256"] for x in (tmp_path / "clean" / "samples.jsonl").read_text().splitlines())

    with pytest.raises(KeyboardInterrupt):
        Rounds(tmp_path / "crash", cfg(concurrency=1), FakeBackend(fixes, crash_after=2), suite).run()
    saved = RoundsState.model_validate_json((tmp_path / "crash" / "rounds.json").read_text())
    assert saved.stop_reason is None and saved.rounds[-1].step in ("tasks", "train")
    with pytest.raises(RoundsError, match="not empty"):
        Rounds(tmp_path / "crash", cfg(), FakeBackend(fixes), suite)
    resumed = Rounds(tmp_path / "crash", cfg(concurrency=1), FakeBackend(fixes)).run()
    got = sorted(json.loads(x)["sha256"] for x in (tmp_path / "crash" / "samples.jsonl").read_text().splitlines())
    assert got == want and resumed.samples == clean.samples
    assert [r.task_ids for r in resumed.rounds] == [r.task_ids for r in clean.rounds]


def test_budgets_and_plateau_stop(tmp_path, monkeypatch, seed_suite):
    suite, fixes = seed_suite
    use_fake_sandbox(monkeypatch, fixes)
    state = Rounds(tmp_path / "a", cfg(max_samples=4, concurrency=1, rounds=5), FakeBackend(fixes), suite).run()
    assert state.stop_reason.startswith("sample budget") and len(state.rounds) == 1
    assert state.rounds[0].truncated and len(state.rounds[0].done) == 1

    # a trainer whose bursts never improve beyond noise: stops after [gate] patience bursts
    c = cfg(rounds=5)
    c.gate.patience = 2
    bursts = []

    def fake_train(self, rnd):
        bursts.append(rnd)
        self.backend.load_adapter(None, f"v{rnd:04d}")
        return BurstOutcome(adapter=f"v{rnd:04d}", promoted=True, improved=False, reason="tie")

    monkeypatch.setattr(Rounds, "step_train", fake_train)
    state = Rounds(tmp_path / "b", c, FakeBackend(fixes), suite).run()
    assert bursts == [1, 2] and state.stop_reason.startswith("plateau: 2 training bursts")
    assert state.current_adapter == "v0002"


def test_refused_and_failing_candidates_are_never_archived(tmp_path, monkeypatch, seed_suite):
    suite, fixes = seed_suite

    class Hostile(FakeBackend):
        def generate_many(self, messages, phase, task=None, n=1, temperature=0.8, seed=None, fmt=None):
            return [json.dumps({"rationale": "r", "edits": [{"path": "test_example.py", "content": "x = 1\n"}]}),
                    reply("def add(a, b):\n    return 0\n")] + [BAD] * (n - 2)

        def generate(self, messages, phase, task=None, seed=None, fmt=None):
            return BAD

    use_fake_sandbox(monkeypatch, fixes)
    state = Rounds(tmp_path / "run", cfg(k=3, rounds=1), Hostile(fixes), suite).run()
    r = state.rounds[0]
    # per task: the protected-file edit is refused (then its retry is malformed), the wrong fix runs and fails
    assert r.verified == 0 and state.samples == 0 and r.accepted == 2 and r.verdicts == {"fail": 2}
    assert r.rejections == {"no_json_object": 4} and r.hack_screen == {"policy:protected_file": 2}


def test_is_verified_needs_the_judged_tests():
    from orchestrator.evaluation.grading import Attempt
    from orchestrator.sandbox.container import JudgedResult

    tests = [{"nodeid": "test_example.py::t", "outcome": "passed"}]
    judged = JudgedResult(verdict="pass", passed=1, tests=[{"nodeid": "hidden/h.py::t", "outcome": "passed"}])
    assert is_verified(Attempt(None, SandboxResult(verdict="pass", passed=1, tests=tests, judged=judged)))
    assert not is_verified(Attempt(None, SandboxResult(verdict="pass", passed=1, tests=tests)))  # nothing judged
    failed = judged.model_copy(update={"verdict": "fail"})
    assert not is_verified(Attempt(None, SandboxResult(verdict="pass", passed=1, tests=tests, judged=failed)))
    assert not is_verified(Attempt(None, None))


def test_edge_case_test_phase_keeps_mutant_killing_tests(tmp_path, monkeypatch, seed_suite):
    suite, fixes = seed_suite
    use_fake_sandbox(monkeypatch, fixes)
    state = Rounds(tmp_path / "run", cfg(rounds=1, tests_phase=True), FakeBackend(fixes), suite).run()
    r = state.rounds[0]
    assert r.tests_kept == 2 and r.generated == 6 + 2 + 2
    lines = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    tests = [x for x in lines if x["provenance"]["phase"] == "tests"]
    # both tasks show the same fixed code and tests, so the same tests reply is one sample (deduplicated)
    assert len(tests) == 1 and tests[0]["provenance"]["mutant"]


def test_rounds_report_and_status(tmp_path, monkeypatch, seed_suite):
    from click.testing import CliRunner

    from orchestrator.cli import main
    from orchestrator.evaluation.rounds_report import write_rounds_report

    suite, fixes = seed_suite
    use_fake_sandbox(monkeypatch, fixes)
    Rounds(tmp_path / "run", cfg(), FakeBackend(fixes), suite).run()
    text = write_rounds_report(tmp_path / "run").read_text()
    assert "audit log: intact" in text and "| 1 | 2/2 | 2 | 6 | 6 | 6 | 4 |" in text
    for png in ("report_samples.png", "report_hack_screen.png"):
        assert (tmp_path / "run" / png).stat().st_size > 5000
    out = CliRunner().invoke(main, ["status", str(tmp_path / "run")])
    assert out.exit_code == 0 and "round 2:" in out.output and "maximum of 2 rounds" in out.output
