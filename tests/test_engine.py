"""The managed server's life cycle (orchestrator/models/engine.py) with stand-in server programs: start-up
errors, stop of the whole process group, a crash of the owner, stale servers of killed runs.
The real vLLM server is exercised in test_vllm_backend.py."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.models import engine
from orchestrator.models.engine import Engine, EngineError, EngineSpec

# A stand-in for `python -m vllm.entrypoints.openai.api_server ... --port P`: starts a child
# process (as vLLM starts its engine core), answers /health, and on SIGTERM stops its child and
# exits (as vLLM does).
FAKE_SERVER = textwrap.dedent("""
    import http.server, signal, subprocess, sys
    port = int(sys.argv[sys.argv.index("--port") + 1])
    child = subprocess.Popen(["sleep", "300"])
    def term(*_):
        child.terminate(); child.wait(); sys.exit(0)
    signal.signal(signal.SIGTERM, term)
    open(sys.argv[sys.argv.index("--model") + 1] + "/child.pid", "w").write(str(child.pid))
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404); self.end_headers()
        def log_message(self, *a): pass
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
""")


def fake_python(tmp_path: Path, body: str) -> Path:
    """An executable taking vLLM's command line (``-m module args...``) and running ``body``."""
    script = tmp_path / "fake.py"
    script.write_text(body)
    exe = tmp_path / "python"
    exe.write_text(f'#!/bin/sh\nshift 2\nexec {sys.executable} {script} "$@"\n')
    exe.chmod(0o755)
    return exe


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RSI_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_not_installed_model_missing_and_port_taken(tmp_path, model_dir):
    with pytest.raises(EngineError, match="vLLM is not installed"):
        Engine(EngineSpec(model_dir, python=tmp_path / "nope")).start(say=lambda _: None)
    exe = fake_python(tmp_path, FAKE_SERVER)
    with pytest.raises(EngineError, match=r"model missing: .* \(no config.json\)"):
        Engine(EngineSpec(tmp_path / "absent", python=exe)).start(say=lambda _: None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(EngineError, match=f"port {port} on 127.0.0.1 is taken"):
            Engine(EngineSpec(model_dir, port=port, python=exe)).start(say=lambda _: None)


def test_death_during_start_up_names_the_log_tail(tmp_path, model_dir):
    exe = fake_python(tmp_path, 'import sys\nprint("loading")\n'
                                'print("RuntimeError: operator torchvision::nms does not exist")\nsys.exit(3)\n')
    with pytest.raises(EngineError) as err:
        Engine(EngineSpec(model_dir, python=exe)).start(say=lambda _: None)
    message = str(err.value)
    assert "exited with code 3 during start-up" in message and "torchvision::nms" in message
    assert "\n" not in message


def test_health_timeout_stops_the_server(tmp_path, model_dir):
    exe = fake_python(tmp_path, 'import subprocess, sys, time\n'
                                'open(sys.argv[sys.argv.index("--model") + 1] + "/child.pid", "w")'
                                '.write(str(subprocess.Popen(["sleep", "300"]).pid))\ntime.sleep(300)\n')
    eng = Engine(EngineSpec(model_dir, python=exe, startup_timeout_s=1))
    with pytest.raises(EngineError, match="did not answer /health within 1 s"):
        eng.start(say=lambda _: None)
    assert eng.proc is None and wait_gone(int((model_dir / "child.pid").read_text()))
    assert not list((engine.state_dir()).glob("*.json"))


def test_start_progress_and_stop_of_the_whole_group(tmp_path, model_dir):
    lines = []
    eng = Engine(EngineSpec(model_dir, python=fake_python(tmp_path, FAKE_SERVER))).start(say=lines.append)
    pid, child = eng.proc.pid, int((model_dir / "child.pid").read_text())
    assert lines[0].startswith("vLLM: starting on model") and lines[-1].startswith("vLLM: ready in")
    record = json.loads((engine.state_dir() / f"{pid}.json").read_text())
    assert record["owner"] == os.getpid() and record["port"] == eng.port
    eng.stop()
    assert not alive(pid) and wait_gone(child)
    assert not (engine.state_dir() / f"{pid}.json").exists()


def test_a_killed_owner_takes_its_server_along(tmp_path, model_dir):
    """SIGKILL of the process that started the server: the kernel's parent-death signal stops it."""
    exe = fake_python(tmp_path, FAKE_SERVER)
    code = ("import sys, time; from pathlib import Path; from orchestrator.models.engine import Engine, EngineSpec; "
            f"e = Engine(EngineSpec(Path({str(model_dir)!r}), python=Path({str(exe)!r}))).start(say=lambda _: None); "
            "print(e.proc.pid, flush=True); time.sleep(300)")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parent.parent, env=os.environ.copy())
    server = int(owner.stdout.readline())
    child = int((model_dir / "child.pid").read_text())
    guard = Path(json.loads((engine.state_dir() / f"{server}.json").read_text())["guard"])
    owner.kill()
    owner.wait()
    assert wait_gone(server) and wait_gone(child)
    assert guard.exists() and engine.reap_stale() == []  # the next start clears what the killed run left
    assert not guard.exists() and not list(engine.state_dir().glob("*.json"))


def test_a_stale_server_of_a_killed_run_is_stopped(tmp_path, model_dir):
    """A server whose owner is gone (recorded pid file) is found and stopped at the next start."""
    stale = subprocess.Popen(["sleep", "300"], start_new_session=True)
    dead_owner = subprocess.Popen(["true"])
    dead_owner.wait()
    folder = engine.state_dir()
    folder.mkdir(parents=True)
    (folder / f"{stale.pid}.json").write_text(json.dumps({
        "pid": stale.pid, "start": engine._proc_start_time(stale.pid), "cmdline": engine._cmdline(stale.pid),
        "owner": dead_owner.pid, "owner_start": "0", "port": 1, "log": ""}))
    # a record of a live owner is left alone
    live = subprocess.Popen(["sleep", "300"], start_new_session=True)
    (folder / f"{live.pid}.json").write_text(json.dumps({
        "pid": live.pid, "start": engine._proc_start_time(live.pid), "cmdline": engine._cmdline(live.pid),
        "owner": os.getpid(), "owner_start": engine._proc_start_time(os.getpid()), "port": 2, "log": ""}))
    said = []
    try:
        assert engine.reap_stale(said.append) == [stale.pid]
        stale.wait(timeout=20)
        assert "stale vLLM server" in said[0] and not (folder / f"{stale.pid}.json").exists()
        assert live.poll() is None and (folder / f"{live.pid}.json").exists()
    finally:
        for p in (stale, live):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_the_key_reaches_the_server_only_through_its_environment(tmp_path, model_dir, monkeypatch):
    """Issue 24: each start has a new random key; the server gets it in its environment (root-only in
    /proc) with the guard module alone on its import path, never on its command line (world-readable),
    in its record or its log; the client's own RSI_VLLM_API_KEY is not passed on; the state directory
    and the log are private; the key and the guard's directory go at stop."""
    monkeypatch.setenv("RSI_VLLM_API_KEY", "the-clients-key")
    exe = fake_python(tmp_path, FAKE_SERVER)
    keys = []
    for _ in range(2):
        eng = Engine(EngineSpec(model_dir, python=exe)).start(say=lambda _: None)
        pid, key = eng.proc.pid, eng.api_key
        keys.append(key)
        try:
            assert len(key) >= 40 and engine.api_key_for(eng.base_url) == key == engine.api_key_for(eng.url + "/")
            assert eng.headers == {"Authorization": f"Bearer {key}"}
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert key.encode() not in cmdline and b"--middleware\0rsi_vllm_guard.Guard" in cmdline
            env = dict(v.split(b"=", 1) for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in v)
            assert env[b"VLLM_API_KEY"] == key.encode() and b"RSI_VLLM_API_KEY" not in env
            guard_dir = Path(env[b"PYTHONPATH"].decode())
            assert [p.name for p in guard_dir.iterdir()] == ["rsi_vllm_guard.py"]
            assert (guard_dir / "rsi_vllm_guard.py").read_bytes() == engine.GUARD.read_bytes()
            assert guard_dir.stat().st_mode & 0o077 == 0 and guard_dir.stat().st_uid == os.geteuid()
            folder = engine.state_dir()
            assert folder.stat().st_mode & 0o777 == 0o700 and eng.log_path.stat().st_mode & 0o777 == 0o600
            assert key not in (folder / f"{pid}.json").read_text() and key not in eng.log_path.read_text()
        finally:
            eng.stop()
        assert not guard_dir.exists() and engine.api_key_for(eng.base_url) == "the-clients-key"
    assert keys[0] != keys[1]
    monkeypatch.delenv("RSI_VLLM_API_KEY")
    eng = Engine(EngineSpec(model_dir, python=exe, api_key="chosen")).start(say=lambda _: None)
    try:
        assert eng.api_key == "chosen" and engine.api_key_for(eng.base_url) == "chosen"
        assert "chosen" not in repr(eng.spec)
    finally:
        eng.stop()
    assert engine.api_key_for(eng.base_url) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_state_directory_of_another_user_is_refused(tmp_path, model_dir):
    folder = engine.state_dir()
    folder.mkdir(parents=True)
    os.chown(folder, 65534, 65534)
    with pytest.raises(EngineError, match="belongs to another user"):
        Engine(EngineSpec(model_dir, python=fake_python(tmp_path, FAKE_SERVER))).start(say=lambda _: None)
