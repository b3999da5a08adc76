"""Model replies: tolerant extraction, strict validation.

A reply may wrap its JSON object in prose or a Markdown code fence; once extracted, the
object must fit the phase's schema exactly (strict types, unknown fields forbidden).
Every failure is a short structured ``Rejection`` that can be fed back to the model.
"""

from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.sandbox.runner.codec import MAX_DEPTH, too_deep  # one bracket-depth guard for all untrusted JSON

Phase = Literal["patch", "tests"]
MAX_CANDIDATES = 16  # positions tried when looking for a JSON object in prose
_FENCE = re.compile(r"```(?:json|JSON)?[ \t]*\n(.*?)```", re.DOTALL)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class FileEdit(_Strict):
    path: str = Field(description="Relative POSIX path inside the workspace")
    content: str = Field(description="The whole new content of the file")


class PatchReply(_Strict):
    """Patch phase: replace or create non-test Python source files."""

    rationale: str
    edits: list[FileEdit] = Field(min_length=1)

    @property
    def files(self) -> list[FileEdit]:
        return self.edits


class TestsReply(_Strict):
    """Test-generation phase: new test files only."""

    __test__ = False  # not a pytest class
    rationale: str
    tests: list[FileEdit] = Field(min_length=1)

    @property
    def files(self) -> list[FileEdit]:
        return self.tests


SCHEMAS: dict[str, type[_Strict]] = {"patch": PatchReply, "tests": TestsReply}


class Rejection(BaseModel):
    """Why a reply was refused: stage (extract|schema|policy), a code, a short detail."""

    stage: Literal["extract", "schema", "policy"]
    code: str
    detail: str
    path: str | None = None

    def __str__(self) -> str:
        where = f" [{self.path}]" if self.path else ""
        return f"{self.stage}/{self.code}{where}: {self.detail}"


class ReplyError(Exception):
    def __init__(self, rejections: list[Rejection]):
        super().__init__("; ".join(map(str, rejections)))
        self.rejections = rejections


def json_schema(phase: Phase) -> dict:
    return SCHEMAS[phase].model_json_schema()


def _loads(text: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def extract_object(text: str) -> dict:
    """The reply's JSON object: the whole text, a fenced block, or the first object in prose."""
    stripped = text.strip()
    obj = _loads(stripped)
    if isinstance(obj, dict):
        return obj
    for match in _FENCE.finditer(text):
        obj = _loads(match.group(1).strip())
        if isinstance(obj, dict):
            return obj
    decoder = json.JSONDecoder()
    start = text.find("{")
    tries = 0
    while start != -1 and tries < MAX_CANDIDATES:
        tries += 1
        try:
            obj, _ = decoder.raw_decode(text, start)
            if isinstance(obj, dict):
                return obj
        except (ValueError, RecursionError):
            pass
        start = text.find("{", start + 1)
    if stripped.startswith("{") or "```json" in text:
        raise ReplyError([Rejection(stage="extract", code="incomplete_json",
                                    detail="the reply opens a JSON object but never closes it (cut off?); "
                                           "keep it shorter")])
    raise ReplyError([Rejection(stage="extract", code="no_json_object",
                                detail="no JSON object found; reply with one JSON object")])


def parse_reply(text: str, phase: Phase, max_bytes: int) -> PatchReply | TestsReply:
    """Extract and validate; raises ReplyError with structured reasons."""
    if not isinstance(text, str):
        raise ReplyError([Rejection(stage="extract", code="not_text", detail="reply is not text")])
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ReplyError([Rejection(stage="extract", code="too_large",
                                    detail=f"reply is larger than {max_bytes} bytes")])
    if too_deep(text):
        raise ReplyError([Rejection(stage="extract", code="too_deep",
                                    detail=f"JSON nested deeper than {MAX_DEPTH} levels")])
    obj = extract_object(text)
    try:
        return SCHEMAS[phase].model_validate(obj)
    except ValidationError as exc:
        reasons = []
        for err in exc.errors()[:10]:
            loc = ".".join(str(p) for p in err["loc"]) or "(root)"
            reasons.append(Rejection(stage="schema", code=err["type"], detail=f"{loc}: {err['msg']}"))
        raise ReplyError(reasons) from None


def decode_bytes(raw: bytes) -> str:
    """Reply files must be UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReplyError([Rejection(stage="extract", code="not_utf8",
                                    detail=f"reply is not UTF-8 (byte {exc.start})")]) from None
