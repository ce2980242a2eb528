"""`slmops finetune` (slmops.verbs): flags become pipeline inputs, --dry-run prints them, --save writes them and
--inputs reads them back, bad flags are one clear error (exit 2), and the inputs reach the same code as `slmops run`
(or `slmops submit` with --azure) — checked on the real commands, and (slow) by a real run on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner

from slmops.cli import main

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipelines" / "finetune.yaml"
pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.RemovedInMarshmallow4Warning")


@pytest.fixture
def project(tmp_path, monkeypatch, tiny_model):
    """A working folder with rows.jsonl and a link to the tiny model; the current folder while the test runs."""
    from slmops.tiny import tone_dataset, write_jsonl

    write_jsonl(tone_dataset(300), tmp_path / "rows.jsonl")
    (tmp_path / "model").symlink_to(tiny_model, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def slmops(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_help_lists_every_flag():
    result = slmops("finetune", "--help")
    assert result.exit_code == 0
    for flag in ("--model", "--data", "--template", "--method", "--set", "--inputs", "--sweep", "--pipeline",
                 "--azure", "--compute", "--run-dir", "--dry-run", "--save"):
        assert flag in result.output, flag
    assert "finetune" in slmops("--help").output


def test_dry_run_prints_every_resolved_input_and_runs_nothing(project):
    result = slmops("finetune", "--model", "model", "--data", "rows.jsonl", "--method", "dora",
                    "--template", "Say: {phrase}", "--set", "max_steps=20", "--set", "learning_rate=1e-3", "--dry-run")
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    declared = yaml.safe_load(PIPELINE.read_text())["inputs"]
    assert printed["pipeline"] == str(PIPELINE)
    inputs = printed["inputs"]
    assert set(inputs) == set(declared) - {"loss"}  # every input but the unset ones (base_model is set here)
    assert inputs["base_model"] == str((project / "model").resolve()) and inputs["data"] == str(project / "rows.jsonl")
    assert (inputs["method"], inputs["template"], inputs["max_steps"], inputs["learning_rate"]) == \
        ("dora", "Say: {phrase}", 20, 0.001)
    assert inputs["lr_scheduler"] == declared["lr_scheduler"] and inputs["base_model_id"] == ""  # YAML defaults
    assert "# would run: slmops run " in result.stderr and "--set method=dora" in result.stderr
    assert not (project / "runs").exists()


def test_a_hub_id_is_base_model_id_and_sweep_picks_the_sweep_template(project):
    result = slmops("finetune", "--model", "HuggingFaceTB/SmolLM2-135M-Instruct", "--data", "rows.jsonl",
                    "--sweep", "--dry-run")
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    assert printed["pipeline"] == str(ROOT / "pipelines" / "finetune_sweep.yaml")
    assert printed["inputs"]["base_model_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "base_model" not in printed["inputs"] and "learning_rate" not in printed["inputs"]  # swept, not an input


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_save_writes_the_inputs_and_inputs_reads_them_back(project, suffix):
    saved = project / f"job{suffix}"
    first = slmops("finetune", "--model", "model", "--data", "rows.jsonl", "--set", "max_steps=20", "--save", saved,
                   "--dry-run")
    assert first.exit_code == 0, first.output
    text = saved.read_text()
    doc = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    assert doc == yaml.safe_load(first.stdout)                       # the file holds what --dry-run printed
    again = slmops("finetune", "--inputs", saved, "--set", "max_steps=5", "--dry-run")
    assert again.exit_code == 0, again.output
    reread = yaml.safe_load(again.stdout)
    assert reread["inputs"] == {**doc["inputs"], "max_steps": 5}     # the file's values, overridden by the flags


BAD = [
    # arguments, every text expected in the error
    (["--model", "nonsense", "--data", "rows.jsonl"],
     ["--model 'nonsense' is neither an existing folder nor a hub id"]),
    (["--data", "rows.jsonl"], ["no model: pass --model"]),
    (["--model", "model"], ["no data: pass --data"]),
    (["--model", "model", "--data", "missing.jsonl"], ["--data: ", "missing.jsonl does not exist"]),
    (["--model", "model", "--data", "rows.jsonl", "--method", "lora", "--set", "method=dora"],
     ["--method 'lora' and --set method='dora' both set the input method"]),
    (["--model", "model", "--data", "rows.jsonl", "--set", "max_stepz=3"], ["the pipeline has no input 'max_stepz'"]),
    (["--model", "model", "--data", "rows.jsonl", "--set", "max_steps=many"], ["'many' is not a valid number"]),
    (["--model", "model", "--data", "rows.jsonl", "--save", "job.txt"], ["--save job.txt: unknown file type '.txt'"]),
    (["--model", "model", "--data", "rows.jsonl", "--inputs", "none.yaml"], ["--inputs none.yaml: no such file"]),
    (["--model", "nonsense", "--set", "nope=1", "--save", "x.csv"],   # every problem at once
     ["--model 'nonsense'", "no data", "no input 'nope'", "--save x.csv"]),
    (["--model", "model", "--data", "rows.jsonl", "--method", "adapterx", "--dry-run"], ["adapterx"]),  # pipeline check
    (["--model", "model", "--data", "rows.jsonl", "--compute", "gpu"], ["--compute applies to --azure only"]),
]


@pytest.mark.parametrize("args, messages", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_flags_are_one_clear_error_exit_2_and_nothing_runs(args, messages, project):
    result = slmops("finetune", *args)
    assert result.exit_code == 2, result.output
    for message in messages:
        assert message in result.output, result.output
    assert not (project / "runs").exists()


def test_a_malformed_inputs_file_is_refused(project):
    (project / "bad.yaml").write_text("pipeline: x\ninputs: {max_steps: [1, 2]}\nextra: 1\n")
    result = slmops("finetune", "--inputs", "bad.yaml")
    assert result.exit_code == 2
    assert "unknown key 'extra'" in result.output and "inputs.max_steps: [1, 2] is not a single value" in result.output


def test_inputs_reach_slmops_run_unchanged(project, monkeypatch):
    """Without --azure the command is `slmops run PIPELINE --set ...`: the same command object, called with the
    pipeline and the --set values (its own defaults for the rest)."""
    from slmops.runner import cli as runner_cli

    calls = []
    monkeypatch.setattr(runner_cli.run, "callback", lambda **kwargs: calls.append(kwargs))
    result = slmops("finetune", "--model", "model", "--data", "rows.jsonl", "--set", "max_steps=7", "--run-dir", "r1")
    assert result.exit_code == 0, result.output
    [kwargs] = calls
    assert kwargs["pipeline"] == PIPELINE and kwargs["run_dir"] == Path("r1")
    assert kwargs["set_"] == ("base_model=model", "data=rows.jsonl", "max_steps=7")
    assert (kwargs["max_parallel"], kwargs["env_mode"], kwargs["force_rerun"]) == (2, "auto", False)  # run's defaults


def test_azure_submits_through_slmops_submit(project, monkeypatch):
    """--azure is `slmops submit PIPELINE --set ...`: the pipeline is loaded, checked and pinned by submit's own code;
    only the workspace connection and the final create call are replaced here."""
    from slmops.azure import cli as azure_cli
    from slmops.azure import submit as submitting

    sent = []
    monkeypatch.setattr(azure_cli, "_connect", lambda *a, **k: "client")

    def fake_submit(client, job, envs, echo=print):
        sent.append((client, job, envs))
        return SimpleNamespace(name="run-1", studio_url="https://studio/run-1")

    monkeypatch.setattr(submitting, "submit", fake_submit)
    result = slmops("finetune", "--model", "HuggingFaceTB/SmolLM2-135M-Instruct", "--data", "rows.jsonl",
                    "--method", "dora", "--azure", "--compute", "finetune=a100")
    assert result.exit_code == 0, result.output
    assert "run: run-1" in result.output
    [(client, job, envs)] = sent
    assert client == "client" and {env.name for env in envs} == {"slmops-cpu", "slmops-gpu"}
    assert job.inputs["method"]._data == "dora"
    assert job.inputs["base_model_id"]._data == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert job.jobs["finetune"].compute == "a100"


@pytest.mark.slow
def test_one_command_runs_the_pipeline_on_the_tiny_model(project, monkeypatch):
    """`slmops finetune --model M --data D` end to end on the tiny model: every step done, the model registered."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    result = slmops("finetune", "--model", "model", "--data", "rows.jsonl", "--run-dir", "runs/one",
                    "--set", "max_steps=20", "--set", "eval_steps=10", "--set", "save_steps=10",
                    "--set", "learning_rate=0.002", "--set", "lr_scheduler=constant", "--set", "model_name=verb-tiny",
                    "--set", "min_accuracy=0", "--set", "min_gain=-1", "--set", "min_gain_over_prompt=-1",
                    "--set", "max_optimized_drop=1")
    assert result.exit_code == 0, result.output[-4000:]
    run = json.loads((project / "runs" / "one" / "run.json").read_text())
    assert run["status"] == "FINISHED" and set(run["steps"].values()) == {"done"}
    summary = json.loads((project / "runs" / "one" / "finetune" / "outputs" / "metrics" / "train_summary.json")
                         .read_text())
    assert summary["global_step"] == 20 and summary["base_model"] == str((project / "model").resolve())
    registration = project / "runs" / "one" / "register" / "outputs" / "registration" / "registration.json"
    assert json.loads(registration.read_text())["name"] == "verb-tiny"
