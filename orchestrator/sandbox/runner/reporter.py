"""pytest plugin loaded with ``-p`` inside the sandbox: streams results to the supervisor.

Each event is one JSON line written to a pipe inherited from the supervisor (fd in
RSI_RESULT_FD). The pipe is the only way results leave the pytest process; nothing
is read back from files the code under test could rewrite. At import the plugin moves
the pipe to a random descriptor and keeps it only inside a closure: no module global
names it, and the environment variable is gone before any workspace code runs.

Canary tests are ordinary test files that the host stages into the workspace at random
places with names like the workspace's own; this plugin knows nothing about them, and
collection hooks (the workspace's included) see them like any other test.

This plugin shares its process with the code under test, so the supervisor treats what it
sends as evidence to cross-check, not as truth (the README's threat model says what an
in-process attacker can still do; hidden tests are judged out of process instead).
"""

from __future__ import annotations

import pytest


def _make_emitter():
    import json
    import os
    import secrets

    fd = int(os.environ.pop("RSI_RESULT_FD", "-1"))
    if fd >= 0:
        try:
            moved = os.dup2(fd, 200 + secrets.randbelow(700), inheritable=False)
            os.close(fd)
            fd = moved
        except OSError:
            pass
    write, dumps = os.write, json.dumps  # bound now, before any workspace code is imported

    def emit(obj: dict) -> None:
        if fd < 0:
            return
        data = (dumps(obj) + "\n").encode("utf-8", "replace")
        while data:
            data = data[write(fd, data):]

    return emit


_emit = _make_emitter()
del _make_emitter
MSG_CHARS = 4000


def _text(report) -> str:
    try:
        text = report.longreprtext
    except Exception:  # noqa: BLE001 - a broken repr must not break reporting
        text = ""
    return text[-MSG_CHARS:]


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    _emit({"e": "collected", "ids": [item.nodeid for item in session.items]})


@pytest.hookimpl(trylast=True)
def pytest_collectreport(report):
    if report.failed:
        _emit({"e": "collecterror", "id": report.nodeid, "msg": _text(report)})
    elif report.skipped:
        _emit({"e": "collectskip", "id": report.nodeid, "msg": _text(report)})


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    raised = call.excinfo.typename if call.excinfo is not None else None
    xfail = hasattr(report, "wasxfail")
    if report.when != "call" and report.outcome == "passed" and raised is None and not xfail:
        return  # a passing setup or teardown says nothing the grader needs (it reads a missing one so)
    _emit(
        {
            "e": "report",
            "id": report.nodeid,
            "when": report.when,
            "outcome": report.outcome,
            "xfail": xfail,
            "raised": raised,
            "msg": _text(report) if report.outcome != "passed" else "",
        }
    )


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    _emit({"e": "finish", "exitstatus": int(exitstatus)})
