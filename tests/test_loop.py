"""The loop end to end on real Docker: replay-driven adversarial runs and crash/resume."""

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.store.audit import read_events, verify
from orchestrator.models.backends import ReplayBackend
from orchestrator.config import RunConfig
from orchestrator.agent.loop import Loop
from orchestrator.agent.mutation import mutants
from orchestrator.agent.state import AgentState
from orchestrator.agent.tasks import Task, seed_task
from tests.conftest import write_tree

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parent.parent

FIX_ADD = "def add(a, b):\n    return a + b\n\n\ndef is_even(n):\n    return n % 2 == 1\n"
FIX_ALL = "def add(a, b):\n    return a + b\n\n\ndef is_even(n):\n    return n % 2 == 0\n"
GOOD_TEST = "from example import add\n\n\ndef test_gen_add_zero():\n    assert add(0, 7) == 7\n"
EMPTY_TEST = "def test_gen_nothing():\n    assert True\n"


def patch(content, path="example.py"):
    return {"phase": "patch", "reply": json.dumps({"rationale": "r", "edits": [{"path": path, "content": content}]})}


def gen_reply(content, path):
    return {"phase": "tests", "reply": json.dumps({"rationale": "r", "tests": [{"path": path, "content": content}]})}


def write_replies(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def config(**run):
    cfg = RunConfig.load()
    cfg.run.backend, cfg.run.train_every = "replay", 0
    for k, v in run.items():
        setattr(cfg.run, k, v)
    return cfg


def samples(run_dir):
    path = run_dir / "samples.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_mutants_are_distinct_and_compile():
    src = "def f(a, b):\n    if a < b and b > 0:\n        return a + b * 2\n    return -1\n"
    ms = mutants(src, limit=50)
    assert len(ms) >= 8 and len({m.source for m in ms}) == len(ms)
    for m in ms:
        compile(m.source, "m", "exec")
    assert any("Lt -> LtE" in m.description for m in ms) and any("return None" in m.description for m in ms)


@pytest.fixture
def no_screen(monkeypatch):
    """The sandbox's own defences alone: the policy's hack screen (which refuses os._exit before
    anything runs) is switched off, so the reply reaches the sandbox as it did before the screen."""
    from orchestrator.protocol.policy import Policy

    real = Policy.load

    def load(path=None):
        policy = real(path)
        policy.screen.enabled = False
        return policy

    monkeypatch.setattr(Policy, "load", staticmethod(load))


def test_adversarial_replies_never_count(tmp_path, sandbox_image, no_screen):
    """Protected-test edit, os._exit(0), test that asserts nothing: none archived or kept; the honest fix is."""
    replies = write_replies(tmp_path / "r.jsonl", [
        patch("def test_add():\n    pass\n", path="test_example.py"),      # rejected by policy (retry)
        patch("import os\nos._exit(0)\n"),                                    # tampered -> reward 0, reverted
        gen_reply(EMPTY_TEST, "test_gen_empty.py"),                              # kills no mutant (retry)
        gen_reply("from example import add\n\ndef test_gen_bad():\n    assert add(1, 1) == 3\n",
              "test_gen_bad.py"),                                             # fails on current code (retry)
        gen_reply("def test_gen_x():\n    pass\n", "test_example.py"),           # not a generated-test name
        gen_reply(GOOD_TEST.replace("add(0, 7) == 7", "add(0, 7) == -7"), "test_gen_sub.py"),  # passes on buggy code
        patch(FIX_ALL),                                                       # honest fix
        gen_reply(GOOD_TEST, "test_gen_good.py"),
    ])
    loop = Loop(tmp_path / "run", config(max_retries=3, max_iterations=3, stop_when_solved=False),
                ReplayBackend(replies), task=seed_task())
    state = loop.run()
    events = read_events(tmp_path / "run" / "audit.jsonl")
    assert verify(tmp_path / "run" / "audit.jsonl").ok
    verdicts = [e["verdict"] for e in events if e["event"] == "sandbox_run" and e["purpose"] == "evaluation"]
    assert "tampered" in verdicts
    reverts = [e for e in events if e["event"] == "reverted"]
    assert reverts and reverts[0]["reward"] == 0
    codes = [r["code"] for e in events if e["event"] == "model_reply" for r in e["reasons"]]
    assert codes.count("protected_file") == 2  # a patch and a tests reply both aimed at test_example.py
    rec1 = state.history[0]
    assert not rec1.improved and rec1.tests_accepted == 1  # the test that encodes the bug is the only one kept
    archived = samples(tmp_path / "run")
    replies_archived = [s["messages"][-1]["content"] for s in archived]
    assert not any("os._exit" in r or "test_example.py" in r or "test_gen_empty" in r or "test_gen_bad" in r
                   for r in replies_archived)
    # the honest fix breaks the kept test that encoded the bug, so it must not count either
    assert state.best_reward == 0 and not any(FIX_ALL in r for r in replies_archived)
    assert state.stop_reason.startswith("replay exhausted")
    # every evaluation's evidence was saved with the run and grades the same offline (the tampered one too)
    ids = [e["evidence"] for e in events if e["event"] == "sandbox_run" and e["purpose"] == "evaluation"]
    assert ids and all(ids) and all((tmp_path / "run" / "evidence" / f"{i}.json.gz").is_file() for i in ids)
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "sandbox", "regrade", str(tmp_path / "run")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and " 0 differ" in out.stdout, out.stdout + out.stderr


def test_honest_fix_is_archived_and_overfit_is_not(tmp_path, sandbox_image):
    src = write_tree(tmp_path / "task", {
        "example.py": "def add(a, b):\n    if a < 0:\n        return 0\n    return a + b\n",
        "test_example.py": "from example import add\n\ndef test_add():\n    assert add(2, 3) == 5\n"})
    task = Task(id="custom", source_dir=src, hidden_tests={
        "test_hidden_add.py": "from example import add\n\ndef test_negative():\n    assert add(-1, -2) == -3\n"})
    overfit = "def add(a, b):\n    return 5 if (a, b) == (2, 3) else 0\n"
    honest = "def add(a, b):\n    return a + b\n"
    replies = write_replies(tmp_path / "r.jsonl", [
        patch(overfit), gen_reply(EMPTY_TEST, "test_gen_e.py"),
        patch(honest), gen_reply(GOOD_TEST, "test_gen_good.py")])
    loop = Loop(tmp_path / "run", config(max_retries=0, max_iterations=2, stop_when_solved=False),
                ReplayBackend(replies), task=task)
    state = loop.run()
    assert state.max_reward == 2 and state.best_reward == 2
    assert [r.improved for r in state.history] == [False, True]
    archived = [s["messages"][-1]["content"] for s in samples(tmp_path / "run")]
    assert any(honest in json.loads(r)["edits"][0]["content"] for r in archived if '"edits"' in r)
    assert not any("(2, 3)" in r for r in archived)
    assert all("test_hidden" not in m["content"] for s in samples(tmp_path / "run") for m in s["messages"])
    prov = samples(tmp_path / "run")[0]["provenance"]
    assert {"run_id", "iteration", "phase", "workspace_commit", "verdict_digest", "model", "adapter"} <= set(prov)
    ws = tmp_path / "run" / "workspace"
    assert (ws / "example.py").read_text() == honest and not (ws / "test_hidden_add.py").exists()
    assert (src / "example.py").read_text().startswith("def add(a, b):\n    if a < 0")  # source untouched


def test_protected_file_changed_on_disk_stops_the_run(tmp_path, sandbox_image):
    from orchestrator.protocol.workspace import ProtectedFileChanged

    replies = write_replies(tmp_path / "r.jsonl", [patch(FIX_ALL)])
    loop = Loop(tmp_path / "run", config(), ReplayBackend(replies), task=seed_task())
    (tmp_path / "run" / "workspace" / "test_example.py").write_text("def test_add():\n    pass\n")
    with pytest.raises(ProtectedFileChanged):
        loop.run()


def _crash_replies():
    lines = []
    for i in range(4):
        lines += [patch(FIX_ADD if i % 2 == 0 else FIX_ALL.replace("a + b", "b + a")),
                  gen_reply(GOOD_TEST.replace("test_gen_add_zero", f"test_gen_add_{i}").replace("7", str(i + 7)),
                        f"test_gen_{i}.py")]
    return lines


def _run_cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run"] + args, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def test_sigkill_at_random_points_then_resume(tmp_path, sandbox_image):
    """SIGKILL mid-run three times; resume each time. Same samples as a clean run, none twice, audit intact."""
    replies = write_replies(tmp_path / "r.jsonl", _crash_replies())
    cfg = tmp_path / "cfg.toml"
    cfg.write_text("[run]\nstop_when_solved = false\nmax_iterations = 4\nmax_retries = 0\nplateau_patience = 0\n")
    clean = tmp_path / "clean"
    assert _run_cli(["--backend", "replay", "--replies", str(replies), "--config", str(cfg), "--run-dir",
                     str(clean)]).wait(timeout=300) == 0
    want = sorted(s["sha256"] for s in samples(clean))
    assert len(want) >= 3

    rng = random.Random(1234)
    crashed = tmp_path / "crashed"
    args = ["--backend", "replay", "--replies", str(replies), "--config", str(cfg), "--run-dir", str(crashed)]
    kills = 0
    for attempt in range(12):
        proc = _run_cli(args)
        # three kills at random points, then the resumed run is left to finish (a judged sandbox run
        # takes seconds on a loaded machine: killing every attempt could stop all progress)
        delay = rng.uniform(0.4, 3.0) if kills < 3 else 600
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        if (crashed / "state.json").exists():
            args = ["--backend", "replay", "--replies", str(replies), "--resume", str(crashed)]
            if AgentState.load(crashed / "state.json").step == "done":
                break
    else:
        pytest.fail("the crashed run never finished")
    assert kills >= 1
    got = samples(crashed)
    assert len({s["sha256"] for s in got}) == len(got), "a sample was archived twice"
    assert sorted(s["sha256"] for s in got) == want
    assert verify(crashed / "audit.jsonl").ok
    state = AgentState.load(crashed / "state.json")
    assert state.stop_reason and state.samples == len(want)


def test_status_command(tmp_path, sandbox_image):
    replies = write_replies(tmp_path / "r.jsonl", [patch(FIX_ALL), gen_reply(GOOD_TEST, "test_gen_good.py")])
    Loop(tmp_path / "run", config(), ReplayBackend(replies), task=seed_task()).run()
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "status", str(tmp_path / "run")],
                         capture_output=True, text=True, cwd=ROOT)
    # the seed's 2 visible tests and its 2 hidden tests, all judged: the fix solves all 4
    assert out.returncode == 0 and "best reward 4/4" in out.stdout and "solved" in out.stdout
    data = json.loads(subprocess.run([sys.executable, "-m", "orchestrator.cli", "status", str(tmp_path / "run"),
                                      "--json"], capture_output=True, text=True, cwd=ROOT).stdout)
    assert data["audit_intact"] and data["samples"] == 2


def test_report_from_a_run(tmp_path, sandbox_image):
    from orchestrator.evaluation.report import write_report

    replies = write_replies(tmp_path / "r.jsonl", [patch(FIX_ADD), gen_reply(GOOD_TEST, "test_gen_a.py"),
                                                   patch("def add(a, b):\n    return 0\n"),
                                                   gen_reply(EMPTY_TEST, "test_gen_e.py"),
                                                   patch(FIX_ALL), gen_reply(GOOD_TEST.replace("7", "9"), "test_gen_b.py")])
    Loop(tmp_path / "run", config(max_retries=0, max_iterations=3, stop_when_solved=False),
         ReplayBackend(replies), task=seed_task()).run()
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "report", str(tmp_path / "run")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "run" / "report.md").read_text()
    # iteration 1 fixes add: its visible and hidden add tests pass, 2 of the 4 judged tests
    assert "audit log: intact" in text and "| 1 | 2 | fail | yes" in text and "| 2 | 0 |" in text
    assert (tmp_path / "run" / "report_reward.png").stat().st_size > 5000
    assert write_report(tmp_path / "run") == tmp_path / "run" / "report.md"

    # with adapters: held-out pass@1 per model with intervals, and the gate's paired differences
    from orchestrator.training import gate
    from orchestrator.training.adapters import Registry
    from orchestrator.config import GateSection
    from orchestrator.evaluation.humaneval import ProblemResult
    from tests.test_trainer import fake_adapter

    reg = Registry(tmp_path / "run")
    ids = gate.gate_ids(GateSection())
    solved = {"base": 2, "v0001": 12, "v0002": 1}
    for model, k in solved.items():
        path = gate.results_file(reg, None if model == "base" else model)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [ProblemResult(task_id=t, n=1, correct=int(i < k), verdicts=["pass"]) for i, t in enumerate(ids)]
        path.write_text(json.dumps({"model": "m", "adapter": model, "tasks": ids}) + "\n"
                        + "".join(r.model_dump_json() + "\n" for r in rows))
    for model, parent in (("v0001", "base"), ("v0002", "v0001")):
        reg.register(fake_adapter(tmp_path / f"t-{model}"), "m", {}, {"samples": 3})
        load = lambda m: gate.load_results(gate.results_file(reg, None if m == "base" else m), "m", ids)  # noqa: E731
        c = gate.compare(load(parent), load(model))
        promote, _, why = gate.decide(c, GateSection())
        reg.record_decision(model, promote, why, c["new"]["pass@1"], c["current"]["pass@1"], c)
    write_report(tmp_path / "run")
    text = (tmp_path / "run" / "report.md").read_text()
    assert "| v0001 | base | 3 | 0.364 | 0.061 | +0.303" in text and "| promoted |" in text
    assert "| v0002 | v0001 | 3 | 0.030 | 0.364 | -0.333" in text and "| kept, not promoted |" in text
    assert "| base | 33 | 0.061 |" in text and "| v0001 | 33 | 0.364 |" in text
    assert (tmp_path / "run" / "report_heldout.png").stat().st_size > 5000
