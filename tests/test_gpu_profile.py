"""The GPU profile's configuration, run on the CPU (issue 15): detection, the one-line error, the vLLM
GPU command line and container arguments, the memory plan and sleep mode, the trainer's GPU config."""

import json
from pathlib import Path

import pytest

from orchestrator.models import gpu
from orchestrator.models.engine import EngineSpec
from orchestrator.models.gpu import GpuProfileError, GpuSection


class FakeClient:
    def __init__(self, runtimes):
        self.runtimes = runtimes
        self.calls = 0

    def info(self):
        self.calls += 1
        return {"Runtimes": self.runtimes}


@pytest.fixture(autouse=True)
def no_gpu_override(monkeypatch):
    monkeypatch.delenv("RSI_GPU", raising=False)  # conftest sets it to off for the rest of the suite


NVIDIA = {"runc": {"path": "runc"}, "nvidia": {"path": "nvidia-container-runtime"}}
PLAIN = {"runc": {"path": "runc"}, "io.containerd.runc.v2": {"path": "runc"}}


def test_detection_reads_the_engine_runtimes():
    assert gpu.nvidia_runtime(FakeClient(NVIDIA))
    assert gpu.nvidia_runtime(FakeClient({"nvidia-cdi": {}}))
    assert not gpu.nvidia_runtime(FakeClient(PLAIN))
    assert not gpu.nvidia_runtime(FakeClient(None))


def test_auto_follows_the_runtime_and_never_fails():
    auto = GpuSection()
    assert gpu.resolve(None, auto, connect=lambda: FakeClient(NVIDIA)) is True
    assert gpu.resolve(None, auto, connect=lambda: FakeClient(PLAIN)) is False

    def no_docker():
        raise RuntimeError("no Docker daemon")

    assert gpu.resolve(None, auto, connect=no_docker) is False  # the CPU path, unchanged


def test_gpu_without_runtime_is_one_clear_error():
    for flag, section in ((True, GpuSection()), (None, GpuSection(enabled="on"))):
        with pytest.raises(GpuProfileError) as err:
            gpu.resolve(flag, section, connect=lambda: FakeClient(PLAIN))
        message = str(err.value)
        assert "\n" not in message and "NVIDIA Container Toolkit" in message and "--gpu" in message
    with pytest.raises(GpuProfileError, match="cannot be reached"):
        gpu.resolve(True, GpuSection(), connect=lambda: (_ for _ in ()).throw(RuntimeError("refused")))


def test_off_never_asks_docker():
    client = FakeClient(NVIDIA)
    assert gpu.resolve(False, GpuSection(enabled="on"), connect=lambda: client) is False
    assert gpu.resolve(None, GpuSection(enabled="off"), connect=lambda: client) is False
    assert client.calls == 0


def test_vllm_gpu_command_line():
    fraction = GpuSection(gpu_memory_utilization=0.45)
    args = gpu.vllm_gpu_args(fraction)
    assert args[:2] == ["--gpu-memory-utilization", "0.45"] and "--enable-sleep-mode" not in args
    assert "--enable-sleep-mode" in gpu.vllm_gpu_args(GpuSection(memory="sleep"))
    cmd = gpu.server_command(fraction, Path("/models/gpt-oss-20b"), 8123)
    assert cmd[:2] == ["--model", "/models/gpt-oss-20b"] and "--enable-lora" in cmd
    assert cmd[cmd.index("--max-model-len") + 1] == "8192" and cmd[cmd.index("--port") + 1] == "8123"
    # the managed engine (orchestrator/models/engine.py) takes them as extra_args
    spec = EngineSpec(Path("/models/gpt-oss-20b"), extra_args=args, python=Path("/opt/vllm-gpu/bin/python"))
    full = spec.command(9000)
    assert full[0] == "/opt/vllm-gpu/bin/python" and full[-len(args):] == args
    assert gpu.server_env(fraction).get("VLLM_SERVER_DEV_MODE") is None
    assert gpu.server_env(GpuSection(memory="sleep"))["VLLM_SERVER_DEV_MODE"] == "1"


def test_vllm_container_arguments(tmp_path):
    model, adapters = tmp_path / "model", tmp_path / "adapters"
    model.mkdir()
    adapters.mkdir()
    kw = gpu.container_kwargs(GpuSection(memory="sleep"), model, adapters, 8181)
    assert kw["image"] == f"vllm/vllm-openai:v{gpu.VLLM_VERSION}"
    assert kw["device_requests"][0]["Capabilities"] == [["gpu"]] and kw["device_requests"][0]["Count"] == -1
    assert kw["volumes"][str(model.resolve())] == {"bind": "/model", "mode": "ro"}
    assert kw["volumes"][str(adapters.resolve())] == {"bind": str(adapters.resolve()), "mode": "ro"}
    assert kw["ports"] == {"8000/tcp": ("127.0.0.1", 8181)}
    assert "--enable-sleep-mode" in kw["command"] and kw["command"][kw["command"].index("--host") + 1] == "0.0.0.0"
    assert kw["environment"]["HF_HUB_OFFLINE"] == "1" and kw["environment"]["VLLM_SERVER_DEV_MODE"] == "1"


def test_memory_plan():
    plan = gpu.memory_plan(GpuSection(), 80)  # H100 80 GB, vLLM at 0.5
    assert plan.server_gib == 40 and plan.trainer_gib >= 14
    with pytest.raises(GpuProfileError, match='memory = "sleep"'):
        gpu.memory_plan(GpuSection(), 24)  # a 24 GB card cannot hold both at once
    plan = gpu.memory_plan(GpuSection(memory="sleep", gpu_memory_utilization=0.9), 24)
    assert plan.mode == "sleep" and plan.trainer_gib >= 14
    with pytest.raises(GpuProfileError, match="too small"):
        gpu.memory_plan(GpuSection(memory="sleep", gpu_memory_utilization=0.95), 16)
    with pytest.raises(GpuProfileError, match="gpu_memory_utilization"):
        gpu.memory_plan(GpuSection(gpu_memory_utilization=0.1), 80)
    with pytest.raises(GpuProfileError, match="no VRAM figures"):
        gpu.memory_plan(GpuSection(model="someone/unknown"), 80)


class FakeHttp:
    def __init__(self, status=200):
        self.calls, self.status = [], status

    def post(self, url, params=None, timeout=None):
        self.calls.append((url.rsplit("/", 1)[1], params))
        return type("R", (), {"status_code": self.status})()


def test_sleep_mode_wraps_a_burst_and_always_wakes():
    http = FakeHttp()
    with gpu.server_asleep("http://127.0.0.1:9", GpuSection(memory="sleep"), session=http):
        assert http.calls == [("sleep", {"level": "1"})]
    assert http.calls[-1] == ("wake_up", None)
    http = FakeHttp()
    with pytest.raises(ValueError):
        with gpu.server_asleep("http://x", GpuSection(memory="sleep"), session=http):
            raise ValueError("training failed")
    assert [c[0] for c in http.calls] == ["sleep", "wake_up"]
    http = FakeHttp()
    with gpu.server_asleep("http://x", GpuSection(), session=http):  # fraction: nothing to do
        pass
    assert http.calls == []
    with pytest.raises(GpuProfileError, match="enable-sleep-mode"):
        with gpu.server_asleep("http://x", GpuSection(memory="sleep"), session=FakeHttp(404)):
            pass


def test_gpt_oss_request_options_and_detection(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_oss"}))
    assert gpu.is_gpt_oss(tmp_path) and gpu.is_gpt_oss("unsloth/gpt-oss-20b")
    assert gpu.request_options(GpuSection(reasoning_effort="medium"), tmp_path) == {"reasoning_effort": "medium",
                                                                                   "response_format": None}
    assert gpu.request_options(GpuSection(structured_output=True), tmp_path) == {"reasoning_effort": "low"}
    assert gpu.request_options(GpuSection(), "HuggingFaceTB/SmolLM2-135M-Instruct") == {}


def test_trainer_config_on_the_gpu():
    from orchestrator.training.runner.config import TrainConfig

    cfg = gpu.trainer_config(GpuSection(max_lora_rank=8), TrainConfig(lora_r=16, optim="adamw_torch"))
    assert cfg.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"] and cfg.lora_r == 8
    assert cfg.load_in_4bit is None and cfg.optim is None  # the trainer's GPU defaults: 4-bit, adamw_8bit
    assert cfg.packing is None and cfg.group_by_length is None  # packing / length grouping on the GPU


def test_apply_points_the_engine_at_the_gpu_server(tmp_path):
    from orchestrator.config import RunConfig

    config = RunConfig.load()
    assert config.gpu.enabled == "auto" and config.gpu.model == "unsloth/gpt-oss-20b"
    config.engine.extra_args = ["--enforce-eager"]  # the user's own flags stay
    gpu.apply(config, tmp_path)
    gpu.apply(config, tmp_path)  # idempotent (a resumed run)
    assert config.run.backend == "vllm" and config.engine.model == str(tmp_path)
    assert config.engine.extra_args.count("--gpu-memory-utilization") == 1
    assert config.engine.extra_args[-1] == "--enforce-eager" and config.engine.max_model_len == 8192


def test_missing_model_names_the_command(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(GpuProfileError, match=r"rsi models pull unsloth/gpt-oss-20b"):
        gpu.resolve_model(GpuSection())


# --- the GPU trainer image (no registry) and its container ---

def test_gpu_trainer_image_build_arguments():
    from orchestrator.sandbox import images

    debian = images.TRAINER_OFFLINE_BASE
    assert images.trainer_build_args("gpu") == {"BASE_IMAGE": debian, "VARIANT": "gpu"}
    assert images.trainer_build_args("cpu") == {"BASE_IMAGE": debian, "VARIANT": "cpu"}  # the same base
    cuda = "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04"
    assert images.trainer_build_args("gpu", cuda) == {"BASE_IMAGE": cuda, "VARIANT": "gpu"}  # registry option
    with pytest.raises(ValueError):
        images.trainer_build_args("tpu")
    assert images.wheelhouse_dir("gpu") != images.wheelhouse_dir("cpu")  # a CPU and a CUDA torch never mix


def _build_wheelhouse():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "trainer_image" / "build_wheelhouse.py"
    spec = importlib.util.spec_from_file_location("build_wheelhouse", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_wheelhouse_is_pypi_cuda_torch_for_the_debian_python():
    bw = _build_wheelhouse()
    cmd = bw.download_command("gpu", python="python3")
    assert cmd[cmd.index("--python-version") + 1] == "3.11"  # bookworm's python3
    assert "--no-deps" not in cmd and "--only-binary=:all:" in cmd and "manylinux_2_28_x86_64" in cmd
    assert cmd[cmd.index("-d") + 1].endswith("wheelhouse-gpu") and cmd[cmd.index("-r") + 1].endswith("requirements-gpu.txt")
    assert "--index-url" not in " ".join(cmd)  # PyPI's torch is the CUDA build: no extra index
    assert bw.download_command("gpu", "3.12", python="python3")[cmd.index("--python-version") + 1] == "3.12"
    cpu = bw.download_command("cpu", python="python3")
    assert "--no-deps" in cpu and "--platform" not in cpu
    pins = {ln.split("==")[0]: ln.split("==")[1] for ln in (Path(bw.HERE) / "requirements-gpu.txt").read_text().splitlines()
            if "==" in ln and not ln.startswith("#")}
    cpu_pins = {ln.split("==")[0]: ln.split("==")[1] for ln in (Path(bw.HERE) / "requirements-cpu.txt").read_text().splitlines()
                if "==" in ln and not ln.startswith("#")}
    assert pins["torch"] == cpu_pins["torch"] and pins["unsloth"] == cpu_pins["unsloth"]
    assert {"bitsandbytes", "triton", "trl", "peft"} <= set(pins)


class FakeImages:
    def __init__(self, present):
        self.present, self.built = set(present), []

    def get(self, ref):
        import docker

        if ref not in self.present:
            raise docker.errors.ImageNotFound(ref)
        return type("Img", (), {"id": "sha256:" + ref, "labels": {}})()

    def build(self, **kwargs):
        kwargs["fileobj"].read()
        self.built.append(kwargs)


def test_build_trainer_image_gpu_uses_the_debian_base_and_its_own_wheelhouse(tmp_path, monkeypatch):
    from orchestrator.sandbox import images

    req = Path(images.REPO_ROOT / "trainer_image" / "requirements-gpu.txt").read_text().splitlines()
    for line in req:
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            (tmp_path / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"x")
    monkeypatch.setattr(images, "GPU_WHEELHOUSE", tmp_path)
    client = type("Client", (), {})()
    client.images = FakeImages({images.TRAINER_OFFLINE_BASE})
    assert images.build_trainer_image(client, "gpu") == "rsi-trainer:gpu"
    build = client.images.built[0]
    assert build["buildargs"] == {"BASE_IMAGE": images.TRAINER_OFFLINE_BASE, "VARIANT": "gpu"}
    assert build["tag"] == "rsi-trainer:gpu" and build["dockerfile"] == "trainer_image/Dockerfile"
    (tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"x")
    with pytest.raises(RuntimeError, match="holds a CPU torch"):
        images.build_trainer_image(client, "gpu")
    monkeypatch.setattr(images, "GPU_WHEELHOUSE", tmp_path / "empty")
    with pytest.raises(RuntimeError, match="make trainer-gpu-image"):
        images.build_trainer_image(client, "gpu")


def test_gpu_trainer_container_requests_the_gpu_and_the_driver(tmp_path):
    from orchestrator.training.launcher import TrainerLimits, container_kwargs

    args = ("rsi-trainer:gpu", tmp_path / "s.jsonl", tmp_path / "c.json", tmp_path / "m", tmp_path / "o", TrainerLimits())
    kw = container_kwargs(*args, gpu=True)
    assert kw["device_requests"][0]["Capabilities"] == [["gpu"]]
    assert kw["environment"]["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert kw["network_mode"] == "none" and kw["read_only"]
    cpu = container_kwargs(*args, gpu=False)
    assert "device_requests" not in cpu and "NVIDIA_DRIVER_CAPABILITIES" not in cpu["environment"]


def test_trainer_and_sandbox_containers_share_one_hardening(tmp_path):
    """The hardening (no network, read-only root, capabilities dropped, no privilege gain, memory without
    swap, pid cap, capped /tmp, no engine log) is spelled once (container.hardened); both kinds of
    container carry all of it with their own limits."""
    from orchestrator.sandbox.container import SandboxLimits, container_settings, hardened
    from orchestrator.training.launcher import TrainerLimits, container_kwargs

    tl = TrainerLimits(cpus=2)
    kw = container_kwargs("rsi-trainer:cpu", tmp_path / "s.jsonl", tmp_path / "c.json", tmp_path / "m",
                          tmp_path / "o", tl, gpu=False)
    want = hardened(tl.memory, tl.pids, f"size={tl.tmpfs_size},mode=1777", tl.cpus)
    assert {k: kw[k] for k in want} == want and kw["nano_cpus"] == 2 * 10**9
    assert {"network_mode", "read_only", "cap_drop", "security_opt", "memswap_limit", "log_config"} <= set(want)
    sl = SandboxLimits.load()
    cs = container_settings(sl)
    want = hardened(sl.memory, sl.pids, cs["tmpfs"]["/tmp"], sl.cpus)
    # The sandbox adds one mount to the shared ones: the judge's private tmpfs (its UID's alone, 0700).
    assert {k: cs[k] for k in want if k != "tmpfs"} == {k: v for k, v in want.items() if k != "tmpfs"}
    assert cs["tmpfs"]["/tmp"] == want["tmpfs"]["/tmp"] and "noexec" in cs["tmpfs"]["/tmp"]
    assert set(cs["tmpfs"]) == {"/tmp", "/rsi-judge"} and "mode=0700,uid=" in cs["tmpfs"]["/rsi-judge"]
    # judge_user "auto": a fresh UID per container, that no host account or process has
    uids = {container_settings(sl)["tmpfs"]["/rsi-judge"].split("uid=")[1].split(",")[0] for _ in range(5)}
    assert len(uids) == 5 and all(int(u) >= 1_000_000_000 for u in uids)


def test_has_runtime_entry_point():
    assert gpu.main(["--bogus"]) == 2
    assert gpu.main(["--has-runtime"]) in (0, 1)


# --- the container server and turning the profile on (fakes: no GPU, no vLLM image here) ---

class FakeContainer:
    def __init__(self, statuses):
        self.statuses, self.status, self.removed = list(statuses), "created", False

    def reload(self):
        if self.statuses:
            self.status = self.statuses.pop(0)

    def logs(self, tail=3):
        return b"RuntimeError: CUDA driver version is insufficient\n"

    def remove(self, force=False):
        self.removed = True


class FakeContainers:
    def __init__(self, container, stale=()):
        self.container, self.stale, self.run_kwargs = container, list(stale), None

    def list(self, all=False, filters=None):
        assert filters == {"label": gpu.LABEL}
        return self.stale

    def run(self, **kwargs):
        self.run_kwargs = kwargs
        return self.container


def _health_server():
    import http.server
    import threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_container_server_starts_waits_for_health_and_is_removed(tmp_path):
    srv = _health_server()
    try:
        stale = FakeContainer([])
        client = type("C", (), {})()
        client.containers = FakeContainers(FakeContainer(["running"]), stale=[stale])
        server = gpu.ContainerServer(client, GpuSection(), tmp_path / "model", tmp_path / "run",
                                     port=srv.server_address[1])
        server.start(say=lambda line: None, poll_s=0.05)
        assert stale.removed  # left by a killed run
        assert client.containers.run_kwargs["ports"] == {"8000/tcp": ("127.0.0.1", srv.server_address[1])}
        assert server.base_url == f"http://127.0.0.1:{srv.server_address[1]}/v1"
        container = server.container
        server.stop()
        assert container.removed and server.container is None
    finally:
        srv.shutdown()


def test_container_server_that_dies_is_one_line_and_removed(tmp_path):
    container = FakeContainer(["exited"])
    client = type("C", (), {})()
    client.containers = FakeContainers(container)
    with pytest.raises(GpuProfileError, match="exited during start-up: RuntimeError: CUDA driver"):
        gpu.ContainerServer(client, GpuSection(), tmp_path, tmp_path, port=9).start(say=lambda line: None)
    assert container.removed


def test_activate_off_changes_nothing(tmp_path):
    from orchestrator.config import RunConfig

    config = RunConfig.load()
    before = config.model_dump()
    assert gpu.activate(config, None, tmp_path, connect=lambda: FakeClient(PLAIN)) is None
    assert config.gpu.enabled == "off"
    after = config.model_dump()
    after["gpu"]["enabled"] = before["gpu"]["enabled"]
    assert after == before


def test_activate_on_with_a_venv_server(tmp_path, monkeypatch):
    from orchestrator.config import RunConfig

    model = tmp_path / "gpt-oss-20b"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "gpt_oss"}')
    python = tmp_path / "venv" / "bin" / "python"
    config = RunConfig.load()
    config.gpu.model, config.gpu.server = str(model), "venv"
    config.gpu.vllm_python = str(python)
    with pytest.raises(GpuProfileError, match="make vllm-gpu"):
        gpu.activate(config, True, tmp_path, connect=lambda: FakeClient(NVIDIA))
    python.parent.mkdir(parents=True)
    python.write_text("")
    monkeypatch.setattr(gpu, "card_memory_gib", lambda: 24.0)
    config.gpu.model = "unsloth/gpt-oss-20b"
    monkeypatch.setattr(gpu, "resolve_model", lambda section: model)
    with pytest.raises(GpuProfileError, match='memory = "sleep"'):  # checked before anything starts
        gpu.activate(config, True, tmp_path, connect=lambda: FakeClient(NVIDIA))
    monkeypatch.setattr(gpu, "card_memory_gib", lambda: 80.0)
    monkeypatch.setenv("RSI_VLLM_PYTHON", "restored-after-the-test")
    said = []
    assert gpu.activate(config, True, tmp_path, connect=lambda: FakeClient(NVIDIA), say=said.append) is None
    assert said == ["GPU profile: unsloth/gpt-oss-20b on a 80 GiB card, memory = fraction: vLLM 40 GiB, "
                    "trainer up to 38 GiB"]
    import os

    assert os.environ["RSI_VLLM_PYTHON"] == str(python)
    monkeypatch.delenv("VLLM_SERVER_DEV_MODE", raising=False)
    config.gpu.memory, config.gpu.gpu_memory_utilization = "sleep", 0.9
    gpu.activate(config, True, tmp_path, connect=lambda: FakeClient(NVIDIA), say=said.append)
    assert os.environ["VLLM_SERVER_DEV_MODE"] == "1"  # /sleep and /wake_up on the venv server
    assert "--enable-sleep-mode" in config.engine.extra_args
    assert config.engine.extra_args.count("--gpu-memory-utilization") == 1 and "0.9" in config.engine.extra_args
    assert config.gpu.enabled == "on" and config.run.backend == "vllm" and config.engine.model == str(model)
    assert "--gpu-memory-utilization" in config.engine.extra_args


def test_activate_gpu_flag_without_runtime_fails_before_anything(tmp_path):
    from orchestrator.config import RunConfig

    with pytest.raises(GpuProfileError, match="no NVIDIA runtime"):
        gpu.activate(RunConfig.load(), True, tmp_path, connect=lambda: FakeClient(PLAIN))


def test_vllm_backend_takes_gpt_oss_replies_from_the_final_channel(tmp_path):
    from orchestrator.models.backends import VLLMBackend

    (tmp_path / "config.json").write_text('{"model_type": "gpt_oss"}')
    backend = VLLMBackend("http://127.0.0.1:9/v1", "vllm/gpt-oss-20b", model_dir=tmp_path)
    sent = []
    reply = '{"rationale": "fix", "edits": []}'

    def chat(body):  # vLLM's chat answer for gpt-oss: final channel in content, analysis aside
        sent.append(body)
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": reply,
                                                     "reasoning_content": '{"rationale": "decoy"}'}},
                            {"index": 1, "message": {"role": "assistant", "content": None,
                                                     "reasoning_content": "still thinking"}}]}

    backend._chat = chat
    gpu.configure_backend(backend, GpuSection(reasoning_effort="high"), tmp_path)
    assert backend.generate_many([{"role": "user", "content": "fix"}], "patch", n=2) == [reply, ""]
    assert sent[0]["reasoning_effort"] == "high" and "response_format" not in sent[0]  # parsed, not constrained
    plain = VLLMBackend("http://127.0.0.1:9/v1", "vllm/SmolLM2")
    gpu.configure_backend(plain, GpuSection(), "HuggingFaceTB/SmolLM2-135M-Instruct")
    plain._chat = chat
    assert plain.generate_many([{"role": "user", "content": "fix"}], "patch", n=2) == [reply, ""]
    assert "reasoning_effort" not in sent[-1]


def test_sleep_mode_wraps_only_the_trainer_in_a_burst(tmp_path, monkeypatch):
    """training.burst: the server sleeps while the trainer runs and is awake again for the gate."""
    from orchestrator.training import burst as training
    from orchestrator.models.backends import VLLMBackend
    from orchestrator.config import GateSection
    from orchestrator.training.launcher import TrainerInputError
    from orchestrator.training.runner.config import TrainConfig

    backend = VLLMBackend("http://127.0.0.1:9/v1", "vllm/m")
    events = []

    class Asleep:
        def __enter__(self):
            events.append("sleep")

        def __exit__(self, *exc):
            events.append("wake_up")

    gpu.configure_backend(backend, GpuSection(memory="sleep"), "some/model")
    assert callable(backend.training_memory)
    backend.training_memory = Asleep  # the HTTP calls themselves: test_sleep_mode_wraps_a_burst_and_always_wakes

    def fake_training(*a, **k):
        events.append("train")
        raise TrainerInputError("stop after training")

    monkeypatch.setattr(training, "run_training", fake_training)
    audit = type("A", (), {"append": lambda self, *a, **k: None})()
    result = training.burst(tmp_path, tmp_path / "s.jsonl", 5, backend, audit, tmp_path, TrainConfig(),
                            GateSection(), None, gpu=True, say=lambda line: None)
    assert events == ["sleep", "train", "wake_up"] and result.reason == "stop after training"
    plain = VLLMBackend("http://127.0.0.1:9/v1", "vllm/m")
    gpu.configure_backend(plain, GpuSection(), "some/model")
    assert getattr(plain, "training_memory", None) is None  # fraction mode: nothing around the trainer


def test_environment_overrides_enabled(monkeypatch):
    monkeypatch.setenv("RSI_GPU", "off")  # what the test suite runs with, GPU workstation or not
    assert gpu.resolve(None, GpuSection(), connect=lambda: FakeClient(NVIDIA)) is False
    assert gpu.resolve(True, GpuSection(), connect=lambda: FakeClient(NVIDIA)) is True  # --gpu still wins
    monkeypatch.setenv("RSI_GPU", "on")
    with pytest.raises(GpuProfileError, match="no NVIDIA runtime"):
        gpu.resolve(None, GpuSection(enabled="off"), connect=lambda: FakeClient(PLAIN))
    monkeypatch.setenv("RSI_GPU", "yes")
    with pytest.raises(GpuProfileError, match="auto, on or off"):
        gpu.resolve(None, GpuSection(), connect=lambda: FakeClient(PLAIN))


def test_trainer_threads_follow_the_cap_or_the_host_share(tmp_path, monkeypatch):
    """More OpenMP threads than free cores spin against each other (a burst beside another torch
    process on 2 cores ran 5x slower): the trainer takes its explicit thread count, else its CPU cap,
    else the host's OMP_NUM_THREADS, else torch's default (nothing set)."""
    from orchestrator.training.launcher import TrainerLimits, container_kwargs

    def env(limits):
        return container_kwargs("rsi-trainer:cpu", tmp_path / "s.jsonl", tmp_path / "c.json", tmp_path / "m",
                                tmp_path / "o", limits, gpu=False)["environment"]

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert "OMP_NUM_THREADS" not in env(TrainerLimits())
    assert env(TrainerLimits(cpus=1.5))["OMP_NUM_THREADS"] == "2"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert env(TrainerLimits())["OMP_NUM_THREADS"] == "1" == env(TrainerLimits())["MKL_NUM_THREADS"]
    assert env(TrainerLimits(threads=3, cpus=1))["OMP_NUM_THREADS"] == "3"
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    assert "OMP_NUM_THREADS" not in env(TrainerLimits())
