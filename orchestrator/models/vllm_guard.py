"""An ASGI middleware that vLLM's API server loads (``--middleware rsi_vllm_guard.Guard``): every
request needs the server's key (``Authorization: Bearer <key>``), except ``GET /health``.

vLLM's own ``--api-key``/``VLLM_API_KEY`` check covers only paths under ``/v1``, ``/v2``,
``/inference`` and ``/cohere``; the same server also answers ``POST /adapters`` and
``DELETE /adapters/{name}`` (the SageMaker LoRA routes: load and unload adapters), ``/invocations``
(inference), ``/pause``, ``/resume``, ``/abort_requests``, ``/tokenize``... without a key. This guard
closes all of them. The key comes from the server's environment (``VLLM_API_KEY``, readable only by
its own user in ``/proc/<pid>/environ``); without one every request but ``/health`` is refused.

Standard library only: engine.py copies this file into a private directory on the server's
``PYTHONPATH`` (the vLLM venv does not hold this project).
"""

from __future__ import annotations

import hashlib
import os
import secrets

KEY_ENV = "VLLM_API_KEY"
OPEN = frozenset({("GET", "/health"), ("HEAD", "/health")})
REFUSED = b'{"error":"Unauthorized"}'


class Guard:
    def __init__(self, app, key: str | None = None):
        self.app = app
        key = os.environ.get(KEY_ENV, "") if key is None else key
        self.digest = hashlib.sha256(key.encode()).digest() if key else None

    def allowed(self, scope: dict) -> bool:
        if (scope.get("method"), scope.get("path")) in OPEN:
            return True
        if self.digest is None:
            return False
        values = [v for k, v in scope.get("headers", ()) if k.lower() == b"authorization"]
        if len(values) != 1:
            return False
        scheme, _, token = values[0].partition(b" ")
        return scheme.lower() == b"bearer" and secrets.compare_digest(hashlib.sha256(token).digest(), self.digest)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or self.allowed(scope):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(REFUSED)).encode())]})
        await send({"type": "http.response.body", "body": REFUSED})
