"""A registered base + adapters version (one ORT GenAI base + adapters/<name>.onnx_adapter, what register's
--adapters_onnx_model registers) served and promoted on the tiny model: `slmops serve models:/NAME@ALIAS` checks every
file against the sha256 recorded at registration (the adapter files included) and answers a request naming each
adapter; `slmops promote --local` smoke-tests and probes it naming its first adapter (a request naming none is a 400
there)."""

from __future__ import annotations


import pytest
from click.testing import CliRunner

from slmops import generation, registry, weights
from slmops.cli import main
from slmops.serving.backends import LocalEndpoint

NAME = "tiny-adapters-onnx"
NAMES = ["tone", "topic"]


@pytest.fixture(scope="module")
def reg(tmp_path_factory, switchable_onnx):
    """A sqlite registry holding version 1 of NAME: the fp32 ORT GenAI base + the tone and topic adapter files
    (tests/serving/conftest.py), tagged as register tags it (gate, adapters, weights.sha256)."""
    root = tmp_path_factory.mktemp("adapters-reg")
    folder = switchable_onnx   # registered by path; serving it downloads a copy, so nothing here writes to it
    hashes = weights.verify_weights(folder)
    assert {"adapters/tone.onnx_adapter", "adapters/topic.onnx_adapter"} <= set(hashes)   # hashed since .onnx_adapter
    uri = f"sqlite:///{root / 'mlflow.db'}"
    registry.ensure_registered_model(uri, NAME)
    registry.create_version(uri, NAME, str(folder), None,
                            {"gate": "passed", "adapters": ",".join(NAMES), **registry.weights_tags(hashes)})
    registry.set_alias(uri, NAME, "candidate", "1")
    return uri, root


@pytest.fixture(scope="module")
def rows(prepared_data, topic_prepared_data):
    return {"tone": generation.read_examples(str(prepared_data), 1)[0],
            "topic": generation.read_examples(str(topic_prepared_data), 1)[0]}


def test_serve_a_registered_base_and_adapters_by_alias(reg, rows, tmp_path, monkeypatch):
    from tests.serving.conftest import Served
    from tests.serving.test_serve import post

    uri, root = reg
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("HOME", str(root))   # the registry download cache goes under ~/.cache
    server = Served(f"models:/{NAME}@candidate", tmp_path, key="adapters-key-0123456789abcdef")
    try:
        for name in NAMES:
            status, reply, _ = post(server, {"prompt": rows[name]["prompt"], "max_new_tokens": 16, "adapter": name})
            assert status == 200 and reply["adapter"] == name and reply["text"] == rows[name]["label"], reply
        status, reply, _ = post(server, {"prompt": rows["tone"]["prompt"]})
        assert status == 400 and "['tone', 'topic']" in reply["problems"][0], reply
    finally:
        server.stop()


def test_a_changed_adapter_file_is_refused_before_serving(reg, tmp_path, monkeypatch):
    uri, root = reg
    cache = tmp_path / "cache"
    folder = registry.resolve(f"models:/{NAME}/1", tracking_uri=uri, cache_dir=cache)
    (folder / "adapters" / "topic.onnx_adapter").write_bytes(b"not the registered adapter")
    monkeypatch.setattr("slmops.serving.cli.CACHE_DIR", cache)
    result = CliRunner().invoke(main, ["serve", f"models:/{NAME}/1", "--tracking-uri", uri])
    assert result.exit_code == 2, result.output
    assert "adapters/topic.onnx_adapter: sha256" in result.output and "recorded when the model was registered" in \
        result.output


def test_promote_local_probes_with_the_first_adapter(reg, rows, tmp_path_factory, monkeypatch):
    uri, root = reg
    endpoint = LocalEndpoint(tmp_path_factory.mktemp("endpoints"), "adapters-local", startup_timeout_s=90)
    monkeypatch.setenv("SLMOPS_LOCAL_ENDPOINTS", str(endpoint.dir.parent))
    monkeypatch.setenv("HOME", str(root))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        result = CliRunner().invoke(main, ["promote", f"models:/{NAME}/1", "--endpoint", "adapters-local", "--local",
                                           "--tracking-uri", uri, "--probes", "3"])
        assert result.exit_code == 0, result.output
        assert "the model serves the adapters ['tone', 'topic']: requests naming none name 'tone'" in result.output
        assert "traffic {'blue': 100}: error rate 0% over 3 probe(s)" in result.output
        assert [v["aliases"] for v in registry.list_versions(uri, NAME)] == [["candidate", "production"]]
        for name in NAMES:
            status, reply = endpoint.invoke({"prompt": rows[name]["prompt"], "max_new_tokens": 16, "adapter": name})
            assert status == 200 and reply["text"] == rows[name]["label"], reply
        assert endpoint.invoke({"prompt": "hi"})[0] == 400      # why the probes must name an adapter
    finally:
        endpoint.stop()
