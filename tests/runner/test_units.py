"""Pure parts of the runner: command rendering, value formatting, the local Python in the reuse key, --help."""

from __future__ import annotations

import pytest
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


def test_local_python_environment_is_part_of_the_reuse_key(monkeypatch, tmp_path):
    """Steps run in this Python locally: a different set of installed distributions must change the key."""

    from slmops.runner import store
    from slmops.pipeline.graph import Node

    node = Node(name="a", kind="command", command="python x.py", code=None, environment="azureml:env@latest",
                component={"name": "a"}, input_specs={}, inputs={}, outputs={})
    store.local_python.cache_clear()
    before = store.step_key(store.key_parts(node, "0" * 64, {}))
    site = tmp_path / "site"
    (site / "somepkg-1.0.dist-info").mkdir(parents=True)
    import site as site_module

    monkeypatch.setattr(site_module, "getsitepackages", lambda: [str(site)])
    store.local_python.cache_clear()
    after = store.step_key(store.key_parts(node, "0" * 64, {}))
    assert before != after
    store.local_python.cache_clear()
