"""Issue 23 item 6a: a generated test is kept (and archived) only when it kills a mutant by an assertion
about behaviour, and its text passes the hack screen first (hack_screen.screen_tests, through the
policy like a patch's). The rounds driver's tests phase and the single loop's test gate share the rule
(mutation.behavioural_kill). No Docker: the ``fake`` provider runs the staged workspace in-process
(tests/test_archive_rule.py's harness, with ``__file__`` set), so a test that reads the source reads it."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from orchestrator.agent.mutation import behavioural_kill
from orchestrator.agent.rounds import Rounds
from orchestrator.config import RunConfig
from orchestrator.evaluation.suites import SEED_FIXED, Suite, _bugfix_from_seed
from orchestrator.models.backends import Backend
from orchestrator.protocol.hack_screen import screen_tests
from orchestrator.protocol.policy import Policy, check_edits
from orchestrator.protocol.schema import FileEdit
from orchestrator.sandbox.container import SandboxResult
from orchestrator.sandbox.fake import FakeSandbox
from orchestrator.sandbox.interface import use
from tests.conftest import write_tree
from tests.test_archive_rule import in_container

# the test: "kills" every mutant by comparing the module's file with the current source
READS_SOURCE = ("import example\n\nSOURCE = " + repr(SEED_FIXED) + "\n\n\ndef test_gen_edge():\n"
                "    assert open(example.__file__).read() == SOURCE\n")
# asserts nothing: passes on the code, and only crashes (KeyError) on a mutant of is_even
CRASHES_ONLY = "from example import is_even\n\n\ndef test_gen_edge():\n    {True: 1}[is_even(2)]\n"
GOOD = "from example import add, is_even\n\n\ndef test_gen_edge():\n    assert add(2, 2) == 4\n    assert is_even(2)\n"
SOURCE_READERS = [
    READS_SOURCE,
    "import inspect\nfrom example import add\n\n\ndef test_gen_x():\n    assert 'a + b' in inspect.getsource(add)\n",
    "from example import add\n\n\ndef test_gen_x():\n    assert add.__code__.co_code\n",
    "import pathlib\nimport example\n\n\ndef test_gen_x():\n    assert pathlib.Path('example.py').read_text()\n",
    "import os\n\n\ndef test_gen_x():\n    assert os.listdir('.')\n",
    "from example import add\n\n\ndef test_gen_x():\n    assert getattr(add, '__co' + 'de__')\n",
    "from example import add\n\n\ndef test_gen_x(tmp_path):\n    assert add(1, 1) == 2\n",
    "from example import add\n\n\ndef test_gen_x():\n    if add(1, 1) != 2:\n        raise AssertionError\n",
    "import example\n\n\ndef test_gen_x():\n    assert example.__spec__.origin\n",
    "import importlib\n\n\ndef test_gen_x():\n    assert importlib.import_module('example')\n",
    "import sys\n\n\ndef test_gen_x():\n    assert sys.modules['example']\n",
]


@pytest.mark.parametrize("text", SOURCE_READERS)
def test_the_screen_refuses_generated_tests_that_read_code_or_files(tmp_path, text):
    ws = write_tree(tmp_path / "ws", {"example.py": SEED_FIXED, "test_example.py": "def test_a():\n    pass\n"})
    assert screen_tests(text, {"example"})
    decision = check_edits([FileEdit(path="test_gen_edge.py", content=text)], "tests", ws, Policy.load())
    assert not decision.accepted and decision.reasons[0].code == "hack_suspected"


def test_the_screen_lets_behavioural_tests_through(tmp_path):
    ws = write_tree(tmp_path / "ws", {"example.py": SEED_FIXED})
    for text in (GOOD, "import pytest\nfrom example import add\n\n\n@pytest.mark.parametrize('a', [1, 2])\n"
                       "def test_gen_p(a):\n    assert add(a, 0) == a\n    assert add(0.1, 0.2) == pytest.approx(0.3)\n"
                       "    with pytest.raises(TypeError):\n        add(1, None)\n"):
        assert screen_tests(text, {"example"}) == []
        assert check_edits([FileEdit(path="test_gen_edge.py", content=text)], "tests", ws, Policy.load()).accepted


def _result(verdict: str, nodeid: str, message: str, raised: str | None = None) -> SandboxResult:
    r = SandboxResult(verdict=verdict, failed=1, tests=[{"nodeid": nodeid, "outcome": "failed", "message": message}])
    if raised is not None:
        r._evidence = {"events": [{"e": "report", "id": nodeid, "when": "call", "outcome": "failed", "raised": raised}]}
    return r


def test_behavioural_kill_is_an_assertion_in_the_tests_own_file():
    f = {"test_gen_edge.py"}
    nid = "test_gen_edge.py::test_gen_edge"
    own = "def test_gen_edge():\n>       assert add(2, 2) == 4\nE       assert 0 == 4\n\ntest_gen_edge.py:5: AssertionError"
    assert behavioural_kill(_result("fail", nid, own), f) == nid
    assert behavioural_kill(_result("fail", nid, own, raised="AssertionError"), f) == nid
    assert behavioural_kill(_result("fail", nid, own, raised="KeyError"), f) is None  # the evidence disagrees
    assert behavioural_kill(_result("fail", nid, "E   KeyError: False\n\ntest_gen_edge.py:5: KeyError"), f) is None
    assert behavioural_kill(_result("fail", nid, "E   TypeError\n\nexample.py:3: TypeError"), f) is None
    assert behavioural_kill(_result("fail", nid, "E   AssertionError\n\nexample.py:3: AssertionError"), f) is None
    for verdict in ("tampered", "error", "timeout", "pass"):
        assert behavioural_kill(_result(verdict, nid, own), f) is None
    other = "test_example.py::test_a"
    assert behavioural_kill(_result("fail", other, own.replace("test_gen_edge.py:", "test_example.py:")), f) is None


class PhaseBackend(Backend):
    """Every patch candidate is the seed's fix; the tests phase gets ``test_text``."""

    name, model_id = "fake", "fake-model"

    def __init__(self, test_text: str):
        self.test_text = test_text

    def generate_many(self, messages, phase, task=None, n=1, temperature=0.8, seed=None, fmt=None):
        return [json.dumps({"rationale": "fix", "edits": [{"path": "example.py", "content": SEED_FIXED}]})] * n

    def generate(self, messages, phase, task=None, seed=None, fmt=None):
        assert phase == "tests"
        return json.dumps({"rationale": "r", "tests": [{"path": "test_gen_edge.py", "content": self.test_text}]})


def _rounds(tmp_path, test_text: str, screen: bool = True):
    tasks = _bugfix_from_seed(0)[:1]
    cfg = RunConfig.load()
    cfg.rounds.rounds, cfg.rounds.tasks_per_round, cfg.rounds.k, cfg.rounds.concurrency = 1, 1, 1, 1
    cfg.rounds.tests_phase, cfg.rounds.train = True, False
    with use(FakeSandbox(fn=in_container)):
        driver = Rounds(tmp_path, cfg, PhaseBackend(test_text), Suite(name="bugfix-seed", seed=0, tasks=tasks),
                        console=Console(quiet=True))
        driver.policy.screen.enabled = screen
        state = driver.run()
    lines = (tmp_path / "samples.jsonl").read_text().splitlines() if (tmp_path / "samples.jsonl").exists() else []
    phases = [json.loads(x)["provenance"]["phase"] for x in lines]
    outcome = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()
               if json.loads(x).get("event") == "task_attempted"][0]["tests_phase"]
    return state, phases, outcome


def test_a_test_that_reads_the_source_is_refused_and_never_archived(tmp_path):
    """The issue's case, through the rounds driver's tests phase: refused by the screen, not archived.
    Positive control: with the screen off it kills every mutant by its own assert and is archived, so
    the screen is what refuses it."""
    state, phases, outcome = _rounds(tmp_path / "a", READS_SOURCE)
    assert phases == ["patch"] and outcome.startswith("refused: hack_suspected")
    state, phases, outcome = _rounds(tmp_path / "b", READS_SOURCE, screen=False)
    assert phases == ["patch", "tests"] and outcome.startswith("kept")


def test_a_test_that_only_crashes_on_a_mutant_kills_nothing(tmp_path):
    """A test without an assert that raises KeyError on a mutant: every mutant run is a non-pass (what the
    old gate counted as a kill), none is a kill by an assertion, so it is not kept or archived; a test
    that asserts on the results is."""
    state, phases, outcome = _rounds(tmp_path / "a", CRASHES_ONLY)
    assert phases == ["patch"] and outcome.startswith("asserts nothing")
    state, phases, outcome = _rounds(tmp_path / "b", GOOD)
    assert phases == ["patch", "tests"] and outcome.startswith("kept")


@pytest.mark.docker
def test_on_docker_a_crash_is_no_kill_and_an_assert_is(tmp_path, sandbox_image):
    """The loop's test gate on the real sandbox: the test that only crashes (KeyError) on mutants is
    refused although its mutant runs fail; its retry, asserting on results, kills one by an assert."""
    from orchestrator.agent.loop import Loop
    from orchestrator.agent.tasks import seed_task
    from orchestrator.models.backends import ReplayBackend
    from orchestrator.store.audit import read_events
    from tests.test_loop import FIX_ALL, config, gen_reply, patch, samples

    (tmp_path / "r.jsonl").write_text("".join(json.dumps(x) + "\n" for x in [
        patch(FIX_ALL), gen_reply(CRASHES_ONLY, "test_gen_edge.py"), gen_reply(GOOD, "test_gen_edge.py")]))
    state = Loop(tmp_path / "run", config(max_retries=1, max_iterations=1, stop_when_solved=False),
                 ReplayBackend(tmp_path / "r.jsonl"), task=seed_task(), console=Console(quiet=True)).run()
    events = read_events(tmp_path / "run" / "audit.jsonl")
    runs = [e for e in events if e["event"] == "mutant_run"]
    crashed = runs[:len(runs) - 1]
    assert any(e["verdict"] == "fail" for e in crashed) and not any(e["killed"] for e in crashed)
    assert runs[-1]["killed"] and runs[-1]["by"] == "test_gen_edge.py::test_gen_edge"
    assert state.history[0].tests_accepted == 1
    kept = [s for s in samples(tmp_path / "run") if s["provenance"]["phase"] == "tests"]
    assert len(kept) == 1 and "assert add(2, 2) == 4" in kept[0]["messages"][-1]["content"]
