"""``ray``: verification runs as Ray tasks on an existing cluster's nodes.

The driver stages the workspace exactly as the local providers do (overlay, exclude, the same
limits), packs the staged tree (symlinks as links) and sends it with the task as bytes. On its
node, the task unpacks it and runs it through that node's own Docker engine with the node's
provider (``ray_node_provider``: ``docker-pool`` by default, one pool per Ray worker process,
or ``docker``); the result comes back as the same typed ``SandboxResult``, graded on that node's
host side from the container's authenticated evidence.

Failures of the infrastructure are never verdicts: a lost node, a dead worker, a task past its
deadline or a node whose engine cannot run the sandbox is retried (on another node where one is
alive) up to ``ray_attempts`` times, then reported as ``InfraError``. Each run has one id: the
driver accepts exactly one result per id, so a retried run is never counted twice.
"""

from __future__ import annotations

import io
import shutil
import socket
import tarfile
import tempfile
import threading
import time
import uuid
from pathlib import Path

import structlog

from orchestrator.sandbox.container import InfraError, SandboxLimits, SandboxResult, StagingError, stage_workspace
from orchestrator.sandbox.interface import Sandbox, register

log = structlog.get_logger(__name__)

DEADLINE_SLACK_S = 60.0   # a task's deadline past the sandbox's own: queueing, image checks, pool refill


def pack(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(root), arcname=".", recursive=True)
    return buf.getvalue()


def unpack(data: bytes, dst: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(dst, filter="tar")  # no absolute or escaping paths; symlinks stay links


def _node_sandbox(limits: SandboxLimits):
    """The provider of the Ray worker process this task runs in (kept for the worker's life)."""
    from orchestrator.sandbox.interface import provider_for

    return provider_for(limits.model_copy(update={"provider": limits.ray_node_provider}))


def verify_on_node(run_id: str, attempt: int, payload: bytes, limits_json: dict, judge, timeout_s) -> dict:
    """The task body (runs on a node): unpack, run in this node's sandbox, return the result."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    limits = SandboxLimits(**limits_json)
    stage = Path(tempfile.mkdtemp(prefix="rsi-ray-"))
    try:
        unpack(payload, stage)
        result = _node_sandbox(limits).run(stage, limits, judge=judge, timeout_s=timeout_s)
        return {"run_id": run_id, "attempt": attempt, "node": node, "result": result.model_dump(),
                "evidence": result._evidence}  # saved by the head with the run (orchestrator/sandbox/evidence.py)
    except InfraError as exc:
        return {"run_id": run_id, "attempt": attempt, "node": node, "infra": str(exc)[:500]}
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@register("ray")
class RaySandbox(Sandbox):
    def __init__(self, limits: SandboxLimits | None = None, address: str | None = None, **options):
        super().__init__(limits, **options)
        self.address = address or self.limits.ray_address
        self._remote = None
        self._lock = threading.Lock()
        self.ledger: dict[str, dict] = {}   # run id -> the one accepted outcome (node, attempts)

    def start(self) -> "RaySandbox":
        if self._remote is not None:
            return self
        if not self.address:
            raise InfraError("the ray sandbox needs a cluster: `rsi run --ray ADDRESS` or ray_address in "
                             "policies/sandbox.toml")
        try:
            import ray
        except ImportError as exc:
            raise InfraError("ray is not installed (make install puts it in .venv)") from exc
        host, _, port = self.address.removeprefix("ray://").rpartition(":")
        if self.address != "auto":  # ray.init retries an absent GCS for minutes: ask the port first
            try:
                socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
            except (OSError, ValueError) as exc:
                raise InfraError(f"cannot join the Ray cluster at {self.address} (nothing answers there: "
                                 f"{getattr(exc, 'strerror', None) or exc}); start it with `ray start --head`") from exc
        try:
            if not ray.is_initialized():
                ray.init(address=self.address, logging_level="ERROR", log_to_driver=False,
                         include_dashboard=False)
        except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ...: no cluster there
            raise InfraError(f"cannot join the Ray cluster at {self.address} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from exc
        self._remote = ray.remote(num_cpus=1, max_retries=0)(verify_on_node)
        return self

    def close(self) -> None:
        self._remote = None

    def _other_node(self, avoid: set[str]):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["NodeID"] not in avoid
                 and n.get("Resources", {}).get("CPU", 0) >= 1]
        return NodeAffinitySchedulingStrategy(alive[0], soft=True) if alive else None

    def run(self, workspace: Path | str, limits: SandboxLimits | None = None, overlay=None, exclude=None,
            judge=None, timeout_s: float | None = None) -> SandboxResult:
        import ray
        from ray.exceptions import GetTimeoutError, RayError

        workspace, limits, timeout_s = self.inputs(workspace, limits, timeout_s)
        self.start()
        started = time.monotonic()
        stage = Path(tempfile.mkdtemp(prefix="rsi-ray-stage-"))
        try:
            try:
                stage_workspace(workspace.resolve(), stage, limits.max_workspace_bytes, overlay, exclude,
                            max_files=limits.max_workspace_files)
            except StagingError as exc:
                return SandboxResult(verdict="error", reasons=[str(exc)], duration_s=time.monotonic() - started)
            payload = pack(stage)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        run_id = uuid.uuid4().hex
        phases = 2 if judge is not None else 1
        deadline = timeout_s * phases + limits.grace_s + DEADLINE_SLACK_S
        limits_json = limits.model_dump()
        failures: list[str] = []
        avoid: set[str] = set()
        for attempt in range(limits.ray_attempts):
            options = {}
            if avoid:
                strategy = self._other_node(avoid)
                if strategy is not None:
                    options["scheduling_strategy"] = strategy
            ref = self._remote.options(**options).remote(run_id, attempt, payload, limits_json, judge, timeout_s)
            try:
                out = ray.get(ref, timeout=deadline)
            except GetTimeoutError:
                ray.cancel(ref, force=True)
                failures.append(f"attempt {attempt + 1}: no result within {deadline:.0f} s")
                continue
            except RayError as exc:  # node died, worker crashed, object lost, task unschedulable
                failures.append(f"attempt {attempt + 1}: {type(exc).__name__}")
                continue
            if not isinstance(out, dict) or out.get("run_id") != run_id:
                failures.append(f"attempt {attempt + 1}: a result for another run")
                continue
            if "infra" in out:
                avoid.add(out["node"])
                failures.append(f"attempt {attempt + 1} on node {out['node'][:8]}: {out['infra']}")
                continue
            with self._lock:
                if run_id in self.ledger:  # never counted twice
                    raise InfraError(f"run {run_id} already has a result")
                self.ledger[run_id] = {"node": out["node"], "attempts": attempt + 1, "failures": failures}
            if failures:
                log.warning("sandbox.ray.retried", run_id=run_id, failures=failures)
            result = SandboxResult(**out["result"])
            result._evidence = out.get("evidence") if isinstance(out.get("evidence"), dict) else None
            return result
        raise InfraError(f"the Ray cluster could not verify run {run_id[:12]} in {limits.ray_attempts} attempts: "
                         + "; ".join(failures)[:800])
