"""End to end on CPU with the real embedded model (SmolLM2-135M) and real Docker: mechanics, not quality."""

import json

import pytest

from orchestrator.store.audit import read_events, verify
from orchestrator.models.backends import LocalBackend, decoding_schema
from orchestrator.config import RunConfig
from orchestrator.models.embedded_model import MODEL_ID, ensure_converted
from orchestrator.agent.loop import Loop
from orchestrator.protocol.schema import parse_reply
from orchestrator.agent.tasks import seed_task

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def local_backend():
    return LocalBackend(ensure_converted(), MODEL_ID, max_new_tokens=768)


def test_constrained_decoding_fits_the_schema(local_backend):
    msgs = [{"role": "system", "content": "Reply with one JSON object."},
            {"role": "user", "content": "Write a test file for a function add(a, b) in module example."}]
    reply = local_backend.generate(msgs, "tests")
    parsed = parse_reply(reply, "tests", 1 << 20)  # raises if it does not fit
    assert parsed.tests[0].path.startswith("test_gen_") or "/test_gen_" in parsed.tests[0].path
    assert decoding_schema("patch")["properties"]["edits"]["maxItems"] >= 1


def test_one_iteration_on_the_seed(tmp_path, local_backend, sandbox_image):
    cfg = RunConfig.load()
    cfg.run.max_iterations, cfg.run.max_retries, cfg.run.max_mutants, cfg.run.train_every = 1, 0, 4, 0
    state = Loop(tmp_path / "run", cfg, local_backend, task=seed_task()).run()
    assert state.stop_reason and state.iteration >= 1
    events = read_events(tmp_path / "run" / "audit.jsonl")
    phases = {e["phase"] for e in events if e["event"] == "model_reply"}
    assert phases == {"patch", "tests"}
    assert all(e["validation"] in ("ok", "failed") for e in events if e["event"] == "model_reply")
    assert verify(tmp_path / "run" / "audit.jsonl").ok
    saved = json.loads((tmp_path / "run" / "state.json").read_text())
    assert saved["model_id"] == MODEL_ID and saved["history"]
    for rec in saved["history"]:
        assert rec["timings"].get("generation", 0) > 0
