"""Model backends behind one small interface: ``generate(messages, phase, task) -> str``.

- ``replay``: replies read from a JSONL file (``{"phase", "reply", "task"?}`` per line);
  each request takes the next unused line of its phase (and task, when the line names
  one). When none is left, ``ReplayExhausted`` stops the run cleanly.
- ``openai``: any OpenAI-compatible server (vLLM, llama.cpp server, Ollama), with the
  phase's JSON schema as ``response_format``.
- ``local``: in-process transformers (+ PEFT adapters, swapped without a restart), with
  JSON-schema-constrained decoding by xgrammar. Default model: the embedded SmolLM2.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import requests

from .schema import json_schema

# Decoding-time constraints (stricter than validation, which the policy does): small models
# otherwise spend the token budget on a rambling rationale or repeat list items forever.
RATIONALE_MAX_CHARS = 240
CONTENT_MAX_CHARS = 4000
DECODING_MAX_FILES = 2
# Bounded quantifiers: xgrammar ignores maxLength next to a pattern, so the pattern bounds itself.
PATH_PATTERNS = {"patch": r"^([A-Za-z0-9_]{1,24}/){0,3}[A-Za-z0-9_]{1,40}\.py$",
                 "tests": r"^([A-Za-z0-9_]{1,24}/){0,3}test_gen_[A-Za-z0-9_]{1,40}\.py$"}


class ReplayExhausted(Exception):
    """No recorded reply is left for this phase/task."""


class BackendError(RuntimeError):
    """The model could not be reached or loaded."""


def decoding_schema(phase: str, content_max: int = CONTENT_MAX_CHARS) -> dict:
    """The reply schema tightened for constrained decoding: short rationale, few files,
    paths of the phase's allowed shape, bounded content."""
    schema = copy.deepcopy(json_schema(phase))
    schema["properties"]["rationale"]["maxLength"] = RATIONALE_MAX_CHARS
    files = schema["properties"]["edits" if phase == "patch" else "tests"]
    files["maxItems"] = DECODING_MAX_FILES
    edit = schema["$defs"]["FileEdit"]["properties"]
    edit["path"]["pattern"] = PATH_PATTERNS[phase]
    edit["content"]["maxLength"] = content_max
    return schema


def portable_schema(phase: str) -> dict:
    """For servers' own grammar engines (llama.cpp, vLLM...): ``$defs`` inlined, no length
    bounds or patterns (llama.cpp expands ``maxLength`` into a grammar too large to load);
    ``max_tokens`` bounds the reply instead, and the policy checks paths after."""
    schema = decoding_schema(phase)
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]]))
            return {k: walk(v) for k, v in node.items()
                    if k not in ("title", "description", "maxLength", "pattern")}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


class Backend:
    name = "base"
    model_id = "unknown"
    adapter_id: str | None = None

    def generate(self, messages: list[dict], phase: str, task: str | None = None, seed: int | None = None) -> str:
        """One reply. ``seed``: sample (reproducibly) instead of decoding greedily, where supported."""
        raise NotImplementedError

    def snapshot(self) -> dict:
        """Serializable position (for resume)."""
        return {}

    def restore(self, snapshot: dict) -> None:
        pass

    def load_adapter(self, path: Path | None, adapter_id: str | None) -> None:
        raise BackendError(f"the {self.name} backend cannot load adapters")


class ReplayBackend(Backend):
    name = "replay"

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.model_id = f"replay:{self.path.name}"
        self.lines: list[dict] = []
        with open(self.path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                obj = json.loads(line)
                if obj.get("phase") not in ("patch", "tests") or not isinstance(obj.get("reply"), str):
                    raise ValueError(f"{self.path}:{n}: each line needs phase patch|tests and a string reply")
                self.lines.append(obj)
        self.used: set[int] = set()

    def generate(self, messages, phase, task=None, seed=None):
        for i, obj in enumerate(self.lines):
            if i in self.used or obj["phase"] != phase:
                continue
            if obj.get("task") is not None and task is not None and obj["task"] != task:
                continue
            self.used.add(i)
            return obj["reply"]
        raise ReplayExhausted(f"no {phase} reply left" + (f" for task {task}" if task else ""))

    def snapshot(self):
        return {"used": sorted(self.used)}

    def restore(self, snapshot):
        self.used = set(snapshot.get("used", []))


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, max_tokens: int = 1024,
                 temperature: float = 0.0, timeout_s: float = 300):
        self.base_url = base_url.rstrip("/")
        self.model_id = model
        self.api_key = api_key
        self.max_tokens, self.temperature, self.timeout_s = max_tokens, temperature, timeout_s
        self.format_style = "json_schema"  # falls back to json_object + schema when the server asks

    def _response_format(self, phase: str) -> dict:
        schema = portable_schema(phase)
        if self.format_style == "json_object":  # llama-cpp-python's server extension
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": f"{phase}_reply", "schema": schema, "strict": True}}

    def _post(self, body: dict) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            return requests.post(f"{self.base_url}/chat/completions", json=body, headers=headers,
                                 timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise BackendError(f"cannot reach {self.base_url}: {exc}") from exc

    def generate(self, messages, phase, task=None, seed=None):
        body = {"model": self.model_id, "messages": messages, "max_tokens": self.max_tokens,
                "temperature": self.temperature if seed is None else max(self.temperature, 0.8),
                "response_format": self._response_format(phase)}
        if seed is not None:
            body["seed"] = seed
        resp = self._post(body)
        if (resp.status_code in (400, 422, 500) and "response_format" in resp.text
                and self.format_style == "json_schema"):
            self.format_style = "json_object"  # the server knows only json_object (+ schema): remember
            resp = self._post(body | {"response_format": self._response_format(phase)})
        if resp.status_code != 200:
            raise BackendError(f"{self.base_url} answered {resp.status_code}: {resp.text[:300]}")
        try:
            return resp.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BackendError(f"unexpected answer from {self.base_url}: {resp.text[:300]}") from exc


class LocalBackend(Backend):
    """transformers + PEFT in process; greedy decoding constrained by xgrammar."""

    name = "local"

    def __init__(self, model_dir: Path | str, model_id: str, max_new_tokens: int = 768, threads: int | None = None,
                 retry_temperature: float = 0.8):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.model_dir = Path(model_dir)
        self.model_id = model_id
        self.max_new_tokens = max_new_tokens
        self.retry_temperature = retry_temperature
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.base = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
        self.base.eval()
        self.model = self.base
        self._grammars: dict[str, object] = {}
        self._stop_ids: list[int] = []
        self.last_tokens = 0

    def _grammar(self, phase: str):
        import xgrammar as xgr

        if phase not in self._grammars:
            info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.base.config.vocab_size)
            self._stop_ids = sorted(set(info.stop_token_ids) | {self.tokenizer.eos_token_id})
            # content cap from the token budget, so a reply can close within it
            content_max = max(256, self.max_new_tokens * 2 // DECODING_MAX_FILES)
            self._grammars[phase] = xgr.GrammarCompiler(info).compile_json_schema(
                json.dumps(decoding_schema(phase, content_max)), any_whitespace=False)
        return self._grammars[phase]

    def generate(self, messages, phase, task=None, seed=None):
        import torch
        import xgrammar as xgr

        inputs = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True)
        processor = xgr.contrib.hf.LogitsProcessor(self._grammar(phase))
        # First attempt greedy; a retry (the conversation holds a rejected reply) samples, so it
        # can differ, with a seed taken from the messages, so a replayed step gives the same text.
        retry = any(m["role"] == "assistant" for m in messages)
        sampling = {"do_sample": False}
        if retry or seed is not None:
            digest = int(hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:8], 16)
            torch.manual_seed(digest + (seed or 0))
            sampling = {"do_sample": True, "temperature": self.retry_temperature, "top_p": 0.95}
        with torch.inference_mode():  # stop on the grammar's stop tokens, not only the model's EOS
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **sampling,
                                      logits_processor=[processor], eos_token_id=self._stop_ids,
                                      pad_token_id=self.tokenizer.eos_token_id)
        new = out[0, inputs["input_ids"].shape[1]:]
        self.last_tokens = int(new.shape[0])
        return self.tokenizer.decode(new, skip_special_tokens=True)

    def load_adapter(self, path, adapter_id):
        """Switch to a PEFT adapter (or back to the base with ``path=None``) without a restart.
        PEFT injects LoRA layers into the base module in place, so they are unloaded first."""
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.base = self.model.unload()
        self.model, self.adapter_id = self.base, None
        if path is not None:
            self.model = PeftModel.from_pretrained(self.base, str(path))
            self.model.eval()
            self.adapter_id = adapter_id


def make_backend(name: str, config, replies: Path | None = None) -> Backend:
    """Build the backend a run asked for (``config`` is a RunConfig)."""
    import os

    if name == "replay":
        if replies is None:
            raise BackendError("the replay backend needs --replies FILE")
        return ReplayBackend(replies)
    if name == "openai":
        m = config.model
        return OpenAIBackend(m.openai_base_url, m.openai_model, os.environ.get(m.openai_api_key_env))
    if name == "local":
        from .embedded_model import MODEL_ID, ensure_converted

        try:
            path = ensure_converted()
        except (FileNotFoundError, ImportError) as exc:
            raise BackendError(f"embedded model unavailable: {exc}") from exc
        return LocalBackend(path, MODEL_ID, max_new_tokens=config.model.max_new_tokens)
    raise BackendError(f"unknown backend {name!r} (local, openai, replay)")
