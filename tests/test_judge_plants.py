"""A candidate's files in /tmp, /dev/shm or the judge's directory never reach the judge (issue 23,
item 1), under runc, gVisor and the warm pool; the hidden control test (tests/judge_plants.py) shows
inside the same judge that each plant is there and forges the judge's old command line."""

import pytest

from orchestrator.sandbox.container import SandboxLimits, run_tests
from orchestrator.sandbox.pool import DockerPool
from tests.conftest import write_tree
from tests.judge_plants import CANDIDATE, CONTROL, HIDDEN_TEST, VISIBLE_TEST

pytestmark = pytest.mark.docker

HIDDEN = {"test_hidden.py": HIDDEN_TEST, "test_control.py": CONTROL}


def _check(result) -> None:
    judged = result.judged
    assert judged is not None
    outcomes = {t["nodeid"]: t["outcome"] for t in judged.tests}
    assert outcomes.get("test_control.py::test_plants_are_there_and_forge_the_old_judge") == "passed", (
        "the positive control failed: the plants did not land or did not forge the old judge",
        judged.output[-3000:])
    assert outcomes.get("test_hidden.py::test_h") == "failed", ("a plant forged the judge", outcomes,
                                                               judged.output[-2000:])
    assert judged.verdict == "fail" and judged.failed == 1, (judged.verdict, judged.reasons)


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_plants_never_reach_the_judge(runtime, tmp_path, docker_client, sandbox_image):
    ws = write_tree(tmp_path / "ws", {"example.py": CANDIDATE, "test_example.py": VISIBLE_TEST})
    limits = SandboxLimits.load(runtime="" if runtime == "runc" else runtime, timeout_s=120)
    _check(run_tests(ws, limits=limits, client=docker_client, judge=HIDDEN))


def test_plants_never_reach_the_judge_in_the_pool(tmp_path, docker_client, sandbox_image):
    ws = write_tree(tmp_path / "ws", {"example.py": CANDIDATE, "test_example.py": VISIBLE_TEST})
    limits = SandboxLimits.load(timeout_s=120)
    with DockerPool(limits, client=docker_client, size=1) as pool:
        _check(pool.run(ws, limits, judge=HIDDEN))


def test_the_judge_refuses_ground_the_candidate_can_reach(tmp_path, docker_client, sandbox_image):
    """Without its private tmpfs (the mount removed: /rsi-judge is then the image's root-owned, empty
    directory) the judge runs nothing: an error, never a pass, even for a correct candidate."""
    from tests.test_sandbox_hostile import _Weakened

    ws = write_tree(tmp_path / "ws", {"example.py": "def add(a, b):\n    return a + b\n",
                                       "test_example.py": VISIBLE_TEST})
    hidden = {"test_hidden.py": HIDDEN_TEST}
    limits = SandboxLimits.load()
    good = run_tests(ws, limits=limits, client=docker_client, judge=hidden)
    assert good.judged.verdict == "pass", good.judged.reasons
    weak = _Weakened(docker_client, {"tmpfs": {"/tmp": "size=64m,mode=1777,noexec,nosuid,nodev"}})
    refused = run_tests(ws, limits=limits, client=weak, judge=hidden)
    assert refused.judged.verdict in ("error", "tampered"), refused.judged.reasons
    assert "rsi-judge: refused" in refused.judged.output, refused.judged.output[-1000:]
