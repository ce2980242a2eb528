"""Serving fixtures: an ORT GenAI model built from the tiny model, and `slmops serve` processes on loopback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slmops.serving import serve as srv

STARTUP_S = 90


def build_onnx(src: Path, out: Path) -> Path:
    """ORT GenAI fp32 CPU model from a Hugging Face folder (the builder takes ~7 s on the tiny model)."""
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(out),
           "-p", "fp32", "-e", "cpu", "-c", str(out.parent / "builder-cache")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="session")
def onnx_model(tiny_model, tmp_path_factory):
    return build_onnx(Path(tiny_model), tmp_path_factory.mktemp("onnx") / "tiny-onnx")


@pytest.fixture(scope="session")
def switchable_onnx(tiny_model, finetuned, topic_finetuned, tmp_path_factory) -> Path:
    """One fp32 ORT GenAI base + adapters/tone.onnx_adapter and adapters/topic.onnx_adapter (`optimize.build_switchable`
    on the tone and topic fixture adapters, the tokenizer files copied in), built once per session (two builder runs,
    ~20 s); read it, do not change it. Beside it, work/fp32-tone and work/fp32-topic are single-model builds with that
    adapter merged in."""
    from slmops.steps import optimize

    root = tmp_path_factory.mktemp("switchable")
    folder = root / "onnx"
    optimize.build_switchable(Path(tiny_model), [("tone", finetuned["adapter"]), ("topic", topic_finetuned["adapter"])],
                              folder, "fp32", "cpu", root / "work")
    optimize.copy_tokenizer_files(Path(tiny_model), folder)
    return folder


class Served:
    """A running `slmops serve` process: its base URL, key, log and process."""

    def __init__(self, model, tmp: Path, key: str | None):
        self.port = srv.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve-{self.port}.log"
        env = dict(os.environ, OMP_NUM_THREADS="1")
        env.pop(srv.KEY_ENV, None)
        args = ["slmops", "serve", str(model), "--port", str(self.port)]
        if key:
            env[srv.KEY_ENV] = key
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        srv.wait_ready(self.url, STARTUP_S, self.proc, self.log)
        self.key = key or re.search(r"endpoint key \(shown once\): (\S+)", self.log.read_text()).group(1)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def torch_server(tiny_model, tmp_path_factory):
    """The tiny PyTorch model served with a key from $SLMOPS_ENDPOINT_KEY."""
    s = Served(tiny_model, tmp_path_factory.mktemp("serve-torch"), key="test-key-0123456789abcdef")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def onnx_server(onnx_model, tmp_path_factory):
    """The ORT GenAI model served with a generated key (parsed from the one line that prints it)."""
    s = Served(onnx_model, tmp_path_factory.mktemp("serve-onnx"), key=None)
    yield s
    s.stop()


def wait_gone(port: int, timeout_s: float = 15) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not srv.is_ready(f"http://127.0.0.1:{port}", 0.5):
            return True
        time.sleep(0.2)
    return False
