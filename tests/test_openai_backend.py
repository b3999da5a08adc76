"""The openai backend against a real OpenAI-compatible server on loopback: the session's vLLM server
(tests/conftest.py ``vllm_engine``, the embedded SmolLM2), with its API key; no mock there: the
server applies the JSON schema. The fallback for servers that know only ``json_object`` + schema
(llama-cpp-python's extension) is checked against a loopback stub that answers like such a server
(llama.cpp itself is no longer built for the tests: its compilation cost CI several minutes)."""

import http.server
import json
import socket
import threading

import pytest

from orchestrator.agent.loop import Loop
from orchestrator.agent.tasks import seed_task
from orchestrator.config import RunConfig
from orchestrator.models.backends import BackendError, OpenAIBackend
from orchestrator.protocol.schema import parse_reply

MESSAGES = [{"role": "system", "content": "Reply with one JSON object."},
            {"role": "user", "content": "File example.py:\ndef add(a, b):\n    return a - b\n\nFix add."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def openai_server(vllm_engine):
    """(base URL, served model name, API key) of the session's real vLLM server."""
    return f"http://127.0.0.1:{vllm_engine.port}/v1", vllm_engine.spec.served_name, vllm_engine.api_key


def _backend(server, **kw) -> OpenAIBackend:
    url, model, key = server
    return OpenAIBackend(url, model, api_key=key, **kw)


@pytest.mark.slow
def test_reply_fits_the_schema(openai_server):
    from tests.test_vllm_backend import MESSAGES as SEED_MESSAGES  # the loop's own prompt for the seed task

    backend = _backend(openai_server, max_tokens=384)
    reply = backend.generate(SEED_MESSAGES, "patch")
    parsed = parse_reply(reply, "patch", 1 << 20)  # the server's schema made it fit; paths are the policy's job
    assert 1 <= len(parsed.edits) <= 2 and backend.format_style == "json_schema"


@pytest.mark.slow
def test_a_wrong_key_is_a_clear_error(openai_server):
    url, model, _ = openai_server
    with pytest.raises(BackendError, match="401"):
        OpenAIBackend(url, model, api_key="not-the-key").generate(MESSAGES, "patch")


@pytest.mark.slow
def test_bad_status_is_a_clear_error(openai_server):
    url, model, key = openai_server
    with pytest.raises(BackendError, match="answered 404"):
        OpenAIBackend(url + "/nope", model, api_key=key).generate(MESSAGES, "patch")


def test_unreachable_server_is_a_clear_error():
    backend = OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", "x", timeout_s=5)
    with pytest.raises(BackendError, match="cannot reach"):
        backend.generate(MESSAGES, "patch")


class _JsonObjectOnly(http.server.BaseHTTPRequestHandler):
    """A server that knows ``response_format`` json_object + schema only (llama-cpp-python's)."""
    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        fmt = body.get("response_format") or {}
        type(self).seen.append(fmt.get("type"))
        if fmt.get("type") == "json_schema":
            out, code = b'{"error": "response_format: json_schema is not supported"}', 400
        else:
            reply = {"rationale": "r", "edits": [{"path": "example.py", "content": "def add(a, b):\n    return a + b\n"}]}
            out, code = json.dumps({"choices": [{"message": {"content": json.dumps(reply)}}]}).encode(), 200
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


def test_a_server_with_only_json_object_gets_it_and_keeps_it():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _JsonObjectOnly)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        backend = OpenAIBackend(f"http://127.0.0.1:{server.server_address[1]}/v1", "m", timeout_s=10)
        for _ in range(2):
            parse_reply(backend.generate(MESSAGES, "patch"), "patch", 1 << 20)
        assert backend.format_style == "json_object"
        assert _JsonObjectOnly.seen == ["json_schema", "json_object", "json_object"]  # asked once, remembered
    finally:
        server.shutdown()


@pytest.mark.docker
@pytest.mark.slow
def test_one_iteration_through_the_server(tmp_path, openai_server, sandbox_image):
    cfg = RunConfig.load()
    cfg.run.max_iterations, cfg.run.max_retries, cfg.run.max_mutants, cfg.run.train_every = 1, 0, 3, 0
    backend = _backend(openai_server, max_tokens=384)
    state = Loop(tmp_path / "run", cfg, backend, task=seed_task()).run()
    assert state.stop_reason and state.history and state.model_id == openai_server[1]
