"""Fixtures for the cloud path: a fake Azure ML service at the transport layer, and a CLI runner wired to it."""

from __future__ import annotations

import pytest

from tests.azure.fake_service import (RESOURCE_GROUP, SECRET_MARK, SUBSCRIPTION, WORKSPACE, FakeAzureML,
                                      FakeCredential, job_resource)

WS_FLAGS = ["--subscription", SUBSCRIPTION, "--resource-group", RESOURCE_GROUP, "--workspace", WORKSPACE]
BLOB = "https://store.blob.core.windows.net/logs"
OUTPUT_ASSET = "azureml://locations/westeurope/workspaces/ws/data/azureml_run1_output_data_registration/versions/1"


@pytest.fixture(scope="module")
def service():
    """One fake workspace per test module, seeded with a finished pipeline run1 (+ a prep step) and a running run2."""
    fake = FakeAzureML()
    for name, status in (("run1", "Completed"), ("run2", "Running")):
        path, body = job_resource(name, status)
        fake.resources[path] = body
    fake.runs["run1"] = {"runId": "run1", "status": "Completed",
                         "logFiles": {"logs/azureml/executionlogs.txt": f"{BLOB}/executionlogs.txt?sig={SECRET_MARK}"},
                         "outputs": {"registration": {"assetId": OUTPUT_ASSET, "type": "uri_folder"}}}
    fake.runs["run1_prep"] = {"runId": "run1_prep", "parentRunId": "run1", "status": "Completed",
                              "displayName": "prep", "runType": "azureml.StepRun",
                              "logFiles": {"user_logs/std_log.txt": f"{BLOB}/std_log.txt?sig={SECRET_MARK}"}}
    fake.logs["/logs/executionlogs.txt"] = "[2026-11-23 04:00:00Z] Step prep: Completed\n"
    fake.logs["/logs/std_log.txt"] = "prep: 600 rows -> train 540, validation 60\n"
    fake.asset_uris[OUTPUT_ASSET] = "azureml://datastores/workspaceblobstore/paths/azureml/run1/registration/"
    return fake


@pytest.fixture(scope="module")
def credential():
    return FakeCredential()


@pytest.fixture
def invoke(service, credential):
    """invoke("status", "run1") -> (click Result, the calls it made): `slmops status run1 <workspace flags>`."""
    from click.testing import CliRunner

    from slmops.cli import main

    def run(*args, workspace=True):
        first = len(service.calls)
        result = CliRunner().invoke(main, [*args, *(WS_FLAGS if workspace else [])],
                                    obj={"credential": credential, "client_kwargs": {"transport": service}})
        return result, service.calls[first:]

    return run
