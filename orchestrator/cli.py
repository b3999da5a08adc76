"""The ``rsi`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import logging_setup

EXIT_INFRA = 2


def _fail_infra(message: str) -> None:
    click.echo(f"rsi: {message}", err=True)
    sys.exit(EXIT_INFRA)


@click.group()
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]), help="Structured log level (stderr).")
def main(log_level: str) -> None:
    """rsi-lab: write -> test -> reflect -> improve -> generate data -> fine-tune -> repeat."""
    logging_setup.configure(log_level)


@main.group()
def sandbox() -> None:
    """Run tests in the hardened sandbox."""


@sandbox.command("run")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--timeout", "timeout_s", type=float, default=None, help="Wall-clock seconds for pytest.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def sandbox_run(path: Path, timeout_s: float | None, as_json: bool) -> None:
    """Run PATH's tests once in a fresh container. Exit 0 pass, 1 other verdict, 2 infrastructure."""
    from .sandbox import InfraError, run_tests

    try:
        result = run_tests(path, timeout_s=timeout_s)
    except InfraError as exc:
        _fail_infra(str(exc))
    if as_json:
        click.echo(json.dumps(result.model_dump(exclude={"tests"}) | {"tests": result.tests}))
    else:
        colour = "green" if result.verdict == "pass" else "red"
        click.echo(click.style(result.verdict.upper(), fg=colour, bold=True)
                   + f"  passed={result.passed} failed={result.failed} errors={result.errors}"
                   f" skipped={result.skipped} in {result.duration_s:.2f}s")
        for reason in result.reasons:
            click.echo(f"  - {reason}")
    sys.exit(0 if result.verdict == "pass" else 1)


@main.group()
def images() -> None:
    """Build the container images."""


@images.command("build")
@click.option("--base-image", default=None, help="Base image for the sandbox (default: auto, offline fallback).")
@click.option("--force", is_flag=True, help="Rebuild even when the sources did not change.")
def images_build(base_image: str | None, force: bool) -> None:
    """Build the sandbox image (fast when nothing changed)."""
    from .images import build_sandbox_image
    from .sandbox import InfraError, connect

    try:
        client = connect()
    except InfraError as exc:
        _fail_infra(str(exc))
    tag = build_sandbox_image(client, base_image=base_image, force=force)
    click.echo(f"sandbox image ready: {tag}")


@main.command("schema")
@click.argument("phase", type=click.Choice(["patch", "tests"]))
def schema_cmd(phase: str) -> None:
    """Print the JSON Schema of a phase's reply (for constrained decoding)."""
    from .schema import json_schema

    click.echo(json.dumps(json_schema(phase), indent=2))


@main.group()
def patch() -> None:
    """Validate and apply model replies."""


def _print_decision(decision, as_json: bool) -> None:
    if as_json:
        click.echo(decision.model_dump_json())
        return
    if decision.accepted:
        click.echo(click.style("ACCEPTED", fg="green", bold=True))
        for e in decision.edits:
            click.echo(f"  {e.path} ({len(e.content.encode())} bytes)")
    else:
        click.echo(click.style("REJECTED", fg="red", bold=True))
        click.echo(decision.feedback())


@patch.command("check")
@click.argument("workspace", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("reply_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--phase", type=click.Choice(["patch", "tests"]), required=True)
@click.option("--json", "as_json", is_flag=True)
def patch_check(workspace: Path, reply_file: Path, phase: str, as_json: bool) -> None:
    """Validate REPLY_FILE against the schema and policy; writes nothing. Exit 0 accepted, 1 rejected."""
    from .policy import Policy, check_reply

    decision = check_reply(reply_file.read_bytes(), phase, workspace.resolve(), Policy.load())
    _print_decision(decision, as_json)
    sys.exit(0 if decision.accepted else 1)


@patch.command("apply")
@click.argument("workspace", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("reply_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--phase", type=click.Choice(["patch", "tests"]), required=True)
@click.option("--audit", "audit_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Audit log (default: audit.jsonl beside WORKSPACE).")
@click.option("--iteration", type=int, default=0)
@click.option("--json", "as_json", is_flag=True)
def patch_apply(workspace: Path, reply_file: Path, phase: str, audit_path: Path | None, iteration: int,
                as_json: bool) -> None:
    """Validate REPLY_FILE, then commit it to WORKSPACE (a git repo; created if absent) and log it."""
    from .audit import AuditLog
    from .policy import Policy
    from .protocol import apply_reply
    from .workspace import Workspace

    ws = Workspace.open_or_init(workspace)
    audit = AuditLog(audit_path or workspace.resolve().parent / "audit.jsonl")
    result = apply_reply(ws, audit, reply_file.read_bytes(), phase, Policy.load(), iteration=iteration)
    _print_decision(result.decision, as_json)
    if result.commit and not as_json:
        click.echo(f"  commit {result.commit}")
    sys.exit(0 if result.decision.accepted else 1)


@main.group()
def audit() -> None:
    """Verify and read audit logs."""


def _audit_file(run_dir: Path) -> Path:
    return run_dir / "audit.jsonl" if run_dir.is_dir() else run_dir


@audit.command("verify")
@click.argument("run_dir", type=click.Path(exists=True, path_type=Path))
def audit_verify(run_dir: Path) -> None:
    """Check the hash chain. Exit 0 intact, 1 tampered (names the first bad line)."""
    from .audit import verify

    path = _audit_file(run_dir)
    if not path.exists():
        _fail_infra(f"no audit log at {path}")
    result = verify(path)
    if result.ok:
        click.echo(f"intact: {result.lines} lines, head {result.last_hash[:16]}")
        sys.exit(0)
    click.echo(f"TAMPERED: {result.message}")
    sys.exit(1)


@audit.command("show")
@click.argument("run_dir", type=click.Path(exists=True, path_type=Path))
@click.option("--iteration", type=int, default=None)
def audit_show(run_dir: Path, iteration: int | None) -> None:
    """Render the audit log for people (diffs coloured in a terminal)."""
    from .audit_view import render

    render(_audit_file(run_dir), iteration)


if __name__ == "__main__":
    main()
