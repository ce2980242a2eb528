"""Pure parts of the pipeline front-end: typed values, topological order, --set parsing, command references."""

from __future__ import annotations

import pytest

from slmops.contract import coerce
from slmops.errors import UserError
from slmops.pipeline.checks import Builder
from slmops.pipeline.graph import toposort
from slmops.pipeline.overrides import parse_sets


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


def test_check_command_flags_undeclared_names_and_bare_optional_inputs():
    builder = Builder("any")
    specs = {"s": {"type": "string", "optional": True}, "t": {"type": "string", "optional": True},
             "u": {"type": "integer", "optional": True}}
    command = "run --s ${{inputs.s}} $[[--t ${{inputs.t}}]] --u ${{inputs.u}} --z ${{inputs.z}} --o ${{outputs.o}}"
    builder.check_command(command, specs, inputs={"u": {"value": 1}}, outputs={}, searched=set(), where="jobs.n")
    assert [p.split(":")[0] for p in builder.problems] == ["jobs.n.command", "jobs.n.command", "jobs.n.inputs.s"]
    assert "no input 'z'" in builder.problems[0] and "no output 'o'" in builder.problems[1]
    assert "outside $[[ ]]" in builder.problems[2]
