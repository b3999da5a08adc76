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
# With several pytest-xdist workers on few cores, each worker's torch (the embedded model, the trainer
# container, `rsi eval` subprocesses) gets its share of the cores: OpenMP threads beyond the cores spin
# against each other (measured on 2 cores: one local generation 40 s alone, 160 s beside another with
# 2 threads each, 43 s with 1 thread each). Set before torch is imported; the vLLM server is left to
# bind its own threads (the vllm_engine fixture starts it without this).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))


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
    pinned = os.environ.pop("OMP_NUM_THREADS", None)  # vLLM binds its own OpenMP threads to the cores
    try:
        engine = Engine(EngineSpec(ensure_converted())).start(say=print)
    finally:
        if pinned is not None:
            os.environ["OMP_NUM_THREADS"] = pinned
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


# Scheduling under pytest-xdist (`make test`: two workers, `--dist loadfile`). A work unit is a test file,
# except that every test on the session's vLLM server is one unit (`vllm`), so that one worker starts
# one server rather than each worker its own. Units go out longest first (LPT: no long unit starts last
# and runs alone), by the seconds measured per unit in a whole `make test` (`make test-times` rewrites
# tests/unit_seconds.json). xdist's own reordering (by number of tests) is turned off.
VLLM_UNIT = "vllm"
VLLM_FILES = {"test_vllm_backend.py", "test_openai_backend.py"}
VLLM_TESTS = {"tests/test_rounds.py::test_two_rounds_against_the_real_vllm_engine",
              "tests/test_redteam_engine_trainer.py::test_raw_http_tricks_as_nobody_reach_nothing"}
UNIT_SECONDS_FILE = Path(__file__).with_name("unit_seconds.json")


def work_unit(nodeid: str) -> str:
    """The scheduling unit of a test: its file, or ``vllm``."""
    file = nodeid.split("::", 1)[0]
    if file.rsplit("/", 1)[-1] in VLLM_FILES or nodeid.split("[", 1)[0] in VLLM_TESTS:
        return VLLM_UNIT
    return file


def _unit_seconds() -> dict:
    try:
        return json.loads(UNIT_SECONDS_FILE.read_text())
    except (OSError, ValueError):
        return {}


def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return work_unit(nodeid)

    config.option.loadscopereorder = False  # keep the order pytest_collection_modifyitems set
    return UnitScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    _mark_slow(items)
    for item in items:
        if "vllm_engine" in getattr(item, "fixturenames", ()) and work_unit(item.nodeid) != VLLM_UNIT:
            raise pytest.UsageError(f"{item.nodeid} uses the vLLM server: add it to VLLM_TESTS in tests/conftest.py "
                                    "(one worker, one server)")
        item.user_properties.append(("work_unit", work_unit(item.nodeid)))
    seconds = _unit_seconds()
    items.sort(key=lambda item: (-seconds.get(work_unit(item.nodeid), 1.0), work_unit(item.nodeid)))  # stable


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
