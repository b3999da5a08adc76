"""Reply formats: a code-block reply becomes the protocol's JSON reply for the path the task fixes,
and hostile code-block replies are refused with structured reasons (no Docker, no model)."""

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.protocol import prompts
from orchestrator.store.audit import AuditLog, read_events, verify
from orchestrator.config import ModelSection, RunConfig
from orchestrator.protocol.policy import Policy
from orchestrator.protocol.pipeline import apply_reply, check, reply_digest
from orchestrator.protocol.reply_format import (JSON, ReplyFormat, code_reply_to_json, find_blocks, for_request,
                                       through_first_block,
                                       fresh_test_path, has_closed_block)
from orchestrator.protocol.schema import ReplyError
from orchestrator.protocol.workspace import Workspace

FIX = "def add(a, b):\n    return a + b\n"
CODE = ReplyFormat("code", "example.py")


@pytest.fixture
def policy():
    p = Policy.load()
    p.protected = ["test_example.py"]
    return p


@pytest.fixture
def ws(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "example.py").write_text("def add(a, b):\n    return a - b\n")
    (src / "test_example.py").write_text("from example import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n")
    return Workspace.create(src, tmp_path / "ws")


def convert(text, path="example.py", phase="patch", max_reply=262144, max_file=65536):
    return json.loads(code_reply_to_json(text, path, phase, max_reply, max_file))


def refusal(text, **kw) -> str:
    with pytest.raises(ReplyError) as exc:
        convert(text, **kw)
    [reason] = exc.value.rejections
    assert reason.stage == "extract" and reason.detail
    return reason.code


# --- conversion ---

def test_one_block_becomes_the_json_reply_for_the_fixed_path():
    reply = convert(f"Subtract was wrong.\n```python\n{FIX}```\nThat fixes it.")
    assert reply == {"rationale": "Subtract was wrong. That fixes it.", "edits": [{"path": "example.py",
                                                                                 "content": FIX}]}
    tests = convert("```py\ndef test_x():\n    assert True\n```", path="test_gen_1.py", phase="tests")
    assert list(tests) == ["rationale", "tests"] and tests["tests"][0]["path"] == "test_gen_1.py"
    assert tests["rationale"] == "code block reply"


@pytest.mark.parametrize("text,content", [
    (f"```\n{FIX}```", FIX),
    (f"~~~python\n{FIX}~~~", FIX),
    (f"````python\n{FIX}```\n````", FIX + "```\n"),  # a longer fence holds a ``` line
    (f"```python\r\n{FIX.replace(chr(10), chr(13) + chr(10))}```\r\n", FIX),  # CRLF
    (f"   ```python3 title=x\n{FIX}   ```", FIX),
    ("```python\nx = 1", None),  # (refused: unterminated)
])
def test_fence_variants(text, content):
    if content is None:
        assert refusal(text) == "unterminated_code_block"
    else:
        assert convert(text)["edits"][0]["content"] == content


def test_the_path_never_comes_from_the_reply():
    """Whatever the reply names (a JSON patch, a path comment, a traversal), the file is the task's."""
    hostile = ('{"rationale": "r", "edits": [{"path": "test_example.py", "content": "x = 1"}]}\n'
               "# file: ../../etc/passwd\n```python\n# path: test_example.py\nx = 1\n```")
    assert convert(hostile)["edits"][0]["path"] == "example.py"
    assert refusal('{"rationale": "r", "edits": [{"path": "example.py", "content": "x = 1"}]}') == "no_code_block"


@pytest.mark.parametrize("text,code", [
    ("", "no_code_block"),
    ("def add(a, b):\n    return a + b\n", "no_code_block"),
    ("inline ```python code``` is no block", "no_code_block"),
    (f"```python\n{FIX}```\nand a test:\n```python\nassert add(1, 2) == 3\n```", "multiple_code_blocks"),
    (f"```python\n{FIX}```\n```python\nunterminated", "multiple_code_blocks"),
    (f"```python\n{FIX}", "unterminated_code_block"),
    (f"```python\n{FIX}~~~\n", "unterminated_code_block"),       # a closing fence of the other kind
    (f"````python\n{FIX}```\n", "unterminated_code_block"),      # a shorter closing fence
    ("```json\n{}\n```", "not_python_block"),
    ("```bash\nrm -rf /\n```", "not_python_block"),
    ("```python\n\n   \n```", "empty_code_block"),
    ("```python\n```", "empty_code_block"),
])
def test_refusals_name_their_reason(text, code):
    assert refusal(text) == code


def test_size_limits_are_checked_before_and_after_reading():
    assert refusal("```python\n" + "x = 1\n" * 20 + "```", max_file=64) == "code_block_too_large"
    assert refusal("```python\nx = 1\n```" + " " * 300, max_reply=256) == "too_large"
    assert refusal(("```python\n" + "é" * 200 + "\n```").encode(), max_reply=256) == "too_large"  # bytes > chars
    assert refusal(b"```python\n\xff\n```") == "not_utf8"


def test_pathological_lines_are_linear():
    """Fences with huge runs of spaces or backticks (regex backtracking bait) are scanned quickly."""
    for text in ("```" + " " * 200_000 + "`", "`" * 200_000 + "x`", "~~~" + "\t" * 200_000 + "~",
                 ("```python\n" + "x" * 100 + "\n") * 2000):
        start = time.perf_counter()
        find_blocks(text)
        assert time.perf_counter() - start < 1.0


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("`~ \t\r\npyhon{}x=1\\\"é")), max_size=400))
def test_any_text_converts_or_is_refused_with_a_reason(text):
    try:
        reply = convert(text)
    except ReplyError as exc:
        assert exc.rejections and all(r.stage == "extract" for r in exc.rejections)
        return
    assert reply["edits"][0]["path"] == "example.py" and reply["edits"][0]["content"].strip()
    assert has_closed_block(text)


# --- the protocol, per format ---

def test_code_replies_take_the_same_schema_and_policy_path(ws, policy):
    d = check(f"```python\n{FIX}```", "patch", ws.path, policy, CODE)
    assert d.accepted and [(e.path, e.content) for e in d.edits] == [("example.py", FIX)]
    bad = check("```python\ndef add(a, b)\n    return a + b\n```", "patch", ws.path, policy, CODE)
    assert [(r.stage, r.code) for r in bad.reasons] == [("policy", "syntax_error")]
    protected = check("```python\nx = 1\n```", "patch", ws.path, policy, ReplyFormat("code", "test_example.py"))
    assert [r.code for r in protected.reasons] == ["protected_file"]  # a wrong target is still refused
    assert not check(f"```python\n{FIX}```", "patch", ws.path, policy, JSON).accepted  # json: no JSON object


def test_apply_reply_logs_the_raw_reply_and_its_format(ws, policy, tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    raw = f"Fixed.\n```python\n{FIX}```"
    refused = apply_reply(ws, audit, "```python\nx = (\n```", "patch", policy, iteration=1, fmt=CODE)
    applied = apply_reply(ws, audit, raw, "patch", policy, iteration=1, attempt=1, fmt=CODE)
    assert refused.commit is None and applied.commit == ws.head() and ws.read("example.py") == FIX
    events = read_events(tmp_path / "audit.jsonl")
    assert [(e["reply_format"], e["policy"]) for e in events] == [("code", "rejected"), ("code", "accepted")]
    assert events[1]["reply_sha256"] == reply_digest(raw) == applied.digest and verify(tmp_path / "audit.jsonl").ok


def test_for_request_uses_code_only_for_single_file_requests(tmp_path):
    assert for_request("json", "patch", ["example.py"]) is JSON
    assert for_request("code", "patch", ["example.py"]) == ReplyFormat("code", "example.py")
    assert for_request("code", "patch", ["a.py", "pkg/b.py"]) is JSON  # several files: the JSON protocol
    (tmp_path / "test_gen_1.py").write_text("")
    assert for_request("code", "tests", ["a.py", "b.py"], tmp_path) == ReplyFormat("code", "test_gen_2.py")
    assert fresh_test_path(None) == "test_gen_1.py"
    with pytest.raises(ValueError):
        for_request("yaml", "patch", ["a.py"])
    with pytest.raises(ValueError):
        ReplyFormat("code")


def test_prompts_per_format(ws):
    code = prompts.patch_messages(ws.path, ["example.py"], ["test_example.py"], None, CODE)
    plain = prompts.patch_messages(ws.path, ["example.py"], ["test_example.py"], None)
    assert code[0]["content"] == prompts.SYSTEM_CODE and plain[0]["content"] == prompts.SYSTEM
    assert "whole new content of example.py in one ```python code block" in code[1]["content"]
    assert "Reply format:" in plain[1]["content"] and "Reply format:" not in code[1]["content"]
    assert code[1]["content"].startswith(plain[1]["content"].split("Fix the source")[0])  # same context
    tests = prompts.tests_messages(ws.path, ["example.py"], ["test_example.py"], ReplyFormat("code", "test_gen_1.py"))
    assert "test_gen_1.py" in tests[1]["content"] and "```python" in tests[1]["content"]
    retry = prompts.retry_messages(code, "no block", "- extract/no_code_block: ...", CODE)
    assert retry[-1]["content"].endswith("in one ```python code block.") and retry[-2]["role"] == "assistant"


def test_config_picks_each_models_format(monkeypatch):
    m = ModelSection(reply_formats={"Qwen2.5-Coder-0.5B-Instruct": "code"})
    assert m.format_for("Qwen2.5-Coder-0.5B-Instruct") == "code"
    assert m.format_for("vllm/Qwen2.5-Coder-0.5B-Instruct") == "code"  # the vllm backend's id
    assert m.format_for("default") == "json"
    assert ModelSection(reply_format="json", reply_formats=m.reply_formats).format_for(
        "Qwen2.5-Coder-0.5B-Instruct") == "json"
    cfg = RunConfig.load()
    assert cfg.model.reply_format in ("auto", "json", "code")
    assert set(cfg.model.reply_formats.values()) <= {"json", "code"}


def test_make_backend_sets_the_models_format(tmp_path):
    from orchestrator.models.backends import make_backend

    replies = tmp_path / "r.jsonl"
    replies.write_text(json.dumps({"phase": "patch", "reply": f"```python\n{FIX}```"}) + "\n")
    cfg = RunConfig.load()
    cfg.model.reply_format = "code"
    backend = make_backend("replay", cfg, replies)
    assert backend.reply_format == "code"
    fmt = for_request(backend.reply_format, "patch", ["example.py"])
    reply = backend.generate([], "patch", fmt=fmt)
    assert convert(reply)["edits"][0]["content"] == FIX


# --- a server's code-format reply is cut where the local backend stops decoding ---

@pytest.mark.parametrize("text,kept", [
    (f"Here:\n```python\n{FIX}```\nand a test:\n```python\nassert add(1, 2) == 3\n```\n", f"Here:\n```python\n{FIX}```"),
    (f"```python\n{FIX}```\nThis fixes the bug.", f"```python\n{FIX}```"),
    (f"```python\n{FIX}", f"```python\n{FIX}"),             # unterminated: unchanged, still refused
    ("no block at all", "no block at all"),
])
def test_through_first_block(text, kept):
    assert through_first_block(text) == kept


def test_a_cut_reply_is_accepted_and_an_unterminated_one_still_refused():
    two = f"```python\n{FIX}```\nand a test:\n```python\nassert add(1, 2) == 3\n```"
    assert refusal(two) == "multiple_code_blocks"
    assert convert(through_first_block(two))["edits"][0]["content"] == FIX
    assert refusal(through_first_block(f"```python\n{FIX}")) == "unterminated_code_block"
