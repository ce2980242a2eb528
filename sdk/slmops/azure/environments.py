"""environments/ -> Azure ML environments, and the pinning of components onto them.

Components name their environment the way the Azure ML docs do, `environment: azureml:slmops-cpu@latest`, so the
YAML stays valid for `az ml` and the local runner records a plain reference. Before anything is submitted or
published, slmops:
  1. loads every `environments/<dir>/environment.yaml` (image + conda.yaml) and gives it the version
     `<package version>-<10 hex of the folder's content hash>`: a changed conda.yaml is a new version, an
     unchanged one is the same version (Azure ML reuses a step only when its environment is identical);
  2. rewrites each component's `azureml:<name>@latest` (or bare `azureml:<name>`) to that exact version;
  3. creates the version in the workspace or registry when it is not there yet (get first, so a second run
     makes no change).
References to environments that environments/ does not define are left untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import yaml

from slmops import __version__
from slmops.errors import UserError

ENV_FILE = "environment.yaml"
REFERENCE = re.compile(r"^(?:azureml:)?(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*?)(?:@(?P<label>[A-Za-z0-9_.-]+))?$")


@dataclasses.dataclass(frozen=True)
class ProjectEnvironment:
    name: str
    version: str
    path: Path  # the environment.yaml

    def reference(self, registry_name: str | None = None) -> str:
        if registry_name:
            return f"azureml://registries/{registry_name}/environments/{self.name}/versions/{self.version}"
        return f"azureml:{self.name}:{self.version}"

    def entity(self):
        """The azure-ai-ml Environment, with our version."""
        from azure.ai.ml import load_environment

        env = load_environment(self.path)
        env.version = self.version
        return env


def project_root(start: Path) -> Path:
    """The folder holding components/ and environments/, searched from `start` upwards."""
    start = Path(start).resolve()
    for folder in [start, *start.parents]:
        if (folder / "components").is_dir() and (folder / "environments").is_dir():
            return folder
    raise UserError(
        f"No slmops project (a folder with components/ and environments/) at or above {start}. "
        "Run from the project checkout or pass --project-dir."
    )


def content_hash(folder: Path) -> str:
    """sha256 over the relative names and bytes of every file in `folder` (sorted), ignoring caches."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def load_environments(env_dir: Path) -> dict[str, ProjectEnvironment]:
    """Every environments/<dir>/environment.yaml, by environment name."""
    envs: dict[str, ProjectEnvironment] = {}
    problems = []
    for path in sorted(Path(env_dir).glob(f"*/{ENV_FILE}")):
        spec = yaml.safe_load(path.read_text()) or {}
        name = spec.get("name")
        if not name:
            problems.append(f"{path}: no `name:`; add e.g. `name: slmops-{path.parent.name}`")
        elif name in envs:
            problems.append(f"{path}: name {name!r} is also used by {envs[name].path}; give each a distinct name")
        elif spec.get("version") is not None:
            problems.append(f"{path}: remove `version:`; slmops versions environments by content")
        else:
            version = f"{__version__}-{content_hash(path.parent)[:10]}"
            envs[name] = ProjectEnvironment(name, version, path)
    if problems:
        raise UserError(f"Bad environment definitions in {env_dir}.", problems=problems)
    if not envs:
        raise UserError(f"No */{ENV_FILE} in {env_dir}. Restore environments/cpu and environments/gpu.")
    return envs


def pinned(reference, envs: dict[str, ProjectEnvironment], registry_name: str | None = None):
    """(new reference, environment) for a reference to a project environment; (reference, None) otherwise."""
    match = REFERENCE.match(reference) if isinstance(reference, str) else None
    if not match or match["name"] not in envs or match["label"] not in (None, "latest"):
        return reference, None
    env = envs[match["name"]]
    return env.reference(registry_name), env


def pin_components(components, envs: dict[str, ProjectEnvironment], registry_name: str | None = None) -> list:
    """Point each component's project-environment reference at its exact version; return the environments used."""
    used = {}
    for component in components:
        component.environment, env = pinned(component.environment, envs, registry_name)
        if env is not None:
            used[env.name] = env
    return [used[name] for name in sorted(used)]


def ensure_environment(ml_client, env: ProjectEnvironment) -> str:
    """Create the environment version unless it exists. Returns "exists" or "created"."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        ml_client.environments.get(name=env.name, version=env.version)
        return "exists"
    except ResourceNotFoundError:
        ml_client.environments.create_or_update(env.entity())
        return "created"
