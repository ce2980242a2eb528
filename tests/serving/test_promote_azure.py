"""The Azure backend of `slmops promote`, through azure-core's transport layer: a real MLClient (fake credential)
whose HttpTransport answers with recorded-shape ARM responses for one online endpoint and records every request.
Asserted: the deployment PUT (path and body), the smoke test pinned with `azureml-model-deployment`, every
traffic update, and the rollback. Not proven here: that the live service accepts these bodies; the code asset
is given as an already-registered `azureml:` reference so no blob upload happens."""

from __future__ import annotations

import base64
import io
import json
import re
import time
from pathlib import Path

import pytest
import requests
from azure.core.credentials import AccessToken
from azure.core.pipeline._tools import is_rest
from azure.core.pipeline.transport import HttpTransport, RequestsTransportResponse
from azure.core.rest._requests_basic import RestRequestsTransportResponse

from slmops.serving.backends import SPECS, AzureEndpoint
from slmops.serving.promote import Plan, RolloutFailed, roll_out

SUB, RG, WS, EP = "00000000-0000-0000-0000-00000000abcd", "rg-slm", "ws-slm", "tone-ep"
WS_PATH = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.MachineLearningServices/workspaces/{WS}"
SCORING_URI = f"https://{EP}.westeurope.inference.ml.azure.com/score"
ENDPOINT_KEY = "fake-endpoint-key-0123456789"
GOOD_REPLY = {"text": "joyful", "prompt_tokens": 12, "completion_tokens": 2, "finish_reason": "stop", "model": "m"}


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


class FakeCredential:
    """azure-ai-ml decodes the token (unverified) for its audience, so it must look like a JWT."""

    def get_token(self, *scopes, **kwargs):
        token = ".".join([_b64({"alg": "none"}), _b64({"aud": "https://management.azure.com", "tid": "t"}), "sig"])
        return AccessToken(token, int(time.time()) + 3600)


class FakeOnlineEndpoints(HttpTransport):
    """One managed online endpoint (traffic blue=100) and its deployments, at the ARM REST layer."""

    def __init__(self, failing_slots=()):
        self.calls = []  # (method, path, body-or-None, headers)
        self.traffic, self.mirror = {"blue": 100}, {}
        self.deployments = {"blue": "azureml:tone:1"}
        self.failing_slots = set(failing_slots)
        self.model_tags = {"tone": {"gate": "passed"},
                           "tone-adapters-onnx": {"gate": "passed", "adapters": "topic,tone"}}

    def _endpoint(self):
        return {"id": f"{WS_PATH}/onlineEndpoints/{EP}", "name": EP, "location": "westeurope", "kind": "Managed",
                "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
                "identity": {"type": "SystemAssigned"},
                "properties": {"authMode": "Key", "traffic": dict(self.traffic), "mirrorTraffic": dict(self.mirror),
                               "scoringUri": SCORING_URI, "provisioningState": "Succeeded"}}

    def _deployment(self, slot):
        return {"id": f"{WS_PATH}/onlineEndpoints/{EP}/deployments/{slot}", "name": slot, "location": "westeurope",
                "kind": "Managed", "sku": {"name": "Default", "capacity": 1},
                "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments",
                "properties": {"endpointComputeType": "Managed", "model": self.deployments[slot],
                               "instanceType": "Standard_DS3_v2", "scaleSettings": {"scaleType": "Default"},
                               "requestSettings": {"requestTimeout": "PT1M30S",
                                                   "maxConcurrentRequestsPerInstance": 4},
                               "provisioningState": "Succeeded"}}

    def route(self, method, path, body, headers):
        ep = f"{WS_PATH}/onlineEndpoints/{EP}"
        if path == f"{WS_PATH}" and method == "GET":
            return 200, {"id": WS_PATH, "name": WS, "location": "westeurope", "properties": {
                "mlFlowTrackingUri": f"azureml://westeurope.api.azureml.ms/mlflow/v1.0{WS_PATH}"}}
        if path == ep and method == "GET":
            return 200, self._endpoint()
        if path == ep and method == "PUT":
            self.traffic = {k: v for k, v in body["properties"].get("traffic", {}).items()}
            self.mirror = dict(body["properties"].get("mirrorTraffic") or {})
            return 200, self._endpoint()
        if path == f"{ep}/listKeys" and method == "POST":
            return 200, {"primaryKey": ENDPOINT_KEY, "secondaryKey": "other"}
        if path == f"{ep}/deployments" and method == "GET":
            return 200, {"value": [self._deployment(s) for s in sorted(self.deployments)]}
        m = re.fullmatch(rf"{re.escape(ep)}/deployments/(\w+)", path)
        if m and method == "PUT":
            self.deployments[m.group(1)] = body["properties"]["model"]
            return 200, self._deployment(m.group(1))
        if m and method == "GET":
            return (200, self._deployment(m.group(1))) if m.group(1) in self.deployments else (404, {"error": {
                "code": "NotFound", "message": "no such deployment"}})
        if m and method == "DELETE":
            self.deployments.pop(m.group(1), None)
            return 204, None
        model = re.fullmatch(rf"{re.escape(WS_PATH)}/models/([\w.-]+)/versions/(\w+)", path)
        if model and method == "GET" and model.group(1) in self.model_tags:
            return 200, {"id": path, "name": model.group(2), "type": "Microsoft.MachineLearningServices/workspaces/"
                         "models/versions", "properties": {"tags": self.model_tags[model.group(1)],
                                                           "modelType": "custom_model", "flavors": {},
                                                           "modelUri": f"azureml://models/{model.group(1)}"}}
        if path == "/score" and method == "POST":
            assert headers.get("Authorization") == f"Bearer {ENDPOINT_KEY}"
            slot = headers.get("azureml-model-deployment") or max(self.traffic, key=self.traffic.get)
            return (500, {"message": "boom"}) if slot in self.failing_slots else (200, GOOD_REPLY)
        return 404, {"error": {"code": "NotFound", "message": f"fake has no route {method} {path}"}}

    def send(self, request, **kwargs):
        from urllib.parse import urlparse

        raw = request.content if is_rest(request) else request.body
        body = json.loads(raw.decode() if isinstance(raw, bytes) else raw) if raw else None
        path = urlparse(request.url).path
        self.calls.append((request.method, path, body, dict(request.headers)))
        status, reply = self.route(request.method, path, body, request.headers)
        response = requests.Response()
        response.status_code = status
        content = json.dumps(reply).encode() if reply is not None else b""
        response._content, response.raw = content, io.BytesIO(content)
        response.headers["Content-Type"] = "application/json"
        response.url = request.url
        if is_rest(request):  # newer generated operations use azure.core.rest requests and responses
            rest = RestRequestsTransportResponse(request=request, internal_response=response)
            rest.read()
            return rest
        return RequestsTransportResponse(request, response)

    def open(self):
        pass

    def close(self):
        pass

    def __exit__(self, *args):
        pass


@pytest.fixture
def spec(tmp_path):
    """The packaged deployment spec with the code as a registered asset and a pinned environment version."""
    text = (SPECS / "deployment.yml").read_text()
    text = text.replace("code: ../../..", f"code: azureml:{WS_PATH}/codes/slmops-serve/versions/1")
    text = text.replace("environment: azureml:slmops-cpu@latest", "environment: azureml:slmops-cpu:7")
    (tmp_path / "deployment.yml").write_text(text)
    return tmp_path / "deployment.yml"


def backend_for(transport, spec):
    from azure.ai.ml import MLClient

    client = MLClient(FakeCredential(), subscription_id=SUB, resource_group_name=RG, workspace_name=WS,
                      transport=transport, retry_total=0)  # no azure-core retry back-off on 5xx in tests
    return AzureEndpoint(client, EP, deployment_spec=spec)


def plan(**kw):
    return Plan(endpoint=EP, model="azureml:tone:2", name="tone", version="2", probes=3, **kw)


def writes(transport):
    """Every state-changing request: (method, path relative to the endpoint, body)."""
    ep = f"{WS_PATH}/onlineEndpoints/{EP}"
    return [(m, p.replace(ep, "") or "/", b) for m, p, b, _ in transport.calls
            if m in ("PUT", "DELETE") or p == "/score"]


def test_blue_green_rollout_requests(spec):
    fake = FakeOnlineEndpoints()
    moved = []
    report = roll_out(backend_for(fake, spec), plan(mirror=10, steps=(10, 50, 100)),
                      lambda: moved.append("production") or "1", say=lambda s: None)
    assert report["result"] == "promoted" and moved == ["production"]
    calls = writes(fake)
    put_green = calls[0]
    assert put_green[:2] == ("PUT", "/deployments/green")
    props = put_green[2]["properties"]
    assert props["model"].endswith("/models/tone/versions/2")
    assert props["environmentId"].endswith("/environments/slmops-cpu/versions/7")
    assert props["codeConfiguration"]["scoringScript"] == "slmops/serving/score.py"
    assert props["requestSettings"]["requestTimeout"] == "PT1M30S"
    assert props["requestSettings"]["maxConcurrentRequestsPerInstance"] == 16   # the spec: the worker's threads
    assert props["livenessProbe"]["failureThreshold"] == 30 and props["instanceType"] == "Standard_DS3_v2"
    # The smoke test goes to the new slot only.
    smoke = [c for c in fake.calls if c[1] == "/score" and c[3].get("azureml-model-deployment")]
    assert smoke and all(c[3]["azureml-model-deployment"] == "green" for c in smoke)
    traffic_updates = [(b["properties"]["traffic"], b["properties"].get("mirrorTraffic"))
                       for m, p, b in calls if (m, p) == ("PUT", "/")]
    assert traffic_updates == [({"blue": 100}, {"green": 10}), ({"blue": 100}, {}),
                               ({"green": 10, "blue": 90}, {}), ({"green": 50, "blue": 50}, {}),
                               ({"green": 100}, {})]  # azure-ai-ml leaves 0 % entries out of the body
    assert calls[-1][:2] == ("DELETE", "/deployments/blue")  # the old slot is retired last
    assert list(fake.deployments) == ["green"] and fake.deployments["green"].endswith("/models/tone/versions/2")


def test_failing_new_slot_is_rolled_back(spec):
    fake = FakeOnlineEndpoints(failing_slots={"green"})
    moved = []
    with pytest.raises(RolloutFailed, match="smoke test on green failed: HTTP 500") as err:
        roll_out(backend_for(fake, spec), plan(), lambda: moved.append("production"), say=lambda s: None)
    assert err.value.exit_code == 4
    assert moved == []  # production alias untouched
    calls = writes(fake)
    assert [c[:2] for c in calls if c[1] != "/score"] == [
        ("PUT", "/deployments/green"), ("PUT", "/"), ("DELETE", "/deployments/green")]
    assert calls[-2][2]["properties"]["traffic"] == {"blue": 100}  # restored, no mirror
    assert fake.traffic == {"blue": 100} and set(fake.deployments) == {"blue"}


def test_error_rate_during_traffic_shift_rolls_back(spec):
    """The new slot passes its smoke test but fails live traffic: rollback at the first step."""
    fake = FakeOnlineEndpoints()
    backend = backend_for(fake, spec)
    original_set = backend.set_traffic

    def set_traffic(traffic, mirror):
        original_set(traffic, mirror)
        if traffic.get("green"):
            fake.failing_slots.add("green")
            fake.traffic = {"green": 100}  # every probe lands on green in this fake

    backend.set_traffic = set_traffic
    with pytest.raises(RolloutFailed, match=r"error rate 100% > 0% at traffic \{'green': 10, 'blue': 90\}"):
        roll_out(backend, plan(), lambda: pytest.fail("alias must not move"), say=lambda s: None)
    final_traffic = [b["properties"]["traffic"] for m, p, b in writes(fake) if (m, p) == ("PUT", "/")][-1]
    assert final_traffic == {"blue": 100} and set(fake.deployments) == {"blue"}


def test_dry_run_contacts_nothing(spec):
    from click.testing import CliRunner

    from slmops.cli import main

    result = CliRunner().invoke(main, ["promote", "models:/tone/2", "--endpoint", EP, "--dry-run", "--mirror", "5",
                                       "--deployment-spec", str(spec)])
    assert result.exit_code == 0, result.output
    assert '"model": "azureml:tone:2"' in result.output
    assert '{"traffic": {"green": 10, "blue": 90}, "mirror_traffic": {}}' in result.output
    assert '{"traffic": {"blue": 100}, "mirror_traffic": {"green": 5}}' in result.output
    assert "azureml-model-deployment: green" in result.output


def test_a_base_and_adapters_model_is_smoke_tested_and_probed_naming_its_first_adapter(spec):
    """A multi-adapter endpoint refuses a request without "adapter": promote reads the registered model's `adapters`
    tag and names the first (sorted) in the smoke test and every probe."""
    fake = FakeOnlineEndpoints()
    said = []
    report = roll_out(backend_for(fake, spec), Plan(endpoint=EP, model="azureml:tone-adapters-onnx:1",
                                                    name="tone-adapters-onnx", version="1", probes=3, steps=(100,)),
                      lambda: "0", say=said.append)
    assert report["result"] == "promoted"
    assert any("the model serves the adapters ['tone', 'topic']: requests naming none name 'tone'" in s for s in said)
    scored = [(c[2], c[3].get("azureml-model-deployment")) for c in fake.calls if c[1] == "/score"]
    assert len(scored) >= 1 + 3 and {body["adapter"] for body, _ in scored} == {"tone"}   # smoke + 3 probes
    assert scored[0][1] == "green" and scored[0][0]["messages"]    # the smoke test: the default chat request
    assert fake.deployments["green"].endswith("/models/tone-adapters-onnx/versions/1")


def test_a_single_model_is_probed_unchanged(spec):
    fake = FakeOnlineEndpoints()
    roll_out(backend_for(fake, spec), plan(steps=(100,)), lambda: "1", say=lambda s: None)
    assert all("adapter" not in c[2] for c in fake.calls if c[1] == "/score")


def test_dry_run_of_a_base_and_adapters_version_carries_the_model(spec):
    from click.testing import CliRunner

    from slmops.cli import main

    result = CliRunner().invoke(main, ["promote", "models:/slmops-adapters-onnx@candidate", "--endpoint", EP,
                                       "--dry-run", "--deployment-spec", str(spec)])
    assert result.exit_code == 0, result.output
    assert '"model": "azureml:slmops-adapters-onnx:<version of @candidate>"' in result.output
    assert '"scoring_script": "slmops/serving/score.py"' in result.output
    assert "gets \"adapter\": its first adapter in every request that names none" in result.output
