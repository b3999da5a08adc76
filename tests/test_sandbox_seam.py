"""The sandbox seam (orchestrator/sandbox/interface.py): providers by name, dispatch from run_tests, the fake.

Fast unit tests, no Docker: the real providers have their integration tests
(test_sandbox_hostile.py, test_sandbox_pool.py, test_sandbox_ray.py)."""

import pytest

from orchestrator.sandbox import interface as sandboxes
from orchestrator.sandbox.container import InfraError, SandboxLimits, SandboxResult, run_tests
from orchestrator.sandbox.interface import Sandbox, create, provider_for, use
from orchestrator.sandbox.fake import FakeSandbox
from orchestrator.sandbox.pool import CONTAINER_KEYS, container_key, default_size
from orchestrator.sandbox.ray_provider import pack, unpack
from tests.conftest import write_tree
from tests.hostile_cases import BUGGY, GOOD, ws


def by_source(path, judge):
    return "pass" if (path / "example.py").read_text() == GOOD else "fail"


def test_every_provider_is_registered_by_name():
    sandboxes._load_builtin()
    assert {"docker", "docker-pool", "ray", "fake"} <= set(sandboxes.PROVIDERS)
    for name, cls in sandboxes.PROVIDERS.items():
        assert issubclass(cls, Sandbox) and cls.name == name


def test_unknown_provider_is_one_clear_line():
    with pytest.raises(InfraError, match="unknown sandbox provider 'k8s'.*policies/sandbox.toml"):
        create("k8s")


def test_limits_default_to_the_docker_provider_and_take_a_provider_key(tmp_path):
    assert SandboxLimits().provider == "docker"
    policy = tmp_path / "sandbox.toml"
    policy.write_text('[sandbox]\nprovider = "docker-pool"\npool_size = 3\nray_address = "127.0.0.1:1"\n')
    limits = SandboxLimits.load(policy)
    assert (limits.provider, limits.pool_size, limits.ray_address) == ("docker-pool", 3, "127.0.0.1:1")


def test_run_tests_dispatches_to_the_configured_provider(tmp_path):
    good = write_tree(tmp_path / "good", ws())
    fake = FakeSandbox(fn=by_source)
    with use(fake):
        assert run_tests(good, limits=SandboxLimits(provider="fake")).verdict == "pass"
        # overlay and exclude are applied as the real providers apply them (staging)
        bad = run_tests(good, limits=SandboxLimits(provider="fake"), overlay={"example.py": BUGGY},
                        exclude={"test_example.py"})
    assert bad.verdict == "fail"
    assert fake.calls[1]["files"] == ["example.py"]
    assert "test_example.py" in fake.calls[0]["files"]
    assert (good / "example.py").read_text() == GOOD, "the caller's workspace changed"


def test_fake_grades_raw_evidence_with_the_real_grader(tmp_path):
    events = [{"e": "collected", "ids": ["test_example.py::test_add"]},
              {"e": "report", "id": "test_example.py::test_add", "when": "call", "outcome": "passed"},
              {"e": "finish", "exitstatus": 0}]
    honest = {"events": events, "exit_code": 0, "expected": ["test_example.py::test_add"]}
    lying = {"events": events, "exit_code": 1, "expected": ["test_example.py::test_add", "test_example.py::test_b"]}
    workspace = write_tree(tmp_path / "w", ws())
    assert FakeSandbox(fn=lambda p, j: honest).run(workspace).verdict == "pass"
    assert FakeSandbox(fn=lambda p, j: lying).run(workspace).verdict != "pass"
    assert FakeSandbox(fn=lambda p, j: {"events": "garbage"}).run(workspace).verdict == "tampered"


def test_fake_passes_judged_tests_and_returns_typed_results(tmp_path):
    seen = {}

    def fn(path, judge):
        seen["judge"] = judge
        return SandboxResult(verdict="fail", failed=1)

    out = FakeSandbox(fn=fn).run(write_tree(tmp_path / "w", ws()), judge={"hidden/test_h.py": "x"})
    assert isinstance(out, SandboxResult) and out.verdict == "fail" and seen["judge"] == {"hidden/test_h.py": "x"}


def test_fake_reports_unstageable_workspaces_as_errors(tmp_path):
    workspace = write_tree(tmp_path / "w", ws())
    out = FakeSandbox().run(workspace, overlay={"../escape.py": "x"})
    assert out.verdict == "error" and "leave the staging directory" in out.reasons[0]


def test_fake_without_a_function_is_refused_by_config():
    with pytest.raises(InfraError, match="grading function"):
        provider_for(SandboxLimits(provider="fake"))


def test_use_restores_the_previous_provider(tmp_path):
    a, b = FakeSandbox(fn=lambda p, j: "pass"), FakeSandbox(fn=lambda p, j: "fail")
    workspace = write_tree(tmp_path / "w", ws())
    limits = SandboxLimits(provider="fake")
    with use(a):
        with use(b):
            assert run_tests(workspace, limits=limits).verdict == "fail"
        assert run_tests(workspace, limits=limits).verdict == "pass"


def test_lifecycle_as_a_context_manager():
    with FakeSandbox() as sandbox:
        assert not sandbox.closed
    assert sandbox.closed


def test_ray_provider_without_an_address_is_one_clear_line():
    with pytest.raises(InfraError, match="--ray ADDRESS"):
        create("ray", SandboxLimits(provider="ray")).start()


def test_pool_size_follows_cores_and_memory():
    size = default_size(SandboxLimits())
    assert 1 <= size <= 2 * (__import__("os").cpu_count() or 1)
    assert default_size(SandboxLimits(memory="100000g")) == 1


def test_pool_serves_only_runs_with_its_container_settings():
    base = SandboxLimits()
    assert container_key(base) == container_key(base.model_copy(update={"timeout_s": 5, "grace_s": 1}))
    for key in CONTAINER_KEYS:
        if key in ("image", "runtime", "user", "judge_user", "memory", "tmpfs_size", "shm_size"):
            continue
        assert container_key(base) != container_key(base.model_copy(update={key: getattr(base, key) * 2}))
    assert container_key(base) != container_key(base.model_copy(update={"runtime": "runsc"}))


def test_ray_payload_round_trips_links_as_links(tmp_path):
    src = write_tree(tmp_path / "src", {"a.py": "x = 1\n", "pkg/b.py": "y = 2\n", "link": ("symlink", "/etc/passwd")})
    dst = tmp_path / "dst"
    dst.mkdir()
    unpack(pack(src), dst)
    assert (dst / "pkg" / "b.py").read_text() == "y = 2\n"
    assert (dst / "link").is_symlink() and __import__("os").readlink(dst / "link") == "/etc/passwd"


def test_grading_code_runs_on_the_fake_provider_without_docker(tmp_path):
    """The evaluation path (run_judged -> run_tests -> provider) reaches the fake, judged tests included."""
    from orchestrator.evaluation.grading import reward, run_judged, verified
    from orchestrator.sandbox.container import JudgedResult

    def fn(path, judge):
        ok = (path / "example.py").read_text() == GOOD
        judged = JudgedResult(verdict="pass" if ok else "fail", passed=len(judge) if ok else 0,
                              tests=[{"nodeid": k, "outcome": "passed" if ok else "failed"} for k in judge])
        return SandboxResult(verdict="pass" if ok else "fail", judged=judged)

    workspace = write_tree(tmp_path / "w", ws())
    hidden = {"test_h.py": "def test_h():\n    pass\n"}
    with use(FakeSandbox(fn=fn)) as fake:
        good = run_judged(workspace, ["test_example.py"], hidden, SandboxLimits())
        bad = run_judged(workspace, ["test_example.py"], hidden, SandboxLimits(), overlay={"example.py": BUGGY})
    assert verified(good) and reward(good) == (2, 2)
    assert not verified(bad) and reward(bad) == (0, 2)
    assert set(fake.calls[0]["judge"]) == {"hidden/test_h.py", "visible/test_example.py"}


def test_ray_provider_with_nothing_at_the_address_is_one_clear_line():
    with pytest.raises(InfraError, match="cannot join the Ray cluster at 127.0.0.1:1 .nothing answers"):
        create("ray", SandboxLimits(provider="ray", ray_address="127.0.0.1:1")).start()


def test_verdicts_are_typed_by_the_grader():
    """A result's verdict is one of the grader's five words (typed, validated): a provider or a fake that
    says anything else is refused where the result is built, not compared as a stray string later."""
    import typing

    from pydantic import ValidationError

    from orchestrator.sandbox.container import JudgedResult, Verdict
    from orchestrator.sandbox.runner.grader import VERDICTS

    assert typing.get_args(Verdict) == VERDICTS == ("pass", "fail", "error", "timeout", "tampered")
    for bad in ("passed", "PASS", "infra", ""):
        with pytest.raises(ValidationError):
            SandboxResult(verdict=bad)
        with pytest.raises(ValidationError):
            JudgedResult(verdict=bad)
