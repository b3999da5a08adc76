"""Saved sandbox evidence (orchestrator/sandbox/evidence.py) and `rsi sandbox regrade`: every run re-grades
to the same verdicts offline; an edited file, a rewritten verdict and a grader that changed are
each reported."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.sandbox import evidence
from orchestrator.sandbox.container import run_tests
from tests.conftest import write_tree
from tests.hostile_cases import CASES

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.docker


def regrade_cli(path: Path):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "sandbox", "regrade", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, sandbox_image):
    """Evidence of a pass, a fail, a hostile run and a judged run."""
    root = tmp_path_factory.mktemp("evidence")
    evidence.record_to(root / "evidence")
    try:
        results = {name: run_tests(write_tree(root / name, CASES[name][0]))
                   for name in ("control_pass", "control_fail", "hack_os_exit_at_import")}
        hidden = {"hidden/test_h.py": "from example import add\n\ndef test_h():\n    assert add(1, 2) == 3\n"}
        results["judged"] = run_tests(write_tree(root / "judged", CASES["control_pass"][0]), judge=hidden)
    finally:
        evidence.record_to(None)
    return root, results


def test_every_run_is_saved_under_its_digest_and_regrades_the_same(recorded):
    root, results = recorded
    files = sorted((root / "evidence").glob("*.json.gz"))
    assert sorted(f"{r.evidence_id}.json.gz" for r in results.values()) == [f.name for f in files]
    assert [r.verdict for r in results.values()] == ["pass", "fail", "tampered", "pass"]
    out = evidence.regrade(root / "evidence")
    assert out == {"runs": 4, "agree": 4, "differ": []}
    cli = regrade_cli(root)
    assert cli.returncode == 0 and "4 sandbox runs re-graded: 4 reproduced, 0 differ" in cli.stdout


def test_nothing_is_saved_when_recording_is_off(tmp_path, sandbox_image):
    result = run_tests(write_tree(tmp_path / "ws", CASES["control_pass"][0]))
    assert result.evidence_id is None and not (tmp_path / "evidence").exists()


def _rewrite(path: Path, change, rename: bool) -> Path:
    record = json.loads(gzip.decompress(path.read_bytes()))
    change(record)
    data = json.dumps(record, sort_keys=True).encode()
    target = path.with_name(f"{hashlib.sha256(data).hexdigest()}.json.gz") if rename else path
    path.unlink()
    target.write_bytes(gzip.compress(data))
    return target


def test_an_edited_file_and_a_rewritten_verdict_are_caught(recorded, tmp_path):
    root, results = recorded
    copy = tmp_path / "evidence"
    copy.mkdir()
    for f in (root / "evidence").glob("*.json.gz"):
        (copy / f.name).write_bytes(f.read_bytes())
    hostile = copy / f"{results['hack_os_exit_at_import'].evidence_id}.json.gz"
    failing = copy / f"{results['control_fail'].evidence_id}.json.gz"

    def claim_pass(record):
        record["graded"]["visible"]["verdict"] = "pass"

    _rewrite(hostile, claim_pass, rename=False)           # edited in place: the name no longer matches
    _rewrite(failing, claim_pass, rename=True)            # renamed to match: the grader disagrees
    out = evidence.regrade(copy)
    problems = sorted(row["problem"] for row in out["differ"])
    assert out["agree"] == 2 and problems == ["content does not match its name (edited)", "grades differently now"]
    cli = regrade_cli(copy)
    assert cli.returncode == 1 and "2 differ" in cli.stdout


def test_a_grader_change_shows_up(recorded, monkeypatch):
    """What regrade is for: the grader changes, and past verdicts that would change are listed."""
    from orchestrator.sandbox.runner import grader

    root, results = recorded
    real = grader.grade
    monkeypatch.setattr(grader, "grade", lambda ev: {**real(ev), "verdict": "fail"})
    out = evidence.regrade(root / "evidence")
    assert out["agree"] == 1 and len(out["differ"]) == 3  # every run but the failing one grades differently now


def test_regrade_without_evidence_is_one_line(tmp_path):
    cli = regrade_cli(tmp_path)
    assert cli.returncode == 2 and cli.stderr.strip().startswith("rsi: no evidence under")
    (tmp_path / "junk.json.gz").write_bytes(b"not gzip")
    cli = regrade_cli(tmp_path)
    assert cli.returncode == 1 and "unreadable" in cli.stdout
