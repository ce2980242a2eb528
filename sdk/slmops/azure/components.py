"""`slmops components publish`: register every components/*/component.yaml in a workspace or a registry.

Each component is registered as `<name>:<slmops package version>` so pipelines can refer to
`azureml:slmops_finetune:0.1.0` (workspace) or
`azureml://registries/<registry>/components/slmops_finetune/versions/0.1.0` (registry). Its environment
reference is pinned to the exact project environment version, which is created first when missing.
Publishing the same version again is a no-op: each component is looked up with `get` first and skipped when it
exists (component versions are immutable in Azure ML, so an existing version is never overwritten).
"""

from __future__ import annotations

from pathlib import Path

from slmops import __version__
from slmops.azure.environments import ProjectEnvironment, ensure_environment, pin_components
from slmops.errors import UserError


def load_components(components_dir: Path, version: str = __version__) -> list:
    """Every components/<dir>/component.yaml loaded by azure-ai-ml, version set to `version`."""
    from azure.ai.ml import load_component

    paths = sorted(Path(components_dir).glob("*/component.yaml"))
    if not paths:
        raise UserError(f"No */component.yaml under {components_dir}. Pass the project folder with --project-dir.")
    components = []
    for path in paths:
        component = load_component(source=path)
        component.version = version
        components.append(component)
    return components


def publish(ml_client, components: list, envs: dict[str, ProjectEnvironment], registry_name: str | None = None,
            echo=print) -> dict[str, str]:
    """Ensure the environments, then create each component version unless it exists. name -> "exists"|"created"."""
    from azure.core.exceptions import ResourceNotFoundError

    for env in pin_components(components, envs, registry_name):
        echo(f"environment {env.name}:{env.version}: {ensure_environment(ml_client, env)}")
    outcome = {}
    for component in components:
        try:
            ml_client.components.get(name=component.name, version=component.version)
            outcome[component.name] = "exists"
        except ResourceNotFoundError:
            ml_client.components.create_or_update(component)
            outcome[component.name] = "created"
        echo(f"component {component.name}:{component.version}: {outcome[component.name]}")
    return outcome
