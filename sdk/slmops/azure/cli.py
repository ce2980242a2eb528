"""`slmops submit | status | logs | download | cancel | components publish`: the cloud commands.

    slmops submit pipelines/finetune.yaml --set max_steps=500 --compute finetune=gpu-a100 --dry-run
    slmops submit pipelines/finetune.yaml --experiment tone
    slmops status RUN ; slmops logs RUN --follow ; slmops download RUN --output registration --to ./out
    slmops cancel RUN ; slmops components publish [--registry NAME]

The workspace comes from --subscription/--resource-group/--workspace, then AZURE_SUBSCRIPTION_ID/
AZURE_RESOURCE_GROUP/AZUREML_WORKSPACE_NAME, then config.json; authentication is DefaultAzureCredential.
This module is the only place that reads the process environment and the current folder. Tests hand in a
credential and azure-core client options (a recording `transport=`) through `ctx.obj`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import click

from slmops.errors import UserError

WORKSPACE_OPTIONS = (
    click.option("--subscription", help="Azure subscription id (else AZURE_SUBSCRIPTION_ID, else config.json)."),
    click.option("--resource-group", help="Resource group (else AZURE_RESOURCE_GROUP, else config.json)."),
    click.option("--workspace", help="Azure ML workspace name (else AZUREML_WORKSPACE_NAME, else config.json)."),
)


def workspace_options(command):
    for option in reversed(WORKSPACE_OPTIONS):
        command = option(command)
    return command


def _connect(ctx, subscription, resource_group, workspace, registry=None):
    """Resolve the workspace from flags/environment/config.json and build the MLClient (the one global read)."""
    from slmops.azure.workspace import default_credential, ml_client, resolve_workspace

    injected = ctx.obj or {}
    flags = {"subscription_id": subscription, "resource_group": resource_group, "workspace_name": workspace}
    # A registry is found by name alone (registry discovery); a workspace needs all three pieces.
    target = None if registry else resolve_workspace(flags, os.environ, Path.cwd())
    credential = injected.get("credential") or default_credential()
    return ml_client(credential, target, registry_name=registry, **injected.get("client_kwargs", {}))


@contextlib.contextmanager
def service_errors(what: str):
    """Turn the service's answers a user can act on into UserError (exit 2); anything else keeps its traceback."""
    from azure.core.exceptions import ClientAuthenticationError, ResourceNotFoundError

    try:
        yield
    except ClientAuthenticationError as exc:
        raise UserError(
            f"Could not authenticate to Azure while trying to {what}: {exc.message.splitlines()[0]} "
            "Run `az login`, or set AZURE_CLIENT_ID/AZURE_TENANT_ID (+ OIDC or secret) for a service principal."
        ) from None
    except ResourceNotFoundError as exc:
        raise UserError(f"Not found while trying to {what}: {exc.message.splitlines()[0]} "
                        "Check the run/asset name and the workspace.") from None


@click.command()
@click.argument("pipeline", type=click.Path(path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE",
              help="Override a pipeline input (repeatable); checked against the pipeline's inputs.")
@click.option("--compute", multiple=True, metavar="[NODE=]NAME",
              help="Compute cluster: NAME for the pipeline default, NODE=NAME for one step (repeatable).")
@click.option("--experiment", help="Experiment name (default: the YAML's experiment_name).")
@click.option("--dry-run", is_flag=True, help="Print the REST payload that would be sent as JSON; no network.")
@click.option("--strict", is_flag=True, help="Treat warnings (inputs a component does not declare, unused pipeline "
                                             "inputs, ...) as errors.")
@click.option("--project-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder with components/ and environments/ (default: found above the pipeline file).")
@workspace_options
@click.pass_context
def submit(ctx, pipeline, sets, compute, experiment, dry_run, strict, project_dir, subscription, resource_group,
           workspace):
    """Submit PIPELINE (the same YAML `slmops run` runs) to Azure ML; print the run name and Studio URL."""
    from slmops.azure import environments, submit as submitting
    from slmops.pipeline import lineage
    from slmops.pipeline.overrides import parse_sets

    job = submitting.load_pipeline(pipeline, parse_sets(sets), list(compute), experiment, Path.cwd(), strict=strict,
                                   echo=lambda text: click.echo(text, err=True))
    submitting.set_lineage_env(job, lineage.git_state(pipeline.resolve().parent))  # before the code is snapshotted
    root = project_dir or environments.project_root(pipeline.resolve().parent)
    envs_used = submitting.pin_environments(job, environments.load_environments(root / "environments"))
    if dry_run:
        click.echo(json.dumps(submitting.dry_run_payload(job, envs_used), indent=2, sort_keys=True, default=str))
        return
    with service_errors(f"submit {pipeline}"):
        client = _connect(ctx, subscription, resource_group, workspace)
        created = submitting.submit(client, job, envs_used, echo=click.echo)
    click.echo(f"run: {created.name}")
    click.echo(f"studio: {created.studio_url}")


@click.command()
@click.argument("run")
@workspace_options
@click.pass_context
def status(ctx, run, subscription, resource_group, workspace):
    """Show RUN's status and the status of each of its steps."""
    from slmops.azure import submit as submitting

    with service_errors(f"get run {run}"):
        client = _connect(ctx, subscription, resource_group, workspace)
        info = submitting.status(client, run)
    click.echo(f"{info['name']} ({info['display_name']}): {info['status']}")
    for step in info["steps"]:
        click.echo(f"  {step['step']}: {step['status']}")
    click.echo(f"studio: {info['studio_url']}")


@click.command()
@click.argument("run")
@click.option("--follow", is_flag=True, help="Stream the logs until the run ends.")
@workspace_options
@click.pass_context
def logs(ctx, run, follow, subscription, resource_group, workspace):
    """Print RUN's logs (a finished run), or stream them with --follow."""
    from slmops.azure import submit as submitting

    with service_errors(f"read the logs of {run}"):
        client = _connect(ctx, subscription, resource_group, workspace)
        submitting.logs(client, run, follow, echo=click.echo)


@click.command()
@click.argument("run")
@click.option("--output", help="Only this named output (default: all outputs and logs).")
@click.option("--to", "to", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder to download into.")
@workspace_options
@click.pass_context
def download(ctx, run, output, to, subscription, resource_group, workspace):
    """Download RUN's outputs (or one of them) into a local folder."""
    from slmops.azure import submit as submitting

    with service_errors(f"download {output or 'the outputs'} of {run}"):
        client = _connect(ctx, subscription, resource_group, workspace)
        folder = submitting.download(client, run, output, to)
    click.echo(f"downloaded {output or 'all outputs'} of {run} to {folder}")


@click.command()
@click.argument("run")
@workspace_options
@click.pass_context
def cancel(ctx, run, subscription, resource_group, workspace):
    """Cancel RUN."""
    from slmops.azure import submit as submitting

    with service_errors(f"cancel {run}"):
        client = _connect(ctx, subscription, resource_group, workspace)
        submitting.cancel(client, run)
    click.echo(f"cancel requested for {run}")


@click.group()
def components():
    """Azure ML components of this project."""


@components.command()
@click.option("--registry", help="Publish to this Azure ML registry instead of the workspace.")
@click.option("--project-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder with components/ and environments/ (default: found from the current folder up).")
@workspace_options
@click.pass_context
def publish(ctx, registry, project_dir, subscription, resource_group, workspace):
    """Register every components/*/component.yaml at the package version (a no-op when already there)."""
    from slmops.azure import components as publishing
    from slmops.azure import environments

    root = project_dir or environments.project_root(Path.cwd())
    envs = environments.load_environments(root / "environments")
    items = publishing.load_components(root / "components")
    with service_errors(f"publish components to {registry or 'the workspace'}"):
        client = _connect(ctx, subscription, resource_group, workspace, registry=registry)
        publishing.publish(client, items, envs, registry, echo=click.echo)
