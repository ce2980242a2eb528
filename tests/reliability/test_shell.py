"""No shell between the runner and a step's values: hostile `--set` values reach the step byte for byte, in every
quoting context a component can put them in, and nothing they hold is run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from slmops.runner import shell
from slmops.runner.executor import render_command
from tests.runner.conftest import invoke, mlflow_db, runs  # noqa: F401  (fixtures)

HOSTILE = [
    "tone$(touch pwned)",
    "`touch pwned`",
    "a b  c",
    "it's",
    'say "hi"',
    "back\\slash",
    "line\nbreak",
    "$HOME ${PATH}",
    "; touch pwned; #",
    "*",
    "-x",
    "",
]

STEP = """import json, pathlib, sys
pathlib.Path(sys.argv[1], "argv.json").write_text(json.dumps(sys.argv[2:]))
"""


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("template", ["echo ${{inputs.v}}", "echo '${{inputs.v}}'", 'echo "${{inputs.v}}"',
                                      "echo x${{inputs.v}}y", "echo '--t=${{inputs.v}}' \"${{inputs.v}}\""])
def test_bash_reads_back_every_value_byte_for_byte(tmp_path, value, template):
    command = render_command(template, {"v": value}, {})
    printed = subprocess.run(["bash", "-c", command.replace("echo ", "printf '%s\\0' ", 1)], cwd=tmp_path,
                             capture_output=True, text=True, check=True).stdout
    expected = {"echo ${{inputs.v}}": [value], "echo '${{inputs.v}}'": [value], 'echo "${{inputs.v}}"': [value],
                "echo x${{inputs.v}}y": [f"x{value}y"],
                "echo '--t=${{inputs.v}}' \"${{inputs.v}}\"": [f"--t={value}", value]}[template]
    assert printed.split("\0")[:-1] == expected
    assert not (tmp_path / "pwned").exists()


def test_escape_contexts():
    assert shell.escape("a b", "none") == "'a b'"
    assert shell.escape("it's", "single") == "it'\"'\"'s"
    assert shell.escape('$(x) "q" `y` \\', "double") == '\\$(x) \\"q\\" \\`y\\` \\\\'


def test_hostile_set_values_reach_the_step_through_the_runner(tmp_path, runs):
    code = tmp_path / "src"
    code.mkdir()
    (code / "step.py").write_text(STEP)
    component = {"$schema": "https://azuremlschemas.azureedge.net/latest/commandComponent.schema.json",
                 "type": "command", "name": "echo_args", "version": "1", "code": "./src",
                 "environment": "azureml:AzureML-sklearn-1.5-ubuntu22.04-py39-cpu@latest",
                 "inputs": {"a": {"type": "string"}, "b": {"type": "string"}, "data": {"type": "uri_folder"}},
                 "outputs": {"out": {"type": "uri_folder"}},
                 "command": "python step.py ${{outputs.out}} ${{inputs.a}} '${{inputs.b}}' --data ${{inputs.data}}"}
    (tmp_path / "component.yaml").write_text(yaml.safe_dump(component))
    spaced = tmp_path / "my data $(touch pwned)"
    spaced.mkdir()
    pipeline = {"type": "pipeline", "experiment_name": "runner-tests",
                "inputs": {"a": "x", "b": "y", "data": {"type": "uri_folder", "path": "./src"}},
                "jobs": {"echo": {"type": "command", "component": "./component.yaml",
                                  "inputs": {"a": "${{parent.inputs.a}}", "b": "${{parent.inputs.b}}",
                                             "data": "${{parent.inputs.data}}"}}}}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    a, b = "tone$(touch pwned)`touch pwned`; echo", "it's \"$HOME\"\nnext line"
    result = invoke("run", tmp_path / "pipeline.yaml", "--set", f"a={a}", "--set", f"b={b}", "--set",
                    f"data={spaced}", "--run-dir", runs / "r1")
    assert result.exit_code == 0, result.output
    argv = json.loads((runs / "r1" / "echo" / "outputs" / "out" / "argv.json").read_text())
    assert argv == [a, b, "--data", str(spaced)]
    assert not any(p.name == "pwned" for p in Path(tmp_path).rglob("*")) and not Path("pwned").exists()
