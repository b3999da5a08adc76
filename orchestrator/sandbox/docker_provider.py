"""``docker``: one fresh hardened container per run (today's behaviour, orchestrator/sandbox/container.py)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.sandbox.container import SandboxLimits, SandboxResult, connect, run_in_fresh_container
from orchestrator.sandbox.interface import Sandbox, register


@register("docker")
class DockerSandbox(Sandbox):
    def __init__(self, limits: SandboxLimits | None = None, client=None, **options):
        super().__init__(limits, **options)
        self.client = client

    def start(self) -> "DockerSandbox":
        self.client = self.client or connect()
        return self

    def run(self, workspace: Path | str, limits: SandboxLimits | None = None, overlay=None, exclude=None,
            judge=None, timeout_s: float | None = None) -> SandboxResult:
        return run_in_fresh_container(workspace, limits or self.limits, timeout_s, self.client, overlay, exclude,
                                      judge)
