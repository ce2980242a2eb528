"""Which Azure ML workspace to talk to, and an authenticated MLClient for it.

Each of subscription, resource group and workspace name is taken from the first of:
  1. the flags `--subscription`, `--resource-group`, `--workspace`;
  2. the variables `AZURE_SUBSCRIPTION_ID`, `AZURE_RESOURCE_GROUP`, `AZUREML_WORKSPACE_NAME`;
  3. a `config.json` as Azure ML writes it (Studio's "download config file"), searched like
     `MLClient.from_config` does: `.azureml/`, `aml_config/`, then the folder itself, from the current folder up.
Authentication is `DefaultAzureCredential` (az login, managed identity, GitHub OIDC via environment variables).
The credential object is handed to azure-ai-ml and never printed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

from slmops.errors import UserError

FIELDS = (
    # (field, flag, environment variable, config.json key)
    ("subscription_id", "--subscription", "AZURE_SUBSCRIPTION_ID", "subscription_id"),
    ("resource_group", "--resource-group", "AZURE_RESOURCE_GROUP", "resource_group"),
    ("workspace_name", "--workspace", "AZUREML_WORKSPACE_NAME", "workspace_name"),
)
CONFIG_DIRS = (".azureml", "aml_config", "")
CONFIG_NAMES = ("config.json", "project.json")
SEARCH_LEVELS = 20


@dataclasses.dataclass(frozen=True)
class Workspace:
    subscription_id: str
    resource_group: str
    workspace_name: str
    sources: dict = dataclasses.field(default_factory=dict, compare=False)  # field -> where it came from


def find_config(start: Path) -> Path | None:
    """The config.json MLClient.from_config would use, searching from `start` upwards; None if there is none."""
    start = Path(start).resolve()
    if start.is_file():
        return start
    for sub in CONFIG_DIRS:
        for name in CONFIG_NAMES:
            folder = start
            for _ in range(SEARCH_LEVELS):
                candidate = folder / sub / name if sub else folder / name
                if candidate.is_file():
                    return candidate
                if folder.parent == folder:
                    break
                folder = folder.parent
    return None


def read_config(path: Path) -> dict:
    """subscription_id/resource_group/workspace_name from an Azure ML config.json (plain or `Scope` form)."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"Cannot read the workspace config {path}: {exc}. Fix the JSON or pass the flags.") from None
    if not isinstance(config, dict):
        raise UserError(f"The workspace config {path} is not a JSON object. Download it again from Azure ML Studio.")
    scope = config.get("Scope")
    if scope:
        pieces = str(scope).split("/")
        if len(pieces) < 9:
            raise UserError(
                f"The workspace config {path} has Scope={scope!r}, expected "
                "/subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.MachineLearningServices/workspaces/<name>."
            )
        return {"subscription_id": pieces[2], "resource_group": pieces[4], "workspace_name": pieces[8]}
    return {key: config[key] for _, _, _, key in FIELDS if config.get(key)}


def resolve_workspace(flags: Mapping[str, str | None], env: Mapping[str, str], cwd: Path) -> Workspace:
    """Pick each piece from flags, then environment variables, then config.json; report every missing piece."""
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for field, flag, var, _ in FIELDS:
        if flags.get(field):
            values[field], sources[field] = flags[field], flag
        elif env.get(var):
            values[field], sources[field] = env[var], var
    config_path = None
    if len(values) < len(FIELDS):
        config_path = find_config(cwd)
        if config_path is not None:
            for field, value in read_config(config_path).items():
                if field not in values:
                    values[field], sources[field] = value, str(config_path)
    missing = [
        f"{field}: pass {flag}, set {var}, or put \"{key}\" in config.json"
        for field, flag, var, key in FIELDS
        if field not in values
    ]
    if missing:
        where = f"found {config_path}" if config_path else f"no config.json in {Path(cwd).resolve()} or above"
        raise UserError(f"The Azure ML workspace is not fully specified ({where}).", problems=missing)
    return Workspace(values["subscription_id"], values["resource_group"], values["workspace_name"], sources)


def default_credential():
    """DefaultAzureCredential: az login, managed identity, workload identity (GitHub OIDC), environment."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def ml_client(credential, workspace: Workspace | None = None, *, registry_name: str | None = None, **client_kwargs):
    """An MLClient for the workspace, or for an Azure ML registry when `registry_name` is given.

    A registry needs no workspace (the service finds the registry by name); `client_kwargs` go to azure-core
    (tests pass `transport=`).
    """
    from azure.ai.ml import MLClient

    if registry_name:
        scope = {}
        if workspace is not None:
            scope = {"subscription_id": workspace.subscription_id, "resource_group_name": workspace.resource_group}
        return MLClient(credential, registry_name=registry_name, **scope, **client_kwargs)
    if workspace is None:
        raise ValueError("ml_client needs a workspace or a registry_name")
    return MLClient(credential, subscription_id=workspace.subscription_id,
                    resource_group_name=workspace.resource_group, workspace_name=workspace.workspace_name,
                    **client_kwargs)
