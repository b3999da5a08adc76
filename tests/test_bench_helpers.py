"""The bench helpers that turn runs into stored figures (no Docker, no model)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import results_io  # noqa: E402
from bench.embedded_experiment import heldout_outcomes, refusal_counts  # noqa: E402
from orchestrator.evaluation.humaneval import ProblemResult  # noqa: E402


def audit(path: Path, events: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


def reply(phase, accepted, code=None, stage="policy"):
    return {"event": "model_reply", "phase": phase, "policy": "accepted" if accepted else "rejected",
            "reasons": [] if accepted else [{"stage": stage, "code": code, "detail": "x"}]}


def test_refusals_are_counted_per_phase_and_first_reason(tmp_path):
    audit(tmp_path / "round0" / "HumanEval-1" / "audit.jsonl", [
        reply("patch", False, "syntax_error"), reply("patch", False, "syntax_error"),
        reply("patch", True), {"event": "sandbox_run", "purpose": "evaluation"},
        reply("tests", False, "bad_json", stage="schema")])
    audit(tmp_path / "round0" / "HumanEval-2" / "audit.jsonl", [reply("patch", False, "protected_file")])
    audit(tmp_path / "audit.jsonl", [reply("patch", False, "not_a_loop_run")])  # the experiment's own log
    got = refusal_counts(tmp_path)
    assert (got["replies"], got["accepted"], got["refused"]) == (5, 1, 4)
    assert got["by_phase"]["patch"]["refused_by_first_reason"] == {"policy/syntax_error": 2, "policy/protected_file": 1}
    assert got["by_phase"]["tests"]["refused_by_first_reason"] == {"schema/bad_json": 1}
    assert got["audit_events"]["sandbox_run:evaluation"] == 1


def test_heldout_outcomes_count_verdicts_and_reasons():
    results = [ProblemResult(task_id="HumanEval/0", n=1, correct=0, verdicts=["rejected"], rejected=1,
                             reasons=["policy/syntax_error [example.py]: line 1: expected an indented block"]),
               ProblemResult(task_id="HumanEval/5", n=1, correct=1, verdicts=["pass"], rejected=0, reasons=[])]
    assert heldout_outcomes(results) == {"verdicts": {"rejected": 1, "pass": 1},
                                         "refused_by_first_reason": {"policy/syntax_error": 1}}


def test_recorder_stores_machine_date_and_command(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(ROOT / "bench" / "x.py"), "--n", "3"])
    rec = results_io.Recorder("x")
    path = rec.write({"value": 1.5}, tmp_path / "x.json")
    data = json.loads(path.read_text())
    assert data["value"] == 1.5 and data["command"].endswith("bench/x.py --n 3") and data["date_utc"]
    assert {"cpu_model", "cores", "memory_gib"} <= set(data["machine"])
    with pytest.raises(ValueError, match="may not override"):
        rec.write({"date_utc": "yesterday"}, tmp_path / "y.json")
