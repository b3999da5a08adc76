"""The loop's training burst against the real trainer container, sandbox and embedded model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.training.adapters import Registry
from orchestrator.store.audit import read_events, verify
from orchestrator.models.backends import LocalBackend
from orchestrator.config import GateSection, RunConfig
from orchestrator.models.embedded_model import MODEL_ID, ensure_converted
from orchestrator.agent.loop import Loop
from orchestrator.agent.tasks import seed_task
from orchestrator.training.runner.config import TrainConfig
from orchestrator.training.burst import TrainHook
from tests.test_trainer import sample

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parent.parent
SMALL = TrainConfig(max_steps=6, batch_size=2, learning_rate=1e-3, max_length=512)


def test_burst_trains_gates_switches_and_survives_resume(tmp_path, sandbox_image, docker_client):
    from orchestrator.sandbox.images import build_trainer_image

    build_trainer_image(docker_client)
    model_dir = ensure_converted()
    cfg = RunConfig.load()
    cfg.run.train_every = 1
    backend = LocalBackend(model_dir, MODEL_ID, max_new_tokens=96)
    gate_cfg = GateSection(tasks=["HumanEval/5"], noise=1.0, patience=2)  # noise 1.0: any adapter is promoted
    cfg.gate = gate_cfg
    hook = TrainHook(model_dir, SMALL)
    run = tmp_path / "run"
    loop = Loop(run, cfg, backend, task=seed_task(), train_hook=hook)
    for i in range(4):
        loop.archive.add(sample(i)["messages"], {"test": i})
    loop.train()
    reg = Registry(run)
    assert reg.current() == "v0001" and backend.adapter_id == "v0001" and loop.state.current_adapter == "v0001"
    heldout = run / "adapters" / "heldout"
    assert sorted(p.name for p in heldout.iterdir()) == ["base.jsonl", "v0001.jsonl"]
    cached = (heldout / "v0001.jsonl").read_text()
    # SmolLM2 with 96 tokens solves nothing either way: a tie is no improvement beyond noise
    assert loop.state.train_plateau == 1 and loop._stop_reason() is None

    gate_cfg.noise = -1.0  # demands a difference of +1.0: never met, so kept but not promoted
    loop.archive.add(sample(9)["messages"], {"test": 9})
    loop.train()
    assert reg.current() == "v0001" and backend.adapter_id == "v0001"
    assert (heldout / "v0001.jsonl").read_text() == cached  # the current model was not asked again
    metas = {m.id: m for m in reg.list()}
    assert metas["v0002"].parent == "v0001" and not metas["v0002"].promoted and metas["v0002"].samples == 5
    assert {m.base_model for m in metas.values()} == {MODEL_ID}  # the model the trainer mounted
    assert metas["v0002"].comparison["problems"] == 1 and "paired difference" in metas["v0002"].decision
    events = [e for e in read_events(run / "audit.jsonl") if e["event"] == "adapter_decision"]
    assert [e["promoted"] for e in events] == [True, False]
    assert all("ci95" in e and "difference" in e for e in events)
    assert verify(run / "audit.jsonl").ok
    assert loop.state.train_plateau == 2 and loop._stop_reason().startswith("plateau: 2 training bursts")

    loop._save()
    resumed = Loop(run, cfg, LocalBackend(model_dir, MODEL_ID, max_new_tokens=96), train_hook=hook)
    assert resumed.backend.adapter_id == "v0001"

    # the same comparison from the CLI: an adapter against the base model, paired, on one problem
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "eval", "--backend", "local", "--tasks", "5", "--adapter", "v0001",
                          "--baseline", "none", "--run-dir", str(run), "--out", str(tmp_path / "ev"), "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["adapter"] == "v0001" and summary["baseline"]["adapter"] == "none"
    assert summary["difference"]["problems"] == 1 and "excludes_zero" in summary["difference"]
    assert (tmp_path / "ev" / "problems-baseline.jsonl").exists()


def test_base_model_name_of_a_directory_or_a_hub_snapshot(tmp_path):
    from orchestrator.training.burst import base_model_name

    assert base_model_name(tmp_path / "Qwen2.5-Coder-0.5B-Instruct") == "Qwen2.5-Coder-0.5B-Instruct"
    snap = tmp_path / "hub" / "models--unsloth--gpt-oss-20b" / "snapshots" / "0123abcd"
    assert base_model_name(snap) == "unsloth/gpt-oss-20b"
