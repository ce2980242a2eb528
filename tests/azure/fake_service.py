"""A recording stand-in for the Azure ML REST API at azure-core's transport layer.

`FakeAzureML` is an `HttpTransport`: a real `MLClient` built with `transport=FakeAzureML()` and `FakeCredential()`
runs all of azure-ai-ml (validation, resolution, serialization, the azure-core pipeline with its auth and
logging policies) and only the last hop - the socket - is replaced. Every request is recorded as
`Call(method, path, query, body)`; responses have the shape the service returns (resource id, name,
properties) for the routes slmops uses. What this cannot prove: that the real service accepts these bodies,
that compute names exist, or anything about blob uploads (the code snapshot is answered as already uploaded).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import time
from urllib.parse import parse_qs, urlparse

import requests
from azure.core.credentials import AccessToken
from azure.core.pipeline._tools import is_rest
from azure.core.pipeline.transport import HttpTransport, RequestsTransportResponse

SUBSCRIPTION = "00000000-0000-0000-0000-0000000000aa"
RESOURCE_GROUP = "rg-slmops"
WORKSPACE = "ws-slmops"
WS_PATH = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
           f"/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE}")
# Recognisable secrets: neither may ever appear in output, logs, payloads or artifacts.
MLFLOW_URI = f"azureml://westeurope.api.azureml.ms/mlflow/v1.0{WS_PATH}"
SECRET_MARK = "SLMOPSFAKESECRETxDoNotLeak42"


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


# azure-ai-ml decodes the token (unverified) to check its audience, so it must look like a JWT.
FAKE_TOKEN = ".".join([_b64({"alg": "none", "typ": "JWT"}),
                       _b64({"aud": "https://ml.azure.com", "tid": "11111111-2222-3333-4444-555555555555"}),
                       SECRET_MARK])


class FakeCredential:
    """A TokenCredential that hands out FAKE_TOKEN and counts how often it was asked."""

    def __init__(self):
        self.calls = 0

    def get_token(self, *scopes, **kwargs):
        self.calls += 1
        return AccessToken(FAKE_TOKEN, int(time.time()) + 3600)


@dataclasses.dataclass
class Call:
    method: str
    path: str  # relative to the workspace (or registry) when under it, else absolute
    query: dict
    body: object
    headers: dict


def _response(request, status: int, body=None, headers=None, text: str | None = None):
    raw = requests.Response()
    raw.status_code = status
    raw._content = text.encode() if text is not None else b"" if body is None else json.dumps(body).encode()
    raw._content_consumed = True
    raw.raw = io.BytesIO(raw._content)
    raw.headers["Content-Type"] = "application/json"
    raw.headers.update(headers or {})
    raw.reason = {200: "OK", 201: "Created", 202: "Accepted", 404: "Not Found"}.get(status, "Error")
    raw.url = request.url
    if is_rest(request):
        from azure.core.rest._requests_basic import RestRequestsTransportResponse

        response = RestRequestsTransportResponse(request=request, internal_response=raw)
        response.read()
        return response
    return RequestsTransportResponse(request, raw)


def _not_found(request, what):
    return _response(request, 404, {"error": {"code": "UserError", "message": f"{what} not found"}})


class FakeAzureML(HttpTransport):
    """Recorded-shape answers for workspace assets, jobs and registries; `resources` holds what was PUT."""

    def __init__(self, resources: dict | None = None):
        self.calls: list[Call] = []
        self.resources: dict[str, dict] = dict(resources or {})  # relative path -> stored body
        self.runs: dict[str, dict] = {}  # run history: run id -> RunDetails-shaped dict
        self.logs: dict[str, str] = {}  # "/logs/<file>" -> text, served as the log files' (SAS) URLs
        self.asset_uris: dict[str, str] = {}  # output asset id -> datastore URI

    # HttpTransport protocol
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None

    def open(self):
        return None

    def close(self):
        return None

    def send(self, request, **kwargs):
        url = urlparse(request.url)
        path = url.path
        for prefix in (WS_PATH, f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"):
            if prefix in path:
                path = path.replace(prefix, "", 1) or "/"
                break
        path = re.sub(r"^/mferp/managementfrontend/providers/Microsoft.MachineLearningServices/registries/[^/]+",
                      "/registry", path)
        raw_body = request.body if not is_rest(request) else request.content
        body = None
        if raw_body:
            text = raw_body.decode() if isinstance(raw_body, bytes) else str(raw_body)
            try:
                body = json.loads(text)
            except ValueError:
                body = text
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.calls.append(Call(request.method, path, query, body, dict(request.headers)))
        return self.route(request, request.method, path, query, body)

    def of(self, method: str, pattern: str) -> list[Call]:
        """Recorded calls with this method whose path matches the regex."""
        return [c for c in self.calls if c.method == method and re.fullmatch(pattern, c.path)]

    def route(self, request, method, path, query, body):
        full = WS_PATH + path
        if path.startswith("/registry/"):
            registry = re.search(r"/registries/([^/]+)", request.url)[1]
            full = f"azureml://registries/{registry}" + path[len("/registry"):]
        if method == "GET" and path == "/":
            return _response(request, 200, {"id": WS_PATH, "name": WORKSPACE, "location": "westeurope",
                                            "properties": {"friendlyName": WORKSPACE,
                                            "discoveryUrl": "https://westeurope.api.azureml.ms/discovery",
                                            "mlFlowTrackingUri": MLFLOW_URI}})
        if method == "GET" and path in ("/datastores", "/datastores/workspaceblobstore"):
            store = {"id": WS_PATH + "/datastores/workspaceblobstore", "name": "workspaceblobstore",
                     "properties": {"datastoreType": "AzureBlob", "accountName": "store", "containerName": "blobs",
                                    "endpoint": "core.windows.net", "protocol": "https", "isDefault": True,
                                    "credentials": {"credentialsType": "AccountKey"}}}
            return _response(request, 200, {"value": [store]} if path == "/datastores" else store)
        if method == "GET" and (m := re.fullmatch(r"/registrymanagement/v1.0/registries/([^/]+)/discovery", path)):
            return _response(request, 200, {"registryName": m[1], "primaryRegion": "westeurope",
                                            "primaryRegionResourceProviderUri": "https://westeurope.api.azureml.ms/",
                                            "subscriptionId": SUBSCRIPTION, "resourceGroup": RESOURCE_GROUP})
        if method == "PUT" and (m := re.fullmatch(r"/registry/tempdatarefs/([^/]+)/versions/([^/]+)", path)):
            blob = f"https://regstore.blob.core.windows.net/{m[1]}-{m[2]}"
            return _response(request, 200, {"blobReferenceForConsumption": {
                "blobUri": blob, "storageAccountArmId": "/storage/regstore",
                "credential": {"credentialType": "SAS", "sasUri": f"{blob}?sig=registry-sas"}}})
        if method == "GET" and path == "/discovery":
            region = "https://westeurope.api.azureml.ms"
            return _response(request, 200, {"api": region, "catalog": region, "experimentation": region,
                                            "gallery": region, "history": region, "hyperdrive": region,
                                            "labeling": region, "modelmanagement": region, "pipelines": region,
                                            "studio": "https://ml.azure.com"})
        if method == "GET" and (m := re.fullmatch(r"/computes/([^/]+)", path)):
            return _response(request, 200, {"id": full, "name": m[1], "location": "westeurope",
                                            "properties": {"computeType": "AmlCompute", "properties": {}}})
        if method == "GET" and re.fullmatch(r"/codes/[^/]+/versions", path) and "hash" in query:
            code = {"id": WS_PATH + "/codes/slmops-sdk/versions/1", "name": "1",
                    "properties": {"codeUri": "https://store.blob.core.windows.net/code/slmops-sdk", "isAnonymous": True}}
            return _response(request, 200, {"value": [code]})
        if method == "GET" and re.fullmatch(r"/codes/[^/]+/versions/[^/]+", path):
            return _response(request, 200, {"id": full, "name": path.rsplit("/", 1)[1],
                                            "properties": {"codeUri": "https://store.blob.core.windows.net/code/slmops-sdk"}})
        if method == "PUT" and re.fullmatch(r"(/registry)?/(environments|components|codes)/[^/]+/versions/[^/]+", path):
            stored = {**body, "id": full, "name": path.rsplit("/", 1)[1]}
            self.resources[path] = stored
            return _response(request, 201, stored)
        if method == "GET" and re.fullmatch(r"(/registry)?/(environments|components|codes)/[^/]+/versions/[^/]+", path):
            if path in self.resources:
                return _response(request, 200, self.resources[path])
            return _not_found(request, path)
        if method == "PUT" and (m := re.fullmatch(r"/jobs/([^/]+)", path)):
            name = m[1]
            props = {**body["properties"], "status": "NotStarted",
                     "services": {"Studio": {"jobServiceType": "Studio",
                                             "endpoint": f"https://ml.azure.com/runs/{name}?wsid={WS_PATH}"}}}
            stored = {"id": full, "name": name, "type": "Microsoft.MachineLearningServices/workspaces/jobs",
                      "properties": props}
            self.resources[path] = stored
            return _response(request, 201, stored)
        if method == "GET" and re.fullmatch(r"/jobs/([^/]+)", path):
            if path in self.resources:
                return _response(request, 200, self.resources[path])
            return _not_found(request, path)
        if method == "GET" and path == "/jobs":
            parent = query.get("parentJobName")
            children = [r for r in self.resources.values()
                        if r.get("properties", {}).get("parentJobName") == parent and parent]
            return _response(request, 200, {"value": children})
        if method == "GET" and (m := re.fullmatch(r"/history/v1.0/runs/([^/]+)/children", path)):
            return _response(request, 200, {"value": [run for run in self.runs.values() if run.get("parentRunId") == m[1]]})
        if method == "GET" and (m := re.fullmatch(r"/history/v1.0/runs/([^/]+)/details", path)):
            if m[1] not in self.runs:
                return _not_found(request, path)
            return _response(request, 200, self.runs[m[1]])
        if method == "GET" and path.startswith("/logs/"):
            if path not in self.logs:
                return _not_found(request, path)
            return _response(request, 200, text=self.logs[path], headers={"Content-Type": "text/plain"})
        if method == "POST" and path == "/history/v1.0/rundata":
            run = self.runs.get(body["runId"])
            if run is None:
                return _not_found(request, path)
            return _response(request, 200, {"runMetadata": {**run, "outputs": run.get("outputs", {})}})
        if method == "POST" and re.search(r"/dataversion/batchGetResolvedUris$", path):
            return _response(request, 200, {"values": {asset: {"uri": uri} for asset, uri in self.asset_uris.items()
                                                       if asset in body.get("values", [])}})
        if method == "POST" and re.fullmatch(r"/jobs/[^/]+/cancel", path):
            return _response(request, 202, None)
        return _not_found(request, f"{method} {path}")


def job_resource(name: str, status: str, job_type: str = "Pipeline", parent: str | None = None,
                 display_name: str | None = None) -> tuple[str, dict]:
    """(relative path, body) of a job as GET /jobs/<name> returns it, to seed FakeAzureML.resources."""
    props = {"jobType": job_type, "status": status, "displayName": display_name or name,
             "experimentName": "slmops-finetune", "properties": {}, "tags": {},
             "services": {"Studio": {"jobServiceType": "Studio",
                                     "endpoint": f"https://ml.azure.com/runs/{name}?wsid={WS_PATH}"}}}
    if job_type == "Pipeline":
        props.update({"jobs": {}, "inputs": {}, "outputs": {}, "settings": {}})
    else:
        props.update({"command": "python -m slmops.steps.prep", "environmentId": "azureml:slmops-cpu:1",
                      "componentId": WS_PATH + "/components/azureml_anonymous/versions/1",
                      "parentJobName": parent})
    return f"/jobs/{name}", {"id": WS_PATH + f"/jobs/{name}", "name": name,
                             "type": "Microsoft.MachineLearningServices/workspaces/jobs", "properties": props}
