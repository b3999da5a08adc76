"""Small AST mutants of a source file, used to check that a generated test asserts something.

Operators: comparison swaps (< <=, > >=, == !=, in / not in, is / is not), arithmetic
swaps (+ -, * /, // %), off-by-one integer constants, ``return X`` -> ``return None``,
negated ``if`` / ``while`` conditions, and ``and`` <-> ``or``. Mutants are produced in a
fixed order (so runs are reproducible) and each one differs from the original.
"""

from __future__ import annotations

import ast
import copy
import re
from dataclasses import dataclass

_CMP_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
             ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_BIN_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
             ast.FloorDiv: ast.Mod, ast.Mod: ast.FloorDiv}


@dataclass(frozen=True)
class Mutant:
    description: str
    source: str


def _sites(tree: ast.AST) -> list[tuple[int, str]]:
    """(node index in ast.walk order, operator kind) for every mutable site."""
    sites = []
    for i, node in enumerate(ast.walk(tree)):
        if isinstance(node, ast.Compare) and type(node.ops[0]) in _CMP_SWAP:
            sites.append((i, "compare"))
        elif isinstance(node, ast.BinOp) and type(node.op) in _BIN_SWAP:
            sites.append((i, "binop"))
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            sites.append((i, "const+1"))
            sites.append((i, "const-1"))
        elif isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            sites.append((i, "return_none"))
        elif isinstance(node, (ast.If, ast.While)):
            sites.append((i, "negate"))
        elif isinstance(node, ast.BoolOp):
            sites.append((i, "boolop"))
    return sites


def _apply(tree: ast.AST, index: int, kind: str) -> str:
    node = list(ast.walk(tree))[index]
    line = getattr(node, "lineno", "?")
    if kind == "compare":
        old = type(node.ops[0])
        node.ops[0] = _CMP_SWAP[old]()
        return f"line {line}: {old.__name__} -> {type(node.ops[0]).__name__}"
    if kind == "binop":
        old = type(node.op)
        node.op = _BIN_SWAP[old]()
        return f"line {line}: {old.__name__} -> {type(node.op).__name__}"
    if kind in ("const+1", "const-1"):
        old = node.value
        node.value = old + (1 if kind == "const+1" else -1)
        return f"line {line}: {old} -> {node.value}"
    if kind == "return_none":
        node.value = ast.Constant(value=None)
        return f"line {line}: return None"
    if kind == "negate":
        node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
        return f"line {line}: negated condition"
    if kind == "boolop":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        return f"line {line}: and/or swapped"
    raise ValueError(kind)


def mutants(source: str, limit: int = 20) -> list[Mutant]:
    """Up to ``limit`` distinct mutants of ``source`` (empty if it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return []
    original = ast.unparse(tree)
    out, seen = [], {original}
    for index, kind in _sites(tree):
        mutated = copy.deepcopy(tree)
        description = _apply(mutated, index, kind)
        ast.fix_missing_locations(mutated)
        try:
            text = ast.unparse(mutated)
            compile(text, "<mutant>", "exec")
        except (SyntaxError, ValueError, RecursionError):
            continue
        if text in seen:
            continue
        seen.add(text)
        out.append(Mutant(description, text + "\n"))
        if len(out) >= limit:
            break
    return out


_CRASH_LINE = re.compile(r"^(?P<path>.+):(?P<line>\d+): (?P<type>[\w.]+)$")


def behavioural_kill(result, files: set[str] | list[str]) -> str | None:
    """The generated test (one of ``files``) that killed a mutant *by an assertion about behaviour*,
    or None. Any other non-pass is no kill: a tampered, error or timeout verdict, a test that errors
    in setup, or a failure raised by anything but an ``AssertionError`` in the test file's own
    ``assert`` (pytest's crash line, ``path:line: AssertionError``; where the sandbox's evidence is at
    hand, its per-report ``raised`` type must say the same). A test that reads the code's text or the
    filesystem is refused before it runs (hack_screen.screen_tests), and may not raise AssertionError
    itself, so what is left to fail its own assert is what the code returns."""
    if result is None or result.verdict != "fail":
        return None
    files = set(files)
    raised = {}
    for ev in ((getattr(result, "_evidence", None) or {}).get("events") or []):
        if isinstance(ev, dict) and ev.get("e") == "report" and ev.get("when") == "call":
            raised[ev.get("id")] = ev.get("raised")
    for t in result.tests:
        path = t["nodeid"].split("::", 1)[0]
        if path not in files or t["outcome"] != "failed":
            continue
        lines = [line for line in (t.get("message") or "").strip().splitlines() if line.strip()]
        m = _CRASH_LINE.match(lines[-1].strip()) if lines else None
        if not m or m["type"] != "AssertionError" or m["path"] != path:
            continue
        if t["nodeid"] in raised and raised[t["nodeid"]] != "AssertionError":
            continue
        return t["nodeid"]
    return None
