"""lm-evaluation-harness suites, offline: the real harness and the embedded model on tiny local data."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.evaluation.lm_eval_suite import LmEvalError, task_spec

ROOT = Path(__file__).resolve().parent.parent
GSM8K = [
    {"question": "Tom has 3 apples and buys 2 more. How many apples does he have?", "answer": "3 + 2 = 5\n#### 5"},
    {"question": "A box holds 4 pens. How many pens are in 3 boxes?", "answer": "4 * 3 = 12\n#### 12"},
]
GSM_PLUS = [
    {"question": "Sara had 10 dollars and spent 7. How many dollars are left?", "solution": "3"},
    {"question": "A cat has 4 legs. How many legs do 2 cats have?", "solution": "8"},
    {"question": "Ann read 5 pages on Monday and 6 on Tuesday. How many pages in all?", "solution": "11"},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def manager():
    from lm_eval.tasks import TaskManager

    return TaskManager()


def test_task_spec_points_the_tasks_own_config_at_local_data(tmp_path, manager):
    data = write_jsonl(tmp_path / "d.jsonl", GSM8K)
    spec = task_spec("gsm8k_cot_llama", data, manager)
    assert spec["task"] == "gsm8k_cot_llama" and spec["dataset_path"] == "json" and spec["dataset_name"] is None
    assert spec["dataset_kwargs"] == {"data_files": {"test": str(data.resolve())}} and spec["test_split"] == "test"
    assert len(spec["fewshot_config"]["samples"]) == 8  # the inline 8-shot examples are kept
    assert [f["name"] for f in spec["filter_list"]] == ["strict-match", "flexible-extract"]
    plus = task_spec("gsm_plus", data, manager)
    assert plus["fewshot_split"] == "test" and "training_split" not in plus and plus["doc_to_target"] == "{{solution}}"
    assert task_spec("gsm_plus", None, manager) == "gsm_plus"
    with pytest.raises(LmEvalError, match="unknown lm-eval task"):
        task_spec("no_such_task", data, manager)
    with pytest.raises(LmEvalError, match="no data file"):
        task_spec("gsm_plus", tmp_path / "missing.jsonl", manager)


def rsi(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "eval", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=1200)


def normalise(s: str) -> str:  # the task's exact_match settings: ignore case, ',', '$', a trailing '.'
    for pat in (",", r"\$", "(?s).*#### ", r"\.$"):
        s = re.sub(pat, "", s)
    return s.lower()


def check_scored_rows(out: Path, name: str, expected_docs: int):
    rows = [json.loads(x) for x in (out / f"samples-{name}.jsonl").read_text().splitlines()]
    assert len(rows) == expected_docs
    for r in rows:  # the grader, checked: exact_match is 1 exactly when the extracted answer equals the target
        assert r["exact_match"] == float(normalise(r["filtered"][0]) == normalise(r["target"])), r
    return rows


@pytest.fixture(scope="module")
def run_with_adapter(tmp_path_factory):
    """A run directory whose registry holds a real (randomly initialised) LoRA adapter for SmolLM2."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from orchestrator.models.embedded_model import ensure_converted

    from orchestrator.training.adapters import Registry

    run = tmp_path_factory.mktemp("run")
    model = AutoModelForCausalLM.from_pretrained(ensure_converted())
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    registry = Registry(run)
    staging = registry.staging_dir()
    peft.save_pretrained(staging)
    assert registry.register(staging, "smollm2", {}, {"samples": 0}).id == "v0001"  # as a burst registers it
    return run


def test_gsm8k_cot_llama_base_plus_adapter_offline(tmp_path, run_with_adapter):
    data = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    out = tmp_path / "out"
    res = rsi("--suite", "lm-eval:gsm8k_cot_llama", "--data", data, "--num-fewshot", 1, "--max-gen-toks", 24,
              "--adapter", "v0001", "--run-dir", run_with_adapter, "--out", out, "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["suite"] == "lm-eval:gsm8k_cot_llama" and summary["filter"] == "flexible-extract"
    assert summary["metric"] == "exact_match" and summary["samples"] == 2 and 0 <= summary["score"] <= 1
    assert set(summary["per_model"]) == {"base", "v0001"} and summary["difference"]["problems"] == 2
    assert summary["adapter"].endswith("v0001") and summary["data"] == str(data)
    for name in ("base", "v0001"):
        check_scored_rows(out, name, 2)
    assert json.loads((out / "summary.json").read_text())["score"] == summary["score"]


def test_gsm_plus_offline_with_fewshot_from_the_local_data(tmp_path):
    data = write_jsonl(tmp_path / "gsm_plus.jsonl", GSM_PLUS)
    out = tmp_path / "out"
    res = rsi("--suite", "lm-eval:gsm_plus", "--data", data, "--num-fewshot", 1, "--max-gen-toks", 16, "--limit", 2,
              "--no-chat-template", "--out", out)
    assert res.returncode == 0, res.stderr[-2000:]
    assert re.search(r"base: exact_match \(flexible-extract\) = [01]\.\d{3} ± \d\.\d{3} on 2 samples", res.stdout)
    check_scored_rows(out, "base", 2)


def test_clear_errors(tmp_path):
    res = rsi("--suite", "lm-eval:no_such_task", "--out", tmp_path / "o")
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("rsi: unknown lm-eval task")
    # without --data the task's hub dataset would be needed: offline, that is one clear line, not a download
    res = rsi("--suite", "lm-eval:gsm_plus", "--limit", 1, "--out", tmp_path / "o2")
    assert res.returncode == 2, res.stdout[-500:] + res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith("rsi: lm-eval could not run gsm_plus")
    res = rsi("--suite", "lm-eval:gsm_plus", "--baseline", "none", "--out", tmp_path / "o3")
    assert res.returncode == 2 and "no --baseline" in res.stderr
