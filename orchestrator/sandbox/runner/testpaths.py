"""The project's ``testpaths``: where pytest collects when it is given no path. Pure, stdlib only.

pytest reads ``testpaths`` from the first configuration file of the rootdir that holds a pytest
section: ``pytest.ini`` / ``.pytest.ini`` (``[pytest]``, used even when empty), ``pyproject.toml``
(``[tool.pytest.ini_options]``), ``tox.ini`` (``[pytest]``), ``setup.cfg`` (``[tool:pytest]``).
Entries are paths relative to the rootdir and may be glob patterns. A project that keeps code
outside them that is not meant to be collected (attrs: benchmarks that need a plugin) fails when
the whole directory is collected, so the sandbox runs pytest on these paths, and everything that
must agree with what pytest collects uses the same answer: the supervisor's expected-test scan and
the pooled zygote in the container, the host's canary staging and the judge's visible files.

Runs as root in the container on files a model may have written (in rsi-lab's own runs the
configuration files are protected by the patch policy; standalone, the project is the user's own):
each file is read with a size bound, every parse error means "no testpaths" (pytest reports a
broken configuration itself), and a path is kept only when it stays inside the root without
following a symlink out of it.
"""

from __future__ import annotations

import configparser
import fnmatch
import glob
import os
import stat
import tomllib

MAX_CONFIG_BYTES = 256 * 1024
MAX_PATHS = 64  # more testpaths than this (entries or glob matches): the whole root, never a cut list
_INI = (("pytest.ini", "pytest"), (".pytest.ini", "pytest"), ("pyproject.toml", None), ("tox.ini", "pytest"),
        ("setup.cfg", "tool:pytest"))


def _read(path: str) -> str | None:
    """A regular file's text, read without following a link or blocking on a FIFO (the host reads
    these in a staged workspace as root): None for anything else or anything too large."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_CONFIG_BYTES:
            return None
        data = b""
        while len(data) <= MAX_CONFIG_BYTES and (chunk := os.read(fd, MAX_CONFIG_BYTES + 1 - len(data))):
            data += chunk
        return None if len(data) > MAX_CONFIG_BYTES else data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)


def configured(root: str) -> list[str] | None:
    """The raw ``testpaths`` entries of the configuration pytest would use in ``root``; None when
    that file sets none (or cannot be read: pytest then decides and reports)."""
    for name, section in _INI:
        text = _read(os.path.join(root, name))
        if text is None:
            continue
        try:
            if section is None:  # pyproject.toml counts only with a [tool.pytest.ini_options] table
                options = tomllib.loads(text).get("tool", {}).get("pytest", {}).get("ini_options")
                if not isinstance(options, dict):
                    continue
                value = options.get("testpaths")
                if isinstance(value, str):
                    value = value.split()
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    return None
                return value or None
            parser = configparser.ConfigParser(interpolation=None, strict=False)
            parser.read_string(text)
        except (tomllib.TOMLDecodeError, configparser.Error, AttributeError, RecursionError, ValueError):
            return None
        if not parser.has_section(section):
            if name in ("pytest.ini", ".pytest.ini"):
                return None  # pytest.ini is the config file even without the section
            continue
        value = parser.get(section, "testpaths", fallback="").split()
        return value or None
    return None


def _inside(root: str, path: str) -> bool:
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root + os.sep)


MAX_VISITED = 200_000  # entries a glob may look at; past that, the whole root


def _glob(root: str, entry: str) -> list[str] | None:
    """``glob.glob(root/entry, recursive=True)`` without following a link (``**`` in ``glob`` descends
    into symlinked directories: two links to ``.`` make it walk 2**40 paths) and with a bound on the
    entries visited (None past MAX_VISITED). Same rules otherwise: ``*`` and ``?`` stay within one
    name, ``**`` is any number of directories, a wildcard does not match a name starting with ``.``
    unless the pattern's segment starts with one."""
    parts = [p for p in entry.replace(os.sep, "/").split("/") if p not in ("", ".")]
    found: list[str] = [os.path.join(root, "")] if _match(parts, []) else []  # "**" matches the root too
    visited = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        base = [] if rel_dir == "." else rel_dir.split(os.sep)
        for name in dirnames + filenames:
            visited += 1
            if visited > MAX_VISITED:
                return None
            if _match(parts, base + [name]):
                found.append(os.path.join(dirpath, name))
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return sorted(found)


def _match(pattern: list[str], path: list[str]) -> bool:
    if not pattern:
        return not path
    head = pattern[0]
    if head == "**":
        return any(_match(pattern[1:], path[i:]) for i in range(len(path) + 1)
                   if all(not p.startswith(".") for p in path[:i]))
    if not path:
        return False
    name = path[0]
    if name.startswith(".") and not head.startswith(".") and glob.has_magic(head):
        return False
    return fnmatch.fnmatchcase(name, head) and _match(pattern[1:], path[1:])


def resolve(root: str) -> list[str]:
    """The existing paths (relative to ``root``, sorted, ``/``-separated) that pytest collects
    when run with no path argument in ``root``; ``[]`` means the whole root (no testpaths, or
    none of them matches anything, where pytest too falls back to the directory)."""
    entries = configured(root)
    if not entries:
        return []
    found: set[str] = set()
    for entry in entries:
        if not entry or os.path.isabs(entry) or "\0" in entry:
            continue
        pattern = os.path.join(root, entry)
        if glob.has_magic(entry):
            matches = _glob(root, entry)
            if matches is None:
                return []  # too large a tree to match within bounds: the whole root (a superset)
        else:
            matches = [pattern]
        if len(matches) > MAX_PATHS:
            # Never a cut list: a patch may add directories a glob matches, and a cut would drop
            # real test directories from the run and the judge. The whole root is a superset.
            return []
        for match in matches:
            if not os.path.exists(match) or os.path.islink(match) or not _inside(root, match):
                continue
            rel = os.path.normpath(os.path.relpath(match, root)).replace(os.sep, "/")
            if rel == ".":
                return []  # the root itself: everything, as without testpaths
            if not rel.startswith("../"):
                found.add(rel)
    return sorted(found) if len(found) <= MAX_PATHS else []


def within(rel: str, paths: list[str]) -> bool:
    """Whether the root-relative file ``rel`` lies in one of ``paths`` (all of them when empty)."""
    if not paths:
        return True
    return any(rel == p or rel.startswith(p.rstrip("/") + "/") for p in paths)
