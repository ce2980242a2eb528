"""`slmops validate`, `slmops run` and `slmops submit --dry-run` read a pipeline through one front-end: on the same
file with the same `--set` they report the same problems (errors exit 2 before any step runs; warnings are printed
and fail only with --strict)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from tests.runner.conftest import ASSETS, invoke

ROOT = Path(__file__).resolve().parents[2]
ADD = str(ASSETS / "components" / "add.yaml")

BASE = {
    "$schema": "https://azuremlschemas.azureedge.net/latest/pipelineJob.schema.json",
    "type": "pipeline",
    "experiment_name": "runner-tests",
    "settings": {"default_compute": "azureml:cpu-cluster"},
    "inputs": {"x": 2, "mode": "add", "steps": 1,
               "data": {"type": "uri_folder", "path": str(ASSETS / "data")}},
    "jobs": {
        "a": {"type": "command", "component": ADD,
              "inputs": {"value": "${{parent.inputs.x}}", "mode": "${{parent.inputs.mode}}",
                         "steps": "${{parent.inputs.steps}}", "a": "${{parent.inputs.data}}"}},
        "b": {"type": "command", "component": ADD, "inputs": {"a": "${{parent.jobs.a.outputs.out}}"}},
    },
}


def variant(change=None) -> dict:
    doc = copy.deepcopy(BASE)
    if change:
        change(doc)
    return doc


def _set(path: str, value):
    def change(doc):
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[key]
        node[last] = value
    return change


SWEEP = {"type": "sweep", "trial": ADD, "inputs": {"a": "${{parent.inputs.data}}"},
         "search_space": {"learning_rate": {"type": "choice", "values": [1, 2]}}, "sampling_algorithm": "grid",
         "objective": {"goal": "maximize", "primary_metric": "total"},
         "limits": {"max_total_trials": 2, "max_concurrent_trials": 1}}

# (case, pipeline change, --set values, expected problem, "error" | "warning")
CASES = [
    ("misspelled job input", _set("jobs.b.inputs.vaule", 3), {},
     "jobs.b.inputs.vaule: the component has no input 'vaule', so Azure ML ignores it (did you mean 'value'?",
     "warning"),
    ("misspelled --set", None, {"xx": "3"}, "--set xx: the pipeline has no input 'xx'", "error"),
    ("wrong type", None, {"x": "abc"}, "--set x: 'abc' is not a valid number", "error"),
    ("enum", None, {"mode": "div"}, "jobs.a.inputs.mode: 'div' is not one of ['add', 'mul']", "error"),
    ("min", None, {"steps": "-1"}, "jobs.a.inputs.steps: -1 is below the minimum 0", "error"),
    ("max", None, {"x": "5000"}, "jobs.a.inputs.value: 5000 is above the maximum 1000", "error"),
    ("unknown parent input", _set("jobs.b.inputs.value", "${{parent.inputs.nope}}"), {},
     "jobs.b.inputs.value: ${{parent.inputs.nope}} names an unknown pipeline input 'nope'", "error"),
    ("unknown job output", _set("jobs.b.inputs.a", "${{parent.jobs.a.outputs.result}}"), {},
     "jobs.b.inputs.a: ${{parent.jobs.a.outputs.result}}: job 'a' has no output 'result'", "error"),
    ("cycle", _set("jobs.a.inputs.b", "${{parent.jobs.b.outputs.out}}"), {},
     "jobs: the pipeline's jobs depend on each other in a cycle: a, b", "error"),
    ("search space names a missing input", _set("jobs.tune", SWEEP), {},
     "jobs.tune.search_space.learning_rate: the trial component has no input 'learning_rate'", "error"),
    ("undeclared input", _set("jobs.b.inputs.colour", "red"), {},
     "jobs.b.inputs.colour: the component has no input 'colour', so Azure ML ignores it", "warning"),
    ("missing data file", None, {"data": "./no/such/folder"}, "/no/such/folder does not exist", "error"),
    ("unused pipeline input", _set("inputs.unused", 5), {},
     "inputs.unused: no job uses this pipeline input", "warning"),
]


def problem_lines(stderr: str) -> list[str]:
    """The reported problems: `warning: ...` lines and the `  - ...` items of the error, without the file path
    (validate and submit name it the same way, run too), sorted."""
    found = []
    for line in stderr.splitlines():
        if line.startswith("warning: "):
            found.append(line[len("warning: "):])
        elif line.startswith("  - "):
            found.append(line[4:])
    return sorted(found)


def run_all(tmp_path: Path, doc: dict, sets: dict, *extra: str) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump(doc, sort_keys=False))
    set_args = [a for name, value in sets.items() for a in ("--set", f"{name}={value}")]
    return {
        "validate": invoke("validate", pipeline, *set_args, *extra),
        "run": invoke("run", pipeline, *set_args, *extra, "--run-dir", tmp_path / "runs" / "r1"),
        "submit": invoke("submit", pipeline, *set_args, *extra, "--dry-run", "--project-dir", ROOT),
    }


@pytest.mark.parametrize("case, change, sets, expected, severity", CASES, ids=[c[0] for c in CASES])
def test_validate_run_and_submit_report_the_same_problems(tmp_path, runs, case, change, sets, expected, severity):
    results = run_all(tmp_path, variant(change), sets)
    reported = {command: problem_lines(result.stderr) for command, result in results.items()}
    assert reported["validate"] == reported["run"] == reported["submit"], reported
    assert any(expected in line for line in reported["validate"]), reported["validate"]
    for command, result in results.items():
        assert "Traceback" not in result.output, (command, result.output)
        if severity == "error":
            assert result.exit_code == 2, (command, result.output)
        else:
            assert result.exit_code == 0, (command, result.output)
    if severity == "error":
        assert not (tmp_path / "runs" / "r1").exists(), "run wrote a run folder for an invalid pipeline"
    else:   # ... and with --strict the warning is an error everywhere, before anything runs
        strict = run_all(tmp_path / "strict", variant(change), sets, "--strict")
        for command, result in strict.items():
            assert result.exit_code == 2, (command, result.output)
            assert any(expected in line and "--strict" in line for line in problem_lines(result.stderr))
        assert not (tmp_path / "strict" / "runs" / "r1").exists()


def test_undeclared_input_runs_locally_with_one_warning(tmp_path, runs):
    """The public sample pipeline_with_pipeline_component/nyc_taxi... passes an input its component does not
    declare; Azure ML ignores it, and so does the runner (with one warning)."""
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump(variant(_set("jobs.b.inputs.test_split_ratio", 0.2)), sort_keys=False))
    result = invoke("run", pipeline, "--run-dir", runs / "r1")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "test_split_ratio" in warnings[0]
    assert json.loads((runs / "r1" / "run.json").read_text())["status"] == "FINISHED"


def test_learning_rate_zero_is_rejected_before_any_step_runs(tmp_path):
    result = invoke("validate", ROOT / "pipelines" / "finetune.yaml", "--set", "learning_rate=0",
                    "--set", f"base_model={ASSETS / 'data'}")
    assert result.exit_code == 2, result.output
    assert re.search(r"jobs\.finetune\.inputs\.learning_rate: 0 is below the minimum", result.stderr), result.stderr


@pytest.mark.parametrize("command", ["validate", "run", "submit"])
@pytest.mark.parametrize("target", ["missing.yaml", "."])
def test_missing_pipeline_file_is_a_user_error(tmp_path, command, target):
    result = invoke(command, tmp_path / target, *(["--dry-run"] if command == "submit" else []))
    assert result.exit_code == 2, result.output
    assert "Fix: pass the path of a pipeline-job YAML" in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / ".slmops").exists()


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    pipeline = tmp_path / "broken.yaml"
    pipeline.write_text("type: pipeline\njobs:\n  a: [unclosed\n")
    result = invoke("validate", pipeline)
    assert result.exit_code == 2
    assert re.search(r"YAML syntax error at line \d+, column \d+", result.stderr), result.stderr


def test_a_number_given_to_a_text_input_is_a_warning(tmp_path, runs):
    doc = variant(_set("jobs.a.inputs.metric", 2024))
    results = run_all(tmp_path, doc, {})
    for command, result in results.items():
        assert result.exit_code == 0, (command, result.output)
        assert any("jobs.a.inputs.metric: the text input gets the int 2024, passed as the text '2024'" in line
                   for line in problem_lines(result.stderr)), (command, result.stderr)
