"""A job's default `artifacts` output is its artifact folder, as on Azure ML: what a step writes to `./outputs` is
readable downstream as `${{parent.jobs.X.outputs.artifacts}}/outputs/...` (the public sample
hello-pipeline-default-artifacts.yml does exactly this; our own pipeline reproduces its layout)."""

from __future__ import annotations

import json

import yaml

from tests.runner.conftest import invoke

ENV = "azureml:AzureML-sklearn-1.5-ubuntu22.04-py39-cpu@latest"


def test_default_artifacts_output_is_readable_downstream(tmp_path, runs):
    pipeline = {
        "$schema": "https://azuremlschemas.azureedge.net/latest/pipelineJob.schema.json",
        "type": "pipeline", "experiment_name": "runner-tests",
        "jobs": {
            "hello_job": {"type": "command", "environment": ENV,
                          "command": "echo hello && echo world > ./outputs/world.txt",
                          "outputs": {"artifacts": None}},
            "world_job": {"type": "command", "environment": ENV,
                          "command": "cat ${{inputs.world_input}}/outputs/world.txt",
                          "inputs": {"world_input": "${{parent.jobs.hello_job.outputs.artifacts}}"}},
        },
    }
    (tmp_path / "pipeline.yml").write_text(yaml.safe_dump(pipeline))
    result = invoke("run", tmp_path / "pipeline.yml", "--run-dir", runs / "r1")
    assert result.exit_code == 0, result.output
    assert json.loads((runs / "r1" / "run.json").read_text())["steps"] == {"hello_job": "done", "world_job": "done"}
    assert (runs / "r1" / "world_job" / "user_logs" / "std_log.txt").read_text().strip().endswith("world")
