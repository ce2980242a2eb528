"""Azure AI Foundry serverless fine-tuning through a recording azure-core transport (tests/azure/fake_service.py):
the real MLClient and azure-ai-ml's create_finetuning_job run; only the socket and the blob upload are replaced."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from tests.azure.fake_service import (RESOURCE_GROUP, SECRET_MARK, SUBSCRIPTION, WORKSPACE, WS_PATH, FakeAzureML,
                                      FakeCredential, _response)
from tests.maas.conftest import TONE

WS_FLAGS = ["--subscription", SUBSCRIPTION, "--resource-group", RESOURCE_GROUP, "--workspace", WORKSPACE]
MODEL = "azureml://registries/azureml/models/Phi-4-mini-instruct/versions/1"


class FakeFoundry(FakeAzureML):
    """FakeAzureML plus data versions (GET 404 until PUT), child jobs of a fine-tuning job, and the model versions
    a job registers (seeded in `resources` at /models/<name>/versions/<version>)."""

    def route(self, request, method, path, query, body):
        if re.fullmatch(r"/data/[^/]+/versions/[^/]+", path):
            if method == "PUT":
                stored = {**body, "id": WS_PATH + path, "name": path.rsplit("/", 1)[1]}
                self.resources[path] = stored
                return _response(request, 201, stored)
            if method == "GET" and path in self.resources:
                return _response(request, 200, self.resources[path])
        if method == "GET" and (m := re.fullmatch(r"/models/([^/]+)/versions", path)):
            # what models.get(name, label="latest") lists: the newest version first ($orderBy, $top=1)
            versions = [r for p, r in self.resources.items() if p.startswith(f"/models/{m[1]}/versions/")]
            return _response(request, 200, {"value": versions[::-1][:int(query.get("$top", len(versions)))]})
        return super().route(request, method, path, query, body)


@pytest.fixture
def foundry(clean_env, monkeypatch):
    from azure.ai.ml._artifacts._blob_storage_helper import BlobStorageClient

    fake = FakeFoundry()
    fake.uploads = []

    def upload(self, source, name, version, **kwargs):
        fake.uploads.append((Path(source).name, Path(source).read_bytes()))
        return {"remote path": f"LocalUpload/{kwargs.get('asset_hash', 'h')}/{Path(source).name}", "name": name,
                "version": version, "indicator file": ""}

    monkeypatch.setattr(BlobStorageClient, "upload", upload)
    return fake


@pytest.fixture
def invoke(foundry):
    from click.testing import CliRunner

    from slmops.cli import main

    credential = FakeCredential()

    def run(*args, workspace=True):
        first = len(foundry.calls)
        result = CliRunner().invoke(main, [str(a) for a in args] + (WS_FLAGS if workspace else []),
                                    obj={"credential": credential, "client_kwargs": {"transport": foundry}})
        return result, foundry.calls[first:]

    run.credential = credential
    return run


def submit_args(train, validation, *extra):
    return ["maas", "submit", "--model", MODEL, "--data", train, "--validation-data", validation, *TONE,
            "--epochs", "1", "--learning-rate", "0.00002", "--hyperparameter", "lora_r=16", "--name", "tone-ft-1",
            "--output-model", "phi4-tone", *extra]


def test_dry_run_without_a_workspace_needs_no_credential(invoke, small_tone):
    train, validation = small_tone
    result, calls = invoke(*submit_args(train, validation, "--dry-run"), workspace=False)
    assert result.exit_code == 0, result.output
    assert calls == [] and invoke.credential.calls == 0
    payload = json.loads(result.stdout)
    details = payload["job"]["body"]["properties"]["fineTuningDetails"]
    assert details["trainingData"]["uri"].startswith("azureml:slmops-maas-train:")
    assert details["model"] == {"jobInputType": "mlflow_model", "uri": MODEL}
    assert details["taskType"] == "chatCompletion" and details["modelProvider"] == "Custom"
    assert details["hyperParameters"] == {"num_train_epochs": "1", "learning_rate": "2e-05", "lora_r": "16"}
    assert payload["checks"]["n_examples"] == 40


def test_submit_uploads_the_data_as_assets_and_puts_the_dry_run_job(invoke, foundry, small_tone, tmp_path):
    train, validation = small_tone
    dry, calls = invoke(*submit_args(train, validation, "--dry-run"))
    assert dry.exit_code == 0, dry.output
    assert calls == []  # the workspace flags make the data references exact; still no request
    plan = json.loads(dry.stdout)
    result, calls = invoke(*submit_args(train, validation, "--export-dir", tmp_path / "export"))
    assert result.exit_code == 0, result.output

    data_versions = sorted(plan["data"])
    made = [(c.method, c.path) for c in calls if c.path.startswith(("/data/", "/jobs/"))]
    train_v = next(v for v in data_versions if v.startswith("slmops-maas-train:")).split(":")[1]
    val_v = next(v for v in data_versions if v.startswith("slmops-maas-validation:")).split(":")[1]
    assert made == [("GET", f"/data/slmops-maas-train/versions/{train_v}"),
                    ("PUT", f"/data/slmops-maas-train/versions/{train_v}"),
                    ("GET", f"/data/slmops-maas-validation/versions/{val_v}"),
                    ("PUT", f"/data/slmops-maas-validation/versions/{val_v}"),
                    ("PUT", "/jobs/tone-ft-1")]
    assert sorted(foundry.uploads) == sorted([("train.jsonl", (tmp_path / "export" / "train.jsonl").read_bytes()),
                                              ("validation.jsonl",
                                               (tmp_path / "export" / "validation.jsonl").read_bytes())])
    data_put = next(c for c in calls if c.method == "PUT" and c.path.startswith("/data/slmops-maas-train/"))
    assert data_put.body["properties"]["dataType"] == "uri_file"
    assert data_put.body["properties"]["tags"] == plan["data"][f"slmops-maas-train:{train_v}"]["body"]["properties"][
        "tags"]
    job_put = calls[-1]
    sent = job_put.body["properties"]
    expected = plan["job"]["body"]["properties"]
    # azure-ai-ml adds the git properties of the current folder at submit (the dry run says so); all else is equal
    assert {k: v for k, v in sent.items() if k != "properties"} == {k: v for k, v in expected.items()
                                                                    if k != "properties"}
    assert set(sent["properties"]) <= {"mlflow.source.git.repoURL", "mlflow.source.git.branch",
                                       "mlflow.source.git.commit", "azureml.git.dirty"}
    assert sent["fineTuningDetails"]["trainingData"]["uri"] == f"{WS_PATH}/data/slmops-maas-train/versions/{train_v}"
    assert sent["outputs"] == {"registered_model": {"assetName": "phi4-tone", "jobOutputType": "mlflow_model"}}
    tags = sent["tags"]
    assert tags["slmops.maas"] == "foundry" and tags["lineage.base_model"] == MODEL
    assert tags["lineage.training_file_sha256"].startswith(train_v)
    assert "job: tone-ft-1" in result.output and "studio: https://ml.azure.com/runs/tone-ft-1" in result.output

    again, calls = invoke(*submit_args(train, validation, "--name", "tone-ft-2"))
    assert again.exit_code == 0, again.output
    assert not [c for c in calls if c.method == "PUT" and c.path.startswith("/data/")]  # same bytes: reused
    assert f"data slmops-maas-train:{train_v}: exists" in again.output


def test_status_events_cancel(invoke, foundry, small_tone):
    train, validation = small_tone
    assert invoke(*submit_args(train, validation))[0].exit_code == 0
    foundry.resources["/jobs/tone-ft-1"]["properties"]["status"] = "Completed"
    # the service's steps are child runs in run history (what `jobs.list(parent_job_name=...)` reads)
    foundry.runs["tone-ft-1-train"] = {"runId": "tone-ft-1-train", "parentRunId": "tone-ft-1", "status": "Completed",
                                       "displayName": "finetune", "runType": "azureml.StepRun"}

    status, calls = invoke("maas", "status", "tone-ft-1")
    assert status.exit_code == 0, status.output
    assert "status: Completed" in status.output and "registered_model: azureml:phi4-tone" in status.output
    # azure-ai-ml reads the job, sees jobType FineTuning, and reads it again at the fine-tuning API version
    assert [(c.method, c.path, c.query["api-version"]) for c in calls if c.path.startswith("/jobs")] == [
        ("GET", "/jobs/tone-ft-1", "2024-01-01-preview"), ("GET", "/jobs/tone-ft-1", "2024-10-01-preview")]
    events, calls = invoke("maas", "events", "tone-ft-1")
    assert events.exit_code == 0, events.output
    assert "job: Completed (tone-ft-1)" in events.output and "finetune: Completed (tone-ft-1-train)" in events.output
    assert "slmops logs tone-ft-1" in events.output
    assert ("GET", "/history/v1.0/runs/tone-ft-1/children") in [(c.method, c.path) for c in calls]
    cancel, calls = invoke("maas", "cancel", "tone-ft-1")
    assert cancel.exit_code == 0, cancel.output
    assert [(c.method, c.path, c.body) for c in calls] == [("POST", "/jobs/tone-ft-1/cancel", None)]
    missing, _ = invoke("maas", "status", "no-such-job")
    assert missing.exit_code == 2 and "Not found while trying to get the status of no-such-job" in missing.output
    checkpoints, _ = invoke("maas", "checkpoints", "tone-ft-1")
    assert checkpoints.exit_code == 2 and "checkpoints are an Azure OpenAI/OpenAI feature" in checkpoints.output


def test_foundry_needs_validation_data_and_a_registry_model(invoke, small_tone):
    train, _ = small_tone
    result, calls = invoke("maas", "submit", "--model", "azureml://registries/azureml/models", "--data", train,
                           "--service", "foundry", *TONE, "--learning-rate-multiplier", "2", "--dry-run")
    assert result.exit_code == 2 and calls == []
    assert "is not an Azure ML registry model" in result.output
    assert "needs validation data" in result.output
    assert "--learning-rate-multiplier is an Azure OpenAI/OpenAI hyperparameter" in result.output


def test_no_token_in_output_logs_or_files(invoke, foundry, small_tone, caplog, tmp_path, monkeypatch):
    train, validation = small_tone
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.DEBUG)
    outputs = []
    for args in (submit_args(train, validation, "--export-dir", tmp_path / "export"),
                 submit_args(train, validation, "--dry-run"), ["maas", "status", "tone-ft-1", "--json"],
                 ["maas", "events", "tone-ft-1"], ["maas", "cancel", "tone-ft-1"]):
        result, _ = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
        outputs.append(result.output)
    assert invoke.credential.calls > 0
    for text in outputs + [caplog.text]:
        assert SECRET_MARK not in text
    for call in foundry.calls:
        assert SECRET_MARK not in repr(call.body) and SECRET_MARK not in call.path
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET_MARK not in path.read_text(errors="replace"), path
