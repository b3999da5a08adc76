"""Sandbox behaviour around the run: CLI contract, standalone image, cleanup, parallelism."""

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import pytest

from orchestrator.sandbox.container import LABEL, LABEL_HOST, LABEL_PID, parse_report, run_tests, sweep_leftovers
from orchestrator.sandbox.runner.supervisor import expected_tests, frame
from tests.conftest import write_tree
from tests.hostile_cases import BUGGY, CASES, SHADOWS, ws

RSI = [sys.executable, "-m", "orchestrator.cli"]
ROOT = Path(__file__).resolve().parent.parent


def rsi(*args, env=None):
    return subprocess.run(RSI + list(args), capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_parse_report_accepts_only_authenticated_frames():
    key = os.urandom(32)
    good = frame({"evidence": {"x": 1}}, key).encode()
    payload, problems = parse_report(b"noise\n" + good, key)
    assert payload == {"evidence": {"x": 1}} and problems == []
    forged = frame({"evidence": {"x": 2}}, os.urandom(32)).encode()
    payload, problems = parse_report(forged, key)
    assert payload is None and problems == ["a report frame failed authentication"]
    payload, problems = parse_report(good + good, key)
    assert "more than one report frame" in problems


def test_static_scan_finds_functions_methods_and_skips_disabled(tmp_path):
    write_tree(tmp_path, {
        "test_a.py": "def test_x():\n    pass\nclass TestC:\n    def test_m(self):\n        pass\n"
                     "class TestInit:\n    def __init__(self):\n        pass\n    def test_no(self):\n        pass\n",
        "pkg/b_test.py": "async def test_async():\n    pass\n",
        "test_off.py": "__test__ = False\ndef test_hidden():\n    pass\n",
        "test_broken.py": "def test_(:\n",
        ".hidden/test_h.py": "def test_h():\n    pass\n",
        "helper.py": "def test_not_a_test_file():\n    pass\n",
    })
    assert sorted(expected_tests(str(tmp_path))) == ["pkg/b_test.py::test_async", "test_a.py::TestC::test_m",
                                                     "test_a.py::test_x"]


@pytest.mark.docker
def test_cli_json_contract_and_exit_codes(tmp_path, sandbox_image):
    good = write_tree(tmp_path / "good", ws())
    bad = write_tree(tmp_path / "bad", ws(example=BUGGY))
    out = rsi("sandbox", "run", str(good), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for key in ("verdict", "passed", "failed", "errors", "skipped", "exit_code", "timed_out", "oom_killed",
                "duration_s", "output"):
        assert key in data
    assert data["verdict"] == "pass" and data["passed"] == 1
    out = rsi("sandbox", "run", str(bad), "--json", "--timeout", "20")
    assert out.returncode == 1 and json.loads(out.stdout)["verdict"] == "fail"


def test_cli_exit_2_without_daemon(tmp_path):
    good = write_tree(tmp_path / "good", ws())
    out = rsi("sandbox", "run", str(good), env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert out.returncode == 2
    assert "Docker daemon" in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.docker
def test_cli_exit_2_when_image_missing(tmp_path, sandbox_image, tmp_path_factory):
    good = write_tree(tmp_path / "good", ws())
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "sandbox.toml").write_text('[sandbox]\nimage = "rsi-sandbox:does-not-exist"\n')
    out = rsi("sandbox", "run", str(good), env={"RSI_POLICIES": str(policies)})
    assert out.returncode == 2 and "make images" in out.stderr


@pytest.mark.docker
@pytest.mark.parametrize("case,code", [("control_pass", 0), ("control_fail", 1), ("hack_os_exit_at_import", 1)]
                         + [(name, 1) for name in sorted(SHADOWS)])
def test_image_runs_standalone(case, code, tmp_path, docker_client, sandbox_image):
    """The documented CI usage: docker run --rm -v "$PWD:/workspace:ro" IMAGE."""
    workspace = write_tree(tmp_path / "ws", CASES[case][0])
    os.chmod(tmp_path, 0o755)
    container = docker_client.containers.run(
        sandbox_image, detach=True, volumes={str(workspace): {"bind": "/workspace", "mode": "ro"}},
        network_mode="none", labels={LABEL: "1", LABEL_PID: str(os.getpid())})
    try:
        status = container.wait(timeout=60)["StatusCode"]
        report = json.loads(container.logs(stdout=True, stderr=False).decode().strip().splitlines()[-1])
    finally:
        container.remove(force=True)
    assert status == code
    expected = CASES[case][1]
    assert report["verdict"] in ((expected,) if isinstance(expected, str) else expected), report


def _deep_tree(root: Path, depth: int, name: str) -> None:
    """Create ``depth`` nested directories below root one step at a time (paths past PATH_MAX)."""
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            nxt = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        with open(os.open("test_deep.py", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as fh:
            fh.write("def test_deep():\n    pass\n")
    finally:
        os.close(fd)


def _rm_deep(root: Path) -> None:
    """Remove a tree of any depth without recursion or long paths (pytest's own clean-up of old
    temporary directories would hit RecursionError on it)."""
    here = os.open(".", os.O_RDONLY)
    names: list[str] = []
    os.chdir(root)
    try:
        while True:
            sub = next((e.name for e in os.scandir(".") if e.is_dir(follow_symlinks=False)), None)
            if sub is not None:
                os.chdir(sub)
                names.append(sub)
                continue
            for e in os.scandir("."):
                os.unlink(e.name)
            if not names:
                break
            os.chdir("..")
            os.rmdir(names.pop())
    finally:
        os.fchdir(here)
        os.close(here)


@pytest.mark.docker
@pytest.mark.parametrize("depth,name", [(1100, "d"), (16, "n" * 254)], ids=["1100-nested", "long-names"])
def test_cli_unstageable_workspace_is_a_verdict_not_a_traceback(depth, name, tmp_path, sandbox_image):
    workspace = write_tree(tmp_path / "ws", CASES["control_pass"][0])
    _deep_tree(workspace, depth, name)
    try:
        out = subprocess.run(RSI + ["sandbox", "run", str(workspace), "--json"], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
    finally:
        _rm_deep(workspace)
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 1 and report["verdict"] == "error", report
    assert "stage" in report["reasons"][0] or "deeper" in report["reasons"][0]


@pytest.mark.docker
def test_cli_human_output_escapes_control_characters(tmp_path, sandbox_image):
    workspace = write_tree(tmp_path / "ws", CASES["hostile_ansi_ids"][0])
    out = subprocess.run(RSI + ["sandbox", "run", str(workspace)], cwd=ROOT, capture_output=True, timeout=300)
    assert out.returncode == 1 and b"\x1b[2K" not in out.stdout and b"\x1b[1A" not in out.stdout
    assert out.stdout.startswith(b"FAIL") or b"FAIL" in out.stdout


@pytest.mark.docker
def test_sweep_removes_containers_of_dead_runs(docker_client, sandbox_image):
    import socket

    dead = docker_client.containers.create(
        sandbox_image, labels={LABEL: "1", LABEL_PID: "999999999", LABEL_HOST: socket.gethostname()})
    alive = docker_client.containers.create(
        sandbox_image, labels={LABEL: "1", LABEL_PID: str(os.getpid()), LABEL_HOST: socket.gethostname()})
    try:
        assert sweep_leftovers(docker_client) >= 1
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(dead.id)
        docker_client.containers.get(alive.id)  # a live run's container is left alone
    finally:
        alive.remove(force=True)


@pytest.mark.docker
def test_ctrl_c_removes_the_container(tmp_path, sandbox_image, docker_client):
    workspace = write_tree(tmp_path / "ws", CASES["cage_sleep"][0])
    # A job started in the background by a non-interactive shell (as CI may be) inherits SIGINT
    # *ignored*, and Python then keeps ignoring it: give the CLI the default disposition, as a terminal would.
    proc = subprocess.Popen(RSI + ["sandbox", "run", str(workspace), "--timeout", "60"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    label = f"{LABEL_PID}={proc.pid}"
    deadline = time.time() + 30
    while time.time() < deadline and not docker_client.containers.list(filters={"label": label}):
        time.sleep(0.1)
    (container,) = docker_client.containers.list(filters={"label": label})
    while time.time() < deadline and not container.attrs["State"].get("Running"):
        container.reload()  # the CLI is waiting on a running container: interrupt it now
    assert container.attrs["State"].get("Running"), "the sandbox never ran"
    proc.send_signal(signal.SIGINT)
    try:  # well before the sandbox's own 60 s timeout, so a swallowed Ctrl-C cannot pass
        _, err = proc.communicate(timeout=50)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"rsi sandbox run ignored Ctrl-C for 50 s; stderr: {err[-3000:]!r}")
    assert proc.returncode != 0 and b"Aborted" in err, err[-2000:]
    assert docker_client.containers.list(all=True, filters={"label": label}) == []


@pytest.mark.docker
def test_interrupt_between_engine_create_and_return_leaves_no_container(tmp_path, sandbox_image, docker_client,
                                                                         monkeypatch):
    """Ctrl-C can land after the engine created the container but before create() returned it."""
    from orchestrator.sandbox import container as sandbox

    real = sandbox._create

    def create_then_interrupt(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(sandbox, "_create", create_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_tests(write_tree(tmp_path / "ws", CASES["control_pass"][0]), client=docker_client)
    assert docker_client.containers.list(all=True, filters={"label": f"{LABEL_PID}={os.getpid()}"}) == []


@pytest.mark.docker
def test_parallel_runs_are_independent(tmp_path, sandbox_image, docker_client):
    names = ["control_pass", "control_fail", "hack_os_exit_at_import", "control_pass"]
    spaces = [write_tree(tmp_path / f"ws{i}", CASES[n][0]) for i, n in enumerate(names)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda w: run_tests(w, client=docker_client), spaces))
    assert [r.verdict for r in results] == [CASES[n][1] for n in names]


@pytest.mark.docker
@pytest.mark.parametrize("skips,files,code,verdict", [
    (None, {"test_a.py": "import pytest\ndef test_ok():\n    pass\n@pytest.mark.skip('not here')\n"
                         "def test_s():\n    pass\n"}, 0, "pass"),
    ("strict", {"test_a.py": "import pytest\ndef test_ok():\n    pass\n@pytest.mark.skip('not here')\n"
                             "def test_s():\n    pass\n"}, 1, "fail"),
    (None, {"test_a.py": "import pytest\ndef test_bad():\n    assert False\n@pytest.mark.skip('x')\n"
                         "def test_s():\n    pass\n"}, 1, "fail"),          # a failure still fails
    (None, {"test_a.py": "import pytest\n@pytest.mark.skip('x')\ndef test_s():\n    pass\n"}, 1, "fail"),  # nothing ran
    ("maybe", {"test_a.py": "def test_ok():\n    pass\n"}, 1, "error"),      # a bad switch is one clear reason
])
def test_standalone_skip_rule(skips, files, code, verdict, tmp_path, docker_client, sandbox_image):
    """RSI_SKIPS standalone: `pytest` (the default) reports skips without failing; `strict` fails."""
    workspace = write_tree(tmp_path / "ws", files)
    os.chmod(tmp_path, 0o755)
    container = docker_client.containers.run(
        sandbox_image, detach=True, volumes={str(workspace): {"bind": "/workspace", "mode": "ro"}},
        network_mode="none", environment={"RSI_SKIPS": skips} if skips else {},
        labels={LABEL: "1", LABEL_PID: str(os.getpid())})
    try:
        status = container.wait(timeout=60)["StatusCode"]
        report = json.loads(container.logs(stdout=True, stderr=False).decode().strip().splitlines()[-1])
    finally:
        container.remove(force=True)
    assert (status, report["verdict"]) == (code, verdict), report
    if verdict == "error":
        assert "RSI_SKIPS" in report["reasons"][0]
    if skips is None and verdict == "pass":
        assert report["skipped"] == 1 and report["passed"] == 1 and report["excused"] == ["test_a.py::test_s"]
