"""Which paths each phase may write, and how much: the single place that decides.

Policy is data (``policies/default.toml``). ``check`` takes a raw model reply and the
workspace, and returns a ``Decision``: the normalized edits when accepted, else the
structured reasons. It never writes and never raises on hostile input.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import re
import stat
import sys
import tomllib
import unicodedata
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.protocol.hack_screen import screen, screen_tests
from orchestrator.protocol.schema import FileEdit, Phase, Rejection, ReplyError, decode_bytes, parse_reply

POLICIES_DIR = Path(os.environ.get("RSI_POLICIES", Path(__file__).resolve().parents[2] / "policies"))
_COMPONENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_DRIVE = re.compile(r"^[A-Za-z]:")
_BIDI = {"\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069",
         "\u200e", "\u200f", "\u061c"}


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_reply_bytes: int = 262144
    max_files: int = 8
    max_file_bytes: int = 65536
    max_total_bytes: int = 196608
    max_path_chars: int = 160
    max_path_depth: int = 6
    require_valid_python: bool = True


class PatchRules(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allow_suffixes: list[str] = [".py"]
    deny_globs: list[str] = Field(default_factory=list)
    deny_dirs: list[str] = Field(default_factory=list)


class TestRules(BaseModel):
    model_config = ConfigDict(extra="forbid")
    __test__ = False
    pattern: str  # from policies/default.toml, the one source of generated tests' names
    deny_dirs: list[str] = Field(default_factory=list)


class ShadowRules(BaseModel):
    """Module names a workspace file may never take where it could land on ``sys.path`` (the
    workspace root, or any directory that is not a package): the sandbox's runner, pytest and
    its plugins, and every standard-library top-level module."""

    model_config = ConfigDict(extra="forbid")
    runner: list[str] = Field(default_factory=lambda: ["rsi_sandbox", "pytest", "_pytest", "pluggy", "py",
                                                       "iniconfig", "packaging", "exceptiongroup", "tomli"])
    stdlib: bool = True  # also every name in sys.stdlib_module_names

    def names(self) -> set[str]:
        return set(self.runner) | (set(sys.stdlib_module_names) if self.stdlib else set())


class ScreenRules(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True  # the hack screen (orchestrator/protocol/hack_screen.py) on patch content


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limits: Limits = Limits()
    patch: PatchRules = PatchRules()
    tests: TestRules
    shadow: ShadowRules = ShadowRules()
    screen: ScreenRules = ScreenRules()
    protected: list[str] = Field(default_factory=list)  # set per run: the task's tests and config

    @classmethod
    def load(cls, path: Path | None = None) -> "Policy":
        path = Path(path or POLICIES_DIR / "default.toml")
        return cls(**tomllib.loads(path.read_text()))


def model_cannot_write(rel: str, policy: "Policy | None" = None) -> bool:
    """Whether no phase lets the model write the workspace path ``rel``, by its name alone: the patch
    phase's deny globs and deny dirs, except the tests phase's own pattern (``test_gen_*.py``, which the
    model writes). The host's baseline rule (sandbox.with_baseline) excuses skips only in such files;
    the in-image copy for standalone runs (sandbox/runner/baseline.py) must agree (tests/test_policy.py)."""
    policy = policy or Policy.load()
    parts = [p for p in rel.replace("\\", "/").split("/") if p]
    if not parts or fnmatch.fnmatchcase(parts[-1], policy.tests.pattern):
        return False
    return _matches_any(parts[-1], policy.patch.deny_globs) or any(p in policy.patch.deny_dirs for p in parts[:-1])


def generated_test_prefix(policy: "Policy | None" = None) -> str:
    """The fixed part of generated test names (``test_gen_``), from the policy's pattern: the
    decoder, the prompts and the reply formats derive it from here."""
    return (policy or Policy.load()).tests.pattern.split("*", 1)[0]


class Decision(BaseModel):
    accepted: bool
    phase: str
    edits: list[FileEdit] = []
    reasons: list[Rejection] = []
    rationale: str = ""

    def feedback(self) -> str:
        return "\n".join(f"- {r}" for r in self.reasons)


def _reject(code: str, detail: str, path: str | None = None) -> Rejection:
    return Rejection(stage="policy", code=code, detail=detail, path=path)


def normalize_path(raw: str, limits: Limits) -> tuple[str | None, Rejection | None]:
    """A safe relative POSIX path, or the reason it is not one."""
    shown = raw[:80].encode("unicode_escape").decode("ascii")
    if not raw:
        return None, _reject("empty_path", "path is empty")
    if len(raw) > limits.max_path_chars:
        return None, _reject("path_too_long", f"path longer than {limits.max_path_chars} characters", shown)
    if "\x00" in raw:
        return None, _reject("nul_in_path", "path contains NUL", shown)
    if any(ch in _BIDI for ch in raw):
        return None, _reject("bidi_in_path", "path contains a Unicode bidirectional control", shown)
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") for ch in raw):
        return None, _reject("control_in_path", "path contains control or invisible characters", shown)
    if "\\" in raw:
        return None, _reject("backslash_in_path", "use '/' as the separator", shown)
    if raw.startswith("/"):
        return None, _reject("absolute_path", "path must be relative to the workspace", shown)
    if _DRIVE.match(raw):
        return None, _reject("drive_letter", "path must not start with a drive letter", shown)
    parts = raw.split("/")
    if any(p == ".." for p in parts):
        return None, _reject("parent_reference", "path must not contain '..'", shown)
    if any(p in ("", ".") for p in parts):
        return None, _reject("empty_component", "path has an empty or '.' component", shown)
    if len(parts) > limits.max_path_depth:
        return None, _reject("path_too_deep", f"path deeper than {limits.max_path_depth}", shown)
    for part in parts:
        if part.startswith("."):
            return None, _reject("dot_path", "dot-files and dot-directories are off limits", shown)
        if not _COMPONENT.match(part):
            return None, _reject("bad_characters", "use only letters, digits, '_', '.', '-' in paths", shown)
    return "/".join(parts), None


def _symlink_or_special(workspace: Path, rel: str) -> Rejection | None:
    """Reject when any existing component is a symlink, or the target is not a regular file."""
    current = workspace
    parts = rel.split("/")
    for i, part in enumerate(parts):
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return _reject("unreadable_path", f"cannot inspect path ({exc.strerror})", rel)
        if stat.S_ISLNK(st.st_mode):
            return _reject("symlink_in_path", "path goes through a symbolic link", rel)
        last = i == len(parts) - 1
        if last and not stat.S_ISREG(st.st_mode):
            return _reject("not_a_file", "target exists and is not a regular file", rel)
        if not last and not stat.S_ISDIR(st.st_mode):
            return _reject("not_a_directory", f"'{part}' is not a directory", rel)
    return None


def _matches_any(name: str, globs: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def _shadows(policy: Policy, rel: str, workspace: Path, packages: set[str]) -> Rejection | None:
    """A module or package name that would shadow the runner, pytest or the standard library
    wherever its directory can be on ``sys.path`` (the root, or a directory that is no package)."""
    parts = rel.split("/")
    names = policy.shadow.names()
    for i, part in enumerate(parts):
        stem = part[:-3] if i == len(parts) - 1 and part.endswith(".py") else part
        if i == len(parts) - 1 and not part.endswith(".py"):
            continue
        parent = "/".join(parts[:i])
        in_package = parent != "" and (parent in packages or (workspace / parent / "__init__.py").is_file())
        if stem in names and not in_package:
            return _reject("shadows_module", f"'{stem}' would shadow the module of that name (the sandbox's "
                                             "runner, pytest or the standard library); choose another name", rel)
    return None


def _phase_rules(policy: Policy, phase: Phase, rel: str, exists: bool) -> Rejection | None:
    parts = rel.split("/")
    name = parts[-1]
    if rel in policy.protected:
        return _reject("protected_file", "this file is protected (task tests or configuration)", rel)
    if phase == "patch":
        if not any(name.endswith(s) for s in policy.patch.allow_suffixes):
            return _reject("not_source", "the patch phase may only write Python source files (*.py)", rel)
        if _matches_any(name, policy.patch.deny_globs):
            return _reject("forbidden_file", "tests, conftest.py, configuration and start-up hooks are "
                                             "off limits in the patch phase", rel)
        if any(p in policy.patch.deny_dirs for p in parts[:-1]):
            return _reject("test_directory", "files under a tests directory are off limits in the patch phase",
                           rel)
    else:
        if not fnmatch.fnmatchcase(name, policy.tests.pattern):
            return _reject("not_generated_test", f"generated tests must be named {policy.tests.pattern}", rel)
        if any(p in policy.tests.deny_dirs for p in parts[:-1]):
            return _reject("forbidden_directory", "generated tests may not go there", rel)
        if exists:
            return _reject("file_exists", "the test phase may only create new files", rel)
    return None


def _content(edit: FileEdit, rel: str, limits: Limits) -> tuple[int, Rejection | None]:
    try:
        data = edit.content.encode("utf-8")
    except UnicodeEncodeError:
        return 0, _reject("not_utf8", "content is not valid UTF-8 (lone surrogate)", rel)
    if len(data) > limits.max_file_bytes:
        return len(data), _reject("file_too_large", f"file larger than {limits.max_file_bytes} bytes", rel)
    if "\x00" in edit.content:
        return len(data), _reject("nul_in_content", "content contains NUL", rel)
    if limits.require_valid_python:
        try:
            ast.parse(edit.content, filename=rel)
        except SyntaxError as exc:
            return len(data), _reject("syntax_error", f"line {exc.lineno}: {exc.msg}", rel)
        except (ValueError, RecursionError, MemoryError, OverflowError):
            return len(data), _reject("syntax_error", "content does not parse as Python", rel)
    return len(data), None


def check_reply(reply: str | bytes, phase: Phase, workspace: Path | str, policy: Policy) -> Decision:
    """Extract, validate and apply the policy; never writes, never raises on bad input."""
    try:
        if isinstance(reply, bytes):
            if len(reply) > policy.limits.max_reply_bytes:
                raise ReplyError([Rejection(stage="extract", code="too_large",
                                            detail=f"reply is larger than {policy.limits.max_reply_bytes} bytes")])
            reply = decode_bytes(reply)
        parsed = parse_reply(reply, phase, policy.limits.max_reply_bytes)
    except ReplyError as exc:
        return Decision(accepted=False, phase=phase, reasons=exc.rejections)
    return check_edits(parsed.files, phase, Path(workspace), policy, rationale=parsed.rationale)


def workspace_modules(workspace: Path) -> set[str]:
    """The workspace's importable top-level names (modules and packages, at its root or under src/)."""
    out: set[str] = set()
    for root in (workspace, workspace / "src"):
        try:
            entries = list(os.scandir(root))
        except OSError:
            continue
        for e in entries:
            if e.is_file(follow_symlinks=False) and e.name.endswith(".py") and e.name.isascii():
                out.add(e.name[:-3])
            elif e.is_dir(follow_symlinks=False) and os.path.isfile(os.path.join(e.path, "__init__.py")):
                out.add(e.name)
    return {m for m in out if m.isidentifier() and not m.startswith("test") and m != "conftest"}


def check_edits(files: list[FileEdit], phase: Phase, workspace: Path, policy: Policy,
                rationale: str = "") -> Decision:
    limits = policy.limits
    reasons: list[Rejection] = []
    normalized: list[FileEdit] = []
    if len(files) > limits.max_files:
        reasons.append(_reject("too_many_files", f"at most {limits.max_files} files per reply"))
        files = files[: limits.max_files]
    seen: set[str] = set()
    dirs: set[str] = set()  # every directory the reply's paths go through
    total = 0
    packages = {e.path.rsplit("/", 1)[0] for e in files if e.path.endswith("/__init__.py")}
    for edit in files:
        rel, problem = normalize_path(edit.path, limits)
        if problem is None:
            folded = rel.casefold()
            parents = {folded.rsplit("/", n)[0] for n in range(1, folded.count("/") + 1)}
            if folded in seen:
                problem = _reject("duplicate_path", "the same file appears twice", rel)
            elif folded in dirs or parents & seen:  # `a.py` and `a.py/b.py` in one reply
                problem = _reject("path_conflict", "a file of this reply is a directory of another", rel)
            seen.add(folded)
            dirs |= parents
        if problem is None:
            problem = _symlink_or_special(workspace, rel)
        if problem is None:
            problem = _shadows(policy, rel, workspace, packages)
        if problem is None:
            problem = _phase_rules(policy, phase, rel, os.path.lexists(workspace / rel))
        if problem is None:
            size, problem = _content(edit, rel, limits)
            total += size
        if problem is None and phase == "patch" and policy.screen.enabled:
            found = screen(edit.content)
            if found:
                problem = _reject("hack_suspected", "; ".join(found)[:300], rel)
        if problem is None and phase == "tests" and policy.screen.enabled:  # a generated test: same screen, stricter
            found = screen_tests(edit.content, workspace_modules(workspace))
            if found:
                problem = _reject("hack_suspected", "; ".join(found)[:300], rel)
        if problem is not None:
            reasons.append(problem)
        else:
            normalized.append(FileEdit(path=rel, content=edit.content))
    if total > limits.max_total_bytes:
        reasons.append(_reject("reply_too_large", f"all files together exceed {limits.max_total_bytes} bytes"))
    if reasons:
        return Decision(accepted=False, phase=phase, reasons=reasons[:20], rationale=rationale[:2000])
    return Decision(accepted=True, phase=phase, edits=normalized, rationale=rationale[:2000])
