"""The agent loop: patch -> evaluate (keep or revert) -> generate tests -> archive, until a stop.

Each iteration:
1. **Patch**: the model sees the source, the protected tests and the last result; its reply
   goes through schema and policy (retried with the reasons, up to ``max_retries``), is
   committed, and the workspace is evaluated in the sandbox: protected tests, accepted
   generated tests and the task's hidden tests. The reward is the number of passing
   protected + hidden tests; an improvement beats the best so far and breaks no accepted
   generated test. Anything else is reverted, so the workspace always holds the best state.
2. **Test generation**, against the code that stays: new ``test_gen_*.py`` files are kept
   only if they pass on it and kill at least one AST mutant of it.
3. **Archive**: each improving patch and each kept test reply goes to ``samples.jsonl``.

Generated tests are checked against the kept code (after the revert decision), so a revert
never leaves a generated test that fails on the workspace.

State is saved atomically after every step; ``resume`` restores the workspace to the last
completed step, so a crash loses at most the step in flight.
"""

from __future__ import annotations

import json
import secrets
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import structlog
from rich.console import Console
from rich.markup import escape

from orchestrator.agent.mutation import behavioural_kill, mutants
from orchestrator.agent.plateau import is_improvement, stop_reason
from orchestrator.agent.state import AgentState, state_path
from orchestrator.agent.tasks import Task, hold_back, protected_files
from orchestrator.config import RunConfig
from orchestrator.evaluation.grading import SCORING_VERDICTS, archivable, run_judged
from orchestrator.evaluation.grading import reward as count_reward
from orchestrator.models.backends import Backend, ReplayExhausted
from orchestrator.protocol import prompts
from orchestrator.protocol.pipeline import apply_reply
from orchestrator.protocol.policy import Policy, check_edits
from orchestrator.protocol.reply_format import JSON, ReplyFormat, for_request
from orchestrator.protocol.schema import Rejection
from orchestrator.protocol.workspace import Workspace
from orchestrator.sandbox import evidence
from orchestrator.sandbox.container import SandboxLimits, SandboxResult, run_tests
from orchestrator.store.archive import Archive
from orchestrator.store.audit import AuditLog
from orchestrator.store.text import printable
from orchestrator.training.adapters import private_to_us

if TYPE_CHECKING:
    from orchestrator.training.burst import BurstResult

log = structlog.get_logger(__name__)


class RunError(RuntimeError):
    """A run cannot start or continue (bad run directory, protected file changed...)."""


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


class Loop:
    def __init__(self, run_dir: Path, config: RunConfig, backend: Backend, task: Task | None = None,
                 console: Console | None = None, train_hook: Callable[["Loop"], "BurstResult"] | None = None):
        self.run_dir = Path(run_dir)
        self.config = config
        self.backend = backend
        self.console = console or Console(stderr=True)
        self.train_hook = train_hook
        self.policy = Policy.load()
        self.limits = SandboxLimits.load()
        if config.run.train_every and train_hook is None:
            raise RunError("train_every > 0 needs a trainer; none is configured")
        if task is not None:
            self._start(task)
        else:
            self._resume()
        self.policy.protected = list(self.state.protected)
        self.hidden = self._hidden()
        self.judge_visible = self._judge_visible()
        # A run whose tests are all visible archives nothing (grading.archivable): a pass of tests
        # the candidate can read cannot be told from a reply that reads them.
        self.archive_off = None if self.hidden else (
            "archive off: this workspace has no hidden tests and none of its visible tests could be held "
            "back, so a pass cannot be told from a reply that reads the tests; nothing is archived")

    # ----- set-up -----
    def _start(self, task: Task) -> None:
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise RunError(f"{self.run_dir} is not empty; use --resume to continue a run")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        private_to_us(self.run_dir)
        run_id = f"{_now()}-{secrets.token_hex(3)}"
        source = task.source_dir
        # a workspace that brings no hidden tests: a seeded share of its judgeable visible test
        # functions is held back, out of the prompt and out of the container's workspace
        task, held_back = hold_back(task, self.run_dir / "task-copy", seed=run_id)
        self.ws = Workspace.create(task.source_dir, self.run_dir / "workspace")
        if held_back:
            import shutil

            shutil.rmtree(self.run_dir / "task-copy", ignore_errors=True)
            task = task.model_copy(update={"source_dir": source})
            self.console.print(f"held back {len(held_back)} visible test function(s) as hidden tests (judged out "
                               f"of process, never shown): {escape(', '.join(held_back))}; a sample is archived "
                               "only when they pass too")
        hidden = self.run_dir / "hidden"
        hidden.mkdir()
        for name, text in task.hidden_tests.items():
            (hidden / name).write_text(text)
        (self.run_dir / "run.json").write_text(json.dumps(
            {"task": task.model_dump(mode="json"), "held_back": held_back, "config": self.config.model_dump(),
             "backend": self.backend.name, "model": self.backend.model_id}, indent=2))
        protected = protected_files(self.ws.path)
        self.state = AgentState(
            run_id=run_id, task_id=task.id, backend=self.backend.name,
            model_id=self.backend.model_id, head_commit=self.ws.head(), best_commit=self.ws.head(),
            protected=self.ws.hash_files(protected), current_adapter=self.backend.adapter_id)
        self.audit = AuditLog(self.run_dir / "audit.jsonl")
        self.archive = Archive(self.run_dir / "samples.jsonl")
        self.audit.append("run_started", run_id=self.state.run_id, task=task.id, backend=self.backend.name,
                          model=self.backend.model_id, protected=self.state.protected,
                          hidden_tests=sorted(task.hidden_tests), held_back=held_back,
                          config=self.config.model_dump())
        if not task.hidden_tests:
            self.audit.append("archive_off", reason="no hidden tests; none of the visible tests could be held back")
        self._save()

    def _resume(self) -> None:
        path = state_path(self.run_dir)
        if not path.exists():
            raise RunError(f"{self.run_dir} has no state.json to resume")
        self.state = AgentState.load(path)
        self.ws = Workspace(self.run_dir / "workspace")
        self.ws.restore(self.state.head_commit)  # drop whatever the step in flight had written
        self.backend.restore(self.state.backend_snapshot)
        if self.state.current_adapter:  # the promoted adapter, as before the crash
            from orchestrator.training.adapters import Registry

            self.backend.load_adapter(Registry(self.run_dir).checked_path(self.state.current_adapter),
                                      self.state.current_adapter)
        self.audit = AuditLog(self.run_dir / "audit.jsonl")
        self.archive = Archive(self.run_dir / "samples.jsonl")
        self.audit.append("run_resumed", iteration=self.state.iteration, step=self.state.step,
                          head_commit=self.state.head_commit, torn_line_cut=self.audit.recovered)

    def _save(self) -> None:
        self.state.head_commit = self.ws.head()
        self.state.backend_snapshot = self.backend.snapshot()
        self.state.samples = len(self.archive)
        self.state.save(state_path(self.run_dir))

    # ----- helpers -----
    @contextmanager
    def _timed(self, timings: dict, key: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - start

    def _progress(self, phase: str, extra: str = "") -> None:
        s = self.state
        best = "-" if s.best_reward < 0 else f"{s.best_reward}/{s.max_reward}"
        self.console.print(f"[bold]iteration {s.iteration}/{self.config.run.max_iterations}[/] · {phase} · "
                           f"best {best} · plateau {s.plateau}/{self.config.run.plateau_patience}"
                           + (f" · {printable(extra)}" if extra else ""))  # a reason may quote the model
        log.info("loop.progress", iteration=s.iteration, phase=phase, best=s.best_reward, plateau=s.plateau,
                 detail=extra)

    def _files(self) -> tuple[list[str], list[str]]:
        """(source files the model may edit, test files it sees) in the workspace."""
        tests, sources = [], []
        for p in sorted(self.ws.path.rglob("*.py")):
            rel = str(p.relative_to(self.ws.path))
            if rel.startswith(".") or "/." in rel:
                continue
            if rel in self.state.protected or rel in self.state.generated_tests:
                tests.append(rel)
            else:
                sources.append(rel)
        return sources, tests

    def _judge_visible(self) -> bool:
        try:
            return bool(json.loads((self.run_dir / "run.json").read_text())["task"].get("judge_visible", True))
        except (OSError, ValueError, KeyError):
            return True

    def _hidden(self) -> dict[str, str]:
        hidden = self.run_dir / "hidden"
        return {p.name: p.read_text() for p in sorted(hidden.glob("*.py"))} if hidden.exists() else {}

    def evaluate(self) -> tuple[SandboxResult, int, bool]:
        """Protected + generated tests in-process, hidden + protected tests judged out of process:
        (result, reward from the judged tests only, broke a generated test)."""
        self.ws.verify_protected(self.state.protected)
        baseline = SandboxResult(**self.state.baseline) if self.state.baseline else None
        result = run_judged(self.ws.path, sorted(self.state.protected), self.hidden, self.limits,
                            self.judge_visible, baseline=baseline)
        reward, total = count_reward(result)
        self.state.max_reward = max(self.state.max_reward, total)
        generated = [t for t in result.tests if t["nodeid"].split("::", 1)[0] in self.state.generated_tests]
        broke = result.verdict not in SCORING_VERDICTS or any(t["outcome"] != "passed" for t in generated)
        self.audit.append("sandbox_run", iteration=self.state.iteration, purpose="evaluation",
                          verdict=result.verdict, passed=result.passed, failed=result.failed, errors=result.errors,
                          skipped=result.skipped, reward=reward, reasons=result.reasons,
                          judged=_judged_summary(result), duration_s=round(result.duration_s, 3),
                          commit=self.ws.head(), evidence=result.evidence_id)
        return result, reward, broke

    def _ask(self, phase: str, messages: list[dict], timings: dict, gate: Callable | None = None,
             fmt: ReplyFormat = JSON) -> tuple[str | None, object]:
        """Ask, validate, retry with reasons. Returns (accepted reply text, applied/decision) or (None, last)."""
        convo = messages
        last = None
        for attempt in range(self.config.run.max_retries + 1):
            with self._timed(timings, "generation"):
                reply = self.backend.generate(convo, phase, self.state.task_id, fmt=fmt)
            with self._timed(timings, "validation"):
                applied = apply_reply(self.ws, self.audit, reply, phase, self.policy, self.state.iteration,
                                      attempt, write=phase == "patch", fmt=fmt)
            last = applied
            reasons = applied.decision.reasons
            if applied.decision.accepted and gate is not None:
                with self._timed(timings, "mutation_gate"):
                    reasons = gate(applied.decision)
            if applied.decision.accepted and not reasons:
                return reply, applied
            feedback = "\n".join(f"- {r}" for r in reasons)
            self._progress(phase, f"reply rejected (attempt {attempt + 1}): " + escape(str(reasons[0]) if reasons else ""))
            convo = prompts.retry_messages(messages, reply, feedback, fmt)
        return None, last

    def _archive(self, messages: list[dict], reply: str, phase: str, verdict_digest: str, digest: str) -> bool:
        added = self.archive.add(
            messages + [{"role": "assistant", "content": reply}],
            {"run_id": self.state.run_id, "iteration": self.state.iteration, "phase": phase,
             "task": self.state.task_id, "workspace_commit": self.ws.head(), "verdict_digest": verdict_digest,
             "model": self.backend.model_id, "adapter": self.backend.adapter_id, "reply_sha256": digest})
        if added:
            self.audit.append("sample_archived", iteration=self.state.iteration, phase=phase, reply_sha256=digest)
        return added

    # ----- steps -----
    def step_baseline(self) -> None:
        timings: dict = {}
        with self._timed(timings, "sandbox"):
            result, reward, _ = self.evaluate()
        self.state.best_reward = reward
        self.state.best_commit = self.ws.head()
        self.state.iteration, self.state.step = 1, "patch"
        self.state.last_result = result.model_dump(exclude={"output"})
        self.state.baseline = result.model_dump(exclude={"output"})  # later runs: its skips are excused
        judged = result.judged
        self._progress("baseline", f"reward {reward}/{self.state.max_reward} ({result.verdict}); the reward counts "
                                   f"only the {len(judged.tests) if judged else 0} tests judged out of process "
                                   f"({len(self.hidden)} hidden file(s)"
                                   f"{' + the protected visible tests' if self.judge_visible else ''}); "
                                   "in-process results are feedback")
        if self.archive_off:
            self.console.print(f"[bold yellow]{self.archive_off}[/]")

    def step_patch(self) -> None:
        s = self.state
        rec = s.record(s.iteration)
        with self._timed(rec.timings, "wall"):
            self._patch(rec)
        s.step = "tests"
        self._save()

    def _patch(self, rec) -> None:
        s = self.state
        sources, tests = self._files()
        last = SandboxResult(**s.last_result) if s.last_result else None
        fmt = for_request(self.backend.reply_format, "patch", sources, self.ws.path)
        messages = prompts.patch_messages(self.ws.path, sources, tests, last, fmt)
        self._progress("patch", "asking the model")
        reply, applied = self._ask("patch", messages, rec.timings, fmt=fmt)
        improved = False
        if reply is not None:
            rec.patch_accepted = True
            with self._timed(rec.timings, "sandbox"):
                result, reward, broke = self.evaluate()
            s.last_result = result.model_dump(exclude={"output"})
            rec.reward, rec.verdict = reward, result.verdict
            improved = is_improvement(reward, s.best_reward, broke, self.config.run.improvement_margin)
            if improved:
                s.best_reward, s.best_commit = reward, self.ws.head()
                s.files_modified = sorted(set(s.files_modified) | {e.path for e in applied.decision.edits})
                # archived only when fully passing and hidden tests (never seen) passed in the judge
                if archivable(result):
                    with self._timed(rec.timings, "archive"):
                        rec.samples_added += self._archive(messages, reply, "patch", _digest(result),
                                                           applied.digest)
            else:
                self.ws.restore(s.best_commit)
                self.audit.append("reverted", iteration=s.iteration, to=s.best_commit, reward=reward,
                                  best=s.best_reward, broke_generated=broke)
            self._progress("patch", f"reward {reward}/{s.max_reward} ({result.verdict}) -> "
                                    + ("[green]kept[/]" if improved else "[yellow]reverted[/]"))
        else:
            rec.notes.append("no acceptable patch reply")
        rec.improved = improved
        s.plateau = 0 if improved else s.plateau + 1
        rec.plateau, rec.best_reward = s.plateau, s.best_reward

    def _test_gate(self, decision) -> list[Rejection]:
        """Generated tests must pass on the current code and kill at least one mutant of it."""
        sources, tests = self._files()
        candidate = {e.path: e.content for e in decision.edits}
        others = set(tests)
        result = run_tests(self.ws.path, limits=self.limits, overlay=candidate, exclude=others)
        self.audit.append("sandbox_run", iteration=self.state.iteration, purpose="generated_tests_on_current_code",
                          verdict=result.verdict, passed=result.passed, failed=result.failed, errors=result.errors,
                          skipped=result.skipped, files=sorted(candidate), reasons=result.reasons)
        if result.verdict != "pass":
            detail = "; ".join(f"{t['nodeid']}: {t['outcome']}" for t in result.tests if t["outcome"] != "passed")
            return [Rejection(stage="policy", code="tests_fail_on_current_code",
                              detail=f"the new tests must pass on the current code ({result.verdict}) {detail}"[:300])]
        tried = 0
        for rel in sources:
            for mutant in mutants(self.ws.read(rel) or "", limit=self.config.run.max_mutants - tried):
                tried += 1
                outcome = run_tests(self.ws.path, limits=self.limits, overlay={**candidate, rel: mutant.source},
                                    exclude=others)
                # a kill is a generated test's own assert failing on what the mutant returns; any
                # other non-pass (a crash, an error, a timeout) is no evidence that it asserts anything
                by = behavioural_kill(outcome, candidate)
                killed = by is not None
                self.audit.append("mutant_run", iteration=self.state.iteration, file=rel,
                                  mutant=mutant.description, verdict=outcome.verdict, killed=killed, by=by)
                if killed:
                    return []
            if tried >= self.config.run.max_mutants:
                break
        return [Rejection(stage="policy", code="asserts_nothing",
                          detail=f"the new tests caught none of {tried} small mutants of the code by a "
                                 "failing assert; assert on exact results")]

    def step_tests(self) -> None:
        s = self.state
        rec = s.record(s.iteration)
        with self._timed(rec.timings, "wall"):
            self._tests(rec)
        s.step = "patch"
        s.stop_reason = self._stop_reason()
        if s.stop_reason is None:
            if self.config.run.train_every and s.iteration % self.config.run.train_every == 0:
                self.train()
                s.stop_reason = self._stop_reason()  # the burst may end a training plateau
            if s.stop_reason is None:
                s.iteration += 1
        self._save()

    def train(self, hook: Callable | None = None) -> "BurstResult":
        """The training step: the hook trains on the archive and gates the adapter (training/burst.py);
        the loop applies its result (the adapter now served, the training plateau). Returns it."""
        result = (hook or self.train_hook)(self)
        if result.adapter is not None:
            self.state.current_adapter = self.backend.adapter_id
            self.state.train_plateau = 0 if result.improved else self.state.train_plateau + 1
        return result

    def _tests(self, rec) -> None:
        s = self.state
        sources, tests = self._files()
        fmt = for_request(self.backend.reply_format, "tests", sources, self.ws.path)
        messages = prompts.tests_messages(self.ws.path, sources, tests, fmt)
        self._progress("tests", "asking the model")
        reply, applied = self._ask("tests", messages, rec.timings, gate=self._test_gate, fmt=fmt)
        if reply is not None:
            edits = applied.decision.edits
            recheck = check_edits(edits, "tests", self.ws.path, self.policy)  # nothing changed since
            if recheck.accepted:
                commit = self.ws.apply(edits, f"iteration {s.iteration} tests reply {applied.digest[:12]}")
                s.generated_tests = sorted(set(s.generated_tests) | {e.path for e in edits})
                rec.tests_accepted = len(edits)
                self.audit.append("tests_accepted", iteration=s.iteration, files=[e.path for e in edits],
                                  commit=commit)
                s.best_commit = commit  # same code, more tests
                if not self.archive_off:
                    with self._timed(rec.timings, "archive"):
                        rec.samples_added += self._archive(messages, reply, "tests", commit, applied.digest)
                self._progress("tests", "[green]kept[/] " + escape(", ".join(e.path for e in edits)))
        else:
            rec.notes.append("no acceptable test reply")
            self._progress("tests", "no test kept")

    def _stop_reason(self, iteration: int | None = None) -> str | None:
        s, r = self.state, self.config.run
        return stop_reason(s.iteration if iteration is None else iteration, r.max_iterations,
                           s.plateau if iteration is None else 0, r.plateau_patience, s.best_reward, s.max_reward,
                           r.stop_when_solved, s.train_plateau, self.config.gate.patience)

    # ----- driver -----
    def run(self) -> AgentState:
        s = self.state
        evidence.record_to(self.run_dir / "evidence")  # every sandbox run, re-gradable: rsi sandbox regrade
        try:
            while s.stop_reason is None:
                if s.step == "baseline":
                    self.step_baseline()
                    self._save()
                    s.stop_reason = self._stop_reason(iteration=0)
                elif s.step == "patch":
                    self.step_patch()
                elif s.step == "tests":
                    self.step_tests()
        except ReplayExhausted as exc:
            self.ws.restore(s.head_commit)
            s.stop_reason = f"replay exhausted ({exc})"
        s.step = "done"
        self._save()
        self.audit.append("run_stopped", reason=s.stop_reason, best_reward=s.best_reward, max_reward=s.max_reward,
                          iterations=s.iteration, samples=len(self.archive))
        self.console.print(f"[bold]stopped:[/] {s.stop_reason} · best reward {s.best_reward}/{s.max_reward} · "
                           f"{len(self.archive)} samples archived · run dir {self.run_dir}")
        if self.archive_off:
            self.console.print(f"[bold yellow]{self.archive_off}[/]")
        from orchestrator.store.audit import read_events
        from orchestrator.store.telemetry import hack_telemetry, line

        self.console.print(escape(line(hack_telemetry(read_events(self.run_dir / "audit.jsonl")))))
        evidence.record_to(None)
        return s


def _digest(result: SandboxResult) -> str:
    import hashlib

    # json.dumps, not model_dump_json: a container's text may hold lone surrogates (issue 24)
    data = json.dumps(result.model_dump(mode="json", exclude={"duration_s", "output", "evidence_id"}), sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()


def _judged_summary(result: SandboxResult) -> dict | None:
    j = result.judged
    if j is None:
        return None
    return {"verdict": j.verdict, "passed": j.passed, "failed": j.failed, "errors": j.errors,
            "reasons": j.reasons[:5], "calls": j.calls}
