"""The project's testpaths (orchestrator/sandbox/runner/testpaths.py): read as pytest reads them,
bounded and confined to the workspace; the sandbox collects, scans and stages canaries there."""

from __future__ import annotations

import os
import random

import pytest

from orchestrator.sandbox.container import run_tests, stage_canaries
from orchestrator.sandbox.runner.supervisor import expected_tests, pytest_targets
from orchestrator.sandbox.runner.testpaths import MAX_CONFIG_BYTES, configured, resolve, within
from tests.conftest import write_tree

PASS = "def test_ok():\n    assert 1 + 1 == 2\n"
FAIL_OUTSIDE = "import codspeed_only_plugin\n\ndef test_bench():\n    pass\n"


@pytest.mark.parametrize("files,want", [
    ({"pytest.ini": "[pytest]\ntestpaths = tests docs\n"}, ["tests", "docs"]),
    ({".pytest.ini": "[pytest]\ntestpaths = tests\n"}, ["tests"]),
    ({"pyproject.toml": "[tool.pytest.ini_options]\ntestpaths = ['tests']\n"}, ["tests"]),
    ({"pyproject.toml": "[tool.pytest.ini_options]\ntestpaths = 'a b'\n"}, ["a", "b"]),
    ({"tox.ini": "[pytest]\ntestpaths = t\n"}, ["t"]),
    ({"setup.cfg": "[tool:pytest]\ntestpaths = t\n"}, ["t"]),
    ({"setup.cfg": "[metadata]\nname = x\n"}, None),
    # pytest.ini wins even without testpaths (it is the config file); pyproject only with its table
    ({"pytest.ini": "[pytest]\n", "setup.cfg": "[tool:pytest]\ntestpaths = t\n"}, None),
    ({"pyproject.toml": "[project]\nname = 'x'\n", "tox.ini": "[pytest]\ntestpaths = t\n"}, ["t"]),
    ({"pyproject.toml": "[tool.pytest.ini_options\n"}, None),               # broken: pytest reports it
    ({"pyproject.toml": "[tool.pytest.ini_options]\ntestpaths = [1]\n"}, None),
    ({"pytest.ini": "[pytest]\ntestpaths = " + "x" * MAX_CONFIG_BYTES + "\n"}, None),  # too large to read
])
def test_configured_reads_the_file_pytest_would(tmp_path, files, want):
    write_tree(tmp_path, files)
    assert configured(str(tmp_path)) == want


def test_resolve_keeps_existing_paths_inside_the_root(tmp_path):
    outside = tmp_path / "outside"
    write_tree(outside, {"test_x.py": PASS})
    root = tmp_path / "root"
    write_tree(root, {"tests/test_a.py": PASS, "pkg/a/tests/test_b.py": PASS, "pkg/b/tests/test_c.py": PASS,
                      "pytest.ini": "[pytest]\ntestpaths = tests pkg/*/tests missing ../outside /etc "
                                    "link tests/../tests\n"})
    os.symlink(outside, root / "link")
    assert resolve(str(root)) == ["pkg/a/tests", "pkg/b/tests", "tests"]
    assert within("tests/test_a.py", ["tests"]) and not within("tests2/test_a.py", ["tests"])
    assert within("anything.py", [])


def test_testpaths_of_the_root_itself_or_nothing_found_mean_everything(tmp_path):
    write_tree(tmp_path, {"pytest.ini": "[pytest]\ntestpaths = .\n", "test_a.py": PASS})
    assert resolve(str(tmp_path)) == []
    (tmp_path / "pytest.ini").write_text("[pytest]\ntestpaths = nowhere\n")
    assert resolve(str(tmp_path)) == [] and pytest_targets([]) == ["/workspace"]


def test_expected_tests_and_canaries_stay_in_the_testpaths(tmp_path):
    write_tree(tmp_path, {"pytest.ini": "[pytest]\ntestpaths = tests\n", "tests/test_a.py": PASS,
                          "bench/test_bench.py": FAIL_OUTSIDE})
    paths = resolve(str(tmp_path))
    assert expected_tests(str(tmp_path), paths) == ["tests/test_a.py::test_ok"]
    assert sorted(expected_tests(str(tmp_path))) == ["bench/test_bench.py::test_bench", "tests/test_a.py::test_ok"]
    for seed in range(20):
        canaries = stage_canaries(tmp_path, random.Random(seed))
        assert all(c.startswith("tests/") for c in canaries["pass"] + canaries["xfail"]), canaries


@pytest.mark.docker
def test_the_sandbox_collects_only_the_testpaths(tmp_path, sandbox_image):
    """A benchmark outside testpaths that needs a plugin the image lacks: pytest on the project (its
    testpaths) passes; the same tree without testpaths fails (positive control); a failure inside
    the testpaths still fails, on the pool too."""
    from orchestrator.sandbox.container import SandboxLimits
    from orchestrator.sandbox.pool import DockerPool

    tree = {"tests/test_a.py": PASS, "bench/test_bench.py": FAIL_OUTSIDE, "pkg.py": "X = 1\n"}
    with_paths = write_tree(tmp_path / "with", tree | {"pytest.ini": "[pytest]\ntestpaths = tests\n"})
    without = write_tree(tmp_path / "without", tree)
    broken = write_tree(tmp_path / "broken", tree | {"pytest.ini": "[pytest]\ntestpaths = tests\n",
                                                      "tests/test_a.py": "def test_ok():\n    assert 1 == 2\n"})
    good = run_tests(with_paths)
    assert good.verdict == "pass" and good.passed == 1 and not any("bench" in t["nodeid"] for t in good.tests), good
    assert run_tests(without).verdict != "pass"
    assert run_tests(broken).verdict == "fail"
    limits = SandboxLimits.load()
    with DockerPool(limits, size=1) as pool:
        assert pool.run(with_paths, limits).verdict == "pass"
        assert pool.run(broken, limits).verdict == "fail"
