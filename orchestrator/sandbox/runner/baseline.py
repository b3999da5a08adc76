"""Skips judged against a baseline, and the standalone skip rule. Pure, stdlib only.

The grader's rule is strict: a skipped, xfailed or xpassed test is never a pass, so any of
them makes a run ``fail``. That is right for the reward (nothing is earned by skipping) but
wrong for a test the project itself skips on this platform before any model touched the code.
This module runs in two places, like the grader: on the host (``rebase``: a run judged against
the baseline's report) and inside the image standalone (``apply_skip_mode``: ``RSI_SKIPS``).

``rebase(report, baseline)``: a skipped/xfailed/xpassed test of ``report`` is *excused* only
when the baseline has the same node id with the same outcome and the same message (pytest's
skip reason, with its file and line), and the test lives in a file the model cannot write.
Every other skip still fails the run, and so does any test of the baseline that is missing
from the run (a parametrization that vanished, a test that was not collected). Only a run
whose sole fault is excused skips is turned into ``pass``; counts are never changed, so a
reward computed from ``passed`` still counts only tests that ran and passed.
"""

from __future__ import annotations

import fnmatch
import re

SKIP_MODES = ("strict", "pytest")
DEFAULT_SKIP_MODE = "pytest"  # standalone only; the host always grades strictly (+ baseline)
SKIPPED_OUTCOMES = ("skipped", "xfailed", "xpassed")
# The grader's reason for skips (grader.grade): the only fault these functions may excuse.
SKIP_REASON = re.compile(r"^\d+ tests skipped or xfailed \(they never count as passes\)$")
# What the patch phase may never write (policies/default.toml [patch]); generated tests
# (test_gen_*.py) are written by the model in the tests phase, so they are never protected.
PROTECTED_GLOBS = ("test_*.py", "*_test.py", "conftest.py")
PROTECTED_DIRS = ("tests", "test")
GENERATED_GLOB = "test_gen_*.py"


def default_protected(path: str) -> bool:
    """True when the model cannot write ``path`` (a workspace-relative file path)."""
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    if not parts or fnmatch.fnmatchcase(parts[-1], GENERATED_GLOB):
        return False
    if any(fnmatch.fnmatchcase(parts[-1], g) for g in PROTECTED_GLOBS):
        return True
    return any(p in PROTECTED_DIRS for p in parts[:-1])


_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
# The judge runs its tests from a fresh private directory per run (judge.py: mkdtemp "rsi-judge-"),
# and pytest's skip message names the file by its absolute path: compare it without that prefix.
_JUDGE_DIR = re.compile(r"(?:/tmp|/rsi-judge)/rsi-judge-[A-Za-z0-9_]+/")
_RAISED_AT = re.compile(r"^\S+\.py:\d+: [A-Za-z_][\w.]*$")  # pytest's last traceback line: file:line: Type


def reason(test: dict) -> str:
    """What "the same reason" compares. A skip's message is pytest's ``(file, line, reason)``;
    an xfail's is its whole traceback: what counts is where it raised and what (pytest's last line,
    ``file:line: ExceptionType``), else its exception lines (``E ...``), whose values may change
    from run to run (a random number in an assertion). Object addresses (``0x7f...``) and the
    judge's per-run directory are blanked."""
    message = _JUDGE_DIR.sub("<judged>/", str(test.get("message") or ""))
    if test.get("outcome") == "xfailed":
        stripped = message.strip().splitlines()
        if stripped and _RAISED_AT.match(stripped[-1].strip()):
            return stripped[-1].strip()
        lines = [line.strip() for line in message.splitlines() if line.startswith("E ")]
        message = "\n".join(lines) if lines else stripped[-1] if stripped else ""
    return _ADDRESS.sub("0x?", message)


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _skipped(tests: list) -> dict:
    return {t["nodeid"]: t for t in tests if isinstance(t, dict) and t.get("outcome") in SKIPPED_OUTCOMES}


def _only_skip_fault(report: dict) -> bool:
    """``fail`` for skips alone: no failed/errored test and no reason other than the skip one."""
    if report.get("verdict") != "fail" or report.get("failed") or report.get("errors"):
        return False
    reasons = report.get("reasons") or []
    return bool(reasons) and all(SKIP_REASON.match(r) for r in reasons)


def _upgrade(report: dict, excused: list[str], note: str) -> dict:
    out = dict(report)
    out["excused"] = excused
    if (_only_skip_fault(report) and report.get("passed", 0) > 0 and report.get("exit_code") == 0
            and not report.get("timed_out") and not report.get("oom_killed")):
        out["verdict"] = "pass"
        out["reasons"] = [note]
    return out


def rebase(report: dict, baseline: dict, protected=default_protected) -> dict:
    """``report`` judged against ``baseline`` (both as ``grader.grade`` returns them).

    Returns a new dict: ``report`` plus ``excused`` (node ids of the skips the baseline
    explains) and ``unexcused`` (skips it does not), with ``verdict`` ``pass`` when the run
    failed only because of excused skips. ``protected(path) -> bool``: files the model cannot
    write (default: tests, ``tests/`` and ``conftest.py``; never ``test_gen_*.py``)."""
    base_tests = baseline.get("tests") or []
    base_skips = _skipped(base_tests)
    run_tests = report.get("tests") or []
    run_ids = {t.get("nodeid") for t in run_tests if isinstance(t, dict)}
    excused, unexcused = [], []
    for nodeid, t in _skipped(run_tests).items():
        b = base_skips.get(nodeid)
        if (b is not None and b.get("outcome") == t.get("outcome") and reason(b) == reason(t)
                and protected(_file_of(nodeid))):
            excused.append(nodeid)
        else:
            unexcused.append(nodeid)
    # Any test of the baseline (passing, failing or skipped there) must still be collected; a
    # run listing cut at the grader's cap proves nothing missing (the grader's AST check remains).
    counted = sum(int(report.get(k) or 0) for k in ("passed", "failed", "errors", "skipped"))
    cut = counted > len(run_tests)
    missing = [] if cut else [t["nodeid"] for t in base_tests
                              if isinstance(t, dict) and t.get("nodeid") not in run_ids]
    # A listing cut at the grader's cap cannot excuse what it does not show: every skip counted
    # must be one of those excused, else the run keeps its verdict.
    all_seen = report.get("skipped", 0) == len(excused)
    out = _upgrade(report, excused, f"{len(excused)} tests skipped or xfailed in the baseline too "
                                    "(same reason, protected files); they are not counted as passes")
    out["unexcused"] = unexcused
    if missing or unexcused or not all_seen:
        out["verdict"] = report.get("verdict")
        out["reasons"] = list(report.get("reasons") or [])
        if missing:
            out["reasons"].append(f"{len(missing)} tests of the baseline are missing, e.g. {missing[0]}")
            if out["verdict"] == "pass":
                out["verdict"] = "fail"
        if unexcused:
            out["reasons"].append(f"{len(unexcused)} skips or xfails are not in the baseline "
                                  f"(or their reason or file changed), e.g. {unexcused[0]}")
    out["missing"] = missing
    return out


def apply_skip_mode(report: dict, mode: str) -> dict:
    """Standalone rule. ``strict``: the grader's verdict as is. ``pytest``: skips, xfails and
    xpasses are reported (counts, ``excused``) but do not fail the run, as in pytest's exit status."""
    if mode not in SKIP_MODES:
        raise ValueError(f"RSI_SKIPS={mode!r}: expected one of {', '.join(SKIP_MODES)}")
    if mode == "strict":
        return dict(report)
    skipped = list(_skipped(report.get("tests") or []))
    return _upgrade(report, skipped, f"{report.get('skipped', 0)} tests skipped or xfailed "
                                     "(RSI_SKIPS=pytest: reported, not a failure; never counted as passes)")


def skip_mode_from_env(environ) -> str:
    """``RSI_SKIPS`` from an environment mapping; the default when unset or empty."""
    mode = (environ.get("RSI_SKIPS") or DEFAULT_SKIP_MODE).strip().lower()
    if mode not in SKIP_MODES:
        raise ValueError(f"RSI_SKIPS={mode!r}: expected one of {', '.join(SKIP_MODES)}")
    return mode
