"""A real Ray cluster of N nodes on this machine, loopback only (tests and `make bench`).

Each node is its own ``ray start`` (a raylet with its own resources and ports); the head also
runs the GCS. Every process of the cluster carries this cluster's temp dir in its command
line, which is how ``stop()`` finds exactly the processes it started (never ``ray stop``, which
would stop any Ray on the machine)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_health_check_period_ms": "1000",
       "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3",
       "RAY_DEDUP_LOGS": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    def __init__(self, nodes: int = 2, cpus_per_node: int = 1):
        self.nodes, self.cpus = nodes, cpus_per_node
        self.temp = tempfile.mkdtemp(prefix="rsi-ray-", dir="/tmp")  # short: Ray's unix sockets live here
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.node_ports: list[int] = []

    def _start_node(self, i: int) -> None:
        nm_port = free_port()
        base = 20000 + (os.getpid() % 200) * 200 + i * 100  # each node's own worker port range
        args = [RAY, "start", "--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus}",
                f"--resources={json.dumps({f'rsi_node_{i}': 1})}", f"--node-manager-port={nm_port}",
                f"--object-manager-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--min-worker-port={base}", f"--max-worker-port={base + 99}",
                "--object-store-memory=80000000", "--disable-usage-stats"]
        if i == 0:
            args += ["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.temp}"]
        else:
            args += [f"--address={self.address}"]
        out = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **ENV}, timeout=240)
        if out.returncode != 0:
            raise RuntimeError(f"ray start (node {i}) failed: {out.stderr[-2000:] or out.stdout[-2000:]}")
        self.node_ports.append(nm_port)

    def start(self) -> "LocalCluster":
        try:
            for i in range(self.nodes):
                self._start_node(i)
            self.wait_for_nodes(self.nodes)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_for_nodes(self, n: int, timeout_s: float = 120) -> None:
        code = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR');"
                "print(sum(1 for x in ray.nodes() if x['Alive']))")
        deadline = time.monotonic() + timeout_s
        while True:
            out = subprocess.run([sys.executable, "-c", code, self.address], capture_output=True, text=True,
                                 timeout=120, env={**os.environ, **ENV})
            if out.stdout.strip().isdigit() and int(out.stdout.strip()) >= n:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray cluster has {out.stdout.strip() or '?'} of {n} nodes: {out.stderr[-1000:]}")
            time.sleep(1)

    def _pids(self, needle: str) -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if needle in cmd:
                pids.append(int(entry))
        return pids

    def raylet_pid(self, i: int) -> int:
        pids = [p for p in self._pids(f"--node_manager_port={self.node_ports[i]}")
                if "raylet" in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")]
        if len(pids) != 1:
            raise RuntimeError(f"expected one raylet for node {i}, found {pids}")
        return pids[0]

    def _descendants(self, pid: int) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry))
        out, todo = [], [pid]
        while todo:
            for child in children.get(todo.pop(), []):
                out.append(child)
                todo.append(child)
        return out

    def running(self, i: int, task: str) -> bool:
        """Whether one of node ``i``'s workers is executing ``task`` now (Ray titles a busy worker's
        process ``ray::<task>``, an idle one ``ray::IDLE``)."""
        for pid in self._descendants(self.raylet_pid(i)):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(f"ray::{task}".encode()):
                    return True
            except OSError:
                continue
        return False

    def kill_node(self, i: int) -> None:
        """A lost machine: SIGKILL one node's raylet and every process it started (its workers, with the
        runs they hold), all at once. Killing the raylet alone is not enough: a worker in the middle of a
        task finishes it and reports to its owner before it notices that its raylet is gone."""
        raylet = self.raylet_pid(i)
        for pid in [raylet] + self._descendants(raylet):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self._pids(self.temp)
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while pids and time.monotonic() < deadline:
                pids = [p for p in pids if os.path.exists(f"/proc/{p}") and
                        "Z" not in Path(f"/proc/{p}/stat").read_text().split(")")[-1][:3]]
                time.sleep(0.2)
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
