"""Corrupt weights at every step that reads a model: exit 2 naming the file, before any work (evaluate checks the
fine-tuned model before it scores the base), and nothing written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runner.conftest import cli_env


def damaged_copy(model: Path, dest: Path, how: str) -> Path:
    shutil.copytree(model, dest)
    weights = sorted(dest.rglob("*.safetensors"))[0]
    if how == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    else:
        weights.write_bytes(b"\x00\x01garbage" * 1000)
    return weights


def run_step(step: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"slmops.steps.{step}", *args], env=cli_env(), capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("how", ["truncated", "random"])
def test_corrupt_models_are_exit_2_naming_the_file_at_every_step(tmp_path, tiny_model, prepared_data, how):
    base = tmp_path / "base"
    bad = damaged_copy(Path(tiny_model), base, how)
    outs = {name: tmp_path / name for name in ("adapter", "model", "metrics", "checkpoints", "onnx", "report",
                                               "eval")}
    cases = {
        "finetune": ["--train_data", str(prepared_data), "--base_model", str(base), "--max_steps", "2",
                     "--adapter", str(outs["adapter"]), "--model", str(outs["model"]), "--metrics",
                     str(outs["metrics"]), "--checkpoints", str(outs["checkpoints"])],
        "optimize": ["--model", str(base), "--test_data", str(prepared_data), "--onnx_model", str(outs["onnx"]),
                     "--report", str(outs["report"])],
        # the fine-tuned model is damaged, the base is whole: nothing is scored, not even the base
        "evaluate": ["--test_data", str(prepared_data), "--model", str(base), "--base_model", str(tiny_model),
                     "--metrics", str(outs["eval"])],
    }
    for step, args in cases.items():
        result = run_step(step, *args)
        assert result.returncode == 2, (step, result.stdout[-2000:], result.stderr[-2000:])
        assert str(bad) in result.stderr and "Traceback" not in result.stderr, (step, result.stderr[-2000:])
    assert not any(path.exists() for path in outs.values())
