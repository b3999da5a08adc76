"""Bug-fix tasks from a user's own project: ``rsi run --workspace REPO --suite bugfix``.

A task is one injected bug (an AST mutant of one top-level function of the project, mutation.py)
that the project's own tests catch, graded so that the reward cannot be gamed:

- **Inputs from the project's tests.** Every call in the project's test files to a function of
  the project whose arguments are literals (``chunked([1, 2, 3], 2)``, ``merge({1: 2}, {3: 4})``)
  is an input of that function.
- **Expected values from the untouched code.** The original function and each of its mutants run
  on those inputs in a container of the project's sandbox image (the trusted oracle: our code and
  the user's, never a model's). An input is kept when the original answers it twice alike with
  plain data (or an iterator of plain data), or raises a builtin exception; a mutant is a task when
  some kept input tells it from the original.
- **Judged out of process.** The task's hidden tests are those calls with their expected values
  (``assert chunked.rsi_list([1, 2, 3], 2) == [[1, 2], [3]]``), run by the judge
  (sandbox/runner/judge.py): the candidate's function is called in its own worker and only plain
  data comes back, so an always-equal object, a peek at the caller's assert or the hidden file
  itself are out of reach. The project's whole test suite is the visible run (in-process, against
  the untouched project's baseline, so the project's own skips do not fail it); a sample is
  archived only when both pass (evaluation.verified).
- **Nothing to copy.** A project whose package the sandbox image already has outside the workspace
  (e.g. pytest's own dependencies) is refused: a candidate could import the untouched original. The
  working copy holds no VCS data, caches or build output.
- **The project's own tests kill it.** Every task is checked in the sandbox before it is kept: the
  visible suite fails on the mutant, and the hidden tests pass on the untouched project.

The model sees one function (not the file: real files are far longer than it can rewrite) and the
project's tests that call it, and replies with the whole new function (reply_format: a ``code``
reply with a ``symbol``), spliced into the file before schema and policy see a whole-file edit.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import docker
import structlog

from orchestrator.agent.mutation import mutants
from orchestrator.protocol.reply_format import _function_span, splice_function
from orchestrator.sandbox.container import (
    InfraError,
    SandboxLimits,
    connect,
    container_settings,
    remove_quietly,
    wait_or_kill,
)
from orchestrator.sandbox.runner.codec import CodecError, decode, encode

log = structlog.get_logger()

# Every limit of the generator, named once.
MAX_FUNCTION_CHARS = 3000    # a function the model is asked to rewrite (its whole definition)
MIN_INPUTS = 2               # literal calls a function needs before its mutants are tried
MAX_INPUTS = 24              # judged calls per task (those that catch the mutant first)
MAX_FUNCTIONS = 60           # functions sent to the oracle per project
MUTANTS_PER_FUNCTION = 6     # mutants tried per function
MAX_TASKS = 12               # tasks kept per project
HELDOUT_EVERY = 4            # one function in four (by name hash) is held out
CALL_TIME_S = 2.0            # one oracle call
ORACLE_TIMEOUT_S = 300       # the whole oracle container
EXCERPT_CHARS = 2500         # the tests shown to the model
VERSION = 2                  # bump when the tasks change shape (suite cache key)

COPY_IGNORE = shutil.ignore_patterns(".git", ".hg", ".svn", ".tox", ".nox", ".venv", "venv", "__pycache__",
                                     "*.pyc", "build", "dist", "*.egg-info", ".pytest_cache", ".mypy_cache",
                                     ".ruff_cache", "node_modules", ".eggs")
NOT_SOURCE_DIRS = {"tests", "test", "testing", "docs", "doc", "examples", "benchmarks", "bench", "scripts"}


class RepoTaskError(RuntimeError):
    """No task could be made from the project (one line, for the CLI)."""


@dataclass
class Function:
    rel: str                     # file, relative to the project root
    module: str                  # its import name
    symbol: str                  # the top-level function
    source: str                  # its definition, as in the file
    calls: list[dict] = field(default_factory=list)   # {"args": wire, "kwargs": wire, "text": source}
    mutants: list = field(default_factory=list)       # mutation.Mutant of the definition alone


def copy_project(root: Path, dest: Path) -> Path:
    """A working copy of the project (no VCS data, caches or build output)."""
    shutil.copytree(root, dest, ignore=COPY_IGNORE, symlinks=True)
    return dest


# ----- what to mutate -----

def source_modules(root: Path, import_roots: list[str], protected: set[str]) -> dict[str, str]:
    """{file: import name} for the project's own source files (never tests or configuration)."""
    out = {}
    for base in import_roots:
        base_dir = (root / base).resolve()
        for path in sorted(base_dir.rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            parts = path.relative_to(base_dir).with_suffix("").parts
            if rel in protected or not parts or any(p.startswith(".") or p in NOT_SOURCE_DIRS for p in parts):
                continue
            if path.name in ("setup.py", "conftest.py", "noxfile.py") or not all(p.isidentifier() for p in parts):
                continue
            names = parts[:-1] if parts[-1] == "__init__" else parts
            if names:
                out[rel] = ".".join(names)
    return out


def functions_of(root: Path, rel: str, module: str) -> list[Function]:
    text = (root / rel).read_text(encoding="utf-8", errors="replace")
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return []
    lines = text.split("\n")
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            span = _function_span(tree, node.name)
            src = "\n".join(lines[span[0] - 1:span[1]]) + "\n"
            if len(src) <= MAX_FUNCTION_CHARS:
                out.append(Function(rel, module, node.name, src))
    return out


# ----- inputs: literal calls in the project's tests -----

def _literal(node: ast.AST):
    value = ast.literal_eval(node)
    encode(value)  # plain data only (raises CodecError)
    return value


def _test_functions(tree: ast.AST):
    """(test function, its name) for every test function at any depth (methods of test classes too)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            yield node


def literal_calls(root: Path, test_files: list[str], names: set[str]) -> dict[str, list[dict]]:
    """{function name: [call]} for calls in the project's test functions whose arguments are all
    literals; each call lists the test functions it appears in (``where``: ``file::name``)."""
    out: dict[str, list[dict]] = {}
    seen: dict[tuple[str, str], dict] = {}
    for rel in test_files:
        if not rel.endswith(".py"):
            continue
        try:
            tree = ast.parse((root / rel).read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError, RecursionError):
            continue
        for test in _test_functions(tree):
            where = f"{rel}::{test.name}"
            for name, args, kwargs, wire in _literal_calls_in(test, names):
                key = (name, json.dumps(wire, sort_keys=True))
                if key in seen:
                    if where not in seen[key]["where"]:
                        seen[key]["where"].append(where)
                    continue
                seen[key] = {"args": wire[0], "kwargs": wire[1], "text": _call_text(name, args, kwargs),
                             "where": [where]}
                out.setdefault(name, []).append(seen[key])
    return out


def trim_tests(root: Path, withheld: set[str]) -> dict[str, str]:
    """{test file: its text without the withheld test functions} (each replaced by ``pass`` at its
    indentation, decorators included, so a class keeps a body): the task's workspace never holds
    them, so neither the candidate's files nor its visible run can give their values away."""
    by_file: dict[str, set[str]] = {}
    for place in withheld:
        rel, name = place.split("::", 1)
        by_file.setdefault(rel, set()).add(name)
    out = {}
    for rel, names in sorted(by_file.items()):
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")
        spans = []
        for node in _test_functions(ast.parse(text)):
            if node.name in names:
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                spans.append((first, node.end_lineno, node.col_offset))
        for first, last, col in sorted(spans, reverse=True):  # nested spans: the outer one wins
            if all(not (a <= first and last <= b) or (a, b) == (first, last) for a, b, _ in spans):
                lines[first - 1:last] = [" " * col + "pass"]
        out[rel] = "\n".join(lines)
    return out


def _literal_calls_in(tree: ast.AST, names: set[str]):
    """(name, args, kwargs, wire) of every call in ``tree`` to one of ``names`` whose arguments are all
    literals of plain data."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        if name not in names or any(isinstance(a, ast.Starred) for a in node.args) or \
                any(k.arg is None for k in node.keywords):
            continue
        try:
            args = [_literal(a) for a in node.args]
            kwargs = {k.arg: _literal(k.value) for k in node.keywords}
            wire = (encode(args), encode(kwargs))
        except (ValueError, TypeError, SyntaxError, CodecError, MemoryError, RecursionError):
            continue
        yield name, args, kwargs, wire


def _calls_in(tree: ast.AST, names: set[str]):
    """(name, wire key) of every literal call to one of ``names`` in ``tree``."""
    for name, _, _, wire in _literal_calls_in(tree, names):
        yield name, json.dumps(wire, sort_keys=True)


def visible_calls(workspace: Path, names: set[str]) -> set[tuple[str, str]]:
    """Every literal call to ``names`` a candidate could find in its workspace: in any Python file's
    code, and in the doctest examples of any of its strings (docstrings of the sources included)."""
    import doctest

    parser = doctest.DocTestParser()
    seen: set[tuple[str, str]] = set()
    for path in sorted(Path(workspace).rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (OSError, SyntaxError, ValueError, RecursionError):
            continue
        seen.update(_calls_in(tree, names))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and ">>>" in node.value:
                try:
                    examples = parser.get_examples(node.value)
                except ValueError:
                    continue
                for ex in examples:
                    try:
                        seen.update(_calls_in(ast.parse(ex.source), names))
                    except (SyntaxError, ValueError, RecursionError):
                        continue
    return seen


def call_key(symbol: str, call: dict) -> tuple[str, str]:
    return symbol, json.dumps((call["args"], call["kwargs"]), sort_keys=True)


def _call_text(name: str, args: list, kwargs: dict) -> str:
    return f"{name}({', '.join([repr(a) for a in args] + [f'{k}={v!r}' for k, v in kwargs.items()])})"


def tests_excerpt(root: Path, test_files: list[str], symbol: str, withheld: set[str] = frozenset(),
                  limit: int = EXCERPT_CHARS) -> str:
    """Source of the project's test functions that call ``symbol`` (what the model is shown), but
    those in ``withheld`` (``file::name``: they hold calls the judge asks and the model never sees)."""
    parts, used = [], 0
    for rel in test_files:
        try:
            text = (root / rel).read_text(encoding="utf-8", errors="replace")
            tree = ast.parse(text)
        except (OSError, SyntaxError, ValueError, RecursionError):
            continue
        for node in _test_functions(tree):
            if f"{rel}::{node.name}" in withheld or not any(
                    isinstance(c, ast.Call) and symbol in (getattr(c.func, "id", None), getattr(c.func, "attr", None))
                    for c in ast.walk(node)):
                continue
            seg = ast.get_source_segment(text, node, padded=True) or ""
            seg = f"# {rel}\n" + textwrap.dedent(seg)
            if used + len(seg) > limit:
                return "\n\n".join(parts)
            parts.append(seg)
            used += len(seg)
    return "\n\n".join(parts)


def withhold(kill_calls: list[dict], rng: random.Random) -> set[str]:
    """Test functions kept from the model (``file::name``): every place of one call that catches the
    bug, then more until about half of such places, so the judge always asks at least one call that
    catches the bug and that the model never saw (a fix that hard-codes what it saw fails)."""
    order = list(kill_calls)
    rng.shuffle(order)
    places = {w for c in kill_calls for w in c["where"]}
    held: set[str] = set()
    for c in order:
        held |= set(c["where"])
        if 2 * len(held) >= len(places):
            break
    return held


# ----- expected values: the oracle, in the project's sandbox image -----

ORACLE = r'''
import importlib, importlib.util, itertools, json, os, signal, sys
os.chdir("/tmp")
job = json.load(open("/rsi-job/job.json"))
provided = {}  # the project's packages that the image itself already has (outside /workspace)
for top in job["tops"]:
    try:
        spec = importlib.util.find_spec(top)
    except BaseException:
        spec = None
    if spec is not None:
        provided[top] = str(spec.origin or list(spec.submodule_search_locations or []))
import ast

def _norm(node):
    body = node.body[1:] if (node.body and isinstance(node.body[0], ast.Expr)
                             and isinstance(getattr(node.body[0], "value", None), ast.Constant)) else node.body
    return ast.dump(ast.Module(body=body, type_ignores=[])) + node.name + ast.dump(node.args)

targets = {}
for f in job["functions"]:
    try:
        targets[f["symbol"]] = _norm(ast.parse(f["source"]).body[0])
    except Exception:
        pass
copies = {}  # the original function, as it is, somewhere the image has outside the workspace
for base in list(sys.path):
    if not base or base.startswith("/workspace") or not os.path.isdir(base):
        continue
    for dirpath, dirnames, filenames in os.walk(base):
        for name in filenames:
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            try:
                text = open(path, encoding="utf-8", errors="replace").read()
            except OSError:
                continue
            hits = [t for t in targets if "def " + t + "(" in text and t not in copies]
            if not hits:
                continue
            try:
                tree = ast.parse(text)
            except Exception:
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in hits \
                        and _norm(node) == targets[node.name]:
                    copies[node.name] = path
sys.path[:0] = [p for p in os.environ.get("RSI_PYTHONPATH", "").split(":") if p] or ["/workspace"]
from rsi_sandbox.codec import ITER_ITEMS, CodecError, decode, encode
from rsi_sandbox.worker import builtin_exception_name

class Stop(BaseException):
    pass

def alarm(*_):
    raise Stop()

signal.signal(signal.SIGALRM, alarm)

def outcome(fn, call):
    args, kwargs = decode(call["args"]), decode(call["kwargs"])
    signal.setitimer(signal.ITIMER_REAL, job["call_s"])
    via = {}
    try:
        value = fn(*args, **kwargs)
        try:
            return {"ok": encode(value)}
        except CodecError:
            if not hasattr(type(value), "__next__"):
                return {"nonplain": type(value).__name__}
        via = {"via": "iter"}  # an iterator: judged through rsi_list, which iterates in the worker
        items = list(itertools.islice(value, ITER_ITEMS))
        try:
            return {"iter": encode(items)}
        except CodecError:
            return {"nonplain": "items"}
    except Stop:
        return {"timeout": True}
    except BaseException as exc:
        return {"raise": builtin_exception_name(exc), **via}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)

out = []
for f in job["functions"]:
    try:
        mod = importlib.import_module(f["module"])
        original = getattr(mod, f["symbol"])
    except BaseException as exc:
        out.append({"error": type(exc).__name__ + ": " + str(exc)[:200]})
        continue
    rows = []
    for variant in [None, None] + f["mutants"]:
        try:
            if variant is not None:
                exec(compile(variant, getattr(mod, "__file__", None) or "<mutant>", "exec"), mod.__dict__)
            fn = getattr(mod, f["symbol"])
            rows.append([outcome(fn, c) for c in f["calls"]])
        except BaseException as exc:
            rows.append(None)
        finally:
            setattr(mod, f["symbol"], original)
    out.append({"rows": rows})
sys.stdout.write("\nRSI-ORACLE " + json.dumps({"functions": out, "provided": provided, "copies": copies}) + "\n")
'''


def run_oracle(image: str, root: Path, functions: list[Function], limits: SandboxLimits, client=None) -> dict:
    """Outcomes of every function (original twice, then each mutant) on its calls, computed in a
    hardened container of ``image`` (no network, read-only project, the candidate's UID):
    ``{"functions": [{"rows": ...} | {"error": ...}], "provided": {top-level package: where the image
    has it outside the workspace}}``."""
    client = client or connect()
    job = {"call_s": CALL_TIME_S, "tops": sorted({f.module.split(".")[0] for f in functions}), "functions": [
        {"module": f.module, "symbol": f.symbol, "source": f.source, "calls": [{"args": c["args"], "kwargs": c["kwargs"]} for c in f.calls],
         "mutants": [m.source for m in f.mutants]} for f in functions]}
    with tempfile.TemporaryDirectory(prefix="rsi-oracle-") as tmp:
        jobdir = Path(tmp) / "job"
        jobdir.mkdir()
        (jobdir / "job.json").write_text(json.dumps(job))
        os.chmod(tmp, 0o755)
        os.chmod(jobdir, 0o755)
        os.chmod(jobdir / "job.json", 0o644)
        project = copy_project(root, Path(tmp) / "ws")
        for dirpath, dirnames, filenames in os.walk(project):
            os.chmod(dirpath, 0o755)
            for name in filenames:
                if not os.path.islink(os.path.join(dirpath, name)):
                    os.chmod(os.path.join(dirpath, name), 0o644)
        settings = container_settings(limits)  # the sandbox's hardening, as the candidate's UID, no capability
        settings.update(user=limits.user, cap_add=[],
                        log_config=docker.types.LogConfig(type="json-file", config={"max-size": "16m"}))
        container = client.containers.create(
            image=image, entrypoint=["python3", "-I", "-c", ORACLE], detach=True,
            volumes={str(project): {"bind": "/workspace", "mode": "ro"}, str(jobdir): {"bind": "/rsi-job", "mode": "ro"}},
            **settings)
        try:
            container.start()
            code, killed = wait_or_kill(container, ORACLE_TIMEOUT_S)
            raw = container.logs(stdout=True, stderr=True) if not killed else b""
        finally:
            remove_quietly(container)
    marker = b"\nRSI-ORACLE "
    if killed or marker not in raw:
        raise InfraError(f"the oracle found no answers in {image} (exit {code}): "
                         f"{raw[-300:].decode('utf-8', 'replace').strip()}")
    return json.loads(raw.rsplit(marker, 1)[1].split(b"\n", 1)[0])


# ----- from oracle answers to tasks -----

def _renders(value) -> bool:
    try:
        return ast.literal_eval(repr(value)) == value
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def expected_ok(outcome) -> bool:
    """Whether an oracle outcome can be a judged expectation: plain data that renders as a literal,
    or a builtin exception."""
    if not isinstance(outcome, dict):
        return False
    if "ok" in outcome or "iter" in outcome:
        try:
            return _renders(decode(outcome["ok"] if "ok" in outcome else outcome["iter"]))
        except CodecError:
            return False
    if "raise" in outcome:
        import builtins

        klass = getattr(builtins, str(outcome["raise"]), None)
        return isinstance(klass, type) and issubclass(klass, Exception)
    return False


def cases_for(calls: list[dict], first: list, second: list, mutant: list | None) -> tuple[list, int]:
    """((call, expected outcome) pairs, how many of them catch the mutant) for one mutant: the calls
    the original answers alike twice with a usable outcome, those that tell the mutant apart first;
    ([], 0) when none does."""
    if not mutant or not first or not second:
        return [], 0
    kept = [i for i, (a, b) in enumerate(zip(first, second)) if a == b and expected_ok(a)]
    kills = [i for i in kept if i < len(mutant) and mutant[i] != first[i]][:MAX_INPUTS]
    if not kills:
        return [], 0
    order = kills + [i for i in kept if i not in kills]
    return [(calls[i], first[i]) for i in order[:MAX_INPUTS]], len(kills)


def render_hidden(f: Function, cases: list[tuple[dict, dict]]) -> str:
    """The judged test module of one task: one test per call, the expected value a literal."""
    out = ["import pytest", "", f"from {f.module} import {f.symbol} as _fn", ""]
    for i, (call, outcome) in enumerate(cases):
        args, kwargs = decode(call["args"]), decode(call["kwargs"])
        out += ["", f"def test_hidden_{f.symbol}_{i}():"]
        fn = "_fn.rsi_list" if "iter" in outcome or outcome.get("via") == "iter" else "_fn"
        if "raise" in outcome:
            out += [f"    with pytest.raises({outcome['raise']}):", f"        {_call_text(fn, args, kwargs)}"]
        else:
            value = decode(outcome["iter"] if "iter" in outcome else outcome["ok"])
            out.append(f"    assert {_call_text(fn, args, kwargs)} == {value!r}")
    return "\n".join(out) + "\n"


def function_mutants(source: str, symbol: str, rng: random.Random, limit: int = MUTANTS_PER_FUNCTION) -> list:
    """Mutants of one function's definition (each still that one top-level function)."""
    pool = []
    for m in mutants(source, limit=limit * 6):
        try:
            body = ast.parse(m.source).body
        except SyntaxError:
            continue
        if len(body) == 1 and isinstance(body[0], ast.FunctionDef) and body[0].name == symbol:
            pool.append(m)
    rng.shuffle(pool)
    return pool[:limit]


def project_digest(root: Path) -> str:
    """What the project's tasks depend on: every file the working copy would hold."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        ignored = COPY_IGNORE(dirpath, dirnames + filenames)
        dirnames[:] = sorted(d for d in dirnames if d not in ignored)
        for name in sorted(n for n in filenames if n not in ignored):
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _split(module: str, symbol: str) -> str:
    return "heldout" if int(hashlib.sha256(f"{module}.{symbol}".encode()).hexdigest(), 16) % HELDOUT_EVERY == 0 \
        else "train"


def _round_robin(proposals: list[tuple]) -> list[tuple]:
    by_fn: dict[str, list] = {}
    for p in proposals:
        by_fn.setdefault(f"{p[0].module}.{p[0].symbol}", []).append(p)
    out, depth = [], 0
    while any(len(v) > depth for v in by_fn.values()):
        out += [v[depth] for v in by_fn.values() if len(v) > depth]
        depth += 1
    return out


def judged_outcomes(result) -> dict[str, bool]:
    """{hidden test file: every test in it passed} from a sandbox result's judged phase."""
    out: dict[str, bool] = {}
    judged = getattr(result, "judged", None)
    for t in (judged.tests if judged is not None else []):
        name = t["nodeid"].split("::")[0].rsplit("/", 1)[-1]
        out[name] = out.get(name, True) and t["outcome"] == "passed"
    return out


def repo_bugfix_tasks(root: Path | str, seed: int = 0, limits: SandboxLimits | None = None, client=None,
                      max_tasks: int = MAX_TASKS, say=None) -> list:
    """Bug-fix tasks (suites.SuiteTask, kind ``repo``) from the project at ``root``, each checked in
    the sandbox: the project's tests fail on it, its hidden tests pass on the untouched project."""
    from concurrent.futures import ThreadPoolExecutor

    from orchestrator.agent.tasks import protected_files
    from orchestrator.evaluation.grading import run_judged
    from orchestrator.evaluation.suites import SuiteTask
    from orchestrator.sandbox.container import run_tests
    from orchestrator.sandbox.project_image import image_for_workspace, project_spec

    say = say or (lambda msg: None)
    root = Path(root).resolve()
    client = client or connect()
    limits = limits or SandboxLimits.load()
    if limits.image == SandboxLimits().image:
        limits = limits.model_copy(update={"image": image_for_workspace(client, root, base=limits.image)})
    spec = project_spec(root)
    protected = protected_files(root)
    tests = [p for p in protected if p.endswith(".py")]
    fns = [f for rel, mod in source_modules(root, spec.import_roots, set(protected)).items()
           for f in functions_of(root, rel, mod)]
    calls = literal_calls(root, tests, {f.symbol for f in fns})
    rng = random.Random(f"{seed}:repo:{spec.name}")
    chosen = []
    for f in fns:
        f.calls = calls.get(f.symbol, [])[:MAX_INPUTS * 2]
        if len(f.calls) >= MIN_INPUTS:
            f.mutants = function_mutants(f.source, f.symbol, rng)
            if f.mutants:
                chosen.append(f)
    rng.shuffle(chosen)
    chosen = chosen[:MAX_FUNCTIONS]
    say(f"{spec.name}: {len(fns)} functions, {len(chosen)} with literal calls in its tests; "
        f"{sum(len(f.mutants) for f in chosen)} mutants to the oracle ({limits.image})")
    if not chosen:
        raise RepoTaskError(f"{root}: no function of the project is called with literal arguments in its tests "
                            "(nothing to judge a fix by)")
    oracle = run_oracle(limits.image, root, chosen, limits, client)
    if oracle.get("provided"):
        # a candidate could import the untouched original from there instead of fixing the bug
        raise RepoTaskError(f"{root}: the sandbox image already has the project's own package outside the "
                            f"workspace ({', '.join(f'{k} at {v}' for k, v in sorted(oracle['provided'].items()))}); "
                            "a candidate could copy the original from it, so its bug-fix tasks cannot be judged")
    copies = oracle.get("copies") or {}
    if copies:  # a candidate could import the untouched original from there
        say(f"{spec.name}: {len(copies)} functions left out, the image has them as they are outside the "
            f"workspace ({', '.join(f'{k} in {v}' for k, v in sorted(copies.items())[:3])})")
    proposals = []
    for f, ans in zip(chosen, oracle.get("functions", [])):
        rows = ans.get("rows") if isinstance(ans, dict) else None
        if f.symbol in copies:
            continue
        if not rows or len(rows) < 2:
            log.info("repo_tasks.oracle_error", function=f"{f.module}.{f.symbol}", error=str(ans)[:200])
            continue
        for m, mrow in zip(f.mutants, rows[2:]):
            cases, kills = cases_for(f.calls, rows[0], rows[1], mrow)
            if cases:
                proposals.append((f, m, cases, kills))
    proposals = _round_robin(proposals)
    if not proposals:
        raise RepoTaskError(f"{root}: no mutant of the project's functions changes a value its tests ask for")
    from orchestrator.evaluation.grading import verified

    with tempfile.TemporaryDirectory(prefix="rsi-repo-tasks-") as tmp:
        base = copy_project(root, Path(tmp) / "base")
        baseline = run_tests(base, limits=limits)
        if baseline.failed or baseline.errors or baseline.verdict not in ("pass", "fail"):
            raise RepoTaskError(f"{root}: the project's own tests do not pass untouched in the sandbox "
                                f"({baseline.verdict}: {baseline.failed} failed, {baseline.errors} errors)")
        hidden = {f"test_hidden_{re.sub(r'[^A-Za-z0-9_]', '_', f'{f.module}_{f.symbol}_{i}')}.py": render_hidden(f, cases)
                  for i, (f, m, cases, _) in enumerate(proposals)}
        names = list(hidden)
        untouched = run_judged(base, protected, hidden, limits, judge_visible=False, baseline=baseline)
        on_original = judged_outcomes(untouched)
        texts = {}
        candidates = []
        for name, (f, m, cases, kills) in zip(names, proposals):
            if not on_original.get(name):
                continue  # the judge does not reproduce the oracle on the untouched code: not a task
            held = withhold([c for c, _ in cases[:kills]], rng)
            trimmed = trim_tests(root, held)
            view = copy_project(base, Path(tmp) / f"v-{name[:-3]}")
            for rel, text in trimmed.items():
                (view / rel).write_text(text, encoding="utf-8")
            seen = visible_calls(view, {f.symbol})
            if all(call_key(f.symbol, c) in seen for c, _ in cases[:kills]):
                shutil.rmtree(view, ignore_errors=True)  # every catching call is still in sight (a docstring)
                continue
            if f.rel not in texts:
                texts[f.rel] = (root / f.rel).read_text(encoding="utf-8")
            candidates.append((name, f, m, splice_function(texts[f.rel], f.symbol, m.source), held, trimmed, view))
        say(f"{spec.name}: {len(proposals)} mutants tell apart a value, {len(candidates)} judged alike on the "
            "untouched project with a catching call out of sight; checking each in the sandbox")
        if not candidates:
            why = (untouched.judged.reasons[:1] if untouched.judged is not None else untouched.reasons[:1]) or ["?"]
            raise RepoTaskError(f"{root}: no mutant is judged alike on the untouched code with a catching call out "
                                f"of the model's sight ({why[0][:200]}); a project that the image's pytest itself "
                                "imports (e.g. more-itertools, packaging) cannot be judged")

        def check(item) -> bool:
            """The project's whole suite catches the bug; on the task's own workspace (the withheld tests
            removed), the untouched function is verified and the bug fails the judge."""
            name, f, m, text, _, _, view = item
            full = copy_project(base, Path(tmp) / f"m-{name[:-3]}")
            (full / f.rel).write_text(text, encoding="utf-8")
            caught = run_tests(full, limits=limits, baseline=baseline).verdict == "fail"
            shutil.rmtree(full, ignore_errors=True)
            if not caught:
                return False
            own = run_tests(view, limits=limits)
            if own.failed or own.errors or own.verdict not in ("pass", "fail"):
                return False
            one = {name: hidden[name]}
            if not verified(run_judged(view, protected, one, limits, judge_visible=False, baseline=own)):
                return False
            (view / f.rel).write_text(text, encoding="utf-8")
            res = run_judged(view, protected, one, limits, judge_visible=False, baseline=own)
            return res.judged is not None and res.judged.verdict == "fail"

        kept = []
        step = max(1, min(4, os.cpu_count() or 2))
        with ThreadPoolExecutor(max_workers=step) as pool:
            for start in range(0, len(candidates), step):
                batch = candidates[start:start + step]
                kept += [c for c, ok in zip(batch, pool.map(check, batch)) if ok]
                if len(kept) >= max_tasks:
                    break
    tasks = []
    for i, (name, f, m, text, held, trimmed, _) in enumerate(kept[:max_tasks]):
        tasks.append(SuiteTask(
            id=f"repo:{spec.name}:{f.module}.{f.symbol}#{i}", kind="repo", source=f"{spec.name}:{f.module}.{f.symbol}",
            split=_split(f.module, f.symbol), path=str(root), files={f.rel: text, **trimmed}, hidden_tests={name: hidden[name]},
            entry_point=f.symbol, mutation=m.description, judge_visible=False, focus=f.rel,
            context=tests_excerpt(root, tests, f.symbol, held)))
    say(f"{spec.name}: {len(tasks)} bug-fix tasks "
        f"({sum(t.split == 'train' for t in tasks)} train, {sum(t.split == 'heldout' for t in tasks)} held out)")
    if not tasks:
        raise RepoTaskError(f"{root}: no injected bug is caught by the project's own tests and its judged calls")
    return tasks
