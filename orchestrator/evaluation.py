"""The reward rule, and one graded attempt at a task (shared by held-out evaluation and the gate).

An attempt is one patch reply on a fresh copy of the task, through the same protocol as the
loop (schema, policy, workspace), graded in the sandbox with the task's hidden tests.
"""

from __future__ import annotations

from pathlib import Path

from . import prompts
from .policy import Policy
from .protocol import apply_reply
from .sandbox import SandboxLimits, SandboxResult, run_tests
from .tasks import protected_files
from .workspace import Workspace

SCORING_VERDICTS = ("pass", "fail")


def reward(result: SandboxResult, scored_files: set[str]) -> tuple[int, int]:
    """(passing scored tests, scored tests). Only a clean verdict scores: tampered, error and
    timeout runs are worth nothing."""
    scored = [t for t in result.tests if t["nodeid"].split("::", 1)[0] in scored_files]
    if result.verdict not in SCORING_VERDICTS:
        return 0, len(scored)
    return sum(t["outcome"] == "passed" for t in scored), len(scored)


class Attempt:
    """One patch reply on a fresh copy of a task, graded with its hidden tests."""

    def __init__(self, decision, result: SandboxResult | None, scored_files: set[str]):
        self.decision, self.result, self.scored_files = decision, result, scored_files

    def reward(self) -> tuple[int, int]:
        return reward(self.result, self.scored_files) if self.result else (0, 0)

    def passed(self, test_file: str) -> bool:
        return bool(self.result) and self.result.verdict in SCORING_VERDICTS and any(
            t["nodeid"].startswith(test_file + "::") and t["outcome"] == "passed" for t in self.result.tests)


def attempt_task(backend, task, ws_dir: Path, limits: SandboxLimits, seed: int | None = None) -> Attempt:
    """Ask for one patch through the loop's protocol (schema, policy, workspace) and grade it in
    the sandbox with the task's hidden tests. A refused reply is not run (result None)."""
    ws = Workspace.create(task.source_dir, ws_dir)
    policy = Policy.load()
    policy.protected = protected_files(ws.path)
    scored = set(policy.protected) | set(task.hidden_tests)
    sources = [str(p.relative_to(ws.path)) for p in sorted(ws.path.rglob("*.py"))
               if str(p.relative_to(ws.path)) not in policy.protected and ".git" not in p.parts]
    messages = prompts.patch_messages(ws.path, sources, policy.protected, None)
    reply = backend.generate(messages, "patch", task.id, **({"seed": seed} if seed is not None else {}))
    applied = apply_reply(ws, None, reply, "patch", policy)
    if not applied.decision.accepted:
        return Attempt(applied.decision, None, scored)
    return Attempt(applied.decision, run_tests(ws.path, limits=limits, overlay=task.hidden_tests), scored)
