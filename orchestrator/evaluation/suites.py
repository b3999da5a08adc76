"""Task suites for self-improvement rounds: many graded tasks, split by source problem.

Suites (``load_suite(NAME)``; join several with ``+``, e.g. ``humaneval-train+bugfix-train``):

- ``humaneval-train`` / ``humaneval-heldout``: the 131 / 33 HumanEval problems (split rule in
  tasks.py: number % 5 == 0 is held out), one workspace each (tasks.humaneval_task).
- ``seed``: the bundled seed workspace.
- ``bugfix-train`` / ``bugfix-heldout``: a data-free generator of bug-fix tasks. It takes correct
  code with tests (HumanEval canonical solutions with their checks; the seed's fixed version with
  its tests), injects one bug with the AST mutation machinery (orchestrator/agent/mutation.py, only inside
  the function under test), keeps only mutants that the *visible* tests kill, and hides part of the
  tests. Every mutant of a problem inherits the problem's split, so nothing derived from a held-out
  problem is ever in a train suite.
- ``bugfix-seed``: the bug-fix tasks made from the seed alone (a tiny suite, for tests and demos).
- ``dir:PATH``: every sub-directory of PATH that holds tests is a task (PATH itself when it has
  tests at its top level). User tasks are ``train`` tasks.

Hidden tests follow the judge rules (issue #11): they import the candidate module by name
(``from example import f``), call top-level functions with plain data and compare plain results;
helpers a HumanEval check needs (from the prompt) are defined in the hidden test itself, from the
task definition, never imported from the candidate.

Mutant verification runs our own trusted code only (canonical solutions and mutants of them, never
model output) in a separate host process with a CPU/memory cap and a per-mutant time limit. A mutant
that only times out or exhausts memory is dropped (it would cost a sandbox timeout per candidate and
teaches nothing a fast failure does not).

Generation is deterministic for a given seed and cached on disk (``$RSI_CACHE/suites``).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from orchestrator.agent.mutation import mutants
from orchestrator.agent.tasks import (
    SEED_DIR,
    Task,
    humaneval_number,
    humaneval_problems,
    humaneval_split,
    humaneval_task,
    protected_files,
    seed_task,
)
from orchestrator.protocol.workspace import atomic_write

GENERATOR_VERSION = "2"
BUGS_PER_PROBLEM = 3      # killed mutants kept per source problem
MUTANTS_TRIED = 60        # candidate mutants looked at per problem (a fixed order, then a seeded shuffle)
HIDDEN_FRACTION = 0.5     # share of a check's assert statements that go to the hidden test
MUTANT_TIME_S = 2.0       # per-mutant limit in the verifier process

# The seed's correct version (the bundled seed is this code with two bugs in it).
SEED_FIXED = ('def add(a, b):\n    """Return the sum of a and b."""\n    return a + b\n\n\n'
              'def is_even(n):\n    """Return True when n is even."""\n    return n % 2 == 0\n')
SEED_TESTS = ("from example import add, is_even\n\n\n"
              "def test_add():\n    assert add(2, 3) == 5\n    assert add(-1, 1) == 0\n    assert add(0, 7) == 7\n"
              "    assert add(10, -4) == 6\n\n\n"
              "def test_is_even():\n    assert is_even(4)\n    assert not is_even(7)\n    assert is_even(0)\n"
              "    assert not is_even(-3)\n")

SUITE_NAMES = ("humaneval-train", "humaneval-heldout", "seed", "bugfix-train", "bugfix-heldout", "bugfix-seed",
               "dir:PATH")


class SuiteError(ValueError):
    """An unknown suite or task id (one line, for the CLI)."""


class SuiteTask(BaseModel):
    """One task of a suite, self-contained (its files are in the spec; ``task()`` writes them out)."""

    id: str
    kind: Literal["humaneval", "bugfix", "seed", "dir", "repo"]
    source: str                   # the source problem (the split is decided per source problem)
    split: Literal["train", "heldout"]
    files: dict[str, str] = {}    # the workspace (sources and visible tests); empty for dir tasks
    hidden_tests: dict[str, str] = {}
    entry_point: str | None = None
    mutation: str | None = None   # the injected bug (bugfix tasks)
    path: str | None = None       # dir tasks: the workspace on disk
    judge_visible: bool = True    # the judge also runs the visible tests (plain-data calls only)
    focus: str | None = None      # repo tasks: the file whose function ``entry_point`` holds the bug
    context: str = ""             # repo tasks: the project's tests that call it (shown to the model)

    def task(self, root: Path) -> Task:
        """The loop's Task: the workspace written under ``root`` (unchanged files are not rewritten)."""
        if self.kind == "dir":
            return Task(id=self.id, source_dir=Path(self.path), hidden_tests=self.hidden_tests,
                        entry_point=self.entry_point, judge_visible=self.judge_visible)
        src = Path(root) / _safe(self.id)
        if self.kind == "repo" and not src.exists():  # a working copy of the project, then the bug
            from orchestrator.evaluation.repo_tasks import copy_project

            copy_project(Path(self.path), src)
        for name, text in self.files.items():
            p = src / name
            if not p.exists() or p.read_text() != text:
                p.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(p, text.encode())
        return Task(id=self.id, source_dir=src, hidden_tests=self.hidden_tests, entry_point=self.entry_point,
                    judge_visible=self.judge_visible)


class Suite(BaseModel):
    name: str
    seed: int = 0
    tasks: list[SuiteTask]

    def split(self, split: str) -> "Suite":
        return Suite(name=f"{self.name}[{split}]", seed=self.seed, tasks=[t for t in self.tasks if t.split == split])

    def by_id(self) -> dict[str, SuiteTask]:
        return {t.id: t for t in self.tasks}


def _safe(task_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in task_id)


def cache_root() -> Path:
    root = os.environ.get("RSI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "rsi-lab")
    return Path(root) / "suites"


# ----- HumanEval -----

def _humaneval_suite(split: str) -> list[SuiteTask]:
    import tempfile

    out = []
    with tempfile.TemporaryDirectory(prefix="rsi-he-") as tmp:
        problems = humaneval_problems()
        for tid in sorted(problems, key=humaneval_number):
            if humaneval_split(tid) != split:
                continue
            task = humaneval_task(tid, Path(tmp))
            files = {p.name: p.read_text() for p in sorted(task.source_dir.iterdir()) if p.is_file()}
            out.append(SuiteTask(id=tid, kind="humaneval", source=tid, split=split, files=files,
                                 hidden_tests=task.hidden_tests, entry_point=task.entry_point,
                                 judge_visible=task.judge_visible))
    return out


def _check_parts(test_src: str) -> tuple[list[ast.stmt], ast.FunctionDef, list[ast.stmt]]:
    """(module statements other than check, check, check's body)."""
    tree = ast.parse(test_src)
    check = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check")
    others = [n for n in tree.body if n is not check]
    return others, check, check.body


def _has_assert(stmt: ast.stmt) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(stmt))


def split_check(test_src: str, rng: random.Random) -> tuple[str, str] | None:
    """The HumanEval check split into (visible check source, hidden check source): the statements
    holding asserts are divided (at least one each side); other statements (imports, set-up) are kept
    on both sides in their order. None when the check has fewer than two assert statements."""
    others, check, body = _check_parts(test_src)
    units = [i for i, s in enumerate(body) if _has_assert(s)]
    if len(units) < 2:
        return None
    n_hidden = min(len(units) - 1, max(1, round(len(units) * HIDDEN_FRACTION)))
    hidden = set(rng.sample(units, n_hidden))

    def render(keep) -> str:
        stmts = [s for i, s in enumerate(body) if not _has_assert(s) or keep(i)]
        fn = ast.FunctionDef(name="check", args=check.args, body=stmts, decorator_list=[], returns=None,
                             type_params=[]) if sys.version_info >= (3, 12) else \
            ast.FunctionDef(name="check", args=check.args, body=stmts, decorator_list=[], returns=None)
        mod = ast.Module(body=[s for s in others if not isinstance(s, ast.Expr)] + [fn], type_ignores=[])
        return ast.unparse(ast.fix_missing_locations(mod)) + "\n"

    return render(lambda i: i not in hidden), render(lambda i: i in hidden)


def _prompt_helpers(prompt: str, entry_point: str) -> str:
    """The prompt's imports and top-level definitions other than the entry point (a check may call
    them, e.g. HumanEval/32 ``poly``): written into the hidden test from the task definition."""
    tree = ast.parse(prompt + "    pass\n")
    keep = [n for n in tree.body if not (isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                                         and n.name == entry_point) and not isinstance(n, ast.Expr)]
    return ast.unparse(ast.Module(body=keep, type_ignores=[])) + "\n" if keep else ""


def _only_in(original: ast.Module, mutated_src: str, entry_point: str) -> bool:
    """True when the mutant differs from the original only inside ``entry_point``."""
    try:
        mutated = ast.parse(mutated_src)
    except SyntaxError:
        return False
    a = [n for n in original.body if not (isinstance(n, ast.FunctionDef) and n.name == entry_point)]
    b = [n for n in mutated.body if not (isinstance(n, ast.FunctionDef) and n.name == entry_point)]
    return len(a) == len(b) and all(ast.dump(x) == ast.dump(y) for x, y in zip(a, b))


# The verifier runs in its own process: our canonical code and mutants of it, never model output.
_VERIFIER = r'''
import json, resource, signal, sys, types
job = json.load(sys.stdin)
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
def alarm(*_):
    raise TimeoutError("mutant time limit")
signal.signal(signal.SIGALRM, alarm)
out = []
for run in job["runs"]:
    mod = types.ModuleType("example")
    sys.modules["example"] = mod
    status = "pass"
    signal.setitimer(signal.ITIMER_REAL, job["time_s"])
    try:
        exec(compile(run["source"], "example.py", "exec"), mod.__dict__)
        if run["style"] == "check":
            ns = dict(mod.__dict__)
            exec(compile(run["test"], "test.py", "exec"), ns)
            ns["check"](ns[job["entry_point"]])
        else:
            ns = {"__name__": "test_module"}
            exec(compile(run["test"], "test.py", "exec"), ns)
            for name in sorted(ns):
                if name.startswith("test_") and callable(ns[name]):
                    ns[name]()
    except TimeoutError:
        status = "timeout"
    except MemoryError:
        status = "memory"
    except BaseException as exc:
        status = "fail:" + type(exc).__name__
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    out.append(status)
print(json.dumps(out))
'''


def verify_runs(runs: list[dict], entry_point: str | None, time_s: float = MUTANT_TIME_S) -> list[str]:
    """Statuses ('pass', 'fail:<Exception>', 'timeout', 'memory', 'crashed') of trusted code + tests."""
    job = json.dumps({"runs": runs, "entry_point": entry_point, "time_s": time_s})
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", _VERIFIER], input=job, capture_output=True, text=True,
                              timeout=30 + time_s * len(runs))
        statuses = json.loads(proc.stdout.strip().splitlines()[-1])
        if len(statuses) == len(runs):
            return statuses
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        pass
    return ["crashed"] * len(runs)


def _bugfix_from_humaneval(tid: str, p: dict, seed: int) -> list[SuiteTask]:
    rng = random.Random(f"{seed}:{tid}")
    entry = p["entry_point"]
    parts = split_check(p["test"], rng)
    if parts is None:
        return []
    visible_check, hidden_check = parts
    canonical = p["prompt"] + p["canonical_solution"]
    try:
        original = ast.parse(canonical)
    except SyntaxError:
        return []
    pool = [m for m in mutants(canonical, limit=MUTANTS_TRIED) if _only_in(original, m.source, entry)]
    rng.shuffle(pool)
    base = ast.unparse(original) + "\n"
    runs = [{"source": base, "test": visible_check, "style": "check"},
            {"source": base, "test": hidden_check, "style": "check"}]
    runs += [{"source": m.source, "test": visible_check, "style": "check"} for m in pool]
    statuses = verify_runs(runs, entry)
    if statuses[0] != "pass" or statuses[1] != "pass":
        return []  # the split check does not pass on the canonical solution: nothing trustworthy
    killed = [m for m, s in zip(pool, statuses[2:]) if s.startswith("fail:")]
    n = humaneval_number(tid)
    helpers = _prompt_helpers(p["prompt"], entry)  # from the task definition, never from the candidate
    visible = (helpers + f"from example import {entry}\n\n" + visible_check +
               f"\n\ndef test_{entry}():\n    check({entry})\n")
    hidden = (helpers + f"from example import {entry}\n\n" + hidden_check +
              f"\n\ndef test_hidden_bugfix_{n}():\n    check({entry})\n")
    out = []
    for i, m in enumerate(killed[:BUGS_PER_PROBLEM]):
        out.append(SuiteTask(id=f"bugfix:{tid}#{i}", kind="bugfix", source=tid, split=humaneval_split(tid),
                             files={"example.py": m.source, "test_example.py": visible},
                             hidden_tests={f"test_hidden_bugfix_{n}.py": hidden}, entry_point=entry,
                             mutation=m.description))
    return out


def split_test_module(test_src: str, rng: random.Random) -> tuple[str, str] | None:
    """A pytest module whose test functions hold several asserts, split into (visible, hidden)
    modules: each test function keeps some asserts visible and hides the rest under the same name."""
    tree = ast.parse(test_src)
    header = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    tests = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    vis_fns, hid_fns = [], []
    for fn in tests:
        units = [i for i, s in enumerate(fn.body) if _has_assert(s)]
        if len(units) < 2:
            vis_fns.append(fn)
            continue
        n_hidden = min(len(units) - 1, max(1, round(len(units) * HIDDEN_FRACTION)))
        hidden = set(rng.sample(units, n_hidden))
        for target, keep in ((vis_fns, lambda i: i not in hidden), (hid_fns, lambda i: i in hidden)):
            body = [s for i, s in enumerate(fn.body) if not _has_assert(s) or keep(i)]
            target.append(ast.FunctionDef(name=fn.name if target is vis_fns else fn.name.replace("test_", "test_hidden_", 1),
                                          args=fn.args, body=body, decorator_list=[], returns=None,
                                          **({"type_params": []} if sys.version_info >= (3, 12) else {})))
    if not hid_fns:
        return None

    def render(fns) -> str:
        return ast.unparse(ast.fix_missing_locations(ast.Module(body=header + fns, type_ignores=[]))) + "\n"

    return render(vis_fns), render(hid_fns)


def _bugfix_from_seed(seed: int) -> list[SuiteTask]:
    rng = random.Random(f"{seed}:seed")
    visible, hidden = split_test_module(SEED_TESTS, rng)
    pool = mutants(SEED_FIXED, limit=MUTANTS_TRIED)
    rng.shuffle(pool)
    runs = [{"source": SEED_FIXED, "test": SEED_TESTS, "style": "module"}]
    runs += [{"source": m.source, "test": visible, "style": "module"} for m in pool]
    statuses = verify_runs(runs, None)
    if statuses[0] != "pass":
        return []
    killed = [m for m, s in zip(pool, statuses[1:]) if s.startswith("fail:")]
    return [SuiteTask(id=f"bugfix:seed#{i}", kind="bugfix", source="seed", split="train",
                      files={"example.py": m.source, "test_example.py": visible},
                      hidden_tests={"test_hidden_seed.py": hidden}, mutation=m.description)
            for i, m in enumerate(killed[:BUGS_PER_PROBLEM])]


def _bugfix_suite(split: str, seed: int) -> list[SuiteTask]:
    out = _bugfix_from_seed(seed) if split == "train" else []
    problems = humaneval_problems()
    for tid in sorted(problems, key=humaneval_number):
        if humaneval_split(tid) == split:
            out += _bugfix_from_humaneval(tid, problems[tid], seed)
    return out


# ----- directories -----

def _dir_suite(path: str) -> list[SuiteTask]:
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise SuiteError(f"dir suite: {root} is not a directory")
    dirs = [root] if any(protected_files(root)) and any(root.glob("test_*.py")) else \
        [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".") and protected_files(d)]
    if not dirs:
        raise SuiteError(f"dir suite: no workspace with tests under {root}")
    return [SuiteTask(id=f"dir:{d.name}", kind="dir", source=f"dir:{d}", split="train", path=str(d)) for d in dirs]


# ----- loading, cached -----

def _build(name: str, seed: int) -> list[SuiteTask]:
    if name in ("humaneval-train", "humaneval-heldout"):
        return _humaneval_suite(name.split("-", 1)[1])
    if name == "seed":
        t = seed_task()
        return [SuiteTask(id="seed", kind="seed", source="seed", split="train", hidden_tests=t.hidden_tests,
                          files={p.name: p.read_text() for p in sorted(SEED_DIR.iterdir()) if p.is_file()})]
    if name in ("bugfix-train", "bugfix-heldout"):
        return _bugfix_suite(name.split("-", 1)[1], seed)
    if name == "bugfix-seed":
        return _bugfix_from_seed(seed)
    raise SuiteError(f"unknown suite {name!r}; known: {', '.join(SUITE_NAMES)} (join with '+')")


def load_suite(name: str, seed: int = 0, cache: Path | None = None) -> Suite:
    """The suite NAME (``a+b`` joins suites), generated once per seed and cached on disk."""
    tasks: list[SuiteTask] = []
    for part in name.split("+"):
        part = part.strip()
        if part.startswith("dir:"):
            tasks += _dir_suite(part[4:])
            continue
        folder = Path(cache or cache_root())
        path = folder / f"{part}-seed{seed}-v{GENERATOR_VERSION}.json"
        if path.exists():
            try:
                tasks += Suite.model_validate_json(path.read_text()).tasks
                continue
            except ValueError:
                pass  # a damaged cache is rebuilt
        built = _build(part, seed)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(path, Suite(name=part, seed=seed, tasks=built).model_dump_json().encode())
        tasks += built
    unique: dict[str, SuiteTask] = {}
    for t in tasks:  # a task in two joined suites (bugfix-seed+bugfix-train) counts once
        if t.id in unique and unique[t.id] != t:
            raise SuiteError(f"suite {name}: two different tasks are named {t.id}")
        unique.setdefault(t.id, t)
    return Suite(name=name, seed=seed, tasks=list(unique.values()))


def repo_suite(root: Path | str, seed: int = 0, limits=None, say=None, cache: Path | None = None) -> Suite:
    """``rsi run --workspace REPO --suite bugfix``: bug-fix tasks from the project's own code
    (repo_tasks.py), generated once per project content, sandbox image and seed, and cached."""
    from orchestrator.evaluation.repo_tasks import VERSION, project_digest, repo_bugfix_tasks
    from orchestrator.sandbox.container import SandboxLimits, connect
    from orchestrator.sandbox.project_image import image_for_workspace

    root = Path(root).expanduser().resolve()
    client = connect()
    limits = limits or SandboxLimits.load()
    image = image_for_workspace(client, root, base=limits.image)
    limits = limits.model_copy(update={"image": image})
    key = hashlib.sha256(f"{project_digest(root)}:{client.images.get(image).id}".encode()).hexdigest()[:16]
    path = Path(cache or cache_root()) / f"repo-{_safe(root.name)}-{key}-seed{seed}-v{VERSION}.json"
    name = f"bugfix:{root}"
    if path.exists():
        try:
            return Suite.model_validate_json(path.read_text())
        except ValueError:
            pass
    tasks = repo_bugfix_tasks(root, seed, limits=limits, client=client, say=say)
    suite = Suite(name=name, seed=seed, tasks=tasks)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, suite.model_dump_json().encode())
    return suite


def select_tasks(spec: str, seed: int = 0) -> Suite:
    """``--tasks``: comma-separated ids: HumanEval/N (or N), seed, bugfix:HumanEval/N#i, bugfix:seed#i, or a
    directory path."""
    chosen: list[SuiteTask] = []
    pools: dict[str, dict[str, SuiteTask]] = {}

    def pool(name: str) -> dict[str, SuiteTask]:
        if name not in pools:
            pools[name] = load_suite(name, seed).by_id()
        return pools[name]

    for raw in [s.strip() for s in spec.split(",") if s.strip()]:
        if raw == "seed":
            chosen += load_suite("seed", seed).tasks
        elif raw.startswith("bugfix:"):
            tid = raw[7:]
            tid = tid if tid.startswith(("HumanEval/", "seed")) else f"HumanEval/{tid}"
            full = f"bugfix:{tid}"
            source = tid.split("#", 1)[0]
            if source == "seed":
                found = pool("bugfix-seed").get(full)
            else:  # generated per source problem (seeded per problem: the same tasks as in the suite)
                problems = humaneval_problems()
                if source not in problems:
                    raise SuiteError(f"unknown HumanEval task {source}")
                found = {t.id: t for t in _bugfix_from_humaneval(source, problems[source], seed)}.get(full)
            if found is None:
                raise SuiteError(f"no bug-fix task {full} (the generator kept none for it, or the id is wrong)")
            chosen.append(found)
        elif raw.isdigit() or raw.startswith("HumanEval/"):
            tid = raw if "/" in raw else f"HumanEval/{raw}"
            found = pool("humaneval-train").get(tid) or pool("humaneval-heldout").get(tid)
            if found is None:
                raise SuiteError(f"unknown HumanEval task {tid}")
            chosen.append(found)
        elif Path(raw).is_dir():
            d = Path(raw).resolve()
            chosen.append(SuiteTask(id=f"dir:{d.name}", kind="dir", source=f"dir:{d}", split="train", path=str(d)))
        else:
            raise SuiteError(f"unknown task {raw!r}: HumanEval/N, seed, bugfix:HumanEval/N#i or a directory")
    return Suite(name="tasks:" + spec, seed=seed, tasks=chosen)


def heldout_sources(suite: Suite) -> list[str]:
    return sorted({t.source for t in suite.tasks if t.split == "heldout"})


def digest(suite: Suite) -> str:
    return hashlib.sha256(suite.model_dump_json().encode()).hexdigest()[:16]
