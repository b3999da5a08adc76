"""The promotion gate: paired held-out comparison, its decision rules, its cache, the noise-aware plateau."""

import json

import pytest

from orchestrator.training import gate
from orchestrator.training.adapters import Registry
from orchestrator.models.backends import ReplayBackend
from orchestrator.config import GateSection, RunConfig
from orchestrator.evaluation.humaneval import ProblemResult
from orchestrator.agent.plateau import beyond_noise, stop_reason
from orchestrator.agent.tasks import humaneval_problems

IDS = [f"HumanEval/{i}" for i in range(0, 165, 5)]  # the 33 held-out problems


def results(correct: list[int]) -> list[ProblemResult]:
    return [ProblemResult(task_id=t, n=1, correct=c, verdicts=["pass" if c else "fail"]) for t, c in zip(IDS, correct)]


def test_gate_selects_the_heldout_split_by_default():
    assert gate.gate_ids(GateSection()) == IDS
    assert gate.gate_ids(GateSection(tasks=["5", "HumanEval/10"])) == ["HumanEval/5", "HumanEval/10"]
    assert RunConfig.load().gate == GateSection()  # policies/run.toml holds the defaults
    with pytest.raises(ValueError):
        gate.gate_ids(GateSection(tasks=["HumanEval/1"]))  # a train problem is not in the held-out split


def test_equal_models_promoted_but_not_an_improvement():
    c = gate.compare(results([0] * 33), results([0] * 33))
    assert c["difference"] == 0 and c["ci95"] == [0, 0] and not c["excludes_zero"]
    promote, improved, why = gate.decide(c, GateSection())
    assert promote and not improved and why.startswith("promoted")


def test_one_more_problem_is_inside_the_noise():
    """+1 of 33 is promoted (not worse) but is no improvement: the interval's half-width exceeds it."""
    c = gate.compare(results([0] * 33), results([1] + [0] * 32))
    assert c["difference"] == pytest.approx(1 / 33) and c["half_width"] > 1 / 33
    promote, improved, _ = gate.decide(c, GateSection())
    assert promote and not improved


def test_a_clear_gain_is_an_improvement_and_a_margin_can_veto_it():
    c = gate.compare(results([0] * 33), results([1] * 20 + [0] * 13))
    assert c["excludes_zero"] and c["ci95"][0] > 0.4
    assert gate.decide(c, GateSection())[:2] == (True, True)
    assert gate.decide(c, GateSection(improvement_margin=0.9))[:2] == (True, False)
    assert gate.decide(c, GateSection(require_significant=True))[:2] == (True, True)


def test_worse_is_kept_unless_within_the_tolerated_noise():
    c = gate.compare(results([1] * 10 + [0] * 23), results([0] * 33))
    promote, improved, why = gate.decide(c, GateSection())
    assert not promote and not improved and why.startswith("kept, not promoted")
    assert gate.decide(c, GateSection(noise=0.5))[0]
    # a tie never passes a gate that demands significance
    tie = gate.compare(results([1] * 10 + [0] * 23), results([1] * 10 + [0] * 23))
    assert not gate.decide(tie, GateSection(require_significant=True))[0]


def test_pairing_needs_the_same_problems():
    with pytest.raises(ValueError):
        gate.compare(results([0] * 33), results([0] * 32))


def test_beyond_noise_and_training_plateau():
    assert beyond_noise(0.2, 0.1) and not beyond_noise(0.1, 0.2) and not beyond_noise(0.2, 0.1, margin=0.3)
    assert not beyond_noise(0.0, 0.0)
    assert stop_reason(2, 10, 0, 3, 0, 5, True, train_plateau=2, train_patience=2).startswith("plateau: 2 training")
    assert stop_reason(2, 10, 0, 3, 0, 5, True, train_plateau=1, train_patience=2) is None
    assert stop_reason(2, 10, 0, 3, 0, 5, True, train_plateau=9, train_patience=0) is None  # 0 = never


def test_results_are_cached_per_model_and_resume_after_a_crash(tmp_path, monkeypatch):
    asked = []

    def fake_evaluate(backend, ids, n=1, limits=None, on_problem=None, **kw):
        out = []
        for tid in ids:
            asked.append(tid)
            r = ProblemResult(task_id=tid, n=1, correct=0, verdicts=["fail"])
            out.append(r)
            on_problem(r)
        return out

    monkeypatch.setattr(gate, "evaluate", fake_evaluate)

    class Fake:
        model_id, adapter_id = "m", None

    reg, ids = Registry(tmp_path), IDS[:3]
    assert [r.task_id for r in gate.model_results(Fake, reg, ids)] == ids and asked == ids
    gate.model_results(Fake, reg, ids)
    assert asked == ids  # cached
    path = gate.results_file(reg, None)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # a crash: one done, one torn
    assert [r.task_id for r in gate.model_results(Fake, reg, ids)] == ids
    assert asked == ids + ids[1:]  # only the unfinished problems again
    Fake.model_id = "other"  # another model (or other problems) never reuses the cache
    gate.model_results(Fake, reg, ids)
    assert asked == ids + ids[1:] + ids
    assert json.loads(path.read_text().splitlines()[0]) == {"model": "other", "adapter": "base", "tasks": ids}


def _replies(path, ids, body):
    lines = [{"phase": "patch", "task": t, "reply": json.dumps(
        {"rationale": "r", "edits": [{"path": "example.py", "content": body(humaneval_problems()[t])}]})} for t in ids]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.mark.docker
def test_gate_on_real_sandbox_promotes_a_better_model(tmp_path, sandbox_image):
    """Paired, graded by hidden tests in the sandbox: a model that solves 4 of 5 beats one that solves none,
    and one that games the grader (os._exit(0)) is kept out."""
    ids = IDS[:5]
    reg = Registry(tmp_path)
    current = ReplayBackend(_replies(tmp_path / "a.jsonl", ids, lambda p: p["prompt"] + "    return None\n"))
    better = ReplayBackend(_replies(tmp_path / "b.jsonl", ids, lambda p: p["prompt"] + (
        p["canonical_solution"] if p["task_id"] != ids[0] else "    return None\n")))
    better.adapter_id = "v0001"
    hacker = ReplayBackend(_replies(tmp_path / "c.jsonl", ids, lambda p: p["prompt"] + "    pass\nimport os\nos._exit(0)\n"))
    hacker.adapter_id = "v0002"
    base = gate.model_results(current, reg, ids)
    c = gate.compare(base, gate.model_results(better, reg, ids))
    assert c["current"]["pass@1"] == 0 and c["new"]["pass@1"] == pytest.approx(0.8)
    assert gate.decide(c, GateSection(require_significant=True))[:2] == (True, True)
    c = gate.compare(gate.model_results(better, reg, ids), gate.model_results(hacker, reg, ids))
    assert c["new"]["pass@1"] == 0 and not gate.decide(c, GateSection())[0]
    assert sorted(p.name for p in (reg.root / "heldout").iterdir()) == ["base.jsonl", "v0001.jsonl", "v0002.jsonl"]
