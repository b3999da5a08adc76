"""Render an audit log for people: one block per event, diffs coloured in a terminal.

Everything from the log is untrusted text (a model wrote the diffs, the paths and much of the
reasons): it goes through ``text.printable`` (control characters, ANSI/OSC escape sequences, bidi
overrides and lone surrogates shown as escapes) and rich's markup escaping before it is printed.
A diff longer than ``MAX_DIFF_CHARS`` is cut there, with a note (the log keeps all of it).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax

from orchestrator.store.audit import read_events, verify
from orchestrator.store.text import printable

MAX_DIFF_CHARS = 200_000


def _safe(value) -> str:
    return escape(printable("" if value is None else value))


def _diff(diff: str) -> str:
    shown = printable(diff[:MAX_DIFF_CHARS], keep_newlines=True)
    if len(diff) > MAX_DIFF_CHARS:
        shown += f"\n... {len(diff) - MAX_DIFF_CHARS} more characters (in the audit log)"
    return shown


def render(path: Path, iteration: int | None = None, console: Console | None = None) -> None:
    console = console or Console()

    def out(*args, **kwargs) -> None:
        console.print(*args, emoji=False, **kwargs)  # no :name: codes from the log

    check = verify(path)
    status = "[green]intact[/]" if check.ok else f"[red]TAMPERED: {_safe(check.message)}[/]"
    out(f"[bold]{_safe(path)}[/]  {check.lines} lines, chain {status}")
    for ev in read_events(path):
        if iteration is not None and ev.get("iteration") != iteration:
            continue
        head = f"#{_safe(ev.get('seq'))} {_safe(ev.get('ts', ''))} [bold]{_safe(ev.get('event'))}[/]"
        if "iteration" in ev:
            head += f"  iteration {_safe(ev['iteration'])}"
        if ev.get("phase"):
            head += f"  phase {_safe(ev['phase'])}"
        out(head)
        if ev.get("event") == "model_reply":
            colour = "green" if ev.get("policy") == "accepted" else "red"
            out(f"  reply {_safe(str(ev.get('reply_sha256', ''))[:16])}  [{colour}]{_safe(ev.get('policy'))}[/]"
                          + (f"  commit {_safe(str(ev['commit'])[:12])}" if ev.get("commit") else ""))
            for r in ev.get("reasons") or []:
                r = r if isinstance(r, dict) else {"detail": r}
                out(printable(f"  - {r.get('stage')}/{r.get('code')} {r.get('path') or ''}: "
                                        f"{r.get('detail')}"), markup=False)
            diffs = ev.get("diffs")
            for diff in (diffs.values() if isinstance(diffs, dict) else []):
                if diff:
                    out(Syntax(_diff(str(diff)), "diff", theme="ansi_dark", background_color="default"))
        elif ev.get("event") == "sandbox_run":
            out(printable(f"  verdict {ev.get('verdict')}  passed={ev.get('passed')} "
                                    f"failed={ev.get('failed')} errors={ev.get('errors')} "
                                    f"skipped={ev.get('skipped')}"), markup=False)
        else:
            rest = {k: v for k, v in ev.items() if k not in ("seq", "ts", "prev", "event")}
            if rest:
                out(printable(f"  {rest}"), markup=False)
