"""The loop's logic without Docker: the real loop, protocol, policy, workspace, mutation gate and archive,
with the ``fake`` sandbox provider standing in for the container (the real-Docker versions of these runs
are in tests/test_loop.py). The fake runs the staged workspace's plain test functions in-process: fine
for the trusted replies of these tests, never for a model's."""

from __future__ import annotations

import json
import sys
import traceback
import types
from pathlib import Path

from orchestrator.agent.loop import Loop
from orchestrator.agent.tasks import Task
from orchestrator.models.backends import ReplayBackend
from orchestrator.sandbox.container import JudgedResult, SandboxResult
from orchestrator.sandbox.fake import FakeSandbox
from orchestrator.sandbox.interface import use
from orchestrator.store.audit import read_events, verify
from orchestrator.training.burst import BurstResult
from tests.conftest import write_tree
from tests.test_loop import EMPTY_TEST, GOOD_TEST, config, gen_reply, patch, samples  # the docker tests' helpers

BUGGY = "def add(a, b):\n    if a < 0:\n        return 0\n    return a + b\n"
OVERFIT = "def add(a, b):\n    return 5 if (a, b) == (2, 3) else 0\n"
HONEST = "def add(a, b):\n    return a + b\n"
VISIBLE = "from example import add\n\ndef test_add():\n    assert add(2, 3) == 5\n"
HIDDEN = "from example import add\n\ndef test_negative():\n    assert add(-1, -2) == -3\n"


def run_test_functions(source: str, module_source: str, prefix: str) -> list[dict]:
    """Every top-level ``test_*`` function of ``source``, with ``example`` importable from ``module_source``."""
    example = types.ModuleType("example")
    saved = sys.modules.get("example")
    sys.modules["example"] = example
    try:
        exec(compile(module_source, "example.py", "exec"), example.__dict__)
        ns: dict = {}
        exec(compile(source, prefix, "exec"), ns)
        out = []
        for name, fn in ns.items():
            if name.startswith("test_") and callable(fn):
                try:
                    fn()
                    outcome, message = "passed", ""
                except Exception as exc:  # noqa: BLE001 - a failing test, with pytest's crash line
                    where = traceback.extract_tb(exc.__traceback__)[-1]
                    outcome, message = "failed", f"{where.filename}:{where.lineno}: {type(exc).__name__}"
                out.append({"nodeid": f"{prefix}::{name}", "outcome": outcome, "message": message})
        return out
    finally:
        if saved is None:
            sys.modules.pop("example", None)
        else:
            sys.modules["example"] = saved


def phase(tests: list[dict]) -> dict:
    passed = sum(t["outcome"] == "passed" for t in tests)
    return {"verdict": "pass" if tests and passed == len(tests) else "fail", "passed": passed,
            "failed": len(tests) - passed, "tests": tests}


def in_process(stage: Path, judge: dict | None) -> SandboxResult:
    module = (stage / "example.py").read_text()
    visible = [t for p in sorted(stage.glob("test_*.py"))
               for t in run_test_functions(p.read_text(), module, p.name)]
    judged = None
    if judge is not None:
        judged = JudgedResult(**phase([t for rel, src in sorted(judge.items())
                                       for t in run_test_functions(src, module, rel)]))
    return SandboxResult(**phase(visible), judged=judged)


def replay(path: Path, lines: list[dict]) -> ReplayBackend:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return ReplayBackend(path)


def task(tmp_path: Path) -> Task:
    src = write_tree(tmp_path / "task", {"example.py": BUGGY, "test_example.py": VISIBLE})
    return Task(id="custom", source_dir=src, hidden_tests={"test_hidden_add.py": HIDDEN})


def test_overfit_is_reverted_the_honest_fix_kept_and_only_it_archived(tmp_path):
    """The same run as tests/test_loop.py's honest-fix test, on the fake: the overfit patch passes the
    visible test but not the judged hidden one (reverted, not archived); the tests reply that asserts
    nothing is refused by the mutation gate; the honest fix is kept and archived with its provenance."""
    backend = replay(tmp_path / "r.jsonl", [patch(OVERFIT), gen_reply(EMPTY_TEST, "test_gen_e.py"),
                                            patch(HONEST), gen_reply(GOOD_TEST, "test_gen_good.py")])
    with use(FakeSandbox(fn=in_process)) as fake:
        state = Loop(tmp_path / "run", config(max_retries=0, max_iterations=2, stop_when_solved=False),
                     backend, task=task(tmp_path)).run()
    assert state.max_reward == 2 and state.best_reward == 2
    assert [r.improved for r in state.history] == [False, True]
    assert [r.tests_accepted for r in state.history] == [0, 1]
    events = read_events(tmp_path / "run" / "audit.jsonl")
    assert verify(tmp_path / "run" / "audit.jsonl").ok
    assert [e["reward"] for e in events if e["event"] == "reverted"] == [1]  # the overfit: 1 of 2 judged
    mutant_runs = [e for e in events if e["event"] == "mutant_run"]
    empty = [e for e in mutant_runs if e["iteration"] == 1]
    assert empty and not any(e["killed"] for e in empty)  # every mutant survived the empty test: refused
    assert [e["killed"] for e in mutant_runs if e["iteration"] == 2][-1]  # the kept test kills one
    archived = [s["messages"][-1]["content"] for s in samples(tmp_path / "run")]
    assert any(HONEST in json.loads(r)["edits"][0]["content"] for r in archived if '"edits"' in r)
    assert not any("(2, 3)" in r for r in archived) and not any("test_gen_nothing" in r for r in archived)
    ws = tmp_path / "run" / "workspace"
    assert (ws / "example.py").read_text() == HONEST and not (ws / "test_hidden_add.py").exists()
    # the hidden test reached the sandbox only through the judge, never the workspace it ran
    assert all("test_hidden_add.py" not in c["files"] for c in fake.calls)
    assert any(c["judge"] and "hidden/test_hidden_add.py" in c["judge"] for c in fake.calls)


def test_a_regression_is_reverted_to_the_best_commit(tmp_path):
    """A later patch that scores below the best is undone: the workspace returns to the best commit."""
    broken = "def add(a, b):\n    return a - b\n"
    backend = replay(tmp_path / "r.jsonl", [patch(HONEST), gen_reply(GOOD_TEST, "test_gen_good.py"),
                                            patch(broken), gen_reply(EMPTY_TEST, "test_gen_e.py")])
    with use(FakeSandbox(fn=in_process)):
        state = Loop(tmp_path / "run", config(max_retries=0, max_iterations=2, stop_when_solved=False),
                     backend, task=task(tmp_path)).run()
    assert [r.improved for r in state.history] == [True, False]
    assert state.best_reward == 2 and (tmp_path / "run" / "workspace" / "example.py").read_text() == HONEST
    assert len([s for s in samples(tmp_path / "run") if s["provenance"]["phase"] == "patch"]) == 1


def test_stops_when_solved(tmp_path):
    backend = replay(tmp_path / "r.jsonl", [patch(HONEST), gen_reply(GOOD_TEST, "test_gen_good.py")])
    with use(FakeSandbox(fn=in_process)):
        state = Loop(tmp_path / "run", config(max_retries=0, max_iterations=5, stop_when_solved=True),
                     backend, task=task(tmp_path)).run()
    assert state.best_reward == state.max_reward == 2 and state.iteration == 1
    assert "solved" in state.stop_reason


def test_the_loop_applies_what_a_training_burst_returns(tmp_path):
    """Training returns a BurstResult and the loop applies it: the adapter now served, and bursts without
    a held-out improvement counted towards the training plateau, which stops the run."""
    cfg = config(max_retries=0, max_iterations=6, stop_when_solved=False, train_every=1)
    cfg.gate.patience = 2
    bursts = []

    def hook(loop):
        assert loop.state.train_plateau == len(bursts)  # the hook reads the loop, never writes it
        bursts.append(loop.state.iteration)
        loop.backend.adapter_id = f"v{len(bursts):04d}"  # as burst() leaves a promoted adapter served
        return BurstResult(adapter=loop.backend.adapter_id, promoted=True, improved=False)

    lines = []
    for i in range(3):
        lines += [patch(HONEST if i == 0 else OVERFIT),
                  gen_reply(GOOD_TEST.replace("test_gen_add_zero", f"test_gen_add_{i}"), f"test_gen_{i}.py")]
    with use(FakeSandbox(fn=in_process)):
        loop = Loop(tmp_path / "run", cfg, replay(tmp_path / "r.jsonl", lines), task=task(tmp_path), train_hook=hook)
        state = loop.run()
    assert bursts == [1, 2]
    assert state.current_adapter == "v0002" and state.train_plateau == 2
    assert state.stop_reason.startswith("plateau: 2 training bursts")
    assert loop.train(lambda _: BurstResult(reason="fewer than 4 samples")).adapter is None
    assert state.train_plateau == 2 and state.current_adapter == "v0002"  # nothing trained: nothing changes
