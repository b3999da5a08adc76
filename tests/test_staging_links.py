"""Host-side staging never follows a link the workspace provides (issue 23, item 3).

``stage_canaries`` used to pick a canary name and check it with ``exists()``, which follows links:
a live link counted as taken, a dangling one as free, and after 50 taken names it wrote to the last
one anyway, as root, through the link. A workspace whose ``tests/`` held a link for every canary name
got a host file truncated and rewritten. Each case here has its positive control: the links do reach
the host file (writing through one changes it), so the staging's refusal is what kept it intact.
"""

import itertools
import os
import random
import threading
from pathlib import Path

import pytest

from orchestrator.sandbox.container import (
    _WORDS,
    SandboxLimits,
    StagingError,
    run_tests,
    stage_canaries,
    stage_workspace,
)
from orchestrator.sandbox.runner.testpaths import configured

ORIGINAL = "ORIGINAL HOST CONTENT\n"
TEST = "from example import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"


def _host_file(tmp_path: Path) -> Path:
    target = tmp_path / "host" / "precious.txt"
    target.parent.mkdir()
    target.write_text(ORIGINAL)
    return target


def _workspace(tmp_path: Path, link_to: Path | None, dangling: Path | None = None) -> Path:
    ws = tmp_path / "ws"
    (ws / "tests").mkdir(parents=True)
    (ws / "example.py").write_text("def add(a, b):\n    return a + b\n")
    (ws / "tests" / "test_example.py").write_text(TEST)
    for a, b in itertools.permutations(_WORDS, 2):  # every name a canary can take: 870 links
        name = ws / "tests" / f"test_{a}_{b}.py"
        if link_to is not None:
            os.symlink(link_to, name)
        else:
            os.symlink(dangling / f"{a}_{b}", name)
    return ws


def test_canaries_never_write_through_a_live_link(tmp_path):
    target = _host_file(tmp_path)
    ws = _workspace(tmp_path, link_to=target)
    stage = tmp_path / "stage"
    stage.mkdir()
    stage_workspace(ws, stage, 1 << 30)
    # Positive control: the staged links reach the host file (writing through one changes it).
    probe = stage / "tests" / "test_parse_value.py"
    assert probe.is_symlink() and probe.resolve() == target.resolve()
    with pytest.raises(StagingError, match="no free name"):
        stage_canaries(stage, random.Random(0))
    assert target.read_text() == ORIGINAL
    probe.write_text("written through the link\n")
    assert target.read_text() != ORIGINAL, "the positive control did not reach the host file"


def test_canaries_never_create_a_file_through_a_dangling_link(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ws = _workspace(tmp_path, link_to=None, dangling=elsewhere)
    stage = tmp_path / "stage"
    stage.mkdir()
    stage_workspace(ws, stage, 1 << 30)
    with pytest.raises(StagingError):
        stage_canaries(stage, random.Random(1))
    assert list(elsewhere.iterdir()) == []
    # Positive control: the old check (exists() follows the link: a dangling one looks free) would write there.
    probe = stage / "tests" / "test_parse_value.py"
    assert not probe.exists()
    probe.write_text("x")
    assert list(elsewhere.iterdir()) == [elsewhere / "parse_value"]


def test_canaries_land_beside_a_few_links(tmp_path):
    """With some names taken by links, the canaries go to free names, as new regular files."""
    target = _host_file(tmp_path)
    ws = tmp_path / "ws"
    (ws / "tests").mkdir(parents=True)
    (ws / "tests" / "test_example.py").write_text(TEST)
    for a, b in list(itertools.permutations(_WORDS, 2))[:400]:
        os.symlink(target, ws / "tests" / f"test_{a}_{b}.py")
    stage = tmp_path / "stage"
    stage.mkdir()
    stage_workspace(ws, stage, 1 << 30)
    canaries = stage_canaries(stage, random.Random(2))
    for node in canaries["pass"] + canaries["xfail"]:
        path = stage / node.split("::")[0]
        assert path.is_file() and not path.is_symlink()
    assert target.read_text() == ORIGINAL


def test_hard_link_fifo_and_links_in_the_workspace(tmp_path):
    target = _host_file(tmp_path)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "test_example.py").write_text(TEST)
    os.link(target, ws / "hard.txt")          # a hard link to the host file
    os.mkfifo(ws / "pipe.py")                 # a FIFO: never opened (it would block)
    os.symlink(target, ws / "soft.txt")
    os.symlink(tmp_path / "nowhere", ws / "dangling.txt")
    stage = tmp_path / "stage"
    stage.mkdir()
    done = threading.Event()

    def go():
        stage_workspace(ws, stage, 1 << 30, overlay={"example.py": "def add(a, b):\n    return a + b\n"})
        done.set()

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(20)
    assert done.is_set(), "staging blocked on the FIFO"
    assert (stage / "hard.txt").read_text() == ORIGINAL
    assert os.stat(stage / "hard.txt").st_ino != os.stat(target).st_ino  # a copy, not the host's inode
    assert not (stage / "pipe.py").exists()
    assert (stage / "soft.txt").is_symlink() and (stage / "dangling.txt").is_symlink()
    # An overlay onto a name the workspace holds as a link is refused, never written through.
    with pytest.raises(StagingError):
        stage2 = tmp_path / "stage2"
        stage2.mkdir()
        stage_workspace(ws, stage2, 1 << 30, overlay={"soft.txt": "overwritten\n"})
    with pytest.raises(StagingError):
        stage3 = tmp_path / "stage3"
        stage3.mkdir()
        stage_workspace(ws, stage3, 1 << 30, overlay={"dangling.txt": "created\n"})
    assert target.read_text() == ORIGINAL and not (tmp_path / "nowhere").exists()


def test_the_hosts_config_read_follows_no_link_and_never_blocks(tmp_path):
    """testpaths (read by the host in the stage, as root): a linked or FIFO pytest.ini is not read."""
    secret = tmp_path / "secret.ini"
    secret.write_text("[pytest]\ntestpaths = leaked\n")
    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink(secret, linked / "pytest.ini")
    assert configured(str(linked)) is None
    (tmp_path / "leaked").mkdir()
    assert configured(str(tmp_path)) is None  # no pytest.ini here: positive control below
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "pytest.ini").write_text(secret.read_text())
    assert configured(str(plain)) == ["leaked"]  # the same text, as a regular file, is read
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "pytest.ini")
    assert configured(str(fifo)) is None


@pytest.mark.docker
def test_a_linked_canary_name_through_the_real_sandbox(tmp_path, docker_client, sandbox_image):
    target = _host_file(tmp_path)
    ws = _workspace(tmp_path, link_to=target)
    result = run_tests(ws, limits=SandboxLimits.load(), client=docker_client)
    assert result.verdict == "error" and any("canary" in r for r in result.reasons), result.reasons
    assert target.read_text() == ORIGINAL


def test_staging_is_bounded_in_entries(tmp_path):
    """A workspace of many tiny files (the red team staged 30,000 empty files under a 1 MiB byte cap) is
    refused by count, not only by bytes: ``max_workspace_files`` (policies/sandbox.toml)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "test_example.py").write_text(TEST)
    for i in range(40):
        (ws / f"f{i}.txt").write_text("")
    ok = tmp_path / "ok"
    ok.mkdir()
    stage_workspace(ws, ok, 1 << 20, max_files=64)  # positive control: under the bound it stages
    assert len(list(ok.iterdir())) == 41
    stage = tmp_path / "stage"
    stage.mkdir()
    with pytest.raises(StagingError, match="more than 16 files"):
        stage_workspace(ws, stage, 1 << 20, max_files=16)
    assert SandboxLimits.load().max_workspace_files == 100_000
