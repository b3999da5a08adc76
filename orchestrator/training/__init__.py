"""Training: archived samples -> LoRA adapter -> held-out gate -> served.

launcher.py starts the trainer container, runner/ is the code the trainer image carries (Unsloth /
TRL SFTTrainer), adapters.py is the per-run adapter registry, gate.py the paired promotion gate,
burst.py one training burst (train, register, gate, switch).
"""
