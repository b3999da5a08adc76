"""Acceptance corpus: real projects from pinned sdists, graded in their derived sandbox images.

The sdists are fetched once by ``make corpus`` (``tests/corpus/sdists.txt`` -> ``tests/corpus_cache/``,
ignored by git), never at test time. Each project gets its derived image (its own test
dependencies, built offline from a host-downloaded wheelhouse; cached by the hash of its
dependency specification), then must grade ``pass`` on its untouched code and ``fail`` with one
injected bug.

Shapes covered:
- more-itertools 10.5.0: flat package, unittest-style tests with subTest, version-conditional skips
- toolz 1.2.0: flat package with its tests inside the package, a skip for Python 3.14 only,
  ``filterwarnings = error`` and ``--strict-config``; dependency group ``test``
- attrs 24.2.0: src/ layout, a root ``conftest.py`` importing hypothesis, test extras (hypothesis,
  pympler, cloudpickle, mypy...) with a self-referencing extra, package metadata read by its tests
- cachetools 5.5.0: src/ layout declared in setup.cfg (``package_dir = =src``), unittest-style
  tests, no dependency at all (the derived image only records its import root)
- jaraco.functools 4.0.2: a namespace package (``jaraco/`` without ``__init__.py``), doctests
  (``--doctest-modules``), ``--import-mode importlib``, a conftest.py, test extras

DEPENDS ON THE LEAD'S WIRING (marked ``WIRING`` below):
- baseline.rebase in ``run_tests(..., baseline=...)``: until then the tests apply ``rebase`` to the
  reports themselves (the same function), so they hold either way;
- ``RSI_PYTHONPATH`` (set by the derived image) put on the pytest child's ``PYTHONPATH`` by the
  supervisor: without it, src layouts and importlib-mode projects cannot import their own code;
- the project's ``testpaths`` honoured by the supervisor (pytest run without the explicit
  ``/workspace`` argument, and the AST scan of expected tests limited to those paths): attrs keeps
  benchmarks in ``bench/`` that need pytest-codspeed's marker and are outside its ``testpaths``.
Until the supervisor does these, the cases that need them are expected failures (``xfail``).

attrs 24.2.0 has one genuine failure on CPython 3.11 (``KNOWN``: it fails the same way on the host,
with pytest 7.2.1 and 9.2.0), so its untouched run must grade ``fail`` with exactly that test failing;
the injected bug must add failures.
"""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.sandbox.project_image import ProjectImageError, build_project_image, project_spec
from orchestrator.sandbox.container import SandboxLimits, connect, run_tests
from orchestrator.sandbox.runner import supervisor
from orchestrator.sandbox.runner.baseline import rebase

pytestmark = pytest.mark.docker

CACHE = Path(__file__).resolve().parent / "corpus_cache"
# WIRING: the supervisor reads RSI_PYTHONPATH (the derived image's import roots).
PYTHONPATH_WIRED = "RSI_PYTHONPATH" in inspect.getsource(supervisor)
# WIRING: the supervisor runs pytest on the project's testpaths.
TESTPATHS_WIRED = "testpaths" in inspect.getsource(supervisor)
# WIRING: run_tests judges against a baseline itself.
BASELINE_WIRED = "baseline" in inspect.signature(run_tests).parameters


@dataclass(frozen=True)
class Project:
    sdist: str
    bug: tuple[str, str, str]  # (file, original text, buggy text): one injected bug
    needs_pythonpath: bool  # imports its own code only through RSI_PYTHONPATH
    timeout_s: float = 240
    needs_testpaths: bool = False  # collects files outside its testpaths otherwise
    known_failures: tuple[str, ...] = ()  # fail on the host too: upstream, not the sandbox
    load_sensitive: tuple[str, ...] = ()  # the project's own timing tests: may fail on a loaded machine


PROJECTS = {
    "more-itertools": Project("more-itertools-10.5.0", (
        "more_itertools/more.py", "return sum(compress(repeat(1), zip(iterable)))",
        "return sum(compress(repeat(1), zip(iterable))) + 1"), False),
    "toolz": Project("toolz-1.2.0", ("toolz/itertoolz.py", "    return next(iter(seq))\n",
                                     "    return next(iter(seq[1:]))\n"), False),
    "attrs": Project("attrs-24.2.0", (
        "src/attr/filters.py", "    def include_(attribute, value):\n        return (\n            value.__class__ in cls",
        "    def include_(attribute, value):\n        return (\n            value.__class__ not in cls"), True, 480, True,
        ("tests/test_converters.py::TestPipe::test_wrapped_annotation",)),
    "cachetools": Project("cachetools-5.5.0", (
        "src/cachetools/__init__.py",
        "            return (key, self.pop(key))\n\n    def __update(self, key):\n        try:\n"
        "            self.__order.move_to_end(key)\n",
        "            return (key, self.pop(key))\n\n    def __update(self, key):\n        try:\n"
        "            self.__order.move_to_end(key, last=False)\n"), True),
    "jaraco.functools": Project("jaraco_functools-4.0.2", (
        "jaraco/functools/__init__.py", "lambda *args, **kwargs: f1(f2(*args, **kwargs))",
        "lambda *args, **kwargs: f2(f1(*args, **kwargs))"), True,
        # Throttler(next, 30) must make 28-32 calls in one second: fails when a 1-CPU sandbox is starved
        load_sensitive=("test_functools.py::TestThrottler::test_function_throttled",)),
}


def unpack(name: str, dest: Path) -> Path:
    """The project's sdist, unpacked under ``dest``; the sdist's top directory."""
    sdist = PROJECTS[name].sdist
    archive = CACHE / f"{sdist}.tar.gz"
    if not archive.is_file():
        pytest.fail(f"{archive} is missing: run `make corpus` (make test does)")
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest / sdist


def limits_for(name: str, image: str) -> SandboxLimits:
    return SandboxLimits.load(image=image, timeout_s=PROJECTS[name].timeout_s, memory="1g", pids=256)


@pytest.fixture(scope="module")
def client():
    c = connect()
    c.images.get("rsi-sandbox:latest")
    return c


@pytest.fixture(scope="module", params=list(PROJECTS))
def baseline(request, client, tmp_path_factory):
    """(name, source dir, derived image tag, report of the untouched project)."""
    name = request.param
    src = unpack(name, tmp_path_factory.mktemp(name.replace(".", "_")))
    tag = build_project_image(client, src)
    result = run_tests(src, limits=limits_for(name, tag))
    return name, src, tag, result


def _needs_wiring(name: str) -> None:
    if PROJECTS[name].needs_pythonpath and not PYTHONPATH_WIRED:
        pytest.xfail("WIRING: the supervisor does not put the image's RSI_PYTHONPATH on pytest's path yet")
    if PROJECTS[name].needs_testpaths and not TESTPATHS_WIRED:
        pytest.xfail("WIRING: the supervisor does not honour the project's testpaths yet")


def _failed(result) -> set[str]:
    return {t["nodeid"] for t in result.tests if t["outcome"] in ("failed", "error")}


def _starved(name: str, result) -> set[str]:
    """Failures a starved one-CPU sandbox explains: the project's own timing tests, and hypothesis
    tests that missed their deadline (attrs' conftest sets 400 ms)."""
    return {t["nodeid"] for t in result.tests if t["outcome"] in ("failed", "error") and (
        t["nodeid"] in PROJECTS[name].load_sensitive
        or any(m in t.get("message", "") for m in ("DeadlineExceeded", "hypothesis.errors.Flaky", "FlakyFailure")))}


def test_untouched_project_passes(baseline):
    name, src, tag, result = baseline
    report = result.model_dump()
    judged = rebase(report, report)  # WIRING: what run_tests(..., baseline=...) will do itself
    known = set(PROJECTS[name].known_failures)
    failed = _failed(result)
    flaky = _starved(name, result)
    if judged["verdict"] != ("fail" if known | flaky else "pass") or failed - flaky != known:
        _needs_wiring(name)
    if known | flaky:  # the sandbox agrees with host pytest: these tests, and only these, fail
        assert judged["verdict"] == "fail" and failed - flaky == known, (
            judged["reasons"], [t["message"][-600:] for t in result.tests if t["nodeid"] in failed - known])
        assert result.errors == 0 and result.passed > 0
        return
    assert judged["verdict"] == "pass", (name, judged["reasons"], result.output[-3000:])
    assert result.passed > 0 and result.failed == 0 and result.errors == 0
    # Only skips explained by the baseline (same test, same reason, protected file) were excused.
    assert len(judged["excused"]) == result.skipped
    if BASELINE_WIRED:
        again = run_tests(src, limits=limits_for(name, tag), baseline=result)
        assert again.verdict == "pass", again.reasons


def test_injected_bug_fails(baseline, tmp_path):
    name, src, tag, base = baseline
    _needs_wiring(name)
    path, old, new = PROJECTS[name].bug
    work = tmp_path / "work"
    shutil.copytree(src, work, symlinks=True)
    text = (work / path).read_text()
    assert text.count(old) == 1, f"the bug site in {path} is not unique"
    (work / path).write_text(text.replace(old, new))
    result = run_tests(work, limits=limits_for(name, tag))
    assert result.verdict == "fail", (name, result.verdict, result.reasons, result.output[-3000:])
    assert result.failed >= 1
    assert _failed(result) - _starved(name, result) > set(PROJECTS[name].known_failures)
    assert rebase(result.model_dump(), base.model_dump())["verdict"] == "fail"
    if BASELINE_WIRED:
        assert run_tests(work, limits=limits_for(name, tag), baseline=base).verdict == "fail"


def test_derived_image_is_reused_while_the_spec_is_unchanged(baseline, client):
    name, src, tag, _ = baseline
    image_id = client.images.get(tag).id
    assert build_project_image(client, src) == tag
    assert client.images.get(tag).id == image_id


def test_specs_of_the_corpus(tmp_path):
    specs = {name: project_spec(unpack(name, tmp_path / name.replace(".", "_"))) for name in PROJECTS}
    assert specs["more-itertools"].requirements == [] and not specs["more-itertools"].needs_image
    assert specs["toolz"].sources == ["pyproject.toml [dependency-groups] test"]
    attrs = specs["attrs"]
    assert attrs.import_roots == ["src"] and attrs.pythonpath == "/workspace/src"
    assert any(r.startswith("hypothesis") for r in attrs.requirements)
    assert any(r.startswith("mypy") for r in attrs.requirements)  # attrs[tests-mypy], inlined
    assert not any(r.startswith("attrs") for r in attrs.requirements)  # never the project itself
    assert attrs.version == "24.2.0"
    cachetools = specs["cachetools"]
    assert cachetools.requirements == [] and cachetools.import_roots == ["src"] and cachetools.needs_image
    jaraco = specs["jaraco.functools"]
    assert jaraco.name == "jaraco.functools" and jaraco.pythonpath == "/workspace"
    assert "jaraco.classes" in jaraco.requirements


def _tiny_project(root: Path, requirement: str) -> Path:
    root.mkdir()
    (root / "pkg.py").write_text("def one():\n    return 1\n")
    (root / "test_pkg.py").write_text("import pkg\n\ndef test_one():\n    assert pkg.one() == 1\n")
    (root / "requirements-test.txt").write_text(requirement + "\n")
    return root


def test_a_dependency_that_cannot_be_had_is_one_clear_line(client, tmp_path):
    proj = _tiny_project(tmp_path / "p", "pretend==999.0.0")
    with pytest.raises(ProjectImageError) as info:
        build_project_image(client, proj)
    message = str(info.value)
    assert "\n" not in message and "pretend==999.0.0" in message and "cannot be had" in message, message


def _marker_sdist(tmp_path: Path, marker: Path) -> Path:
    """A source package whose ``setup.py`` writes ``marker`` when anything builds it or asks it for
    metadata (what a hostile dependency would do, as root, on the host)."""
    src = tmp_path / "evilpkg-1.0"
    src.mkdir()
    (src / "setup.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran on the host')\n"
        "from setuptools import setup\nsetup(name='evilpkg', version='1.0', py_modules=['evilpkg'])\n")
    (src / "evilpkg.py").write_text("X = 1\n")
    (src / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: evilpkg\nVersion: 1.0\n")
    return src


@pytest.mark.parametrize("form", ["directory", "sdist", "pyproject"])
def test_a_source_dependency_never_runs_on_the_host(tmp_path, form):
    """Issue 23, item 2: a ``file://`` directory, a source archive, or such a reference in
    pyproject.toml is refused in one line naming it, before pip is called; its setup.py never runs.
    Positive control: pip, asked the old way (``pip download`` of the reference), runs that setup.py."""
    from orchestrator.sandbox.project_image import project_spec

    marker = tmp_path / "marker"
    src = _marker_sdist(tmp_path, marker)
    ref = src.as_uri()
    if form == "sdist":
        archive = tmp_path / "evilpkg-1.0.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(src, arcname="evilpkg-1.0")
        ref = archive.as_uri()
    proj = tmp_path / "p"
    proj.mkdir()
    (proj / "pkg.py").write_text("def one():\n    return 1\n")
    if form == "pyproject":
        (proj / "pyproject.toml").write_text(f'[project]\nname = "p"\nversion = "1"\ndependencies = ["evilpkg @ {ref}"]\n')
    else:
        (proj / "requirements-test.txt").write_text(f"evilpkg @ {ref}\n")
    with pytest.raises(ProjectImageError) as info:
        project_spec(proj)
    message = str(info.value)
    assert "\n" not in message and "evilpkg" in message and "refused" in message, message
    assert not marker.exists()
    # Positive control: the reference is live; pip preparing it runs its setup.py here.
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-build-isolation",
                    "-d", str(tmp_path / "dl"), f"evilpkg @ {ref}"], capture_output=True, text=True, timeout=300)
    assert marker.read_text() == "ran on the host", "the positive control did not run setup.py"


@pytest.mark.parametrize("req", ["./vendor/evilpkg", "git+https://example.invalid/evil.git",
                                 "evilpkg @ https://example.invalid/evilpkg-1.0.tar.gz", "evil pkg"])
def test_requirements_that_are_not_names_or_wheels_are_refused(req, tmp_path):
    from orchestrator.sandbox.project_image import check_requirement

    with pytest.raises(ProjectImageError, match="refused"):
        check_requirement(req)
    check_requirement("evilpkg @ https://example.invalid/evilpkg-1.0-py3-none-any.whl")  # a wheel: fine
    check_requirement("attrs[tests]>=23; python_version >= '3.8'")


def test_cli_images_build_project_prints_the_tag(client, tmp_path):
    from click.testing import CliRunner

    from orchestrator.cli import main

    src = unpack("cachetools", tmp_path)
    result = CliRunner().invoke(main, ["images", "build", "--project", str(src)])
    assert result.exit_code == 0, result.output
    tag = result.stdout.strip().splitlines()[-1]
    assert tag.startswith("rsi-project-cachetools:")
    assert client.images.get(tag).labels["org.rsi-lab.project"] == "cachetools"
    env = client.images.get(tag).attrs["Config"]["Env"]
    assert "RSI_PYTHONPATH=/workspace/src" in env
    # the base's user and entry point are untouched
    base = client.images.get("rsi-sandbox:latest").attrs["Config"]
    assert client.images.get(tag).attrs["Config"]["Entrypoint"] == base["Entrypoint"]
    assert client.images.get(tag).attrs["Config"]["User"] == base["User"]


def test_the_loop_picks_the_derived_image_only_when_needed(client, tmp_path):
    from orchestrator.cli import _workspace_image

    flat = unpack("more-itertools", tmp_path / "a")  # no dependency, flat: the plain sandbox image
    assert _workspace_image(flat, "rsi-sandbox:latest") == "rsi-sandbox:latest"
    src = unpack("cachetools", tmp_path / "b")  # src layout: its derived image
    assert _workspace_image(src, "rsi-sandbox:latest").startswith("rsi-project-cachetools:")


# The hostile suite (tests/hostile_cases.py) holds in a derived image too: the one with the most
# added packages (attrs: hypothesis, pytest-xdist, psutil, mypy...; RSI_PYTHONPATH=/workspace/src).
@pytest.fixture(scope="module")
def derived_image(client, tmp_path_factory):
    return build_project_image(client, unpack("attrs", tmp_path_factory.mktemp("attrs_hostile")))


def _hostile_names():
    from tests.hostile_cases import CASES

    return sorted(CASES)


@pytest.mark.parametrize("name", _hostile_names())
def test_hostile_case_in_a_derived_image(name, tmp_path, client, derived_image, host_marker, host_secret):
    from tests.conftest import tree_digest, write_tree
    from tests.hostile_cases import CASES, DEFAULT_TIMEOUT, TIMEOUTS

    files, expected = CASES[name]
    expected = (expected,) if isinstance(expected, str) else expected
    workspace = write_tree(tmp_path / "ws", files, {"MARKER": str(host_marker), "SECRET": host_secret})
    before, marker_before = tree_digest(workspace), host_marker.read_text()
    limits = SandboxLimits.load(image=derived_image, timeout_s=TIMEOUTS.get(name, DEFAULT_TIMEOUT))
    result = run_tests(workspace, limits=limits, client=client)
    assert result.verdict in expected, (result.verdict, result.reasons, result.output[-1500:])
    assert tree_digest(workspace) == before, "the host workspace changed"
    assert host_marker.read_text() == marker_before, "a host file changed"


def test_a_src_layout_on_the_pool(client, tmp_path):
    """The docker-pool provider's zygote starts before the workspace exists: the derived image's
    RSI_PYTHONPATH (/workspace/src) must still reach the candidate's pytest (cachetools imports its
    own code only through it), and the injected bug still fails."""
    from orchestrator.sandbox.pool import DockerPool

    name = "cachetools"
    src = unpack(name, tmp_path / "src")
    limits = limits_for(name, build_project_image(client, src))
    work = tmp_path / "work"
    shutil.copytree(src, work, symlinks=True)
    path, old, new = PROJECTS[name].bug
    (work / path).write_text((work / path).read_text().replace(old, new))
    with DockerPool(limits, client=client, size=1) as pool:
        clean = pool.run(src, limits)
        buggy = pool.run(work, limits)
    assert clean.verdict == "pass" and clean.passed > 100 and clean.errors == 0, (clean.reasons, clean.output[-2000:])
    assert buggy.verdict == "fail" and buggy.failed >= 1
