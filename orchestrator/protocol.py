"""One model reply through the protocol: schema -> policy -> workspace commit -> audit line."""

from __future__ import annotations

import hashlib

from pydantic import BaseModel

from .audit import AuditLog
from .policy import Decision, Policy, check_reply
from .schema import Phase
from .workspace import Workspace


class Applied(BaseModel):
    decision: Decision
    digest: str
    commit: str | None = None
    diffs: dict[str, str] = {}


def _bytes(raw: str | bytes) -> bytes:
    return raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")


def reply_digest(raw: str | bytes) -> str:
    return hashlib.sha256(_bytes(raw)).hexdigest()


def apply_reply(ws: Workspace, audit: AuditLog | None, text: str | bytes, phase: Phase, policy: Policy,
                iteration: int = 0, attempt: int = 0, write: bool = True) -> Applied:
    """Validate ``text``; when accepted and ``write``, commit it. Always logs one audit event."""
    digest = reply_digest(text)
    decision = check_reply(text, phase, ws.path, policy)
    diffs = ws.diff(decision.edits) if decision.accepted else {}
    commit = None
    if decision.accepted and write:
        commit = ws.apply(decision.edits, f"iteration {iteration} {phase} reply {digest[:12]}")
    if audit is not None:
        audit.append(
            "model_reply", iteration=iteration, phase=phase, attempt=attempt, reply_sha256=digest,
            reply_bytes=len(_bytes(text)),
            extraction="ok" if not any(r.stage == "extract" for r in decision.reasons) else "failed",
            validation="ok" if not any(r.stage in ("extract", "schema") for r in decision.reasons) else "failed",
            policy="accepted" if decision.accepted else "rejected",
            reasons=[r.model_dump() for r in decision.reasons], files=[e.path for e in decision.edits],
            diffs=diffs, commit=commit, applied=commit is not None,
        )
    return Applied(decision=decision, digest=digest, commit=commit, diffs=diffs)
