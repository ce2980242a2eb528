"""Pure parts of the runner: command rendering, value formatting, the environment in the reuse key, --help."""

from __future__ import annotations

import pytest
from pathlib import Path

from click.testing import CliRunner

from slmops.cli import main
from slmops.errors import UserError
from slmops.runner.executor import format_value, render_command

TEMPLATE = ("python run.py --data ${{inputs.data}} $[[--scale ${{inputs.scale}}]] --flag ${{inputs.flag}} "
            "--out ${{outputs.out}}")


@pytest.mark.parametrize("values, expected", [
    ({"data": "/d", "scale": 0.5, "flag": True}, "python run.py --data /d --scale 0.5 --flag True --out /o"),
    ({"data": "/d", "scale": None, "flag": False}, "python run.py --data /d  --flag False --out /o"),
    ({"data": "/d", "flag": False}, "python run.py --data /d  --flag False --out /o"),
    ({"data": 3, "scale": 2, "flag": False}, "python run.py --data 3 --scale 2 --flag False --out /o"),
])
def test_render_command(values, expected):
    assert render_command(TEMPLATE, values, {"out": "/o"}) == expected


@pytest.mark.parametrize("values, outputs, fragment", [
    ({"scale": 1, "flag": True}, {"out": "/o"}, "input 'data' has no value"),
    ({"data": "/d", "flag": True}, {}, "unknown output 'out'"),
])
def test_render_command_errors(values, outputs, fragment):
    with pytest.raises(UserError, match=fragment):
        render_command(TEMPLATE, values, outputs)


@pytest.mark.parametrize("value, text", [(True, "True"), (False, "False"), (3, "3"), (0.001, "0.001"), ("a b", "a b")])
def test_format_value(value, text):
    assert format_value(value) == text




@pytest.mark.parametrize("command", ["run", "validate"])
def test_help(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "--set" in result.output


@pytest.mark.parametrize("command", [["env", "list"], ["env", "prune"], ["cache", "prune"], ["env"], ["cache"]])
def test_store_commands_help(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output


def _key(environment, versions: dict) -> str:
    from slmops.pipeline.graph import Node
    from slmops.runner.envs import Environments, RunnerPython
    from slmops.runner.store import key_parts, step_key

    node = Node(name="a", kind="command", command="python x.py", code=None, environment=environment,
                component={"name": "a"}, input_specs={}, inputs={}, outputs={})
    envs = Environments(Path("/nowhere"), RunnerPython.current(), version_of=versions.get)
    plan = envs.plan(environment)
    return step_key(key_parts(node, "0" * 64, {}, envs.identity(plan, None)))


def test_the_reuse_key_holds_the_versions_an_environment_declares_not_every_installed_distribution():
    """Azure ML keys on the environment definition: locally, on the versions of what it declares as they resolve
    here. Installing an unrelated distribution (pytest) re-runs nothing; upgrading a declared one re-runs."""
    env = {"image": "python", "conda_file": {"dependencies": ["python=3.11", {"pip": ["six>=1.10", "packaging"]}]}}
    base = {"six": "1.16.0", "packaging": "24.0"}
    assert _key(env, base) == _key(env, dict(base, pytest="8.0"))
    assert _key(env, base) != _key(env, dict(base, six="1.17.0"))


def test_a_registered_environment_is_keyed_on_slmops_and_its_requirements(monkeypatch):
    from slmops.runner import envs

    monkeypatch.setattr(envs, "slmops_versions", lambda: {"slmops": "0.1.0", "torch": "2.13.0"})
    before = _key("azureml:slmops-cpu@latest", {})
    monkeypatch.setattr(envs, "slmops_versions", lambda: {"slmops": "0.1.0", "torch": "2.14.0"})
    assert _key("azureml:slmops-cpu@latest", {}) != before
