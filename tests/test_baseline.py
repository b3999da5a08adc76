"""Baseline-relative verdicts and the standalone skip switch (orchestrator/sandbox/runner/baseline.py).

Reports come from the real grader on synthetic evidence, so the reasons and counts are the ones
the grader writes."""

from __future__ import annotations

import pytest

from orchestrator.sandbox.runner.baseline import (
    DEFAULT_SKIP_MODE, apply_skip_mode, default_protected, rebase, skip_mode_from_env,
)
from orchestrator.sandbox.runner.grader import grade

SKIP_MSG = "('/workspace/tests/test_a.py', 7, 'Skipped: needs Python 3.14')"


def _report(tests: dict[str, tuple[str, str]]) -> dict:
    """tests: nodeid -> (outcome, message) with outcome passed|failed|skipped|xfailed|xpassed."""
    events = [{"e": "collected", "ids": list(tests)}]
    failed = False
    for nodeid, (outcome, msg) in tests.items():
        events.append({"e": "report", "id": nodeid, "when": "setup", "outcome": "passed", "xfail": False})
        if outcome == "skipped":
            events[-1] = {"e": "report", "id": nodeid, "when": "setup", "outcome": "skipped", "xfail": False,
                          "msg": msg}
        elif outcome == "xfailed":
            events.append({"e": "report", "id": nodeid, "when": "call", "outcome": "skipped", "xfail": True,
                           "msg": msg, "raised": "AssertionError"})
        elif outcome == "xpassed":
            events.append({"e": "report", "id": nodeid, "when": "call", "outcome": "passed", "xfail": True})
        else:
            events.append({"e": "report", "id": nodeid, "when": "call", "outcome": outcome, "xfail": False,
                           "msg": msg})
            failed |= outcome == "failed"
        events.append({"e": "report", "id": nodeid, "when": "teardown", "outcome": "passed", "xfail": False})
    status = 1 if failed else 0
    events.append({"e": "finish", "exitstatus": status})
    return grade({"events": events, "exit_code": status, "expected": [], "canaries": {"pass": [], "xfail": []}})


BASE = {
    "tests/test_a.py::test_ok": ("passed", ""),
    "tests/test_a.py::test_new_python": ("skipped", SKIP_MSG),
    "tests/test_a.py::test_known_bug": ("xfailed", "reason: upstream bug"),
}


def test_baseline_skip_in_protected_file_is_excused():
    base = _report(BASE)
    assert base["verdict"] == "fail"  # the strict rule, as the grader has it
    out = rebase(_report(BASE), base)
    assert out["verdict"] == "pass"
    assert sorted(out["excused"]) == ["tests/test_a.py::test_known_bug", "tests/test_a.py::test_new_python"]
    assert out["passed"] == 1 and out["skipped"] == 2  # the reward still counts only what ran and passed


def test_new_skip_still_fails():
    run = dict(BASE, **{"tests/test_a.py::test_ok": ("skipped", "('/workspace/tests/test_a.py', 3, 'Skipped: x')")},
               **{"tests/test_a.py::test_other": ("passed", "")})
    out = rebase(_report(run), _report(dict(BASE, **{"tests/test_a.py::test_other": ("passed", "")})))
    assert out["verdict"] == "fail"
    assert out["unexcused"] == ["tests/test_a.py::test_ok"]


def test_same_test_skipped_for_another_reason_fails():
    run = dict(BASE, **{"tests/test_a.py::test_new_python": ("skipped", "('/workspace/tests/test_a.py', 7, 'other')")})
    assert rebase(_report(run), _report(BASE))["verdict"] == "fail"


def test_xfail_turned_skip_fails():
    run = dict(BASE, **{"tests/test_a.py::test_known_bug": ("skipped", "reason: upstream bug")})
    assert rebase(_report(run), _report(BASE))["verdict"] == "fail"


def test_skip_in_a_writable_file_is_not_excused():
    tests = {"pkg/helpers_check.py::test_ok": ("passed", ""), "pkg/helpers_check.py::test_s": ("skipped", "m")}
    out = rebase(_report(tests), _report(tests))
    assert out["verdict"] == "fail" and out["unexcused"] == ["pkg/helpers_check.py::test_s"]


def test_generated_tests_are_never_protected():
    tests = {"tests/test_a.py::test_ok": ("passed", ""), "test_gen_x.py::test_s": ("skipped", "m")}
    assert rebase(_report(tests), _report(tests))["verdict"] == "fail"


def test_missing_baseline_test_fails_even_without_skips():
    base = _report({"tests/test_a.py::test_ok": ("passed", ""), "tests/test_a.py::test_p[1]": ("passed", "")})
    run = _report({"tests/test_a.py::test_ok": ("passed", "")})
    assert run["verdict"] == "pass"
    out = rebase(run, base)
    assert out["verdict"] == "fail" and out["missing"] == ["tests/test_a.py::test_p[1]"]


def test_real_failures_are_never_excused():
    run = dict(BASE, **{"tests/test_a.py::test_ok": ("failed", "assert 1 == 2")})
    out = rebase(_report(run), _report(BASE))
    assert out["verdict"] == "fail" and out["failed"] == 1


def test_all_skipped_is_not_a_pass():
    tests = {"tests/test_a.py::test_s": ("skipped", SKIP_MSG)}
    assert rebase(_report(tests), _report(tests))["verdict"] == "fail"


def test_custom_protected_predicate():
    tests = {"tests/test_a.py::test_ok": ("passed", ""), "tests/test_a.py::test_s": ("skipped", SKIP_MSG)}
    assert rebase(_report(tests), _report(tests), protected=lambda path: False)["verdict"] == "fail"


def test_default_protected_matches_the_patch_policy():
    assert default_protected("tests/test_a.py") and default_protected("test_x.py") and default_protected("a_test.py")
    assert default_protected("conftest.py") and default_protected("pkg/tests/helpers.py")
    assert not default_protected("pkg/mod.py") and not default_protected("test_gen_1.py")
    assert not default_protected("tests/test_gen_1.py")


def test_skip_modes():
    report = _report(BASE)
    assert apply_skip_mode(report, "strict")["verdict"] == "fail"
    out = apply_skip_mode(report, "pytest")
    assert out["verdict"] == "pass" and out["skipped"] == 2 and len(out["excused"]) == 2
    failing = _report(dict(BASE, **{"tests/test_a.py::test_ok": ("failed", "x")}))
    assert apply_skip_mode(failing, "pytest")["verdict"] == "fail"
    with pytest.raises(ValueError, match="RSI_SKIPS"):
        apply_skip_mode(report, "lenient")


def test_skip_mode_from_env():
    assert skip_mode_from_env({}) == DEFAULT_SKIP_MODE == "pytest"
    assert skip_mode_from_env({"RSI_SKIPS": "Strict"}) == "strict"
    with pytest.raises(ValueError):
        skip_mode_from_env({"RSI_SKIPS": "yes"})


def test_xfail_reason_ignores_object_addresses_and_the_traceback_body():
    def xf(addr, body):
        return {"tests/test_a.py::test_ok": ("passed", ""),
                "tests/test_a.py::test_x": ("xfailed", f"self = <T object at {addr}>\n{body}\n>   C(1).x = 2\n"
                                                        f"E   attr.exceptions.FrozenAttributeError at {addr}")}
    base = _report(xf("0x7f89cea43b50", "line a"))
    assert rebase(_report(xf("0x7f00deadbeef", "line b")), base)["verdict"] == "pass"
    other = {"tests/test_a.py::test_ok": ("passed", ""),
             "tests/test_a.py::test_x": ("xfailed", "E   ValueError: something else")}
    assert rebase(_report(other), base)["verdict"] == "fail"


def test_xfail_reason_is_where_and_what_it_raised_not_the_values():
    """jaraco.functools: an xfail asserting on random.random(): the values differ each run, the
    place and the exception type do not."""
    def xf(value, where="test_a.py:150: AssertionError"):
        return {"tests/test_a.py::test_ok": ("passed", ""),
                "tests/test_a.py::test_x": ("xfailed", f">       assert ob.x == ob.x\nE       assert {value} == "
                                                        f"<f object at 0x7f39eb00fa00>\n\n{where}")}
    base = _report(xf(0.780805415394762))
    assert rebase(_report(xf(0.784379246692816)), base)["verdict"] == "pass"
    assert rebase(_report(xf(0.78, "test_a.py:151: AssertionError")), base)["verdict"] == "fail"
    assert rebase(_report(xf(0.78, "test_a.py:150: TypeError")), base)["verdict"] == "fail"


# ----- run_tests(baseline=...): both phases of a SandboxResult -----

def _result(tests: dict, judged: dict | None = None):
    from orchestrator.sandbox.container import SandboxResult

    return SandboxResult(**(_report(tests) | {"judged": _report(judged) if judged is not None else None}))


def test_with_baseline_excuses_in_both_phases_and_keeps_the_counts():
    from orchestrator.sandbox.container import with_baseline

    hidden = {"hidden/test_h.py::test_h": ("passed", ""),
              "tests/test_a.py::test_new_python": ("skipped", SKIP_MSG)}
    base = _result(BASE, hidden)
    run = _result(BASE, hidden)
    assert run.verdict == "fail" and run.judged.verdict == "fail"  # strict without a baseline
    out = with_baseline(run, base)
    assert out.verdict == "pass" and out.judged.verdict == "pass"
    assert sorted(out.excused) == ["tests/test_a.py::test_known_bug", "tests/test_a.py::test_new_python"]
    assert (out.passed, out.skipped, out.judged.passed) == (run.passed, run.skipped, run.judged.passed)


def test_with_baseline_never_excuses_a_new_skip_or_a_failure():
    from orchestrator.sandbox.container import with_baseline

    base = _result(BASE)
    new_skip = dict(BASE) | {"tests/test_a.py::test_ok": ("skipped", SKIP_MSG.replace("7", "9"))}
    assert with_baseline(_result(new_skip), base).verdict == "fail"
    failing = dict(BASE) | {"tests/test_a.py::test_ok": ("failed", "assert 1 == 2")}
    assert with_baseline(_result(failing), base).verdict == "fail"
    missing = {k: v for k, v in BASE.items() if k != "tests/test_a.py::test_ok"}
    assert with_baseline(_result(missing), base).verdict == "fail"
