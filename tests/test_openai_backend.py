"""The openai backend against a real llama.cpp server (llama-cpp-python) on loopback, serving the
embedded SmolLM2 GGUF. No mock: the server applies the JSON schema as a grammar."""

import socket
import subprocess
import sys
import time

import pytest
import requests

from orchestrator.models.backends import BackendError, OpenAIBackend
from orchestrator.config import RunConfig
from orchestrator.models.embedded_model import gguf_path
from orchestrator.agent.loop import Loop
from orchestrator.protocol.schema import parse_reply
from orchestrator.agent.tasks import seed_task

MESSAGES = [{"role": "system", "content": "Reply with one JSON object."},
            {"role": "user", "content": "File example.py:\ndef add(a, b):\n    return a - b\n\nFix add."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as exc:  # a failure, not a skip: `make test` installs it (test-deps)
        pytest.fail(f"llama-cpp-python's server is not installed ({exc}); run `make test-deps`")
    port = free_port()
    log = open(tmp_path_factory.mktemp("llama") / "server.log", "w+")  # verbose: a pipe would fill and block
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--model_alias", "smollm2",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "2"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"llama.cpp server exited: {log.read()[-2000:]}")
        try:
            if requests.get(f"{url}/models", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("llama.cpp server did not start in 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.mark.llama_server
def test_reply_fits_the_schema(llama_server):
    backend = OpenAIBackend(llama_server, "smollm2", max_tokens=300)
    reply = backend.generate(MESSAGES, "patch")
    parsed = parse_reply(reply, "patch", 1 << 20)  # the server's grammar made it fit; paths are the policy's job
    assert 1 <= len(parsed.edits) <= 2 and backend.format_style == "json_object"


def test_unreachable_server_is_a_clear_error():
    backend = OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", "x", timeout_s=5)
    with pytest.raises(BackendError, match="cannot reach"):
        backend.generate(MESSAGES, "patch")


@pytest.mark.llama_server
def test_bad_status_is_a_clear_error(llama_server):
    with pytest.raises(BackendError, match="answered 404"):
        OpenAIBackend(llama_server + "/nope", "smollm2").generate(MESSAGES, "patch")


@pytest.mark.docker
@pytest.mark.llama_server
def test_one_iteration_through_the_server(tmp_path, llama_server, sandbox_image):
    cfg = RunConfig.load()
    cfg.run.max_iterations, cfg.run.max_retries, cfg.run.max_mutants, cfg.run.train_every = 1, 0, 3, 0
    backend = OpenAIBackend(llama_server, "smollm2", max_tokens=300)
    state = Loop(tmp_path / "run", cfg, backend, task=seed_task()).run()
    assert state.stop_reason and state.history and state.model_id == "smollm2"
