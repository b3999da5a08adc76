"""Base models for training on a workstation: fill the host's Hugging Face cache, resolve from it.

``rsi models pull MODEL`` downloads a model into the local Hugging Face cache (the only step
that touches the network); training and evaluation then resolve the model from that cache
with ``local_files_only`` and mount the snapshot read-only into the trainer container.
"""

from __future__ import annotations

from pathlib import Path


class ModelUnavailable(RuntimeError):
    pass


def pull(model_id: str) -> Path:
    """Download ``model_id`` into the Hugging Face cache; returns the snapshot directory."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=model_id))
    except Exception as exc:  # noqa: BLE001 - network, auth, unknown repo: one clear message
        raise ModelUnavailable(f"could not download {model_id}: {type(exc).__name__}: {str(exc)[:200]}") from exc


def resolve(model: str) -> Path:
    """A local directory as is, else a model id from the Hugging Face cache (never downloads)."""
    path = Path(model)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=model, local_files_only=True))
    except Exception as exc:  # noqa: BLE001
        raise ModelUnavailable(f"{model} is not in the local Hugging Face cache; run `rsi models pull {model}` "
                               "on a machine with network access first") from exc
