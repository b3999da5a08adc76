"""Real repositories in the sandbox: derived-image build time (cold and cached) and sandbox run
time against host pytest, for each project of the acceptance corpus (tests/test_corpus.py).

    .venv/bin/python bench/real_repos.py [--runs 3] [--only NAME,...]

Needs `make images` and `make corpus`. Cold: the project's derived image is removed first (its
wheels still come from pip's HTTP cache when they were downloaded before; the download time is
reported on its own). Host pytest: the same pytest command line as inside the sandbox, in a
throw-away venv per project with pytest 7.2.1 (the sandbox image's) and the same wheelhouse, the
project's import roots on PYTHONPATH and plugin autoload off. Raw numbers: bench/results/real_repos.json.

Until the supervisor reads the image's RSI_PYTHONPATH and honours testpaths (the lead's wiring),
the runs of projects that need them use a copy of the derived image whose supervisor has that one
line added (``wired``), and attrs is measured without its ``bench/`` directory (outside its
testpaths); both are recorded per project in the results.
"""

from __future__ import annotations

import argparse
import inspect
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import docker  # noqa: E402

from bench.results_io import Recorder  # noqa: E402
from orchestrator.sandbox.project_image import (  # noqa: E402
    _tar,
    build_project_image, download_wheelhouse, image_tag, probe_base, project_spec,
)
from orchestrator.sandbox.container import connect, run_tests  # noqa: E402
from orchestrator.sandbox.runner.baseline import rebase  # noqa: E402
from test_corpus import PROJECTS, limits_for, unpack  # noqa: E402

HOST_PYTEST = "pytest==7.2.1"
OLD_ENV = 'evidence = run_phase(args, {**BASE_ENV, "HOME": "/tmp"}, WORKSPACE, timeout_s, tail_bytes)'
NEW_ENV = ('evidence = run_phase(args, {**BASE_ENV, "HOME": "/tmp", **({"PYTHONPATH": os.environ["RSI_PYTHONPATH"]} '
           'if os.environ.get("RSI_PYTHONPATH") else {})}, WORKSPACE, timeout_s, tail_bytes)')


def wired(client, tag: str) -> str:
    """``tag`` with its supervisor putting RSI_PYTHONPATH on pytest's PYTHONPATH (one line)."""
    src = client.containers.run(tag, entrypoint=["cat", "/opt/rsi/rsi_sandbox/supervisor.py"], remove=True).decode()
    if src.count(OLD_ENV) != 1:
        raise SystemExit("the supervisor changed: cannot add the RSI_PYTHONPATH line for the measurement")
    user = client.images.get(tag).attrs["Config"].get("User") or "0:0"
    files = {"Dockerfile": f"FROM {tag}\nUSER 0:0\nCOPY supervisor.py /opt/rsi/rsi_sandbox/supervisor.py\n"
                           f"USER {user}\n".encode(), "supervisor.py": src.replace(OLD_ENV, NEW_ENV).encode()}
    buf = _tar(files, [])  # the build context, as the derived image's own is made
    out = tag.replace("rsi-project-", "rsi-bench-wired-", 1)
    client.images.build(fileobj=buf, custom_context=True, tag=out, rm=True, network_mode="none")
    return out


def host_venv(spec, wheels: Path, root: Path) -> Path:
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    reqs = root / "reqs.txt"
    reqs.write_text("\n".join([HOST_PYTEST] + spec.requirements) + "\n")
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--find-links",
                        str(wheels), "-r", str(reqs)], capture_output=True, text=True)
    if r.returncode:  # a dependency needs a newer pytest than the image's
        reqs.write_text("\n".join(spec.requirements or ["pytest"]) + "\n")
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--find-links",
                        str(wheels), "-r", str(reqs)], check=True)
    name = spec.name
    subprocess.run([str(py), "-m", "pip", "uninstall", "-y", "-q", name], capture_output=True)
    return py


def host_pytest(py: Path, spec, src: Path) -> tuple[float, str]:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONHASHSEED": "0", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
           "PYTHONPATH": ":".join(str(src if r == "." else src / r) for r in spec.import_roots)}
    started = time.monotonic()
    r = subprocess.run([str(py), "-P", "-s", "-B", "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rootdir",
                        str(src), "--color=no", str(src)], cwd=src, env=env, capture_output=True, text=True)
    return time.monotonic() - started, (r.stdout.strip().splitlines() or ["?"])[-1] + f" (exit {r.returncode})"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    rec = Recorder("real_repos")
    client = connect()
    base_id = client.images.get("rsi-sandbox:latest").id
    info = probe_base(client, "rsi-sandbox:latest")
    names = [n for n in PROJECTS if not args.only or n in args.only.split(",")]
    out = {"runs_per_project": args.runs, "image_python": info["version"], "host_pytest": HOST_PYTEST,
           "projects": {}}
    for name in names:
        with tempfile.TemporaryDirectory(prefix="rsi-bench-") as tmp:
            tmp = Path(tmp)
            src = unpack(name, tmp)
            spec = project_spec(src)
            tag = image_tag(spec, spec.digest(base_id))
            try:
                client.images.remove(tag, force=True)
            except docker.errors.ImageNotFound:
                pass
            t = time.monotonic()
            wheels = download_wheelhouse(spec, info, tmp / "wheels") if spec.requirements else []
            download_s = time.monotonic() - t
            t = time.monotonic()
            assert build_project_image(client, src) == tag
            cold_s = time.monotonic() - t
            t = time.monotonic()
            build_project_image(client, src)
            cached_s = time.monotonic() - t
            from orchestrator.sandbox.runner import supervisor
            run_image, trimmed = tag, []
            if spec.import_roots != ["."] or PROJECTS[name].needs_pythonpath:
                if "RSI_PYTHONPATH" not in inspect.getsource(supervisor):
                    run_image = wired(client, tag)
            if PROJECTS[name].needs_testpaths and "testpaths" not in inspect.getsource(supervisor):
                shutil.rmtree(src / "bench")
                trimmed = ["bench"]
            limits = limits_for(name, run_image)
            sandbox, host, results = [], [], []
            py = host_venv(spec, tmp / "wheels", tmp) if spec.requirements else None
            if py is None:
                py = host_venv(spec, tmp, tmp)
            host_summary = ""
            for _ in range(args.runs):  # alternating, so drift hits both alike
                t = time.monotonic()
                res = run_tests(src, limits=limits)
                sandbox.append(time.monotonic() - t)
                results.append(res)
                h, host_summary = host_pytest(py, spec, src)
                host.append(h)
            res = results[-1]
            judged = rebase(res.model_dump(), results[0].model_dump())
            image = client.images.get(tag)
            out["projects"][name] = {
                "sdist": PROJECTS[name].sdist, "version": spec.version, "image": tag, "run_image": run_image,
                "supervisor_wired_for_measurement": run_image != tag, "workspace_trimmed": trimmed,
                "requirements": spec.requirements, "sources": spec.sources, "import_roots": spec.import_roots,
                "wheels": len(wheels), "wheel_mib": round(sum(w.stat().st_size for w in wheels) / 2**20, 1),
                "image_added_mib": round((image.attrs["Size"] - client.images.get("rsi-sandbox:latest").attrs["Size"])
                                         / 2**20, 1),
                "download_s": round(download_s, 1), "cold_build_s": round(cold_s, 1),
                "cached_build_s": round(cached_s, 2),
                "sandbox_run_s": round(statistics.median(sandbox), 2), "host_pytest_s": round(statistics.median(host), 2),
                "raw_sandbox_s": [round(x, 2) for x in sandbox], "raw_host_s": [round(x, 2) for x in host],
                "verdict_strict": res.verdict, "verdict_baseline": judged["verdict"], "passed": res.passed,
                "failed": res.failed, "errors": res.errors, "skipped": res.skipped, "excused": len(judged["excused"]),
                "reasons": res.reasons[:5], "host_summary": host_summary,
                "failed_tests": sorted(t["nodeid"] for t in res.tests if t["outcome"] in ("failed", "error")),
            }
            print(name, {k: v for k, v in out["projects"][name].items()
                         if k.endswith("_s") or k.startswith("verdict") or k in ("passed", "skipped")}, flush=True)
    rec.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
