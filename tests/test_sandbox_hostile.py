"""Every hostile workspace against the real sandbox (real Docker), with host-side checks."""

import os

import pytest

from orchestrator.sandbox import LABEL_PID, SandboxLimits, run_tests
from tests.conftest import tree_digest, write_tree
from tests.hostile_cases import CASES, DEFAULT_TIMEOUT, TIMEOUTS

pytestmark = pytest.mark.docker


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_case(name, tmp_path, docker_client, sandbox_image, host_marker, host_secret):
    files, expected = CASES[name]
    expected = (expected,) if isinstance(expected, str) else expected
    workspace = write_tree(tmp_path / "ws", files, {"MARKER": str(host_marker), "SECRET": host_secret})
    before = tree_digest(workspace)
    marker_before = host_marker.read_text()
    limits = SandboxLimits.load(timeout_s=TIMEOUTS.get(name, DEFAULT_TIMEOUT))

    result = run_tests(workspace, limits=limits, client=docker_client)

    assert result.verdict in expected, (result.verdict, result.reasons, result.output[-1500:])
    assert tree_digest(workspace) == before, "the host workspace changed"
    assert host_marker.read_text() == marker_before, "a host file changed"
    left = docker_client.containers.list(all=True, filters={"label": f"{LABEL_PID}={os.getpid()}"})
    assert left == [], "a sandbox container was left behind"
    assert len(result.output) <= limits.output_tail_bytes + 16
    if name == "cage_memory_bomb":
        assert result.oom_killed
    if name in ("cage_cpu_spin", "cage_sleep"):
        assert result.timed_out and result.duration_s < limits.timeout_s + limits.grace_s
    if name == "cage_flood_stdout":
        assert result.output_bytes >= 2 * 256 * (1 << 20)
    if name == "hack_forge_report_frame":
        assert not any("authentication" in r for r in result.reasons), "a forged frame reached stdout"
    if name.startswith("control_pass") or name == "control_parametrized_and_class":
        assert result.passed >= 1 and result.failed == 0
