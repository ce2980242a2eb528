"""Serverless fine-tuning on Azure AI Foundry / Azure ML (models as a service) through azure-ai-ml.

    train = data_asset(Path("train_chat.jsonl"), "tone")           # name tone-train, version = content hash
    job = build_job("azureml://registries/azureml/models/Phi-4-mini-instruct/versions/1", train, validation,
                    output_model="phi4-tone", hyperparameters={"num_train_epochs": "1"}, name="tone-ft-1a2b3c")
    print(json.dumps(dry_run(job, [train, validation])))           # offline: what submit sends
    created = submit(ml_client, job, [train, validation])           # data assets (get or upload), then the job
    status(ml_client, created.name); events(ml_client, created.name); cancel(ml_client, created.name)

The job is azure-ai-ml's `create_finetuning_job` (task ChatCompletion, model provider Custom) sent with
`ml_client.jobs.create_or_update`: `PUT .../jobs/<name>` with `jobType: FineTuning`. Data is uploaded as named
`uri_file` data assets whose version is the file's content hash, so the same data is uploaded once and a job names
exactly the bytes it trained on. On success the service registers the model under `output_model` in the workspace
(`azureml:<output_model>:<version>`); see docs/maas.md for the follow-up (serverless endpoint, `slmops maas score`,
registration with our lineage tags and gate).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

from slmops.errors import UserError

MODEL_URI = re.compile(r"^azureml://registries/(?P<registry>[^/]+)/models/(?P<name>[^/]+)"
                       r"(/(versions/(?P<version>[^/]+)|labels/(?P<label>[^/]+)))?$")
TERMINAL = {"Completed", "Failed", "Canceled", "NotResponding"}
ASSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")


def check_model(model: str) -> str | None:
    """A problem when `model` is not a registry model URI (the serverless fine-tuning input), else None."""
    if not MODEL_URI.match(model or ""):
        return (f"--model {model!r} is not an Azure ML registry model; use the model's asset ID from the Foundry "
                "model catalog, e.g. azureml://registries/azureml/models/Phi-4-mini-instruct/versions/1 (or "
                ".../labels/latest)")
    return None


@dataclasses.dataclass(frozen=True)
class DataAsset:
    path: Path
    name: str
    version: str
    sha256: str

    @property
    def ref(self) -> str:
        return f"azureml:{self.name}:{self.version}"

    def entity(self):
        from azure.ai.ml.entities import Data

        return Data(path=str(self.path), type="uri_file", name=self.name, version=self.version,
                    description=f"slmops maas export of {self.path.name} (sha256 {self.sha256})",
                    tags={"slmops.sha256": self.sha256})


def data_asset(path: Path, name: str) -> DataAsset:
    """A named data asset for an exported JSONL file; its version is the first 16 hex digits of the content hash."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if not ASSET_NAME.match(name):
        raise UserError(f"data asset name {name!r} is not valid: letters, digits, '-', '_', '.'; start with a letter "
                        "or digit (pass --asset-prefix)")
    return DataAsset(Path(path), name, digest[:16], digest)


def arm_data_id(workspace, asset: DataAsset) -> str:
    """The workspace ARM id azure-ai-ml turns `azureml:<name>:<version>` into when it submits the job."""
    return (f"/subscriptions/{workspace.subscription_id}/resourceGroups/{workspace.resource_group}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{workspace.workspace_name}"
            f"/data/{asset.name}/versions/{asset.version}")


def build_job(model: str, train: DataAsset, validation: DataAsset, *, output_model: str, name: str,
              hyperparameters: dict[str, str] | None = None, experiment: str | None = None,
              display_name: str | None = None, tags: dict[str, str] | None = None, workspace=None):
    """azure-ai-ml's CustomModelFineTuningJob for chat completion. Data is referenced as the asset
    (`azureml:<name>:<version>`), or by its workspace ARM id when `workspace` is known (what the SDK sends)."""
    from azure.ai.ml.finetuning import FineTuningTaskType, create_finetuning_job

    def ref(asset):
        return arm_data_id(workspace, asset) if workspace is not None else asset.ref

    return create_finetuning_job(  # azure-ai-ml logs that this API is experimental (it is)
        model=model, task=FineTuningTaskType.CHAT_COMPLETION, training_data=ref(train),
        validation_data=ref(validation), output_model_name_prefix=output_model,
        hyperparameters={k: str(v) for k, v in (hyperparameters or {}).items()}, name=name,
        experiment_name=experiment or "slmops-maas", display_name=display_name or name, tags=tags or {})


def dry_run(job, assets: list[DataAsset]) -> dict:
    """What submit sends, built offline: the data versions (PUT .../data/<name>/versions/<version> when missing;
    `dataUri` is where azure-ai-ml uploads the file) and the job body (PUT .../jobs/<name>)."""
    data = {}
    for asset in assets:
        data[f"{asset.name}:{asset.version}"] = {
            "local_file": str(asset.path), "sha256": asset.sha256,
            "body": {"properties": {"dataType": "uri_file", "isAnonymous": False, "isArchived": False,
                                    "description": asset.entity().description, "tags": {"slmops.sha256": asset.sha256},
                                    "properties": {},
                                    "dataUri": f"azureml://datastores/workspaceblobstore/paths/LocalUpload/"
                                               f"<upload id>/{asset.path.name}"}}}
    return {"service": "foundry", "data": data, "job": {"name": job.name, "body": job._to_rest_object().as_dict()},
            "notes": ["azure-ai-ml adds the git properties (mlflow.source.git.*) of the current folder to "
                      "properties.properties at submit",
                      "data references are `azureml:<name>:<version>` unless the workspace is known; the SDK sends "
                      "them as the workspace ARM id"]}


def ensure_data(ml_client, asset: DataAsset) -> str:
    """Get the data version, or upload the file and create it; returns 'exists' or 'created'."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        ml_client.data.get(asset.name, version=asset.version)
        return "exists"
    except ResourceNotFoundError:
        ml_client.data.create_or_update(asset.entity())
        return "created"


def submit(ml_client, job, assets: list[DataAsset], echo=print):
    """Ensure the data assets, then `jobs.create_or_update(job)`; returns the created job."""
    for asset in assets:
        echo(f"data {asset.name}:{asset.version}: {ensure_data(ml_client, asset)}")
    return ml_client.jobs.create_or_update(job)


def _text(value) -> str:
    return str(getattr(value, "value", value))


def output_model(job) -> str | None:
    """The registered model's name the job writes on success."""
    out = (job.outputs or {}).get("registered_model")
    return getattr(out, "name", None) or (out.get("name") if isinstance(out, dict) else None)


def _path(value) -> str | None:
    return getattr(value, "path", value)


def status(ml_client, name: str) -> dict:
    job = ml_client.jobs.get(name)
    state = _text(job.status)
    model = output_model(job)
    return {"service": "foundry", "id": job.name, "status": state, "studio_url": job.studio_url,
            "output_model": model, "registered_model": f"azureml:{model}" if model and state == "Completed" else None,
            "model": _path(job.model), "training_data": _path(job.training_data),
            "validation_data": _path(job.validation_data), "tags": dict(job.tags or {})}


def model_version(ml_client, name: str) -> dict | None:
    """The latest version of the model a job registered (`GET .../models/<name>/versions`, newest first), or None."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.ai.ml.exceptions import ValidationException

    try:
        model = ml_client.models.get(name, label="latest")
    except (ResourceNotFoundError, ValidationException):
        return None
    return {"name": model.name, "version": str(model.version), "id": model.id}


def events(ml_client, name: str) -> list[dict]:
    """The job's steps (child runs the service starts) and their statuses; full logs: `slmops logs <name>`."""
    job = ml_client.jobs.get(name)
    rows = [{"name": job.name, "step": "job", "status": _text(job.status)}]
    rows += [{"name": child.name, "step": child.display_name or child.name, "status": _text(child.status)}
             for child in ml_client.jobs.list(parent_job_name=name)]
    return rows


def cancel(ml_client, name: str) -> None:
    ml_client.jobs.begin_cancel(name).result()
