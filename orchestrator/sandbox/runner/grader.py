"""Turn the evidence of one pytest run into a verdict. Pure, stdlib only.

This module runs in two places: inside the sandbox image (the supervisor grades
before printing its report, so the image works standalone in a user's CI) and on
the host (which re-grades the authenticated evidence and adds what only the host
can see: its own timeout and the container's OOM state).

Everything in ``events`` comes from the pytest process, i.e. from the same process
as the code under test, so it is untrusted. The grader is default-fail: ``pass``
only when pytest finished, at least one workspace test ran, every collected test
ran and passed, and the evidence is consistent with itself, with the process exit
status, with the per-run canaries and with the statically expected tests.
"""

from __future__ import annotations

VERDICTS = ("pass", "fail", "error", "timeout", "tampered")
_OUTCOMES = ("passed", "failed", "skipped")
_WHENS = ("setup", "call", "teardown")
MAX_TESTS_LISTED = 2000


def _is_str(x) -> bool:
    return isinstance(x, str) and len(x) <= 4096


def _valid_event(ev) -> bool:
    if not isinstance(ev, dict):
        return False
    kind = ev.get("e")
    if kind == "collected":
        ids = ev.get("ids")
        return isinstance(ids, list) and all(_is_str(i) for i in ids)
    if kind in ("collecterror", "collectskip"):
        return _is_str(ev.get("id", "")) and isinstance(ev.get("msg", ""), str)
    if kind == "report":
        return (
            _is_str(ev.get("id"))
            and ev.get("when") in _WHENS
            and ev.get("outcome") in _OUTCOMES
            and isinstance(ev.get("xfail", False), bool)
            and (ev.get("raised") is None or _is_str(ev.get("raised")))
            and isinstance(ev.get("msg", ""), str)
        )
    if kind == "finish":
        return isinstance(ev.get("exitstatus"), int) and not isinstance(ev.get("exitstatus"), bool)
    return False


def _matches(nodeid: str, prefix: str) -> bool:
    return nodeid == prefix or nodeid.startswith(prefix + "[")


def _is_canary(nodeid: str, canary_ids) -> bool:
    return nodeid in canary_ids


def _test_outcome(reps: dict) -> tuple[str, str]:
    """Outcome of one test from its setup/call/teardown reports: (outcome, message)."""
    setup, call, teardown = reps.get("setup"), reps.get("call"), reps.get("teardown")
    for phase in (setup, call, teardown):
        if phase and phase["outcome"] == "failed":
            kind = "failed" if phase is call else "error"
            return kind, phase.get("msg", "")
    for phase in (setup, call):
        if phase and phase["outcome"] == "skipped":
            return ("xfailed" if phase.get("xfail") else "skipped"), phase.get("msg", "")
    if call is None:
        return "notrun", ""
    if call.get("xfail"):
        return "xpassed", ""
    return "passed", ""


def grade(evidence: dict) -> dict:
    """Grade one run. ``evidence`` keys: events, stream_errors, exit_code,
    timed_out, oom_killed, expected (nodeid prefixes found statically),
    canaries ({"pass": [nodeid...], "xfail": [nodeid...]}), output, output_bytes, duration_s,
    and ``judge``: the judged phase's evidence (same keys plus ``calls``), or absent.
    Any evidence that does not have this shape grades ``tampered``, never raises."""
    try:
        report = _grade_phase(evidence)
    except Exception as exc:  # noqa: BLE001 - hostile evidence must never crash the grader
        report = _broken(evidence, f"evidence is malformed ({type(exc).__name__})")
    report["judged"] = grade_judged(evidence.get("judge")) if isinstance(evidence, dict) and \
        evidence.get("judge") is not None else None
    return report


def grade_judged(judge) -> dict:
    """The judged phase: hidden tests run by a process that never imported the candidate.
    Its reports are trusted as much as the judge is; the candidate's influence is limited to
    the plain values its worker returned (counted in ``calls``)."""
    if not isinstance(judge, dict) or judge.get("refused"):
        reason = judge.get("refused") if isinstance(judge, dict) else "no judge evidence"
        return _broken({}, str(reason)[:500], verdict="error") | {"calls": {}}
    try:
        report = _grade_phase(judge)
    except Exception as exc:  # noqa: BLE001
        report = _broken(judge, f"judge evidence is malformed ({type(exc).__name__})")
    calls = judge.get("calls") if isinstance(judge.get("calls"), dict) else {}
    report["calls"] = {str(k)[:40]: v for k, v in list(calls.items())[:20] if isinstance(v, int)}
    return report


def _broken(evidence, reason: str, verdict: str = "tampered") -> dict:
    return {"verdict": verdict, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "exit_code": None,
            "timed_out": False, "oom_killed": False, "duration_s": 0.0, "output": "", "output_bytes": 0,
            "reasons": [reason], "tests": []}


class _Findings:
    """What grading found, by weight: ``tampered`` beats ``errors`` beats ``fails`` (see ``_verdict``)."""

    def __init__(self) -> None:
        self.tampered: list[str] = []
        self.errors: list[str] = []
        self.fails: list[str] = []


class _Stream:
    """The result stream as the pytest process told it, after the shape checks."""

    def __init__(self) -> None:
        self.collected: list[str] | None = None
        self.finish: dict | None = None
        self.collect_errors: list[dict] = []
        self.collect_skips: list[dict] = []
        self.reports: dict[str, dict] = {}


def _grade_phase(evidence: dict) -> dict:
    found = _Findings()
    exit_code = evidence.get("exit_code")
    canaries = evidence.get("canaries") or {"pass": [], "xfail": []}
    canary_ids = set(canaries.get("pass", [])) | set(canaries.get("xfail", []))
    for msg in evidence.get("stream_errors") or []:
        found.tampered.append(f"result stream: {msg}")
    stream = _read_stream(evidence.get("events") or [], found)
    _check_session(stream, evidence, exit_code, found)
    _check_canaries(stream, canaries, found)
    tests, counts, workspace_ids = _count_tests(stream, canary_ids, found)
    _check_completeness(stream, evidence, workspace_ids, found)
    verdict = _verdict(stream, evidence, exit_code, counts, found)
    reasons = found.tampered + (["wall-clock timeout"] if evidence.get("timed_out") else []) + found.errors \
        + found.fails
    return {
        "verdict": verdict,
        **counts,
        "exit_code": exit_code,
        "timed_out": bool(evidence.get("timed_out")),
        "oom_killed": bool(evidence.get("oom_killed")),
        "duration_s": round(float(evidence.get("duration_s") or 0.0), 3),
        "output": evidence.get("output", ""),
        "output_bytes": int(evidence.get("output_bytes") or 0),
        "reasons": _dedupe(reasons),
        "tests": tests[:MAX_TESTS_LISTED],
    }


def _read_stream(events: list, found: _Findings) -> _Stream:
    """Each event once, in order: malformed events, events after the finish, a second collection,
    duplicate reports and a pass whose phase raised are tampering."""
    s = _Stream()
    for ev in events:
        if not _valid_event(ev):
            found.tampered.append("result stream: malformed event")
            continue
        if s.finish is not None:
            found.tampered.append("result stream: event after the session finished")
            continue
        kind = ev["e"]
        if kind == "collected":
            if s.collected is not None:
                found.tampered.append("result stream: collection reported twice")
            s.collected = list(ev["ids"])
        elif kind == "collecterror":
            s.collect_errors.append(ev)
        elif kind == "collectskip":
            s.collect_skips.append(ev)
        elif kind == "report":
            per_test = s.reports.setdefault(ev["id"], {})
            if ev["when"] in per_test:
                found.tampered.append(f"result stream: duplicate {ev['when']} report for {ev['id']}")
            per_test[ev["when"]] = ev
            if ev["outcome"] == "passed" and ev.get("raised") and not ev.get("xfail"):
                found.tampered.append(
                    f"{ev['id']}: reported passed although its {ev['when']} raised {ev['raised']}"
                )
        elif kind == "finish":
            s.finish = ev
    return s


def _check_session(s: _Stream, evidence: dict, exit_code, found: _Findings) -> None:
    """The session must agree with the process that ran it; reports only for collected tests."""
    if s.finish is None:
        if exit_code == 0:
            found.tampered.append("pytest exited with status 0 without finishing its session")
        elif not evidence.get("timed_out"):
            found.errors.append(f"pytest did not finish its session (exit code {exit_code})")
    elif exit_code is not None and s.finish["exitstatus"] != exit_code:
        found.tampered.append(
            f"pytest reported exit status {s.finish['exitstatus']} but its process exited with {exit_code}"
        )
    if s.collected is not None:
        known = set(s.collected)
        for nodeid in s.reports:
            if nodeid not in known:
                found.tampered.append(f"result stream: report for {nodeid}, which was never collected")


def _check_canaries(s: _Stream, canaries: dict, found: _Findings) -> None:
    """Canaries: tests with unpredictable names whose outcome is known in advance. A canary
    that ran must have its known outcome; when pytest claims success, all must have run."""
    if s.finish is None or s.collected is None:
        return
    success_claimed = s.finish["exitstatus"] == 0
    for kind, want in (("pass", "passed"), ("xfail", "xfailed")):
        for canary in canaries.get(kind, []):
            ids = [i for i in s.collected if i == canary]
            if not ids:
                if success_claimed or not s.collect_errors:
                    found.tampered.append("a canary test was removed from the collection")
                continue
            got = _test_outcome(s.reports.get(ids[0], {}))[0]
            if got == "notrun" and not success_claimed:
                continue
            if got != want:
                found.tampered.append(f"a canary test that must be {want} was {got}")


def _count_tests(s: _Stream, canary_ids: set, found: _Findings) -> tuple[list[dict], dict, list[str]]:
    """Every workspace test's outcome, the counts, and what they say: a test that never ran while
    pytest claims success is tampering; failures, setup errors and skips never count as passes."""
    tests = []
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    for ev in s.collect_errors:
        counts["errors"] += 1
        found.errors.append(f"collection error in {ev.get('id') or 'session'}")
    for ev in s.collect_skips:
        counts["skipped"] += 1
        tests.append({"nodeid": ev["id"], "outcome": "skipped", "message": ev.get("msg", "")[-2000:]})
    workspace_ids = [i for i in (s.collected or []) if not _is_canary(i, canary_ids)]
    for nodeid in workspace_ids:
        outcome, msg = _test_outcome(s.reports.get(nodeid, {}))
        tests.append({"nodeid": nodeid, "outcome": outcome, "message": msg[-2000:]})
        if outcome == "passed":
            counts["passed"] += 1
        elif outcome == "failed":
            counts["failed"] += 1
        elif outcome in ("error", "notrun"):
            counts["errors"] += 1
        else:
            counts["skipped"] += 1
    not_run = [t["nodeid"] for t in tests if t["outcome"] == "notrun"]
    if not_run:
        if s.finish is not None and s.finish["exitstatus"] == 0:
            found.tampered.append(f"{len(not_run)} collected tests never ran but pytest reported success")
        else:
            found.errors.append(f"{len(not_run)} collected tests never ran")
    if counts["failed"]:
        found.fails.append(f"{counts['failed']} tests failed")
    if counts["errors"] and not s.collect_errors and not not_run:
        found.errors.append(f"{counts['errors']} tests errored in setup or teardown")
    if counts["skipped"]:
        found.fails.append(f"{counts['skipped']} tests skipped or xfailed (they never count as passes)")
    return tests, counts, workspace_ids


def _check_completeness(s: _Stream, evidence: dict, workspace_ids: list[str], found: _Findings) -> None:
    """Tests visible in the source must have been collected; something must have been; the exit
    status must be pytest's success or failure; the memory limit must not have been hit."""
    if s.finish is not None and s.collected is not None and not s.collect_errors:
        for prefix in evidence.get("expected") or []:
            if not any(_matches(i, prefix) for i in s.collected):
                found.fails.append(f"{prefix} is in the test files but was never collected")
    if s.finish is not None and s.collected is not None and not workspace_ids and not s.collect_errors \
            and not s.collect_skips:
        found.errors.append("no tests were collected")
    if s.collected is None and s.finish is not None:
        found.errors.append(f"pytest stopped before collecting (exit status {s.finish['exitstatus']})")
    if s.finish is not None and s.finish["exitstatus"] not in (0, 1) and not found.errors and not found.tampered:
        found.errors.append(f"pytest exit status {s.finish['exitstatus']}")
    if evidence.get("oom_killed"):
        found.errors.append("the memory limit was hit (OOM kill)")


def _verdict(s: _Stream, evidence: dict, exit_code, counts: dict, found: _Findings) -> str:
    """Default-fail: ``pass`` only with nothing found, a test passed, and pytest and its process both
    reporting success."""
    if found.tampered:
        return "tampered"
    if evidence.get("timed_out"):
        return "timeout"
    if found.errors:
        return "error"
    if found.fails:
        return "fail"
    if counts["passed"] > 0 and s.finish is not None and s.finish["exitstatus"] == 0 and exit_code == 0:
        return "pass"
    found.errors.append("no evidence of a complete, successful run")
    return "error"


def _dedupe(items: list[str]) -> list[str]:
    seen, out = set(), []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out[:50]
