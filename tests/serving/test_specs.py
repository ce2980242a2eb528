"""The managed online endpoint and deployment specs load with azure-ai-ml and say what docs/serving.md says."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmops.serving.backends import SPECS


def test_endpoint_spec_loads_with_key_auth():
    from azure.ai.ml import load_online_endpoint

    endpoint = load_online_endpoint(SPECS / "endpoint.yml", params_override=[{"name": "tone-ep"}])
    assert (endpoint.name, endpoint.auth_mode) == ("tone-ep", "key")


@pytest.mark.parametrize("field, value", [
    ("instance_type", "Standard_DS3_v2"),
    ("instance_count", 1),
    ("request_settings.request_timeout_ms", 90000),
    ("request_settings.max_concurrent_requests_per_instance", 16),
    ("liveness_probe.failure_threshold", 30),
    ("readiness_probe.period", 10),
    ("scale_settings.type", "default"),
    ("code_configuration.scoring_script", "slmops/serving/score.py"),
    ("environment", "slmops-cpu@latest"),  # azure-ai-ml strips the azureml: prefix when loading
    ("environment_variables.SLMOPS_MAX_NEW_TOKENS", "512"),
    ("environment_variables.GUNICORN_CMD_ARGS", "--threads 16"),
    ("environment_variables.SLMOPS_MAX_BATCH", "8"),
])
def test_deployment_spec_loads(field, value):
    from azure.ai.ml import load_online_deployment

    d = load_online_deployment(SPECS / "deployment.yml", params_override=[{"name": "green"},
                                                                            {"model": "azureml:tone:3"}])
    assert (d.name, d.model) == ("green", "tone:3")
    got = d
    for part in field.split("."):
        got = got[part] if isinstance(got, dict) else getattr(got, part)
    assert got == value


def test_deployment_code_folder_holds_the_scoring_script():
    """`code:` is relative to the spec and must be the sdk folder, so score.py can import slmops."""
    import yaml

    spec = yaml.safe_load((SPECS / "deployment.yml").read_text())
    code = (SPECS / spec["code_configuration"]["code"]).resolve()
    assert (code / spec["code_configuration"]["scoring_script"]).is_file()
    assert (code / "slmops" / "__init__.py").is_file() and code == Path(__file__).resolve().parents[2] / "sdk"


def test_the_deployment_uploads_the_whole_package_although_the_steps_snapshot_leaves_serving_out():
    """sdk/.amlignore keeps serving/ out of the components' snapshot; Azure ML applies it to any upload of sdk/, so
    the deployment uploads a copy of the package with score.py in it instead."""
    from slmops.runner.store import code_files
    from slmops.serving.backends import AzureEndpoint

    sdk = Path(__file__).resolve().parents[2] / "sdk"
    assert "slmops/serving/score.py" not in {str(f) for f in code_files(sdk)}
    deployment = AzureEndpoint(None, "tone")._deployment("blue", "azureml:slmops-tone:3")
    code = Path(deployment.code_configuration.code)
    assert code != sdk and not (code / ".amlignore").exists()
    uploaded = {str(f) for f in code_files(code)}
    assert {"slmops/serving/score.py", "slmops/generation.py", "slmops/serving/batcher.py"} <= uploaded
    assert deployment.code_configuration.scoring_script == "slmops/serving/score.py"


def test_the_deployment_is_sized_as_slmops_serve_sizes_itself():
    """The spec's workers, threads and concurrency are batcher.plan()'s for its instance type (4 cores, 14 GB) and a
    small model, and the gateway lets through as many concurrent requests as the worker has threads."""
    import shlex

    import yaml

    from slmops.serving import batcher

    spec = yaml.safe_load((SPECS / "deployment.yml").read_text())
    env = spec["environment_variables"]
    plan = batcher.plan(4, 14 * 2**30, 600 * 2**20, max_batch=int(env["SLMOPS_MAX_BATCH"]))
    threads = int(shlex.split(env["GUNICORN_CMD_ARGS"])[1])
    assert (int(env["WORKER_COUNT"]), threads, int(env["OMP_NUM_THREADS"])) == (
        plan["workers"], plan["threads"], plan["compute_threads"])
    assert spec["request_settings"]["max_concurrent_requests_per_instance"] == plan["workers"] * threads
