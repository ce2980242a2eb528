"""`slmops validate`: azure-ai-ml's checks plus what it misses offline, every problem at once, exit 2."""

from __future__ import annotations

import pytest

from tests.runner.conftest import invoke, slmops

# Each problem planted in assets/invalid/all_errors.yaml: (field, words of the message).
EXPECTED = [
    ("jobs.unknown_input.inputs.value", "unknown pipeline input 'nope'"),
    ("jobs.unknown_job.inputs.a", "unknown job 'ghost'"),
    ("jobs.unknown_output.inputs.a", "has no output 'result'"),
    ("jobs.wrong_type.inputs.value", "'abc' is not a valid number"),
    ("jobs.bad_enum.inputs.mode", "'div' is not one of ['add', 'mul']"),
    ("jobs.too_big.inputs.value", "above the maximum 1000"),
    ("jobs.tune.search_space.learning_rate", "has no input 'learning_rate'"),
    ("jobs:", "cycle: cycle_a, cycle_b"),
    ("jobs.missing_code.component.code", "does_not_exist does not exist"),
]


def test_validate_reports_every_problem_at_once():
    """Through the installed console script: exit status 2 and a clean message, no traceback."""
    result = slmops("validate", "invalid/all_errors.yaml")
    assert result.returncode == 2, result.stderr
    assert f"has {len(EXPECTED)} problem(s)" in result.stderr
    lines = result.stderr.splitlines()
    for field, words in EXPECTED:
        assert any(line.strip().startswith(f"- {field}") and words in line for line in lines), (field, result.stderr)
    assert "Traceback" not in result.stderr
    # Accepted by Azure ML, so warnings (errors only with --strict):
    assert "warning: jobs.misspelled.inputs.vaule: the component has no input 'vaule', so Azure ML ignores it " \
           "(did you mean 'value'?" in result.stderr
    assert "warning: inputs.x: no job uses this pipeline input" in result.stderr
    strict = slmops("validate", "invalid/all_errors.yaml", "--strict")
    assert strict.returncode == 2 and f"has {len(EXPECTED) + 2} problem(s)" in strict.stderr


def test_validate_checks_command_references():
    result = invoke("validate", "invalid/command_refs.yaml")
    assert result.exit_code == 2
    for name in ("inputs.ghost", "inputs.maybe", "outputs.result"):
        assert f"jobs.bad_refs.command: uses ${{{{{name}}}}}" in result.stderr


@pytest.mark.parametrize("pipeline, words", [
    ("pipe5.yaml", "valid (5 command job(s), 2 file(s) read)"),
    ("nested.yaml", "valid (5 command job(s), 3 file(s) read)"),
    ("sweep.yaml", "valid (1 sweep job(s), 2 file(s) read)"),
    ("cloud_input.yaml", "valid (1 command job(s)"),          # valid for the cloud; `run` needs --set
    ("azureml_layout/pipeline.yml", "valid (1 command job(s)"),
])
def test_validate_accepts_good_pipelines(pipeline, words):
    result = invoke("validate", pipeline)
    assert result.exit_code == 0, result.output
    assert words in result.stdout


@pytest.mark.parametrize("args, words", [
    (["--set", "nope=1"], "--set nope: the pipeline has no input 'nope'"),
    (["--set", "x=abc"], "--set x: 'abc' is not a valid number"),
    (["--set", "x=5000"], "jobs.a.inputs.value: 5000 is above the maximum"),
])
def test_validate_checks_set_values(args, words):
    result = invoke("validate", "pipe5.yaml", *args)
    assert result.exit_code == 2
    assert words in result.stderr


def test_validate_missing_file():
    result = invoke("validate", "nowhere.yaml")
    assert result.exit_code == 2
    assert "does not exist" in result.stderr
