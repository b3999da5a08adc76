"""A large honest suite passes; the same suite with one forged report is tampered (issue 23, item 4).

packaging 24.1 has 26,854 tests; its honest run was graded ``tampered`` because its result stream
outgrew a fixed 16 MiB budget ("5099 collected tests never ran"). The budget now scales with the
collected tests and the reporter leaves out passing setups and teardowns. The flood and duplicate-report
cases of the hostile suite still hold (tests/hostile_cases.py: cage_flood_*, hostile_nested_json)."""

import pytest

from orchestrator.sandbox.container import SandboxLimits, run_tests
from orchestrator.sandbox.runner import supervisor
from tests.conftest import write_tree

pytestmark = pytest.mark.docker

N = 50_000
SUITE = ("import pytest\nfrom example import add\n\n\n"
         f"@pytest.mark.parametrize('i', range({N}))\n"
         "def test_add_is_commutative_for_a_rather_long_parametrized_name(i):\n"
         "    assert add(i, 1) == add(1, i) == i + 1\n")
GOOD = "def add(a, b):\n    return a + b\n"
# The last case fails honestly (add is off by one there); a conftest flips that failure to a pass.
OFF_BY_ONE = f"def add(a, b):\n    return a + b + (1 if {N - 1} in (a, b) else 0)\n"
FLIP = ("import pytest\n\n\n@pytest.hookimpl(hookwrapper=True)\ndef pytest_runtest_makereport(item, call):\n"
        "    out = yield\n    rep = out.get_result()\n    if rep.failed:\n        rep.outcome = 'passed'\n")


@pytest.fixture(scope="module")
def limits():
    return SandboxLimits.load(timeout_s=600)


def test_fifty_thousand_honest_tests_pass(tmp_path, docker_client, sandbox_image, limits):
    ws = write_tree(tmp_path / "ws", {"example.py": GOOD, "test_example.py": SUITE})
    result = run_tests(ws, limits=limits, client=docker_client)
    assert result.verdict == "pass", (result.reasons, result.output[-1000:])
    assert result.passed == N and result.failed == 0


def test_fifty_thousand_tests_with_one_forged_report_are_tampered(tmp_path, docker_client, sandbox_image, limits):
    ws = write_tree(tmp_path / "ws", {"example.py": OFF_BY_ONE, "test_example.py": SUITE, "conftest.py": FLIP})
    result = run_tests(ws, limits=limits, client=docker_client)
    assert result.verdict == "tampered", (result.reasons, result.output[-1000:])
    assert any("reported passed although its call raised" in r for r in result.reasons), result.reasons


def test_the_budget_scales_with_the_collection_and_has_a_ceiling():
    def collected(n):
        return [{"e": "collected", "ids": [f"t.py::t[{i}]" for i in range(n)]}]

    assert supervisor.event_budget([]) == supervisor.EVENT_BYTES_BASE
    assert supervisor.event_budget(collected(50_000)) > supervisor.event_budget(collected(10))
    assert supervisor.event_budget(collected(10**6)) == supervisor.MAX_EVENT_BYTES
    # The host reads both phases' streams back in one frame.
    assert SandboxLimits.load().max_report_bytes >= 2 * supervisor.MAX_EVENT_BYTES
