"""Issue 23 item 5: a sample becomes training data only when it passed tests the candidate could neither
see nor read (grading.archivable). A workspace that brings no hidden tests gets a seeded share of its
judgeable visible test functions held back (tasks.hold_back); when none can be, the run archives
nothing and says so. The real loop on the ``fake`` sandbox provider (no Docker); the fake runs the
staged workspace with the module's ``__file__`` and the working directory set to the staged copy, so a
reply that reads the visible tests reads them as it would in the container."""

from __future__ import annotations

import io
import json
import os
import sys
import traceback
import types
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator.agent.loop import Loop
from orchestrator.agent.tasks import HELD_BACK_FILE, hold_back, judgeable_tests, user_task
from orchestrator.models.backends import ReplayBackend
from orchestrator.protocol.hack_screen import screen
from orchestrator.sandbox.container import JudgedResult, SandboxResult
from orchestrator.sandbox.fake import FakeSandbox
from orchestrator.sandbox.interface import use
from orchestrator.store.audit import read_events
from tests.conftest import write_tree
from tests.test_loop import EMPTY_TEST, config, gen_reply, patch, samples

BUGGY = "def add(a, b):\n    return a - b\n"
HONEST = "def add(a, b):\n    return a + b\n"
# the reply: glob *.py, parse the asserts, return the expected literal of the matching call
READS_TESTS = '''import ast
import glob
import os


def add(a, b):
    here = os.path.dirname(os.path.abspath(__file__))
    for path in sorted(glob.glob(os.path.join(here, "*.py"))):
        with open(path) as fh:
            tree = ast.parse(fh.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Call) \\
                    and getattr(node.left.func, "id", "") == "add":
                if [ast.literal_eval(x) for x in node.left.args] == [a, b]:
                    return ast.literal_eval(node.comparators[0])
    return 0
'''
TWO_TESTS = ("from example import add\n\n\ndef test_add_small():\n    assert add(2, 3) == 5\n\n\n"
             "def test_add_ones():\n    assert add(1, 1) == 2\n")
# the same two tests, not held back (an assert with a message is not one tasks.judgeable_tests takes)
UNJUDGEABLE = TWO_TESTS.replace("== 5", "== 5, 'small'").replace("== 2", "== 2, 'ones'")


def _module(stage: Path) -> types.ModuleType:
    mod = types.ModuleType("example")
    mod.__file__ = str(stage / "example.py")
    exec(compile((stage / "example.py").read_text(), mod.__file__, "exec"), mod.__dict__)
    return mod


def _run(source: str, name: str, stage: Path) -> list[dict]:
    saved, cwd = sys.modules.get("example"), os.getcwd()
    os.chdir(stage)
    try:
        sys.modules["example"] = _module(stage)
        ns: dict = {}
        exec(compile(source, name, "exec"), ns)
        out = []
        for fn_name, fn in list(ns.items()):
            if fn_name.startswith("test") and callable(fn):
                try:
                    fn()
                    out.append({"nodeid": f"{name}::{fn_name}", "outcome": "passed", "message": ""})
                except Exception as exc:  # noqa: BLE001 - a failing test, reported as pytest would
                    where = traceback.extract_tb(exc.__traceback__)[-1]
                    out.append({"nodeid": f"{name}::{fn_name}", "outcome": "failed",
                                "message": f"{Path(where.filename).name}:{where.lineno}: {type(exc).__name__}"})
        return out
    finally:
        os.chdir(cwd)
        if saved is None:
            sys.modules.pop("example", None)
        else:
            sys.modules["example"] = saved


def _phase(tests: list[dict]) -> dict:
    passed = sum(t["outcome"] == "passed" for t in tests)
    return {"verdict": "pass" if tests and passed == len(tests) else "fail", "passed": passed,
            "failed": len(tests) - passed, "tests": tests}


def in_container(stage: Path, judge: dict | None) -> SandboxResult:
    visible = [t for p in sorted(stage.glob("test_*.py")) for t in _run(p.read_text(), p.name, stage)]
    judged = None
    if judge is not None:
        judged = JudgedResult(**_phase([t for rel, src in sorted(judge.items()) for t in _run(src, rel, stage)]))
    return SandboxResult(**_phase(visible), judged=judged)


def _loop_run(tmp_path: Path, tests_text: str, replies: list[dict]):
    ws = write_tree(tmp_path / "ws", {"example.py": BUGGY, "test_example.py": tests_text})
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(x) + "\n" for x in replies))
    out = io.StringIO()
    with use(FakeSandbox(fn=in_container)) as fake:
        state = Loop(tmp_path / "run", config(max_retries=0, max_iterations=2, stop_when_solved=False),
                     ReplayBackend(tmp_path / "r.jsonl"), task=user_task(ws),
                     console=Console(file=out, width=400)).run()
    return state, out.getvalue(), fake


def test_the_reply_that_reads_the_visible_tests_passes_the_screen_and_them():
    """The attack as the issue tried it: the hack screen lets it through, and it passes the visible
    tests without a fix (so no reward over visible tests alone can refuse it)."""
    assert screen(READS_TESTS) == []
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        stage = write_tree(Path(d), {"example.py": READS_TESTS, "test_example.py": TWO_TESTS})
        assert [t["outcome"] for t in _run(TWO_TESTS, "test_example.py", stage)] == ["passed", "passed"]


def test_reading_the_tests_is_never_archived_when_nothing_can_be_held_back(tmp_path):
    """No hidden tests and no judgeable visible test: the reply that reads the tests scores 2/2 and is
    kept in the workspace, but the run archives nothing and says so (output and audit)."""
    state, out, _ = _loop_run(tmp_path, UNJUDGEABLE, [patch(READS_TESTS)])
    assert state.best_reward == 2 and state.max_reward == 2  # the reward cannot tell it from a fix
    assert samples(tmp_path / "run") == []
    assert "archive off" in out and "nothing is archived" in out
    events = read_events(tmp_path / "run" / "audit.jsonl")
    assert any(e["event"] == "archive_off" for e in events)
    assert not any(e["event"] == "sample_archived" for e in events)
    from orchestrator.evaluation.report import write_report

    assert "**archive off**" in write_report(tmp_path / "run").read_text()
    # the honest fix is not archived either: with every test visible nothing is
    state, out, _ = _loop_run(tmp_path / "b", UNJUDGEABLE, [patch(HONEST)])
    assert state.best_reward == 2 and samples(tmp_path / "b" / "run") == []


def test_held_back_tests_refuse_the_reader_and_archive_the_fix(tmp_path):
    """The issue's workspace (add = a - b, two visible tests): one test function is held back, out of
    the prompt and of the container's workspace; the reply that reads the visible tests fails it and is
    not archived; the honest fix passes it and is."""
    state, out, fake = _loop_run(tmp_path, TWO_TESTS, [patch(READS_TESTS), gen_reply(EMPTY_TEST, "test_gen_e.py"),
                                                         patch(HONEST), gen_reply(EMPTY_TEST, "test_gen_e.py")])
    run = tmp_path / "run"
    held = json.loads((run / "run.json").read_text())["held_back"]
    assert len(held) == 1 and held[0].startswith("test_example.py::test_add_")
    name = held[0].split("::")[1]
    assert "held back 1 visible test function" in out and "archive off" not in out
    # out of the workspace (and so of the prompt and the container), in the judge only
    assert f"def {name}" not in (run / "workspace" / "test_example.py").read_text()
    assert f"def {name}" in (run / "hidden" / HELD_BACK_FILE).read_text()
    assert all(not any(HELD_BACK_FILE in f for f in c["files"]) for c in fake.calls)
    assert any(c["judge"] and f"hidden/{HELD_BACK_FILE}" in c["judge"] for c in fake.calls)
    assert not (run / "task-copy").exists()
    assert state.max_reward == 2 and state.best_reward == 2
    rewards = [e["reward"] for e in read_events(run / "audit.jsonl")
               if e["event"] == "sandbox_run" and e.get("purpose") == "evaluation"]
    assert rewards == [0, 1, 2]  # baseline, the reader (the visible test only), the fix
    archived = [json.loads(s["messages"][-1]["content"])["edits"][0]["content"] for s in samples(run)]
    assert archived == [HONEST]


def test_hold_back_is_seeded_and_keeps_a_visible_test(tmp_path):
    src = write_tree(tmp_path / "ws", {"example.py": BUGGY, "test_example.py": TWO_TESTS,
                                       "test_other.py": UNJUDGEABLE.replace("test_add", "test_other")})
    found, imports = judgeable_tests(src, "test_example.py")
    assert sorted(found) == ["test_add_ones", "test_add_small"] and imports == ["from example import add"]
    assert judgeable_tests(src, "test_other.py")[0] == {}
    picks = set()
    for seed in range(12):
        task, held = hold_back(user_task(src), tmp_path / f"copy{seed}", seed)
        assert len(held) == 1 and set(task.hidden_tests) == {HELD_BACK_FILE}
        assert hold_back(user_task(src), tmp_path / f"again{seed}", seed)[1] == held  # seeded
        picks.add(held[0])
    assert picks == {"test_example.py::test_add_ones", "test_example.py::test_add_small"}  # it varies
    # a workspace whose only test would be held back keeps it visible (nothing held back)
    lone = write_tree(tmp_path / "lone", {"example.py": BUGGY,
                                          "test_example.py": "from example import add\n\n\ndef test_a():\n"
                                                             "    assert add(2, 3) == 5\n"})
    assert hold_back(user_task(lone), tmp_path / "lone-copy", 0)[1] == []


@pytest.mark.docker
def test_on_docker_reading_the_tests_is_never_archived(tmp_path, sandbox_image):
    """The issue's run on the real sandbox and judge. Every test visible and none judgeable: the reader
    scores 2/2 in the judge (the attack works) and nothing is archived. The issue's workspace: one test
    is held back, the reader fails it in the judge, the honest fix passes it and only it is archived."""
    def run(name, tests_text, replies):
        ws = write_tree(tmp_path / name / "ws", {"example.py": BUGGY, "test_example.py": tests_text})
        (tmp_path / name / "r.jsonl").write_text("".join(json.dumps(x) + "\n" for x in replies))
        state = Loop(tmp_path / name / "run", config(max_retries=0, max_iterations=2, stop_when_solved=False),
                     ReplayBackend(tmp_path / name / "r.jsonl"), task=user_task(ws),
                     console=Console(file=io.StringIO())).run()
        rewards = [e["reward"] for e in read_events(tmp_path / name / "run" / "audit.jsonl")
                   if e["event"] == "sandbox_run" and e.get("purpose") == "evaluation"]
        return state, rewards, samples(tmp_path / name / "run")

    state, rewards, archived = run("off", UNJUDGEABLE, [patch(READS_TESTS)])
    assert rewards == [0, 2] and archived == []
    state, rewards, archived = run("held", TWO_TESTS, [patch(READS_TESTS), gen_reply(EMPTY_TEST, "test_gen_e.py"),
                                                      patch(HONEST), gen_reply(EMPTY_TEST, "test_gen_e.py")])
    assert rewards == [0, 1, 2]
    assert [json.loads(s["messages"][-1]["content"])["edits"][0]["content"] for s in archived] == [HONEST]


def test_rounds_on_a_directory_task_hold_back_or_archive_nothing(tmp_path):
    """The rounds driver, ``dir:`` tasks without hidden tests: the reader is verified where nothing can
    be held back but never archived (the round says so); where a test is held back it fails it."""
    from orchestrator.agent.rounds import Rounds
    from orchestrator.config import RunConfig
    from orchestrator.evaluation.suites import Suite, SuiteTask
    from orchestrator.models.backends import Backend

    class Reader(Backend):
        name, model_id = "fake", "fake-model"

        def generate_many(self, messages, phase, task=None, n=1, temperature=0.8, seed=None, fmt=None):
            return [json.dumps({"rationale": "r", "edits": [{"path": "example.py", "content": READS_TESTS}]})] * n

    def run(name, tests_text):
        d = write_tree(tmp_path / name / "ws", {"example.py": BUGGY, "test_example.py": tests_text})
        cfg = RunConfig.load()
        cfg.rounds.rounds, cfg.rounds.tasks_per_round, cfg.rounds.k, cfg.rounds.concurrency = 1, 1, 1, 1
        cfg.rounds.train = False
        out = io.StringIO()
        suite = Suite(name="dir", seed=0, tasks=[SuiteTask(id="dir:ws", kind="dir", source=f"dir:{d}", split="train",
                                                           path=str(d))])
        with use(FakeSandbox(fn=in_container)):
            state = Rounds(tmp_path / name / "run", cfg, Reader(), suite, console=Console(file=out, width=400)).run()
        return state.rounds[0], out.getvalue(), samples(tmp_path / name / "run")

    rec, out, archived = run("off", UNJUDGEABLE)
    assert rec.verified == 1 and rec.unjudged_tasks == 1 and archived == [] and "archive off for 1 task" in out
    rec, out, archived = run("held", TWO_TESTS)
    assert rec.verified == 0 and rec.unjudged_tasks == 0 and archived == [] and "archive off" not in out
