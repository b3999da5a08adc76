"""Run configuration: policies/run.toml, then a user's --config file, then CLI flags."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.models.gpu import GpuSection
from orchestrator.protocol.policy import POLICIES_DIR


class RunSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: str = "auto"  # auto: vllm where its venv exists, else local
    max_iterations: int = Field(6, ge=1)
    plateau_patience: int = Field(3, ge=0)
    improvement_margin: int = Field(0, ge=0)
    stop_when_solved: bool = True
    max_retries: int = Field(3, ge=0)
    max_mutants: int = Field(12, ge=1)
    train_every: int = Field(3, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data):
        if isinstance(data, dict) and "sandbox_timeout_s" in data:
            raise ValueError("[run] sandbox_timeout_s moved: the sandbox's time limit is timeout_s in [sandbox] of "
                             "policies/sandbox.toml (every sandbox limit lives there)")
        return data


ReplyFormatName = Literal["json", "code"]


class ModelSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    embedded: str = "smollm2-135m"  # the embedded model (embedded_model.MODELS; $RSI_EMBEDDED_MODEL overrides)
    reply_format: Literal["auto", "json", "code"] = "auto"  # auto: the model's entry in reply_formats
    reply_formats: dict[str, ReplyFormatName] = Field(default_factory=dict)  # model id -> measured format
    max_new_tokens: int = Field(1024, ge=16)
    openai_base_url: str = "http://127.0.0.1:8080/v1"
    openai_model: str = "default"
    openai_api_key_env: str = "OPENAI_API_KEY"


    def format_for(self, model_id: str) -> str:
        """The reply format a model is asked in: ``reply_format`` unless ``auto``, else the model's
        measured default (``reply_formats``, keyed by the model id's last path component), else json."""
        if self.reply_format != "auto":
            return self.reply_format
        return self.reply_formats.get(model_id.rsplit("/", 1)[-1], "json")


class EngineSection(BaseModel):
    """The vllm backend's server (orchestrator/models/engine.py)."""

    model_config = ConfigDict(extra="forbid")
    base_url: str = ""            # an external vLLM server (http://host:port/v1); empty: start one
    served_model: str = "base"    # its --served-model-name
    model: str = ""               # base model directory; empty: the embedded SmolLM2
    port: int = Field(0, ge=0, le=65535)  # 0: a free port
    max_model_len: int = Field(2048, ge=256)
    max_lora_rank: int = Field(16, ge=1)
    kv_cache_gib: float = Field(2, gt=0)  # CPU build: VLLM_CPU_KVCACHE_SPACE
    startup_timeout_s: float = Field(600, gt=0)
    extra_args: list[str] = Field(default_factory=list)  # more vLLM server flags


class GateSection(BaseModel):
    """The promotion gate and the training plateau (see orchestrator/training/gate.py)."""

    model_config = ConfigDict(extra="forbid")
    split: Literal["heldout", "train", "all"] = "heldout"
    tasks: list[str] = Field(default_factory=list)  # HumanEval ids; empty: the whole split
    noise: float = Field(0.0, ge=-1, le=1)           # promote when new - current >= -noise (paired mean)
    require_significant: bool = False                # promote only when the difference's CI is above 0
    improvement_margin: float = Field(0.0, ge=0, le=1)  # a burst improves only beyond max(margin, CI half-width)
    patience: int = Field(0, ge=0)                   # stop after this many bursts without improvement (0 = never)
    impossible_tasks: int = Field(2, ge=0)           # impossible-task canaries the new adapter also answers;
                                                     # passing any is a proven hack: never promoted


class RoundsSection(BaseModel):
    """Self-improvement rounds over a suite (``rsi run --suite``; orchestrator/agent/rounds.py)."""

    model_config = ConfigDict(extra="forbid")
    suite: str = "bugfix-train+humaneval-train"  # see orchestrator/evaluation/suites.py; '+' joins suites
    seed: int = 0                    # task generation, task order and sampling seeds
    rounds: int = Field(3, ge=1)
    tasks_per_round: int = Field(16, ge=1)
    k: int = Field(4, ge=1)          # candidates per task
    temperature: float = Field(0.8, gt=0)
    max_retries: int = Field(1, ge=0)  # re-asks of a malformed or refused candidate
    concurrency: int = Field(0, ge=0)  # parallel sandboxes (0: the number of cores)
    max_wall_s: float = Field(0, ge=0)  # wall-time budget over the whole run (0: none)
    max_samples: int = Field(0, ge=0)   # budget of generated replies (0: none)
    train: bool = True               # a training burst (and the gate) after each round
    train_steps: int = Field(30, ge=1)
    tests_phase: bool = False        # edge-case tests for each solved task, kept when they kill a mutant
    shuffle: bool = True             # draw tasks in a seeded random order (False: the suite's order)


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: RunSection = RunSection()
    model: ModelSection = ModelSection()
    gate: GateSection = GateSection()
    rounds: RoundsSection = RoundsSection()
    gpu: GpuSection = GpuSection()  # the GPU profile (orchestrator/models/gpu.py)
    engine: EngineSection = EngineSection()

    @classmethod
    def load(cls, path: Path | None = None, **overrides) -> "RunConfig":
        data = tomllib.loads((POLICIES_DIR / "run.toml").read_text())
        if path:
            for section, values in tomllib.loads(Path(path).read_text()).items():
                data.setdefault(section, {}).update(values)
        for key, value in overrides.items():
            if value is not None:
                data.setdefault("run", {})[key] = value
        return cls(**data)
