"""Red-team round 3 (issue 23, item 7): the judge, the pool and ``rsi images build --project``,
attacked as a model maximising the reward would (and, for the host-side parts, as a hostile
workspace or project would).

``test_closed_*`` were breaks found in this round, each fixed (their docstrings say how the attack
worked; the fix is in the lead's commit that removed their ``xfail`` markers); ``test_holds_*`` are attacks that were tried and held, kept as regressions; ``test_control_*``
are the positive controls that make a "held" or a "break" mean something.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from orchestrator.sandbox.container import SandboxLimits, run_tests
from tests.conftest import write_tree

VISIBLE = "import example\n\n\ndef test_exists():\n    assert callable(example.add)\n"
HONEST = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"


# ----- images build: a wheel's own direct reference runs a source package's setup.py on the host -----

def _wheel(path: Path, name: str, requires: str) -> Path:
    """A minimal pure wheel whose METADATA requires ``requires`` (what a project could vendor or host)."""
    files = {
        f"{name}/__init__.py": b"",
        f"{name}-1.0.dist-info/METADATA":
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\nRequires-Dist: {requires}\n".encode(),
        f"{name}-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: x\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for rel, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{rel},sha256={digest},{len(data)}")
    record.append(f"{name}-1.0.dist-info/RECORD,,")
    files[f"{name}-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    whl = path / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
    return whl


def _marker_source(tmp_path: Path, marker: Path) -> Path:
    src = tmp_path / "evilsrc"
    src.mkdir()
    (src / "setup.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran on the host')\n"
        "from setuptools import setup\nsetup(name='evilsrc', version='1.0')\n")
    return src


IMAGE_INFO = {"version": "3.11", "impl": "cpython", "machine": "x86_64", "libc": ["glibc", "2.36"]}


def _project(root: Path, dependency: str) -> Path:
    root.mkdir()
    (root / "victim.py").write_text("def one():\n    return 1\n")
    (root / "pyproject.toml").write_text(
        f'[project]\nname = "victim"\nversion = "0.1"\ndependencies = ["{dependency}"]\n')
    return root


def test_control_a_direct_source_reference_is_refused_before_pip(tmp_path):
    """The fixed route (issue 23, item 2): the same source package named directly is refused."""
    from orchestrator.sandbox.project_image import ProjectImageError, project_spec

    marker = tmp_path / "marker"
    src = _marker_source(tmp_path, marker)
    with pytest.raises(ProjectImageError, match="source"):
        project_spec(_project(tmp_path / "p", f"evilsrc @ {src.as_uri()}"))
    assert not marker.exists()


def test_closed_a_wheel_reference_pulls_a_source_package_onto_the_host(tmp_path):
    """``check_requirement`` accepts ``name @ URL`` when the URL ends in ``.whl``, and checks the
    project's own requirements only. The wheel's METADATA says ``Requires-Dist: evilsrc @ file:///...``
    (a directory; an https sdist works the same); pip follows direct references of a direct-reference
    wheel, ignores ``--only-binary`` for them, and runs the source's setup.py to get its metadata: on
    the host, as the user running ``rsi images build --project`` (root in the issue's setting).
    Needs the package index (download_wheelhouse always adds ``pip``)."""
    from orchestrator.sandbox.project_image import ProjectImageError, download_wheelhouse, project_spec

    marker = tmp_path / "marker"
    src = _marker_source(tmp_path, marker)
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    whl = _wheel(vendor, "carrier", f"evilsrc @ {src.as_uri()}")
    spec = project_spec(_project(tmp_path / "p", f"carrier @ {whl.as_uri()}"))  # accepted: a wheel
    assert spec.requirements == [f"carrier @ {whl.as_uri()}"]
    try:
        download_wheelhouse(spec, IMAGE_INFO, tmp_path / "wheels")
    except ProjectImageError:
        pass
    assert not marker.exists(), "the dependency's setup.py ran on the host"


# ----- images build: ``-r`` follows any host path, and the refusal prints what it read -----

def test_control_a_requirements_include_inside_the_project_is_followed(tmp_path):
    from orchestrator.sandbox.project_image import project_spec

    root = write_tree(tmp_path / "p", {"victim.py": "X = 1\n", "requirements.txt": "-r reqs/base.txt\n",
                                       "reqs/base.txt": "six==1.16.0\n"})
    assert project_spec(root).requirements == ["six==1.16.0"]


def test_closed_requirements_include_discloses_host_files_and_environment(tmp_path):
    """``_read_requirements`` follows ``-r`` to any path (absolute, ``..``, a symlink), and
    ``check_requirement`` refuses each unparsable line with the line itself in the one-line error. A
    repository whose requirements.txt says ``-r /proc/self/environ`` gets the host process's whole
    environment (API keys, tokens) printed by ``rsi images build --project`` (into CI logs);
    ``-r /root/.git-credentials`` the same for a file. Fix: ``-r`` only to regular files inside the
    project (resolved, no link out), and never echo a refused line's content."""
    import os

    secret_file = tmp_path / "host" / "credentials"
    secret_file.parent.mkdir()
    secret_file.write_text("https://user:FILE-SECRET-0451@example.com\n")
    probe = ("import sys\nfrom orchestrator.sandbox.project_image import ProjectImageError, project_spec\n"
             "try:\n    project_spec(sys.argv[1])\nexcept ProjectImageError as exc:\n    print(exc)\n")
    leaks = []
    for i, target in enumerate(("/proc/self/environ", str(secret_file))):
        root = write_tree(tmp_path / f"p{i}", {"victim.py": "X = 1\n", "requirements.txt": f"-r {target}\n"})
        out = subprocess.run([sys.executable, "-c", probe, str(root)], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "RSI_REDTEAM_HOST_SECRET": "ENV-SECRET-0451"}).stdout
        leaks += [s for s in ("ENV-SECRET-0451", "FILE-SECRET-0451") if s in out]
    assert leaks == [], f"host secrets in the build's error: {leaks}"


# ----- host staging: a testpaths glob through two symlink loops never returns -----

def _looping_workspace(root: Path, links: bool) -> Path:
    write_tree(root, {"pytest.ini": "[pytest]\ntestpaths = **/tests\n", "example.py": HONEST,
                      "tests/test_a.py": "def test_a():\n    assert 1\n"})
    if links:
        (root / "a").symlink_to(".")
        (root / "b").symlink_to(".")
    return root


RESOLVE = "import sys; from orchestrator.sandbox.runner.testpaths import resolve; print(resolve(sys.argv[1]))"


def test_control_a_recursive_testpaths_glob_resolves_at_once(tmp_path):
    ws = _looping_workspace(tmp_path / "ws", links=False)
    out = subprocess.run([sys.executable, "-c", RESOLVE, str(ws)], capture_output=True, text=True, timeout=20)
    assert out.stdout.strip() == "['tests']", out.stderr


def test_closed_testpaths_glob_through_symlink_loops_hangs_host_staging(tmp_path):
    """``testpaths.resolve`` runs ``glob.glob(root/entry, recursive=True)`` on the host (staging's
    ``stage_canaries``, ``judged_tests``) and in PID 1. ``**`` follows symlinked directories, so two
    links ``a -> .`` and ``b -> .`` give 2**40 paths before ELOOP: ``run_tests`` never gets as far as
    creating the container, and no clock covers staging. Fix: match testpaths with a walk that does not
    follow links (or skip links in the glob), with a bound on entries visited."""
    ws = _looping_workspace(tmp_path / "ws", links=True)
    try:
        out = subprocess.run([sys.executable, "-c", RESOLVE, str(ws)], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("testpaths.resolve did not return within 10 s")
    assert out.returncode == 0, out.stderr


# ----- the judge: builtin exceptions and argument copies (Docker) -----

def _run(tmp_path: Path, name: str, example: str, hidden: dict, visible: str = VISIBLE, runtime: str = ""):
    ws = write_tree(tmp_path / name, {"example.py": example, "test_example.py": visible})
    return run_tests(ws, limits=SandboxLimits.load(runtime=runtime), judge=hidden)


TABLE_TESTS = {"test_h.py": (
    "from example import add\n\n\n"
    "def test_table():\n    for got, want in zip(map(add, [2, 1], [3, 1]), [5, 2]):\n        assert got == want\n\n\n"
    "def test_all():\n    assert all(s == 5 for s in map(add, [2, 1], [3, 4]))\n")}


@pytest.mark.docker
def test_control_table_driven_hidden_tests_tell_right_from_wrong(tmp_path, sandbox_image):
    assert _run(tmp_path, "honest", HONEST, TABLE_TESTS).judged.verdict == "pass"
    wrong = _run(tmp_path, "wrong", WRONG, TABLE_TESTS).judged
    assert wrong.verdict == "fail" and wrong.failed == 2, wrong.reasons


@pytest.mark.docker
def test_closed_stop_iteration_ends_table_driven_hidden_tests(tmp_path, sandbox_image):
    """worker.py sends back the builtin type of any exception; judge.py ``_exception`` re-raises any
    builtin ``Exception`` subclass, StopIteration included. Raised from inside ``map``'s ``__next__``,
    it ends the iteration as if the table were exhausted: ``for ... in zip(map(add, ...))`` runs no
    assert, ``all(... for s in map(add, ...))`` is ``all([])``. Fix: the judge turns StopIteration and
    StopAsyncIteration (like PEP 479 does for generators) into CandidateError or RuntimeError."""
    result = _run(tmp_path, "stop", "def add(a, b):\n    raise StopIteration\n", TABLE_TESTS)
    assert result.verdict == "pass"  # the visible test only checks the name exists
    assert result.judged.verdict != "pass", ("a candidate that computes nothing passed the judge",
                                             result.judged.tests)


MUTATION_TEST = ("from example import add\n\n\n"
                 "def test_no_side_effect():\n    xs = [1, 2]\n    assert add(xs, [3]) == [1, 2, 3]\n"
                 "    assert xs == [1, 2]\n")
MUTATING = "def add(a, b):\n    a.extend(b)\n    return a\n"


@pytest.mark.docker
def test_closed_argument_mutation_is_invisible_to_the_judge(tmp_path, sandbox_image):
    """Positive control in the same run: the identical test, run in-process as a visible test, fails
    (``xs`` became ``[1, 2, 3]``). In the judge the candidate mutates its own decoded copy, so the
    hidden test passes. The converse also holds (an in-place function is graded fail). Fix: send the
    arguments back after the call and compare/apply them (or document that judged tests may not
    observe arguments after a call and refuse such tests)."""
    result = _run(tmp_path, "mut", MUTATING, {"test_h.py": MUTATION_TEST}, visible=MUTATION_TEST)
    assert result.verdict == "fail", ("control: in-process the mutation is caught", result.reasons)
    assert result.judged.verdict != "pass", "the judge passed a candidate that mutates its argument"


# ----- the judge under gVisor: /proc is looser, the pipes are not -----

PROC_PROBE = r'''import os


def _judge():
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if b"rsi_sandbox.judge" in open(f"/proc/{d}/cmdline", "rb").read():
                    return int(d)
            except OSError:
                pass


def add(a, b):
    opened, refused = [], []
    for pid in (1, _judge()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            fds = []
        for n in fds:
            path = f"/proc/{pid}/fd/{n}"
            for flag in (os.O_RDONLY, os.O_WRONLY):
                try:
                    fd = os.open(path, flag | os.O_NONBLOCK)
                except OSError:
                    refused.append(path)
                    continue
                st = os.fstat(fd)
                os.close(fd)
                kind = "pipe" if (st.st_mode & 0o170000) in (0o010000, 0o140000) else "other"
                opened.append((path, kind, os.readlink(path)))
        for name in ("mem", "environ"):
            try:
                data = open(f"/proc/{pid}/{name}", "rb").read(4096)
                opened.append((f"/proc/{pid}/{name}", "data", data.count(b"RSI_NONCE")))
            except OSError:
                refused.append(f"/proc/{pid}/{name}")
    return [opened, refused]
'''


@pytest.mark.docker
def test_holds_under_gvisor_the_worker_opens_no_pipe_of_the_judge_or_pid1(tmp_path, sandbox_image):
    """Under runsc (2022-12) a worker (the candidate's UID) may list ``/proc/<judge>/fd`` and read the
    judge's ``environ`` and ``maps``, unlike runc; it must still open none of the judge's or PID 1's
    pipes (the result stream, the call channel, the host's stdout) nor any ``mem``. Positive control:
    the same route does open their ``/dev/null`` descriptors, so /proc is reachable and a refusal
    means the pipe's permissions held."""
    hidden = {"test_h.py": "from example import add\n\n\ndef test_h():\n    print(repr(add(2, 3)))\n"
                           "    assert add(2, 3) == 5\n"}
    result = _run(tmp_path, "proc", PROC_PROBE, hidden, runtime="runsc")
    out = result.judged.output
    assert "/dev/null" in out, ("control: no descriptor of the judge or PID 1 opened; the probe proved nothing",
                                out[-2000:])
    assert "'pipe'" not in out and "/mem', 'data'" not in out, out[-3000:]
    assert "RSI_NONCE" not in out
    assert result.judged.verdict == "fail"


def test_holds_a_directory_named_like_a_wheel_is_never_built(tmp_path):
    """``check_requirement`` looks at the URL's suffix only: ``evilsrc @ file:///.../evilsrc-1.0-py3-none-
    any.whl`` where that path is a *directory* holding a setup.py passes the check. pip treats the link
    as a wheel and fails on it without running the setup.py (held; kept so a pip upgrade that prepares
    such a directory as source is caught)."""
    from orchestrator.sandbox.project_image import ProjectImageError, download_wheelhouse, project_spec

    marker = tmp_path / "marker"
    src = _marker_source(tmp_path, marker).rename(tmp_path / "evilsrc-1.0-py3-none-any.whl")
    spec = project_spec(_project(tmp_path / "p", f"evilsrc @ {src.as_uri()}"))
    assert spec.requirements, "control: the check let the directory through, so pip is what refuses it"
    with pytest.raises(ProjectImageError):
        download_wheelhouse(spec, IMAGE_INFO, tmp_path / "wheels")
    assert not marker.exists()


STDIN_PROBE = r'''import os


def add(a, b):
    out = []
    for path in ("/proc/1/fd/0", "/proc/1/fd/1"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            out.append((path, "refused", exc.errno))
            continue
        try:
            out.append((path, os.readlink(path), os.read(fd, 65536)))
        except OSError as exc:
            out.append((path, os.readlink(path), "read", exc.errno))
        finally:
            os.close(fd)
    return out
'''


@pytest.mark.docker
def test_holds_in_the_pool_under_gvisor_pid1s_go_channel_is_gone(tmp_path, sandbox_image):
    """docker-pool sends the judged tests on PID 1's stdin (the go message). Under runsc the candidate's
    UID can open ``/proc/1/fd/0`` (runc refuses it), so the channel must be gone by the time candidate
    code runs: PID 1 puts /dev/null there right after the go, and its stdout (the report) stays refused.
    Positive control: the open of fd 0 succeeds, so a refusal is not why nothing leaked."""
    from orchestrator.sandbox.pool import DockerPool

    ws = write_tree(tmp_path / "ws", {"example.py": STDIN_PROBE, "test_example.py": VISIBLE})
    hidden = {"test_h.py": "from example import add\n\n\ndef test_h():\n    print(repr(add(2, 3)))\n"
                           "    assert add(2, 3) == 5\n"}
    limits = SandboxLimits.load(runtime="runsc")
    with DockerPool(limits, size=1) as pool:
        result = pool.run(ws, limits, judge=hidden)
    out = result.judged.output
    assert "('/proc/1/fd/0', '/dev/null', b'')" in out, out[-2000:]
    assert "('/proc/1/fd/1', 'refused', 13)" in out, out[-2000:]
    assert "test_h" not in out.split("('/proc/1/fd/0'")[1].split(")")[0]
    assert result.judged.verdict == "fail"


# ----- derived images: a dependency's .pth file runs inside PID 1 and the judge -----

PTH_FORGE = '''import os, sys, builtins
if os.getuid() == 10002:  # the judge's UID: every judged test's body becomes a no-op
    _orig = builtins.__import__
    def _imp(name, globals=None, locals=None, fromlist=(), level=0):
        mod = _orig(name, globals, locals, fromlist, level)
        p = sys.modules.get("_pytest.python")
        if p is not None and hasattr(p, "Function") and not getattr(p, "_rsi_forged", False):
            p._rsi_forged = True
            p.Function.runtest = lambda self: None
        return mod
    builtins.__import__ = _imp
'''


def _pth_wheel(path: Path) -> Path:
    files = {"pthdep_forge.py": PTH_FORGE.encode(), "pthdep_forge.pth": b"import pthdep_forge\n",
             "pthdep-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: pthdep\nVersion: 1.0\n",
             "pthdep-1.0.dist-info/WHEEL":
                 b"Wheel-Version: 1.0\nGenerator: x\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for rel, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{rel},sha256={digest},{len(data)}")
    record.append("pthdep-1.0.dist-info/RECORD,,")
    files["pthdep-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    whl = path / "pthdep-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
    return whl


@pytest.mark.docker
def test_closed_a_dependency_pth_file_forges_the_judge_in_a_derived_image(tmp_path, docker_client, sandbox_image):
    """``python3 -I`` still runs ``site``, and ``site`` executes the ``import`` lines of every ``.pth`` in
    site-packages; the derived image copies the dependencies' site-packages over the base's (where
    ``rsi_sandbox.pth`` lives). A wheel (a released one from the index works the same as this
    ``file://`` one) that ships ``x.pth`` runs its code at the start of PID 1 (root, before the
    environment with the HMAC key and the judged tests is scrubbed), of the judge and of the worker.
    Not a model's move (a patch cannot change dependencies), but the judge's isolation rests on
    "nothing of the workspace is on this path", which this bypasses. Positive control: the same
    project in the plain sandbox image is judged fail. Fix: start PID 1 and the judge with ``-I -S``
    and add /opt/rsi and the judge's pytest explicitly (no site, no .pth), or install dependencies
    where only the candidate's processes look (a PYTHONPATH entry), and refuse wheels with .pth files."""
    from orchestrator.sandbox.project_image import build_project_image

    vendor = tmp_path / "vendor"
    vendor.mkdir()
    whl = _pth_wheel(vendor)
    proj = write_tree(tmp_path / "proj", {
        "pyproject.toml": f'[project]\nname = "rt3-pthdep"\nversion = "0.1"\n'
                          f'dependencies = ["pthdep @ {whl.as_uri()}"]\n',
        "example.py": WRONG, "test_example.py": VISIBLE})
    hidden = {"test_h.py": "from example import add\n\n\ndef test_h():\n    assert add(2, 3) == 5\n"}
    plain = run_tests(proj, limits=SandboxLimits.load(), judge=hidden)
    assert plain.judged.verdict == "fail", ("control", plain.judged.reasons)
    tag = build_project_image(docker_client, proj)
    try:
        derived = run_tests(proj, limits=SandboxLimits.load(image=tag), judge=hidden)
    finally:
        try:
            docker_client.images.remove(tag, force=True)
        except Exception:  # noqa: BLE001
            pass
    assert derived.judged.verdict != "pass", ("a dependency's .pth forged the judge", derived.judged.calls)
