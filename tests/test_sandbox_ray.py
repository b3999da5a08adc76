"""The ray provider on a real two-node Ray cluster on this machine (loopback), real Docker.

A small round's verification goes through the cluster while one node's raylet is killed: every
candidate gets exactly one verdict, none is lost, and the verdicts are the docker provider's."""

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from orchestrator.sandbox import SandboxLimits, run_in_fresh_container, sweep_leftovers
from orchestrator.sandboxes.pool import LABEL_POOL
from orchestrator.sandboxes.ray_provider import RaySandbox
from tests.conftest import tree_digest, write_tree
from tests.hostile_cases import CASES, DEFAULT_TIMEOUT, TIMEOUTS
from tests.ray_cluster import LocalCluster

pytestmark = pytest.mark.docker

ROUND = ["control_pass", "control_fail", "hack_os_exit_at_import", "control_collection_error",
         "hack_sys_exit_in_test", "control_parametrized_and_class", "tamper_conftest_modifyitems",
         "hack_forge_report_frame", "control_pass", "control_fail"]


@pytest.fixture(scope="module")
def cluster(docker_client, sandbox_image):
    with LocalCluster(nodes=2) as c:
        yield c
        import ray

        ray.shutdown()
    sweep_leftovers(docker_client)  # pool containers of the Ray workers that died with their node
    left = [c["Id"] for c in docker_client.api.containers(all=True, filters={"label": LABEL_POOL})
            if not os.path.exists(f"/proc/{(c.get('Labels') or {}).get('org.rsi-lab.pid', '0')}")]
    assert left == [], "a Ray node left pool containers behind"


def _limits(cluster, **kw):
    return SandboxLimits.load(provider="ray", ray_address=cluster.address, ray_node_provider="docker-pool",
                              pool_size=1, timeout_s=30, **kw)


def test_a_round_survives_a_lost_node(cluster, docker_client, tmp_path):
    spaces = [write_tree(tmp_path / f"c{i}", CASES[name][0]) for i, name in enumerate(ROUND)]
    reference = [run_in_fresh_container(w, SandboxLimits.load(timeout_s=30), client=docker_client).verdict
                 for w in spaces]
    assert reference == [CASES[n][1] if isinstance(CASES[n][1], str) else reference[i]
                         for i, n in enumerate(ROUND)]

    limits = _limits(cluster)
    sandbox = RaySandbox(limits).start()
    done = []
    killed = threading.Event()

    def verify(w):
        out = sandbox.run(w, limits)
        done.append(out)
        return out

    with ThreadPoolExecutor(len(spaces)) as pool:
        futures = [pool.submit(verify, w) for w in spaces]
        deadline = time.monotonic() + 600
        while not done and time.monotonic() < deadline:
            time.sleep(0.1)
        assert done, "no candidate was verified in 10 minutes"
        assert len(done) < len(spaces) - 1, "the round ended before the node could be lost"
        cluster.kill_node(1)
        killed.set()
        results = [f.result(timeout=900) for f in futures]

    assert [r.verdict for r in results] == reference
    assert len(sandbox.ledger) == len(spaces), "a candidate was lost or counted twice"
    assert all(e["attempts"] <= limits.ray_attempts for e in sandbox.ledger.values())
    if sum(e["attempts"] for e in sandbox.ledger.values()) == len(spaces):
        # Seen on the 2-core dev machine (2026-11-27, three runs): the second node took one run or none
        # and held nothing when it was killed, so the retry path was not exercised. Reported as such
        # (issue 14 stays open), never as a pass; the assertions above still hold.
        nodes = sorted(e["node"][:8] for e in sandbox.ledger.values())
        pytest.xfail(f"no run was hit by the lost node (the test proved nothing); runs per node: {nodes}")



@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_case_through_the_cluster(name, cluster, tmp_path, host_marker, host_secret):
    """Every hostile case, its workspace carried to a node as bytes (links stay links), holds there."""
    files, expected = CASES[name]
    expected = (expected,) if isinstance(expected, str) else expected
    workspace = write_tree(tmp_path / "ws", files, {"MARKER": str(host_marker), "SECRET": host_secret})
    before = tree_digest(workspace)
    marker_before = host_marker.read_text()
    limits = _limits(cluster).model_copy(update={"timeout_s": TIMEOUTS.get(name, DEFAULT_TIMEOUT)})

    result = _shared(cluster).run(workspace, limits)

    assert result.verdict in expected, (result.verdict, result.reasons, result.output[-1500:])
    assert tree_digest(workspace) == before, "the host workspace changed"
    assert host_marker.read_text() == marker_before, "a host file changed"
    if name == "cage_memory_bomb":
        assert result.oom_killed
    if name in ("cage_cpu_spin", "cage_sleep"):
        assert result.timed_out
    if name.startswith("control_pass") or name == "control_parametrized_and_class":
        assert result.passed >= 1 and result.failed == 0


_SANDBOX = {}


def _shared(cluster):
    if cluster.address not in _SANDBOX:
        _SANDBOX[cluster.address] = RaySandbox(_limits(cluster)).start()
    return _SANDBOX[cluster.address]
