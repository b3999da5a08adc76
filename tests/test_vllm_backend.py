"""The vllm backend against a real vLLM server (CPU build) on the embedded SmolLM2: constrained
replies, batched seeded sampling, adapter hot-loading with the load probe (refusals included),
one loop iteration, `rsi eval --samples`, and a training burst gated against the engine."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from orchestrator.training.adapters import AdapterRefused
from orchestrator.models.backends import VLLMBackend, make_backend
from orchestrator.config import RunConfig
from orchestrator.protocol.schema import parse_reply
from tests.conftest import as_user

ROOT = Path(__file__).resolve().parent.parent


def seed_messages(phase: str) -> list[dict]:
    """The loop's own prompt for the seed task."""
    from orchestrator.protocol import prompts
    from orchestrator.agent.tasks import protected_files, seed_task

    root = Path(seed_task().source_dir)
    tests = protected_files(root)
    sources = [str(p.relative_to(root)) for p in sorted(root.rglob("*.py")) if str(p.relative_to(root)) not in tests]
    if phase == "patch":
        return prompts.patch_messages(root, sources, tests, None)
    return prompts.tests_messages(root, sources, tests)


MESSAGES = seed_messages("patch")


def backend_on(engine, max_tokens: int = 384) -> VLLMBackend:
    cfg = RunConfig.load()
    cfg.model.max_new_tokens = max_tokens
    return make_backend("vllm", cfg, base_url=engine.base_url)


def served_names(engine) -> list[str]:
    return sorted(m["id"] for m in requests.get(engine.base_url + "/models", headers=engine.headers,
                                                timeout=10).json()["data"])


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """PEFT LoRA adapters on the embedded model: ``zero`` (as initialised: B = 0, so it changes
    nothing), ``a`` and ``b`` (random B: they change the logprobs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from orchestrator.models.embedded_model import ensure_converted

    out = tmp_path_factory.mktemp("adapters")
    for i, (name, std) in enumerate((("zero", 0.0), ("a", 0.05), ("b", 0.05))):
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_pretrained(ensure_converted(), dtype=torch.float32)
        peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():
            for pname, p in peft.named_parameters():
                if "lora_B" in pname and std:
                    p.normal_(0, std)
        peft.save_pretrained(out / name)
    return out


def test_reply_fits_the_schema(vllm_engine):
    backend = backend_on(vllm_engine)
    assert backend.name == "vllm" and {"adapters", "batching", "seeds"} <= backend.capabilities
    reply = backend.generate(MESSAGES, "patch")
    parsed = parse_reply(reply, "patch", 1 << 20)  # the engine's grammar made it fit
    assert 1 <= len(parsed.edits) <= 2 and backend.generate(MESSAGES, "patch") == reply  # greedy


def test_batched_samples_are_seeded(vllm_engine):
    backend = backend_on(vllm_engine, max_tokens=160)
    tests = seed_messages("tests")
    first = backend.generate_many(tests, "tests", n=4, temperature=0.8, seed=11)
    assert len(first) == 4 and len(set(first)) > 1
    assert backend.generate_many(tests, "tests", n=4, temperature=0.8, seed=11) == first
    with pytest.raises(ValueError, match="temperature > 0"):
        backend.generate_many(tests, "tests", n=2, temperature=0.0)


def test_code_format_replies_end_with_their_first_block(vllm_engine):
    """Asked for a fenced block, a model often adds prose and a second block (a usage example); the
    server's reply is cut after the first complete block, as the local backend stops decoding there,
    so the protocol sees one block, not a `multiple_code_blocks` refusal."""
    from orchestrator.protocol.reply_format import find_blocks, for_request
    from orchestrator.agent.tasks import seed_task

    root = Path(seed_task().source_dir)
    fmt = for_request("code", "patch", ["example.py"], root)
    backend = backend_on(vllm_engine, max_tokens=400)
    from orchestrator.protocol import prompts
    from orchestrator.agent.tasks import protected_files
    messages = prompts.patch_messages(root, ["example.py"], protected_files(root), None, fmt)
    replies = backend.generate_many(messages, "patch", n=4, temperature=0.8, seed=3, fmt=fmt)
    for reply in replies:
        _, blocks, unterminated = find_blocks(reply)
        assert len(blocks) + unterminated <= 1, reply
        if blocks:
            assert reply.rstrip().endswith(("```", "~~~")), reply


def test_adapter_hot_load_probe_refusals_and_unload(vllm_engine, adapters, tmp_path):
    backend = backend_on(vllm_engine)
    # an adapter that changes nothing never reaches "served": the probe sees the base model
    with pytest.raises(AdapterRefused, match="v0001 refused: its load probe .* equals the base model's"):
        backend.load_adapter(adapters / "zero", "v0001")
    assert backend.adapter_id is None and served_names(vllm_engine) == ["base"]

    backend.load_adapter(adapters / "a", "v0002")
    name_a = backend.served
    assert backend.adapter_id == "v0002" and name_a.startswith("v0002-") and served_names(vllm_engine) == sorted(
        ["base", name_a])
    assert backend.probes_differ(backend.probe(name_a), backend.probe("base"))
    parse_reply(backend.generate(MESSAGES, "patch"), "patch", 1 << 20)  # requests go to the adapter

    # a corrupted directory (truncated weights) is refused before the engine sees it
    broken = tmp_path / "v0003"
    shutil.copytree(adapters / "a", broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(AdapterRefused, match="truncated or corrupted"):
        backend.load_adapter(broken, "v0003")
    (broken / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterRefused, match="unreadable adapter_config.json"):
        backend.load_adapter(broken, "v0003")
    assert backend.served == name_a and backend.adapter_id == "v0002"

    # the next version goes in under a new name; the one it replaces is unloaded
    backend.load_adapter(adapters / "b", "v0004")
    assert backend.served.startswith("v0004-") and served_names(vllm_engine) == sorted(["base", backend.served])
    # back (a gate that keeps the current model, a rollback): re-loaded, checked, the newer unloaded
    backend.load_adapter(adapters / "a", "v0002")
    assert backend.served == name_a and served_names(vllm_engine) == sorted(["base", name_a])
    backend.load_adapter(None, None)
    assert backend.served is None and backend.adapter_id is None and served_names(vllm_engine) == ["base"]


NOBODY = 65534


def test_another_user_cannot_load_or_swap_adapters(vllm_engine, adapters):
    """Issue 24: as `nobody`, no request but /health reaches the engine without its key: not vLLM's
    /v1/load_lora_adapter (its --api-key check), nor the SageMaker /adapters routes, /invocations,
    /pause... (outside /v1: the guard middleware); the key is in no file or command line that user can
    read. The positive control: the same user with the key loads and unloads an adapter."""
    if os.geteuid() != 0:
        pytest.fail("this test switches to the user nobody, which needs root")
    url, key, pid = vllm_engine.url, vllm_engine.api_key, vllm_engine.proc.pid
    path = str(adapters / "a")

    def attack():
        out = {}
        for method, route, body in [("post", "/v1/load_lora_adapter", {"lora_name": "evil", "lora_path": path}),
                                    ("post", "/v1/unload_lora_adapter", {"lora_name": "evil"}),
                                    ("post", "/adapters", {"name": "evil", "src": path}),
                                    ("delete", "/adapters/evil", None),
                                    ("get", "/v1/models", None),
                                    ("post", "/v1/chat/completions", {"model": "base", "max_tokens": 1,
                                                                     "messages": [{"role": "user", "content": "hi"}]}),
                                    ("post", "/invocations", {"model": "base", "prompt": "hi", "max_tokens": 1}),
                                    ("post", "/pause", None), ("post", "/tokenize", {"prompt": "hi"}),
                                    ("get", "/version", None), ("get", "/health", None)]:
            for auth in ({}, {"Authorization": "Bearer wrong"}):
                resp = getattr(requests, method)(url + route, json=body, headers=auth, timeout=30)
                out[f"{method} {route} {bool(auth)}"] = [resp.status_code, resp.text[:100]]
        readable = []
        for name in ("environ", "cmdline"):
            try:
                readable.append(key in Path(f"/proc/{pid}/{name}").read_bytes().decode(errors="replace"))
            except OSError:
                readable.append(None)
        out["environ, cmdline"] = readable
        log = Path(vllm_engine.log_path)
        out["log"] = os.access(log, os.R_OK) or os.access(log.parent, os.X_OK)
        return out

    seen = as_user(NOBODY, attack)
    assert "raised" not in seen, seen
    assert seen.pop("environ, cmdline") == [None, False] and seen.pop("log") is False
    for call, (status, text) in seen.items():
        if call.startswith("get /health"):
            assert status == 200, (call, text)
        else:
            assert status == 401 and "Unauthorized" in text, (call, status, text)  # no path named, nothing loaded
    assert served_names(vllm_engine) == ["base"]

    def with_the_key():
        auth = {"Authorization": f"Bearer {key}"}
        load = requests.post(url + "/v1/load_lora_adapter", json={"lora_name": "control", "lora_path": path},
                             headers=auth, timeout=60)
        listed = requests.get(url + "/v1/models", headers=auth, timeout=30).json()
        unload = requests.post(url + "/v1/unload_lora_adapter", json={"lora_name": "control"}, headers=auth,
                               timeout=60)
        return [load.status_code, sorted(m["id"] for m in listed["data"]), unload.status_code]

    assert as_user(NOBODY, with_the_key) == [200, ["base", "control"], 200]
    assert served_names(vllm_engine) == ["base"]


def test_a_name_swapped_in_the_engine_is_refused_or_replaced(vllm_engine, adapters, tmp_path):
    """Issue 24: the backend trusts no engine state it did not check. A name loaded from another
    directory is replaced by this adapter's own; other weights under the same name and directory (the
    files swapped and put back around the engine's load) fail the identity probe against the name's
    first load; the served name carries the digest of weights and config."""
    from orchestrator.models.backends import adapter_digest

    backend = backend_on(vllm_engine)
    mine = tmp_path / "mine"
    shutil.copytree(adapters / "a", mine)
    backend.load_adapter(mine, "v0007")
    name = backend.served
    assert name == f"v0007-{adapter_digest(mine)[:16]}" and backend.listing()[name]["root"] == str(mine)
    first = backend.probe(name)
    backend.load_adapter(None, None)

    # someone with the key loads other weights under the name this adapter will have
    assert backend._admin("load", {"lora_name": name, "lora_path": str(adapters / "b")}).status_code == 200
    backend.load_adapter(mine, "v0007")
    assert backend.served == name and backend.listing()[name]["root"] == str(mine)
    assert not backend.probes_differ(backend.probe(name), first)  # its own weights again
    backend.load_adapter(None, None)

    # the same name and directory, other weights: the files replaced for the engine's load, then put back
    saved = tmp_path / "saved"
    shutil.copytree(mine, saved)
    shutil.rmtree(mine)
    shutil.copytree(adapters / "b", mine)
    assert backend._admin("load", {"lora_name": name, "lora_path": str(mine)}).status_code == 200
    shutil.rmtree(mine)
    shutil.copytree(saved, mine)
    with pytest.raises(AdapterRefused, match="differs from the one .* gave when first loaded"):
        backend.load_adapter(mine, "v0007")
    assert backend.served is None and served_names(vllm_engine) == ["base"]
    # a config change (here lora_alpha) is a new name, though the weights are the same bytes
    config = json.loads((mine / "adapter_config.json").read_text())
    config["lora_alpha"] = 4
    (mine / "adapter_config.json").write_text(json.dumps(config))
    assert adapter_digest(mine) != adapter_digest(saved)


@pytest.mark.docker
def test_one_iteration_through_the_engine(tmp_path, vllm_engine, sandbox_image):
    from orchestrator.agent.loop import Loop
    from orchestrator.agent.tasks import seed_task

    cfg = RunConfig.load()
    cfg.run.max_iterations, cfg.run.max_retries, cfg.run.max_mutants, cfg.run.train_every = 1, 0, 3, 0
    state = Loop(tmp_path / "run", cfg, backend_on(vllm_engine), task=seed_task()).run()
    assert state.stop_reason and state.history and state.backend == "vllm"
    assert state.model_id == "vllm/SmolLM2-135M-Instruct"


@pytest.mark.docker
def test_eval_samples_in_one_batch(tmp_path, vllm_engine, sandbox_image):
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "eval", "--backend", "vllm", "--base-url",
                          vllm_engine.base_url, "--tasks", "0", "--samples", "3", "--k", "2", "--out",
                          str(tmp_path / "ev"), "--json"], capture_output=True, text=True, cwd=ROOT, timeout=900,
                         env=os.environ | {"RSI_VLLM_API_KEY": vllm_engine.api_key or ""})
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["backend"] == "vllm" and summary["samples_per_problem"] == 3 and "pass@2" in summary
    problem = json.loads((tmp_path / "ev" / "problems-seed0.jsonl").read_text().splitlines()[0])
    assert problem["n"] == 3 and len(problem["verdicts"]) == 3


@pytest.mark.docker
def test_burst_refuses_an_unserved_adapter_then_promotes_and_resumes(tmp_path, vllm_engine, sandbox_image,
                                                                     docker_client):
    """Real trainer container, real engine: a burst whose adapter changes nothing (one step at
    lr 1e-9) is refused by the load probe and the run stays on the base model; the next burst is
    hot-loaded, gated against the engine and promoted; a resumed run re-loads it."""
    from orchestrator.training.adapters import Registry
    from orchestrator.store.audit import read_events, verify
    from orchestrator.config import GateSection
    from orchestrator.sandbox.images import build_trainer_image
    from orchestrator.agent.loop import Loop
    from orchestrator.agent.tasks import seed_task
    from orchestrator.training.runner.config import TrainConfig
    from orchestrator.training.burst import TrainHook
    from tests.test_trainer import sample

    build_trainer_image(docker_client)
    backend = backend_on(vllm_engine, max_tokens=96)
    cfg = RunConfig.load()
    cfg.run.train_every = 1
    cfg.gate = GateSection(tasks=["HumanEval/5"], noise=1.0)  # noise 1.0: a served adapter is promoted
    run = tmp_path / "run"
    inert = TrainHook(backend.model_dir, TrainConfig(max_steps=1, batch_size=2, learning_rate=1e-9, max_length=512))
    loop = Loop(run, cfg, backend, task=seed_task(), train_hook=inert)
    for i in range(4):
        loop.archive.add(sample(i)["messages"], {"test": i})
    loop.train(inert)
    reg = Registry(run)
    assert reg.current() is None and backend.adapter_id is None and loop.state.current_adapter is None
    assert "refused" in reg.meta("v0001").decision and not reg.meta("v0001").promoted
    refused = [e for e in read_events(run / "audit.jsonl") if e["event"] == "adapter_refused"]
    assert refused and "equals the base model's" in refused[0]["reason"] and refused[0]["current"] == "base"
    assert served_names(vllm_engine) == ["base"]

    loop.train(TrainHook(backend.model_dir, TrainConfig(max_steps=3, batch_size=2, learning_rate=1e-3, max_length=512)))
    assert reg.current() == "v0002" and backend.adapter_id == "v0002" and loop.state.current_adapter == "v0002"
    assert sorted(p.name for p in (run / "adapters" / "heldout").iterdir()) == ["base.jsonl", "v0002.jsonl"]
    assert served_names(vllm_engine) == sorted(["base", backend.served])
    assert verify(run / "audit.jsonl").ok

    loop._save()
    backend.load_adapter(None, None)  # as after a restart of the engine: nothing loaded
    resumed = Loop(run, cfg, backend_on(vllm_engine, max_tokens=96), train_hook=inert)
    assert resumed.backend.adapter_id == "v0002" and resumed.backend.served.startswith("v0002-")
    resumed.backend.load_adapter(None, None)


def test_rsi_serve_stops_on_ctrl_c_and_leaves_no_process(tmp_path):
    """`rsi serve` on a fixed port: it prints its key once, and requests without it are refused; a
    second server on the same port is refused in one line; Ctrl-C stops the server and every process
    it started."""
    import os
    import signal
    import time

    from orchestrator.models.engine import free_port

    port = free_port()
    env = os.environ | {"RSI_CACHE": str(tmp_path / "cache")}  # the engine's records; the model is linked in
    env.pop("RSI_VLLM_API_KEY", None)  # a new key, printed
    (tmp_path / "cache" / "models").mkdir(parents=True)
    from orchestrator.models.embedded_model import ensure_converted

    (tmp_path / "cache" / "models" / ensure_converted().name).symlink_to(ensure_converted())
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 900
        while "(Ctrl-C stops it)" not in (tmp_path / "serve.log").read_text():
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "rsi serve did not become ready"
            time.sleep(1)
        records = list((tmp_path / "cache" / "engine").glob("*.json"))
        assert len(records) == 1
        server = json.loads(records[0].read_text())["pid"]
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        said = (tmp_path / "serve.log").read_text()
        key = said.split("not shown again): ", 1)[1].split()[0]
        assert len(key) >= 40 and said.count(key) == 1
        models = f"http://127.0.0.1:{port}/v1/models"
        assert requests.get(models, timeout=10).status_code == 401
        assert requests.get(models, headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 200
        assert key.encode() not in Path(f"/proc/{server}/cmdline").read_bytes()
        second = subprocess.run([sys.executable, "-m", "orchestrator.cli", "serve", "--port", str(port)], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and f"port {port} on 127.0.0.1 is taken" in second.stderr
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
        assert "vLLM stopped" in (tmp_path / "serve.log").read_text()
        assert not os.path.exists(f"/proc/{server}") and not list((tmp_path / "cache" / "engine").glob("*.json"))
        with pytest.raises(ProcessLookupError):
            os.killpg(server, 0)  # nothing of its process group is left
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
