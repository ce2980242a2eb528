"""Azure OpenAI and OpenAI fine-tuning through the `openai` package: upload, job, status, events, checkpoints, cancel.

    target = resolve_target("azure-openai", "https://my-aoai.openai.azure.com", None)
    client = connect(target, token_provider=entra_token_provider(credential))       # or api_key=...
    body = job_body(target, "gpt-4o-mini-2024-07-18", suffix="tone", epochs=3)
    print(json.dumps(plan(target, {"training_file": train, "validation_file": val}, body, auth="Entra ID")))
    job = submit(client, {"training_file": train, "validation_file": val}, body)
    status(client, job["id"]); events(client, job["id"]); checkpoints(client, job["id"]); cancel(client, job["id"])

REST calls (base URL `https://<resource>.openai.azure.com/openai` with `?api-version=...`, or
`https://api.openai.com/v1`): `POST /files` (multipart: purpose=fine-tune, file), `GET /files/<id>` until the file is
processed, `POST /fine_tuning/jobs`, `GET /fine_tuning/jobs/<id>`, `GET .../events`, `GET .../checkpoints`,
`POST .../cancel`. Azure OpenAI takes `hyperparameters` (GA API version); OpenAI takes `method` (`supervised`, its
hyperparameters inside), which replaced `hyperparameters` there.

Auth: an API key (from the environment, read by the CLI) or, for Azure OpenAI, a Microsoft Entra ID bearer token
from azure-identity's `get_bearer_token_provider` (scope https://cognitiveservices.azure.com/.default). Neither is
ever printed, logged or written: the plan names only where the credential comes from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from pathlib import Path
from urllib.parse import urlparse

from slmops.errors import UserError

SERVICES = ("azure-openai", "openai")
DEFAULT_API_VERSION = "2024-10-21"
OPENAI_BASE_URL = "https://api.openai.com/v1"
ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
KEY_VARIABLES = {"azure-openai": "AZURE_OPENAI_API_KEY", "openai": "OPENAI_API_KEY"}
ENDPOINT_VARIABLE = "AZURE_OPENAI_ENDPOINT"
AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")
TERMINAL = {"succeeded", "failed", "cancelled"}


def require_openai():
    """The `openai` package, or a UserError saying how to install it."""
    try:
        import openai
    except ImportError:
        raise UserError("the `openai` package is not installed; it drives Azure OpenAI/OpenAI fine-tuning and "
                        "scoring of hosted endpoints: pip install 'slmops[maas]' (or pip install openai)") from None
    return openai


@dataclasses.dataclass(frozen=True)
class Target:
    service: str               # azure-openai | openai
    endpoint: str              # the resource (https://x.openai.azure.com) or the API base URL
    api_version: str | None    # Azure OpenAI only

    @property
    def base_url(self) -> str:
        if self.service == "azure-openai":
            return self.endpoint.rstrip("/") + "/openai"
        return self.endpoint.rstrip("/")

    def url(self, path: str) -> str:
        return self.base_url + path + (f"?api-version={self.api_version}" if self.api_version else "")


def is_azure_host(url: str) -> bool:
    return (urlparse(url).hostname or "").endswith(AZURE_HOSTS)


def resolve_target(service: str, endpoint: str | None, api_version: str | None) -> Target:
    if service not in SERVICES:
        raise UserError(f"--service {service!r} is not one of {list(SERVICES)}")
    if service == "openai":
        return Target("openai", endpoint or OPENAI_BASE_URL, None)
    if not endpoint:
        raise UserError(f"Azure OpenAI needs its endpoint: pass --endpoint https://<resource>.openai.azure.com or "
                        f"set {ENDPOINT_VARIABLE}")
    if not urlparse(endpoint).scheme.startswith("http"):
        raise UserError(f"--endpoint {endpoint!r} is not a URL; e.g. https://<resource>.openai.azure.com")
    return Target("azure-openai", endpoint.rstrip("/"), api_version or DEFAULT_API_VERSION)


def entra_token_provider(credential):
    """A callable returning a fresh Entra ID bearer token for Azure OpenAI (azure-identity)."""
    from azure.identity import get_bearer_token_provider

    return get_bearer_token_provider(credential, ENTRA_SCOPE)


def connect(target: Target, *, api_key: str | None = None, token_provider=None, http_client=None, max_retries=2):
    """An `openai.AzureOpenAI` or `openai.OpenAI` client; `http_client` lets tests pass a recording transport."""
    openai = require_openai()
    if target.service == "azure-openai":
        if api_key is None and token_provider is None:
            raise UserError(f"no credential for Azure OpenAI: set {KEY_VARIABLES['azure-openai']}, or sign in for "
                            "Entra ID (az login / managed identity) and do not pass --no-entra")
        return openai.AzureOpenAI(azure_endpoint=target.endpoint, api_version=target.api_version, api_key=api_key,
                                  azure_ad_token_provider=None if api_key else token_provider,
                                  http_client=http_client, max_retries=max_retries)
    if not api_key:
        raise UserError(f"no OpenAI API key: set {KEY_VARIABLES['openai']}")
    return openai.OpenAI(base_url=target.base_url, api_key=api_key, http_client=http_client, max_retries=max_retries)


@contextlib.contextmanager
def service_errors(what: str, target: Target | None = None):
    """The service's answers a user can act on as UserError (exit 2), with the service's own message."""
    openai = require_openai()
    where = f" ({target.base_url})" if target else ""
    try:
        yield
    except openai.AuthenticationError as exc:
        fix = (f"set {KEY_VARIABLES[target.service]}" if target else "check the key") + \
            (", or sign in for Entra ID (az login) with a role such as Cognitive Services OpenAI Contributor"
             if target and target.service == "azure-openai" else "")
        raise UserError(f"not authorized to {what}{where}: {_message(exc)}; {fix}") from None
    except openai.PermissionDeniedError as exc:
        raise UserError(f"permission denied to {what}{where}: {_message(exc)}") from None
    except openai.NotFoundError as exc:
        raise UserError(f"not found while trying to {what}{where}: {_message(exc)}; check the job id, the "
                        "endpoint, the deployment or model name and the API version") from None
    except (openai.BadRequestError, openai.UnprocessableEntityError, openai.ConflictError) as exc:
        raise UserError(f"the service refused to {what}{where}: {_message(exc)}") from None
    except openai.APIConnectionError as exc:
        raise UserError(f"cannot reach the service to {what}{where}: {exc}; check the endpoint URL and the network")\
            from None


def _message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return str(getattr(exc, "message", exc))


# --------------------------------------------------------------------------------------------------------------
# The job request


def job_body(target: Target, model: str, *, training_file: str = "<id of the uploaded training file>",
             validation_file: str | None = None, suffix: str | None = None, epochs: int | None = None,
             batch_size: int | None = None, learning_rate_multiplier: float | None = None,
             seed: int | None = None, metadata: dict[str, str] | None = None) -> dict:
    """The JSON body of `POST /fine_tuning/jobs` (file ids filled in by `submit`)."""
    hyper = {k: v for k, v in (("n_epochs", epochs), ("batch_size", batch_size),
                               ("learning_rate_multiplier", learning_rate_multiplier)) if v is not None}
    body = {"model": model, "training_file": training_file}
    if validation_file:
        body["validation_file"] = validation_file
    if suffix:
        body["suffix"] = suffix
    if seed is not None:
        body["seed"] = seed
    if target.service == "openai":
        body["method"] = {"type": "supervised", **({"supervised": {"hyperparameters": hyper}} if hyper else {})}
        if metadata:
            body["metadata"] = metadata
    elif hyper:
        body["hyperparameters"] = hyper
    return body


def _file_facts(path: Path) -> dict:
    raw = Path(path).read_bytes()
    return {"filename": Path(path).name, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def plan(target: Target, files: dict[str, Path], body: dict, *, auth: str) -> dict:
    """The requests submit makes, in order, built offline (no credential, no network)."""
    requests = []
    placeholders = {}
    for field, path in files.items():
        placeholders[field] = f"<id of uploaded {Path(path).name}>"
        requests.append({"method": "POST", "url": target.url("/files"),
                         "multipart": {"purpose": "fine-tune", "file": _file_facts(path)}})
        requests.append({"method": "GET", "url": target.url(f"/files/{placeholders[field]}"),
                         "until": "status is processed"})
    requests.append({"method": "POST", "url": target.url("/fine_tuning/jobs"), "json": {**body, **placeholders}})
    return {"service": target.service, "base_url": target.base_url, "api_version": target.api_version,
            "auth": auth, "requests": requests}


def wait_processed(client, file_id: str, *, timeout_s: float = 600, poll_s: float = 5, sleep=time.sleep) -> dict:
    """Poll `GET /files/<id>` until the service has processed (validated) the upload."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = client.files.retrieve(file_id)
        state = getattr(info, "status", None)
        if state in (None, "processed"):
            return info
        if state in ("error", "failed", "deleted"):
            detail = getattr(info, "status_details", None) or ""
            raise UserError(f"the service rejected the uploaded file {info.filename} ({file_id}): {state} {detail}")
        if time.monotonic() > deadline:
            raise UserError(f"the uploaded file {file_id} is still {state!r} after {timeout_s:.0f} s; run submit "
                            "again later (the same file is uploaded again)")
        sleep(poll_s)


def submit(client, files: dict[str, Path], body: dict, *, echo=print, sleep=time.sleep) -> dict:
    """Upload each file (purpose fine-tune), wait until processed, then create the job with `body`."""
    ids = {}
    for field, path in files.items():
        with open(path, "rb") as f:
            uploaded = client.files.create(file=(Path(path).name, f), purpose="fine-tune")
        echo(f"uploaded {Path(path).name}: {uploaded.id}")
        wait_processed(client, uploaded.id, sleep=sleep)
        ids[field] = uploaded.id
    job = client.fine_tuning.jobs.create(**{**body, **ids})
    return describe(job)


def describe(job) -> dict:
    error = getattr(job, "error", None)
    error = error.model_dump(exclude_none=True) if hasattr(error, "model_dump") else error
    hyper = getattr(job, "hyperparameters", None)
    return {"id": job.id, "status": job.status, "model": job.model, "fine_tuned_model": job.fine_tuned_model,
            "trained_tokens": getattr(job, "trained_tokens", None), "training_file": job.training_file,
            "validation_file": getattr(job, "validation_file", None),
            "hyperparameters": hyper.model_dump(exclude_none=True) if hasattr(hyper, "model_dump") else hyper,
            "created_at": job.created_at, "finished_at": getattr(job, "finished_at", None),
            "metadata": getattr(job, "metadata", None) or None, "error": error or None}


def file_bytes(client, file_id: str) -> int | None:
    """The size of an uploaded file (`GET /files/<id>`), as the service recorded it."""
    return getattr(client.files.retrieve(file_id), "bytes", None)


def status(client, job_id: str) -> dict:
    return describe(client.fine_tuning.jobs.retrieve(job_id))


def events(client, job_id: str, limit: int = 20) -> list[dict]:
    """The job's latest `limit` events, oldest first."""
    page = client.fine_tuning.jobs.list_events(job_id, limit=limit)
    rows = [{"created_at": e.created_at, "level": e.level, "message": e.message} for e in page.data]
    return sorted(rows, key=lambda e: e["created_at"])


def checkpoints(client, job_id: str) -> list[dict]:
    page = client.fine_tuning.jobs.checkpoints.list(job_id)
    return [{"id": c.id, "step_number": c.step_number, "model": c.fine_tuned_model_checkpoint,
             "metrics": c.metrics.model_dump(exclude_none=True) if c.metrics is not None else {}}
            for c in page.data]


def cancel(client, job_id: str) -> dict:
    return describe(client.fine_tuning.jobs.cancel(job_id))
