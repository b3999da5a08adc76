"""bench/rounds_experiment.py's logic with fakes for the model, the sandbox and the burst (the real
parts are covered by tests/test_rounds.py): base and final on both held-out sets, paired differences,
per-round records, a resumed seed reuses its cached held-out results."""

import argparse
import sys
from pathlib import Path

import pytest

from orchestrator.config import RunConfig
from orchestrator.agent.rounds import BurstOutcome, Rounds, Trainer
from orchestrator.evaluation.suites import SEED_FIXED, Suite, _bugfix_from_humaneval, _bugfix_from_seed, load_suite
from orchestrator.agent.tasks import humaneval_problems
from tests.test_rounds_unit import FakeBackend, use_fake_sandbox

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import rounds_experiment  # noqa: E402


@pytest.fixture
def small_suites(monkeypatch):
    heldout_bf = _bugfix_from_humaneval("HumanEval/5", humaneval_problems()["HumanEval/5"], 0)

    def fake_load(name, seed=0, cache=None):
        if name == "bugfix-heldout":
            return Suite(name=name, seed=seed, tasks=heldout_bf)
        if name == "humaneval-heldout":
            return load_suite(name, seed, cache)
        return Suite(name=name, seed=seed, tasks=_bugfix_from_seed(seed))

    monkeypatch.setattr(rounds_experiment, "load_suite", fake_load)
    return heldout_bf


def test_one_seed_base_rounds_final(tmp_path, monkeypatch, small_suites):
    fixes = {t.id: SEED_FIXED for t in _bugfix_from_seed(0)}
    use_fake_sandbox(monkeypatch, fixes)  # held-out replies are not fixes: they fail
    bursts = []

    def fake_train(self, rnd):
        bursts.append(rnd)
        self.backend.load_adapter(None, f"v{rnd:04d}")
        from orchestrator.training.adapters import Registry

        reg = Registry(self.run_dir)
        reg.root.mkdir(parents=True, exist_ok=True)
        reg._store({"current": f"v{rnd:04d}", "history": []})
        return BurstOutcome(adapter=f"v{rnd:04d}", promoted=True, improved=False, reason="promoted: tie")

    monkeypatch.setattr(Rounds, "step_train", fake_train)
    monkeypatch.setattr(RunConfig, "load", classmethod(lambda cls, path=None, **kw: RunConfig()))
    args = argparse.Namespace(out=tmp_path / "exp", config=None, rounds=3, tasks_per_round=2, k=2, train_steps=1,
                              max_wall=None, suite="bugfix-seed", gate_tasks="HumanEval/0,HumanEval/5",
                              heldout_bugfix=2)
    backend = FakeBackend(fixes)
    backend.load_adapter = lambda path, adapter_id: setattr(backend, "adapter_id", adapter_id)
    res = rounds_experiment.one_seed(0, args, backend, Trainer(model_dir=tmp_path), print)
    assert bursts == [1, 2, 3] and len(res["rounds"]) == 3 and res["stop_reason"] == "maximum of 3 rounds reached"
    assert res["rounds"][0]["samples_added"] > 0 and res["samples"] > 0
    he, bf = res["humaneval_heldout"], res["bugfix_heldout"]
    assert he["problems"] == 2 and bf["problems"] == 1  # the first bug of each held-out problem
    assert he["base"]["pass@1"] == he["final"]["pass@1"] == 0.0 and he["difference"] == 0.0
    assert not he["excludes_zero"] and "ci95" in bf
    assert res["final_model"] == "v0003"
    out = tmp_path / "exp" / "seed0"
    assert (out / "heldout_bugfix" / "base.jsonl").exists() and (out / "heldout_humaneval" / "v0003.jsonl").exists()
