"""The docker-pool provider against the real engine: every hostile case holds, plus the waiting phase.

A pooled container is started before its workspace exists and waits for one go message; these
tests check what that adds: a workspace never sees a previous one, a container never serves
twice, and neither a closed pool nor Ctrl-C leaves a container behind."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.sandbox.container import LABEL_PID, SandboxLimits, run_tests
from orchestrator.sandbox.interface import use
from orchestrator.sandbox.pool import LABEL_POOL, DockerPool
from tests.conftest import tree_digest, write_tree
from tests.hostile_cases import CASES, DEFAULT_TIMEOUT, TIMEOUTS, probe, ws

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pool(docker_client, sandbox_image):
    with DockerPool(SandboxLimits.load(), client=docker_client, size=2) as p:
        yield p
    assert _mine(docker_client) == []


def _mine(client) -> list[str]:
    """Names of this process's pool containers (the low-level list: no inspect that races a removal)."""
    found = client.api.containers(all=True, filters={"label": [LABEL_POOL, f"{LABEL_PID}={os.getpid()}"]})
    return [n.lstrip("/") for c in found for n in c["Names"]]


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_case_on_the_pool(name, pool, tmp_path, docker_client, host_marker, host_secret):
    files, expected = CASES[name]
    expected = (expected,) if isinstance(expected, str) else expected
    workspace = write_tree(tmp_path / "ws", files, {"MARKER": str(host_marker), "SECRET": host_secret})
    before = tree_digest(workspace)
    marker_before = host_marker.read_text()
    limits = SandboxLimits.load(timeout_s=TIMEOUTS.get(name, DEFAULT_TIMEOUT))

    result = pool.run(workspace, limits)

    assert result.verdict in expected, (result.verdict, result.reasons, result.output[-1500:])
    assert tree_digest(workspace) == before, "the host workspace changed"
    assert host_marker.read_text() == marker_before, "a host file changed"
    assert len(result.output) <= limits.output_tail_bytes + 16
    assert len(_mine(docker_client)) <= pool.size + 4, "the pool keeps more containers than its size"
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


LEAVE_TRACES = probe(
    "open('/tmp/rsi-previous-run', 'w').write('x')\n"
    "if os.fork() == 0:\n    os.setsid()\n    sys.argv[0] = 'rsi-previous-sleeper'\n    time.sleep(1000)\n    os._exit(0)\n"
    "time.sleep(0.2)")
SEE_TRACES = probe(
    "import glob\n"
    "tmp = os.path.exists('/tmp/rsi-previous-run')\n"
    "mine = {os.getpid(), os.getppid()}\n"
    "others = [p for p in os.listdir('/proc') if p.isdigit() and int(p) not in mine and int(p) != 1]\n"
    "files = set(os.listdir('/workspace'))\n"
    "assert tmp or others or 'leftover_from_a.py' in files or len(glob.glob('/workspace/*')) > 20")


def test_a_workspace_cannot_see_a_previous_one(pool, tmp_path):
    """Run A leaves a file in /tmp, a detached process and a file in its workspace; run B (on the
    same pool, many times, so it lands on every warm container) finds none of them."""
    a = write_tree(tmp_path / "a", {**LEAVE_TRACES, "leftover_from_a.py": "X = 1\n"})
    b = write_tree(tmp_path / "b", SEE_TRACES)
    for _ in range(3):
        assert pool.run(a).verdict == "pass"
        out = pool.run(b)
        assert out.verdict == "fail", (out.reasons, out.output[-1500:])
        assert out.failed == 1 and out.passed == 0


def test_a_container_never_serves_twice(pool, tmp_path, docker_client):
    workspace = write_tree(tmp_path / "w", ws())
    before = len(pool.served)
    for _ in range(4):
        assert pool.run(workspace).verdict == "pass"
    served = pool.served[before:]
    assert len(served) == 4 and len(set(served)) == 4 and not set(served) & set(pool.served[:before])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and set(served) & set(_mine(docker_client)):
        time.sleep(0.2)
    assert not set(served) & set(_mine(docker_client)), "a served container was kept"
    # nothing ever goes back into the queue: every waiting container is one no run has had
    assert not {w.name for w in pool._ready} & set(pool.served)


def test_the_candidate_cannot_reach_the_go_channel(pool, tmp_path):
    """PID 1's stdin carried the go message; the candidate can neither read nor write it."""
    for body in ("os.write(os.open('/proc/1/fd/0', os.O_WRONLY), b'RSG1')",
                 "assert os.read(os.open('/proc/1/fd/0', os.O_RDONLY), 1)",
                 "assert os.read(0, 1)"):
        out = pool.run(write_tree(tmp_path / str(abs(hash(body))), probe(body)))
        assert out.verdict == "fail", (body, out.reasons, out.output[-800:])


def test_judged_tests_travel_in_the_go_message(pool, tmp_path):
    workspace = write_tree(tmp_path / "w", ws())
    hidden = {"hidden/test_h.py": "from example import add\n\ndef test_h():\n    assert add(1, 2) == 3\n"}
    out = pool.run(workspace, judge=hidden)
    assert out.verdict == "pass" and out.judged is not None and out.judged.verdict == "pass", out.judged
    wrong = {"hidden/test_h.py": "from example import add\n\ndef test_h():\n    assert add(1, 2) == 4\n"}
    assert pool.run(workspace, judge=wrong).judged.verdict == "fail"


def test_runs_with_other_container_settings_get_a_container_of_their_own(pool, tmp_path):
    workspace = write_tree(tmp_path / "w", ws())
    out = pool.run(workspace, SandboxLimits.load(pids=64))
    assert out.verdict == "pass"


def test_run_tests_dispatches_to_the_pool(pool, tmp_path):
    workspace = write_tree(tmp_path / "w", ws())
    with use(pool):
        assert run_tests(workspace, limits=SandboxLimits.load(provider="docker-pool")).verdict == "pass"


def test_closing_the_pool_leaves_no_container(docker_client, sandbox_image, tmp_path):
    p = DockerPool(SandboxLimits.load(), client=docker_client, size=2).start()
    assert p.run(write_tree(tmp_path / "w", ws())).verdict == "pass"
    p.close()
    assert p.made and not set(p.made) & set(_mine(docker_client))


CTRL_C = """
import sys, time
from orchestrator.sandbox.container import SandboxLimits
from orchestrator.sandbox.pool import DockerPool
p = DockerPool(SandboxLimits.load(), size=3).start()
while len(p._ready) < 3:
    time.sleep(0.1)
print("warm", flush=True)
p.run(sys.argv[1])
"""


def test_ctrl_c_leaves_no_pool_container(docker_client, sandbox_image, tmp_path):
    workspace = write_tree(tmp_path / "w", probe("time.sleep(1000)"))
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C, str(workspace)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        for line in proc.stdout:  # structlog writes its lines here too
            if line.strip() == b"warm":
                break
        else:
            pytest.fail(f"the pool never got warm: {proc.stderr.read()[-2000:]!r}")
        time.sleep(2)  # the run is under way, the refill too
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    label = f"{LABEL_PID}={proc.pid}"
    assert docker_client.api.containers(all=True, filters={"label": label}) == []


def test_sweep_removes_a_dead_pools_containers_and_their_staging_dirs(docker_client, sandbox_image):
    import socket
    import tempfile

    from orchestrator.sandbox.container import LABEL, LABEL_HOST, sweep_leftovers

    stage = tempfile.mkdtemp(prefix="rsi-pool-")
    docker_client.containers.create(sandbox_image, labels={LABEL: "1", LABEL_POOL: "1", LABEL_PID: "999999",
                                                           LABEL_HOST: socket.gethostname()},
                                    volumes={stage: {"bind": "/workspace", "mode": "ro"}})
    assert sweep_leftovers(docker_client) >= 1
    assert not os.path.exists(stage)
    assert docker_client.api.containers(all=True, filters={"label": f"{LABEL_PID}=999999"}) == []
