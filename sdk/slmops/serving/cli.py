"""`slmops serve` and `slmops promote`: thin click commands over slmops.serving.serve and .promote."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import click

from slmops.errors import UserError

CACHE_DIR = Path("~/.cache/slmops/models")
TRACKING_HELP = "MLflow tracking/registry URI for models:/ references (default: $MLFLOW_TRACKING_URI)"


@click.command()
@click.argument("model")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="port on 127.0.0.1 to serve on (the server never binds another interface)")
@click.option("--key", default=None, help="endpoint key clients send as 'Authorization: Bearer <key>' "
              "(default: $SLMOPS_ENDPOINT_KEY, else a new key printed once)")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="request threads per worker [default: 2 x the max batch (SLMOPS_MAX_BATCH, 8): one batch "
                   "gathers while the other generates]")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="workers, each one copy of the model [default: from the cores and memory; 1 below 16 cores]")
@click.option("--max-body-bytes", type=click.IntRange(1024, 64 * 1024 * 1024), default=1_048_576,
              show_default=True, help="larger request bodies get 413")
@click.option("--tracking-uri", default=None, help=TRACKING_HELP)
def serve(model, port, key, threads, workers, max_body_bytes, tracking_uri):
    """Serve MODEL (a folder, models:/NAME@ALIAS or models:/NAME/VERSION) with the Azure ML inference server
    on 127.0.0.1, behind key authentication, with readiness and liveness routes. The model's files are checked
    first (a registered version's against the sha256 recorded at registration). Exit codes: 2 bad input, a
    damaged model, a model that fails to load, or a busy port."""
    from slmops.serving import serve as srv

    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    key = key or os.environ.get(srv.KEY_ENV)
    problems = []
    if key is not None and len(key) < 16:
        problems.append(f"--key / ${srv.KEY_ENV} has {len(key)} characters; use at least 16 "
                        f"(or omit it and a random key is generated)")
    try:
        model_dir = srv.resolve_model(model, tracking_uri, CACHE_DIR.expanduser())
    except UserError as exc:
        problems.append(str(exc))
    sock = None
    try:
        sock = srv.bind(port)  # before "serving" is printed: a busy port is exit 2, not a gunicorn retry loop
    except UserError as exc:
        problems.append(str(exc))
    if problems:
        if sock is not None:
            sock.close()
        raise UserError(f"cannot serve {model!r}:", problems=problems)
    if key is None:
        key = srv.new_key()
        click.echo(f"endpoint key (shown once): {key}")
    base = f"http://{srv.HOST}:{port}"
    plan = srv.server_plan(model_dir)
    workers = workers or plan["workers"]
    threads = threads or plan["threads"]
    compute = plan["compute_threads"] if workers == plan["workers"] else max(1, plan["cores"] // workers)
    click.echo(f"serving {model_dir} at {base}/score  (swagger: {base}/swagger.json, "
               f"probes: {base}/health/live {base}/health/ready)", err=False)
    click.echo(f"{workers} worker(s) x {threads} request threads, batches of up to {plan['max_batch']}, "
               f"{compute} compute thread(s) per worker ({plan['threads_why']})", err=False)
    code = srv.run(model_dir, sock, key, max_body_bytes, threads=threads, workers=workers, compute_threads=compute)
    raise SystemExit(code)


ENDPOINT_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$")


@click.command()
@click.argument("model")
@click.option("--endpoint", required=True, help="online endpoint name (created when missing)")
@click.option("--mirror", type=click.IntRange(0, 50), default=0, show_default=True,
              help="percent of live traffic mirrored to the new slot before any traffic shifts (0 = none)")
@click.option("--steps", default="10,50,100", show_default=True,
              help="traffic percentages for the new slot, checked one after another")
@click.option("--dry-run", is_flag=True, help="print the plan and the payloads; contact nothing")
@click.option("--local", is_flag=True, help="roll out to a local endpoint on 127.0.0.1 instead of Azure ML")
@click.option("--smoke-request", type=click.Path(path_type=Path), default=None,
              help="JSON file: a scoring request (or list) the new slot must answer with 200")
@click.option("--probes", type=click.IntRange(1, 10000), default=20, show_default=True,
              help="requests sent through the endpoint at each traffic step to measure the error rate")
@click.option("--max-error-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="largest tolerated share of failed probes per step before rolling back")
@click.option("--alias", default="production", show_default=True,
              help="registry alias moved to the model on success (a staging endpoint would use 'staging')")
@click.option("--allow-ungated", is_flag=True,
              help="also promote a version registered without a quality gate (tag gate=none: no thresholds given)")
@click.option("--tracking-uri", default=None,
              help=TRACKING_HELP + "; on Azure ML without it, the workspace's MLflow URI")
@click.option("--subscription", default=None, help="Azure subscription id (default: $AZURE_SUBSCRIPTION_ID)")
@click.option("--resource-group", default=None, help="Azure resource group (default: $AZURE_RESOURCE_GROUP)")
@click.option("--workspace", default=None, help="Azure ML workspace (default: $AZUREML_WORKSPACE_NAME)")
@click.option("--deployment-spec", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="deployment YAML (default: the packaged specs/deployment.yml)")
@click.option("--endpoint-spec", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="endpoint YAML (default: the packaged specs/endpoint.yml)")
def promote(model, endpoint, mirror, steps, dry_run, local, smoke_request, probes, max_error_rate, alias,
            allow_ungated, tracking_uri, subscription, resource_group, workspace, deployment_spec, endpoint_spec):
    """Promote a registered MODEL (models:/NAME/VERSION, models:/NAME@ALIAS or NAME:VERSION) to an online
    endpoint: blue/green deployment, smoke test, optional mirroring, stepped traffic shift, automatic rollback;
    on success the registry alias (default `production`) moves to it. A version registered without thresholds
    (gate=none) needs --allow-ungated; --local checks the weight files against the sha256 recorded at
    registration before serving them. Exit codes: 2 bad input or damaged weights, 3 gate not passed, 4 rolled
    back."""
    from slmops import registry
    from slmops.serving import backends
    from slmops.serving import promote as pr

    problems = []
    ref = registry.parse_ref(model)
    if ref is None:
        problems.append(f"MODEL {model!r} is not a registry reference; promote registered versions only "
                        f"({registry.REF_FORMS.split(', ', 1)[1]}) so the gate and the alias can be checked")
    if not ENDPOINT_NAME.match(endpoint):
        problems.append(f"--endpoint {endpoint!r}: 3-32 letters, digits or '-', starting with a letter")
    for check in (lambda: pr.parse_steps(steps), lambda: pr.load_smoke_requests(smoke_request)):
        try:
            check()
        except UserError as exc:
            problems.append(str(exc))
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if local and not dry_run and not tracking_uri:
        problems.append("no model registry: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    if local and (deployment_spec or endpoint_spec or subscription or resource_group or workspace):
        problems.append("--deployment-spec, --endpoint-spec, --subscription, --resource-group and --workspace "
                        "apply to Azure ML only; drop them or drop --local")
    if not re.match(r"^[\w-]+$", alias):
        problems.append(f"--alias {alias!r}: letters, digits, '_' or '-' only")
    if problems:
        raise UserError("cannot promote:", problems=problems)

    specs = {k: v for k, v in (("endpoint_spec", endpoint_spec), ("deployment_spec", deployment_spec)) if v}
    client = None
    if not local and not dry_run:
        from slmops.azure.workspace import default_credential, ml_client, resolve_workspace

        ws = resolve_workspace({"subscription_id": subscription, "resource_group": resource_group,
                                "workspace_name": workspace}, os.environ, Path.cwd())
        client = ml_client(default_credential(), ws)
        tracking_uri = tracking_uri or client.workspaces.get(ws.workspace_name).mlflow_tracking_uri
    version = ref.version
    if not dry_run:
        version = str(registry.get_version(tracking_uri, ref).version)
        registry.require_gate_passed(tracking_uri, ref.name, version, allow_ungated=allow_ungated)
    plan_args = dict(endpoint=endpoint, name=ref.name, version=version or f"<version of @{ref.alias}>",
                     steps=pr.parse_steps(steps), mirror=mirror, probes=probes, max_error_rate=max_error_rate,
                     smoke_requests=pr.load_smoke_requests(smoke_request), alias=alias, allow_ungated=allow_ungated)
    if local:
        backend = backends.LocalEndpoint(backends.local_root(), endpoint)
        target_model = f"<local folder of models:/{ref.name}/{plan_args['version']}>"
        if not dry_run:
            target_model = str(registry.resolve(f"models:/{ref.name}/{version}", tracking_uri=tracking_uri,
                                                cache_dir=CACHE_DIR.expanduser()))
    else:
        backend = backends.AzureEndpoint(client, endpoint, **specs)
        target_model = f"azureml:{ref.name}:{plan_args['version']}"
    plan = pr.Plan(model=target_model, **plan_args)
    if dry_run:
        click.echo(pr.dry_run_text(backend, plan))
        return
    report = pr.roll_out(backend, plan, lambda: registry.set_alias(tracking_uri, ref.name, alias, version),
                         say=click.echo)
    click.echo(json.dumps(report, indent=2))
    if local:
        click.echo(f"local endpoint {endpoint}: {backend.url}/score (key in {backend.state_path}); "
                   f"stop it with: python -m slmops.serving.router --state {backend.dir} --stop")
