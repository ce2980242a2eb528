"""Pure parts of the runner: command rendering, typed values, topological order, --set parsing, --help."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from slmops.cli import parse_sets
from local_runner.executor import format_value, render_command
from local_runner.graph import toposort
from local_runner.load import _Builder, coerce
from slmops.cli import main
from slmops.errors import UserError

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


@pytest.mark.parametrize("spec, value, expected, problem", [
    ({"type": "integer"}, "7", 7, None),
    ({"type": "integer"}, 2.0, 2, None),
    ({"type": "integer"}, 2.5, 2.5, "not a valid integer"),
    ({"type": "integer"}, True, True, "not a valid integer"),
    ({"type": "number"}, "1e-4", 1e-4, None),
    ({"type": "number"}, "abc", "abc", "not a valid number"),
    ({"type": "boolean"}, "TRUE", True, None),
    ({"type": "boolean"}, "yes", "yes", "not a valid boolean"),
    ({"type": "string"}, 5, "5", None),
    ({"type": "string", "enum": ["a", "b"]}, "c", "c", "is not one of"),
    ({"type": "integer", "min": "1"}, 0, 0, "below the minimum"),
    ({"type": "number", "max": "0.5"}, 0.9, 0.9, "above the maximum"),
    ({"type": "number", "min": 0, "max": 1}, 1, 1, None),
    ({"type": "uri_folder"}, "./x", "./x", None),
])
def test_coerce(spec, value, expected, problem):
    problems = []
    assert coerce(spec, value, "jobs.a.inputs.x", problems) == expected
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0] and problems[0].startswith("jobs.a.inputs.x:")


def test_toposort_is_deterministic_and_detects_cycles():
    deps = {"e": ["d", "a"], "d": ["c"], "c": ["a", "b"], "b": [], "a": []}
    assert toposort(deps) == ["a", "b", "c", "d", "e"]
    assert toposort(dict(reversed(list(deps.items())))) == ["a", "b", "c", "d", "e"]
    with pytest.raises(UserError, match="cycle: x, y"):
        toposort({"x": ["y"], "y": ["x"], "z": []})


def test_parse_sets():
    assert parse_sets(("a=1", "path=./x=y", "empty=")) == {"a": "1", "path": "./x=y", "empty": ""}
    with pytest.raises(UserError) as err:
        parse_sets(("novalue", "=3"))
    assert len(err.value.problems) == 2


@pytest.mark.parametrize("command", ["run", "validate"])
def test_help(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "--set" in result.output


def test_check_command_flags_undeclared_names_and_bare_optional_inputs():
    builder = _Builder(for_run=False)
    specs = {"s": {"type": "string", "optional": True}, "t": {"type": "string", "optional": True},
             "u": {"type": "integer", "optional": True}}
    command = "run --s ${{inputs.s}} $[[--t ${{inputs.t}}]] --u ${{inputs.u}} --z ${{inputs.z}} --o ${{outputs.o}}"
    builder.check_command(command, specs, inputs={"u": {"value": 1}}, outputs={}, searched=set(), where="jobs.n")
    assert [p.split(":")[0] for p in builder.problems] == ["jobs.n.command", "jobs.n.command", "jobs.n.inputs.s"]
    assert "no input 'z'" in builder.problems[0] and "no output 'o'" in builder.problems[1]
    assert "outside $[[ ]]" in builder.problems[2]


def test_local_python_environment_is_part_of_the_reuse_key(monkeypatch, tmp_path):
    """Steps run in this Python locally: a different set of installed distributions must change the key."""

    from local_runner import store
    from local_runner.graph import Node

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
