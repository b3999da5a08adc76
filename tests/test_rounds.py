"""Rounds end to end on real Docker: the CLI over a tiny bug-fix suite (replayed candidates, real
sandbox, SIGKILL and resume), and two rounds with the real trainer container, the real embedded
model hot-loading each adapter and the real gate."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.store.audit import read_events, verify
from orchestrator.evaluation.suites import SEED_FIXED, _bugfix_from_seed

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parent.parent
TASKS = "bugfix:seed#0,bugfix:seed#1,bugfix:seed#2"


def patch(content):
    return json.dumps({"rationale": "fix the bug", "edits": [{"path": "example.py", "content": content}]})


def recorded_replies(path: Path, rounds: int = 2, k: int = 2) -> Path:
    """Per task and round: an honest fix, and a wrong or hostile candidate (never archived)."""
    wrong = [SEED_FIXED.replace("a + b", "a * b"),                        # fails the tests
             "import os\nos._exit(0)\n",                                   # exits before the tests report
             None]                                                         # edits a protected test file
    lines = []
    for _ in range(rounds):
        for i, t in enumerate(_bugfix_from_seed(0)):
            bad = wrong[i % 3]
            bad_reply = (json.dumps({"rationale": "r", "edits": [{"path": "test_example.py", "content": "x = 1\n"}]})
                         if bad is None else patch(bad))
            lines += [{"phase": "patch", "task": t.id, "reply": patch(SEED_FIXED)},
                      {"phase": "patch", "task": t.id, "reply": bad_reply}]
            lines += [{"phase": "patch", "task": t.id, "reply": patch(SEED_FIXED + f"\n# retry {j}\n")}
                      for j in range(k)]  # re-asks after a refusal
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run"] + args, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def samples(run_dir):
    path = run_dir / "samples.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_rounds_cli_replay_real_sandbox_kill_and_resume(tmp_path, sandbox_image):
    replies = recorded_replies(tmp_path / "replies.jsonl")
    cfg = tmp_path / "cfg.toml"
    cfg.write_text("[rounds]\nrounds = 2\ntasks_per_round = 2\nk = 2\nmax_retries = 1\nconcurrency = 2\n")
    base = ["--backend", "replay", "--replies", str(replies), "--config", str(cfg), "--tasks", TASKS]
    clean = tmp_path / "clean"
    started = time.monotonic()
    proc = cli(base + ["--run-dir", str(clean)])
    _, err = proc.communicate(timeout=600)
    clean_s = time.monotonic() - started
    assert proc.returncode == 0, err.decode()[-2000:]
    state = json.loads((clean / "rounds.json").read_text())
    assert state["stop_reason"] == "maximum of 2 rounds reached" and len(state["rounds"]) == 2
    r1 = state["rounds"][0]
    assert r1["candidates"] == 4 and r1["verified"] >= 2 and r1["samples_added"] >= 2
    assert sum(r["verified"] for r in state["rounds"]) < sum(r["candidates"] for r in state["rounds"])
    got = samples(clean)
    assert got and all("os._exit" not in s["messages"][-1]["content"] and "a * b" not in s["messages"][-1]["content"]
                       and "test_example.py" not in s["messages"][-1]["content"] for s in got)
    assert all(s["provenance"]["task"].startswith("bugfix:seed#") for s in got)
    assert verify(clean / "audit.jsonl").ok
    events = [e["event"] for e in read_events(clean / "audit.jsonl")]
    assert events.count("round_drawn") == 2 and "rounds_stopped" in events
    assert "training is off" in err.decode()  # the replay backend cannot load adapters

    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "report", str(clean)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = (clean / "report.md").read_text()
    assert "audit log: intact" in text and "| 1 | 2/2 |" in text
    assert (clean / "report_samples.png").stat().st_size > 5000
    assert (clean / "report_hack_screen.png").stat().st_size > 5000
    status = subprocess.run([sys.executable, "-m", "orchestrator.cli", "status", str(clean)], cwd=ROOT,
                            capture_output=True, text=True)
    assert status.returncode == 0 and "round 2:" in status.stdout

    # the same run, SIGKILLed at random points and resumed: the same samples, none twice
    want = sorted(s["sha256"] for s in got)
    crashed = tmp_path / "crashed"
    rng = random.Random(7)
    args, kills = base + ["--run-dir", str(crashed)], 0
    for attempt in range(6):
        proc = cli(args)
        try:  # three kills at random points (a fraction of the clean run's time: the first always lands
            # inside the run, on a fast machine too), then it runs to the end
            proc.wait(timeout=rng.uniform(0.1, 0.6) * clean_s if attempt < 3 else 600)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        if (crashed / "rounds.json").exists():
            args = ["--backend", "replay", "--replies", str(replies), "--resume", str(crashed)]
            if json.loads((crashed / "rounds.json").read_text())["stop_reason"]:
                break
    else:
        pytest.fail("the killed run never finished")
    assert kills >= 1
    got = samples(crashed)
    assert len({s["sha256"] for s in got}) == len(got) and sorted(s["sha256"] for s in got) == want
    assert verify(crashed / "audit.jsonl").ok


def test_two_rounds_train_hot_load_and_gate_with_the_embedded_model(tmp_path, sandbox_image, docker_client):
    """Round candidates are recorded good and bad replies (SmolLM2 rarely writes a verified fix); everything
    else is real: sandbox, archive, the trainer container, the model hot-loading each adapter, the gate
    (SmolLM2 answering a held-out problem with and without the adapter)."""
    from orchestrator.models.backends import LocalBackend, ReplayBackend
    from orchestrator.config import RunConfig
    from orchestrator.models.embedded_model import MODEL_ID, ensure_converted
    from orchestrator.sandbox.images import build_trainer_image
    from orchestrator.protocol.reply_format import JSON
    from orchestrator.agent.rounds import Rounds, Trainer
    from orchestrator.evaluation.suites import select_tasks

    class RecordedCandidates(LocalBackend):
        def __init__(self, replies, *a, **kw):
            super().__init__(*a, **kw)
            self.replay = ReplayBackend(replies)

        def generate_many(self, messages, phase, task=None, n=1, temperature=0.8, seed=None, fmt=JSON):
            return [self.replay.generate(messages, phase, task) for _ in range(n)]

        def generate(self, messages, phase, task=None, seed=None, fmt=JSON):
            if any(m["role"] == "assistant" for m in messages):  # a round's re-ask: recorded too
                return self.replay.generate(messages, phase, task)
            return super().generate(messages, phase, task, seed, fmt)  # the gate: the real model

    build_trainer_image(docker_client)
    model_dir = ensure_converted()
    backend = RecordedCandidates(recorded_replies(tmp_path / "r.jsonl"), model_dir, MODEL_ID, max_new_tokens=96)
    cfg = RunConfig.load()
    cfg.rounds.rounds, cfg.rounds.tasks_per_round, cfg.rounds.k, cfg.rounds.concurrency = 2, 2, 2, 2
    cfg.gate.tasks, cfg.gate.noise = ["HumanEval/5"], 1.0  # noise 1.0: any adapter that loads is promoted
    run = tmp_path / "run"
    state = Rounds(run, cfg, backend, select_tasks(TASKS), trainer=Trainer(model_dir=model_dir, max_steps=2)).run()
    assert len(state.rounds) == 2 and all(r.samples_added > 0 for r in state.rounds[:1])
    bursts = [r.burst for r in state.rounds]
    assert [b.adapter for b in bursts] == ["v0001", "v0002"] and all(b.promoted for b in bursts)
    assert backend.adapter_id == "v0002" and state.current_adapter == "v0002"
    assert bursts[0].comparison["problems"] == 1
    heldout = sorted(p.name for p in (run / "adapters" / "heldout").iterdir())
    assert heldout == ["base.jsonl", "v0001.jsonl", "v0002.jsonl"]
    events = read_events(run / "audit.jsonl")
    trained = [e for e in events if e["event"] == "adapter_trained"]
    assert len(trained) == 2 and all(e["samples"] > 0 for e in trained)
    assert verify(run / "audit.jsonl").ok

    from orchestrator.evaluation.rounds_report import write_rounds_report

    text = write_rounds_report(run).read_text()
    assert "| v0001 | base |" in text and "## Held-out pass@1 per model" in text
    assert (run / "report_heldout.png").exists() and (run / "report_loss.png").exists()


def test_two_rounds_against_the_real_vllm_engine(tmp_path, sandbox_image, docker_client, vllm_engine):
    """The same two rounds through the engine the loop uses: the vLLM server (CPU build) on SmolLM2
    hot-loads each trained adapter at run time (with its load probe) and answers the gate; only the
    round candidates are recorded replies (SmolLM2 rarely writes a verified fix)."""
    from orchestrator.models.backends import ReplayBackend, make_backend
    from orchestrator.config import RunConfig
    from orchestrator.sandbox.images import build_trainer_image
    from orchestrator.protocol.reply_format import JSON
    from orchestrator.agent.rounds import Rounds, Trainer
    from orchestrator.evaluation.suites import select_tasks

    cfg = RunConfig.load()
    cfg.model.max_new_tokens = 96
    engine = make_backend("vllm", cfg, base_url=vllm_engine.base_url)
    replay = ReplayBackend(recorded_replies(tmp_path / "r.jsonl"))
    real_generate_many = engine.generate_many  # generate() goes through it too

    def generate_many(messages, phase, task=None, n=1, temperature=0.8, seed=None, fmt=JSON):
        if n > 1 or any(m["role"] == "assistant" for m in messages):  # round candidates and re-asks: recorded
            return [replay.generate(messages, phase, task) for _ in range(n)]
        return real_generate_many(messages, phase, task, n=n, temperature=temperature, seed=seed, fmt=fmt)

    engine.generate_many = generate_many  # the gate's greedy replies: the engine, adapter loaded
    build_trainer_image(docker_client)
    cfg.rounds.rounds, cfg.rounds.tasks_per_round, cfg.rounds.k, cfg.rounds.concurrency = 2, 2, 2, 2
    cfg.gate.tasks, cfg.gate.noise = ["HumanEval/5"], 1.0  # noise 1.0: any adapter that loads is promoted
    run = tmp_path / "run"
    try:
        state = Rounds(run, cfg, engine, select_tasks(TASKS), trainer=Trainer(model_dir=engine.model_dir,
                                                                              max_steps=2)).run()
        served = sorted(m["id"] for m in __import__("requests").get(vllm_engine.base_url + "/models",
                                                                       headers=vllm_engine.headers,
                                                                       timeout=10).json()["data"])
    finally:
        if engine.adapter_id:
            engine.load_adapter(None, None)  # the session's server goes back to the base model
    assert len(state.rounds) == 2 and state.rounds[0].samples_added > 0
    bursts = [r.burst for r in state.rounds]
    assert [b.adapter for b in bursts] == ["v0001", "v0002"] and all(b.promoted for b in bursts)
    assert state.current_adapter == "v0002" and any(name.startswith("v0002-") for name in served)
    assert verify(run / "audit.jsonl").ok


def test_evaluate_tasks_batches_requests_and_keeps_the_order(tmp_path, sandbox_image):
    """The held-out evaluation of the experiment: one greedy reply per task, asked together of a
    batching backend, verified like a sample, results in task order."""
    import threading

    from orchestrator.models.backends import ReplayBackend
    from orchestrator.agent.rounds import evaluate_tasks
    from orchestrator.sandbox.container import SandboxLimits
    from orchestrator.evaluation.suites import select_tasks

    tasks = select_tasks("bugfix:seed#0,bugfix:seed#1,bugfix:seed#2").tasks
    replies = tmp_path / "r.jsonl"
    replies.write_text("".join(json.dumps({"phase": "patch", "task": t.id, "reply": patch(
        SEED_FIXED if i != 1 else SEED_FIXED.replace("a + b", "a * b"))}) + "\n" for i, t in enumerate(tasks)))

    class Batching(ReplayBackend):
        capabilities = frozenset({"batching"})
        lock, in_flight, peak = threading.Lock(), 0, 0

        def generate(self, *args, **kwargs):
            with self.lock:
                type(self).in_flight += 1
                type(self).peak = max(self.peak, self.in_flight)
            time.sleep(0.3)
            try:
                with self.lock:
                    return super().generate(*args, **kwargs)
            finally:
                with self.lock:
                    type(self).in_flight -= 1

    backend = Batching(replies)
    results = evaluate_tasks(backend, tasks, SandboxLimits.load(), tmp_path / "scratch")
    assert [r.task_id for r in results] == [t.id for t in tasks] and [r.correct for r in results] == [1, 0, 1]
    assert Batching.peak > 1
