"""Live checks against a real Azure ML workspace; skipped unless the workspace is named in the environment.

    export AZURE_SUBSCRIPTION_ID=... AZURE_RESOURCE_GROUP=... AZUREML_WORKSPACE_NAME=...
    az login        # or any DefaultAzureCredential source (managed identity, GitHub OIDC)
    python -m pytest -q -m live tests/azure/test_live.py

They prove what the transport tests cannot: that the service accepts our environment, component and pipeline
bodies. They create assets (environment + component versions, idempotently) and submit one pipeline run that is
cancelled right away, so no compute time is spent beyond queueing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
VARIABLES = ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME")

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not all(os.environ.get(v) for v in VARIABLES),
                       reason="set AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZUREML_WORKSPACE_NAME"),
]


@pytest.fixture(scope="module")
def client():
    from slmops.azure.workspace import default_credential, ml_client, resolve_workspace

    return ml_client(default_credential(), resolve_workspace({}, os.environ, Path.cwd()))


def test_components_publish_twice_is_a_no_op(client):
    from slmops.azure import components, environments

    envs = environments.load_environments(ROOT / "environments")
    components.publish(client, components.load_components(ROOT / "components"), envs)
    second = components.publish(client, components.load_components(ROOT / "components"), envs)
    assert set(second.values()) == {"exists"}


def test_submit_status_cancel(client):
    from slmops.azure import environments, submit

    job = submit.load_pipeline(ROOT / "pipelines" / "finetune.yaml", {}, [], "slmops-live-test", ROOT)
    used = submit.pin_environments(job, environments.load_environments(ROOT / "environments"))
    created = submit.submit(client, job, used)
    try:
        info = submit.status(client, created.name)
        assert info["name"] == created.name and info["studio_url"].startswith("https://ml.azure.com/")
    finally:
        submit.cancel(client, created.name)
