"""A git-tracked working copy that model edits are applied to, one commit per accepted reply.

The caller's directory is copied in (regular files and directories only: symlinks and
special files are not carried over), never modified. Writes are atomic (temp file in
the same directory, fsync, rename, fsync of the directory). Any earlier commit can be
restored. Protected files are hashed at the start and verified before each sandbox run.
Git is dulwich (pure Python), so no git binary is needed.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from dulwich import porcelain
from dulwich.repo import Repo

from orchestrator.protocol.schema import FileEdit

AUTHOR = b"rsi-lab <rsi-lab@localhost>"
SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".venv", ".mypy_cache", ".hypothesis"}


class ProtectedFileChanged(RuntimeError):
    """A protected file differs from its hash taken at the start of the run."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def copy_source(src: Path, dst: Path) -> list[str]:
    """Copy regular files and directories from src into dst; returns the relative paths copied."""
    copied = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS
                             and not os.path.islink(os.path.join(dirpath, d)))
        rel_dir = Path(dirpath).relative_to(src)
        (dst / rel_dir).mkdir(parents=True, exist_ok=True)
        for name in sorted(filenames):
            source = Path(dirpath) / name
            st = os.lstat(source)
            if not stat.S_ISREG(st.st_mode):
                continue
            shutil.copyfile(source, dst / rel_dir / name, follow_symlinks=False)
            copied.append(str(rel_dir / name).removeprefix("./"))
    return copied


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Workspace:
    def __init__(self, path: Path | str):
        self.path = Path(path).resolve()
        self.repo = Repo(str(self.path))

    @classmethod
    def create(cls, source: Path | str, dest: Path | str) -> "Workspace":
        """Copy ``source`` into a new git repository at ``dest`` and commit it."""
        source, dest = Path(source).resolve(), Path(dest)
        if dest.exists() and any(dest.iterdir()):
            raise FileExistsError(f"{dest} exists and is not empty")
        dest.mkdir(parents=True, exist_ok=True)
        copy_source(source, dest)
        porcelain.init(str(dest))
        ws = cls(dest)
        ws._commit_all("initial: copied from source")
        return ws

    @classmethod
    def open_or_init(cls, path: Path | str) -> "Workspace":
        path = Path(path)
        if not (path / ".git").is_dir():
            porcelain.init(str(path))
            ws = cls(path)
            ws._commit_all("initial: existing directory")
            return ws
        return cls(path)

    def _tracked_files(self) -> list[str]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
            for name in filenames:
                p = Path(dirpath) / name
                if p.is_file() and not p.is_symlink():
                    out.append(str(p.relative_to(self.path)))
        return sorted(out)

    def _commit_all(self, message: str) -> str:
        porcelain.add(self.repo, [str(self.path / p) for p in self._tracked_files()])
        sha = porcelain.commit(self.repo, message=message.encode(), author=AUTHOR, committer=AUTHOR)
        return sha.decode()

    def head(self) -> str:
        return self.repo.head().decode()

    def read(self, rel: str) -> str | None:
        p = self.path / rel
        return p.read_text(encoding="utf-8", errors="replace") if p.is_file() else None

    def diff(self, edits: list[FileEdit]) -> dict[str, str]:
        """Unified diff per file of what ``edits`` would change."""
        out = {}
        for e in edits:
            old = self.read(e.path) or ""
            out[e.path] = "".join(difflib.unified_diff(
                old.splitlines(keepends=True), e.content.splitlines(keepends=True),
                fromfile=f"a/{e.path}", tofile=f"b/{e.path}"))
        return out

    def apply(self, edits: list[FileEdit], message: str) -> str:
        """Write the (already policy-checked) edits atomically and commit them."""
        for e in edits:
            atomic_write(self.path / e.path, e.content.encode("utf-8"))
        porcelain.add(self.repo, [str(self.path / e.path) for e in edits])
        sha = porcelain.commit(self.repo, message=message.encode(), author=AUTHOR, committer=AUTHOR)
        return sha.decode()

    def restore(self, commit: str) -> None:
        """Put the working tree back to ``commit`` (files added since are removed)."""
        before = set(self._tracked_files())
        porcelain.reset(self.repo, "hard", commit.encode())
        tree = self.repo[self.repo[commit.encode()].tree]
        wanted = {p.decode() for p, _, _ in self._walk_tree(tree)}
        for rel in before - wanted:
            (self.path / rel).unlink(missing_ok=True)

    def _walk_tree(self, tree, prefix=b""):
        for entry in tree.items():
            path = prefix + entry.path
            obj = self.repo[entry.sha]
            if obj.type_name == b"tree":
                yield from self._walk_tree(obj, path + b"/")
            else:
                yield path, entry.mode, entry.sha

    def hash_files(self, paths: list[str]) -> dict[str, str]:
        return {p: sha256_file(self.path / p) for p in paths if (self.path / p).is_file()}

    def verify_protected(self, manifest: dict[str, str]) -> None:
        for rel, digest in manifest.items():
            p = self.path / rel
            if p.is_symlink() or not p.is_file():
                raise ProtectedFileChanged(f"protected file {rel} is missing")
            if sha256_file(p) != digest:
                raise ProtectedFileChanged(f"protected file {rel} changed since the run started")
