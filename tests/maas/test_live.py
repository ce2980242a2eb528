"""Live checks against the real services; each skips unless its credentials are set in the environment.

    export OPENAI_API_KEY=...                                                    # OpenAI
    export AZURE_OPENAI_ENDPOINT=https://<resource>.openai.azure.com [AZURE_OPENAI_API_KEY=... or az login]
    export AZURE_SUBSCRIPTION_ID=... AZURE_RESOURCE_GROUP=... AZUREML_WORKSPACE_NAME=...   # Foundry (az login)
    export SLMOPS_LIVE_FT_JOB=... SLMOPS_LIVE_SCORE_ENDPOINT=... SLMOPS_LIVE_DEPLOYMENT=...      # maas register
    python -m pytest -q -m live tests/maas/test_live.py

They prove what the recorded transports cannot: that the services accept our files and job bodies. Each submits one
job on the 40-row tone sample and cancels it right away; the upload and the queued job are all that is spent. The
registration check only reads a job that already succeeded and sends 20 chat requests to its deployment.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.maas.conftest import SAMPLE, SYSTEM

pytestmark = pytest.mark.live
ROOT = Path(__file__).parents[2]


def _export(tmp_path):
    from slmops.maas import export

    options = export.Options(template="Phrase: {phrase}", completion_column="tone", system_prompt=SYSTEM)
    lines = SAMPLE.read_text().splitlines()
    (tmp_path / "raw.jsonl").write_text("\n".join(lines[:40]) + "\n")
    (tmp_path / "raw_val.jsonl").write_text("\n".join(lines[40:52]) + "\n")
    files = {}
    for field, raw, name in (("training_file", "raw.jsonl", "train.jsonl"),
                             ("validation_file", "raw_val.jsonl", "validation.jsonl")):
        conversations, problems = export.load_conversations(tmp_path / raw, options)
        assert not problems
        files[field] = export.write_jsonl(conversations, tmp_path / name)
    return files


@pytest.mark.skipif(not os.environ.get("OPENAI_API_KEY") and not (
    os.environ.get("AZURE_OPENAI_ENDPOINT") and os.environ.get("AZURE_OPENAI_API_KEY")),
    reason="set OPENAI_API_KEY, or AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_API_KEY")
def test_openai_submit_status_events_cancel(tmp_path):
    from slmops.maas import openai_ft

    azure = bool(os.environ.get("AZURE_OPENAI_ENDPOINT") and os.environ.get("AZURE_OPENAI_API_KEY"))
    service = "azure-openai" if azure else "openai"
    target = openai_ft.resolve_target(service, os.environ.get("AZURE_OPENAI_ENDPOINT") if azure else None, None)
    key = os.environ["AZURE_OPENAI_API_KEY" if azure else "OPENAI_API_KEY"]
    client = openai_ft.connect(target, api_key=key)
    body = openai_ft.job_body(target, "gpt-4o-mini-2024-07-18", validation_file="<validation>", suffix="slmops-live",
                              epochs=1)
    job = openai_ft.submit(client, _export(tmp_path), body)
    try:
        assert openai_ft.status(client, job["id"])["id"] == job["id"]
        assert isinstance(openai_ft.events(client, job["id"]), list)
    finally:
        openai_ft.cancel(client, job["id"])


@pytest.mark.skipif(not all(os.environ.get(v) for v in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP",
                                                        "AZUREML_WORKSPACE_NAME")),
                    reason="set AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZUREML_WORKSPACE_NAME")
def test_foundry_submit_status_cancel(tmp_path):
    import uuid

    from slmops.azure.workspace import default_credential, ml_client, resolve_workspace
    from slmops.maas import foundry

    workspace = resolve_workspace({}, os.environ, Path.cwd())
    client = ml_client(default_credential(), workspace)
    files = _export(tmp_path)
    train = foundry.data_asset(files["training_file"], "slmops-live-train")
    validation = foundry.data_asset(files["validation_file"], "slmops-live-validation")
    model = os.environ.get("SLMOPS_LIVE_FOUNDRY_MODEL",
                           "azureml://registries/azureml/models/Phi-4-mini-instruct/labels/latest")
    job = foundry.build_job(model, train, validation, output_model="slmops-live-tone",
                            name=f"slmops-live-{uuid.uuid4().hex[:8]}", hyperparameters={"num_train_epochs": "1"})
    created = foundry.submit(client, job, [train, validation])
    try:
        assert foundry.status(client, created.name)["id"] == created.name
    finally:
        foundry.cancel(client, created.name)


LIVE_REGISTER = ("SLMOPS_LIVE_FT_JOB", "SLMOPS_LIVE_SCORE_ENDPOINT", "SLMOPS_LIVE_DEPLOYMENT")


@pytest.mark.skipif(not all(os.environ.get(v) for v in LIVE_REGISTER),
                    reason="set SLMOPS_LIVE_FT_JOB (a succeeded job), SLMOPS_LIVE_SCORE_ENDPOINT and "
                           "SLMOPS_LIVE_DEPLOYMENT (where its model is deployed), with the services' credentials")
def test_register_a_succeeded_job(tmp_path, monkeypatch):
    """`slmops maas register` on a real succeeded job and its deployment, 20 held-out tone rows, into a fresh sqlite
    registry (no thresholds: gate=none). SLMOPS_LIVE_TRAINING_FILE names the exported training file where the job
    records no hash (Azure OpenAI)."""
    from click.testing import CliRunner

    from slmops import registry
    from slmops.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    (tmp_path / "test.jsonl").write_text("\n".join(SAMPLE.read_text().splitlines()[52:72]) + "\n")
    extra = ["--training-file", os.environ["SLMOPS_LIVE_TRAINING_FILE"]] \
        if os.environ.get("SLMOPS_LIVE_TRAINING_FILE") else []
    result = CliRunner().invoke(main, [
        "maas", "register", os.environ["SLMOPS_LIVE_FT_JOB"], "--model-name", "slmops-live-hosted",
        "--score-endpoint", os.environ["SLMOPS_LIVE_SCORE_ENDPOINT"], "--deployment",
        os.environ["SLMOPS_LIVE_DEPLOYMENT"], "--test-data", str(tmp_path / "test.jsonl"), "--template",
        "Phrase: {phrase}", "--completion_column", "tone", "--label_column", "tone", "--system_prompt", SYSTEM, *extra])
    assert result.exit_code == 0, result.output
    [version] = registry.list_versions(os.environ["MLFLOW_TRACKING_URI"], "slmops-live-hosted")
    assert version["tags"]["gate"] == "none" and version["tags"]["maas.job_id"] == os.environ["SLMOPS_LIVE_FT_JOB"]
    for variable in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY"):
        if os.environ.get(variable):
            assert os.environ[variable] not in result.output
