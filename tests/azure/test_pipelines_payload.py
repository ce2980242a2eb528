"""Every pipeline in pipelines/ built through the real azure-ai-ml objects: the payload `submit --dry-run` prints.

Proves: each YAML loads and validates with azure-ai-ml, nodes bind to the right upstream outputs, compute and
environments are what we intend, the distributed variant carries torchrun/DeepSpeed settings, and the sweep
template's finetune node is a sweep over the finetune component. Cannot prove
that the service accepts the payload (see test_live.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.azure import environments, submit

ROOT = Path(__file__).parents[2]
PIPELINES = sorted((ROOT / "pipelines").glob("*.yaml"))
OUR_NODES = {"prep", "finetune", "evaluate", "optimize", "register"}

# pipeline file -> expectations for the finetune node (files other engineers add get the generic checks only).
EXPECTED = {
    "finetune.yaml": {"method": "lora", "distribution": None, "instance_count": None, "deepspeed": None},
    "finetune_qlora_gpu.yaml": {"method": "qlora", "distribution": None, "instance_count": None, "deepspeed": None},
    "finetune_full.yaml": {"method": "full", "distribution": None, "instance_count": None, "deepspeed": None},
    "finetune_distributed.yaml": {"method": "lora", "instance_count": 2, "deepspeed": "zero2",
                                  "distribution": {"distribution_type": "PyTorch", "process_count_per_instance": 4}},
}


@pytest.fixture(scope="module")
def project_envs():
    return environments.load_environments(ROOT / "environments")


def payload_of(path: Path, envs, sets=None):
    job = submit.load_pipeline(path, sets or {}, [], None, ROOT)
    used = submit.pin_environments(job, envs)
    return submit.dry_run_payload(job, used)


def test_every_named_pipeline_exists():
    assert set(EXPECTED) <= {p.name for p in PIPELINES}


@pytest.mark.parametrize("path", PIPELINES, ids=[p.name for p in PIPELINES])
def test_payload_nodes_bindings_compute_environments(path, project_envs):
    payload = payload_of(path, project_envs)
    json.dumps(payload)  # the printed payload is plain JSON
    job = payload["job"]["properties"]
    assert job["jobType"] == "Pipeline"
    assert job["settings"]["default_compute"]
    nodes = job["jobs"]
    assert set(nodes) == set(payload["components"])
    for name, node in nodes.items():
        component_id = node["trial"]["componentId"] if node["type"] == "sweep" else node["componentId"]
        assert component_id == f"anonymous:{name}"
        spec = payload["components"][name]["properties"]["componentSpec"]
        # every bound input exists on the component, and every ${{parent.jobs.X.outputs.Y}} names a real output
        for input_name, binding in node["inputs"].items():
            assert input_name in spec["inputs"], (name, input_name)
            value = str(binding.get("value", ""))
            if value.startswith("${{parent.jobs."):
                upstream, _, output = value[len("${{parent.jobs."):-2].split(".")
                upstream_spec = payload["components"][upstream]["properties"]["componentSpec"]
                assert output in upstream_spec["outputs"], (name, value)
            elif value.startswith("${{parent.inputs."):
                assert value[len("${{parent.inputs."):-2] in job["inputs"], (name, value)
        # environments are pinned to the exact project version, never @latest
        env = spec["environment"]
        assert "@latest" not in env
        env_name, version = env.removeprefix("azureml:").split(":")
        assert payload["environments"][env_name]["version"] == version
        assert Path(spec["code"]).is_dir()
    if OUR_NODES <= set(nodes):
        assert nodes["finetune"]["computeId"] == "gpu-cluster"
        assert payload["components"]["finetune"]["properties"]["componentSpec"]["environment"].startswith(
            "azureml:slmops-gpu:")
        for step in OUR_NODES - {"finetune"}:
            assert payload["components"][step]["properties"]["componentSpec"]["environment"].startswith(
                "azureml:slmops-cpu:")
            assert "computeId" not in nodes[step]  # the pipeline's default (CPU) compute
        # the data flows prep -> finetune -> evaluate/optimize -> register
        assert nodes["finetune"]["inputs"]["train_data"]["value"] == "${{parent.jobs.prep.outputs.output_data}}"
        assert nodes["register"]["inputs"]["eval_metrics"]["value"] == "${{parent.jobs.evaluate.outputs.metrics}}"
        assert nodes["register"]["outputs"]["registration"]["value"] == "${{parent.outputs.registration}}"
    for env in payload["environments"].values():
        assert "azureml-mlflow==" in env["body"]["properties"]["condaFile"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_finetune_node_settings(name, project_envs):
    expected = EXPECTED[name]
    job = payload_of(ROOT / "pipelines" / name, project_envs)["job"]["properties"]
    node = job["jobs"]["finetune"]
    assert job["inputs"]["method"]["value"] == expected["method"]
    assert node.get("distribution") == expected["distribution"]
    assert (node.get("resources") or {}).get("instance_count") == expected["instance_count"]
    deepspeed = node["inputs"].get("deepspeed")
    if expected["deepspeed"] is None:
        assert deepspeed is None
    else:
        assert deepspeed["value"] == "${{parent.inputs.deepspeed}}"
        assert job["inputs"]["deepspeed"]["value"] == expected["deepspeed"]


def test_sweep_template_is_a_sweep_over_the_finetune_component(project_envs):
    """pipelines/finetune_sweep.yaml: the trial is the finetune component (pinned to the GPU environment), the
    search space names its inputs, the objective is the eval_loss it logs, and downstream nodes read the best
    trial's outputs through the node, as in finetune.yaml."""
    payload = payload_of(ROOT / "pipelines" / "finetune_sweep.yaml", project_envs)
    node = payload["job"]["properties"]["jobs"]["finetune"]
    spec = payload["components"]["finetune"]["properties"]["componentSpec"]
    assert node["type"] == "sweep" and node["trial"] == {"componentId": "anonymous:finetune"}
    assert spec["command"].startswith("python -m slmops.steps.finetune ")
    assert spec["environment"].startswith("azureml:slmops-gpu:")
    assert set(node["search_space"]) == {"learning_rate", "lora_r", "batch_size"} <= set(spec["inputs"])
    assert node["search_space"]["learning_rate"]["type"] == "loguniform"
    assert node["objective"] == {"primary_metric": "eval_loss", "goal": "minimize"}
    assert node["sampling_algorithm"]["type"] == "random"
    assert node["early_termination"]["policy_type"] == "Bandit"
    assert not set(node["search_space"]) & set(node["inputs"])  # a swept input is not also bound
    jobs = payload["job"]["properties"]["jobs"]
    assert jobs["evaluate"]["inputs"]["model"]["value"] == "${{parent.jobs.finetune.outputs.model}}"
    assert jobs["register"]["inputs"]["model"]["value"] == "${{parent.jobs.finetune.outputs.model}}"


def test_overrides_are_applied_and_type_checked(project_envs):
    job = payload_of(ROOT / "pipelines" / "finetune.yaml", project_envs,
                     {"max_steps": "9", "learning_rate": "0.0003", "method": "dora",
                      "data": "azureml:tone-data:2"})["job"]["properties"]
    assert job["inputs"]["max_steps"]["value"] == "9"
    assert job["inputs"]["learning_rate"]["value"] == "0.0003"
    assert job["inputs"]["method"]["value"] == "dora"
    assert job["inputs"]["data"] == {"jobInputType": "uri_file", "uri": "tone-data:2"}  # azure-ai-ml drops "azureml:"


@pytest.mark.parametrize("sets, message", [
    ({"max_steps": "ten"}, "--set max_steps: 'ten' is not a valid number"),
    ({"learning_rate": "fast"}, "--set learning_rate: 'fast' is not a valid number"),
    ({"no_such_input": "1"}, "the pipeline has no input 'no_such_input'"),
    ({"data": "./definitely/missing.jsonl"}, "does not exist"),
])
def test_bad_overrides_are_user_errors(sets, message):
    from slmops.errors import UserError

    with pytest.raises(UserError, match=None) as info:
        submit.load_pipeline(ROOT / "pipelines" / "finetune.yaml", sets, [], None, ROOT)
    assert message in str(info.value)


def test_all_override_problems_are_reported_together():
    from slmops.errors import UserError

    with pytest.raises(UserError) as info:
        submit.load_pipeline(ROOT / "pipelines" / "finetune.yaml", {"max_steps": "x", "nope": "1"},
                             ["nonode=gpu"], None, ROOT)
    assert len(info.value.problems) == 3


def test_compute_flags(project_envs):
    job = submit.load_pipeline(ROOT / "pipelines" / "finetune.yaml", {}, ["cpu-small", "finetune=a100"], "exp", ROOT)
    body = submit.dry_run_payload(job, submit.pin_environments(job, project_envs))["job"]["properties"]
    assert body["settings"]["default_compute"] == "cpu-small"
    assert body["jobs"]["finetune"]["computeId"] == "a100"
    assert body["experimentName"] == "exp"


def test_dry_run_cli_prints_json_and_makes_no_network_call(monkeypatch):
    """--dry-run needs neither a workspace nor a credential: both would raise here if touched."""
    from click.testing import CliRunner

    from slmops.azure import workspace
    from slmops.cli import main

    def forbidden(*args, **kwargs):
        raise AssertionError("dry-run touched the workspace/credential")

    monkeypatch.setattr(workspace, "resolve_workspace", forbidden)
    monkeypatch.setattr(workspace, "default_credential", forbidden)
    monkeypatch.setattr(workspace, "ml_client", forbidden)
    import socket

    monkeypatch.setattr(socket.socket, "connect", forbidden)
    result = CliRunner().invoke(main, ["submit", str(ROOT / "pipelines" / "finetune_distributed.yaml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["job"]["properties"]["jobs"]["finetune"]["resources"] == {"instance_count": 2}


@pytest.mark.parametrize("name", ["finetune.yaml", "finetune_sweep.yaml"])
def test_dry_run_gives_every_step_the_commit_and_component_versions(name, tmp_path, monkeypatch):
    """submit reads the project's git state once, before azure-ai-ml snapshots the code, and sets the lineage
    variables on every node (sweep nodes too) under the job's own environment_variables; register reads them."""
    import subprocess

    import yaml
    from click.testing import CliRunner

    from slmops.cli import main
    from slmops.pipeline import lineage

    calls = []
    real = lineage.git_state
    monkeypatch.setattr(lineage, "git_state", lambda folder: calls.append(folder) or real(folder))
    result = CliRunner().invoke(main, ["submit", str(ROOT / "pipelines" / name), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert calls == [(ROOT / "pipelines").resolve()]
    jobs = json.loads(result.stdout)["job"]["properties"]["jobs"]
    refs = {n: "{name}:{version}".format(**yaml.safe_load((ROOT / "components" / n / "component.yaml").read_text()))
            for n in OUR_NODES}
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    for node_name, node in jobs.items():
        env = node["environment_variables"]
        assert json.loads(env["SLMOPS_COMPONENTS"]) == refs, node_name
        if head.returncode == 0:  # a git checkout: the commit HEAD had, and whether the tree was dirty
            assert env["SLMOPS_GIT_COMMIT"] == head.stdout.strip() and env["SLMOPS_GIT_DIRTY"] in ("true", "false")
        else:
            assert "SLMOPS_GIT_COMMIT" not in env


def test_a_job_s_own_environment_variables_win_over_the_lineage_ones(project_envs):
    job = submit.load_pipeline(ROOT / "pipelines" / "finetune.yaml", {}, [], None, ROOT)
    job.jobs["register"].environment_variables = {"SLMOPS_GIT_COMMIT": "mine", "OTHER": "1"}
    submit.set_lineage_env(job, {"commit": "c" * 40, "dirty": False})
    assert job.jobs["register"].environment_variables["SLMOPS_GIT_COMMIT"] == "mine"
    assert job.jobs["register"].environment_variables["OTHER"] == "1"
    assert job.jobs["prep"].environment_variables["SLMOPS_GIT_COMMIT"] == "c" * 40
    assert job.jobs["prep"].environment_variables["SLMOPS_GIT_DIRTY"] == "false"


@pytest.mark.parametrize("sets, given", [
    ({}, set()),
    ({"base_model_id": "HuggingFaceTB/SmolLM2-135M-Instruct"}, {"base_model_id"}),
    ({"base_model": "sdk"}, {"base_model"}),
])
def test_unset_model_inputs_are_left_out_of_the_job(project_envs, sets, given):
    """`base_model: {type: custom_model}` and `base_model_id: ""` are declared but not given: neither they nor the
    job inputs bound to them reach the REST body (as azure-ai-ml does for an empty literal), so each step's
    `$[[--base_model ...]]` part is dropped, the same as locally."""
    job = payload_of(ROOT / "pipelines" / "finetune.yaml", project_envs, sets)["job"]["properties"]
    assert {"base_model", "base_model_id"} & set(job["inputs"]) == given
    for step in ("prep", "finetune", "evaluate", "register"):
        assert {"base_model", "base_model_id"} & set(job["jobs"][step]["inputs"]) == given, step
