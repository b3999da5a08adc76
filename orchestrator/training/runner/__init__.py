"""Code that runs inside the trainer container (copied into the image as ``rsi_trainer``).

Inputs (read-only mounts): the samples file, a JSON training config, the base model.
Output (the only writable mount): a PEFT adapter and metrics.json, written atomically.
"""
