import json
import os
import secrets
from pathlib import Path

import pytest

# The test suite runs on the small, fast embedded model whatever [model] embedded says
# (orchestrator/models/embedded_model.py); a test that needs another one names it.
os.environ.setdefault("RSI_EMBEDDED_MODEL", "smollm2-135m")
# ... and on the CPU path even on a GPU workstation (`make test` never needs a GPU; orchestrator/models/gpu.py)
os.environ.setdefault("RSI_GPU", "off")


@pytest.fixture(scope="session")
def docker_client():
    """The real Docker engine. Missing engine = failed test, never a skip: CI must run these."""
    from orchestrator.sandbox.container import connect

    return connect()


@pytest.fixture(scope="session")
def sandbox_image(docker_client):
    from orchestrator.sandbox.images import build_sandbox_image

    return build_sandbox_image(docker_client)


@pytest.fixture(scope="session")
def host_marker(tmp_path_factory):
    """A host file with known content that no sandbox may read or change."""
    path = Path(f"/tmp/rsi-host-marker-{secrets.token_hex(6)}")
    path.write_text("host-only secret\n")
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def host_secret():
    value = "s3cret-" + secrets.token_hex(8)
    os.environ["RSI_TEST_HOST_SECRET"] = value
    yield value
    os.environ.pop("RSI_TEST_HOST_SECRET", None)


def write_tree(root: Path, files: dict, subs: dict | None = None) -> Path:
    subs = subs or {}

    def fill(text: str) -> str:
        for key, value in subs.items():
            text = text.replace("{" + key + "}", value)
        return text

    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, tuple) and content[0] == "symlink":
            os.symlink(fill(content[1]), path)
        else:
            path.write_text(fill(content))
    return root


def tree_digest(root: Path) -> dict:
    """Path -> (kind, content or link target) for everything under root, links not followed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                out[str(p.relative_to(root))] = ("link", os.readlink(p))
            elif p.is_file():
                out[str(p.relative_to(root))] = ("file", p.read_bytes())
            else:
                out[str(p.relative_to(root))] = ("dir", None)
    return out


@pytest.fixture(scope="session")
def vllm_engine():
    """One real vLLM server (CPU build, `make vllm`) on the embedded SmolLM2 for the whole test run,
    started and stopped by orchestrator.models.engine. Missing vLLM = failed test, never a skip."""
    from orchestrator.models.embedded_model import ensure_converted
    from orchestrator.models.engine import Engine, EngineSpec

    if os.environ.get("RSI_TEST_VLLM_PORT"):  # a server already running on the embedded model (`rsi serve`)
        engine = Engine(EngineSpec(ensure_converted(), port=int(os.environ["RSI_TEST_VLLM_PORT"])))
        engine.port = engine.spec.port
        engine.api_key = os.environ.get("RSI_VLLM_API_KEY")  # the key `rsi serve` printed
        yield engine
        return
    engine = Engine(EngineSpec(ensure_converted())).start(say=print)
    yield engine
    engine.stop()


# Tests that run a real engine or model (`slow`; `make test-fast` leaves them out): every test on the
# session's vLLM server, the lm-eval runs on a real model, and these few.
SLOW_MODULES = {"test_lm_eval.py", "test_vllm_backend.py"}
SLOW_TESTS = {"tests/test_engine.py::test_a_stale_server_of_a_killed_run_is_stopped",
              "tests/test_hostile_text.py::test_hostile_text_through_a_whole_run[10 MB]"}


def _mark_slow(items) -> None:
    for item in items:
        if item.path.name in SLOW_MODULES or item.nodeid in SLOW_TESTS or \
                "vllm_engine" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


# The longest test files first (measured: `make test` prints the slowest tests), so that with several
# workers (pytest-xdist, one file per worker at a time) no long file starts last and runs alone.
HEAVY_FIRST = ("test_rounds.py", "test_e2e_local.py", "test_repo_tasks.py", "test_vllm_backend.py",
               "test_corpus.py", "test_training_hook.py", "test_judge.py", "test_humaneval_eval.py",
               "test_lm_eval.py", "test_trainer.py", "test_sandbox_hostile.py", "test_loop.py")


def pytest_collection_modifyitems(config, items):
    _mark_slow(items)
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept


def as_user(uid: int, fn, groups: tuple = ()):
    """``fn()`` in a forked child running as ``uid`` (with only ``groups`` as supplementary groups; the
    tests that switch users need root); its JSON-able result, or the repr of what it raised."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read)
            os.setgroups(list(groups))
            os.setgid(uid)
            os.setuid(uid)
            assert os.getresuid() == (uid, uid, uid)  # not os.geteuid: a test may patch it
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            result = {"raised": repr(exc)}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 1 << 16):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    return json.loads(data)
