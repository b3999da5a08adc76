"""Training configuration (pydantic), shared by the orchestrator and the trainer image."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    """Conservative defaults for short bursts."""

    model_config = ConfigDict(extra="forbid")
    base_model: str = "SmolLM2-135M-Instruct"  # a directory name under the model mount, or a HF id in the cache
    lora_r: int = Field(16, ge=1, le=256)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    learning_rate: float = Field(2e-4, gt=0, le=1e-2)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(30, ge=-1)  # -1: no cap (epochs decide)
    max_length: int = Field(1024, ge=64)
    batch_size: int = Field(2, ge=1)
    grad_accum: int = Field(1, ge=1)
    seed: int = 3407
    load_in_4bit: bool | None = None   # None: 4-bit on GPU, full precision on CPU
    optim: str | None = None           # None: adamw_8bit on GPU, adamw_torch on CPU
    packing: bool | None = None        # pack samples into rows of max_length (padding-free); None: on GPU
    group_by_length: bool | None = None  # batches of similar lengths (less padding); None: on GPU
    min_samples: int = Field(1, ge=1)
    max_samples: int = Field(100_000, ge=1)
    max_file_bytes: int = Field(256 * 1024 * 1024, ge=1024)
