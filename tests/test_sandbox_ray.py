"""The ray provider on a real two-node Ray cluster on this machine (loopback), real Docker.

A small round's verification goes through the cluster while one node's raylet is killed: every
candidate gets exactly one verdict, none is lost, and the verdicts are the docker provider's."""

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from orchestrator.sandbox.container import SandboxLimits, run_in_fresh_container, sweep_leftovers
from orchestrator.sandbox.pool import LABEL_POOL
from orchestrator.sandbox.ray_provider import RaySandbox
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


SLOW = {"test_zz_slow.py": "import time\n\n\ndef test_zz_slow():\n    time.sleep(1.5)\n"}


def test_a_round_survives_a_lost_node(cluster, docker_client, tmp_path):
    """Every run of a round gets exactly one verdict, the docker provider's, while the second node's
    raylet is killed as it holds a run. Each workspace also sleeps 1.5 s in a test of its own (verdicts
    unchanged: the reference is graded on the same workspaces); both nodes are warmed first, and the kill
    comes while the second node's worker is executing a run (its process title), so that run is lost
    with the node and must be retried elsewhere."""
    import ray

    spaces = [write_tree(tmp_path / f"c{i}", {**CASES[name][0], **SLOW}) for i, name in enumerate(ROUND)]
    reference = [run_in_fresh_container(w, SandboxLimits.load(timeout_s=30), client=docker_client).verdict
                 for w in spaces]
    assert reference == [CASES[n][1] if isinstance(CASES[n][1], str) else reference[i]
                         for i, n in enumerate(ROUND)]

    limits = _limits(cluster)
    warm = RaySandbox(limits).start()
    second = [n["NodeID"] for n in ray.nodes() if n.get("NodeManagerPort") == cluster.node_ports[1]]
    assert len(second) == 1, ray.nodes()
    # Warm both nodes first (a Ray worker and its pool on each): a fresh node takes longer to start its
    # first run than the other node takes for the whole round on this 2-core machine.
    probe = write_tree(tmp_path / "warm", CASES["control_pass"][0])
    deadline = time.monotonic() + 300
    with ThreadPoolExecutor(2) as pool:
        while second[0] not in {e["node"] for e in warm.ledger.values()} and time.monotonic() < deadline:
            assert {r.verdict for r in pool.map(lambda _: warm.run(probe, limits), range(2))} == {"pass"}
    assert second[0] in {e["node"] for e in warm.ledger.values()}, "the second node never took a run"

    sandbox = RaySandbox(limits).start()  # the round's own ledger
    done = []

    def verify(w):
        out = sandbox.run(w, limits)
        done.append(out)
        return out

    with ThreadPoolExecutor(len(spaces)) as pool:
        futures = [pool.submit(verify, w) for w in spaces]
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and len(done) < len(spaces) - 1 and \
                not cluster.running(1, "verify_on_node"):
            time.sleep(0.02)
        assert cluster.running(1, "verify_on_node"), \
            f"the second node held no run while {len(spaces) - len(done)} runs were left"
        cluster.kill_node(1)
        results = [f.result(timeout=900) for f in futures]

    assert [r.verdict for r in results] == reference
    assert len(sandbox.ledger) == len(spaces), "a candidate was lost or counted twice"
    assert all(e["attempts"] <= limits.ray_attempts for e in sandbox.ledger.values())
    retried = [e for e in sandbox.ledger.values() if e["attempts"] > 1]
    if not retried:
        # The second node was between runs when it was killed, so the retry path was not exercised:
        # reported as such, never as a pass (the assertions above still hold).
        nodes = sorted(e["node"][:8] for e in sandbox.ledger.values())
        pytest.xfail(f"no run was hit by the lost node (the test proved nothing); runs per node: {nodes}")
    assert all(e["node"] != second[0] for e in retried), "a retried run was counted on the lost node"


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


def test_plants_never_reach_the_judge_on_a_node(cluster, tmp_path):
    """Issue 23, item 1, on a Ray node (its docker-pool sandbox): every plant of tests/judge_plants.py
    is refused by the judge, and the in-judge positive control shows each plant forges the old one."""
    from tests.judge_plants import CANDIDATE, CONTROL, HIDDEN_TEST, VISIBLE_TEST
    from tests.test_judge_plants import _check

    ws = write_tree(tmp_path / "ws", {"example.py": CANDIDATE, "test_example.py": VISIBLE_TEST})
    limits = _limits(cluster).model_copy(update={"timeout_s": 120})
    _check(_shared(cluster).run(ws, limits, judge={"test_hidden.py": HIDDEN_TEST, "test_control.py": CONTROL}))
