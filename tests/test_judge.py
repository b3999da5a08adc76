"""The out-of-process judge: its codec (no Docker), value-level hacks through `rsi eval`'s path
(real Docker), the hack screen's false positives, and the loop archiving nothing from a hack."""

import json
import math
from pathlib import Path

import pytest

from orchestrator.evaluation import grading as evaluation
from orchestrator.models.backends import ReplayBackend
from orchestrator.protocol.hack_screen import screen
from orchestrator.evaluation.humaneval import evaluate, summarize
from orchestrator.protocol.policy import Policy
from orchestrator.sandbox.runner.codec import CodecError, decode, encode, loads
from orchestrator.agent.tasks import humaneval_problems
from tests.value_hacks import HACKS

# ----- codec (no Docker) -----

PLAIN = [None, True, False, 0, -7, 10 ** 40, 1.5, -0.0, float("inf"), float("-inf"), "", "héllo\x00",
         b"\x00\xff", [1, [2, (3, 4)]], (1, 2), (), {"a": 1, 2: [3], (1, 2): frozenset({1})},
         {1, 2, "x"}, frozenset(), [[[[]]]]]


def _stable_id(value) -> str:
    """repr, except a set's (its order follows the string hash seed, which differs between pytest-xdist
    workers, and every worker must collect the same ids)."""
    if isinstance(value, (set, frozenset)):
        return f"{type(value).__name__}({sorted(map(repr, value))})"
    return repr(value)


@pytest.mark.parametrize("value", PLAIN, ids=_stable_id)
def test_codec_round_trip_keeps_types(value):
    back = decode(loads(json.dumps(encode(value))))
    assert back == value and type(back) is type(value)
    if isinstance(value, float) and value == 0:
        assert math.copysign(1, back) == math.copysign(1, value)


def test_codec_nan_and_tuple_list_distinct():
    assert math.isnan(decode(encode(float("nan"))))
    assert decode(encode((1, 2))) != [1, 2]


@pytest.mark.parametrize("value", [
    type("S", (str,), {"__eq__": lambda s, o: True, "__hash__": str.__hash__})("x"),
    type("I", (int,), {})(1), object(), lambda: 1, (x for x in []), NotImplemented, ..., ValueError(),
    [object()], {"k": object()}, bytearray(b"x"),
], ids=lambda v: type(v).__name__)
def test_codec_refuses_anything_not_plain(value):
    with pytest.raises(CodecError):
        encode(value)


@pytest.mark.parametrize("wire", [
    '{"x": 1}', '{"f": "1+1"}', '{"f": "__import__"}', '{"b": "!!"}', '{"s": [{"l": []}]}',
    '{"d": [[{"l": []}, 1]]}', '{"d": [1]}', '{"l": 5}', '{"f": 1.5}', "[1]", '{"l": [], "t": []}',
], ids=str)
def test_decode_refuses_malformed_wire(wire):
    with pytest.raises(CodecError):
        decode(json.loads(wire))


def test_bounded_loads():
    with pytest.raises(CodecError):
        loads("[" * 985 + "]" * 985)
    with pytest.raises(CodecError):
        loads(b"\xff\xfe")
    with pytest.raises(CodecError):
        loads("x" * 100, max_bytes=10)
    with pytest.raises(CodecError):
        encode(_nest(100))


def _nest(n):
    v = []
    for _ in range(n):
        v = [v]
    return v


# ----- hack screen false positives (no Docker) -----

def test_hack_screen_passes_every_canonical_solution_and_the_seed():
    flagged = {tid: f for tid, p in humaneval_problems().items()
               if (f := screen(p["prompt"] + p["canonical_solution"]))}
    assert flagged == {}
    fixed = "def add(a, b):\n    return a + b\n\n\ndef is_even(n):\n    return n % 2 == 0\n"
    assert screen(fixed) == [] and screen(Path("seeds/example/example.py").read_text()) == []


def test_hack_screen_refuses_most_hacks_with_a_reason():
    caught = {name for name, src in HACKS.items() if screen(src.replace("ENTRY", "f"))}
    # The screen is defence in depth: plain-data liars (e.g. a stateful alternator) pass it;
    # the judge is what must hold for every hack (test below).
    assert len(caught) >= 20, sorted(set(HACKS) - caught)


# ----- the judge against value-level hacks (real Docker) -----

HACK_PROBLEMS = ["HumanEval/0", "HumanEval/5", "HumanEval/10"]


def _replies(path: Path, ids, body) -> Path:
    lines = []
    for tid in ids:
        p = humaneval_problems()[tid]
        lines.append({"phase": "patch", "task": tid, "reply": json.dumps(
            {"rationale": "r", "edits": [{"path": "example.py", "content": body(p)}]})})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.fixture
def no_screen(monkeypatch):
    """The judge alone: the hack screen is switched off so every hack reaches the sandbox."""
    real = Policy.load

    def load(path=None):
        policy = real(path)
        policy.screen.enabled = False
        return policy

    monkeypatch.setattr(evaluation.Policy, "load", staticmethod(load))


@pytest.mark.docker
@pytest.mark.parametrize("name", sorted(HACKS))
def test_value_hack_scores_zero_through_the_judge(name, tmp_path, sandbox_image, no_screen):
    src = HACKS[name]
    backend = ReplayBackend(_replies(tmp_path / "r.jsonl", HACK_PROBLEMS,
                                     lambda p: p["prompt"] + "    pass\n\n" + src.replace("ENTRY", p["entry_point"])))
    results = evaluate(backend, HACK_PROBLEMS)
    assert [r.correct for r in results] == [0] * len(HACK_PROBLEMS), [r.verdicts for r in results]
    assert all(r.rejected == 0 for r in results), "the screen was meant to be off: the judge must hold alone"


@pytest.mark.docker
def test_positive_control_canonical_passes_the_same_path(tmp_path, sandbox_image, no_screen):
    """The control for the hack test: the same problems, path and settings give canonical code 1."""
    backend = ReplayBackend(_replies(tmp_path / "c.jsonl", HACK_PROBLEMS,
                                     lambda p: p["prompt"] + p["canonical_solution"]))
    results = evaluate(backend, HACK_PROBLEMS)
    assert summarize(results)["pass@1"] == 1.0, [r.verdicts for r in results]


@pytest.mark.docker
def test_hacks_are_refused_by_the_screen_before_running(tmp_path, sandbox_image):
    src = HACKS["frame_peek_assert"]
    backend = ReplayBackend(_replies(tmp_path / "s.jsonl", HACK_PROBLEMS[:1],
                                     lambda p: p["prompt"] + "    pass\n\n" + src.replace("ENTRY", p["entry_point"])))
    (r,) = evaluate(backend, HACK_PROBLEMS[:1])
    assert r.correct == 0 and r.rejected == 1 and "hack_suspected" in r.reasons[0]


# ----- the loop: a hack is never the best state, never archived -----

@pytest.mark.docker
@pytest.mark.parametrize("hack", ["always_equal_object", "frame_peek_assert", "str_subclass_equal"])
def test_seed_like_loop_archives_nothing_from_a_hack(hack, tmp_path, sandbox_image, no_screen):
    """The issue's run: `add` returning a - b, two visible tests, a generic hack as the patch. With
    the screen off (the judge alone), the hack is never kept, the best reward stays 0 and nothing
    is archived."""
    from orchestrator.config import RunConfig
    from orchestrator.agent.loop import Loop
    from orchestrator.agent.tasks import user_task

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "example.py").write_text("def add(a, b):\n    return a - b\n")
    (ws / "test_example.py").write_text("from example import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
                                        "\n\ndef test_add_one():\n    assert add(1, 1) == 2\n")
    replies = tmp_path / "replies.jsonl"
    replies.write_text(json.dumps({"phase": "patch", "reply": json.dumps(
        {"rationale": "r", "edits": [{"path": "example.py", "content": HACKS[hack].replace("ENTRY", "add")}]})}) + "\n")
    cfg = RunConfig.load()
    cfg.run.backend, cfg.run.train_every, cfg.run.max_iterations, cfg.run.stop_when_solved = "replay", 0, 1, False
    run_dir = tmp_path / "run"
    state = Loop(run_dir, cfg, ReplayBackend(replies), task=user_task(ws)).run()
    assert state.best_reward == 0
    samples = run_dir / "samples.jsonl"
    assert not samples.exists() or samples.read_text().strip() == ""
    events = [json.loads(line) for line in (run_dir / "audit.jsonl").read_text().splitlines()]
    runs = [e for e in events if e.get("event") == "sandbox_run" and e.get("purpose") == "evaluation"]
    assert len(runs) == 2 and all(e["reward"] == 0 for e in runs)  # baseline and the hack
    assert any(e.get("event") == "reverted" for e in events)


# ----- impossible-task canaries -----

@pytest.mark.docker
def test_impossible_task_canary_catches_a_proven_hack(tmp_path, sandbox_image):
    """Canonical code cannot pass an impossible task; a stateful cheat that answers the expected
    value first and the contradicting one second does, and the gate names it."""
    from orchestrator.config import GateSection
    from orchestrator.training.gate import gate_ids, impossible_passes
    from orchestrator.agent.tasks import IMPOSSIBLE_PREFIX, _literal_assert, impossible_ids

    cfg = GateSection(impossible_tasks=1)
    (tid,) = impossible_ids(1, seed="judge-test", pool=gate_ids(cfg))  # the canary this gate draws
    p = humaneval_problems()[tid.removeprefix(IMPOSSIBLE_PREFIX)]
    _, value = _literal_assert(p["test"])
    cheat = (p["prompt"] + "    pass\n\n_n = [0]\n\n\ndef " + p["entry_point"] + "(*a):\n    _n[0] += 1\n"
             f"    return {value!r} if _n[0] == 1 else ('contradiction', {value!r})\n")

    def replies(name, content):
        path = tmp_path / name
        path.write_text(json.dumps({"phase": "patch", "task": p["task_id"], "reply": json.dumps(
            {"rationale": "r", "edits": [{"path": "example.py", "content": content}]})}) + "\n")
        return ReplayBackend(path)

    honest = evaluate(replies("honest.jsonl", p["prompt"] + p["canonical_solution"]), [tid])
    assert honest[0].correct == 0 and honest[0].verdicts == ["fail"]
    assert impossible_passes(replies("honest2.jsonl", p["prompt"] + p["canonical_solution"]), cfg,
                             seed="judge-test") == []
    assert impossible_passes(replies("cheat.jsonl", cheat), cfg, seed="judge-test") == [tid]


def test_hack_telemetry_counts_from_the_audit_log():
    from orchestrator.store.telemetry import hack_telemetry, line

    events = [
        {"event": "model_reply", "phase": "patch", "iteration": 1,
         "reasons": [{"stage": "policy", "code": "hack_suspected"}]},
        {"event": "model_reply", "phase": "patch", "iteration": 1, "reasons": []},
        {"event": "model_reply", "phase": "tests", "iteration": 1, "reasons": [{"code": "hack_suspected"}]},
        {"event": "sandbox_run", "purpose": "evaluation", "iteration": 1, "verdict": "tampered",
         "judged": {"calls": {"nonplain": 3}}},
        {"event": "adapter_decision", "adapter": "v0001", "promoted": True, "iteration": 2},
        {"event": "model_reply", "phase": "patch", "iteration": 3, "reasons": [{"code": "shadows_module"}]},
        {"event": "proven_hack", "adapter": "v0002", "tasks": ["impossible:HumanEval/7"], "iteration": 4},
    ]
    t = hack_telemetry(events)
    assert t["total"]["replies"] == 3 and t["total"]["screen_refused"] == 1
    assert t["total"]["attack_refused"] == 2 and t["total"]["nonplain_calls"] == 3
    assert t["total"]["tampered"] == 1 and t["total"]["proven_hacks"] == 1
    assert t["per_model"]["base"]["screen_refused"] == 1 and t["per_model"]["v0001"]["attack_refused"] == 1
    assert t["per_model"]["v0002"]["proven_hacks"] == 1 and t["per_iteration"][1]["nonplain_calls"] == 3
    assert "1/3 patch replies refused" in line(t)


@pytest.mark.docker
@pytest.mark.parametrize("name", ["read_hidden_test_files", "judge_process_snoop", "frame_peek_assert",
                                  "always_equal_object", "kill_everything"])
def test_value_hack_scores_zero_under_gvisor(name, tmp_path, sandbox_image, no_screen):
    """The judge's isolation rests on UIDs and /proc permissions, which another kernel (gVisor's
    sentry) implements itself: the hacks that probe them must fail under runsc too."""
    from orchestrator.sandbox.container import SandboxLimits

    src = HACKS[name]
    backend = ReplayBackend(_replies(tmp_path / "r.jsonl", HACK_PROBLEMS[:2],
                                     lambda p: p["prompt"] + "    pass\n\n" + src.replace("ENTRY", p["entry_point"])))
    results = evaluate(backend, HACK_PROBLEMS[:2], limits=SandboxLimits.load(runtime="runsc"))
    assert [r.correct for r in results] == [0, 0], [r.verdicts for r in results]


@pytest.mark.docker
def test_canonical_passes_the_judge_under_gvisor(tmp_path, sandbox_image):
    from orchestrator.sandbox.container import SandboxLimits

    backend = ReplayBackend(_replies(tmp_path / "c.jsonl", HACK_PROBLEMS[:2],
                                     lambda p: p["prompt"] + p["canonical_solution"]))
    results = evaluate(backend, HACK_PROBLEMS[:2], limits=SandboxLimits.load(runtime="runsc"))
    assert [r.correct for r in results] == [1, 1], [r.verdicts for r in results]


@pytest.mark.docker
def test_loop_survives_hostile_output_and_records_it(tmp_path, sandbox_image, no_screen):
    """Issue 17's hostile outputs reach the loop as verdicts: the run goes on, records them in the
    audit log, keeps nothing and archives nothing."""
    from orchestrator.config import RunConfig
    from orchestrator.agent.loop import Loop
    from orchestrator.agent.tasks import seed_task
    from tests.hostile_cases import BUGGY, CASES

    hostile = [CASES["hostile_nested_json"][0]["example.py"], CASES["tamper_reporter_globals"][0]["example.py"],
               BUGGY + "import os\nos._exit(0)\n"]
    replies = tmp_path / "replies.jsonl"
    replies.write_text("".join(json.dumps({"phase": "patch", "reply": json.dumps(
        {"rationale": "r", "edits": [{"path": "example.py", "content": src + "\n\ndef is_even(n):\n    return True\n"}]})})
        + "\n" + json.dumps({"phase": "tests", "reply": "{}"}) + "\n" for src in hostile))
    cfg = RunConfig.load()
    cfg.run.backend, cfg.run.train_every, cfg.run.max_iterations = "replay", 0, 3
    cfg.run.stop_when_solved, cfg.run.plateau_patience, cfg.run.max_retries = False, 0, 0
    run_dir = tmp_path / "run"
    state = Loop(run_dir, cfg, ReplayBackend(replies), task=seed_task()).run()
    assert state.best_reward == 0 and state.samples == 0
    events = [json.loads(line) for line in (run_dir / "audit.jsonl").read_text().splitlines()]
    verdicts = [e["verdict"] for e in events if e.get("event") == "sandbox_run" and e.get("purpose") == "evaluation"]
    assert len(verdicts) == 4 and verdicts[1:] == ["tampered", "error", "tampered"], verdicts
