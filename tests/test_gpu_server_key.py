"""Issue 24 on the GPU profile (orchestrator/models/gpu.py), without a GPU: the vLLM container gets a
random key in its environment (not its command line), the vllm backend finds it through
engine.api_key_for, and sleep/wake around a burst send it (the venv server's guard refuses them
otherwise)."""

from orchestrator.models import engine, gpu
from orchestrator.models.gpu import GpuSection
from tests.test_gpu_profile import FakeContainer, FakeContainers, _health_server


def test_the_container_server_has_a_key_in_its_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("RSI_VLLM_API_KEY", raising=False)
    srv = _health_server()
    try:
        client = type("C", (), {})()
        client.containers = FakeContainers(FakeContainer(["running"]))
        server = gpu.ContainerServer(client, GpuSection(), tmp_path / "model", tmp_path / "run",
                                     port=srv.server_address[1]).start(say=lambda line: None, poll_s=0.05)
        kw = client.containers.run_kwargs
        key = server.api_key
        assert len(key) >= 40 and kw["environment"]["VLLM_API_KEY"] == key
        assert not any(key in arg for arg in kw["command"])
        # the guard on every other path (SageMaker's /adapters loads adapters too), as on the CPU engine
        assert kw["command"][kw["command"].index("--middleware") + 1] == "rsi_vllm_guard.Guard"
        assert kw["volumes"][str(engine.GUARD)] == {"bind": "/rsi-guard/rsi_vllm_guard.py", "mode": "ro"}
        assert kw["environment"]["PYTHONPATH"] == "/rsi-guard"
        assert engine.api_key_for(server.base_url) == key == engine.api_key_for(server.root_url)
        server.stop()
        assert engine.api_key_for(server.base_url) is None
    finally:
        srv.shutdown()
    assert "VLLM_API_KEY" not in gpu.container_kwargs(GpuSection(), tmp_path, tmp_path, 1)["environment"]
    kept = gpu.container_kwargs(GpuSection(), tmp_path, tmp_path, 1, api_key="k", image_pythonpath="/opt/x")
    assert kept["environment"]["PYTHONPATH"] == "/rsi-guard:/opt/x"  # the image's own path stays

    class Images:
        def get(self, name):
            return type("I", (), {"attrs": {"Config": {"Env": ["PATH=/bin", "PYTHONPATH=/workspace"]}}})()

    assert gpu.image_env(type("C", (), {"images": Images()})(), "img", "PYTHONPATH") == "/workspace"
    assert gpu.image_env(object(), "img", "PYTHONPATH") == ""


def test_sleep_and_wake_carry_the_key(monkeypatch):
    calls = []

    class Http:
        def post(self, url, params=None, timeout=None, headers=None):
            calls.append((url.rsplit("/", 1)[1], headers))
            return type("R", (), {"status_code": 200})()

    monkeypatch.delenv("RSI_VLLM_API_KEY", raising=False)
    engine.remember_key("http://127.0.0.1:9", "secret")
    try:
        with gpu.server_asleep("http://127.0.0.1:9", GpuSection(memory="sleep"), session=Http()):
            pass
    finally:
        engine.forget_key("http://127.0.0.1:9", "secret")
    assert calls == [("sleep", {"Authorization": "Bearer secret"}), ("wake_up", {"Authorization": "Bearer secret"})]
