"""Property-based fuzzing of hostile replies (13,300 generated cases in all).

Properties: check_reply never raises; every rejection is structured; an accepted edit
always satisfies an independent oracle of the allowlist; applying never writes
anything but the accepted files.
"""

import fnmatch
import json
import os
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from orchestrator.protocol.policy import Policy, check_reply
from orchestrator.protocol.schema import Rejection

POLICY = Policy.load()
SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

COMPONENTS = ["..", ".", "", ".git", "tests", "test", "conftest.py", "test_x.py", "x_test.py", "ok.py",
              "pkg", "a", "\x00", "\u202e", "\u200b", "C:", "c:", "/", "é.py", "link", "fifo.py",
              "example.py", "test_example.py", "test_gen_new.py", "sitecustomize.py", "x.pth", "setup.py",
              "__init__.py", "pytest.ini", "a b.py", "\n", "\\", "~", "$HOME", "%2e%2e", ".hidden", "x" * 90]
PLAUSIBLE = ["ok.py", "pkg", "a", "newpkg", "mod.py", "test_gen_new.py", "test_gen_a.py", "example.py", "sub",
             "test_gen_old.py", "tests", "link", "__init__.py"]
PATHS = st.one_of(
    st.lists(st.sampled_from(PLAUSIBLE), min_size=1, max_size=3).map("/".join),
    st.text(max_size=40),
    st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=8).map("/".join),
    st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=4).map("\\".join),
    st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=4).map(lambda p: "/" + "/".join(p)),
)
CONTENTS = st.one_of(
    st.just("x = 1\n"), st.just("def test_x():\n    assert 1\n"), st.text(max_size=200), st.sampled_from(["\ud800", "a\x00b", "def f(:\n", "é = 1\n"]),
    st.integers(0, 3).map(lambda k: "x = 1\n" * (10 ** k * 20)),
)
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
JSON_ANY = st.recursive(JSON_LEAF, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                        max_size=4), max_leaves=20)


def make_ws(root: Path) -> Path:
    ws = root / "ws"
    if not ws.exists():
        (ws / "pkg").mkdir(parents=True)
        (ws / "example.py").write_text("x = 0\n")
        (ws / "test_example.py").write_text("def test_a():\n    pass\n")
        (ws / "test_gen_old.py").write_text("def test_b():\n    pass\n")
        os.mkfifo(ws / "fifo.py")
        (root / "outside").mkdir()
        os.symlink(root / "outside", ws / "link")
    return ws


def oracle_allows(ws: Path, phase: str, path: str) -> bool:
    """An independent, deliberately simple statement of the allowlist."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    parts = path.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return False
    if not all(ch.isascii() and (ch.isalnum() or ch in "_.-") for ch in path.replace("/", "")):
        return False
    real = os.path.realpath(ws / path)
    if not real.startswith(str(ws.resolve()) + os.sep):
        return False
    cur = ws
    for i, p in enumerate(parts):
        cur = cur / p
        if cur.is_symlink():
            return False
        if os.path.lexists(cur) and not (cur.is_file() if i == len(parts) - 1 else cur.is_dir()):
            return False
    name = parts[-1]
    if phase == "tests":
        return fnmatch.fnmatchcase(name, "test_gen_*.py") and not os.path.lexists(ws / path)
    forbidden = ("test_*.py", "*_test.py", "conftest.py", "sitecustomize.py", "usercustomize.py", "*.pth", "setup.py")
    return (name.endswith(".py") and not any(fnmatch.fnmatchcase(name, g) for g in forbidden)
            and not any(p in ("tests", "test") for p in parts[:-1]))


def assert_sound(decision, ws, phase):
    event("accepted" if decision.accepted else "rejected")
    if decision.accepted:
        assert decision.edits and not decision.reasons
        for e in decision.edits:
            assert oracle_allows(ws, phase, e.path), e.path
            assert len(e.content.encode("utf-8")) <= POLICY.limits.max_file_bytes
    else:
        assert decision.reasons and all(isinstance(r, Rejection) for r in decision.reasons)
        assert all(r.stage in ("extract", "schema", "policy") and len(str(r)) < 400 for r in decision.reasons)


def reply_json(phase, files, rationale="r"):
    key = "edits" if phase == "patch" else "tests"
    return json.dumps({"rationale": rationale, key: [{"path": p, "content": c} for p, c in files]})


WRAPS = st.sampled_from(["{}", "```json\n{}\n```", "Here:\n{}\nthanks", "{}{}", "```\n{}", "{}\n```"])


@settings(max_examples=6000, **SETTINGS)
@given(phase=st.sampled_from(["patch", "tests"]),
       files=st.lists(st.tuples(PATHS, CONTENTS), min_size=1, max_size=3) | st.lists(
           st.tuples(PATHS, CONTENTS), min_size=1, max_size=10), wrap=WRAPS)
def test_fuzz_paths_and_sizes(tmp_path_factory, phase, files, wrap):
    ws = make_ws(tmp_path_factory.getbasetemp() / "fuzz1")
    text = wrap.replace("{}", reply_json(phase, files), 1).replace("{}", "{", 1)
    assert_sound(check_reply(text, phase, ws, POLICY), ws, phase)


@settings(max_examples=4000, **SETTINGS)
@given(phase=st.sampled_from(["patch", "tests"]), obj=JSON_ANY,
       extra=st.dictionaries(st.sampled_from(["rationale", "edits", "tests", "path", "content", "x"]), JSON_ANY,
                             max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 200)))
def test_fuzz_json_shapes(tmp_path_factory, phase, obj, extra, cut):
    ws = make_ws(tmp_path_factory.getbasetemp() / "fuzz2")
    text = json.dumps(extra or obj)
    if cut is not None:
        text = text[:cut]
    assert_sound(check_reply(text, phase, ws, POLICY), ws, phase)


@settings(max_examples=2000, **SETTINGS)
@given(phase=st.sampled_from(["patch", "tests"]), raw=st.binary(max_size=300),
       prefix=st.sampled_from([b"", b'{"rationale": "', b"\xef\xbb\xbf", b"\xff\xfe"]))
def test_fuzz_encodings(tmp_path_factory, phase, raw, prefix):
    ws = make_ws(tmp_path_factory.getbasetemp() / "fuzz3")
    assert_sound(check_reply(prefix + raw, phase, ws, POLICY), ws, phase)


def snapshot(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames + dirnames:
            p = Path(dirpath) / name
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            elif p.is_file():
                out[str(p)] = ("file", p.read_bytes())
            elif p.is_dir():
                out[str(p)] = ("dir", None)
            else:
                out[str(p)] = ("other", None)
    return out


@settings(max_examples=300, **SETTINGS)
@given(phase=st.sampled_from(["patch", "tests"]),
       files=st.lists(st.tuples(PATHS, st.just("y = 2\n")), min_size=1, max_size=4))
def test_fuzz_apply_writes_only_accepted_files(tmp_path_factory, phase, files):
    from orchestrator.protocol.pipeline import apply_reply
    from orchestrator.protocol.workspace import Workspace

    root = tmp_path_factory.mktemp("apply")
    ws_dir = make_ws(root)
    ws = Workspace.open_or_init(ws_dir)
    before = snapshot(root)
    result = apply_reply(ws, None, reply_json(phase, files), phase, POLICY)
    after = snapshot(root)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    allowed = {str(ws_dir / e.path) for e in result.decision.edits}
    allowed |= {str(p) for e in result.decision.edits for p in (ws_dir / e.path).parents
                if str(p).startswith(str(ws_dir) + "/")}
    assert changed <= allowed, changed - allowed
    if not result.decision.accepted:
        assert not changed


@settings(max_examples=1000, **SETTINGS)
@given(phase=st.sampled_from(["patch", "tests"]),
       path=st.lists(st.sampled_from(PLAUSIBLE), min_size=1, max_size=3).map("/".join))
def test_fuzz_plausible_paths_against_oracle(tmp_path_factory, phase, path):
    """Near-miss paths, where the allowlist's edges are: the oracle and the policy must agree."""
    ws = make_ws(tmp_path_factory.getbasetemp() / "fuzz4")
    content = "def test_x():\n    assert 1\n"
    decision = check_reply(reply_json(phase, [(path, content)]), phase, ws, POLICY)
    assert_sound(decision, ws, phase)
    assert decision.accepted == oracle_allows(ws, phase, path), (path, decision.reasons)
