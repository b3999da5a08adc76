"""One model reply through the protocol: format -> schema -> policy -> workspace commit -> audit line.

A reply in the ``code`` format (reply_format.py) is first turned into the protocol's JSON reply
for the path the request fixed; from there every reply takes the same path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel

from orchestrator.protocol.policy import Decision, Policy, check_reply
from orchestrator.protocol.reply_format import JSON, ReplyFormat, code_reply_to_json, function_reply_to_json
from orchestrator.protocol.schema import Phase, ReplyError
from orchestrator.protocol.workspace import Workspace
from orchestrator.store.audit import AuditLog


class Applied(BaseModel):
    decision: Decision
    digest: str
    commit: str | None = None
    diffs: dict[str, str] = {}


def _bytes(raw: str | bytes) -> bytes:
    return raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")


def reply_digest(raw: str | bytes) -> str:
    return hashlib.sha256(_bytes(raw)).hexdigest()


def _current(workspace, rel: str) -> str:
    """The file a function reply is spliced into, as it is in the workspace (the path is the task's)."""
    try:
        return (Path(workspace) / rel).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def check(text: str | bytes, phase: Phase, workspace, policy: Policy, fmt: ReplyFormat = JSON) -> Decision:
    """The policy's decision on a reply in format ``fmt``; never writes, never raises on bad input."""
    if fmt.name == "code":
        try:
            if fmt.symbol:
                current = _current(workspace, fmt.path)
                text = function_reply_to_json(text, fmt, current, phase, policy.limits.max_reply_bytes,
                                              policy.limits.max_file_bytes)
            else:
                text = code_reply_to_json(text, fmt.path, phase, policy.limits.max_reply_bytes,
                                          policy.limits.max_file_bytes)
        except ReplyError as exc:
            return Decision(accepted=False, phase=phase, reasons=exc.rejections)
    return check_reply(text, phase, workspace, policy)


def apply_reply(ws: Workspace, audit: AuditLog | None, text: str | bytes, phase: Phase, policy: Policy,
                iteration: int = 0, attempt: int = 0, write: bool = True, fmt: ReplyFormat = JSON) -> Applied:
    """Validate ``text`` (a reply in format ``fmt``); when accepted and ``write``, commit it. Always
    logs one audit event, with the digest of the reply as the model wrote it."""
    digest = reply_digest(text)
    decision = check(text, phase, ws.path, policy, fmt)
    diffs = ws.diff(decision.edits) if decision.accepted else {}
    commit = None
    if decision.accepted and write:
        commit = ws.apply(decision.edits, f"iteration {iteration} {phase} reply {digest[:12]}")
    if audit is not None:
        audit.append(
            "model_reply", iteration=iteration, phase=phase, attempt=attempt, reply_sha256=digest,
            reply_bytes=len(_bytes(text)), reply_format=fmt.name,
            extraction="ok" if not any(r.stage == "extract" for r in decision.reasons) else "failed",
            validation="ok" if not any(r.stage in ("extract", "schema") for r in decision.reasons) else "failed",
            policy="accepted" if decision.accepted else "rejected",
            reasons=[r.model_dump() for r in decision.reasons], files=[e.path for e in decision.edits],
            diffs=diffs, commit=commit, applied=commit is not None,
        )
    return Applied(decision=decision, digest=digest, commit=commit, diffs=diffs)
