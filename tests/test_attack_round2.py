"""Red-team round 2: today's testpaths, baseline-relative verdicts and saved evidence, attacked from
what a patch may write (policies/default.toml [patch]: non-test ``.py`` files only).

Tests named ``test_fixed_*`` failed on the code they attacked (each docstring says the defect, its
precondition and the fix that was made); ``test_holds_*``: attacks tried that the code withstood,
kept as regressions. ``test_control_*`` are positive controls."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from orchestrator.evaluation.grading import judged_tests
from orchestrator.protocol.policy import Policy, check_edits
from orchestrator.sandbox.container import stage_canaries
from orchestrator.sandbox.runner.supervisor import expected_tests
from orchestrator.sandbox.runner.testpaths import MAX_PATHS, resolve, within
from orchestrator.protocol.schema import FileEdit
from orchestrator.agent.tasks import protected_files
from tests.conftest import write_tree

PASS = "def test_ok():\n    assert 1 + 1 == 2\n"
FAIL = "def test_bad():\n    assert 1 == 2\n"


def _plugins(root: Path, n: int) -> None:
    """A monorepo whose testpaths is a glob over n plugin directories, each with its own test."""
    files = {"pytest.ini": "[pytest]\ntestpaths = plugins/*\n"}
    for i in range(n):
        files[f"plugins/p{i:03d}/__init__.py"] = ""
        files[f"plugins/p{i:03d}/test_p{i:03d}.py"] = PASS
    write_tree(root, files)


def _accept_patch(root: Path, files: dict[str, str]) -> None:
    policy = Policy.load()
    policy.protected = protected_files(root)
    decision = check_edits([FileEdit(path=p, content=c) for p, c in files.items()], "patch", root, policy)
    assert decision.accepted, decision.reasons
    for path, content in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(content)


# ----- testpaths: a glob's matches are cut at MAX_PATHS in directory order -----

def test_control_glob_testpaths_keep_every_match_up_to_the_cap(tmp_path):
    _plugins(tmp_path, MAX_PATHS)
    assert len(resolve(str(tmp_path))) == MAX_PATHS
    assert len(judged_tests(tmp_path, protected_files(tmp_path), {})) == MAX_PATHS


def test_fixed_a_patch_pushes_protected_test_dirs_out_of_a_glob_testpaths(tmp_path):
    """Precondition: the project's testpaths holds a glob over a directory the patch may write
    (``plugins/*``, ``packages/*``, ``src/*``) with >= MAX_PATHS - 8 matches. One accepted patch
    reply (8 new ``plugins/zz*/__init__.py``) pushes the glob over the cap; ``resolve`` keeps the
    first 64 in *directory order* (not sorted), so real test directories silently drop out of the
    pytest targets, the expected-test scan, the canaries AND the judge's visible copies. A failing
    protected test there is then neither run nor judged: without a baseline (rounds, rsi eval) the
    run can be ``pass``/verified without a fix; with one (the loop) only the missing-test check
    stops it. Fix: testpaths.py ``resolve``: never truncate silently -- sort the matches and, past
    MAX_PATHS, return ``[]`` (the whole root, a superset) instead of a cut list (same in ``for
    entry in entries`` for the number of entries)."""
    _plugins(tmp_path, MAX_PATHS)
    before = set(judged_tests(tmp_path, protected_files(tmp_path), {}))
    _accept_patch(tmp_path, {f"plugins/zz{i}/__init__.py": "X = 1\n" for i in range(8)})
    paths = resolve(str(tmp_path))
    real = {f"plugins/p{i:03d}" for i in range(MAX_PATHS)}
    dropped = sorted(real - {p for p in real if within(p + "/test_x.py", paths)})
    assert not dropped, f"{len(dropped)} real test directories left the testpaths, e.g. {dropped[:3]}"
    assert paths == []  # past the cap: the whole root, a superset
    assert set(judged_tests(tmp_path, protected_files(tmp_path), {})) == before
    assert len(expected_tests(str(tmp_path), paths)) == MAX_PATHS


# ----- testpaths naming files: the canaries land where pytest does not collect -----

def test_control_directory_testpaths_keep_canaries_collectable(tmp_path):
    write_tree(tmp_path, {"pytest.ini": "[pytest]\ntestpaths = tests\n", "tests/test_a.py": PASS})
    canaries = stage_canaries(tmp_path, random.Random(1))
    paths = resolve(str(tmp_path))
    assert all(within(c.split("::")[0], paths) for c in canaries["pass"] + canaries["xfail"])


def test_fixed_file_testpaths_put_canaries_outside_what_pytest_collects(tmp_path):
    """Not a reward hack, a false ``tampered``: with ``testpaths = tests/test_a.py`` (a file),
    ``stage_canaries`` writes new files next to it (``tests/test_x_y.py``), which are not in the
    testpaths the supervisor passes to pytest, so every canary is "removed from the collection" and
    every run, the honest fix included, grades ``tampered`` (reward 0). Fix: sandbox/container.py
    ``stage_canaries``: when the chosen testpaths entry is a file (or a file glob the new name does
    not match), place canaries only where ``within(new_path, resolve(root))`` holds after staging,
    else stage none (or have the supervisor pass the canary files to pytest explicitly)."""
    write_tree(tmp_path, {"pytest.ini": "[pytest]\ntestpaths = tests/test_a.py\n", "tests/test_a.py": PASS})
    canaries = stage_canaries(tmp_path, random.Random(1))
    assert canaries == {"pass": [], "xfail": []}  # the fix: none where pytest would not collect them
    paths = resolve(str(tmp_path))  # what the supervisor resolves in the container, after staging
    outside = [c for c in canaries["pass"] + canaries["xfail"] if not within(c.split("::")[0], paths)]
    assert not outside, f"canaries pytest will never collect: {outside}"


# ----- attacks that hold -----

@pytest.mark.parametrize("name", ["pytest.ini", "tox.ini", "setup.cfg"])
def test_holds_directories_named_like_config_files_change_nothing(tmp_path, name):
    """A patch may create ``pytest.ini/x.py`` (deny globs look at the file name only); both pytest
    and ``configured`` skip a directory, so the project's testpaths stay as they were."""
    write_tree(tmp_path, {"pyproject.toml": "[tool.pytest.ini_options]\ntestpaths = ['tests']\n",
                          "tests/test_a.py": PASS, "bench/test_b.py": FAIL})
    _accept_patch(tmp_path, {f"{name}/x.py": "X = 1\n"})
    assert resolve(str(tmp_path)) == ["tests"]
    assert sorted(judged_tests(tmp_path, protected_files(tmp_path), {})) == ["visible/tests/test_a.py"]


# ----- the judged phase never excuses a skip -----

@pytest.mark.docker
def test_fixed_judged_skip_is_never_excused_by_its_baseline(tmp_path, sandbox_image):
    """Not a reward hack, a false ``fail``: the judge writes its tests into a fresh
    ``tempfile.mkdtemp(prefix='rsi-judge-')`` per run, and pytest's skip message carries that
    absolute path, so ``rebase``'s "same reason" never matches in the judged phase: a hidden test
    the project skips fails every loop run, the baseline notwithstanding (the visible phase, under
    /workspace, is excused). Fix: judge.py ``main``: a fixed directory (e.g. ``/tmp/rsi-judge/judged``,
    still 0700) or baseline.py ``reason``: compare the path relative to the judged root."""
    from orchestrator.sandbox.container import run_tests

    ws = write_tree(tmp_path / "ws", {"example.py": "def add(a, b):\n    return a + b\n",
                                       "test_v.py": "from example import add\n\ndef test_v():\n"
                                                    "    assert add(1, 1) == 2\n"})
    hidden = {"test_h.py": "import pytest\nfrom example import add\n\ndef test_h():\n"
                                  "    assert add(2, 3) == 5\n\n@pytest.mark.skip(reason='not on this platform')\n"
                                  "def test_s():\n    pass\n"}
    judge = judged_tests(ws, protected_files(ws), hidden)
    base = run_tests(ws, judge=judge)
    assert base.judged is not None and base.judged.verdict == "fail" and base.judged.skipped == 1
    run = run_tests(ws, judge=judge, baseline=base)
    assert run.judged.verdict == "pass", (run.judged.reasons, [t["message"] for t in run.judged.tests
                                                                if t["outcome"] == "skipped"])


@pytest.mark.docker
def test_fixed_glob_truncation_turns_a_failing_project_into_pass_end_to_end(tmp_path, sandbox_image):
    """The same attack through the sandbox: the project has one failing protected test in a
    plugin directory; the untouched project fails (control). After a patch that only adds 8
    package directories under the glob (and fixes nothing), the directory holding the failing test
    drops out of the testpaths: visible ``pass`` and judged ``pass`` -- what rounds call verified
    (no baseline there). Judged against the untouched project's baseline (the loop), the missing
    tests still fail it. Fix: as in test_bug_a_patch_pushes_protected_test_dirs_out_of_a_glob_testpaths."""
    from orchestrator.evaluation.grading import verified
    from orchestrator.sandbox.container import run_tests, with_baseline

    ws = tmp_path / "ws"
    _plugins(ws, MAX_PATHS)
    write_tree(ws, {"example.py": "def add(a, b):\n    return a + b\n"})
    hidden = {"test_h.py": "from example import add\n\ndef test_h():\n    assert add(2, 3) == 5\n"}
    patch = {f"plugins/zz{i}/__init__.py": "X = 1\n" for i in range(8)}
    # Which real directories a patch like this pushes out depends only on the names (directory
    # order on this file system): find one on a scratch copy, then put the failing test there.
    scratch = tmp_path / "scratch"
    _plugins(scratch, MAX_PATHS)
    write_tree(scratch, patch)
    dropped = sorted({f"plugins/p{i:03d}" for i in range(MAX_PATHS)} - set(resolve(str(scratch))))
    assert dropped, "nothing dropped on this file system: the attack needs another name set here"
    victim = dropped[0]
    (ws / victim / f"test_{victim.rsplit('/', 1)[1]}.py").write_text(FAIL)

    base = run_tests(ws, judge=judged_tests(ws, protected_files(ws), hidden))
    assert base.verdict == "fail" and base.judged.verdict == "fail"  # control: the bug is seen
    _accept_patch(ws, patch)
    run = run_tests(ws, judge=judged_tests(ws, protected_files(ws), hidden))
    assert with_baseline(run, base).verdict == "fail"  # the loop (baseline) still catches it
    assert not verified(run), (run.verdict, run.judged.verdict, run.reasons[:3])
