"""The reward rule, and one graded attempt at a task (shared by held-out evaluation and the gate).

The reward counts only **judged** tests: the task's hidden tests, plus (``judge_visible``) copies
of its protected visible tests, run by the sandbox's judge in a process that never imports the
candidate (values cross as plain data). The same visible tests also run in-process as the
model's feedback; that run must not be ``tampered`` for anything to count, but its passes are
never the reward. An attempt is one patch reply on a fresh copy of the task, through the same
protocol as the loop (schema, policy, workspace), graded in the sandbox with the judged tests.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.agent.tasks import IMPOSSIBLE_PREFIX, protected_files
from orchestrator.protocol import prompts
from orchestrator.protocol.pipeline import apply_reply
from orchestrator.protocol.policy import Policy
from orchestrator.protocol.reply_format import JSON, for_request
from orchestrator.protocol.workspace import Workspace
from orchestrator.sandbox.container import SandboxLimits, SandboxResult, run_tests
from orchestrator.sandbox.runner.testpaths import resolve as resolve_testpaths
from orchestrator.sandbox.runner.testpaths import within

SCORING_VERDICTS = ("pass", "fail")
HIDDEN_DIR = "hidden"    # judged copies of the task's hidden tests: hidden/<name>
VISIBLE_DIR = "visible"  # judged copies of its protected visible tests: visible/<path>


def _is_test_file(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


def judged_tests(ws_path: Path, protected: list[str], hidden: dict[str, str],
                 judge_visible: bool = True) -> dict[str, str]:
    """What the judge runs: the hidden tests and, with ``judge_visible``, the protected visible
    test files (read from the workspace, whose protected files the loop verifies unchanged)."""
    out = {f"{HIDDEN_DIR}/{name}": text for name, text in hidden.items()}
    if judge_visible:
        paths = resolve_testpaths(str(ws_path))  # the files pytest collects in the visible run
        for rel in protected:
            if _is_test_file(rel) and within(rel, paths):
                out[f"{VISIBLE_DIR}/{rel}"] = (Path(ws_path) / rel).read_text()
    return out


def reward(result: SandboxResult) -> tuple[int, int]:
    """(passing judged tests, judged tests). Only a clean judged verdict scores, and only when
    the in-process run was not caught tampering: tampered, error and timeout are worth nothing."""
    judged = result.judged
    if judged is None:
        return 0, 0
    total = len(judged.tests)
    if judged.verdict not in SCORING_VERDICTS or result.verdict == "tampered":
        return 0, total
    return sum(t["outcome"] == "passed" for t in judged.tests), total


def graded_verdict(result: SandboxResult) -> str:
    """One word for a graded attempt: the judged verdict, unless the in-process run was caught
    tampering (or nothing was judged)."""
    if result.verdict == "tampered" or result.judged is None:
        return result.verdict
    return result.judged.verdict


def verified(result: SandboxResult | None) -> bool:
    """Archive-worthy: every in-process test and every judged test passed."""
    return bool(result) and result.verdict == "pass" and result.judged is not None \
        and result.judged.verdict == "pass" and result.judged.passed > 0


def unseen_passed(result: SandboxResult | None) -> int:
    """Judged tests from the task's hidden files (never in the prompt or the workspace) that passed."""
    if not result or result.judged is None:
        return 0
    return sum(t["outcome"] == "passed" and t["nodeid"].startswith(f"{HIDDEN_DIR}/") for t in result.judged.tests)


def archivable(result: SandboxResult | None) -> bool:
    """Training data: ``verified``, and the judge ran hidden tests the candidate could neither see
    nor read. While every test is visible no reward tells a fix from a reply that reads the tests
    (or hard-codes their cases), so a pass of visible tests alone is never archived."""
    return verified(result) and unseen_passed(result) > 0


def run_judged(ws_path: Path, protected: list[str], hidden: dict[str, str], limits: SandboxLimits,
               judge_visible: bool = True, **kwargs) -> SandboxResult:
    """The one way to grade a workspace for the reward: visible tests in-process, judged tests
    out of process."""
    return run_tests(ws_path, limits=limits, judge=judged_tests(ws_path, protected, hidden, judge_visible),
                     **kwargs)


class Attempt:
    """One patch reply on a fresh copy of a task, graded with its judged tests."""

    def __init__(self, decision, result: SandboxResult | None, scored_files: set[str] | None = None):
        self.decision, self.result, self.scored_files = decision, result, scored_files or set()

    def reward(self) -> tuple[int, int]:
        return reward(self.result) if self.result else (0, 0)

    def passed(self, test_file: str) -> bool:
        """The hidden test file ``test_file`` passed in the judge (never from the in-process run)."""
        r = self.result
        if not r or r.judged is None or r.judged.verdict not in SCORING_VERDICTS or r.verdict == "tampered":
            return False
        prefix = f"{HIDDEN_DIR}/{test_file}::"
        mine = [t for t in r.judged.tests if t["nodeid"].startswith(prefix)]
        return bool(mine) and all(t["outcome"] == "passed" for t in mine)


def attempt_task(backend, task, ws_dir: Path, limits: SandboxLimits, seed: int | None = None) -> Attempt:
    """Ask for one patch through the loop's protocol (schema, policy, workspace) and grade it in
    the sandbox with the task's hidden tests. A refused reply is not run (result None)."""
    ws = Workspace.create(task.source_dir, ws_dir)
    policy = Policy.load()
    policy.protected = protected_files(ws.path)
    scored = set(policy.protected) | set(task.hidden_tests)
    sources = [str(p.relative_to(ws.path)) for p in sorted(ws.path.rglob("*.py"))
               if str(p.relative_to(ws.path)) not in policy.protected and ".git" not in p.parts]
    # the model's own reply format (as the rounds train it), so the gate measures what is trained
    try:
        fmt = for_request(getattr(backend, "reply_format", "json") or "json", "patch", sources, ws.path)
    except ValueError:
        fmt = JSON
    messages = prompts.patch_messages(ws.path, sources, policy.protected, None, fmt)
    # an impossible-task canary is asked as the problem it is built on: the same messages, the same task id
    asked_as = task.id.removeprefix(IMPOSSIBLE_PREFIX)
    reply = backend.generate(messages, "patch", asked_as, fmt=fmt, **({"seed": seed} if seed is not None else {}))
    applied = apply_reply(ws, None, reply, "patch", policy, fmt=fmt)
    if not applied.decision.accepted:
        return Attempt(applied.decision, None, scored)
    return Attempt(applied.decision, run_judged(ws.path, policy.protected, task.hidden_tests, limits,
                                                getattr(task, "judge_visible", True)), scored)
