"""`slmops optimize` (slmops.verbs) and pipelines/optimize.yaml: flags become the pipeline's inputs through the code
`slmops finetune` uses (--dry-run, --save/--inputs, one error for every bad flag, exit 2), a registered version is
resolved in the registry (downloaded locally, azureml:NAME:VERSION with --azure), the inputs reach `slmops run` /
`slmops submit` unchanged, the pipeline stays in step with finetune.yaml and builds an Azure ML payload, and (slow)
a real run on the tiny fine-tuned model builds, scores, gates and registers its ONNX model."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner

from slmops import registry
from slmops.cli import main

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipelines" / "optimize.yaml"
pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.RemovedInMarshmallow4Warning")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A working folder with rows.jsonl and a stand-in MLflow model folder; the current folder while the test runs."""
    from slmops.tiny import tone_dataset, write_jsonl

    write_jsonl(tone_dataset(100), tmp_path / "rows.jsonl")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}\n")
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A sqlite registry holding `tone` versions 1 and 2 (@candidate on 2). Returns its tracking URI."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    registry.ensure_registered_model(uri, "tone")
    for version in ("1", "2"):
        folder = root / f"model-v{version}"
        folder.mkdir()
        (folder / "MLmodel").write_text(f"version: {version}\n")
        registry.create_version(uri, "tone", str(folder), None, {})
    registry.set_alias(uri, "tone", "candidate", "2")
    return uri


def slmops(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_help_lists_every_flag():
    result = slmops("optimize", "--help")
    assert result.exit_code == 0
    for flag in ("--model", "--data", "--test-data", "--precision", "--set", "--inputs", "--pipeline", "--azure",
                 "--compute", "--run-dir", "--dry-run", "--save"):
        assert flag in result.output, flag
    assert "optimize" in slmops("--help").output


def test_dry_run_prints_every_resolved_input_and_runs_nothing(project):
    result = slmops("optimize", "--model", "model", "--data", "rows.jsonl", "--precision", "int8",
                    "--set", "min_accuracy=0.8", "--dry-run")
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    declared = yaml.safe_load(PIPELINE.read_text())["inputs"]
    assert printed["pipeline"] == str(PIPELINE)
    inputs = printed["inputs"]
    assert set(inputs) == set(declared) - {"test_data"}      # every input but the unset one
    assert inputs["model"] == str(project / "model") and inputs["data"] == str(project / "rows.jsonl")
    assert (inputs["onnx_precision"], inputs["min_accuracy"]) == ("int8", 0.8)
    assert inputs["max_optimized_drop"] == declared["max_optimized_drop"]       # YAML defaults
    assert "# would run: slmops run " in result.stderr and "--set onnx_precision=int8" in result.stderr
    assert not (project / "runs").exists()


def test_defaults_are_absolute_so_a_saved_file_means_the_same_anywhere(project, tmp_path_factory, monkeypatch):
    saved = project / "job.yaml"
    first = slmops("optimize", "--model", "model", "--save", saved, "--dry-run")
    assert first.exit_code == 0, first.output
    doc = yaml.safe_load(saved.read_text())
    assert doc == yaml.safe_load(first.stdout)
    assert doc["inputs"]["data"] == str(ROOT / "sdk" / "slmops" / "data" / "tone_sample.jsonl")  # the YAML default
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    again = slmops("optimize", "--inputs", saved, "--precision", "fp32", "--dry-run")
    assert again.exit_code == 0, again.output
    assert yaml.safe_load(again.stdout)["inputs"] == {**doc["inputs"], "onnx_precision": "fp32"}


def test_a_registered_version_is_downloaded_for_a_local_run(project, registered, monkeypatch, tmp_path):
    from slmops.serving import cli as serving_cli

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered)
    monkeypatch.setattr(serving_cli, "CACHE_DIR", tmp_path / "cache")
    result = slmops("optimize", "--model", "models:/tone@candidate", "--dry-run")
    assert result.exit_code == 0, result.output
    folder = Path(yaml.safe_load(result.stdout)["inputs"]["model"])
    assert folder.is_relative_to(tmp_path / "cache") and (folder / "MLmodel").read_text() == "version: 2\n"


@pytest.mark.parametrize("ref, expected", [
    ("models:/tone/1", "azureml:tone:1"),
    ("tone:1", "azureml:tone:1"),
    ("models:/tone@candidate", "azureml:tone:2"),        # the alias, looked up in the registry
    ("azureml:tone@latest", "azureml:tone@latest"),      # an Azure ML reference, as given
])
def test_with_azure_a_registered_version_is_the_workspace_model(project, registered, monkeypatch, ref, expected):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered)
    result = slmops("optimize", "--model", ref, "--azure", "--dry-run")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["inputs"]["model"] == expected
    assert "# would run: slmops submit " in result.stderr


BAD = [
    # arguments, every text expected in the error
    ([], ["no model: pass --model"]),
    (["--model", "missing"], ["--model: ", "missing does not exist"]),
    (["--model", "model", "--precision", "int3"], ["'int3' is not one of 'int4', 'int8', 'fp32'"]),
    (["--model", "model", "--set", "model=other"], ["--model ", "and --set model='other' both set the input model"]),
    (["--model", "model", "--set", "max_steps=3"], ["the pipeline has no input 'max_steps'"]),
    (["--model", "models:/tone@candidate"], ["no registry at sqlite:///", "Fix: set MLFLOW_TRACKING_URI"]),
    (["--model", "models:/tone@candidate", "--azure", "--dry-run"],
     ["the alias 'candidate' is looked up in the workspace's registry", "models:/tone/VERSION"]),
    (["--model", "model", "--data", "none.jsonl", "--save", "x.txt"],                   # every problem at once
     ["--save x.txt: unknown file type", "--data: ", "none.jsonl does not exist"]),
    (["--model", "model", "--compute", "gpu"], ["--compute applies to --azure only"]),
    (["--model", "model", "--inputs", "none.yaml"], ["--inputs none.yaml: no such file", "slmops optimize --save"]),
]


@pytest.mark.parametrize("args, messages", BAD, ids=[" ".join(a) or "(none)" for a, _ in BAD])
def test_bad_flags_are_one_clear_error_exit_2_and_nothing_runs(args, messages, project):
    result = slmops("optimize", *args)
    assert result.exit_code == 2, result.output
    for message in messages:
        assert message in result.output, result.output
    assert not (project / "runs").exists()


def test_inputs_reach_slmops_run_unchanged(project, monkeypatch):
    from slmops.runner import cli as runner_cli

    calls = []
    monkeypatch.setattr(runner_cli.run, "callback", lambda **kwargs: calls.append(kwargs))
    result = slmops("optimize", "--model", "model", "--test-data", "rows.jsonl", "--precision", "int8",
                    "--run-dir", "r1")
    assert result.exit_code == 0, result.output
    [kwargs] = calls
    assert kwargs["pipeline"] == PIPELINE and kwargs["run_dir"] == Path("r1")
    assert kwargs["set_"] == ("model=model", "test_data=rows.jsonl", "onnx_precision=int8")


def test_azure_submits_through_slmops_submit(project, monkeypatch):
    """--azure is `slmops submit PIPELINE --set ...`; only the workspace connection and the create call are faked."""
    from slmops.azure import cli as azure_cli
    from slmops.azure import submit as submitting

    sent = []
    monkeypatch.setattr(azure_cli, "_connect", lambda *a, **k: "client")
    monkeypatch.setattr(submitting, "submit", lambda client, job, envs, echo=print: sent.append(job) or
                        SimpleNamespace(name="run-1", studio_url="https://studio/run-1"))
    result = slmops("optimize", "--model", "azureml:slmops-tone:3", "--precision", "int8", "--azure",
                    "--compute", "optimize=gpu")
    assert result.exit_code == 0, result.output
    [job] = sent
    assert job.inputs["model"]._data.path == "slmops-tone:3"        # azure-ai-ml strips azureml: from an asset
    assert job.inputs["onnx_precision"]._data == "int8"
    assert job.jobs["optimize"].compute == "gpu"


# ------------------------------------------------------------------------------------------ pipelines/optimize.yaml

def test_the_pipeline_shares_finetune_yaml_s_components_defaults_and_bindings():
    """optimize.yaml is finetune.yaml without training: the same component per job, the same defaults for the inputs
    both declare (prompt format, ONNX settings, gate), and every job input bound as in finetune.yaml except where
    finetune's model output (or the base model) is replaced by the model given."""
    base = yaml.safe_load((ROOT / "pipelines" / "finetune.yaml").read_text())
    mine = yaml.safe_load(PIPELINE.read_text())
    assert set(mine["jobs"]) == set(base["jobs"]) - {"finetune"}
    shared = (set(mine["inputs"]) & set(base["inputs"])) - {"data", "k_shot"}   # k_shot 0: no separate base here
    assert {"format", "system_prompt", "template", "label_column", "onnx_precision", "min_accuracy"} <= shared
    assert {name: mine["inputs"][name] for name in shared} == {name: base["inputs"][name] for name in shared}
    model = "${{parent.inputs.model}}"
    replaced = {"${{parent.jobs.finetune.outputs.model}}", "${{parent.inputs.base_model}}"}
    for job, spec in mine["jobs"].items():
        assert spec["component"] == base["jobs"][job]["component"], job
        for name, binding in spec["inputs"].items():
            theirs = base["jobs"][job]["inputs"].get(name)
            assert binding == theirs or (binding == model and theirs in replaced) or theirs is None, (job, name)


def payload(sets, envs):
    from slmops.azure import submit

    job = submit.load_pipeline(PIPELINE, sets, [], None, ROOT)
    return submit.dry_run_payload(job, submit.pin_environments(job, envs))["job"]["properties"]


def test_azure_payload_binds_the_model_and_leaves_unset_test_data_out():
    from slmops.azure import environments

    envs = environments.load_environments(ROOT / "environments")
    job = payload({"model": "azureml:slmops-tone:3"}, envs)
    assert job["inputs"]["model"] == {"jobInputType": "mlflow_model", "uri": "slmops-tone:3"}  # an asset reference
    for step in ("optimize", "evaluate", "register"):
        assert job["jobs"][step]["inputs"]["model"]["value"] == "${{parent.inputs.model}}", step
    assert job["jobs"]["evaluate"]["inputs"]["base_model"]["value"] == "${{parent.inputs.model}}"
    assert "test_data" not in job["inputs"] and "test_data" not in job["jobs"]["prep"]["inputs"]
    given = payload({"model": "azureml:slmops-tone:3", "test_data": str(ROOT / "sdk" / "slmops" / "data" /
                                                                           "tone_sample.jsonl")}, envs)
    assert given["jobs"]["prep"]["inputs"]["test_data"]["value"] == "${{parent.inputs.test_data}}"


@pytest.mark.slow
def test_optimize_runs_the_pipeline_on_the_tiny_fine_tuned_model(finetuned, tone_jsonl, tmp_path, monkeypatch):
    """`slmops optimize --model <finetune's model output>` end to end on the tiny model, prompts rendered as the
    fixture's fine-tune saw them and the same data and split: every step done, the ONNX build scored on the held-out
    rows against PyTorch, the model and its ONNX build registered with the gate's checks."""
    from tests.fixtures.prep import TONE_TEMPLATE

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = slmops("optimize", "--model", finetuned["model"], "--data", tone_jsonl, "--precision", "int8",
                    "--run-dir", "runs/opt", "--set", "format=template", "--set", f"template={TONE_TEMPLATE}",
                    "--set", "system_prompt=", "--set", "model_name=opt-tiny", "--set", "min_accuracy=0.5",
                    "--set", "max_optimized_drop=0.2")
    assert result.exit_code == 0, result.output[-4000:]
    run = tmp_path / "runs" / "opt"
    assert set(json.loads((run / "run.json").read_text())["steps"].values()) == {"done"}
    report = json.loads((run / "optimize" / "outputs" / "report" / "optimize_report.json").read_text())
    assert report["precision"] == "int8" and report["split"] == "test" and report["n"] == 60
    metrics = json.loads((run / "evaluate" / "outputs" / "metrics" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n"] == 60 and metrics["finetuned"]["accuracy"] >= 0.5
    registration = json.loads((run / "register" / "outputs" / "registration" / "registration.json").read_text())
    assert (registration["name"], registration["onnx"]["name"]) == ("opt-tiny", "opt-tiny-onnx")
    assert {c["name"] for c in registration["gate"]["checks"]} == {"min_accuracy", "max_optimized_drop"}
