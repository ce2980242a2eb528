"""The two endpoints `slmops promote` rolls out to, behind one small interface (no base class, same methods):

    ensure_endpoint()                   create the endpoint if it does not exist
    state() -> {"traffic": {slot: pct}, "slots": [slot, ...]}
    deploy(slot, model)                 create/replace the deployment in `slot` and wait for it
    healthy(slot) -> bool
    set_traffic(traffic, mirror)        the endpoint's traffic split and mirrored traffic
    invoke(body, deployment=None) -> (status, reply)   a scoring request, pinned to a slot with `deployment`
    delete(slot)
    describe_deploy(slot, model) -> dict                the deployment payload (for --dry-run)
    adapters(model) -> [name, ...]      the adapters a base + adapters model serves ([] for a single model)

AzureEndpoint drives a managed online endpoint through azure-ai-ml's MLClient; LocalEndpoint runs one
`slmops serve` process per slot behind slmops.serving.router on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from slmops.io import write_json
from slmops.serving import serve as srv

SPECS = Path(__file__).with_name("specs")
DEPLOYMENT_HEADER = "azureml-model-deployment"


class AzureEndpoint:
    """A managed online endpoint. `model` is an Azure ML model reference `azureml:NAME:VERSION`."""

    def __init__(self, ml_client, name: str, *, endpoint_spec: Path = SPECS / "endpoint.yml",
                 deployment_spec: Path = SPECS / "deployment.yml"):
        self.ml = ml_client
        self.name = name
        self.endpoint_spec = Path(endpoint_spec)
        self.deployment_spec = Path(deployment_spec)

    def ensure_endpoint(self) -> None:
        from azure.ai.ml import load_online_endpoint
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.ml.online_endpoints.get(self.name)
        except ResourceNotFoundError:
            endpoint = load_online_endpoint(self.endpoint_spec, params_override=[{"name": self.name}])
            self.ml.online_endpoints.begin_create_or_update(endpoint).result()

    def state(self) -> dict:
        endpoint = self.ml.online_endpoints.get(self.name)
        slots = sorted(d.name for d in self.ml.online_deployments.list(self.name))
        return {"traffic": {k: int(v) for k, v in (endpoint.traffic or {}).items() if int(v)}, "slots": slots}

    def _deployment(self, slot: str, model: str):
        from azure.ai.ml import load_online_deployment

        deployment = load_online_deployment(self.deployment_spec, params_override=[
            {"name": slot}, {"endpoint_name": self.name}, {"model": model}])
        code = deployment.code_configuration.code
        folder = (Path(deployment.base_path) / code).resolve() if isinstance(code, str) else None
        if folder is not None and folder.is_dir() and (folder / ".amlignore").is_file():
            deployment.code_configuration.code = str(scoring_code(folder))
        return deployment

    def describe_deploy(self, slot: str, model: str) -> dict:
        return self._deployment(slot, model)._to_dict()

    def adapters(self, model: str) -> list[str]:
        """The adapters of the registered model `azureml:NAME:VERSION`: its `adapters` tag (set by register for a
        base + adapters version: "tone,topic"), sorted; [] without the tag."""
        _, name, version = model.split(":", 2)
        tag = (self.ml.models.get(name=name, version=version).tags or {}).get("adapters") or ""
        return sorted(n for n in tag.split(",") if n)

    def deploy(self, slot: str, model: str) -> None:
        self.ml.online_deployments.begin_create_or_update(self._deployment(slot, model)).result()

    def healthy(self, slot: str) -> bool:
        return (self.ml.online_deployments.get(slot, self.name).provisioning_state or "").lower() == "succeeded"

    def set_traffic(self, traffic: dict[str, int], mirror: dict[str, int]) -> None:
        endpoint = self.ml.online_endpoints.get(self.name)
        endpoint.traffic = dict(traffic)
        endpoint.mirror_traffic = dict(mirror)
        self.ml.online_endpoints.begin_create_or_update(endpoint).result()

    def invoke(self, body: dict, deployment: str | None = None) -> tuple[int, object]:
        from azure.core.exceptions import HttpResponseError

        with tempfile.TemporaryDirectory() as tmp:
            request_file = Path(tmp) / "request.json"
            request_file.write_text(json.dumps(body))
            try:
                text = self.ml.online_endpoints.invoke(self.name, request_file=str(request_file),
                                                       deployment_name=deployment)
            except HttpResponseError as exc:
                return int(exc.status_code or 599), str(exc.message)
        try:
            return 200, json.loads(text)
        except ValueError:
            return 200, text

    def delete(self, slot: str) -> None:
        self.ml.online_deployments.begin_delete(name=slot, endpoint_name=self.name).result()


class LocalEndpoint:
    """A local endpoint in `root/<name>/`: router + one `slmops serve` process per slot (see router.py).
    `model` is a local model folder (the registry version resolved by promote)."""

    def __init__(self, root: Path, name: str, *, startup_timeout_s: float = 120):
        self.dir = Path(root).expanduser() / name
        self.name = name
        self.state_path = self.dir / "state.json"
        self.startup_timeout_s = startup_timeout_s

    def _read(self) -> dict:
        return json.loads(self.state_path.read_text())

    def _write(self, state: dict) -> None:
        write_json(self.state_path, state)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._read()['port']}"

    def key(self) -> str:
        return self._read()["key"]

    def ensure_endpoint(self) -> None:
        """Start the router unless it answers already (state, key and port survive restarts)."""
        if self.state_path.exists():
            state = self._read()
            if srv.is_ready(f"http://127.0.0.1:{state['port']}"):
                return
            # The router is down (e.g. after a reboot): forget slots whose servers are gone too.
            for slot, slot_state in list(state["slots"].items()):
                if not srv.is_ready(f"http://127.0.0.1:{slot_state['port']}"):
                    del state["slots"][slot]
                    state["traffic"].pop(slot, None)
                    state["mirror"].pop(slot, None)
        else:
            state = {"name": self.name, "port": srv.free_port(), "key": srv.new_key(), "slots": {},
                     "traffic": {}, "mirror": {}}
        log = self.dir / "router.log"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write(state)
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "slmops.serving.router", "--state", str(self.dir)],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        state["router_pid"] = proc.pid
        self._write(state)
        srv.wait_ready(f"http://127.0.0.1:{state['port']}", 30, proc, log)

    def state(self) -> dict:
        state = self._read()
        return {"traffic": {k: v for k, v in state["traffic"].items() if v}, "slots": sorted(state["slots"])}

    def describe_deploy(self, slot: str, model: str) -> dict:
        return {"name": slot, "endpoint_name": self.name, "model": str(model), "server": srv.server_command(0)}

    def adapters(self, model: str) -> list[str]:
        """The adapters of the model folder `model` (its servable folder's adapters/), sorted; [] for one model."""
        from slmops import adapters as multi
        from slmops.serving.score import find_model_dir

        return multi.names(find_model_dir(Path(model)))

    def deploy(self, slot: str, model: str) -> None:
        if slot in self._read()["slots"]:
            self.delete(slot)
        port, key = srv.free_port(), srv.new_key()
        log = self.dir / f"{slot}.log"
        proc = srv.start(Path(model), port, key, log)
        state = self._read()
        state["slots"][slot] = {"model": str(model), "port": port, "key": key, "pid": proc.pid}
        self._write(state)
        srv.wait_ready(f"http://127.0.0.1:{port}", self.startup_timeout_s, proc, log)

    def healthy(self, slot: str) -> bool:
        slot_state = self._read()["slots"].get(slot)
        return bool(slot_state) and srv.is_ready(f"http://127.0.0.1:{slot_state['port']}")

    def set_traffic(self, traffic: dict[str, int], mirror: dict[str, int]) -> None:
        state = self._read()
        state["traffic"], state["mirror"] = dict(traffic), dict(mirror)
        self._write(state)
        time.sleep(0.02)  # the router compares modification times; keep two quick updates apart

    def invoke(self, body: dict, deployment: str | None = None) -> tuple[int, object]:
        state = self._read()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {state['key']}"}
        if deployment:
            headers[DEPLOYMENT_HEADER] = deployment
        req = urllib.request.Request(f"http://127.0.0.1:{state['port']}/score", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            return 599, f"endpoint unreachable: {e}"
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def delete(self, slot: str) -> None:
        state = self._read()
        slot_state = state["slots"].pop(slot, None)
        state["traffic"].pop(slot, None)
        state["mirror"].pop(slot, None)
        self._write(state)
        if slot_state:
            _stop_group(slot_state["pid"])

    def stop(self) -> None:
        """Stop the router and every deployment (the endpoint's folder and key stay)."""
        if not self.state_path.exists():
            return
        state = self._read()
        for slot_state in state["slots"].values():
            _stop_group(slot_state["pid"])
        if state.get("router_pid"):
            _stop_group(state["router_pid"])


def _stop_group(pid: int, timeout_s: float = 15) -> None:
    """SIGTERM the process group a server was started in (gunicorn master + worker), then wait for it."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:  # not our child (started by an earlier command): poll for its exit
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def scoring_code(sdk: Path) -> Path:
    """The code folder a deployment uploads: a copy of the `slmops` package under `sdk`, whole. The sdk folder's
    .amlignore leaves serving/ out of the steps' snapshot (so a serving edit re-runs no training), and Azure ML
    applies it to every upload of that folder - a deployment of it would lack score.py. The copy is made once per
    process, in a temp folder, with no .amlignore."""
    import shutil
    import tempfile

    key = str(sdk.resolve())
    if key not in _SCORING_CODE:
        folder = Path(tempfile.mkdtemp(prefix="slmops-scoring-code-"))
        shutil.copytree(sdk / "slmops", folder / "slmops", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        _SCORING_CODE[key] = folder
    return _SCORING_CODE[key]


_SCORING_CODE: dict[str, Path] = {}


def local_root() -> Path:
    """Where local endpoints live: $SLMOPS_LOCAL_ENDPOINTS or ~/.slmops/endpoints."""
    return Path(os.environ.get("SLMOPS_LOCAL_ENDPOINTS", "~/.slmops/endpoints")).expanduser()

