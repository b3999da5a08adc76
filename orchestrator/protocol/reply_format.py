"""Reply formats: how a model is asked for a change, and how its answer becomes the protocol's reply.

The JSON patch protocol is the contract: whatever reaches a workspace is a ``PatchReply`` or
``TestsReply`` validated by schema.py and checked by policy.py. A model may *answer* in one of two
formats:

- ``json``: the reply is that JSON object (schema.extract_object finds it, also in prose or a fence).
- ``code`` with a ``symbol`` (a bug-fix task on a real project, whose files are far longer than a
  model can rewrite): the block is the whole new definition of that one top-level function of the
  file; ``splice_function`` puts it in place of the old one, and the whole file then takes the
  same path (schema, policy) as any edit. The block must parse to exactly that one function (imports
  allowed beside it).
- ``code``: for a request that writes one file, the whole new file in one fenced code block. The
  block becomes the JSON reply ``{"rationale": <the prose around it>, "edits"|"tests": [{"path":
  <target>, "content": <the block>}]}``, which then goes through the same extraction, schema and
  policy as any JSON reply. The path is fixed by the task (the workspace's one source file in the
  patch phase; a fresh ``test_gen_<n>.py`` in the tests phase), never read from the reply.

A code reply is untrusted text: its size is bounded before it is read (one linear pass over its
lines), and zero or several code blocks, an unterminated fence, a block in another language, an
empty block or one over the policy's file limit are refused with a structured reason (stage
``extract``) that is fed back to the model like any other.

Which format a model gets: ``[model] reply_format`` in policies/run.toml (``auto``: the model's
measured default in ``[model.reply_formats]``, else ``json``); ``code`` applies only where the
request writes one file (``for_request``), every other request is asked in ``json``.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from orchestrator.protocol.schema import Phase, Rejection, ReplyError, decode_bytes

FormatName = Literal["json", "code"]
FORMATS: tuple[str, ...] = ("json", "code")
PYTHON_TAGS = {"", "python", "py", "python3", "py3"}
RATIONALE_CHARS = 240  # prose kept from around the block as the reply's rationale
# A fence line: up to 3 spaces, 3+ backticks or tildes, an optional info string without backticks
# (so inline ```code``` is no fence). A closing fence is the same character, at least as long, and
# nothing else. The info string starts with a non-space, so no line makes the patterns backtrack
# more than linearly.
_OPEN = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s][^`]*)?$")
_CLOSE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})[ \t]*$")


@dataclass(frozen=True)
class ReplyFormat:
    """The format of one request: ``json``, or ``code`` with the one file the reply writes."""

    name: FormatName = "json"
    path: str | None = None
    symbol: str | None = None  # code: the block is this top-level function of ``path``, not the whole file

    def __post_init__(self):
        if self.name not in FORMATS:
            raise ValueError(f"unknown reply format {self.name!r} ({', '.join(FORMATS)})")
        if self.name == "code" and not self.path:
            raise ValueError("a code reply format needs the path it writes")
        if self.symbol is not None and (self.name != "code" or not self.symbol.isidentifier()):
            raise ValueError("a function reply is a code reply naming one function")


JSON = ReplyFormat()


def for_request(preferred: str, phase: Phase, sources: list[str], workspace: Path | None = None) -> ReplyFormat:
    """The format of one request for a model that prefers ``preferred``: ``code`` only when the
    request writes one file (patch: the workspace has exactly one source file; tests: a new
    ``test_gen_<n>.py``), else ``json``."""
    if preferred not in FORMATS:
        raise ValueError(f"unknown reply format {preferred!r} ({', '.join(FORMATS)})")
    if preferred != "code":
        return JSON
    if phase == "patch":
        return ReplyFormat("code", sources[0]) if len(sources) == 1 else JSON
    return ReplyFormat("code", fresh_test_path(workspace))


def fresh_test_path(workspace: Path | None) -> str:
    """The first ``test_gen_<n>.py`` that does not exist at the workspace's top level."""
    from orchestrator.protocol.policy import generated_test_prefix

    prefix = generated_test_prefix()
    n = 1
    while workspace is not None and (Path(workspace) / f"{prefix}{n}.py").exists():
        n += 1
    return f"{prefix}{n}.py"


@dataclass
class _Block:
    info: str   # the opening fence's info string ("python", "")
    start: int  # line index of the opening fence
    end: int    # line index of the closing fence


def find_blocks(text: str) -> tuple[list[str], list[_Block], bool]:
    """(lines, closed fenced blocks, whether a fence is left open at the end). Lines are split on
    ``\n`` only (``str.splitlines`` would also split inside the code on form feeds and the like),
    with a trailing ``\r`` dropped."""
    lines = [raw[:-1] if raw.endswith("\r") else raw for raw in text.split("\n")]
    blocks: list[_Block] = []
    opened: tuple[str, str, int] | None = None  # (fence, info, line)
    for i, line in enumerate(lines):
        if opened is None:
            m = _OPEN.match(line)
            if m:
                opened = (m["fence"], (m["info"] or "").strip(), i)
            continue
        m = _CLOSE.match(line)
        if m and m["fence"][0] == opened[0][0] and len(m["fence"]) >= len(opened[0]):
            blocks.append(_Block(opened[1], opened[2], i))
            opened = None
    return lines, blocks, opened is not None


def has_closed_block(text: str) -> bool:
    """Whether ``text`` holds at least one complete fenced block (a generation can stop there)."""
    return bool(find_blocks(text)[1])


def through_first_block(text: str) -> str:
    """``text`` up to the end of its first complete fenced block (what a generation stopped there
    would have written; the local backend stops decoding at that point, a server's reply is cut the
    same way). Text without a closed block comes back unchanged, so an unterminated or missing block
    is still refused by ``code_reply_to_json``."""
    lines, blocks, _ = find_blocks(text)
    if not blocks:
        return text
    return "\n".join(text.split("\n")[:blocks[0].end + 1])


def _extract(code: str, detail: str) -> ReplyError:
    return ReplyError([Rejection(stage="extract", code=code, detail=detail)])


def code_reply_to_json(reply: str | bytes, path: str, phase: Phase, max_reply_bytes: int,
                       max_file_bytes: int) -> str:
    """The protocol reply (JSON text) for a reply that holds the whole file ``path`` in one fenced
    code block; ReplyError with one structured reason otherwise."""
    if isinstance(reply, bytes):
        if len(reply) > max_reply_bytes:
            raise _extract("too_large", f"reply is larger than {max_reply_bytes} bytes")
        reply = decode_bytes(reply)
    if not isinstance(reply, str):
        raise _extract("not_text", "reply is not text")
    if len(reply) > max_reply_bytes or len(reply.encode("utf-8", "surrogatepass")) > max_reply_bytes:
        raise _extract("too_large", f"reply is larger than {max_reply_bytes} bytes")
    lines, blocks, unterminated = find_blocks(reply)
    count = len(blocks) + unterminated
    if count > 1:
        raise _extract("multiple_code_blocks", f"the reply has {count} code blocks; reply with the whole file "
                                               "in exactly one ```python code block")
    if unterminated:
        raise _extract("unterminated_code_block", "the code block is never closed with ``` (cut off?); "
                                                  "keep the file shorter")
    if not blocks:
        raise _extract("no_code_block", "no fenced code block found; reply with the whole file in one "
                                        "```python code block")
    block = blocks[0]
    tag = block.info.split()[0].lower() if block.info.split() else ""
    if tag not in PYTHON_TAGS:
        raise _extract("not_python_block", f"the code block is marked {tag[:20]!r}; reply with a ```python block")
    content = "\n".join(lines[block.start + 1:block.end])
    if len(content) > max_file_bytes or len(content.encode("utf-8", "surrogatepass")) > max_file_bytes:
        raise _extract("code_block_too_large", f"the code block is larger than {max_file_bytes} bytes")
    if not content.strip():
        raise _extract("empty_code_block", "the code block is empty; reply with the whole file")
    prose = " ".join(lines[:block.start] + lines[block.end + 1:])
    rationale = " ".join(prose.split())[:RATIONALE_CHARS] or "code block reply"
    key = "edits" if phase == "patch" else "tests"
    return json.dumps({"rationale": rationale, key: [{"path": path, "content": content.rstrip("\n") + "\n"}]})



def _function_span(tree: ast.Module, symbol: str) -> tuple[int, int] | None:
    """(first line, last line), 1-based, of the top-level function ``symbol`` with its decorators."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == symbol:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            return first, node.end_lineno
    return None


def splice_function(current: str, symbol: str, new_def: str) -> str:
    """``current`` with its top-level function ``symbol`` replaced by ``new_def``, verbatim. ``new_def``
    must parse to exactly one top-level function of that name, optionally with import statements
    (models often repeat the ones they use; they land where the old definition was); no other
    function, class or statement, which could replace the module's other names. ReplyError with one
    structured reason otherwise."""
    try:
        block = ast.parse(new_def)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise _extract("syntax_error", f"the code block does not parse: {str(exc)[:200]}") from None
    body = [n for n in block.body if not isinstance(n, (ast.Import, ast.ImportFrom))
            and not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    if (len(body) != 1 or not isinstance(body[0], (ast.FunctionDef, ast.AsyncFunctionDef))
            or body[0].name != symbol):
        raise _extract("not_the_function", f"reply with the whole new definition of `{symbol}` (one `def "
                                           f"{symbol}(...)`, imports it needs allowed, no other function or "
                                           "class) in one ```python code block")
    try:
        span = _function_span(ast.parse(current), symbol)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        span = None
    if span is None:
        raise _extract("function_missing", f"the file has no top-level function `{symbol}` to replace")
    lines = current.split("\n")
    new_lines = new_def.rstrip("\n").split("\n")
    return "\n".join(lines[:span[0] - 1] + new_lines + lines[span[1]:])


def function_reply_to_json(reply: str | bytes, fmt: ReplyFormat, current: str, phase: Phase,
                           max_reply_bytes: int, max_file_bytes: int) -> str:
    """The protocol reply for a function-scoped code reply: the block spliced into ``current``
    (the file as it is in the workspace), as a whole-file edit of ``fmt.path``."""
    text = json.loads(code_reply_to_json(reply, fmt.path, phase, max_reply_bytes, max_file_bytes))
    key = "edits" if phase == "patch" else "tests"
    content = splice_function(current, fmt.symbol, text[key][0]["content"])
    text[key][0]["content"] = content.rstrip("\n") + "\n"
    return json.dumps(text)
