"""Adapter registry in a run directory: ``adapters/vNNNN/`` plus ``adapters/registry.json``.

Each adapter directory holds the PEFT files, the trainer's ``metrics.json`` and ``meta.json``
(parent adapter, base model, config, data digest, sample count, score, decision). Training
never changes what is current; ``record_decision`` stores the gate's verdict (gate.py) and
promotes the adapter when the gate says so (otherwise it is kept, not promoted).
``rollback`` returns to the adapter that was current before the last promotion.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field

from orchestrator.protocol.workspace import atomic_write

BASE = "base"  # the base model without an adapter
UNVERIFIABLE = "unverifiable"  # weights_sha256 of an adapter whose files failed check_adapter_dir at registration


class AdapterRefused(RuntimeError):
    """An adapter that must not be served: a corrupted directory, or one the engine failed to serve."""


# What a plain LoRA adapter (the trainer's) may say beyond rank, alpha and targets: anything else in
# adapter_config.json changes what loading it does (PiSSA/OLoRA-style inits rewrite the base weights in
# place under PEFT, modules_to_save replaces whole modules, DoRA, bias, layer replication, per-layer
# patterns): refused, as vLLM 0.32 refuses most of them.
PLAIN_INITS = (True, False, "gaussian")


def config_features(config: dict) -> list[str]:
    """The features of ``config`` a plain LoRA adapter never uses (empty: a plain one)."""
    odd = []
    if config.get("peft_type", "LORA") != "LORA":
        odd.append(f"peft_type {config.get('peft_type')!r}")
    if config.get("init_lora_weights", True) not in PLAIN_INITS:
        odd.append(f"init_lora_weights {config.get('init_lora_weights')!r}")
    for key in ("modules_to_save", "layer_replication", "rank_pattern", "alpha_pattern", "layers_to_transform"):
        if config.get(key):
            odd.append(key)
    if config.get("use_dora"):
        odd.append("use_dora")
    if config.get("bias", "none") != "none":
        odd.append(f"bias {config.get('bias')!r}")
    return odd


def check_adapter_dir(path: Path, max_rank: int | None = None) -> str:
    """Refuse a corrupted PEFT adapter directory before any engine sees it; returns the weights'
    SHA-256. Checks: adapter_config.json is JSON with a LoRA rank (within ``max_rank``) and target
    modules; adapter_model.safetensors has a readable header whose tensors end exactly at the end
    of the file (a truncated or padded file is refused)."""
    path = Path(path)
    name = path.name
    if not path.is_dir():
        raise AdapterRefused(f"adapter {name}: no directory {path}")
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise AdapterRefused(f"adapter {name}: unreadable adapter_config.json ({exc.__class__.__name__})") from exc
    rank = config.get("r") if isinstance(config, dict) else None
    if not isinstance(rank, int) or rank < 1 or not config.get("target_modules"):
        raise AdapterRefused(f"adapter {name}: adapter_config.json has no LoRA rank or target modules")
    odd = config_features(config)
    if odd:
        raise AdapterRefused(f"adapter {name}: adapter_config.json asks for {odd[0]}, which a plain LoRA adapter "
                             "never does (it could change the base model's weights when loaded): refused")
    if max_rank is not None and rank > max_rank:
        raise AdapterRefused(f"adapter {name}: LoRA rank {rank} exceeds the engine's maximum {max_rank}")
    weights = path / "adapter_model.safetensors"
    try:
        data = weights.read_bytes()
    except OSError as exc:
        raise AdapterRefused(f"adapter {name}: no readable adapter_model.safetensors") from exc
    try:
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + size]) if len(data) >= 8 + size and size > 0 else None
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
        if not all(type(e) is int and e >= 0 for e in ends):
            raise ValueError("offsets must be whole numbers")
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        header, ends = None, []
    if not header or not ends:
        raise AdapterRefused(f"adapter {name}: adapter_model.safetensors has no readable tensor header")
    if 8 + size + max(ends) != len(data):
        raise AdapterRefused(f"adapter {name}: adapter_model.safetensors is {len(data)} bytes, its header "
                             f"says {8 + size + max(ends)} (truncated or corrupted)")
    return hashlib.sha256(data).hexdigest()


def adapter_digest(path: Path, max_rank: int | None = None) -> str:
    """SHA-256 over an adapter's weights and its adapter_config.json (its rank, alpha and targets
    change what the weights do), after ``check_adapter_dir``'s checks."""
    weights = check_adapter_dir(path, max_rank)
    config = hashlib.sha256((Path(path) / "adapter_config.json").read_bytes()).hexdigest()
    return hashlib.sha256(f"{weights}\n{config}\n".encode()).hexdigest()


class AdapterMeta(BaseModel):
    id: str
    parent: str | None
    base_model: str
    config: dict = Field(default_factory=dict)
    data_sha256: str = ""
    weights_sha256: str = ""  # adapter_digest at registration: what every later load must still find
    samples: int = 0
    metrics: dict = Field(default_factory=dict)
    score: float | None = None
    parent_score: float | None = None
    promoted: bool = False
    decision: str = ""
    comparison: dict = Field(default_factory=dict)  # the gate's paired comparison (gate.compare)
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


def private_to_us(folder: Path) -> None:
    """Take group and other write access off a folder this run writes (a run directory made under
    umask 002 would let the group move its adapters around)."""
    os.chmod(folder, stat.S_IMODE(os.stat(folder).st_mode) & ~0o022)


def _owned_all_the_way(root: Path, adapter_id: str) -> None:
    """The registry's folder and every folder above it belong to us or root and no one else can write
    them (a sticky, root-owned folder such as /tmp counts as safe): otherwise another user could move a
    different version folder in under this name, or swap one between the check and the engine's read."""
    me = os.geteuid()
    here = Path(os.path.abspath(root))
    for folder in [here, *here.parents]:
        st = os.lstat(folder)
        sticky_root = st.st_uid == 0 and st.st_mode & stat.S_ISVTX
        if stat.S_ISLNK(st.st_mode) or st.st_uid not in (me, 0) or (st.st_mode & 0o022 and not sticky_root):
            raise AdapterRefused(f"adapter {adapter_id}: {folder} can be changed by another user: refused")


class Registry:
    def __init__(self, run_dir: Path | str):
        self.root = Path(run_dir) / "adapters"
        self.file = self.root / "registry.json"

    def _load(self) -> dict:
        if self.file.exists():
            return json.loads(self.file.read_text())
        return {"current": None, "history": []}

    def _store(self, data: dict) -> None:
        self._make_root()
        atomic_write(self.file, json.dumps(data, indent=2).encode())

    def current(self) -> str | None:
        return self._load()["current"]

    def path(self, adapter_id: str) -> Path:
        return self.root / adapter_id

    def _make_root(self) -> None:
        """The registry's folder, 0755 whatever the umask (a group-writable one would let the group move
        version folders around: ``checked_path`` refuses that)."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)

    def checked_path(self, adapter_id: str | None) -> Path | None:
        """The adapter's directory for a load, after proving it is the one registered: its files digest to
        the ``weights_sha256`` recorded at registration, and neither it nor a file in it can be written by
        another user. Anything else raises AdapterRefused (a swap on disk is never served)."""
        if adapter_id is None or adapter_id == BASE:
            return None
        path = self.path(adapter_id)
        _owned_all_the_way(self.root, adapter_id)
        meta = self.meta(adapter_id)
        if meta.id != adapter_id:
            raise AdapterRefused(f"adapter {adapter_id}: its folder holds the record of {meta.id}: refused")
        if not meta.weights_sha256:
            raise AdapterRefused(f"adapter {adapter_id}: no digest was recorded when it was registered: refused")
        for p in [path, *path.iterdir()] if path.is_dir() else [path]:
            st = os.lstat(p)
            if st.st_uid != os.geteuid() or st.st_mode & 0o022 or os.path.islink(p):
                raise AdapterRefused(f"adapter {adapter_id}: {p.name} is writable by another user, or not ours: "
                                     "refused")
        if meta.weights_sha256 == UNVERIFIABLE:
            raise AdapterRefused(f"adapter {adapter_id}: its files could not be verified when it was registered")
        if meta.weights_sha256 and adapter_digest(path) != meta.weights_sha256:
            raise AdapterRefused(f"adapter {adapter_id}: its files changed since it was registered: refused")
        return path

    def meta(self, adapter_id: str) -> AdapterMeta:
        return AdapterMeta.model_validate_json((self.path(adapter_id) / "meta.json").read_text())

    def list(self) -> list[AdapterMeta]:
        if not self.root.exists():
            return []
        out = []
        for p in sorted(self.root.glob("v[0-9][0-9][0-9][0-9]")):
            try:
                out.append(self.meta(p.name))
            except (OSError, ValueError):  # a folder without a readable record is not an adapter
                continue
        return out

    def staging_dir(self) -> Path:
        """A fresh directory for the trainer to write into."""
        self._make_root()
        staging = self.root / ".staging"
        shutil.rmtree(staging, ignore_errors=True)
        return staging

    def register(self, trained_dir: Path, base_model: str, config: dict, metrics: dict) -> AdapterMeta:
        """Move a finished training output in as the next version (not promoted)."""
        self._make_root()
        existing = [int(p.name[1:]) for p in self.root.glob("v[0-9][0-9][0-9][0-9]")]
        adapter_id = f"v{max(existing, default=0) + 1:04d}"
        target = self.path(adapter_id)
        os.replace(trained_dir, target)
        os.chmod(target, 0o755)  # ours; nobody else writes here (the trainer's files were copied out as ours)
        try:
            digest = adapter_digest(target)
        except Exception:  # noqa: BLE001 - whatever the files are, they were not verified
            digest = UNVERIFIABLE  # registered (the gate and the audit name it), never loaded
        meta = AdapterMeta(id=adapter_id, parent=self.current(), base_model=base_model, config=config,
                           data_sha256=metrics.get("data_sha256", ""), samples=metrics.get("samples", 0),
                           weights_sha256=digest, metrics={k: v for k, v in metrics.items() if k != "config"})
        self._write_meta(meta)
        return meta

    def _write_meta(self, meta: AdapterMeta) -> None:
        atomic_write(self.path(meta.id) / "meta.json", meta.model_dump_json(indent=2).encode())

    def record_decision(self, adapter_id: str, promote: bool, decision: str, score: float | None,
                        parent_score: float | None, comparison: dict | None = None) -> AdapterMeta:
        """Write the gate's verdict into the adapter's meta and promote it when the gate says so."""
        meta = self.meta(adapter_id)
        meta.score, meta.parent_score, meta.decision = score, parent_score, decision
        meta.comparison = comparison or {}
        if promote:
            self._write_meta(meta)
            self.promote(adapter_id)
            meta.promoted = True
        self._write_meta(meta)
        return meta

    def promote(self, adapter_id: str) -> None:
        if adapter_id != BASE and not (self.path(adapter_id) / "adapter_config.json").exists():
            raise KeyError(f"no adapter {adapter_id}")
        data = self._load()
        data["history"].append({"from": data["current"], "to": None if adapter_id == BASE else adapter_id,
                                "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        data["current"] = None if adapter_id == BASE else adapter_id
        self._store(data)

    def rollback(self) -> str | None:
        """Make current the adapter that was current before the last promotion; returns it."""
        data = self._load()
        if not data["history"]:
            raise LookupError("nothing to roll back")
        last = data["history"].pop()
        data["current"] = last["from"]
        data.setdefault("rollbacks", []).append({"from": last["to"], "to": last["from"],
                                                 "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        self._store(data)
        return data["current"]
