"""Scores for comparing models: the reward rule, and a fixed-task-set score for the adapter gate.

Until held-out pass@1 lands (the evaluation issue), an adapter is judged by the protected +
hidden test reward on a fixed task set: each task gets one patch reply through the same
protocol as the loop (schema, policy, workspace), graded in the sandbox.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from . import prompts
from .policy import Policy
from .protocol import apply_reply
from .sandbox import SandboxLimits, SandboxResult, run_tests
from .tasks import humaneval_task, protected_files, seed_task
from .workspace import Workspace

SCORING_VERDICTS = ("pass", "fail")
DEFAULT_GATE_TASKS = ("seed", "HumanEval/2", "HumanEval/4", "HumanEval/7")


def reward(result: SandboxResult, scored_files: set[str]) -> tuple[int, int]:
    """(passing scored tests, scored tests). Only a clean verdict scores: tampered, error and
    timeout runs are worth nothing."""
    scored = [t for t in result.tests if t["nodeid"].split("::", 1)[0] in scored_files]
    if result.verdict not in SCORING_VERDICTS:
        return 0, len(scored)
    return sum(t["outcome"] == "passed" for t in scored), len(scored)


def task_set_score(backend, task_ids=DEFAULT_GATE_TASKS, limits: SandboxLimits | None = None) -> float:
    """Mean fraction of protected + hidden tests passed after one patch reply per task."""
    limits = limits or SandboxLimits.load()
    fractions = []
    with tempfile.TemporaryDirectory(prefix="rsi-score-") as tmp:
        for i, tid in enumerate(task_ids):
            task = seed_task() if tid == "seed" else humaneval_task(tid, Path(tmp) / "tasks")
            ws = Workspace.create(task.source_dir, Path(tmp) / f"ws{i}")
            policy = Policy.load()
            policy.protected = protected_files(ws.path)
            sources = [str(p.relative_to(ws.path)) for p in sorted(ws.path.rglob("*.py"))
                       if str(p.relative_to(ws.path)) not in policy.protected and ".git" not in p.parts]
            messages = prompts.patch_messages(ws.path, sources, policy.protected, None)
            apply_reply(ws, None, backend.generate(messages, "patch", tid), "patch", policy)
            result = run_tests(ws.path, limits=limits, overlay=task.hidden_tests)
            passed, total = reward(result, set(policy.protected) | set(task.hidden_tests))
            fractions.append(passed / total if total else 0.0)
    return sum(fractions) / len(fractions) if fractions else 0.0
