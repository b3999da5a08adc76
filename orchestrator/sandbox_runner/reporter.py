"""pytest plugin loaded with ``-p`` inside the sandbox: streams results to the supervisor.

Each event is one JSON line written to a pipe inherited from the supervisor (fd in
RSI_RESULT_FD). The pipe is the only way results leave the pytest process; nothing
is read back from files the code under test could rewrite. The plugin also adds the
per-run canary tests (names and expected outcomes chosen by the supervisor) to the
collection: one that must pass first, and one that must pass plus one strict xfail
last, so blanket tampering with collection, reporting or the process lifetime shows.

This plugin shares its process with the code under test, so the supervisor treats
what it sends as evidence to cross-check, not as truth.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

_FD = int(os.environ.pop("RSI_RESULT_FD", "-1"))
_CANARY_FILE = os.environ.pop("RSI_CANARY_FILE", "")
_CANARY_FIRST = os.environ.pop("RSI_CANARY_FIRST", "")
_CANARY_LAST = [n for n in os.environ.pop("RSI_CANARY_LAST", "").split(",") if n]
_write = os.write  # bound now, before any workspace code is imported
_dumps = json.dumps
MSG_CHARS = 4000


def _emit(obj: dict) -> None:
    if _FD < 0:
        return
    data = (_dumps(obj) + "\n").encode("utf-8", "replace")
    while data:
        data = data[_write(_FD, data) :]


def _text(report) -> str:
    try:
        text = report.longreprtext
    except Exception:  # noqa: BLE001 - a broken repr must not break reporting
        text = ""
    return text[-MSG_CHARS:]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    if not _CANARY_FILE:
        return
    module = pytest.Module.from_parent(session, path=Path(_CANARY_FILE))
    first = [pytest.Function.from_parent(module, name=_CANARY_FIRST)] if _CANARY_FIRST else []
    last = [pytest.Function.from_parent(module, name=name) for name in _CANARY_LAST]
    items[:0] = first
    items.extend(last)


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
    _emit(
        {
            "e": "report",
            "id": report.nodeid,
            "when": report.when,
            "outcome": report.outcome,
            "xfail": hasattr(report, "wasxfail"),
            "raised": raised,
            "msg": _text(report) if report.outcome != "passed" else "",
        }
    )


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    _emit({"e": "finish", "exitstatus": int(exitstatus)})
