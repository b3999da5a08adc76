"""Self-improvement rounds over many tasks (``rsi run --suite NAME`` or ``--tasks ...``).

The driver, top to bottom (``Rounds.run``):

1. **draw** the round's tasks from the suite's train tasks (a seeded permutation, walked in order,
   so rounds cover the suite before any task repeats);
2. **attempt** them a chunk at a time (``step_chunk``): ``k`` candidates per task from one
   ``backend.generate_many`` call (temperature, seeded), each checked by schema and policy on its own
   fresh workspace, a malformed one re-asked with the reasons up to ``max_retries`` times; the
   accepted ones are verified in parallel sandboxes (bounded concurrency) with the task's hidden
   tests; a candidate is *verified* when every visible and hidden test passes (``is_verified``);
3. **archive** the verified candidates (deduplicated by their messages; provenance as the
   single-task loop records it);
4. **train** (training.burst): an adapter on every sample so far, loaded into the engine and gated
   on the held-out problems (gate.py); promoted or not, as the gate decides;
5. **stop** on a budget (rounds, wall time, generated samples) or the noise-aware plateau
   (``[gate] patience`` bursts in a row without a held-out improvement beyond noise).

Steps return typed records (``TaskOutcome``, ``BurstOutcome``); the driver alone applies them to
the state (archive, audit, counters) and saves it atomically after every chunk and step, so a run
killed at any point resumes (``rsi run --resume DIR``) at the first chunk it had not finished:
candidates are seeded, and the archive ignores a sample it already holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import structlog
from pydantic import BaseModel, Field
from rich.console import Console

from orchestrator.agent.mutation import behavioural_kill, mutants
from orchestrator.agent.tasks import Task, hold_back, protected_files
from orchestrator.config import RunConfig
from orchestrator.evaluation.grading import Attempt, archivable, run_judged, verified
from orchestrator.evaluation.humaneval import BATCHED_PROBLEMS
from orchestrator.evaluation.suites import Suite, SuiteTask, load_suite, select_tasks
from orchestrator.models.backends import Backend, ReplayExhausted
from orchestrator.protocol import prompts
from orchestrator.protocol.pipeline import apply_reply, reply_digest
from orchestrator.protocol.policy import Policy
from orchestrator.protocol.reply_format import JSON, ReplyFormat, for_request
from orchestrator.protocol.workspace import Workspace, atomic_write
from orchestrator.sandbox import evidence
from orchestrator.sandbox.container import InfraError, SandboxLimits, SandboxResult, run_tests
from orchestrator.store.archive import Archive
from orchestrator.store.audit import AuditLog
from orchestrator.store.text import json_line, printable
from orchestrator.training.adapters import private_to_us

log = structlog.get_logger(__name__)
STATE_FILE = "rounds.json"


class RoundsError(RuntimeError):
    """A rounds run cannot start or continue (one line for the CLI)."""


# ----- records -----

class CandidateOutcome(BaseModel):
    index: int
    reply_sha256: str
    retries: int = 0                  # re-asks after a malformed or refused reply
    accepted: bool = False            # schema and policy accepted it
    rejection: str | None = None      # the first reason code when refused
    verdict: str | None = None        # the sandbox verdict when run
    passed: int = 0                   # scored tests passed / scored tests (evaluation.reward)
    total: int = 0
    verified: bool = False
    evidence: str | None = None       # the sandbox run's saved evidence (orchestrator/sandbox/evidence.py)


class Sample(BaseModel):
    """A verified candidate, ready for the archive (the driver writes it)."""

    messages: list[dict]
    provenance: dict


class TaskOutcome(BaseModel):
    task_id: str
    candidates: list[CandidateOutcome] = []
    samples: list[Sample] = []
    hack_screen: dict[str, int] = {}
    generated: int = 0                # replies asked of the model (candidates + retries)
    tests_outcome: str | None = None  # the edge-case test phase, when on
    timings: dict[str, float] = {}
    held_back: list[str] = []         # visible test functions held back as hidden tests (tasks.hold_back)
    unjudged: bool = False            # no hidden tests at all: nothing from this task is archived

    @property
    def verified(self) -> int:
        return sum(c.verified for c in self.candidates)


class BurstOutcome(BaseModel):
    adapter: str | None = None
    promoted: bool = False
    improved: bool = False
    reason: str = ""
    comparison: dict | None = None
    duration_s: float = 0.0


class RoundRecord(BaseModel):
    round: int
    task_ids: list[str]
    step: str = "tasks"               # tasks | train | done
    done: list[str] = []              # tasks finished in this round
    candidates: int = 0
    accepted: int = 0
    verified: int = 0
    generated: int = 0
    solved_tasks: int = 0             # tasks with at least one verified candidate
    unjudged_tasks: int = 0           # tasks with no hidden tests: verified or not, never archived
    samples_added: int = 0            # new samples archived this round (after dedup)
    samples_total: int = 0
    tests_kept: int = 0               # edge-case test replies kept by the mutation gate (tests phase on)
    rejections: dict[str, int] = {}
    verdicts: dict[str, int] = {}
    # Hack-screen counters per round (HOOK for the lead's screens, issue #11): filled by
    # ``hack_screen_counts``; the report plots every key.
    hack_screen: dict[str, int] = {}
    burst: BurstOutcome | None = None
    truncated: str | None = None      # why the round's tasks were cut short (a budget)
    timings: dict[str, float] = {}


class RoundsState(BaseModel):
    run_id: str
    suite: str
    suite_seed: int
    backend: str
    model_id: str
    round: int = 1                    # the round in progress
    rounds: list[RoundRecord] = []
    generated: int = 0                # replies asked of the model over the whole run (the samples budget)
    samples: int = 0                  # archived samples
    elapsed_s: float = 0.0            # wall time over all sessions of this run
    current_adapter: str | None = None
    train_plateau: int = 0
    backend_snapshot: dict = Field(default_factory=dict)
    stop_reason: str | None = None

    def save(self, path: Path) -> None:
        atomic_write(path, json_line(self.model_dump(mode="json"), indent=2).encode())  # lone surrogates escaped

    def record(self, rnd: int) -> RoundRecord | None:
        return next((r for r in self.rounds if r.round == rnd), None)


# ----- helpers -----

def is_verified(attempt: Attempt) -> bool:
    """The archive decision: every in-process and every judged test passed. The rule itself is
    orchestrator.evaluation.grading's (``verified``), the one place that says what passing is."""
    return attempt.result is not None and verified(attempt.result)


# Policy refusals that are attacks on the grader rather than malformed replies.
HACK_CODES = {"protected_file", "hack_suspected", "shadows_module", "forbidden_file", "forbidden_directory",
              "parent_reference", "absolute_path", "symlink_in_path", "test_directory", "not_source"}


def hack_screen_counts(decision, result: SandboxResult | None) -> dict[str, int]:
    """HOOK: hack-screen counters for one candidate. Today: replies the policy refused as an attack
    on the tests (protected files), and sandbox verdicts that are not a clean pass/fail (tampered,
    timeout, error, oom). The lead's screens (issue #11) add their keys here, e.g. from the judged
    result; the rounds report plots every key it finds."""
    out: dict[str, int] = {}
    for r in getattr(decision, "reasons", []) or []:
        if r.code in HACK_CODES:
            out[f"policy:{r.code}"] = out.get(f"policy:{r.code}", 0) + 1
    if result is not None:
        if result.verdict not in ("pass", "fail"):
            out[f"verdict:{result.verdict}"] = 1
        judged = getattr(result, "judged", None)
        if judged is not None and judged.verdict not in ("pass", "fail"):
            out[f"judged:{judged.verdict}"] = 1
        screens = getattr(result, "hack_screen", None)  # the lead's counters, when SandboxResult has them
        if isinstance(screens, dict):
            for k, v in screens.items():
                out[f"screen:{k}"] = out.get(f"screen:{k}", 0) + int(v)
    return out


def _add(into: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


def _seed(*parts) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def default_concurrency() -> int:
    return max(1, (os.cpu_count() or 2))


def _sources(ws: Path, protected: list[str]) -> list[str]:
    return [str(p.relative_to(ws)) for p in sorted(ws.rglob("*.py"))
            if str(p.relative_to(ws)) not in protected and ".git" not in p.parts and "__pycache__" not in p.parts]


def request_format(backend: Backend, phase: str, sources: list[str], ws: Path) -> ReplyFormat:
    """The reply format of one request: the model's preferred one where the request writes one file."""
    try:
        return for_request(getattr(backend, "reply_format", "json") or "json", phase, sources, ws)
    except ValueError:
        return JSON


def task_request(backend: Backend, st: SuiteTask, ws: Path, protected: list[str]) -> tuple[ReplyFormat, list[dict]]:
    """The patch request of a task: a repo task asks for one function (its file is the project's,
    far longer than a reply), every other task for files in the model's preferred format."""
    if st.kind == "repo":
        fmt = ReplyFormat("code", st.focus, st.entry_point)
        return fmt, prompts.function_patch_messages(ws, fmt, st.context)
    sources = _sources(ws, protected)
    fmt = request_format(backend, "patch", sources, ws)
    return fmt, prompts.patch_messages(ws, sources, protected, None, fmt)


class Baselines:
    """The untouched project's own run (with the task's withheld tests removed, as in its workspace),
    once per project and set of removed tests (run_tests(baseline=...)), so a test the project itself
    skips on this platform does not fail every candidate; None for other tasks."""

    def __init__(self, limits: SandboxLimits, scratch: Path):
        self.limits, self.scratch = limits, scratch
        self._runs: dict[str, SandboxResult] = {}
        self._lock = threading.Lock()

    def __call__(self, st: SuiteTask) -> SandboxResult | None:
        if st.kind != "repo":
            return None
        tests = {rel: text for rel, text in st.files.items() if rel != st.focus}  # withheld tests removed
        key = hashlib.sha256(json.dumps([st.path, sorted(tests.items())]).encode()).hexdigest()
        with self._lock:
            if key not in self._runs:
                from orchestrator.evaluation.repo_tasks import copy_project

                dest = self.scratch / f"baseline-{key[:16]}"
                shutil.rmtree(dest, ignore_errors=True)
                copy_project(Path(st.path), dest)
                for rel, text in tests.items():
                    (dest / rel).write_text(text, encoding="utf-8")
                self._runs[key] = run_tests(dest, limits=self.limits)
                shutil.rmtree(dest, ignore_errors=True)
            return self._runs[key]


def repo_image(tasks: list[SuiteTask], limits: SandboxLimits) -> str:
    """The sandbox image for a suite: the project's derived image when it has repo tasks."""
    paths = {t.path for t in tasks if t.kind == "repo"}
    if not paths:
        return limits.image
    if len(paths) > 1:
        raise RoundsError(f"repo tasks from {len(paths)} projects in one run; one project per run")
    from orchestrator.sandbox.container import connect
    from orchestrator.sandbox.project_image import ProjectImageError, image_for_workspace

    try:
        return image_for_workspace(connect(), paths.pop(), base=limits.image)
    except ProjectImageError as exc:
        raise InfraError(str(exc)) from exc


def can_train(backend: Backend) -> bool:
    caps = getattr(backend, "capabilities", None)
    if caps is not None and len(caps):
        return "adapters" in caps
    return type(backend).load_adapter is not Backend.load_adapter


class Trainer(BaseModel):
    """What a burst needs besides the run: the base model directory and the trainer settings."""

    model_dir: Path
    max_steps: int = 30
    gpu: bool = False


# ----- the driver -----

class Rounds:
    def __init__(self, run_dir: Path, config: RunConfig, backend: Backend, suite: Suite | None = None,
                 trainer: Trainer | None = None, console: Console | None = None):
        self.run_dir = Path(run_dir)
        self.config, self.backend, self.trainer = config, backend, trainer
        self.rc = config.rounds
        self.console = console or Console(stderr=True)
        self.limits = SandboxLimits.load()
        self.concurrency = self.rc.concurrency or default_concurrency()
        self.policy = Policy.load()
        self._clock = time.monotonic()
        if suite is not None:
            self._start(suite)
        else:
            self._resume()
        self.tasks = {t.id: t for t in self.suite.tasks}
        self.limits.image = repo_image(self.suite.tasks, self.limits)
        self.baselines = Baselines(self.limits, self.run_dir / "work")

    # ----- set-up -----
    def _start(self, suite: Suite) -> None:
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise RoundsError(f"{self.run_dir} is not empty; use --resume to continue a run")
        train = [t for t in suite.tasks if t.split == "train"]
        if not train:
            raise RoundsError(f"suite {suite.name} has no train tasks (held-out tasks are never trained on)")
        self.suite = Suite(name=suite.name, seed=suite.seed, tasks=train)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        private_to_us(self.run_dir)
        atomic_write(self.run_dir / "run.json", RunInfo(
            mode="rounds", suite=suite.name, suite_seed=suite.seed, tasks=[t.id for t in train],
            task_specs=[t for t in train if suite.name.startswith("tasks:") or t.kind in ("dir", "repo")],
            config=self.config.model_dump(), backend=self.backend.name,
            model=self.backend.model_id).model_dump_json(indent=2).encode())
        self.state = RoundsState(run_id=f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}",
                                 suite=suite.name, suite_seed=suite.seed, backend=self.backend.name,
                                 model_id=self.backend.model_id, current_adapter=self.backend.adapter_id)
        self.audit = AuditLog(self.run_dir / "audit.jsonl")
        self.archive = Archive(self.run_dir / "samples.jsonl")
        self.audit.append("rounds_started", run_id=self.state.run_id, suite=suite.name, seed=suite.seed,
                          train_tasks=len(train), backend=self.backend.name, model=self.backend.model_id,
                          config=self.config.model_dump())
        self._save()

    def _resume(self) -> None:
        path = self.run_dir / STATE_FILE
        if not path.exists():
            raise RoundsError(f"{self.run_dir} has no {STATE_FILE} to resume")
        info = RunInfo.model_validate_json((self.run_dir / "run.json").read_text())
        self.state = RoundsState.model_validate(json.loads(path.read_text()))  # lone surrogates: json.loads, not pydantic's parser
        if info.task_specs:
            tasks = {t.id: t for t in info.task_specs}
        else:
            tasks = load_suite(info.suite, info.suite_seed).by_id()
        missing = [t for t in info.tasks if t not in tasks]
        if missing:
            raise RoundsError(f"suite {info.suite} no longer has tasks {missing[:3]}")
        self.suite = Suite(name=info.suite, seed=info.suite_seed, tasks=[tasks[t] for t in info.tasks])
        self.backend.restore(self.state.backend_snapshot)
        if self.state.current_adapter:
            from orchestrator.training.adapters import Registry

            self.backend.load_adapter(Registry(self.run_dir).checked_path(self.state.current_adapter),
                                      self.state.current_adapter)
        self.audit = AuditLog(self.run_dir / "audit.jsonl")
        self.archive = Archive(self.run_dir / "samples.jsonl")
        self.audit.append("rounds_resumed", round=self.state.round, samples=len(self.archive),
                          torn_line_cut=self.audit.recovered)

    def _save(self) -> None:
        now = time.monotonic()
        self.state.elapsed_s += now - self._clock
        self._clock = now
        self.state.samples = len(self.archive)
        self.state.backend_snapshot = self.backend.snapshot()
        self.state.save(self.run_dir / STATE_FILE)

    def say(self, msg: str) -> None:
        self.console.print(printable(msg))  # a reason may quote the model or a container

    # ----- step: draw -----
    def draw(self, rnd: int) -> RoundRecord:
        order = [t.id for t in self.suite.tasks]
        if self.rc.shuffle:
            order = sorted(order)
            random.Random(_seed(self.rc.seed, "order", self.suite.name)).shuffle(order)
        n = min(self.rc.tasks_per_round, len(order))
        start = (rnd - 1) * n
        return RoundRecord(round=rnd, task_ids=[order[(start + i) % len(order)] for i in range(n)])

    # ----- step: attempt a chunk of tasks -----
    def step_chunk(self, rnd: int, chunk: list[SuiteTask]) -> list[TaskOutcome]:
        """k candidates per task, validated, verified in parallel sandboxes. Writes nothing but
        scratch workspaces (removed); the driver applies the outcomes."""
        scratch = self.run_dir / "work" / f"r{rnd}"
        shutil.rmtree(scratch, ignore_errors=True)
        outcomes, pending = [], []  # pending: (outcome, candidate, workspace, task, messages, reply)
        try:
            for st in chunk:
                out, runs = self._candidates(rnd, st, scratch)
                outcomes.append(out)
                pending += runs
            t0 = time.perf_counter()
            # identical replies to the same task are graded once (the same edits on the same files)
            key = [(p[3].id, p[1].reply_sha256) for p in pending]
            unique = {k: p for k, p in zip(key, pending)}
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                graded = dict(zip(unique, pool.map(lambda p: run_judged(
                    p[2].path, sorted(p[7]), p[3].hidden_tests, self.limits, p[3].judge_visible,
                    baseline=self.baselines(self.tasks[p[3].id])), unique.values())))
            results = [graded[k] for k in key]
            per_task = (time.perf_counter() - t0) / max(1, len(chunk))
            for (out, cand, ws, task, messages, reply, decision, scored), result in zip(pending, results):
                attempt = Attempt(decision, result, scored)
                cand.verdict, (cand.passed, cand.total) = result.verdict, attempt.reward()
                cand.evidence = result.evidence_id
                cand.verified = is_verified(attempt)
                _add(out.hack_screen, hack_screen_counts(decision, result))
                if cand.verified and archivable(result):  # hidden tests it never saw passed too
                    st = self.tasks[task.id]
                    out.samples.append(Sample(messages=messages + [{"role": "assistant", "content": reply}],
                                              provenance={
                        "run_id": self.state.run_id, "round": rnd, "phase": "patch", "task": task.id,
                        "suite": self.suite.name, "source": st.source, "kind": st.kind,
                        "candidate": cand.index, "workspace_commit": ws.head(),
                        "verdict_digest": _digest(result), "model": self.backend.model_id,
                        "adapter": self.backend.adapter_id, "reply_sha256": cand.reply_sha256}))
            for out in outcomes:
                out.timings["sandbox"] = per_task
            if self.rc.tests_phase:  # the seed's edge-case test phase, on each solved task's first fix
                first: dict[str, tuple] = {}
                for p in pending:
                    if p[1].verified and p[3].hidden_tests and self.tasks[p[3].id].kind != "repo":
                        first.setdefault(p[3].id, p)
                for out, cand, ws, task, *_ in first.values():
                    t1 = time.perf_counter()
                    self._edge_tests(rnd, self.tasks[task.id], ws, out)
                    out.timings["tests_phase"] = time.perf_counter() - t1
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return outcomes

    def _candidates(self, rnd: int, st: SuiteTask, scratch: Path):
        task: Task = st.task(self.run_dir / "tasks")
        out = TaskOutcome(task_id=st.id)
        if not task.hidden_tests:  # every test visible: hold back a seeded share, else archive nothing
            held_dir = self.run_dir / "tasks" / f"held-{_safe(st.id)}"
            shutil.rmtree(held_dir, ignore_errors=True)
            task, out.held_back = hold_back(task, held_dir, _seed(self.rc.seed, "hold", st.id))
            out.unjudged = not task.hidden_tests
        base = Workspace.create(task.source_dir, scratch / _safe(st.id) / "prompt")
        protected = protected_files(base.path)
        policy = self.policy.model_copy(deep=True)
        policy.protected = protected
        scored = set(protected)  # the protected files (the judge runs their tests and the hidden ones)
        fmt, messages = task_request(self.backend, st, base.path, protected)
        seed = _seed(self.rc.seed, rnd, st.id)
        t0 = time.perf_counter()
        replies = self.backend.generate_many(messages, "patch", st.id, n=self.rc.k,
                                             temperature=self.rc.temperature, seed=seed, fmt=fmt)
        out.generated += len(replies)
        gen = time.perf_counter() - t0
        runs = []
        for i, reply in enumerate(replies):
            ws = Workspace.create(task.source_dir, scratch / _safe(st.id) / f"c{i}")
            cand = CandidateOutcome(index=i, reply_sha256=reply_digest(reply))
            applied = apply_reply(ws, self.audit, reply, "patch", policy, rnd, 0, fmt=fmt)
            for attempt in range(1, self.rc.max_retries + 1):
                if applied.decision.accepted:
                    break
                _add(out.hack_screen, hack_screen_counts(applied.decision, None))
                feedback = applied.decision.feedback()
                t1 = time.perf_counter()
                reply = self.backend.generate(prompts.retry_messages(messages, reply, feedback, fmt), "patch", st.id,
                                              seed=seed + 7919 * attempt + i, fmt=fmt)
                gen += time.perf_counter() - t1
                out.generated += 1
                cand.retries, cand.reply_sha256 = attempt, reply_digest(reply)
                applied = apply_reply(ws, self.audit, reply, "patch", policy, rnd, attempt, fmt=fmt)
            cand.accepted = applied.decision.accepted
            if not cand.accepted:
                _add(out.hack_screen, hack_screen_counts(applied.decision, None))
                cand.rejection = applied.decision.reasons[0].code if applied.decision.reasons else "rejected"
            else:
                runs.append((out, cand, ws, task, messages, reply, applied.decision, scored))
            out.candidates.append(cand)
        out.timings["generation"] = gen
        return out, runs

    def _edge_tests(self, rnd: int, st: SuiteTask, ws: Workspace, out: TaskOutcome) -> None:
        """Ask for edge-case tests of the verified code; keep them (as a sample) only when they pass on
        it and kill at least one AST mutant of it (the loop's mutation gate)."""
        protected = protected_files(ws.path)
        policy = self.policy.model_copy(deep=True)
        policy.protected = protected
        sources = _sources(ws.path, protected)
        fmt = request_format(self.backend, "tests", sources, ws.path)
        messages = prompts.tests_messages(ws.path, sources, protected, fmt)
        reply = self.backend.generate(messages, "tests", st.id, seed=_seed(self.rc.seed, rnd, st.id, "tests"),
                                      fmt=fmt)
        out.generated += 1
        applied = apply_reply(ws, self.audit, reply, "tests", policy, rnd, 0, write=False, fmt=fmt)
        if not applied.decision.accepted:
            out.tests_outcome = "refused: " + (applied.decision.reasons[0].code if applied.decision.reasons else "?")
            return
        candidate = {e.path: e.content for e in applied.decision.edits}
        res = run_tests(ws.path, limits=self.limits, overlay=candidate, exclude=set(protected))
        if res.verdict != "pass":
            out.tests_outcome = f"fail on the verified code ({res.verdict})"
            return
        tried = 0
        for rel in sources:
            for m in mutants(ws.read(rel) or "", limit=self.config.run.max_mutants - tried):
                tried += 1
                if behavioural_kill(run_tests(ws.path, limits=self.limits, overlay={**candidate, rel: m.source},
                                              exclude=set(protected)), candidate) is not None:
                    out.tests_outcome = f"kept: killed a mutant ({m.description})"
                    out.samples.append(Sample(messages=messages + [{"role": "assistant", "content": reply}],
                                              provenance={
                        "run_id": self.state.run_id, "round": rnd, "phase": "tests", "task": st.id,
                        "suite": self.suite.name, "source": st.source, "kind": st.kind, "candidate": -1,
                        "workspace_commit": ws.head(), "verdict_digest": _digest(res),
                        "model": self.backend.model_id, "adapter": self.backend.adapter_id,
                        "reply_sha256": applied.digest, "mutant": m.description}))
                    return
            if tried >= self.config.run.max_mutants:
                break
        out.tests_outcome = f"asserts nothing: none of {tried} mutants killed"

    # ----- step: train and gate -----
    def step_train(self, rnd: int) -> BurstOutcome:
        if self.trainer is None:
            return BurstOutcome(reason="training is off (no trainer configured)")
        if not can_train(self.backend):
            return BurstOutcome(reason=f"training is off: the {self.backend.name} backend cannot load adapters")
        from orchestrator.training.burst import burst
        from orchestrator.training.runner.config import TrainConfig

        t0 = time.perf_counter()
        cfg = TrainConfig(max_steps=self.trainer.max_steps)
        if self.trainer.gpu:  # the GPU profile: 4-bit, LoRA on its targets (orchestrator/models/gpu.py)
            from orchestrator.models.gpu import trainer_config

            cfg = trainer_config(self.config.gpu, cfg)
        r = burst(self.run_dir, self.archive.path, len(self.archive), self.backend, self.audit,
                  self.trainer.model_dir, cfg, self.config.gate, self.limits, self.trainer.gpu, iteration=rnd,
                  say=self.say)
        return BurstOutcome(adapter=r.adapter, promoted=r.promoted, improved=r.improved, reason=r.reason,
                            comparison=r.comparison, duration_s=time.perf_counter() - t0)

    # ----- applying records -----
    def apply_task(self, rec: RoundRecord, out: TaskOutcome) -> None:
        added = 0
        for s in out.samples:
            if self.archive.add(s.messages, s.provenance):
                added += 1
                self.audit.append("sample_archived", round=rec.round, task=out.task_id,
                                  candidate=s.provenance["candidate"], reply_sha256=s.provenance["reply_sha256"])
        for c in out.candidates:
            if c.verdict:
                _add(rec.verdicts, {c.verdict: 1})
            if c.rejection:
                _add(rec.rejections, {c.rejection: 1})
        rec.candidates += len(out.candidates)
        rec.accepted += sum(c.accepted for c in out.candidates)
        rec.verified += out.verified
        rec.generated += out.generated
        rec.solved_tasks += out.verified > 0
        rec.unjudged_tasks += out.unjudged
        rec.samples_added += added
        rec.samples_total = len(self.archive)
        _add(rec.hack_screen, out.hack_screen)
        for k, v in out.timings.items():
            rec.timings[k] = rec.timings.get(k, 0.0) + v
        rec.done.append(out.task_id)
        self.state.generated += out.generated
        self.audit.append("task_attempted", round=rec.round, task=out.task_id, candidates=len(out.candidates),
                          verified=out.verified, samples_added=added,
                          verdicts=[c.verdict for c in out.candidates],
                          evidence=[c.evidence for c in out.candidates],
                          rejections=[c.rejection for c in out.candidates if c.rejection],
                          tests_phase=out.tests_outcome, held_back=out.held_back, unjudged=out.unjudged)
        if out.tests_outcome and out.tests_outcome.startswith("kept"):
            rec.tests_kept += 1

    def apply_burst(self, rec: RoundRecord, b: BurstOutcome) -> None:
        rec.burst = b
        if b.adapter is not None:
            self.state.current_adapter = self.backend.adapter_id
            self.state.train_plateau = 0 if b.improved else self.state.train_plateau + 1
        self.audit.append("round_trained", round=rec.round, adapter=b.adapter, promoted=b.promoted,
                          improved=b.improved, reason=b.reason, current=self.backend.adapter_id)

    # ----- budgets and stop -----
    def budget_hit(self) -> str | None:
        rc = self.rc
        if rc.max_wall_s and self.state.elapsed_s + (time.monotonic() - self._clock) >= rc.max_wall_s:
            return f"wall-time budget of {rc.max_wall_s:.0f} s reached"
        if rc.max_samples and self.state.generated >= rc.max_samples:
            return f"sample budget of {rc.max_samples} generated replies reached"
        return None

    def stop_reason(self) -> str | None:
        hit = self.budget_hit()
        if hit:
            return hit
        patience = self.config.gate.patience
        if patience and self.state.train_plateau >= patience:
            return (f"plateau: {self.state.train_plateau} training bursts without a held-out improvement beyond "
                    "noise (margin or the interval's half-width)")
        if self.state.round >= self.rc.rounds:
            return f"maximum of {self.rc.rounds} rounds reached"
        return None

    # ----- the driver -----
    def run(self) -> RoundsState:
        s = self.state
        evidence.record_to(self.run_dir / "evidence")  # every sandbox run, re-gradable: rsi sandbox regrade
        try:
            while s.stop_reason is None:
                rec = s.record(s.round)
                if rec is None:
                    rec = self.draw(s.round)
                    s.rounds.append(rec)
                    self.audit.append("round_drawn", round=rec.round, tasks=rec.task_ids)
                    self._save()
                if rec.step == "tasks":
                    self._tasks(rec)
                    rec.step = "train"
                    self._save()
                if rec.step == "train":
                    self.say(f"[bold]round {rec.round}[/]: {rec.verified}/{rec.candidates} candidates verified, "
                             f"{rec.samples_added} new samples ({len(self.archive)} in all)")
                    if rec.unjudged_tasks:
                        self.say(f"[bold yellow]archive off for {rec.unjudged_tasks} task(s)[/]: no hidden tests and "
                                 "none of their visible tests could be held back, so a pass cannot be told from a "
                                 "reply that reads the tests; nothing from them is archived")
                    self.apply_burst(rec, self.step_train(rec.round))
                    rec.step = "done"
                    self._save()
                s.stop_reason = rec.truncated or self.stop_reason()
                if s.stop_reason is None:
                    s.round += 1
                self._save()
        except ReplayExhausted as exc:
            s.stop_reason = f"replay exhausted ({exc})"
        self._save()
        self.audit.append("rounds_stopped", reason=s.stop_reason, rounds=s.round, samples=len(self.archive),
                          generated=s.generated, elapsed_s=round(s.elapsed_s, 1))
        self.say(f"[bold]stopped:[/] {s.stop_reason} · {s.round} rounds · {len(self.archive)} samples archived · "
                 f"adapter {s.current_adapter or 'base'} · run dir {self.run_dir}")
        evidence.record_to(None)
        return s

    def _tasks(self, rec: RoundRecord) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        pending = [self.tasks[t] for t in rec.task_ids if t not in rec.done]
        columns = [TextColumn(f"round {rec.round}/{self.rc.rounds}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("tasks · {task.fields[verified]}/{task.fields[cands]} verified · "
                              "{task.fields[samples]} samples · {task.fields[generated]} generated"),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
        with Progress(*columns, console=self.console, transient=False) as progress:
            bar = progress.add_task("tasks", total=len(rec.task_ids), completed=len(rec.done),
                                    verified=rec.verified, cands=rec.candidates, samples=len(self.archive),
                                    generated=self.state.generated)
            step = max(1, self.concurrency)
            for i in range(0, len(pending), step):
                hit = self.budget_hit()
                if hit:
                    rec.truncated = hit
                    self.audit.append("round_truncated", round=rec.round, reason=hit, done=len(rec.done))
                    break
                for out in self.step_chunk(rec.round, pending[i:i + step]):
                    self.apply_task(rec, out)
                self._save()
                progress.update(bar, completed=len(rec.done), verified=rec.verified, cands=rec.candidates,
                                samples=len(self.archive), generated=self.state.generated)
                if not self.console.is_terminal:  # a log, not a live bar: one line per chunk
                    self.say(f"round {rec.round}: {len(rec.done)}/{len(rec.task_ids)} tasks, {rec.verified}/"
                             f"{rec.candidates} candidates verified, {len(self.archive)} samples, "
                             f"{self.state.generated} replies generated")


class RunInfo(BaseModel):
    mode: str = "rounds"
    suite: str
    suite_seed: int
    tasks: list[str]
    task_specs: list[SuiteTask] = []  # --tasks and dir suites: the specs themselves (not regenerated)
    config: dict
    backend: str
    model: str


def is_rounds_dir(path: Path) -> bool:
    return (Path(path) / STATE_FILE).exists()


def _safe(task_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in task_id)


def _digest(result: SandboxResult) -> str:
    # json.dumps, not model_dump_json: a container's text may hold lone surrogates (issue 24)
    data = json.dumps(result.model_dump(mode="json", exclude={"duration_s", "output", "evidence_id"}), sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()


def resolve_suite(suite: str | None, tasks: str | None, seed: int) -> Suite:
    if suite and tasks:
        raise RoundsError("give --suite or --tasks, not both")
    return select_tasks(tasks, seed) if tasks else load_suite(suite, seed)


# ----- held-out evaluation of suite tasks (the experiment and the report) -----

def evaluate_tasks(backend: Backend, tasks: list[SuiteTask], limits: SandboxLimits, scratch: Path,
                   on_task: Callable | None = None, concurrency: int | None = None):
    """One greedy patch reply per task, verified as in the rounds (all visible and hidden tests):
    per-task ProblemResult (n 1, correct 0/1), in task order."""
    from orchestrator.evaluation.humaneval import ProblemResult

    policy = Policy.load()
    results: list = []
    pending = []
    shutil.rmtree(scratch, ignore_errors=True)
    limits = limits.model_copy(update={"image": repo_image(tasks, limits)})
    baselines = Baselines(limits, scratch)
    try:
        asks = []
        for st in tasks:
            task = st.task(scratch / "tasks")
            ws = Workspace.create(task.source_dir, scratch / _safe(st.id))
            p = policy.model_copy(deep=True)
            p.protected = protected_files(ws.path)
            fmt, messages = task_request(backend, st, ws.path, p.protected)
            asks.append((st, task, ws, p, fmt, messages))
        # a batching backend (vLLM) gets the requests together; greedy replies do not depend on the order
        workers = BATCHED_PROBLEMS if "batching" in backend.capabilities else 1
        with ThreadPoolExecutor(max_workers=workers) as pool:
            replies = list(pool.map(lambda a: backend.generate(a[5], "patch", a[0].id, fmt=a[4]), asks))
        for (st, task, ws, p, fmt, _), reply in zip(asks, replies):
            applied = apply_reply(ws, None, reply, "patch", p, fmt=fmt)
            pending.append((st, task, ws, applied, set(p.protected)))
        runnable = [x for x in pending if x[3].decision.accepted]
        with ThreadPoolExecutor(max_workers=concurrency or default_concurrency()) as pool:
            ran = dict(zip([x[0].id for x in runnable],
                           pool.map(lambda x: run_judged(x[2].path, sorted(x[4]), x[1].hidden_tests, limits,
                                                         x[1].judge_visible, baseline=baselines(x[0])), runnable)))
        for st, task, ws, applied, scored in pending:
            result = ran.get(st.id)
            attempt = Attempt(applied.decision, result, scored)
            ok = is_verified(attempt)
            reasons = [] if result else [str(applied.decision.reasons[0])[:200] if applied.decision.reasons else ""]
            r = ProblemResult(task_id=st.id, n=1, correct=int(ok), verdicts=[result.verdict if result else "rejected"],
                              rejected=0 if result else 1, reasons=reasons)
            results.append(r)
            if on_task:
                on_task(r)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results
