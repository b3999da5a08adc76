"""The messages the model sees in each phase. Hidden tests never appear here."""

from __future__ import annotations

from pathlib import Path

MAX_FILE_CHARS = 6000
MAX_OUTPUT_CHARS = 1500

SYSTEM = (
    "You are a careful Python engineer working on a small repository. "
    "Reply with exactly one JSON object and nothing else."
)
PATCH_FORMAT = (
    'Reply format: {"rationale": "<one sentence>", "edits": [{"path": "<file>.py", "content": "<the whole new '
    'file>"}]}. You may only write non-test Python source files; test files, conftest.py and configuration '
    "are off limits."
)
TESTS_FORMAT = (
    'Reply format: {"rationale": "<one sentence>", "tests": [{"path": "test_gen_<name>.py", "content": "<a pytest '
    'file>"}]}. Write NEW test files named test_gen_*.py with edge-case tests that pass on the current code and '
    "would fail if the code were subtly wrong. Import the code under test by module name."
)


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


def patch_messages(root: Path, sources: list[str], tests: list[str], last_result) -> list[dict]:
    example = sources[0] if sources else "module.py"
    user = (f"{_files_block(root, sources)}\n\nTests (read-only):\n{_files_block(root, tests)}\n\n"
            f"{_result_block(last_result)}\n\nFix the source so that all tests pass.\n{PATCH_FORMAT}\n"
            f'Example of the shape: {{"rationale": "square must multiply", "edits": [{{"path": "{example}", '
            f'"content": "def square(x):\\n    return x * x\\n"}}]}}')
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def tests_messages(root: Path, sources: list[str], tests: list[str]) -> list[dict]:
    user = (f"{_files_block(root, sources)}\n\nExisting tests:\n{_files_block(root, tests)}\n\n"
            f"Add new edge-case tests.\n{TESTS_FORMAT}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def retry_messages(messages: list[dict], reply: str, feedback: str) -> list[dict]:
    return messages + [
        {"role": "assistant", "content": reply[:4000]},
        {"role": "user", "content": f"Your reply was rejected:\n{feedback}\nReply again with one corrected JSON "
                                    "object."},
    ]
