"""Git-tracked workspace: copy-in, atomic commits, restore, protected files, CLI apply."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.store.audit import read_events, verify
from orchestrator.protocol.policy import Policy
from orchestrator.protocol.pipeline import apply_reply
from orchestrator.protocol.schema import FileEdit
from orchestrator.protocol.workspace import ProtectedFileChanged, Workspace, atomic_write

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "seeds" / "example"


def tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_create_copies_and_never_touches_source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("x = 1\n")
    os.symlink("/etc/passwd", src / "leak.py")
    os.mkfifo(src / "pipe")
    before = {p.name: (p.is_symlink(), p.read_bytes() if p.is_file() and not p.is_symlink() else None)
              for p in src.iterdir()}
    ws = Workspace.create(src, tmp_path / "ws")
    assert (ws.path / "a.py").read_text() == "x = 1\n"
    assert not (ws.path / "leak.py").exists() and not (ws.path / "pipe").exists()
    ws.apply([FileEdit(path="a.py", content="x = 2\n")], "change")
    after = {p.name: (p.is_symlink(), p.read_bytes() if p.is_file() and not p.is_symlink() else None)
             for p in src.iterdir()}
    assert before == after


def test_each_apply_is_a_commit_and_restore_goes_back(tmp_path):
    ws = Workspace.create(SEED, tmp_path / "ws")
    first = ws.head()
    original = tree(ws.path)
    c1 = ws.apply([FileEdit(path="example.py", content="def add(a, b):\n    return a + b\n"),
                   FileEdit(path="newpkg/util.py", content="y = 1\n")], "iteration 1 patch")
    assert c1 != first and ws.head() == c1
    assert (ws.path / "newpkg" / "util.py").exists()
    ws.restore(first)
    assert tree(ws.path) == {k: v for k, v in original.items() if not k.startswith(".git")} | {
        k: v for k, v in tree(ws.path).items() if k.startswith(".git")}
    assert not (ws.path / "newpkg" / "util.py").exists()
    ws.restore(c1)
    assert "a + b" in (ws.path / "example.py").read_text()


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write(tmp_path / "d" / "f.py", b"x = 1\n")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["f.py"]


def test_protected_files_verified(tmp_path):
    ws = Workspace.create(SEED, tmp_path / "ws")
    manifest = ws.hash_files(["test_example.py"])
    ws.verify_protected(manifest)
    (ws.path / "test_example.py").write_text("def test_add():\n    pass\n")
    with pytest.raises(ProtectedFileChanged, match="test_example.py"):
        ws.verify_protected(manifest)
    (ws.path / "test_example.py").unlink()
    with pytest.raises(ProtectedFileChanged, match="missing"):
        ws.verify_protected(manifest)


def test_apply_reply_logs_and_commits(tmp_path):
    from orchestrator.store.audit import AuditLog

    ws = Workspace.create(SEED, tmp_path / "ws")
    audit = AuditLog(tmp_path / "audit.jsonl")
    good = json.dumps({"rationale": "fix", "edits": [{"path": "example.py", "content": "def add(a, b):\n"
                                                                                       "    return a + b\n"}]})
    bad = json.dumps({"rationale": "cheat", "edits": [{"path": "test_example.py", "content": "x = 1\n"}]})
    r1 = apply_reply(ws, audit, bad, "patch", Policy.load(), iteration=1)
    r2 = apply_reply(ws, audit, good, "patch", Policy.load(), iteration=1, attempt=1)
    assert r1.commit is None and r2.commit == ws.head()
    events = read_events(tmp_path / "audit.jsonl")
    assert [e["policy"] for e in events] == ["rejected", "accepted"]
    assert events[0]["reasons"][0]["code"] == "forbidden_file"
    assert "+    return a + b" in events[1]["diffs"]["example.py"] and events[1]["commit"] == r2.commit
    assert verify(tmp_path / "audit.jsonl").ok


def test_cli_patch_check_and_apply(tmp_path):
    ws = tmp_path / "run" / "workspace"
    Workspace.create(SEED, ws)
    reply = tmp_path / "reply.txt"
    reply.write_text("Fixed:\n```json\n" + json.dumps(
        {"rationale": "fix", "edits": [{"path": "example.py", "content": "def add(a, b):\n    return a + b\n"}]})
        + "\n```\n")
    rsi = [sys.executable, "-m", "orchestrator.cli", "patch"]
    out = subprocess.run(rsi + ["check", str(ws), str(reply), "--phase", "patch", "--json"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and json.loads(out.stdout)["edits"][0]["path"] == "example.py"
    assert "a - b" in (ws / "example.py").read_text()  # check writes nothing
    out = subprocess.run(rsi + ["check", str(ws), str(reply), "--phase", "tests"], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 1 and "REJECTED" in out.stdout
    out = subprocess.run(rsi + ["apply", str(ws), str(reply), "--phase", "patch"], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0 and "a + b" in (ws / "example.py").read_text()
    assert verify(tmp_path / "run" / "audit.jsonl").ok
    reply.write_bytes(b"\xff\xfe not utf8")
    out = subprocess.run(rsi + ["apply", str(ws), str(reply), "--phase", "patch"], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 1 and "not_utf8" in out.stdout
