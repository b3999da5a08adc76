"""``rsi eval --suite lm-eval:TASK``: the seed's own benchmarks through lm-evaluation-harness.

Runs lm_eval's Python API (``simple_evaluate``, model type ``hf``) on a local model directory
(the embedded SmolLM2 by default) with an optional PEFT adapter, and reports the
``exact_match`` row of the ``flexible-extract`` filter (gsm8k_cot_llama, gsm_plus) with its
stderr and the number of samples it rests on. Nothing is fetched at run time: the hub is put
offline, and ``data`` points the task at a local JSON/JSONL file through a copy of the task's
own YAML with ``dataset_path: json`` (same prompts, filters and metric; only the documents change).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_FILTER = "flexible-extract"
DEFAULT_METRIC = "exact_match"


class LmEvalError(RuntimeError):
    """The task, its data or the model cannot be evaluated (one clear line)."""


def _offline() -> None:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"


def task_spec(task: str, data: Path | None, manager) -> str | dict:
    """The task name, or (with ``data``) the task's own config pointed at a local file."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index.get(task)
    if entry is None or entry.yaml_path is None:
        raise LmEvalError(f"unknown lm-eval task {task!r} (for example gsm8k_cot_llama, gsm_plus)")
    if data is None:
        return task
    if not Path(data).is_file():
        raise LmEvalError(f"no data file {data}")
    cfg = load_yaml(entry.yaml_path, resolve_func=True)
    cfg.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": {"test": str(Path(data).resolve())}},
               test_split="test")
    for key in ("training_split", "validation_split"):
        cfg.pop(key, None)
    if cfg.get("fewshot_split"):  # few-shot examples drawn from the data (gsm_plus); inline ones stay (gsm8k)
        cfg["fewshot_split"] = "test"
    cfg.setdefault("metadata", {})["rsi_local_data"] = str(data)
    return cfg


def run(task: str, model_dir: Path, adapter_dir: Path | None = None, data: Path | None = None,
        limit: int | None = None, max_gen_toks: int | None = None, num_fewshot: int | None = None,
        chat_template: bool = False, filter_name: str = DEFAULT_FILTER, metric: str = DEFAULT_METRIC,
        device: str = "cpu") -> dict:
    """Evaluate one task; returns the score row, its stderr, the sample count and what was run."""
    _offline()
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise LmEvalError(f"lm-evaluation-harness is not installed ({exc}); `pip install lm_eval`") from exc
    manager = TaskManager()
    spec = task_spec(task, data, manager)
    model_args = {"pretrained": str(model_dir), "dtype": "float32" if device == "cpu" else "auto", "device": device}
    if adapter_dir is not None:
        model_args["peft"] = str(adapter_dir)
    try:
        out = lm_eval.simple_evaluate(
            model="hf", model_args=model_args, tasks=[spec], task_manager=manager, limit=limit,
            num_fewshot=num_fewshot, batch_size=1, apply_chat_template=chat_template,
            fewshot_as_multiturn=chat_template, gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
            log_samples=True, bootstrap_iters=1000)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as exc:
        raise LmEvalError(f"lm-eval could not run {task}: {str(exc).splitlines()[0][:300]}") from exc
    row = out["results"][task]
    key = f"{metric},{filter_name}"
    if key not in row:
        raise LmEvalError(f"{task} has no {key!r} row; rows: {sorted(k for k in row if ',' in k)}")
    stderr = row.get(f"{metric}_stderr,{filter_name}")
    n = out.get("n-samples", {}).get(task, {})
    samples = [{"doc_id": s["doc_id"], "target": s["target"], "filtered": s["filtered_resps"],
                f"{metric}": s.get(metric)} for s in out.get("samples", {}).get(task, [])
               if s.get("filter", filter_name) == filter_name]  # one entry per document and filter
    return {
        "suite": f"lm-eval:{task}", "metric": metric, "filter": filter_name, "score": row[key],
        "stderr": stderr if isinstance(stderr, float) else None,
        "samples": n.get("effective", len(samples)), "docs_in_data": n.get("original"),
        "rows": {k: v for k, v in row.items() if "," in k},
        "model": str(model_dir), "adapter": str(adapter_dir) if adapter_dir else None,
        "data": str(data) if data else None, "limit": limit, "num_fewshot": num_fewshot,
        "max_gen_toks": max_gen_toks, "chat_template": chat_template, "lm_eval": lm_eval.__version__,
        "per_sample": samples,
    }


def report(task: str, scores: dict[str, dict], adapter: str | None) -> tuple[dict, str]:
    """``rsi eval --suite lm-eval:TASK``'s summary (``scores``: model name -> ``run`` result; with an
    adapter, the paired per-document difference against the base) and its one-line reading."""
    from orchestrator.evaluation.humaneval import paired_difference

    head = scores[adapter] if adapter else scores["base"]
    summary = {k: v for k, v in head.items() if k != "per_sample"}
    summary["per_model"] = {name: {"score": r["score"], "stderr": r["stderr"], "samples": r["samples"]}
                            for name, r in scores.items()}
    line = "; ".join(f"{name}: {r['metric']} ({r['filter']}) = {r['score']:.3f}"
                     + (f" ± {r['stderr']:.3f}" if r["stderr"] is not None else "") + f" on {r['samples']} samples"
                     for name, r in scores.items())
    if adapter:
        def per_doc(name):
            return [float(x[head["metric"]]) for x in sorted(scores[name]["per_sample"], key=lambda x: x["doc_id"])]

        d = paired_difference(per_doc("base"), per_doc(adapter))
        summary["difference"] = d
        line += f"; paired difference {d['difference']:+.3f} (95% CI {d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f})"
    return summary, f"lm-eval:{task}: " + line
