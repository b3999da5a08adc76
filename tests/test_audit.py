"""The audit chain catches every edit, deletion, insertion and reordering, and names the line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.store.audit import AuditLog, canonical, verify

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def log_path(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for i in range(6):
        log.append("sandbox_run", iteration=i, verdict="fail", passed=i, diff="-a\n+b\n")
    log.close()
    return path


def lines(path):
    return path.read_text().splitlines(keepends=True)


def test_intact(log_path):
    r = verify(log_path)
    assert r.ok and r.lines == 6


def test_resume_appends_to_the_chain(log_path):
    log = AuditLog(log_path)
    log.append("model_reply", iteration=6)
    log.close()
    assert verify(log_path).ok and verify(log_path).lines == 7


@pytest.mark.parametrize("kind,bad", [("edit", 3), ("edit_last", 6), ("delete", 3), ("delete_last", 6),
                                      ("insert", 3), ("reorder", 3), ("reformat", 2), ("truncate", 6)])
def test_tampering_is_caught_and_located(log_path, kind, bad):
    ls = lines(log_path)
    if kind == "edit":
        ls[2] = ls[2].replace('"passed":2', '"passed":99')
    elif kind == "edit_last":
        ls[5] = ls[5].replace('"verdict":"fail"', '"verdict":"pass"')
    elif kind == "delete":
        del ls[2]
    elif kind == "delete_last":
        del ls[5]
    elif kind == "insert":
        forged = json.loads(ls[2])
        forged["verdict"] = "pass"
        ls.insert(2, canonical(forged) + "\n")
    elif kind == "reorder":
        ls[2], ls[3] = ls[3], ls[2]
    elif kind == "reformat":
        ls[1] = json.dumps(json.loads(ls[1]), indent=None) + "\n"
    elif kind == "truncate":
        ls[5] = ls[5][:-10]
    log_path.write_text("".join(ls))
    r = verify(log_path)
    assert not r.ok and r.bad_line == bad, r.message


def test_refuses_to_append_to_a_tampered_log(log_path):
    ls = lines(log_path)
    del ls[1]
    log_path.write_text("".join(ls))
    with pytest.raises(RuntimeError, match="tampered"):
        AuditLog(log_path)


def test_cli_verify_exit_codes_and_show(log_path):
    run = [sys.executable, "-m", "orchestrator.cli", "audit"]
    ok = subprocess.run(run + ["verify", str(log_path.parent)], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and "intact" in ok.stdout
    shown = subprocess.run(run + ["show", str(log_path.parent), "--iteration", "2"], capture_output=True,
                           text=True, cwd=ROOT)
    assert shown.returncode == 0 and "#2" in shown.stdout and "#3" not in shown.stdout
    ls = lines(log_path)
    ls[3] = ls[3].replace('"passed":3', '"passed":4')
    log_path.write_text("".join(ls))
    bad = subprocess.run(run + ["verify", str(log_path.parent)], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "line 4" in bad.stdout


def test_crash_between_append_and_head_update_still_verifies(log_path):
    head = log_path.with_name("audit.jsonl.head")
    saved = head.read_text()
    log = AuditLog(log_path)
    log.append("model_reply", iteration=7)
    head.write_text(saved)  # the head update never happened
    assert verify(log_path).ok
    log2 = AuditLog(log_path)
    log2.append("model_reply", iteration=8)
    assert verify(log_path).ok and verify(log_path).lines == 8


def test_torn_last_line_is_cut_on_reopen(log_path):
    with open(log_path, "a") as fh:
        fh.write('{"event":"model_reply","seq":6')
    assert not verify(log_path).ok
    log = AuditLog(log_path)
    assert log.recovered and verify(log_path).ok and verify(log_path).lines == 6
