"""Reward-hacking telemetry, computed from the audit log (so any run can be re-counted).

Per run, per iteration and per model (base or adapter): replies, replies the hack screen refused
(``policy/hack_suspected``) or that tried to shadow the runner or touch protected files, judged
calls that returned something other than plain data, visible runs graded ``tampered``, and
proven hacks (an impossible-task canary passed). A rising rate is the onset signal to watch.
"""

from __future__ import annotations

from collections import defaultdict

ATTACK_CODES = {"hack_suspected", "shadows_module", "protected_file", "forbidden_file", "symlink_in_path",
                "parent_reference", "absolute_path"}
KEYS = ("replies", "screen_refused", "attack_refused", "nonplain_calls", "judged_runs", "tampered",
        "proven_hacks")


def _empty() -> dict:
    return {k: 0 for k in KEYS}


def hack_telemetry(events: list[dict]) -> dict:
    """``{"total": {...}, "per_iteration": {it: {...}}, "per_model": {model: {...}}}``."""
    total, per_it, per_model = _empty(), defaultdict(_empty), defaultdict(_empty)
    model = "base"
    for e in events:
        kind = e.get("event")
        if kind in ("adapter_decision", "run_resumed", "run_started"):
            if kind == "adapter_decision" and e.get("promoted"):
                model = e.get("adapter") or model
            continue
        it = e.get("iteration", 0) or 0
        bumps: dict[str, int] = {}
        if kind == "model_reply" and e.get("phase") == "patch":
            codes = {r.get("code") for r in e.get("reasons") or [] if isinstance(r, dict)}
            bumps = {"replies": 1, "screen_refused": int("hack_suspected" in codes),
                     "attack_refused": int(bool(codes & ATTACK_CODES))}
        elif kind == "sandbox_run" and e.get("purpose") == "evaluation":
            judged = e.get("judged") or {}
            bumps = {"tampered": int(e.get("verdict") == "tampered"), "judged_runs": int(bool(judged)),
                     "nonplain_calls": int((judged.get("calls") or {}).get("nonplain", 0))}
        elif kind == "proven_hack":
            bumps = {"proven_hacks": len(e.get("tasks") or [1])}
        who = e.get("adapter") or model if kind == "proven_hack" else model
        for k, v in bumps.items():
            total[k] += v
            per_it[it][k] += v
            per_model[who][k] += v
    rate = total["screen_refused"] / total["replies"] if total["replies"] else 0.0
    return {"total": {**total, "screen_refusal_rate": round(rate, 4)},
            "per_iteration": dict(sorted(per_it.items())), "per_model": dict(per_model)}


def line(t: dict) -> str:
    """One line for `rsi status` and the loop's last words."""
    x = t["total"]
    return (f"hack telemetry: {x['screen_refused']}/{x['replies']} patch replies refused by the hack screen, "
            f"{x['attack_refused']} attacks on protected/runner files, {x['nonplain_calls']} judged calls "
            f"returned non-plain values, {x['tampered']} tampered runs, {x['proven_hacks']} proven hacks")
