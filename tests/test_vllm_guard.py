"""The vLLM server's key check on every path (orchestrator/models/vllm_guard.py), as an ASGI app:
vLLM's own --api-key covers only /v1 and a few prefixes, and the same server loads adapters at
POST /adapters. The real server with the guard loaded: test_vllm_backend.py."""

import asyncio

import pytest

from orchestrator.models.vllm_guard import Guard

KEY = "k" * 43


async def _app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def call(guard: Guard, path: str, method: str = "POST", headers=(), kind: str = "http") -> int:
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    scope = {"type": kind, "method": method, "path": path, "root_path": "",
             "headers": [(k.encode(), v.encode()) for k, v in headers]}
    asyncio.run(guard(scope, receive, send))
    if kind == "websocket":
        return sent[0]["code"] if sent[0]["type"] == "websocket.close" else sent[0]["status"]
    return sent[0]["status"]


@pytest.mark.parametrize("path", ["/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/adapters", "/adapters/v0001",
                                  "/invocations", "/pause", "/resume", "/abort_requests", "/tokenize", "/version",
                                  "/metrics", "/docs", "/health/", "//health", "/v1/models"])
def test_every_path_but_health_needs_the_key(path):
    guard = Guard(_app, KEY)
    assert call(guard, path) == 401
    assert call(guard, path, headers=[("Authorization", "Bearer wrong")]) == 401
    assert call(guard, path, headers=[("Authorization", f"Basic {KEY}")]) == 401
    assert call(guard, path, headers=[("Authorization", f"Bearer {KEY}")]) == 200  # the positive control
    assert call(guard, path, headers=[("authorization", f"bearer {KEY}")]) == 200


def test_health_is_open_and_nothing_else():
    guard = Guard(_app, KEY)
    assert call(guard, "/health", "GET") == 200 and call(guard, "/health", "HEAD") == 200
    assert call(guard, "/health", "POST") == 401
    # two Authorization headers (one right, one wrong) are refused, whatever their order
    both = [("Authorization", f"Bearer {KEY}"), ("Authorization", "Bearer x")]
    assert call(guard, "/v1/models", "GET", both) == 401 and call(guard, "/v1/models", "GET", both[::-1]) == 401
    assert call(guard, "/v1/realtime", "GET", kind="websocket") == 1008
    assert call(guard, "/v1/realtime", "GET", [("Authorization", f"Bearer {KEY}")], kind="websocket") == 200


def test_no_key_refuses_everything_but_health(monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    guard = Guard(_app)
    assert call(guard, "/v1/models", "GET", [("Authorization", "Bearer ")]) == 401
    assert call(guard, "/health", "GET") == 200
    monkeypatch.setenv("VLLM_API_KEY", KEY)  # the engine passes the key this way
    assert call(Guard(_app), "/v1/models", "GET", [("Authorization", f"Bearer {KEY}")]) == 200


def test_a_refused_client_is_told_where_the_key_goes():
    """The client side: a 401 from a server (`rsi serve` without RSI_VLLM_API_KEY here) is one line
    that names the variable."""
    import http.server
    import threading

    from orchestrator.models.backends import BackendError, VLLMBackend

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(401)
            self.end_headers()
            self.wfile.write(b'{"error":"Unauthorized"}')

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        with pytest.raises(BackendError, match=r"answered 401: it needs its key in RSI_VLLM_API_KEY .*prints it once\)$"):
            VLLMBackend(url, "m").generate([{"role": "user", "content": "x"}], "patch")
        with pytest.raises(BackendError, match="the one given is wrong"):
            VLLMBackend(url, "m", api_key="wrong").generate([{"role": "user", "content": "x"}], "patch")
    finally:
        srv.shutdown()
