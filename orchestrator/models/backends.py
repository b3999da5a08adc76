"""Model backends behind one small interface: ``generate(messages, phase, task) -> str``.

- ``replay``: replies read from a JSONL file (``{"phase", "reply", "task"?}`` per line);
  each request takes the next unused line of its phase (and task, when the line names
  one). When none is left, ``ReplayExhausted`` stops the run cleanly.
- ``openai``: any OpenAI-compatible server (vLLM, llama.cpp server, Ollama), with the
  phase's JSON schema as ``response_format``.
- ``vllm``: a vLLM server (managed by engine.py, or external with a base URL): the same
  OpenAI API plus runtime LoRA loading (each adapter under a versioned name, switched to only
  after a load probe) and batched sampling (one request with ``n``).
- ``local``: in-process transformers (+ PEFT adapters, swapped without a restart), with
  JSON-schema-constrained decoding by xgrammar. Default model: the embedded SmolLM2. The
  fallback where vLLM cannot be installed.

``auto`` (the default) is ``vllm`` where its venv exists, else ``local``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import requests

from orchestrator.protocol.reply_format import JSON, ReplyFormat, has_closed_block, through_first_block
from orchestrator.protocol.schema import json_schema
from orchestrator.training.adapters import AdapterRefused, adapter_digest, check_adapter_dir  # noqa: F401

# Decoding-time constraints (stricter than validation, which the policy does): small models
# otherwise spend the token budget on a rambling rationale or repeat list items forever.
RATIONALE_MAX_CHARS = 240
CONTENT_MAX_CHARS = 4000
DECODING_MAX_FILES = 2
# Bounded quantifiers: xgrammar ignores maxLength next to a pattern, so the pattern bounds itself.
def path_pattern(phase: str) -> str:
    """The decoder's path pattern for a phase; generated tests' prefix comes from the policy."""
    from orchestrator.protocol.policy import generated_test_prefix

    prefix = re.escape(generated_test_prefix()) if phase == "tests" else ""
    return r"^([A-Za-z0-9_]{1,24}/){0,3}" + prefix + r"[A-Za-z0-9_]{1,40}\.py$"


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
    edit["path"]["pattern"] = path_pattern(phase)
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
    # What the backend can do: "adapters" (hot-loads LoRA adapters: training is allowed),
    # "batching" (generate_many is one batched request), "seeds" (reproducible sampling).
    capabilities: frozenset[str] = frozenset()
    # The model's preferred reply format ("json" | "code", from [model] in run.toml; make_backend
    # sets it). Callers turn it into each request's format (reply_format.for_request) and pass that
    # as ``fmt``: the JSON format decodes under the reply schema's grammar, the code format freely.
    reply_format: str = "json"

    def generate(self, messages: list[dict], phase: str, task: str | None = None, seed: int | None = None,
                 fmt: ReplyFormat = JSON) -> str:
        """One reply. ``seed``: sample (reproducibly) instead of decoding greedily, where supported."""
        raise NotImplementedError

    def generate_many(self, messages: list[dict], phase: str, task: str | None = None, n: int = 1,
                      temperature: float = 0.8, seed: int | None = None, fmt: ReplyFormat = JSON) -> list[str]:
        """``n`` replies to one prompt. Here: ``generate`` n times with seeds seed+i (greedy when
        n == 1 and no seed); backends with "batching" send them as one batch."""
        if n == 1 and seed is None:
            return [self.generate(messages, phase, task, fmt=fmt)]
        return [self.generate(messages, phase, task, seed=(seed or 0) + i, fmt=fmt) for i in range(n)]

    def snapshot(self) -> dict:
        """Serializable position (for resume)."""
        return {}

    def restore(self, snapshot: dict) -> None:
        pass

    def load_adapter(self, path: Path | None, adapter_id: str | None) -> None:
        """Serve ``path`` as ``adapter_id`` (None: the base model). Raises AdapterRefused (and
        stays on the current model) when the adapter is corrupted or not served."""
        raise BackendError(f"the {self.name} backend cannot load adapters")

    def close(self) -> None:
        """Release what the backend started (a managed server)."""


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

    def generate(self, messages, phase, task=None, seed=None, fmt=JSON):
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

    def _request_model(self) -> str:
        return self.model_id

    def generate(self, messages, phase, task=None, seed=None, fmt=JSON):
        body = {"model": self._request_model(), "messages": messages, "max_tokens": self.max_tokens,
                "temperature": self.temperature if seed is None else max(self.temperature, 0.8)}
        if fmt.name == "json":
            body["response_format"] = self._response_format(phase)
        if seed is not None:
            body["seed"] = seed
        resp = self._post(body)
        if (fmt.name == "json" and resp.status_code in (400, 422, 500) and "response_format" in resp.text
                and self.format_style == "json_schema"):
            self.format_style = "json_object"  # the server knows only json_object (+ schema): remember
            resp = self._post(body | {"response_format": self._response_format(phase)})
        if resp.status_code != 200:
            raise BackendError(f"{self.base_url} answered {resp.status_code}: {resp.text[:300]}")
        try:
            text = resp.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BackendError(f"unexpected answer from {self.base_url}: {resp.text[:300]}") from exc
        return through_first_block(text) if fmt.name == "code" else text


PROBE_MESSAGES = [{"role": "user", "content": "Write a Python function that returns the sum of a list of numbers."}]
PROBE_TOKENS = 16
PROBE_TOLERANCE = 1e-3  # logprob difference that counts as "differs" (well above the engine's rounding)
# The same name loaded again: its probe (same tokens, logprobs within this) as at its first load, in one
# of IDENTITY_TRIES probes (the CPU engine gave identical probes over 3 reloads).
IDENTITY_TOLERANCE = 0.05
IDENTITY_TRIES = 3


class VLLMBackend(OpenAIBackend):
    """A vLLM server (engine.Engine, or external): OpenAI API, runtime LoRA, batched sampling.

    Adapters are loaded under a versioned, content-addressed name (``v0003-<digest>``, the SHA-256
    of the weights and adapter_config.json), never re-loaded in place, and served only after two
    checks: the engine's listing (``/v1/models``) must show that name loaded from this adapter's
    directory, and a load probe (the fixed ``PROBE_MESSAGES``, greedy) must give tokens or logprobs
    that differ from the base model's and from the model it replaces; a name loaded again must give
    the probe it gave the first time (the same name is the same weights). A refused adapter is
    unloaded again and the backend stays on the current model. Switching away from an adapter
    (rollback, a gate that keeps the current model) unloads it. Every request carries the server's
    key (``api_key``; engine.py: the managed server's, else ``RSI_VLLM_API_KEY``).
    """

    name = "vllm"
    capabilities = frozenset({"adapters", "batching", "seeds"})

    def __init__(self, base_url: str, model_id: str, served_model: str = "base", engine=None,
                 max_tokens: int = 1024, max_lora_rank: int = 16, model_dir: Path | None = None,
                 timeout_s: float = 900, api_key: str | None = None):
        super().__init__(base_url, served_model, api_key=api_key, max_tokens=max_tokens, timeout_s=timeout_s)
        self.model_id, self.served_model, self.engine = model_id, served_model, engine
        self.max_lora_rank, self.model_dir = max_lora_rank, model_dir
        self.served: str | None = None   # the engine's name of the current adapter (None: base)
        self.loaded: set[str] = set()    # adapter names this backend loaded into the engine
        self.probes: dict[str, tuple] = {}
        self.verified: set[str] = set()  # adapters that passed a probe against the model they replaced
        self.fingerprints: dict[str, tuple] = {}  # each name's probe at its first load
        self.last_tokens = 0
        # the served model's extra request fields and reply parsing (gpt-oss: orchestrator/models/gpu.py)
        self.request_options: dict = {}
        self.reply_of = lambda message: message["content"] or ""

    @property
    def root_url(self) -> str:
        return self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url

    def _request_model(self) -> str:
        return self.served or self.served_model

    def _response_format(self, phase: str) -> dict:
        # vLLM's grammar engine (xgrammar) honours the decoding bounds, as the local backend's does
        content_max = max(256, self.max_tokens * 2 // DECODING_MAX_FILES)
        return {"type": "json_schema", "json_schema": {"name": f"{phase}_reply", "strict": True,
                                                       "schema": decoding_schema(phase, content_max)}}

    def _chat(self, body: dict) -> dict:
        resp = self._post(body)
        if resp.status_code == 401:
            raise BackendError(f"{self.base_url} answered 401: it needs its key in RSI_VLLM_API_KEY "
                               "(`rsi serve` prints it once)" + ("; the one given is wrong" if self.api_key else ""))
        if resp.status_code != 200:
            raise BackendError(f"{self.base_url} answered {resp.status_code}: {resp.text[:300]}")
        try:
            out = resp.json()
            self.last_tokens = int(out.get("usage", {}).get("completion_tokens", 0))
            return out
        except ValueError as exc:
            raise BackendError(f"unexpected answer from {self.base_url}: {resp.text[:300]}") from exc

    def generate(self, messages, phase, task=None, seed=None, fmt=JSON):
        """Greedy, or sampled at temperature 0.8 with ``seed``."""
        return self.generate_many(messages, phase, task, n=1, temperature=0.0 if seed is None else 0.8, seed=seed,
                                  fmt=fmt)[0]

    def generate_many(self, messages, phase, task=None, n=1, temperature=0.8, seed=None, fmt=JSON):
        """``n`` replies in one request (vLLM batches them); greedy when n == 1 and temperature 0."""
        if n < 1:
            raise ValueError("n must be at least 1")
        if n > 1 and temperature <= 0:
            raise ValueError("n > 1 samples need temperature > 0 (greedy decoding gives one reply)")
        body = {"model": self._request_model(), "messages": messages, "max_tokens": self.max_tokens, "n": n,
                "temperature": temperature}
        if fmt.name == "json":
            body["response_format"] = self._response_format(phase)
        if seed is not None:
            body["seed"] = seed
        out = self._chat({k: v for k, v in (body | self.request_options).items() if v is not None})  # None: drop
        try:
            replies = [self.reply_of(c["message"]) for c in sorted(out["choices"], key=lambda c: c["index"])]
        except (KeyError, TypeError) as exc:
            raise BackendError(f"unexpected answer from {self.base_url}: {str(out)[:300]}") from exc
        # code: the reply ends with its first complete block, as the local backend stops decoding there
        return [through_first_block(r) for r in replies] if fmt.name == "code" else replies

    # ----- adapters -----
    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _admin(self, action: str, body: dict) -> requests.Response:
        try:
            return requests.post(f"{self.base_url}/{action}_lora_adapter", json=body, headers=self.headers,
                                 timeout=120)
        except requests.RequestException as exc:
            raise BackendError(f"cannot reach {self.base_url}: {exc}") from exc

    def listing(self) -> dict[str, dict]:
        """The engine's models (``/v1/models``) by name: an adapter's card names the directory it was
        loaded from (``root``) and its base (``parent``)."""
        try:
            resp = requests.get(f"{self.base_url}/models", headers=self.headers, timeout=60)
        except requests.RequestException as exc:
            raise BackendError(f"cannot reach {self.base_url}: {exc}") from exc
        if resp.status_code != 200:
            raise BackendError(f"{self.base_url}/models answered {resp.status_code}: {resp.text[:200]}")
        try:
            return {card["id"]: card for card in resp.json()["data"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"unexpected model listing from {self.base_url}: {resp.text[:200]}") from exc

    def _listed_root(self, name: str) -> str | None:
        card = self.listing().get(name)
        return None if card is None else str(card.get("root"))

    def _check_listed(self, name: str, where: str, adapter_id: str) -> None:
        """The engine serves ``name`` from ``where`` on this backend's base model."""
        card = self.listing().get(name)
        if card is None or str(card.get("root")) != where or card.get("parent") != self.served_model:
            shown = "not listed" if card is None else f"listed from {card.get('root')} on {card.get('parent')}"
            raise AdapterRefused(f"adapter {adapter_id} refused: the engine's {name} is {shown}, not {where} "
                                 f"on {self.served_model}")

    def _unload(self, name: str) -> None:
        self._admin("unload", {"lora_name": name})  # 404 (not loaded) is fine
        self.loaded.discard(name)

    def probe(self, name: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
        """Greedy tokens and their logprobs for the fixed probe prompt under ``name`` (cached until
        the name is loaded again: names are content-addressed)."""
        if name not in self.probes:
            out = self._chat({"model": name, "messages": PROBE_MESSAGES, "max_tokens": PROBE_TOKENS,
                              "temperature": 0, "logprobs": True})
            try:
                content = out["choices"][0]["logprobs"]["content"]
            except (KeyError, IndexError, TypeError) as exc:
                raise BackendError(f"the engine returned no logprobs for the load probe: {str(out)[:200]}") from exc
            self.probes[name] = (tuple(t["token"] for t in content), tuple(float(t["logprob"]) for t in content))
        return self.probes[name]

    @staticmethod
    def probes_differ(a: tuple, b: tuple, tolerance: float = PROBE_TOLERANCE) -> bool:
        if a[0] != b[0]:
            return True
        return any(abs(x - y) > tolerance for x, y in zip(a[1], b[1]))

    def _verify(self, name: str, adapter_id: str) -> None:
        """Against the base model always; against the model it replaces on its first load; a
        re-load (e.g. back to the previous adapter after a gate) against its own first probe."""
        self.probes.pop(name, None)
        new = self.probe(name)
        first, tries = self.fingerprints.get(name), IDENTITY_TRIES
        while first is not None and self.probes_differ(new, first, IDENTITY_TOLERANCE):
            tries -= 1
            if not tries:
                raise AdapterRefused(f"adapter {adapter_id} refused: its load probe differs from the one {name} "
                                     "gave when first loaded, so the engine serves other weights under that name")
            self.probes.pop(name, None)  # once more: a GPU batching other requests alongside can shift logprobs
            new = self.probe(name)
        against = [("the base model", self.served_model)]
        if self.served and name not in self.verified:
            against.append((f"the current adapter {self.adapter_id}", self.served))
        for what, other in against:
            if not self.probes_differ(new, self.probe(other)):
                raise AdapterRefused(f"adapter {adapter_id} refused: its load probe (greedy tokens and logprobs "
                                     f"on a fixed prompt) equals {what}'s, so the engine does not serve its weights")
        self.verified.add(name)
        self.fingerprints.setdefault(name, new)

    def load_adapter(self, path, adapter_id):
        if path is None:
            self._switch(None, None)
            return
        name = f"{adapter_id}-{adapter_digest(path, self.max_lora_rank)[:16]}"
        where = str(Path(path).resolve())
        if name not in self.loaded:
            resp = self._admin("load", {"lora_name": name, "lora_path": where})
            if resp.status_code != 200 and "already" in resp.text and self._listed_root(name) != where:
                self._unload(name)  # loaded from elsewhere (a copy): this backend serves only what it checked
                resp = self._admin("load", {"lora_name": name, "lora_path": where})
            if resp.status_code != 200 and "already" not in resp.text:
                raise AdapterRefused(f"adapter {adapter_id} refused: the engine could not load it "
                                     f"({resp.status_code}: {resp.text[:200]})")
            self.loaded.add(name)
            try:
                self._check_listed(name, where, adapter_id)
                self._verify(name, adapter_id)
            except BaseException:
                self._unload(name)
                raise
        self._switch(name, adapter_id)

    def _switch(self, name: str | None, adapter_id: str | None) -> None:
        old = self.served
        self.served, self.adapter_id = name, adapter_id
        if old and old != name:
            self._unload(old)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.stop()


class LocalBackend(Backend):
    """transformers + PEFT in process; greedy decoding, constrained by xgrammar for JSON replies;
    a code-block reply stops at the end of its first complete fenced block."""

    name = "local"
    capabilities = frozenset({"adapters", "seeds"})

    def __init__(self, model_dir: Path | str, model_id: str, max_new_tokens: int = 768, threads: int | None = None,
                 retry_temperature: float = 0.8, dtype: str = "float32"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.model_dir = Path(model_dir)
        self.model_id = model_id
        self.max_new_tokens = max_new_tokens
        self.retry_temperature = retry_temperature
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.base = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=getattr(torch, dtype))
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

    def _constraints(self, phase: str, fmt: ReplyFormat, prompt_len: int) -> dict:
        """JSON: the reply schema's grammar (and its stop tokens); code: stop after the first
        complete fenced block (what follows it is prose the reply does not need)."""
        import xgrammar as xgr
        from transformers import StoppingCriteria, StoppingCriteriaList

        if fmt.name == "json":
            processor = xgr.contrib.hf.LogitsProcessor(self._grammar(phase))
            return {"logits_processor": [processor], "eos_token_id": self._stop_ids}
        tokenizer = self.tokenizer

        class BlockClosed(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                last = tokenizer.decode(input_ids[0, -1:])
                if "`" not in last and "~" not in last:
                    return False
                return has_closed_block(tokenizer.decode(input_ids[0, prompt_len:], skip_special_tokens=True))

        eos = self.base.generation_config.eos_token_id
        stops = sorted({self.tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None})
        return {"stopping_criteria": StoppingCriteriaList([BlockClosed()]), "eos_token_id": stops}

    def generate(self, messages, phase, task=None, seed=None, fmt=JSON):
        import torch

        inputs = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True)
        constraints = self._constraints(phase, fmt, inputs["input_ids"].shape[1])
        # First attempt greedy; a retry (the conversation holds a rejected reply) samples, so it
        # can differ, with a seed taken from the messages, so a replayed step gives the same text.
        retry = any(m["role"] == "assistant" for m in messages)
        sampling = {"do_sample": False}
        if retry or seed is not None:
            digest = int(hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:8], 16)
            torch.manual_seed(digest + (seed or 0))
            sampling = {"do_sample": True, "temperature": self.retry_temperature, "top_p": 0.95}
        with torch.inference_mode():  # JSON: stop on the grammar's stop tokens, not only the model's EOS
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **sampling, **constraints,
                                      pad_token_id=self.tokenizer.eos_token_id)
        new = out[0, inputs["input_ids"].shape[1]:]
        self.last_tokens = int(new.shape[0])
        return self.tokenizer.decode(new, skip_special_tokens=True)

    def load_adapter(self, path, adapter_id):
        """Switch to a PEFT adapter (or back to the base with ``path=None``) without a restart.
        PEFT injects LoRA layers into the base module in place, so they are unloaded first."""
        from peft import PeftModel

        if path is not None:
            check_adapter_dir(path)  # a corrupted directory is refused before anything changes
        if isinstance(self.model, PeftModel):
            self.base = self.model.unload()
        self.model, self.adapter_id = self.base, None
        if path is not None:
            self.model = PeftModel.from_pretrained(self.base, str(path))
            self.model.eval()
            self.adapter_id = adapter_id


def resolve_backend(name: str) -> str:
    """``auto`` -> ``vllm`` where the vLLM venv exists, else ``local``."""
    if name != "auto":
        return name
    from orchestrator.models.engine import available

    return "vllm" if available() else "local"


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def make_vllm_backend(config, base_url: str | None = None, say=_stderr) -> VLLMBackend:
    """The vllm backend on ``base_url`` (or ``[engine] base_url``), else on a managed server
    started here and stopped by ``close()`` (and at exit)."""
    from orchestrator.models.engine import Engine, EngineError, EngineSpec, api_key_for

    e = config.engine
    url = base_url or e.base_url
    model_dir = Path(e.model) if e.model else None
    if model_dir is None:
        model_dir, model_name, _ = _embedded(config)
    else:
        model_name = model_dir.name
    engine = None
    if not url:
        spec = EngineSpec(model_dir, served_name=e.served_model, port=e.port, max_model_len=e.max_model_len,
                          max_lora_rank=e.max_lora_rank, kv_cache_gib=e.kv_cache_gib,
                          startup_timeout_s=e.startup_timeout_s, extra_args=list(e.extra_args))
        try:
            engine = Engine(spec).start(say)
        except EngineError as exc:
            raise BackendError(str(exc)) from exc
        url = engine.base_url
    backend = VLLMBackend(url, f"vllm/{model_name}", served_model=e.served_model, engine=engine,
                          max_tokens=config.model.max_new_tokens, max_lora_rank=e.max_lora_rank, model_dir=model_dir,
                          api_key=engine.api_key if engine is not None else api_key_for(url))
    if getattr(getattr(config, "gpu", None), "enabled", "off") == "on":  # the GPU profile (orchestrator/models/gpu.py)
        from orchestrator.models.gpu import configure_backend

        configure_backend(backend, config.gpu, model_dir)
    return backend


def _embedded(config) -> tuple[Path, str, str]:
    """(checkpoint directory, model id, dtype) of the run's embedded model, prepared on first use."""
    from orchestrator.models.embedded_model import EmbeddedModelError, default_name, ensure_converted, get

    try:
        model = get(default_name(config.model.embedded))
        return ensure_converted(model.name), model.model_id, model.dtype
    except (FileNotFoundError, ImportError, EmbeddedModelError) as exc:
        raise BackendError(f"embedded model unavailable: {exc}") from exc


def make_backend(name: str, config, replies: Path | None = None, base_url: str | None = None) -> Backend:
    """Build the backend a run asked for (``config`` is a RunConfig), asking its model in the
    model's reply format (``[model]``: reply_format, reply_formats)."""
    backend = _make_backend(name, config, replies, base_url)
    backend.reply_format = config.model.format_for(backend.model_id)
    return backend


def _make_backend(name: str, config, replies: Path | None, base_url: str | None) -> Backend:
    import os

    name = resolve_backend(name)
    if name == "vllm":
        return make_vllm_backend(config, base_url)
    if name == "replay":
        if replies is None:
            raise BackendError("the replay backend needs --replies FILE")
        return ReplayBackend(replies)
    if name == "openai":
        m = config.model
        return OpenAIBackend(base_url or m.openai_base_url, m.openai_model, os.environ.get(m.openai_api_key_env))
    if name == "local":
        path, model_id, dtype = _embedded(config)
        return LocalBackend(path, model_id, max_new_tokens=config.model.max_new_tokens, dtype=dtype)
    raise BackendError(f"unknown backend {name!r} (auto, vllm, local, openai, replay)")
