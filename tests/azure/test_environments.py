"""environments/ agrees with pyproject.toml, loads with azure-ai-ml, and pins components to exact versions."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from slmops.azure import environments

ROOT = Path(__file__).parents[2]
ENV_DIRS = ["cpu", "gpu"]
# GPU images swap a CPU package for its CUDA build (pyproject extra `cuda`).
CUDA_SWAPS = {"gpu": {"onnxruntime": "onnxruntime-gpu", "onnxruntime-genai": "onnxruntime-genai-cuda"}}
GPU_ONLY = {"bitsandbytes", "deepspeed", "onnxruntime-gpu", "onnxruntime-genai-cuda"}


def pyproject_specs() -> dict[str, list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs: dict[str, list[Requirement]] = {}
    for line in [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]:
        req = Requirement(line)
        specs.setdefault(canonicalize_name(req.name), []).append(req)
    return specs


def core_dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(Requirement(line).name) for line in project["dependencies"]}


def env_pins(env_dir: str) -> dict[str, str]:
    conda = yaml.safe_load((ROOT / "environments" / env_dir / "conda.yaml").read_text())
    pip = next(item["pip"] for item in conda["dependencies"] if isinstance(item, dict) and "pip" in item)
    pins = {}
    for line in pip:
        if line.startswith("-"):
            continue  # index options
        req = Requirement(line)
        (spec,) = req.specifier  # every package is pinned exactly
        assert spec.operator == "==", line
        pins[canonicalize_name(req.name)] = spec.version
    return pins


@pytest.mark.parametrize("env_dir", ENV_DIRS)
def test_every_pin_is_allowed_by_pyproject(env_dir):
    specs = pyproject_specs()
    problems = []
    for name, version in env_pins(env_dir).items():
        if name not in specs:
            problems.append(f"{name} is pinned in environments/{env_dir} but not declared in pyproject.toml")
        elif not any(req.specifier.contains(version, prereleases=True) for req in specs[name]):
            problems.append(f"{name}=={version} is outside pyproject's {[str(r.specifier) for r in specs[name]]}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("env_dir", ENV_DIRS)
def test_every_core_dependency_is_in_the_image(env_dir):
    pins = env_pins(env_dir)
    swaps = CUDA_SWAPS.get(env_dir, {})
    missing = [name for name in sorted(core_dependencies()) if swaps.get(name, name) not in pins]
    assert not missing, f"environments/{env_dir} lacks {missing}"
    assert "azureml-mlflow" in pins  # steps log to the workspace through MLflow
    if env_dir == "gpu":
        assert GPU_ONLY <= set(pins)


def third_party_imports(folder: Path) -> set[str]:
    modules = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m != "slmops"}


def installed_closure(names: set[str]) -> set[str]:
    """`names` plus everything their installed metadata requires (extras off), transitively."""
    from importlib.metadata import PackageNotFoundError, requires

    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            lines = requires(name) or []
        except PackageNotFoundError:
            continue
        for line in lines:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def test_packages_the_steps_import_come_with_both_images():
    """Every third-party module the steps (and the library modules they use) import is a core dependency of
    pyproject - which both images pin (test above) - or is installed by one of them."""
    to_dist = packages_distributions()
    imported = third_party_imports(ROOT / "sdk" / "slmops" / "steps") | third_party_imports(ROOT / "sdk" / "slmops")
    provided = installed_closure(core_dependencies())
    problems = []
    for module in sorted(imported):
        dists = {canonicalize_name(d) for d in to_dist.get(module, [module])}
        if not dists & provided:
            problems.append(f"import {module} ({sorted(dists)}) is not provided by pyproject's dependencies")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("env_dir", ENV_DIRS)
def test_environment_yaml_loads_with_azure_ai_ml(env_dir):
    from azure.ai.ml import load_environment

    env = load_environment(ROOT / "environments" / env_dir / "environment.yaml")
    assert env.name == f"slmops-{env_dir}"
    assert env.image.startswith("mcr.microsoft.com/azureml/")
    assert env.conda_file["dependencies"]


def test_versions_follow_content(tmp_path):
    import shutil

    shutil.copytree(ROOT / "environments", tmp_path / "environments")
    before = environments.load_environments(tmp_path / "environments")
    again = environments.load_environments(tmp_path / "environments")
    assert before == again
    conda = tmp_path / "environments" / "cpu" / "conda.yaml"
    conda.write_text(conda.read_text() + "# changed\n")
    after = environments.load_environments(tmp_path / "environments")
    assert after["slmops-cpu"].version != before["slmops-cpu"].version
    assert after["slmops-gpu"].version == before["slmops-gpu"].version
    from slmops import __version__

    assert before["slmops-cpu"].version.startswith(f"{__version__}-")


@pytest.mark.parametrize("reference, expected", [
    ("azureml:slmops-cpu@latest", "azureml:slmops-cpu:V"),
    ("slmops-cpu@latest", "azureml:slmops-cpu:V"),
    ("azureml:slmops-cpu", "azureml:slmops-cpu:V"),
    ("azureml:slmops-cpu:3", "azureml:slmops-cpu:3"),  # an explicit version is the user's choice
    ("azureml:slmops-cpu@prod", "azureml:slmops-cpu@prod"),
    ("azureml:someone-else@latest", "azureml:someone-else@latest"),
])
def test_pinning(reference, expected):
    envs = {"slmops-cpu": environments.ProjectEnvironment("slmops-cpu", "V", Path("x"))}
    assert environments.pinned(reference, envs)[0] == expected
    registry = environments.pinned(reference, envs, registry_name="reg")[0]
    if expected.endswith(":V"):
        assert registry == "azureml://registries/reg/environments/slmops-cpu/versions/V"


def test_components_reference_project_environments():
    envs = environments.load_environments(ROOT / "environments")
    for path in sorted((ROOT / "components").glob("*/component.yaml")):
        reference = yaml.safe_load(path.read_text())["environment"]
        assert environments.pinned(reference, envs)[1] is not None, f"{path}: {reference}"


@pytest.mark.parametrize("env_dir", ENV_DIRS)
def test_no_cpu_and_cuda_build_of_the_same_module(env_dir):
    """onnxruntime/onnxruntime-gpu (and the genai pair) install the same module: an image holds one of each."""
    pins = env_pins(env_dir)
    for cpu, cuda in CUDA_SWAPS["gpu"].items():
        assert not (cpu in pins and cuda in pins), (env_dir, cpu, cuda)
