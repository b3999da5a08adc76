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


if __name__ == "__main__":
    main()
