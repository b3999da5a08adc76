"""`rsi run --gpu` on an engine without an NVIDIA runtime: one clear line, exit 2, nothing started."""

import pytest
from click.testing import CliRunner

from orchestrator.cli import main


class PlainEngine:
    def info(self):
        return {"Runtimes": {"runc": {"path": "runc"}}}


@pytest.mark.parametrize("mode", [[], ["--suite", "seed"]], ids=["loop", "rounds"])
def test_run_gpu_without_runtime_is_one_clear_error(tmp_path, monkeypatch, mode):
    import orchestrator.sandbox.container

    monkeypatch.setattr(orchestrator.sandbox.container, "connect", lambda *a, **k: PlainEngine())
    replies = tmp_path / "replies.jsonl"
    replies.write_text("{}\n")
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--gpu", "--backend", "replay", "--replies", str(replies),
                                       "--run-dir", str(run_dir), *mode])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no NVIDIA runtime" in lines[0] and "NVIDIA Container Toolkit" in lines[0]
    assert not run_dir.exists()
