"""`slmops promote --local` end to end: a sqlite MLflow registry, real `slmops serve` slots behind the local
router, a first promotion, a blue/green promotion with mirroring, a forced smoke-test failure that rolls back,
and a version whose gate did not pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from slmops import registry
from slmops.cli import main
from slmops.serving.backends import LocalEndpoint

NAME = "tone"
ENDPOINT = "tone-local"


@pytest.fixture(scope="module")
def reg(tmp_path_factory, tiny_model):
    """Registry with: v1, v2 = the tiny model (gate passed); v3 = a copy whose context (16 tokens) is too short
    for the smoke request (gate passed: it breaks only in the smoke test); v4 = the tiny model, gate failed."""
    root = tmp_path_factory.mktemp("promote")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    short = root / "short-context"
    shutil.copytree(tiny_model, short)
    cfg = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 16}))
    registry.ensure_registered_model(uri, NAME)
    for source, gate in [(tiny_model, "passed"), (tiny_model, "passed"), (short, "passed"), (tiny_model, "failed")]:
        registry.create_version(uri, NAME, str(source), None, {"gate": gate})
    return uri, root


@pytest.fixture(scope="module")
def endpoint(reg, tmp_path_factory):
    ep = LocalEndpoint(tmp_path_factory.mktemp("endpoints"), ENDPOINT, startup_timeout_s=90)
    yield ep
    ep.stop()


def promote(reg, endpoint, monkeypatch, *args):
    uri, root = reg
    monkeypatch.setenv("SLMOPS_LOCAL_ENDPOINTS", str(endpoint.dir.parent))
    monkeypatch.setenv("HOME", str(root))  # the registry download cache goes under ~/.cache
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return CliRunner().invoke(main, ["promote", *args, "--endpoint", ENDPOINT, "--local", "--tracking-uri", uri,
                                     "--probes", "4"])


def production(reg) -> str | None:
    versions = registry.list_versions(reg[0], NAME)
    return next((v["version"] for v in versions if "production" in v["aliases"]), None)


def test_first_promotion_goes_to_blue(reg, endpoint, monkeypatch):
    result = promote(reg, endpoint, monkeypatch, f"models:/{NAME}/1")
    assert result.exit_code == 0, result.output
    assert "live slot: none (first deployment), target slot: blue" in result.output
    assert endpoint.state() == {"traffic": {"blue": 100}, "slots": ["blue"]}
    assert production(reg) == "1"
    status, reply = endpoint.invoke({"prompt": "hello", "max_new_tokens": 3})
    assert status == 200 and reply["completion_tokens"] <= 3


def test_blue_green_with_mirror_and_steps(reg, endpoint, monkeypatch):
    result = promote(reg, endpoint, monkeypatch, f"models:/{NAME}/2", "--mirror", "20", "--steps", "50,100")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "target slot: green" in out and "mirroring 20% of live traffic to green" in out
    assert "traffic {'green': 50, 'blue': 50}: error rate 0%" in out
    assert "retiring the old slot blue" in out
    assert endpoint.state() == {"traffic": {"green": 100}, "slots": ["green"]}
    assert production(reg) == "2"
    # The router honours the deployment header like Azure ML: a retired slot is gone.
    assert endpoint.invoke({"prompt": "hi", "max_new_tokens": 2}, deployment="blue")[0] == 404
    assert endpoint.invoke({"prompt": "hi", "max_new_tokens": 2}, deployment="green")[0] == 200


def test_failed_smoke_test_rolls_back_and_leaves_production(reg, endpoint, monkeypatch):
    result = promote(reg, endpoint, monkeypatch, f"models:/{NAME}/3")
    assert result.exit_code == 4, result.output
    assert "smoke test on blue failed: HTTP 400" in result.output and "context of 16 tokens" in result.output
    assert "rolled back (production alias untouched)" in result.output
    assert production(reg) == "2"
    assert endpoint.state() == {"traffic": {"green": 100}, "slots": ["green"]}  # target slot deleted
    assert endpoint.invoke({"prompt": "hi", "max_new_tokens": 2})[0] == 200      # still serving version 2


def test_gate_not_passed_is_refused_before_anything_runs(reg, endpoint, monkeypatch):
    before = endpoint.state()
    result = promote(reg, endpoint, monkeypatch, f"models:/{NAME}/4")
    assert result.exit_code == 3, result.output
    assert "gate='failed'" in result.output
    assert endpoint.state() == before and production(reg) == "2"


def test_router_needs_the_endpoint_key(endpoint):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(endpoint.url + "/score", data=b'{"prompt": "hi"}', method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer wrong"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 401
