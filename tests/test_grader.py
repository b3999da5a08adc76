"""The grader on crafted evidence (no Docker): default-fail and consistency rules."""

from orchestrator.sandbox.runner.grader import grade

# Canaries are staged by the host among the workspace's tests and named like them: by node id.
CAN_IDS = ["test_parse_edge.py::test_keeps_zero", "sub/test_mixed_order.py::test_round_types",
           "test_value_none.py::test_small_cases"]
CAN = {"pass": CAN_IDS[:2], "xfail": CAN_IDS[2:]}


def rep(nodeid, when, outcome, **kw):
    return {"e": "report", "id": nodeid, "when": when, "outcome": outcome, "xfail": kw.get("xfail", False),
            "raised": kw.get("raised")}


def passing(nodeid):
    return [rep(nodeid, "setup", "passed"), rep(nodeid, "call", "passed"), rep(nodeid, "teardown", "passed")]


def canary_events():
    return (passing(CAN_IDS[0]) + passing(CAN_IDS[1])
            + [rep(CAN_IDS[2], "setup", "passed"), rep(CAN_IDS[2], "call", "skipped", xfail=True,
                                                       raised="AssertionError"),
               rep(CAN_IDS[2], "teardown", "passed")])


def evidence(tests=("t.py::test_a",), extra=(), exitstatus=0, exit_code=0, expected=None, finish=True):
    events = [{"e": "collected", "ids": list(tests) + CAN_IDS}]
    for t in tests:
        events += passing(t)
    events += canary_events() + list(extra)
    if finish:
        events.append({"e": "finish", "exitstatus": exitstatus})
    return {"events": events, "exit_code": exit_code, "canaries": CAN,
            "expected": list(tests) if expected is None else expected}


def test_honest_pass():
    g = grade(evidence())
    assert g["verdict"] == "pass" and g["passed"] == 1 and g["reasons"] == []


def test_empty_evidence_is_never_a_pass():
    assert grade({})["verdict"] == "error"
    assert grade({"events": [], "exit_code": 0})["verdict"] == "tampered"


def test_no_workspace_tests_is_an_error():
    assert grade(evidence(tests=()))["verdict"] == "error"


def test_exit_code_mismatch_is_tampering():
    assert grade(evidence(exit_code=1, exitstatus=0))["verdict"] == "tampered"


def test_missing_finish_with_exit_zero_is_tampering():
    assert grade(evidence(finish=False))["verdict"] == "tampered"


def test_missing_finish_with_crash_is_error():
    assert grade(evidence(finish=False, exit_code=-9))["verdict"] == "error"


def test_event_after_finish_is_tampering():
    e = evidence()
    e["events"].append(rep("t.py::test_a", "call", "passed"))
    assert grade(e)["verdict"] == "tampered"


def test_duplicate_report_is_tampering():
    e = evidence(extra=[rep("t.py::test_a", "call", "passed")])
    assert grade(e)["verdict"] == "tampered"


def test_passed_with_exception_is_tampering():
    e = evidence(tests=())
    e["events"][0]["ids"].insert(0, "t.py::test_a")
    e["events"][1:1] = [rep("t.py::test_a", "setup", "passed"),
                        rep("t.py::test_a", "call", "passed", raised="AssertionError"),
                        rep("t.py::test_a", "teardown", "passed")]
    assert grade(e)["verdict"] == "tampered"


def test_wrong_canary_outcome_is_tampering():
    e = evidence()
    for ev in e["events"]:
        if ev.get("id") == CAN_IDS[2] and ev.get("when") == "call":
            ev.update(outcome="passed", xfail=False, raised=None)
    assert grade(e)["verdict"] == "tampered"


def test_removed_canary_is_tampering():
    e = evidence()
    e["events"][0]["ids"].remove(CAN_IDS[1])
    e["events"] = [ev for ev in e["events"] if ev.get("id") != CAN_IDS[1]]
    assert grade(e)["verdict"] == "tampered"


def test_report_for_uncollected_test_is_tampering():
    assert grade(evidence(extra=passing("t.py::test_ghost")))["verdict"] == "tampered"


def test_malformed_events_are_tampering():
    for bad in ({"e": "report"}, {"e": "finish", "exitstatus": True}, {"e": "nope"}, [], "x",
                {"e": "collected", "ids": "t.py::test_a"}):
        assert grade(evidence(extra=[bad]))["verdict"] == "tampered", bad


def test_skips_and_xfails_never_pass():
    for outcome in ({"outcome": "skipped"}, {"outcome": "skipped", "xfail": True}):
        e = evidence(tests=())
        e["events"][0]["ids"].insert(0, "t.py::test_a")
        e["events"][1:1] = [rep("t.py::test_a", "setup", "passed"),
                            rep("t.py::test_a", "call", outcome["outcome"], xfail=outcome.get("xfail", False)),
                            rep("t.py::test_a", "teardown", "passed")]
        g = grade(e)
        assert g["verdict"] == "fail" and g["skipped"] == 1


def test_xpass_is_not_a_pass():
    e = evidence(tests=())
    e["events"][0]["ids"].insert(0, "t.py::test_a")
    e["events"][1:1] = [rep("t.py::test_a", "setup", "passed"), rep("t.py::test_a", "call", "passed", xfail=True),
                        rep("t.py::test_a", "teardown", "passed")]
    assert grade(e)["verdict"] == "fail"


def test_expected_test_missing_fails():
    g = grade(evidence(expected=["t.py::test_a", "t.py::test_hidden"]))
    assert g["verdict"] == "fail" and any("test_hidden" in r for r in g["reasons"])


def test_parametrized_ids_match_expected_prefix():
    assert grade(evidence(tests=("t.py::test_a[1]", "t.py::test_a[2]"), expected=["t.py::test_a"]))[
        "verdict"] == "pass"


def test_collected_but_not_run_with_success_is_tampering():
    e = evidence()
    e["events"][0]["ids"].insert(0, "t.py::test_never")
    assert grade(e)["verdict"] == "tampered"


def test_timeout_and_oom_win_over_fail():
    e = evidence(finish=False, exit_code=-9)
    assert grade({**e, "timed_out": True})["verdict"] == "timeout"
    g = grade({**e, "oom_killed": True})
    assert g["verdict"] == "error" and g["oom_killed"]


def test_stream_errors_are_tampering():
    assert grade({**evidence(), "stream_errors": ["a line that is not JSON"]})["verdict"] == "tampered"
