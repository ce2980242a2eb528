"""The cloud commands driven through azure-core's transport layer.

Each test runs the real click command, which builds a real MLClient (fake credential, `transport=FakeAzureML`)
and lets azure-ai-ml do everything it does against a workspace; only the socket is replaced. The assertions are
on the HTTP requests made: method, path (relative to the workspace) and body.

What this proves: which REST calls slmops causes and in which order, the bodies azure-ai-ml builds from our YAML
(pinned environments, components, the pipeline job), idempotent publishing, and the CLI's output.
What it cannot prove: that the real service accepts these bodies, that the compute clusters exist, that the
images build, or the blob transfers (code snapshots are answered as already uploaded; the final blob download of
`download` is replaced by a recorder).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.azure.fake_service import SECRET_MARK


def test_submit_ensures_environments_registers_components_and_puts_the_job(invoke, service):
    result, calls = invoke("submit", "pipelines/finetune_distributed.yaml",
                           "--set", "data=azureml:tone-data:1", "--set", "base_model=azureml:phi-mini:1",
                           "--set", "max_steps=7", "--experiment", "exp-transport", "--compute", "cpu-small")
    assert result.exit_code == 0, result.output
    env_puts = [c for c in calls if c.method == "PUT" and c.path.startswith("/environments/")]
    assert sorted(re.sub(r"/versions/.*", "", c.path) for c in env_puts) == ["/environments/slmops-cpu",
                                                                             "/environments/slmops-gpu"]
    assert all("azureml-mlflow==" in c.body["properties"]["condaFile"] for c in env_puts)
    component_puts = [c for c in calls if c.method == "PUT" and c.path.startswith("/components/azureml_anonymous/")]
    specs = {c.body["properties"]["componentSpec"]["command"].split()[2]: c.body["properties"]["componentSpec"]
             for c in component_puts}
    assert set(specs) == {f"slmops.steps.{s}" for s in ("prep", "finetune", "evaluate", "optimize", "register")}
    env_versions = {c.path.split("/")[2]: c.path.split("/")[-1] for c in env_puts}
    assert specs["slmops.steps.finetune"]["environment"].endswith(
        f"/environments/slmops-gpu/versions/{env_versions['slmops-gpu']}")
    assert specs["slmops.steps.prep"]["environment"].endswith(
        f"/environments/slmops-cpu/versions/{env_versions['slmops-cpu']}")
    (job_put,) = [c for c in calls if c.method == "PUT" and c.path.startswith("/jobs/")]
    assert calls[-1] is job_put
    props = job_put.body["properties"]
    assert props["jobType"] == "Pipeline" and props["experimentName"] == "exp-transport"
    assert props["inputs"]["max_steps"] == {"jobInputType": "literal", "value": "7"}
    assert props["inputs"]["data"]["uri"].endswith("/workspaces/ws-slmops/data/tone-data/versions/1")
    assert props["settings"]["default_compute"].endswith("/computes/cpu-small")
    finetune = props["jobs"]["finetune"]
    assert finetune["distribution"] == {"distribution_type": "PyTorch", "process_count_per_instance": 4}
    assert finetune["resources"] == {"instance_count": 2}
    assert finetune["computeId"].endswith("/computes/gpu-cluster")
    assert finetune["componentId"].startswith("/subscriptions/") and "/components/azureml_anonymous/" in finetune["componentId"]
    name = job_put.path.rsplit("/", 1)[1]
    assert f"run: {name}" in result.output and f"studio: https://ml.azure.com/runs/{name}" in result.output


def test_submit_twice_reuses_the_environment_versions(invoke):
    args = ("pipelines/finetune.yaml", "--set", "data=azureml:tone-data:1", "--set", "base_model=azureml:phi-mini:1")
    invoke("submit", *args)
    result, calls = invoke("submit", *args)
    assert result.exit_code == 0, result.output
    assert not [c for c in calls if c.method == "PUT" and c.path.startswith("/environments/")]
    assert [c.method for c in calls if c.path.startswith("/environments/")] == ["GET", "GET"]
    assert "environment slmops-cpu:" in result.output and ": exists" in result.output


def test_components_publish_registers_at_package_version_then_is_a_no_op(invoke):
    from slmops import __version__

    result, calls = invoke("components", "publish")
    assert result.exit_code == 0, result.output
    puts = [c.path for c in calls if c.method == "PUT" and c.path.startswith("/components/")]
    assert puts == [f"/components/slmops_{s}/versions/{__version__}"
                    for s in ("evaluate", "finetune", "optimize", "prep", "register")]
    again, calls = invoke("components", "publish")
    assert again.exit_code == 0, again.output
    assert not [c for c in calls if c.method in ("PUT", "POST")]
    assert again.output.count(": exists") == 7  # 2 environments + 5 components


def test_status_lists_the_steps(invoke):
    result, calls = invoke("status", "run1")
    assert result.exit_code == 0, result.output
    assert "run1 (run1): Completed" in result.output and "  prep: Completed" in result.output
    assert ("GET", "/jobs/run1") in [(c.method, c.path) for c in calls]
    assert ("GET", "/history/v1.0/runs/run1/children") in [(c.method, c.path) for c in calls]


def test_status_of_unknown_run_is_a_user_error(invoke):
    result, _ = invoke("status", "no_such_run")
    assert result.exit_code == 2
    assert "Not found while trying to get run no_such_run" in result.output


def test_logs_of_a_running_run_without_follow_does_not_block(invoke):
    result, calls = invoke("logs", "run2")
    assert result.exit_code == 0, result.output
    assert "run2 is Running" in result.output and "--follow" in result.output
    assert [(c.method, c.path) for c in calls] == [("GET", "/jobs/run2")]


def test_logs_of_a_finished_run_prints_every_steps_log_files(invoke):
    result, calls = invoke("logs", "run1")
    assert result.exit_code == 0, result.output
    assert "===== run1: logs/azureml/executionlogs.txt\n[2026-11-23 04:00:00Z] Step prep: Completed" in result.output
    assert "===== prep: user_logs/std_log.txt\nprep: 600 rows -> train 540, validation 60" in result.output
    made = [(c.method, c.path) for c in calls]
    for request in (("GET", "/history/v1.0/runs/run1/details"), ("GET", "/history/v1.0/runs/run1/children"),
                    ("GET", "/history/v1.0/runs/run1_prep/details"), ("GET", "/logs/std_log.txt")):
        assert request in made
    assert SECRET_MARK not in result.output  # the SAS signature of the log URLs


@pytest.mark.parametrize("output", [["--output", "registration"], []], ids=["one-output", "all"])
def test_download_resolves_the_named_output(invoke, monkeypatch, tmp_path, output):
    import azure.ai.ml.operations._job_operations as job_operations

    fetched = []
    monkeypatch.setattr(job_operations, "download_artifact_from_aml_uri", lambda **kw: fetched.append(kw))
    result, calls = invoke("download", "run1", *output, "--to", str(tmp_path))
    assert result.exit_code == 0, result.output
    (rundata,) = [c for c in calls if c.path == "/history/v1.0/rundata"]
    assert rundata.method == "POST" and rundata.body["runId"] == "run1"
    expected = [("azureml://datastores/workspaceblobstore/paths/azureml/run1/registration/",
                 tmp_path / "named-outputs" / "registration")]
    if not output:  # all outputs, plus the run's logs from its artifact store
        expected.append(("azureml://datastores/workspaceartifactstore/paths/ExperimentRun/dcid.run1/",
                         tmp_path / "artifacts"))
    assert sorted((f["uri"], f["destination"]) for f in fetched) == sorted(expected)
    assert str(tmp_path / "named-outputs" / "registration" if output else tmp_path) in result.output


def test_cancel_posts_cancel(invoke):
    result, calls = invoke("cancel", "run2")
    assert result.exit_code == 0, result.output
    assert [(c.method, c.path, c.body) for c in calls] == [("POST", "/jobs/run2/cancel", None)]


def test_no_token_in_output_logs_payloads_or_artifacts(invoke, service, credential, caplog, tmp_path, monkeypatch):
    """Every command runs with DEBUG logging (azure-core's HTTP logger included); the fake token's mark must
    appear only in the Authorization header that azure-core sends, nowhere else."""
    import logging

    import azure.ai.ml.operations._job_operations as job_operations

    monkeypatch.setattr(job_operations, "download_artifact_from_aml_uri", lambda **kw: None)
    monkeypatch.chdir(tmp_path)  # anything a command writes by default lands here
    caplog.set_level(logging.DEBUG)
    pipeline = str(Path(__file__).parents[2] / "pipelines" / "finetune.yaml")
    sets = ("--set", "data=azureml:tone-data:1", "--set", "base_model=azureml:phi-mini:1")
    outputs = []
    first = len(service.calls)
    for args in (("submit", pipeline, *sets), ("submit", pipeline, *sets, "--dry-run"), ("status", "run1"),
                 ("logs", "run1"), ("cancel", "run2"),
                 ("download", "run1", "--output", "registration", "--to", str(tmp_path / "dl")),
                 ("components", "publish", "--project-dir", str(Path(pipeline).parents[1]))):
        result, _ = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
        outputs.append(result.output)
    assert credential.calls > 0  # the token was really fetched and used
    calls = service.calls[first:]
    assert any(SECRET_MARK in c.headers.get("Authorization", "") for c in calls)
    for text in outputs + [caplog.text]:
        assert SECRET_MARK not in text
    for call in calls:
        assert SECRET_MARK not in repr(call.body) and SECRET_MARK not in call.path
        # the only query allowed to carry it: a log file's SAS signature, sent to the storage account itself
        assert SECRET_MARK not in repr(call.query) or set(call.query) == {"sig"} and call.path.startswith("/logs/")
        leaked = [k for k, v in call.headers.items() if SECRET_MARK in v and k.lower() != "authorization"]
        # azure-ai-ml hands the user's token to the jobs service in this header, by design (pipeline jobs).
        assert leaked in ([], ["x-azureml-token"] if call.path.startswith("/jobs/") else [])
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET_MARK not in path.read_text(errors="replace"), path


def test_components_publish_to_a_registry(invoke, monkeypatch):
    """Registry publishing: discovery, environments and components under the registry's data plane, components
    pointing at the registry's environment versions. The code snapshot's blob upload is recorded, not sent."""
    from azure.ai.ml._artifacts._blob_storage_helper import BlobStorageClient

    from slmops import __version__

    uploads = []

    def upload(self, source, name, version, **kwargs):
        uploads.append((Path(source).name, name, version))
        return {"remote path": f"LocalUpload/{name}/{Path(source).name}", "name": name, "version": version,
                "indicator file": ""}

    monkeypatch.setattr(BlobStorageClient, "upload", upload)
    result, calls = invoke("components", "publish", "--registry", "slmops-reg")
    assert result.exit_code == 0, result.output
    made = [(c.method, c.path) for c in calls]
    assert made[0] == ("GET", "/registrymanagement/v1.0/registries/slmops-reg/discovery")
    component_puts = [c for c in calls if c.method == "PUT" and c.path.startswith("/registry/components/")]
    assert [c.path for c in component_puts] == [f"/registry/components/slmops_{s}/versions/{__version__}"
                                                for s in ("evaluate", "finetune", "optimize", "prep", "register")]
    env_versions = {c.path.split("/")[3]: c.path.split("/")[-1]
                    for c in calls if c.method == "PUT" and c.path.startswith("/registry/environments/")}
    assert set(env_versions) == {"slmops-cpu", "slmops-gpu"}
    finetune = component_puts[1].body["properties"]["componentSpec"]
    assert finetune["environment"] == (
        f"azureml://registries/slmops-reg/environments/slmops-gpu/versions/{env_versions['slmops-gpu']}")
    assert uploads and all(source == "sdk" for source, _, _ in uploads)
    again, calls = invoke("components", "publish", "--registry", "slmops-reg")
    assert again.exit_code == 0, again.output
    assert not [c for c in calls if c.method in ("PUT", "POST")]


def test_no_usable_credential_is_a_user_error_with_the_fix(service):
    """What DefaultAzureCredential raises when nothing is logged in, as the first request asks for a token."""
    from azure.core.exceptions import ClientAuthenticationError
    from click.testing import CliRunner

    from slmops.cli import main
    from tests.azure.conftest import WS_FLAGS

    class NoCredential:
        def get_token(self, *scopes, **kwargs):
            raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token.")

    result = CliRunner().invoke(main, ["status", "run1", *WS_FLAGS],
                                obj={"credential": NoCredential(), "client_kwargs": {"transport": service}})
    assert result.exit_code == 2
    assert "az login" in result.output and "Traceback" not in result.output
