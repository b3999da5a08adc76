"""``fake``: a sandbox that grades with a caller-supplied function (unit tests of loop logic).

The workspace is staged exactly as the real providers stage it (overlay written on top,
``exclude`` left out), then handed to ``fn(staged_dir, judge)``, which returns a
``SandboxResult``, a verdict string, or raw evidence (a dict the real grader grades, so a
test can exercise grading without Docker). Never isolates anything: unit tests only.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from orchestrator.sandbox.container import SandboxLimits, SandboxResult, StagingError, stage_workspace
from orchestrator.sandbox.interface import Sandbox, register
from orchestrator.sandbox.runner.grader import grade

Grader = Callable[[Path, dict | None], "SandboxResult | str | dict"]


@register("fake")
class FakeSandbox(Sandbox):
    def __init__(self, limits: SandboxLimits | None = None, fn: Grader | None = None, **options):
        super().__init__(limits, **options)
        self.fn = fn or (lambda path, judge: "pass")
        self.calls: list[dict] = []
        self._lock = threading.Lock()
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def run(self, workspace: Path | str, limits: SandboxLimits | None = None, overlay=None, exclude=None,
            judge=None, timeout_s: float | None = None) -> SandboxResult:
        limits = limits or self.limits
        started = time.monotonic()
        stage = Path(tempfile.mkdtemp(prefix="rsi-fake-"))
        try:
            try:
                stage_workspace(Path(workspace).resolve(), stage, limits.max_workspace_bytes, overlay, exclude,
                            max_files=limits.max_workspace_files)
            except StagingError as exc:
                return SandboxResult(verdict="error", reasons=[str(exc)], duration_s=time.monotonic() - started)
            files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
            with self._lock:
                self.calls.append({"workspace": str(workspace), "files": files, "judge": judge,
                                   "timeout_s": timeout_s})
            out = self.fn(stage, judge)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        if isinstance(out, SandboxResult):
            return out
        if isinstance(out, str):
            return SandboxResult(verdict=out, duration_s=time.monotonic() - started)
        return SandboxResult(**grade(out))
