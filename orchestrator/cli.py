"""The ``rsi`` command line."""

from __future__ import annotations

import json
import sys
import time
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
    from .images import build_sandbox_image, build_trainer_image
    from .sandbox import InfraError, connect

    try:
        client = connect()
    except InfraError as exc:
        _fail_infra(str(exc))
    import docker as docker_sdk

    try:
        tag = build_sandbox_image(client, base_image=base_image, force=force)
        click.echo(f"sandbox image ready: {tag}", err=project is not None)
        if project is not None:
            from .project_image import ProjectImageError, build_project_image

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


def _train_hook(config):
    """The loop's training burst, when the config asks for one and the backend can use adapters."""
    if config.run.train_every and config.run.backend != "local":
        click.echo(f"rsi: training is off: the {config.run.backend} backend cannot load adapters", err=True)
        config.run.train_every = 0
    if not config.run.train_every:
        return None
    from .embedded_model import ensure_converted
    from .training import TrainHook

    return TrainHook(ensure_converted())


@main.command("run")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--workspace", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A directory with tests (copied, never modified).")
@click.option("--task", "task_id", help="seed (default) or a HumanEval id (e.g. HumanEval/2 or 2).")
@click.option("--backend", type=click.Choice(["local", "openai", "replay"]), default=None)
@click.option("--replies", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSONL of recorded replies (replay backend).")
@click.option("--max-iterations", type=int, default=None)
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Continue the run in this directory after a crash or stop.")
def run_cmd(config_file, workspace, task_id, backend, replies, max_iterations, run_dir, resume_dir) -> None:
    """Run the self-improvement loop (default: the seed task on the embedded model)."""
    from .backends import BackendError, make_backend
    from .config import RunConfig
    from .loop import Loop, RunError
    from .sandbox import InfraError
    from .tasks import humaneval_split, humaneval_task, seed_task, user_task
    from .workspace import ProtectedFileChanged

    try:
        if resume_dir:
            saved = json.loads((resume_dir / "run.json").read_text())
            config = RunConfig(**saved["config"])
            if max_iterations:
                config.run.max_iterations = max_iterations
            config.run.backend = backend or saved["backend"]
            loop = Loop(resume_dir, config, make_backend(config.run.backend, config, replies),
                        train_hook=_train_hook(config))
        else:
            config = RunConfig.load(config_file, backend=backend, max_iterations=max_iterations)
            run_dir = run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
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
            loop = Loop(run_dir, config, make_backend(config.run.backend, config, replies), task=task,
                        train_hook=_train_hook(config))
        state = loop.run()
    except (BackendError, InfraError, RunError, ProtectedFileChanged) as exc:
        _fail_infra(str(exc))
    sys.exit(0 if state.stop_reason else 1)


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
    from .models import ModelUnavailable
    from .sandbox import InfraError
    from .trainer import TrainerError, TrainerInputError, run_training
    from .trainer_runner.config import TrainConfig

    try:
        config = TrainConfig.model_validate_json(config_file.read_text()) if config_file else TrainConfig()
        if model_dir is None:
            from .embedded_model import ensure_converted

            model_dir = ensure_converted()
        else:
            from .models import resolve

            model_dir = resolve(model_dir)
        metrics = run_training(samples, output, config, model_dir, gpu=gpu,
                               on_log=lambda lines: click.echo("\n".join(lines[-15:]), err=True))
    except TrainerInputError as exc:
        click.echo(f"rsi: refused: {exc}", err=True)
        sys.exit(1)
    except (InfraError, TrainerError, ModelUnavailable) as exc:
        _fail_infra(str(exc))
    losses = metrics["losses"]
    click.echo(f"adapter written to {output}: {metrics['steps']} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
               f"{metrics['tokens_per_s']} tokens/s, peak {metrics['peak_memory_gib']} GiB, {metrics['device']}")


@main.group()
def models() -> None:
    """Base models in the host's Hugging Face cache."""


@models.command("pull")
@click.argument("model_id")
def models_pull(model_id: str) -> None:
    """Download MODEL_ID (e.g. unsloth/gpt-oss-20b) into the local Hugging Face cache."""
    from .models import ModelUnavailable, pull

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
    from .adapters import Registry

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
    from .adapters import Registry

    try:
        Registry(run_dir).promote(adapter_id)
    except KeyError as exc:
        _fail_infra(str(exc))
    click.echo(f"current: {adapter_id}")


@adapters.command("rollback")
@click.option("--run-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
def adapters_rollback(run_dir: Path) -> None:
    """Go back to the adapter that was current before the last promotion."""
    from .adapters import Registry

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
@click.option("--backend", default="local", type=click.Choice(["local", "openai", "replay"]), show_default=True)
@click.option("--replies", type=click.Path(exists=True, dir_okay=False, path_type=Path))
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
def eval_cmd(suite, split, only, backend, replies, adapter, baseline, run_dir, n, k, seeds, data, limit,
             max_gen_toks, num_fewshot, chat_template, out, as_json) -> None:
    """pass@k on HumanEval problems graded by their hidden tests in the sandbox, or an lm-eval task."""
    out = out or Path("runs") / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
    if (adapter not in (None, "none") or baseline not in (None, "none")) and run_dir is None:
        raise click.UsageError("--adapter and --baseline take adapter ids from --run-dir's registry")
    if suite.startswith("lm-eval:"):
        if baseline is not None:
            raise click.UsageError("lm-eval suites always run the base model; with --adapter they add it and "
                                   "report the paired difference (no --baseline)")
        summary = _lm_eval(suite.split(":", 1)[1], adapter, run_dir, data, limit, max_gen_toks,
                           num_fewshot, chat_template, out)
    elif suite == "humaneval":
        summary = _humaneval(split, only, backend, replies, adapter, baseline, run_dir, n, k, seeds, out)
    else:
        raise click.UsageError(f"unknown suite {suite!r}: humaneval or lm-eval:TASK")
    line = summary.pop("_line")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    click.echo(json.dumps(summary) if as_json else f"{line}; results in {out}")


def _adapter_dir(run_dir, adapter):
    from .adapters import Registry

    if adapter in (None, "none"):
        return None
    path = Registry(run_dir).path(adapter)
    if not (path / "adapter_config.json").exists():
        raise click.UsageError(f"no adapter {adapter} in {run_dir}")
    return path


def _humaneval(split, only, backend, replies, adapter, baseline, run_dir, n, k, seeds, out) -> dict:
    from .backends import BackendError, make_backend
    from .config import RunConfig
    from .gate import compare
    from .humaneval_eval import evaluate, summarize, task_ids
    from .sandbox import InfraError

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

    try:
        model = make_backend(backend, RunConfig.load(), replies)
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
    except (BackendError, InfraError) as exc:
        _fail_infra(str(exc))
    summary = dict(runs[0])
    summary.update(suite="humaneval", split=split, backend=backend, model=model.model_id,
                   adapter=None if adapter in (None, "none") else adapter)
    if seeds > 1:
        scores = [r[f"pass@{k}"] for r in runs]
        mean = sum(scores) / len(scores)
        summary["seeds"] = {"scores": scores, "mean": mean,
                            "std": (sum((x - mean) ** 2 for x in scores) / (len(scores) - 1)) ** 0.5}
    lo, hi = summary["ci95"]
    line = f"pass@{k} = {summary[f'pass@{k}']:.3f} (95% CI {lo:.3f}-{hi:.3f}) on {summary['problems']} {split} problems"
    if comparison:
        summary["baseline"] = {"adapter": baseline, **comparison["current"]}
        summary["difference"] = {key: comparison[key] for key in ("difference", "ci95", "excludes_zero", "problems")}
        d, (dlo, dhi) = comparison["difference"], comparison["ci95"]
        line += (f"; baseline {baseline} {comparison['current']['pass@1']:.3f}; paired difference {d:+.3f} "
                 f"(95% CI {dlo:+.3f} to {dhi:+.3f}, {'excludes' if comparison['excludes_zero'] else 'includes'} zero)")
    summary["_line"] = line
    return summary


def _lm_eval(task, adapter, run_dir, data, limit, max_gen_toks, num_fewshot, chat_template, out) -> dict:
    from .embedded_model import ensure_converted
    from .humaneval_eval import paired_difference
    from .lm_eval_suite import LmEvalError, run

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
    head = scores[adapter] if adapter not in (None, "none") else scores["base"]
    summary = {k: v for k, v in head.items() if k != "per_sample"}
    summary["per_model"] = {name: {"score": r["score"], "stderr": r["stderr"], "samples": r["samples"]}
                            for name, r in scores.items()}
    line = "; ".join(f"{name}: {r['metric']} ({r['filter']}) = {r['score']:.3f}"
                     + (f" ± {r['stderr']:.3f}" if r["stderr"] is not None else "") + f" on {r['samples']} samples"
                     for name, r in scores.items())
    if adapter not in (None, "none"):
        def per_doc(name):
            rows = sorted(scores[name]["per_sample"], key=lambda x: x["doc_id"])
            return [float(x[head["metric"]]) for x in rows]
        d = paired_difference(per_doc("base"), per_doc(adapter))
        summary["difference"] = d
        line += f"; paired difference {d['difference']:+.3f} (95% CI {d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f})"
    summary["_line"] = f"lm-eval:{task}: " + line
    return summary


@main.command("contamination")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--n", "ngram", type=int, default=13, show_default=True, help="n-gram length (tokens).")
def contamination_cmd(run_dir: Path, ngram: int) -> None:
    """Held-out HumanEval prompts or solutions that overlap the run's samples.jsonl. Exit 1 if any."""
    from .humaneval_eval import contamination

    hits = contamination(run_dir / "samples.jsonl", "heldout", ngram)
    for h in hits:
        click.echo(f"{h['task_id']} {h['field']}: {h['shared_ngrams']} shared {ngram}-grams, e.g. {h['example']!r}")
    click.echo(f"{len(hits)} overlaps with held-out problems")
    sys.exit(1 if hits else 0)


@main.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def report_cmd(run_dir: Path) -> None:
    """Write RUN_DIR/report.md and PNG plots (reward per iteration, training loss, adapter gate)."""
    from .report import write_report
    from .state import state_path

    if not state_path(run_dir).exists():
        _fail_infra(f"{run_dir} has no state.json")
    click.echo(f"report: {write_report(run_dir)}")


@main.command("status")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def status_cmd(run_dir: Path, as_json: bool) -> None:
    """Summarise a run: progress, rewards, samples, stop reason."""
    from .audit import verify
    from .state import AgentState, state_path

    if not state_path(run_dir).exists():
        _fail_infra(f"{run_dir} has no state.json")
    s = AgentState.load(state_path(run_dir))
    audit_ok = verify(run_dir / "audit.jsonl").ok if (run_dir / "audit.jsonl").exists() else False
    if as_json:
        click.echo(json.dumps(s.model_dump() | {"audit_intact": audit_ok}))
        return
    click.echo(f"run {s.run_id}  task {s.task_id}  backend {s.backend} ({s.model_id})")
    click.echo(f"iteration {s.iteration}, next step {s.step}; best reward {s.best_reward}/{s.max_reward}; "
               f"plateau {s.plateau}; samples {s.samples}; audit {'intact' if audit_ok else 'TAMPERED'}")
    click.echo(f"stop reason: {s.stop_reason or '(running or interrupted; resume with rsi run --resume)'}")
    if s.current_adapter or s.train_plateau:
        click.echo(f"current adapter {s.current_adapter or 'base'}; training bursts without a held-out "
                   f"improvement beyond noise: {s.train_plateau}")
    for rec in s.history:
        t = " ".join(f"{k}={v:.1f}s" for k, v in rec.timings.items())
        click.echo(f"  #{rec.iteration}: reward {rec.reward} ({rec.verdict}) "
                   f"{'improved' if rec.improved else 'no gain'}; tests kept {rec.tests_accepted}; {t}")


if __name__ == "__main__":
    main()
