"""The sandbox seam: where a workspace's tests run, behind one interface.

A provider takes a workspace (plus overlay/exclude, and the judged tests) and returns the
typed ``SandboxResult``; running is separate from grading (every real provider hands the
container's authenticated evidence to ``sandbox.result_from_output``, which re-grades it on
the host). Providers are registered by name and chosen by ``provider`` in
policies/sandbox.toml (``docker`` by default):

- ``docker``: one fresh hardened container per run (orchestrator/sandbox/container.py).
- ``docker-pool``: pre-started single-use containers, each waiting for one workspace (pool.py).
- ``ray``: runs as Ray tasks on an existing cluster's nodes, each node using its own Docker
  engine (ray_provider.py).
- ``fake``: grades with a caller-supplied function, for unit tests of loop logic without Docker
  (fake.py).

``sandbox.run_tests`` keeps its signature and dispatches here, so every caller keeps working.
"""

from __future__ import annotations

import atexit
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from orchestrator.sandbox.container import InfraError, SandboxLimits, SandboxResult

PROVIDERS: dict[str, type["Sandbox"]] = {}


class Sandbox(ABC):
    """A place to run a workspace's tests. Lifecycle: ``start()`` once (connect, warm up),
    ``run()`` any number of times (from any thread), ``close()`` once (remove everything it made)."""

    name: ClassVar[str] = ""

    def __init__(self, limits: SandboxLimits | None = None, **options):
        self.limits = limits or SandboxLimits.load()
        self.options = options

    def start(self) -> "Sandbox":
        return self

    def close(self) -> None:
        pass

    @abstractmethod
    def run(self, workspace: Path | str, limits: SandboxLimits | None = None, overlay: dict[str, str] | None = None,
            exclude: set[str] | None = None, judge: dict[str, str] | None = None,
            timeout_s: float | None = None) -> SandboxResult:
        """Run the workspace's tests once and return the host's grade of the evidence."""

    def inputs(self, workspace: Path | str, limits: SandboxLimits | None,
               timeout_s: float | None) -> tuple[Path, SandboxLimits, float]:
        """A run's inputs with this provider's defaults; a workspace that is not a directory is one line."""
        limits = limits or self.limits
        workspace = Path(workspace)
        if not workspace.is_dir():
            raise InfraError(f"workspace {workspace} is not a directory")
        return workspace, limits, float(timeout_s or limits.timeout_s)

    def __enter__(self) -> "Sandbox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def register(name: str):
    def deco(cls: type[Sandbox]) -> type[Sandbox]:
        cls.name = name
        PROVIDERS[name] = cls
        return cls
    return deco


def _load_builtin() -> None:
    from orchestrator.sandbox import docker_provider, fake, pool, ray_provider  # noqa: F401 - they register themselves


_lock = threading.Lock()
_active: dict[tuple, Sandbox] = {}
_override: Sandbox | None = None


def create(name: str, limits: SandboxLimits | None = None, **options) -> Sandbox:
    """A new (not started) provider by name; an unknown name is one clear line."""
    _load_builtin()
    if name not in PROVIDERS:
        raise InfraError(f"unknown sandbox provider {name!r} (known: {', '.join(sorted(PROVIDERS))}); "
                         "set provider in policies/sandbox.toml")
    return PROVIDERS[name](limits, **options)


def provider_for(limits: SandboxLimits) -> Sandbox:
    """The started provider this process uses for ``limits.provider`` (one per name and
    address, closed at exit); ``use()`` overrides it (tests, the CLI's --ray)."""
    if _override is not None:
        return _override
    key = (limits.provider, limits.ray_address, limits.ray_node_provider)
    with _lock:
        sandbox = _active.get(key)
        if sandbox is None:
            if limits.provider == "fake":
                raise InfraError("the fake sandbox needs a grading function: use sandboxes.use(FakeSandbox(fn))")
            sandbox = create(limits.provider, limits).start()
            _active[key] = sandbox
        return sandbox


def overridden() -> bool:
    return _override is not None


class use:
    """``with use(provider): ...`` routes every ``run_tests`` of this process to ``provider``."""

    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox

    def __enter__(self) -> Sandbox:
        global _override
        self._previous, _override = _override, self.sandbox
        return self.sandbox

    def __exit__(self, *exc) -> None:
        global _override
        _override = self._previous


@atexit.register
def close_all() -> None:
    with _lock:
        items = list(_active.values())
        _active.clear()
    for sandbox in items:
        try:
            sandbox.close()
        except Exception:  # noqa: BLE001 - exiting: best effort, the next start sweeps by label
            pass


__all__ = ["PROVIDERS", "Sandbox", "close_all", "create", "provider_for", "register", "use"]
