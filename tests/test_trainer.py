"""The trainer: input validation, the registry, and real CPU training in the trainer container."""

import json
import os
from pathlib import Path

import pytest

from orchestrator.training.adapters import Registry
from orchestrator.sandbox.container import InfraError
from orchestrator.training.launcher import TrainerInputError, TrainerLimits, container_kwargs, run_training
from orchestrator.training.runner.config import TrainConfig
from orchestrator.training.runner.samples import BadSamples, load_samples
from orchestrator.training.runner.train import main as trainer_main

REPLY = json.dumps({"rationale": "use plus", "edits": [{"path": "example.py",
                                                       "content": "def add(a, b):\n    return a + b\n"}]})
PROMPT = "Fix add in example.py: def add(a, b): return a - b"


def sample(i=0, reply=REPLY):
    return {"messages": [{"role": "system", "content": "Reply with one JSON object."},
                         {"role": "user", "content": f"{PROMPT} (case {i})"},
                         {"role": "assistant", "content": reply}]}


def write_samples(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --- validation (no Docker) ---

@pytest.mark.parametrize("rows,message", [
    ([], "empty"),
    (["{not json"], "not JSON"),
    ([{"text": "x"}], "messages"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], "prompt and a reply"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}], "assistant"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}]}], "non-empty"),
    ([{"messages": [{"role": "hacker", "content": "a"}, {"role": "assistant", "content": "b"}]}], "role"),
])
def test_bad_samples_are_refused(tmp_path, rows, message):
    path = write_samples(tmp_path / "s.jsonl", rows) if rows else (tmp_path / "s.jsonl")
    if not rows:
        path.write_text("")
    with pytest.raises(BadSamples, match=message):
        load_samples(path, 1, 100, 1 << 20)


def test_limits_and_encoding(tmp_path):
    path = write_samples(tmp_path / "s.jsonl", [sample(i) for i in range(5)])
    with pytest.raises(BadSamples, match="more than the limit"):
        load_samples(path, 1, 100, 100)
    with pytest.raises(BadSamples, match="more than 3 samples"):
        load_samples(path, 1, 3, 1 << 20)
    with pytest.raises(BadSamples, match="fewer than the minimum"):
        load_samples(path, 10, 100, 1 << 20)
    rows, digest = load_samples(path, 1, 100, 1 << 20)
    assert len(rows) == 5 and rows[0]["completion"][0]["role"] == "assistant" and len(digest) == 64
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe")
    with pytest.raises(BadSamples, match="UTF-8"):
        load_samples(tmp_path / "bin.jsonl", 1, 100, 1 << 20)


def test_entry_point_refuses_bad_input_before_loading_anything(tmp_path):
    out = tmp_path / "out"
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"lora_r": 0}')
    args = ["--samples", str(tmp_path / "none.jsonl"), "--config", str(cfg), "--model-dir", str(tmp_path),
            "--output", str(out)]
    assert trainer_main(args) == 2  # bad config
    cfg.write_text("{}")
    assert trainer_main(args) == 2  # missing samples
    write_samples(tmp_path / "none.jsonl", [sample()])
    assert trainer_main(args) == 2  # no model
    assert not out.exists() or not any(out.iterdir())


# --- registry (no Docker) ---

def fake_adapter(dir_: Path) -> Path:
    dir_.mkdir(parents=True)
    (dir_ / "adapter_config.json").write_text("{}")
    (dir_ / "adapter_model.safetensors").write_bytes(b"x")
    return dir_


def test_registry_gate_promote_and_rollback(tmp_path):
    reg = Registry(tmp_path)
    assert reg.current() is None
    m1 = reg.register(fake_adapter(tmp_path / "t1"), "base", {}, {"samples": 3, "data_sha256": "a"})
    assert m1.id == "v0001" and m1.parent is None and reg.current() is None  # registered, not promoted
    assert reg.record_decision("v0001", True, "promoted: test", 0.5, 0.5).promoted
    assert reg.current() == "v0001"
    m2 = reg.register(fake_adapter(tmp_path / "t2"), "base", {}, {"samples": 5})
    assert m2.parent == "v0001"
    worse = reg.record_decision("v0002", False, "kept, not promoted: test", 0.2, 0.5, {"difference": -0.3})
    assert not worse.promoted and reg.current() == "v0001"
    assert reg.meta("v0002").comparison == {"difference": -0.3} and reg.meta("v0002").score == 0.2
    assert reg.record_decision("v0002", True, "promoted: test", 0.47, 0.5).promoted
    assert reg.current() == "v0002"
    assert reg.rollback() == "v0001" and reg.current() == "v0001"
    assert reg.rollback() is None  # back to the base model
    with pytest.raises(LookupError):
        reg.rollback()
    reg.promote("v0002")
    assert reg.current() == "v0002"
    with pytest.raises(KeyError):
        reg.promote("v0099")
    assert [m.id for m in reg.list()] == ["v0001", "v0002"]


# --- the real trainer container ---

@pytest.fixture(scope="module")
def trainer_image(docker_client):
    from orchestrator.sandbox.images import build_trainer_image

    return build_trainer_image(docker_client)


@pytest.fixture(scope="module")
def model_dir():
    from orchestrator.models.embedded_model import ensure_converted

    return ensure_converted()


SMALL = TrainConfig(max_steps=12, batch_size=2, learning_rate=1e-3, max_length=512)


@pytest.mark.docker
def test_cpu_training_lowers_loss_and_the_adapter_changes_generations(tmp_path, trainer_image, model_dir):
    from orchestrator.models.backends import LocalBackend

    samples = write_samples(tmp_path / "s.jsonl", [sample(i) for i in range(8)])
    out = tmp_path / "adapter"
    metrics = run_training(samples, out, SMALL, model_dir)
    assert metrics["losses"][-1] < metrics["losses"][0] / 4, metrics["losses"]
    assert metrics["samples"] == 8 and metrics["device"] == "cpu" and metrics["tokens_per_s"] > 0
    assert {"adapter_config.json", "adapter_model.safetensors", "metrics.json"} <= {p.name for p in out.iterdir()}
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 16 and set(cfg["target_modules"]) >= {"q_proj", "v_proj"}

    backend = LocalBackend(model_dir, "SmolLM2-135M-Instruct", max_new_tokens=96)
    messages = sample(99)["messages"][:-1]
    before = backend.generate(messages, "patch")
    backend.load_adapter(out, "trained")
    after = backend.generate(messages, "patch")
    assert after != before
    assert "use plus" in after and "use plus" not in before  # it learned the reply it was trained on
    backend.load_adapter(None, None)
    assert backend.generate(messages, "patch") == before  # back to the base model


@pytest.mark.docker
@pytest.mark.parametrize("rows,config,message", [
    ([], SMALL, "empty"),
    (["{oops"], SMALL, "not JSON"),
    ([{"messages": [{"role": "user", "content": "a"}]}], SMALL, "prompt and a reply"),
    ([sample(i) for i in range(8)], SMALL.model_copy(update={"max_file_bytes": 1024}), "limit"),
])
def test_bad_inputs_are_refused_in_the_container(tmp_path, trainer_image, model_dir, rows, config, message):
    samples = tmp_path / "s.jsonl"
    if rows:
        write_samples(samples, rows)
    else:
        samples.write_text("")
    out = tmp_path / "out"
    with pytest.raises(TrainerInputError, match=message):
        run_training(samples, out, config, model_dir)
    assert not any(out.iterdir()), "a refused run wrote something"


@pytest.mark.docker
def test_trainer_container_has_no_network_and_read_only_inputs(tmp_path, trainer_image, model_dir, docker_client):
    samples = write_samples(tmp_path / "s.jsonl", [sample()])
    cfg = tmp_path / "cfg.json"
    cfg.write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o777)
    kwargs = container_kwargs(trainer_image, samples, cfg, model_dir, out, TrainerLimits(), gpu=False)
    kwargs.update(entrypoint=["python", "-c"], command=[
        "import os, socket\n"
        "print('ifaces', sorted(os.listdir('/sys/class/net')))\n"
        "try:\n    socket.create_connection(('192.0.2.1', 443), timeout=3); print('NET OPEN')\n"
        "except OSError as e:\n    print('net blocked', e.errno)\n"
        "for p in ('/data/samples.jsonl', '/model/config.json', '/opt/venv/x'):\n"
        "    try:\n        open(p, 'a').write('x'); print('WROTE', p)\n"
        "    except OSError as e:\n        print('ro', p)\n"
        "open('/out/ok', 'w').write('y'); print('out writable')\n"], log_config=None)
    kwargs.pop("log_config")
    container = docker_client.containers.create(**kwargs)
    try:
        container.start()
        container.wait(timeout=60)
        text = container.logs().decode()
    finally:
        container.remove(force=True)
    assert "ifaces ['lo']" in text and "net blocked" in text and "NET OPEN" not in text
    assert "WROTE" not in text and text.count("ro ") == 3 and "out writable" in text


@pytest.mark.docker
def test_gpu_request_without_gpu_is_a_clear_error(tmp_path, trainer_image, model_dir, docker_client):
    from orchestrator.training.launcher import gpu_available

    if gpu_available(docker_client):
        pytest.skip("this machine has a GPU runtime")  # the GPU path is checked by bench/trainer_gpu.py
    samples = write_samples(tmp_path / "s.jsonl", [sample()])
    with pytest.raises(InfraError, match="no GPU runtime"):
        run_training(samples, tmp_path / "out", SMALL, model_dir, gpu=True)


def test_models_pull_and_resolve_fail_clearly_offline(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "models", "pull", "unsloth/gpt-oss-20b"],
                         capture_output=True, text=True, cwd=root, env=env, timeout=120)
    assert out.returncode == 2 and "could not download unsloth/gpt-oss-20b" in out.stderr
    samples = write_samples(tmp_path / "s.jsonl", [sample()])
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "train", "--samples", str(samples), "--output",
                          str(tmp_path / "o"), "--model", "unsloth/gpt-oss-20b"],
                         capture_output=True, text=True, cwd=root, env=env, timeout=120)
    assert out.returncode == 2 and "rsi models pull unsloth/gpt-oss-20b" in out.stderr
