"""Render an audit log for people: one block per event, diffs coloured in a terminal."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.syntax import Syntax

from orchestrator.store.audit import read_events, verify


def render(path: Path, iteration: int | None = None, console: Console | None = None) -> None:
    console = console or Console()
    check = verify(path)
    status = "[green]intact[/]" if check.ok else f"[red]TAMPERED: {check.message}[/]"
    console.print(f"[bold]{path}[/]  {check.lines} lines, chain {status}")
    for ev in read_events(path):
        if iteration is not None and ev.get("iteration") != iteration:
            continue
        head = f"#{ev.get('seq')} {ev.get('ts', '')} [bold]{ev.get('event')}[/]"
        if "iteration" in ev:
            head += f"  iteration {ev['iteration']}"
        if ev.get("phase"):
            head += f"  phase {ev['phase']}"
        console.print(head)
        if ev.get("event") == "model_reply":
            colour = "green" if ev.get("policy") == "accepted" else "red"
            console.print(f"  reply {ev.get('reply_sha256', '')[:16]}  [{colour}]{ev.get('policy')}[/]"
                          + (f"  commit {ev['commit'][:12]}" if ev.get("commit") else ""))
            for r in ev.get("reasons", []):
                console.print(f"  - {r.get('stage')}/{r.get('code')} {r.get('path') or ''}: {r.get('detail')}",
                              markup=False)
            for diff in (ev.get("diffs") or {}).values():
                if diff:
                    console.print(Syntax(diff, "diff", theme="ansi_dark", background_color="default"))
        elif ev.get("event") == "sandbox_run":
            console.print(f"  verdict {ev.get('verdict')}  passed={ev.get('passed')} failed={ev.get('failed')}"
                          f" errors={ev.get('errors')} skipped={ev.get('skipped')}", markup=False)
        else:
            rest = {k: v for k, v in ev.items() if k not in ("seq", "ts", "prev", "event")}
            if rest:
                console.print(f"  {rest}", markup=False)
