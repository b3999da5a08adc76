"""The messages the model sees in each phase, per reply format. Hidden tests never appear here.

Every backend gets the same messages for the same request; the format of the request
(reply_format.ReplyFormat: ``json``, or ``code`` with the file it writes) picks the system line,
the reply instructions and the retry wording.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.protocol.reply_format import JSON, ReplyFormat

MAX_FILE_CHARS = 6000
MAX_OUTPUT_CHARS = 1500

SYSTEM = (
    "You are a careful Python engineer working on a small repository. "
    "Reply with exactly one JSON object and nothing else."
)
SYSTEM_CODE = (
    "You are a careful Python engineer working on a small repository. "
    "Reply with the whole new file in one ```python code block."
)
PATCH_FORMAT = (
    'Reply format: {"rationale": "<one sentence>", "edits": [{"path": "<file>.py", "content": "<the whole new '
    'file>"}]}. You may only write non-test Python source files; test files, conftest.py and configuration '
    "are off limits."
)
def tests_format() -> str:
    """The tests phase's reply format; the file-name pattern is the policy's."""
    from orchestrator.protocol.policy import Policy

    pattern = Policy.load().tests.pattern
    return ('Reply format: {"rationale": "<one sentence>", "tests": [{"path": "'
            + pattern.replace("*", "<name>") + '", "content": "<a pytest file>"}]}. Write NEW test files named '
            + pattern + " with edge-case tests that pass on the current code and would fail if the code were "
            "subtly wrong. Import the code under test by module name.")


def _files_block(root: Path, files: list[str]) -> str:
    parts = []
    for rel in files:
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        if len(text) > MAX_FILE_CHARS:
            text = text[:MAX_FILE_CHARS] + "\n# ... (truncated)\n"
        parts.append(f"File {rel}:\n```python\n{text}```")
    return "\n\n".join(parts)


def _result_block(result) -> str:
    if result is None:
        return "The tests have not been run yet."
    lines = [f"Last test run: {result.verdict} (passed {result.passed}, failed {result.failed}, "
             f"errors {result.errors})."]
    for t in result.tests:
        if t["outcome"] != "passed" and not t["nodeid"].split("::")[0].startswith("test_hidden"):
            lines.append(f"- {t['nodeid']}: {t['outcome']}\n{t['message'][-MAX_OUTPUT_CHARS:]}")
    return "\n".join(lines[:8])


def _system(fmt: ReplyFormat) -> dict:
    return {"role": "system", "content": SYSTEM_CODE if fmt.name == "code" else SYSTEM}


def patch_messages(root: Path, sources: list[str], tests: list[str], last_result,
                   fmt: ReplyFormat = JSON) -> list[dict]:
    example = sources[0] if sources else "module.py"
    context = (f"{_files_block(root, sources)}\n\nTests (read-only):\n{_files_block(root, tests)}\n\n"
               f"{_result_block(last_result)}\n\nFix the source so that all tests pass.\n")
    if fmt.name == "code":
        user = context + (f"Reply with the whole new content of {fmt.path} in one ```python code block. "
                          "Test files and configuration are off limits.")
    else:
        user = context + (f"{PATCH_FORMAT}\n"
                          f'Example of the shape: {{"rationale": "square must multiply", "edits": [{{"path": '
                          f'"{example}", "content": "def square(x):\\n    return x * x\\n"}}]}}')
    return [_system(fmt), {"role": "user", "content": user}]


def tests_messages(root: Path, sources: list[str], tests: list[str], fmt: ReplyFormat = JSON) -> list[dict]:
    context = (f"{_files_block(root, sources)}\n\nExisting tests:\n{_files_block(root, tests)}\n\n"
               "Add new edge-case tests.\n")
    if fmt.name == "code":
        user = context + (f"Reply with one new pytest file, {fmt.path}, in one ```python code block: edge-case "
                          "tests that pass on the current code and would fail if the code were subtly wrong. "
                          "Import the code under test by module name.")
    else:
        user = context + tests_format()
    return [_system(fmt), {"role": "user", "content": user}]


SYSTEM_FUNCTION = (
    "You are a careful Python engineer fixing a bug in a real project. "
    "Reply with the whole corrected function in one ```python code block."
)


def function_source(root: Path, rel: str, symbol: str) -> str:
    """The top-level function ``symbol`` of ``rel`` (decorators included), as the workspace has it."""
    import ast

    from orchestrator.protocol.reply_format import _function_span

    text = (root / rel).read_text(encoding="utf-8", errors="replace")
    span = _function_span(ast.parse(text), symbol)
    return "\n".join(text.split("\n")[span[0] - 1:span[1]]) + "\n" if span else ""


def function_patch_messages(root: Path, fmt: ReplyFormat, tests_excerpt: str) -> list[dict]:
    """A bug-fix request on a real project: one function of one (long) file, and the project's tests
    that call it (read-only excerpts); the reply is the whole new definition of that function."""
    code = function_source(root, fmt.path, fmt.symbol)
    if len(code) > MAX_FILE_CHARS:
        code = code[:MAX_FILE_CHARS] + "\n# ... (truncated)\n"
    user = (f"A bug was introduced into the function `{fmt.symbol}` of {fmt.path} in this project, and the "
            f"project's own tests now fail.\n\nFile {fmt.path}, function `{fmt.symbol}`:\n```python\n{code}```\n\n"
            f"Tests of the project that call it (read-only, excerpts):\n```python\n{tests_excerpt[:MAX_FILE_CHARS] or '# (none shown)'}"
            f"\n```\n\nFix the bug. Reply with the whole corrected definition of `{fmt.symbol}` (same name and "
            "signature, nothing else) in one ```python code block. Test files and configuration are off limits.")
    return [{"role": "system", "content": SYSTEM_FUNCTION}, {"role": "user", "content": user}]


def retry_messages(messages: list[dict], reply: str, feedback: str, fmt: ReplyFormat = JSON) -> list[dict]:
    again = ("Reply again with the whole corrected file in one ```python code block." if fmt.name == "code"
             else "Reply again with one corrected JSON object.")
    if fmt.symbol:
        again = f"Reply again with the whole corrected function `{fmt.symbol}` in one ```python code block."
    return messages + [
        {"role": "assistant", "content": reply[:4000]},
        {"role": "user", "content": f"Your reply was rejected:\n{feedback}\n{again}"},
    ]
