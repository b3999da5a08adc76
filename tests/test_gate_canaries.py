"""Issue 23 item 6b: the gate's impossible-task canaries come from the problems the gate scores, vary from
gate to gate, and nothing in the prompt the model sees tells them from the scored problems (no Docker:
the gate's evaluation is recorded, the prompts are built as attempt_task builds them)."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict

from orchestrator.agent.tasks import (IMPOSSIBLE_PREFIX, humaneval_problems, humaneval_split, humaneval_task,
                                      impossible_task)
from orchestrator.config import GateSection
from orchestrator.evaluation.grading import attempt_task
from orchestrator.evaluation.humaneval import ProblemResult
from orchestrator.protocol import prompts
from orchestrator.protocol.reply_format import JSON
from orchestrator.sandbox.container import SandboxLimits
from orchestrator.sandbox.fake import FakeSandbox
from orchestrator.sandbox.interface import use
from orchestrator.training import gate

GATES = 40


class Model:
    model_id = "m"

    def __init__(self, adapter_id):
        self.adapter_id = adapter_id


def gate_canaries(monkeypatch, n: int = GATES) -> list[list[str]]:
    """The canaries ``impossible_passes`` asks, for ``n`` gates (adapters v0001...)."""
    asked: list[list[str]] = []

    def record(backend, ids, n=1, limits=None, **kw):
        asked.append(list(ids))
        return [ProblemResult(task_id=t, n=1, correct=0, verdicts=["fail"]) for t in ids]

    monkeypatch.setattr(gate, "evaluate", record)
    for i in range(1, n + 1):
        gate.impossible_passes(Model(f"v{i:04d}"), GateSection())
    return asked


def prompt_text(task, tmp) -> str:
    """What the model reads for a task: the patch messages attempt_task builds (its workspace's files)."""
    ws = task.source_dir
    sources = ["example.py"]
    return "\n".join(m["content"] for m in prompts.patch_messages(ws, sources, ["test_example.py"], None, JSON))


def test_canaries_are_scored_problems_and_vary_per_gate(monkeypatch):
    asked = gate_canaries(monkeypatch)
    scored = set(gate.gate_ids(GateSection()))
    assert all(len(c) == GateSection().impossible_tasks == 2 for c in asked)
    bases = [[c.removeprefix(IMPOSSIBLE_PREFIX) for c in cs] for cs in asked]
    assert all(set(b) <= scored for b in bases)  # drawn from what the gate scores
    assert not any(humaneval_split(b) == "train" for bs in bases for b in bs)
    assert len({tuple(sorted(b)) for b in bases}) >= GATES // 2  # not one fixed pair
    assert len({b for bs in bases for b in bs}) >= 20  # spread over the held-out problems
    assert gate_canaries(monkeypatch, 3) == asked[:3]  # seeded: the same adapter, the same canaries


def test_a_classifier_on_the_prompt_cannot_tell_canaries_from_scored_problems(monkeypatch, tmp_path):
    """Every gate: its scored prompts (label 0) and its canaries' prompts (label 1). Two classifiers on the
    text: exact membership in the train split's prompts (the old canaries were train problems), and the
    strongest one a prompt allows, the majority label of each exact text learned on half of the gates and
    scored on the other half (balanced accuracy, so always saying 'scored' is 0.5). Neither beats chance:
    each canary's prompt is, byte for byte, a prompt the gate scores."""
    asked = gate_canaries(monkeypatch)
    problems = humaneval_problems()
    text = {}

    def of(tid: str) -> str:
        if tid not in text:
            task = impossible_task(tid, tmp_path) if tid.startswith(IMPOSSIBLE_PREFIX) else humaneval_task(tid, tmp_path)
            text[tid] = prompt_text(task, tmp_path)
        return text[tid]

    scored_ids = gate.gate_ids(GateSection())
    data = [(g, of(t), 0) for g in range(GATES) for t in scored_ids] + \
           [(g, of(c), 1) for g, cs in enumerate(asked) for c in cs]

    def balanced(pred) -> float:
        by = defaultdict(list)
        for g, t, y in data:
            by[y].append(pred(g, t) == y)
        return (sum(by[0]) / len(by[0]) + sum(by[1]) / len(by[1])) / 2

    train_prompts = {of(t) for t in problems if humaneval_split(t) == "train"}
    assert balanced(lambda g, t: int(t in train_prompts)) == 0.5

    fit = [(t, y) for g, t, y in data if g % 2 == 0]
    n0, n1 = sum(1 - y for _, y in fit), sum(y for _, y in fit)
    votes = defaultdict(Counter)
    for t, y in fit:
        votes[t][y] += 1
    majority = {t: int(c[1] * n0 / n1 > c[0]) for t, c in votes.items()}  # class-balanced majority per text
    held = [(g, t, y) for g, t, y in data if g % 2 == 1]
    by = defaultdict(list)
    for g, t, y in held:
        by[y].append(majority.get(t, 0) == y)
    accuracy = (sum(by[0]) / len(by[0]) + sum(by[1]) / len(by[1])) / 2
    assert accuracy < 0.62, accuracy
    # length and format statistics: the canaries' prompts have the scored ones' distribution
    assert {t for _, t, y in data if y == 1} <= {t for _, t, y in data if y == 0}  # identical texts
    canary = [len(t) for _, t, y in data if y == 1]
    scored = [len(t) for _, t, y in data if y == 0]
    mean_s = sum(scored) / len(scored)
    sd = (sum((x - mean_s) ** 2 for x in scored) / len(scored)) ** 0.5
    assert abs(sum(canary) / len(canary) - mean_s) < 3 * sd / len(canary) ** 0.5


def test_the_model_is_asked_a_canary_as_the_problem_it_is_built_on(tmp_path):
    """Same messages and the same task id as the scored problem (a backend that saw the id would see no
    difference either)."""
    seen = []

    class Recorder:
        reply_format = "json"

        def generate(self, messages, phase, task=None, **kw):
            seen.append((task, hashlib.sha256(repr(messages).encode()).hexdigest()))
            return "not json"

    (cid,) = [c for c in gate.canary_ids(Model("v0001"), GateSection())[:1]]
    base = cid.removeprefix(IMPOSSIBLE_PREFIX)
    with use(FakeSandbox(fn=lambda stage, judge: "fail")):
        attempt_task(Recorder(), humaneval_task(base, tmp_path / "a"), tmp_path / "w1", SandboxLimits.load())
        attempt_task(Recorder(), impossible_task(cid, tmp_path / "b"), tmp_path / "w2", SandboxLimits.load())
    assert seen[0] == seen[1] and seen[0][0] == base
