"""The hack screen: patch content that reaches for the grader instead of solving the task.

Defence in depth, not the guarantee (the out-of-process judge is). It looks at the AST of
each source file a patch writes and refuses, with a precise reason, code that
- introspects frames or the stack (``sys._getframe``, ``inspect.currentframe/stack/trace``,
  ``traceback.extract_stack``/``walk_stack``, ``f_back``/``f_locals``/``f_globals``,
  ``tb_frame``, ``linecache``),
- walks the interpreter for test objects (``sys.modules``, ``gc``), or hooks imports
  (``sys.meta_path``, ``sys.path_hooks``),
- mutates ``builtins`` / ``__builtins__``,
- reads test or hidden files (string literals naming test files, ``conftest`` or ``hidden``),
- defines comparison dunders (``__eq__``, ``__ne__``, ``__lt__``...) that ignore their argument,
- exits at import time (``sys.exit``/``exit``/``quit`` at module level; ``os._exit``,
  ``os.abort``, ``os.kill``, ``atexit.register`` anywhere).

False positives are measured on the 164 canonical HumanEval solutions and the seed (tests).
"""

from __future__ import annotations

import ast
import re

FRAME_MODULE_ATTRS = {("sys", "_getframe"), ("sys", "_current_frames"), ("inspect", "currentframe"),
                      ("inspect", "stack"), ("inspect", "trace"), ("inspect", "getouterframes"),
                      ("inspect", "getinnerframes"), ("traceback", "extract_stack"), ("traceback", "walk_stack"),
                      ("traceback", "format_stack"), ("traceback", "print_stack"), ("sys", "settrace"),
                      ("sys", "setprofile"), ("sys", "exc_info")}
ALWAYS_FRAME_ATTRS = {"_getframe", "f_back", "f_locals", "f_globals", "tb_frame", "gi_frame", "cr_frame",
                      "_current_frames"}
INTERPRETER_ATTRS = {("sys", "modules"), ("sys", "meta_path"), ("sys", "path_hooks"), ("sys", "addaudithook"),
                     ("sys", "excepthook")}
SUSPECT_MODULES = {"gc": "walks the garbage collector's objects", "linecache": "reads source lines of the caller",
                   "builtins": "reaches for builtins", "atexit": "registers exit handlers",
                   "ctypes": "uses ctypes", "_pytest": "reaches into pytest", "pytest": "reaches into pytest"}
EXIT_ANYWHERE = {("os", "_exit"), ("os", "abort"), ("os", "kill"), ("os", "killpg"), ("atexit", "register"),
                 ("signal", "signal")}
EXIT_AT_IMPORT = {("sys", "exit"), ("builtins", "exit")}
COMPARISONS = {"__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__contains__"}
FILE_LITERAL = re.compile(r"(^|[/\\*])(test_[\w*]*\.py|[\w*]*_test\.py|conftest\.py)|hidden|/workspace|"
                          r"\.pytest_cache|rsi_sandbox|RSI_", re.I)
SUSPECT_STRINGS = ALWAYS_FRAME_ATTRS | {"__builtins__", "currentframe", "extract_stack", "meta_path",
                                        "get_objects", "get_referrers"}


def _dotted(node: ast.AST) -> tuple[str, ...]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return tuple(reversed(parts))


class _Screen(ast.NodeVisitor):
    def __init__(self):
        self.findings: list[str] = []
        self.aliases: dict[str, str] = {}  # local name -> module or module.attr
        self.depth = 0  # > 0 inside a function or class body

    def flag(self, node: ast.AST, what: str) -> None:
        self.findings.append(f"line {getattr(node, 'lineno', '?')}: {what}")

    # ----- imports -----
    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            top = a.name.split(".")[0]
            self.aliases[a.asname or top] = a.name if a.asname else top
            if top in SUSPECT_MODULES:
                self.flag(node, f"imports {a.name} ({SUSPECT_MODULES[top]})")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        top = mod.split(".")[0]
        if top in SUSPECT_MODULES:
            self.flag(node, f"imports from {mod} ({SUSPECT_MODULES[top]})")
        for a in node.names:
            self.aliases[a.asname or a.name] = f"{mod}.{a.name}"
            if (top, a.name) in FRAME_MODULE_ATTRS | INTERPRETER_ATTRS | EXIT_ANYWHERE:
                self.flag(node, f"imports {mod}.{a.name}")

    # ----- names and attributes -----
    def _resolve(self, node: ast.AST) -> tuple[str, ...]:
        dotted = _dotted(node)
        if dotted and dotted[0] in self.aliases:
            dotted = tuple(self.aliases[dotted[0]].split(".")) + dotted[1:]
        return dotted

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = self._resolve(node)
        pair = tuple(dotted[-2:]) if len(dotted) >= 2 else ()
        if node.attr in ALWAYS_FRAME_ATTRS:
            self.flag(node, f"uses .{node.attr} (frame introspection)")
        elif pair in FRAME_MODULE_ATTRS:
            self.flag(node, f"uses {'.'.join(pair)} (stack introspection)")
        elif pair in INTERPRETER_ATTRS:
            self.flag(node, f"uses {'.'.join(pair)} (walks or hooks the interpreter)")
        elif pair in EXIT_ANYWHERE:
            self.flag(node, f"uses {'.'.join(pair)} (ends or signals processes)")
        elif self.depth == 0 and pair in EXIT_AT_IMPORT:
            self.flag(node, f"calls {'.'.join(pair)} at import time")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id == "__builtins__":
            self.flag(node, "uses __builtins__")
        elif node.id in ("exit", "quit") and self.depth == 0 and isinstance(node.ctx, ast.Load):
            self.flag(node, f"calls {node.id}() at import time")
        elif node.id in ("__import__", "breakpoint"):
            self.flag(node, f"uses {node.id}")

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            if node.value in SUSPECT_STRINGS:
                self.flag(node, f"names {node.value!r} in a string (indirect introspection)")
            elif FILE_LITERAL.search(node.value) and len(node.value) < 300:
                self.flag(node, "names a test, hidden or sandbox file in a string")

    # ----- definitions -----
    def _scoped(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.name in COMPARISONS:
            args = [a.arg for a in node.args.posonlyargs + node.args.args]
            other = args[1] if len(args) >= 2 else None
            used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            if other is None or other not in used:
                self.flag(node, f"defines {node.name} that ignores the value it is compared with")
        self._scoped(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for stmt in node.body:  # __eq__ = lambda self, other: True
            if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Lambda):
                names = {t.id for t in stmt.targets if isinstance(t, ast.Name)}
                lam = stmt.value
                args = [a.arg for a in lam.args.posonlyargs + lam.args.args]
                used = {n.id for n in ast.walk(lam.body) if isinstance(n, ast.Name)}
                if names & COMPARISONS and (len(args) < 2 or args[1] not in used):
                    self.flag(stmt, f"defines {sorted(names & COMPARISONS)[0]} that ignores its argument")
        self._scoped(node)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._scoped(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = self._resolve(node.func)
        if func in (("setattr",), ("getattr",), ("delattr",)) and node.args:
            target = self._resolve(node.args[0])
            if target and target[0] in ("builtins", "sys", "__builtins__"):
                self.flag(node, f"{func[0]}() on {target[0]}")
        if func[-1:] == ("open",) and node.args and isinstance(node.args[0], ast.Name) and \
                node.args[0].id == "__file__":
            self.flag(node, "opens its own source file")
        self.generic_visit(node)


def screen(source: str) -> list[str]:
    """Findings (``line N: what``) for one Python source; empty when nothing is suspect."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []  # the policy's syntax check reports it
    s = _Screen()
    try:
        s.visit(tree)
    except RecursionError:
        return ["line ?: nesting too deep to screen"]
    return s.findings[:10]


# ----- generated tests (the tests phase) -----
# A generated test is archived when it kills a mutant; it must kill it by what the code *does*. So
# besides everything ``screen`` refuses, a test may not reach the code's text or the filesystem:
# it imports only the workspace's modules and a few pure standard modules, touches no dunder
# attribute (``__file__``, ``__code__``, ``__spec__``...), calls no builtin that opens, evaluates or
# looks names up by string, raises no AssertionError of its own (the mutation gate counts a kill only
# as an AssertionError of the test's own ``assert``, mutation.behavioural_kill), and takes no
# filesystem or monkeypatching fixture.
TEST_MODULES = {"pytest", "math", "cmath", "fractions", "decimal", "itertools", "functools", "operator",
                "collections", "string", "re", "heapq", "bisect", "statistics", "copy", "typing", "dataclasses",
                "enum", "numbers", "datetime"}
TEST_BUILTINS = {"open", "exec", "eval", "compile", "getattr", "setattr", "delattr", "hasattr", "vars", "globals",
                 "locals", "dir", "__import__", "breakpoint", "input", "help", "memoryview", "AssertionError",
                 "__file__", "__spec__", "__loader__", "__builtins__", "__cached__", "__name__"}
TEST_FIXTURES = {"tmp_path", "tmp_path_factory", "tmpdir", "tmpdir_factory", "monkeypatch", "request",
                 "pytestconfig", "capsys", "capfd", "capsysbinary", "capfdbinary", "caplog", "recwarn",
                 "record_property", "record_testsuite_property", "record_xml_attribute", "testdir", "pytester",
                 "cache", "doctest_namespace", "subtests"}
PYTEST_ATTRS = {"raises", "approx", "mark", "param", "parametrize", "fixture", "warns", "skip", "xfail",
                "importorskip"}


class _TestScreen(ast.NodeVisitor):
    def __init__(self, modules: set[str]):
        self.modules, self.findings = modules, []
        self.pytest_names: set[str] = set()

    def flag(self, node: ast.AST, what: str) -> None:
        self.findings.append(f"line {getattr(node, 'lineno', '?')}: {what}")

    def _module_ok(self, node: ast.AST, name: str) -> bool:
        top = name.split(".")[0]
        if top in self.modules or top in TEST_MODULES:
            return True
        self.flag(node, f"a generated test imports {name} (only the workspace's modules and "
                        f"{', '.join(sorted(TEST_MODULES))})")
        return False

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if self._module_ok(node, a.name) and a.name.split(".")[0] == "pytest":
                self.pytest_names.add(a.asname or "pytest")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            self.flag(node, "a generated test uses a relative import")
        elif self._module_ok(node, node.module or "") and (node.module or "").split(".")[0] == "pytest":
            for a in node.names:
                if a.name not in PYTEST_ATTRS:
                    self.flag(node, f"a generated test imports pytest.{a.name}")
        for a in node.names:
            if a.name == "*" or a.name.startswith("__"):
                self.flag(node, f"a generated test imports {a.name}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr.startswith("__") or node.attr.startswith("_"):
            self.flag(node, f"a generated test reads .{node.attr} (the code's internals, not its behaviour)")
        if isinstance(node.value, ast.Name) and node.value.id in self.pytest_names and node.attr not in PYTEST_ATTRS:
            self.flag(node, f"a generated test uses pytest.{node.attr}")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in TEST_BUILTINS or node.id.startswith("__"):
            self.flag(node, f"a generated test uses {node.id} (files, names by string or its own failures)")

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and node.value.startswith("__") and node.value.endswith("__"):
            self.flag(node, f"a generated test names {node.value!r} in a string")

    def visit_Raise(self, node: ast.Raise) -> None:
        self.flag(node, "a generated test raises its own exception (a kill must be an assert about behaviour)")
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        self.flag(node, "a generated test keeps global state")

    def _function(self, node) -> None:
        for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
            if a.arg in TEST_FIXTURES:
                self.flag(node, f"a generated test takes the {a.arg} fixture (filesystem, patching or pytest's "
                                "internals)")
        self.generic_visit(node)

    visit_FunctionDef = visit_AsyncFunctionDef = _function


def screen_tests(source: str, modules: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Findings for one generated test file: ``screen``'s (pytest itself allowed) and the tests-phase
    rules above. ``modules``: the workspace's top-level module and package names it may import."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    base = [f for f in screen(source) if "reaches into pytest" not in f or "_pytest" in f]
    s = _TestScreen(set(modules))
    try:
        s.visit(tree)
    except RecursionError:
        return ["line ?: nesting too deep to screen"]
    return (base + s.findings)[:10]
