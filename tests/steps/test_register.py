"""The register step: quality gate first, then both models registered with lineage tags and the alias.

Inputs are small hand-written reports and folders (register only reads them and copies the folders), so
every gate case is explicit; tests/steps/test_contracts.py runs it on the real pipeline outputs.
"""

from __future__ import annotations

import json

import pytest

import slmops
from slmops import registry
from slmops.errors import GateFailed, UserError, run_main
from slmops.steps import register

SHA = "ab" * 32


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite tracking + registry store and an experiment whose artifacts stay in the temp folder."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    experiment_id = registry.client(uri).create_experiment("register-tests", artifact_location=str(root / "art"))
    return uri, experiment_id


@pytest.fixture
def env(store, monkeypatch):
    uri, experiment_id = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    monkeypatch.setenv("AZUREML_ROOT_RUN_ID", "pipeline-run-42")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    for name in ("SLMOPS_GIT_COMMIT", "SLMOPS_GIT_DIRTY", "SLMOPS_COMPONENTS", "SLMOPS_INPUT_RUNS"):
        monkeypatch.delenv(name, raising=False)  # set only by the tests that pass a pipeline run's lineage
    return uri


def write_inputs(root, *, tuned=0.9, base=0.2, prompt=0.6, drop=0.02, split="test", optimize_split="test"):
    """Folders as finetune/evaluate/prep/optimize write them (`prompt`: the base model's k-shot accuracy, `split`:
    the split evaluate scored); returns {flag: path}."""
    model = root / "model"
    (model / "model").mkdir(parents=True)
    (model / "components" / "tokenizer").mkdir(parents=True)
    (model / "MLmodel").write_text("flavors:\n  transformers:\n    source_model_name: /models/tiny-llama\n")
    header = json.dumps({"w": {"dtype": "U8", "shape": [2048], "data_offsets": [0, 2048]}}).encode()
    (model / "model" / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header
                                                        + bytes(range(256)) * 8)
    (model / "components" / "tokenizer" / "tokenizer.json").write_text('{"vocab": {}}')
    onnx = root / "onnx_model"
    onnx.mkdir()
    (onnx / "model.onnx").write_bytes(b"\x08\x07onnx" * 100)
    (onnx / "genai_config.json").write_text('{"model": {}}')
    metrics, data, report = root / "metrics", root / "data", root / "report"
    for d in (metrics, data, report):
        d.mkdir()
    base_metrics = {"accuracy": base, "macro_f1": base / 2, "confusion_matrix": [[1, 0], [0, 1]], "n": 60}
    tuned_metrics = {"accuracy": tuned, "macro_f1": tuned - 0.01, "labels": ["a", "b"], "n": 60}
    (metrics / "metrics.json").write_text(json.dumps({
        "task": "classification", "split": split, "n": 60, "k_shot": 3,
        "base": base_metrics, "finetuned": tuned_metrics, "delta": {"accuracy": tuned - base},
        "variants": {"base_zero_shot": base_metrics, "base_k_shot": {"accuracy": prompt, "n": 60},
                     "finetuned": tuned_metrics},
        "verdict": {"gain": tuned - max(base, prompt), "text": "Fine-tuning wins."},
        "overfitting": {"warning": False, "detail": "ok"}}))
    (data / "data_report.json").write_text(json.dumps({"sha256": SHA, "rows": {"train": 540}}))
    (report / "optimize_report.json").write_text(json.dumps({
        "precision": "int4", "execution_provider": "cpu", "speedup": 18.5, "accuracy_drop": drop,
        "split": optimize_split, "n": 60,
        "onnx": {"accuracy": tuned - drop, "tokens_per_s": 4800.0, "size_mb": 3.1},
        "pytorch": {"accuracy": tuned, "tokens_per_s": 260.0}}))
    return {"model": model, "onnx_model": onnx, "eval_metrics": metrics, "train_data": data,
            "optimize_report": report}


def argv(paths, out, name, **extra):
    args = [f"--{k}={v}" for k, v in paths.items()] + [f"--model_name={name}", f"--registration={out}"]
    return args + [f"--{k}={v}" for k, v in extra.items()]


GATE = {"min_accuracy": 0.5, "min_gain": 0.1, "min_gain_over_prompt": 0.2, "max_optimized_drop": 0.05}


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_passing_gate_registers_both_models_with_lineage_and_alias(env, tmp_path, capsys):
    paths = write_inputs(tmp_path / "in")
    out = tmp_path / "registration"
    result = register.main(argv(paths, out, "tone-pass", **GATE))

    assert json.loads((out / "registration.json").read_text()) == json.loads(json.dumps(result))
    assert (result["name"], result["version"], result["alias"]) == ("tone-pass", "1", "candidate")
    assert result["onnx"] == {"name": "tone-pass-onnx", "version": "1"}
    assert result["gate"]["passed"] and [c["name"] for c in result["gate"]["checks"]] == list(GATE)
    assert result["lineage"]["eval"]["finetuned.accuracy"] == 0.9 and result["lineage"]["dataset_sha256"] == SHA
    assert result["lineage"]["optimize"]["onnx.tokens_per_s"] == 4800.0
    printed = capsys.readouterr().out
    assert "tone-pass version 1 @candidate; ONNX: tone-pass-onnx version 1" in printed
    # progress (not a terminal): one plain line per stage, no \r
    assert f"register stage 1/4: quality gate ({len(GATE)} checks)" in printed and "\r" not in printed
    assert "register stage 3/4 at " in printed and ": register tone-pass-onnx" in printed

    for name, folder in (("tone-pass", paths["model"]), ("tone-pass-onnx", paths["onnx_model"])):
        mv = registry.get_version(env, registry.ModelRef(name, alias="candidate"))
        assert str(mv.version) == "1"
        tags = mv.tags
        assert tags["gate"] == "passed"
        assert [c["passed"] for c in json.loads(tags["gate.checks"])] == [True, True, True, True]
        assert tags["lineage.dataset_sha256"] == SHA
        assert tags["lineage.base_model"] == "/models/tiny-llama"  # from the MLmodel, no --base_model given
        assert tags["lineage.code_version"].startswith(slmops.__version__)
        assert tags["lineage.pipeline_run_id"] == "pipeline-run-42"
        assert tags["lineage.step_run_id"] == mv.run_id
        assert float(tags["eval.finetuned.accuracy"]) == 0.9
        assert float(tags["eval.base.accuracy"]) == 0.2
        assert float(tags["eval.variants.base_k_shot.accuracy"]) == 0.6 and tags["eval.split"] == "test"
        assert "eval.base.confusion_matrix" not in tags  # lists stay in metrics.json
        assert float(tags["optimize.accuracy_drop"]) == 0.02
        assert tags["optimize.precision"] == "int4"
        # The registered files are the step's inputs, byte for byte.
        got = registry.resolve(f"models:/{name}@candidate", tracking_uri=env, cache_dir=tmp_path / "cache")
        assert _files(got) == _files(folder)
    assert registry.version_tags(env, "tone-pass", "1")["onnx_model"] == "tone-pass-onnx/1"
    assert registry.version_tags(env, "tone-pass-onnx", "1")["finetuned_model"] == "tone-pass/1"
    registry.require_gate_passed(env, "tone-pass", "1")


def test_second_registration_moves_the_alias_and_base_model_id_wins(env, tmp_path):
    paths = write_inputs(tmp_path / "in")
    del paths["onnx_model"]
    for i in (1, 2):
        result = register.main(argv(paths, tmp_path / f"reg{i}", "tone-twice", alias="staging",
                                    base_model_id="microsoft/Phi-3.5-mini-instruct"))
        assert result["version"] == str(i) and result["onnx"] is None and result["gate"]["checks"] == []
    assert [(v["version"], v["aliases"]) for v in registry.list_versions(env, "tone-twice")] == \
        [("1", []), ("2", ["staging"])]
    assert registry.version_tags(env, "tone-twice", "2")["lineage.base_model"] == "microsoft/Phi-3.5-mini-instruct"
    assert registry.list_versions(env, "tone-twice-onnx") == []


def test_runner_snapshot_takes_the_commit_from_the_pipeline_run(env, store, tmp_path, monkeypatch):
    """Run from a code snapshot (no .git) as a pipeline's child run: the commit comes from the pipeline run's
    mlflow.source.git.commit tag, which Azure ML sets for jobs submitted from a git checkout."""
    import subprocess

    c = registry.client(env)
    parent = c.create_run(store[1], tags={register.GIT_COMMIT_TAG: "0123456789abcdef" * 2 + "01234567"})
    child = c.create_run(store[1], tags={"mlflow.parentRunId": parent.info.run_id})
    monkeypatch.setenv("MLFLOW_RUN_ID", child.info.run_id)
    monkeypatch.setenv("AZUREML_ROOT_RUN_ID", parent.info.run_id)
    monkeypatch.setattr(register.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 128, "", "fatal: not a git repository"))
    result = register.main(argv(write_inputs(tmp_path / "in"), tmp_path / "reg", "tone-snapshot"))
    tags = registry.version_tags(env, "tone-snapshot", result["version"])
    assert tags["lineage.git_commit"] == "0123456789abcdef" * 2 + "01234567"
    assert tags["lineage.code_version"] == f"{slmops.__version__}+g0123456789ab"
    assert tags["lineage.pipeline_run_id"] == parent.info.run_id
    assert tags["lineage.step_run_id"] == child.info.run_id == result["lineage"]["step_run_id"]


@pytest.mark.parametrize("metrics, gate, failed", [
    (dict(tuned=0.45), {"min_accuracy": 0.5}, ["fine-tuned accuracy 0.4500 < min_accuracy 0.5"]),
    (dict(tuned=0.6, base=0.55), {"min_gain": 0.1},
     ["gain over base +0.0500 (fine-tuned 0.6000, base 0.5500) < min_gain 0.1"]),
    (dict(drop=0.08), {"max_optimized_drop": 0.05},
     ["accuracy drop after optimization 0.0800 (pytorch 0.9000, onnx 0.8200, int4) > max_optimized_drop 0.05 "
      "(optimize_report: test, n=60)"]),
    # the k-shot prompt is the best baseline: the fine-tune beats base zero-shot by far, the prompt by little
    (dict(tuned=0.9, base=0.2, prompt=0.8), {"min_gain": 0.1, "min_gain_over_prompt": 0.15},
     ["gain over the best prompt baseline +0.1000 (fine-tuned 0.9000, base_k_shot 0.8000) < min_gain_over_prompt "
      "0.15 (test split, n=60)"]),
    # a prompt that beats the fine-tune: a negative gain fails the default threshold 0
    (dict(tuned=0.7, base=0.75, prompt=0.3), {"min_gain_over_prompt": 0.0},
     ["gain over the best prompt baseline -0.0500 (fine-tuned 0.7000, base_zero_shot 0.7500) < "
      "min_gain_over_prompt 0.0 (test split, n=60)"]),
    (dict(tuned=0.3, base=0.3, prompt=0.3, drop=0.2), GATE,
     ["fine-tuned accuracy 0.3000 < min_accuracy 0.5 (test split, n=60)",
      "gain over base +0.0000 (fine-tuned 0.3000, base 0.3000) < min_gain 0.1 (test split, n=60)",
      "gain over the best prompt baseline +0.0000 (fine-tuned 0.3000, base_zero_shot 0.3000) < "
      "min_gain_over_prompt 0.2 (test split, n=60)",
      "accuracy drop after optimization 0.2000 (pytorch 0.3000, onnx 0.1000, int4) > max_optimized_drop 0.05"]),
])
def test_failing_gate_exits_3_names_every_failed_check_and_registers_nothing(env, tmp_path, capsys, metrics, gate,
                                                                           failed):
    name = f"tone-fail-{len(failed)}-{'-'.join(sorted(gate))}"
    paths = write_inputs(tmp_path / "in", **metrics)
    out = tmp_path / "registration"
    with pytest.raises(SystemExit) as exc:
        run_main(register.main, argv(paths, out, name, **gate))
    assert exc.value.code == 3
    err = capsys.readouterr().err
    assert f"quality gate failed ({len(failed)} of {len(gate)} checks); nothing registered" in err
    for line in failed:
        assert line in err
    assert not out.exists()
    assert registry.list_versions(env, name) == [] and registry.list_versions(env, f"{name}-onnx") == []


def test_gain_at_exactly_the_threshold_passes(env, tmp_path):
    """0.7 - 0.6 is 0.09999... in floating point; the gate compares with a tolerance."""
    paths = write_inputs(tmp_path / "in", tuned=0.7, base=0.6)
    result = register.main(argv(paths, tmp_path / "reg", "tone-edge", min_gain=0.1, min_accuracy=0.7))
    assert [c["passed"] for c in result["gate"]["checks"]] == [True, True]


def test_gain_over_prompt_passes_and_records_split_and_rows(env, tmp_path):
    """The best prompt baseline is the k-shot one (0.6 > zero-shot 0.2): the gain is 0.9 - 0.6."""
    paths = write_inputs(tmp_path / "in", tuned=0.9, base=0.2, prompt=0.6)
    result = register.main(argv(paths, tmp_path / "reg", "tone-prompt", min_gain_over_prompt=0.3))
    [check] = result["gate"]["checks"]
    assert check["name"] == "min_gain_over_prompt" and check["passed"]
    assert check["value"] == pytest.approx(0.3)
    assert check["detail"] == ("gain over the best prompt baseline +0.3000 (fine-tuned 0.9000, base_k_shot 0.6000) "
                               ">= min_gain_over_prompt 0.3 (test split, n=60)")
    assert json.loads(registry.version_tags(env, "tone-prompt", "1")["gate.checks"]) == [check]


@pytest.mark.parametrize("change, extra, problems", [
    ("no_mlmodel", {}, ["is not an MLflow model folder"]),
    ("no_onnx_file", {}, ["is not a folder with an .onnx file"]),
    ("no_report", {"max_optimized_drop": 0.05}, ["--max_optimized_drop needs --optimize_report"]),
    ("no_sha", {}, ["data_report.json has no sha256"]),
    ("bad_json", {}, ["metrics.json is not valid JSON"]),
    ("list_json", {}, ["metrics.json holds a JSON list, not the object"]),
    ("no_base", {"min_gain": 0.0}, ["--min_gain needs base.accuracy"]),
    ("no_variants", {"min_gain_over_prompt": 0.0}, ["--min_gain_over_prompt needs finetuned.accuracy and a prompt "
                                                    "baseline's accuracy"]),
    ("validation_split", {"min_accuracy": 0.5, "min_gain_over_prompt": 0.0},
     ["--min_accuracy, --min_gain_over_prompt: metrics.json was scored on the 'validation' split; the gate reads "
      "test-split figures only"]),
    ("no_split", {"min_gain": 0.0}, ["--min_gain: metrics.json names no split"]),
    ("optimize_validation", {"max_optimized_drop": 0.05},
     ["--max_optimized_drop: optimize_report.json was scored on the 'validation' split"]),
    (None, {"min_accuracy": 1.5, "alias": "latest", "model_name": "a/b"},
     ["--min_accuracy: 1.5 is above the maximum 1.0", "--alias 'latest'", "--model_name 'a/b'"]),
    ("no_uri", {}, ["MLFLOW_TRACKING_URI is not set"]),
])
def test_bad_inputs_exit_2_with_every_problem_and_write_nothing(env, tmp_path, monkeypatch, capsys, change, extra,
                                                               problems):
    paths = write_inputs(tmp_path / "in")
    if change == "no_mlmodel":
        (paths["model"] / "MLmodel").unlink()
    elif change == "no_onnx_file":
        (paths["onnx_model"] / "model.onnx").unlink()
    elif change == "no_report":
        del paths["optimize_report"]
    elif change == "no_sha":
        (paths["train_data"] / "data_report.json").write_text("{}")
    elif change == "bad_json":
        (paths["eval_metrics"] / "metrics.json").write_text("{not json")
    elif change == "list_json":
        (paths["eval_metrics"] / "metrics.json").write_text("[0.9]")
    elif change == "no_base":
        (paths["eval_metrics"] / "metrics.json").write_text(json.dumps({"task": "classification", "split": "test",
                                                                       "finetuned": {"accuracy": 0.9}}))
    elif change == "no_variants":
        (paths["eval_metrics"] / "metrics.json").write_text(json.dumps({"task": "classification", "split": "test",
                                                                       "base": {"accuracy": 0.2},
                                                                       "finetuned": {"accuracy": 0.9}}))
    elif change == "validation_split":
        paths = write_inputs(tmp_path / "in2", split="validation")
    elif change == "no_split":
        paths = write_inputs(tmp_path / "in2", split=None)
    elif change == "optimize_validation":
        paths = write_inputs(tmp_path / "in2", optimize_split="validation")
    elif change == "no_uri":
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
    out = tmp_path / "registration"
    with pytest.raises(SystemExit) as exc:
        run_main(register.main, argv(paths, out, extra.pop("model_name", "tone-bad"), **extra))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"register: {len(problems)} problem(s)" in err
    for p in problems:
        assert p in err
    assert not out.exists()
    assert registry.list_versions(env, "tone-bad") == []


def test_busy_registry_is_retried(env, tmp_path, monkeypatch):
    """The sqlite store gives up on a version-number race after 3 tries; the step retries with backoff."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    real, calls, slept = MlflowClient.create_model_version, [], []

    def busy_twice(client, name, *args, **kwargs):
        calls.append(name)
        if len(calls) <= 2:
            raise MlflowException(f"Model Version creation error (name={name}). Giving up after 3 attempts.")
        return real(client, name, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "create_model_version", busy_twice)
    monkeypatch.setattr(registry, "sleep", slept.append)
    result = register.main(argv(write_inputs(tmp_path / "in"), tmp_path / "reg", "tone-busy"))
    assert (result["version"], result["onnx"]["version"]) == ("1", "1")
    assert calls == ["tone-busy"] * 3 + ["tone-busy-onnx"] and slept == [0.5, 1.0]


def test_registry_busy_past_retries_undoes_the_first_model(env, tmp_path, monkeypatch):
    """The fine-tuned version 2 is created, the ONNX one never gets through: the step fails with the fix,
    deletes version 2 again and leaves version 1 as the candidate."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    real = MlflowClient.create_model_version

    def onnx_always_busy(client, name, *args, **kwargs):
        if name.endswith("-onnx"):
            raise MlflowException(f"Model Version creation error (name={name}). Giving up after 3 attempts.")
        return real(client, name, *args, **kwargs)

    paths = write_inputs(tmp_path / "in")
    register.main(argv(paths, tmp_path / "first", "tone-undo", **GATE))
    monkeypatch.setattr(MlflowClient, "create_model_version", onnx_always_busy)
    monkeypatch.setattr(registry, "sleep", lambda s: None)
    out = tmp_path / "reg"
    with pytest.raises(UserError, match="registry stayed busy through 5 attempts.*MLflow server"):
        register.main(argv(paths, out, "tone-undo", **GATE))
    for name in ("tone-undo", "tone-undo-onnx"):  # the first registration is untouched, alias included
        assert [(v["version"], v["aliases"]) for v in registry.list_versions(env, name)] == [("1", ["candidate"])]
    assert not out.exists()


class Boom(Exception):
    pass


@pytest.mark.parametrize("fails", ["onnx_alias", "registration_json"])
def test_failure_after_an_alias_moved_restores_the_previous_candidate(fails, env, tmp_path, monkeypatch):
    """A failure after the new versions exist (setting the ONNX alias, writing registration.json) deletes them
    and points the alias back at the previous candidate of both models."""
    paths = write_inputs(tmp_path / "in")
    name = f"tone-restore-{fails.replace('_', '-')}"
    register.main(argv(paths, tmp_path / "first", name, **GATE))
    if fails == "onnx_alias":
        real = registry.set_alias

        def set_alias(uri, model_name, alias, version):
            if model_name.endswith("-onnx") and version == "2":
                raise Boom("registry went away")
            return real(uri, model_name, alias, version)

        monkeypatch.setattr(registry, "set_alias", set_alias)
    else:
        monkeypatch.setattr(register, "write_json", lambda *a, **k: (_ for _ in ()).throw(Boom("disk full")))
    out = tmp_path / "reg"
    with pytest.raises(Boom):
        register.main(argv(paths, out, name, **GATE))
    for model_name in (name, f"{name}-onnx"):
        assert [(v["version"], v["aliases"]) for v in registry.list_versions(env, model_name)] == [("1", ["candidate"])]
    assert not out.exists()


def test_gate_failure_is_a_gate_error_in_process(env, tmp_path):
    with pytest.raises(GateFailed) as exc:
        register.main(argv(write_inputs(tmp_path / "in", tuned=0.1), tmp_path / "r", "tone-x", min_accuracy=0.2))
    assert exc.value.exit_code == 3
    assert exc.value.problems == ["fine-tuned accuracy 0.1000 < min_accuracy 0.2 (test split, n=60)"]


# ---------------------------------------------------------------------------------------------- generation gate

def write_generation_metrics(folder, *, rouge=0.45, base_rouge=0.1, prompt_rouge=0.3, bleu=21.0, ppl=8.0):
    """evaluate's metrics.json for a generation task (ROUGE-L 0-1, BLEU 0-100, perplexity); `prompt_rouge`: the base
    model's k-shot ROUGE-L."""
    def variant(r, b, p):
        return {"rouge_l": r, "rouge_l_ci": [r - 0.05, r + 0.05], "bleu": b, "perplexity": p, "n": 40}
    base, tuned = variant(base_rouge, 3.0, 60.0), variant(rouge, bleu, ppl)
    (folder / "metrics.json").write_text(json.dumps({
        "task": "generation", "split": "test", "n": 40, "k_shot": 3, "base": base, "finetuned": tuned,
        "delta": {"rouge_l": rouge - base_rouge}, "verdict": {"metric": "rouge_l", "text": "Fine-tuning wins."},
        "variants": {"base_zero_shot": base, "base_k_shot": variant(prompt_rouge, 9.0, 30.0), "finetuned": tuned}}))


GEN_GATE = {"min_rouge_l": 0.4, "min_bleu": 20.0, "max_perplexity": 10.0, "min_rouge_l_gain": 0.3,
            "min_rouge_l_gain_over_prompt": 0.1}


@pytest.mark.parametrize("figures, gate, failed", [
    ({}, GEN_GATE, []),
    (dict(rouge=0.35), {"min_rouge_l": 0.4}, ["fine-tuned ROUGE-L 0.3500 < min_rouge_l 0.4 (test split, n=40)"]),
    (dict(bleu=12.5), {"min_bleu": 20.0}, ["fine-tuned BLEU 12.5000 < min_bleu 20.0 (test split, n=40)"]),
    (dict(ppl=14.0), {"max_perplexity": 10.0}, ["fine-tuned perplexity 14.0000 > max_perplexity 10.0"]),
    (dict(rouge=0.35, base_rouge=0.3), {"min_rouge_l_gain": 0.1},
     ["ROUGE-L gain over base +0.0500 (fine-tuned 0.3500, base 0.3000) < min_rouge_l_gain 0.1"]),
    # the k-shot prompt is the best baseline: far above base zero-shot, close to the fine-tune
    (dict(rouge=0.45, base_rouge=0.1, prompt_rouge=0.42),
     {"min_rouge_l_gain": 0.3, "min_rouge_l_gain_over_prompt": 0.1},
     ["ROUGE-L gain over the best prompt baseline +0.0300 (fine-tuned 0.4500, base_k_shot 0.4200) < "
      "min_rouge_l_gain_over_prompt 0.1 (test split, n=40)"]),
    (dict(rouge=0.1, bleu=1.0, ppl=90.0, base_rouge=0.1, prompt_rouge=0.2), GEN_GATE,
     ["fine-tuned ROUGE-L 0.1000 < min_rouge_l 0.4", "fine-tuned BLEU 1.0000 < min_bleu 20.0",
      "fine-tuned perplexity 90.0000 > max_perplexity 10.0", "ROUGE-L gain over base +0.0000",
      "ROUGE-L gain over the best prompt baseline -0.1000 (fine-tuned 0.1000, base_k_shot 0.2000)"]),
])
def test_generation_gate_passes_or_exits_3_naming_every_failed_check(env, tmp_path, capsys, figures, gate, failed):
    name = f"gen-{len(failed)}-{'-'.join(sorted(gate))}".replace("_", "")
    paths = write_inputs(tmp_path / "in")
    del paths["optimize_report"]
    write_generation_metrics(paths["eval_metrics"], **figures)
    out = tmp_path / "registration"
    if not failed:
        result = register.main(argv(paths, out, name, **gate))
        assert [c["name"] for c in result["gate"]["checks"]] == list(GEN_GATE)
        assert all(c["passed"] for c in result["gate"]["checks"])
        tags = registry.version_tags(env, name, result["version"])
        assert tags["gate"] == "passed" and [c["name"] for c in json.loads(tags["gate.checks"])] == list(GEN_GATE)
        assert float(tags["eval.finetuned.rouge_l"]) == 0.45 and float(tags["eval.finetuned.perplexity"]) == 8.0
        return
    with pytest.raises(SystemExit) as exc:
        run_main(register.main, argv(paths, out, name, **gate))
    assert exc.value.code == 3
    err = capsys.readouterr().err
    assert f"quality gate failed ({len(failed)} of {len(gate)} checks); nothing registered" in err
    for line in failed:
        assert line in err
    assert not out.exists() and registry.list_versions(env, name) == []


@pytest.mark.parametrize("task, gate, problems", [
    ("classification", {"min_rouge_l": 0.3},
     ["--min_rouge_l needs finetuned.rouge_l in metrics.json, which has none (task 'classification': ROUGE-L is a "
      "generation metric); drop --min_rouge_l or evaluate a generation task"]),
    ("classification", {"min_bleu": 10, "max_perplexity": 20},
     ["--min_bleu needs finetuned.bleu", "--max_perplexity needs finetuned.perplexity"]),
    ("classification", {"min_rouge_l_gain_over_prompt": 0.0},
     ["--min_rouge_l_gain_over_prompt needs finetuned.rouge_l and variants.base_zero_shot or variants.base_k_shot "
      "with rouge_l"]),
    ("generation", {"min_accuracy": 0.5},
     ["--min_accuracy needs finetuned.accuracy in metrics.json, which has none (task 'generation')"]),
    ("generation", {"min_rouge_l": 1.5, "min_bleu": 101, "max_perplexity": 0.5, "min_rouge_l_gain": -2},
     ["--min_rouge_l: 1.5 is above the maximum 1.0", "--min_bleu: 101", "--max_perplexity: 0.5",
      "--min_rouge_l_gain: -2"]),
])
def test_generation_threshold_without_its_metric_or_out_of_range_exits_2(env, tmp_path, capsys, task, gate, problems):
    paths = write_inputs(tmp_path / "in")
    if task == "generation":
        write_generation_metrics(paths["eval_metrics"])
    out = tmp_path / "registration"
    with pytest.raises(SystemExit) as exc:
        run_main(register.main, argv(paths, out, "gen-bad", **gate))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"register: {len(problems)} problem(s)" in err
    for p in problems:
        assert p in err
    assert not out.exists() and registry.list_versions(env, "gen-bad") == []


# ---------------------------------------------------------------------------------------------- lineage

def test_lineage_from_the_pipeline_run_commit_dirty_components_and_training_params(env, store, tmp_path,
                                                                                    monkeypatch):
    """What the runner (or submit) sets in the step's environment lands in the version's tags; the hyper-parameters
    are those finetune logged to the run that produced --model."""
    c = registry.client(env)
    finetune = c.create_run(store[1])
    for key, value in {"learning_rate": "0.0002", "lora_r": "8", "method": "lora", "weight_decay": "0.01"}.items():
        c.log_param(finetune.info.run_id, key, value)
    commit = "fedcba9876543210" * 2 + "fedcba98"
    monkeypatch.setenv("SLMOPS_GIT_COMMIT", commit)
    monkeypatch.setenv("SLMOPS_GIT_DIRTY", "true")
    monkeypatch.setenv("SLMOPS_COMPONENTS", json.dumps({"finetune": "slmops_finetune:0.1.0",
                                                        "register": "slmops_register:0.1.0"}))
    monkeypatch.setenv("SLMOPS_INPUT_RUNS", json.dumps({"model": finetune.info.run_id, "eval_metrics": "x"}))
    result = register.main(argv(write_inputs(tmp_path / "in"), tmp_path / "reg", "tone-lineage"))
    for name in ("tone-lineage", "tone-lineage-onnx"):
        tags = registry.version_tags(env, name, "1")
        assert tags["lineage.git_commit"] == commit and tags["lineage.git_dirty"] == "True"
        assert tags["lineage.code_version"] == f"{slmops.__version__}+gfedcba987654"
        assert tags["lineage.component.finetune"] == "slmops_finetune:0.1.0"
        assert tags["lineage.component.register"] == "slmops_register:0.1.0"
        assert tags["lineage.train_run_id"] == finetune.info.run_id
        assert (tags["train.learning_rate"], tags["train.lora_r"], tags["train.weight_decay"]) == \
            ("0.0002", "8", "0.01")
        assert tags["lineage.pipeline_run_id"] == "pipeline-run-42"
    assert result["lineage"]["train"]["method"] == "lora" and result["lineage"]["git_dirty"] is True


def test_lineage_env_names_agree_with_the_runner():
    from slmops import registration
    from slmops.pipeline import lineage

    assert (registration.ENV_GIT_COMMIT, registration.ENV_GIT_DIRTY, registration.ENV_COMPONENTS,
            registration.ENV_INPUT_RUNS) == (lineage.GIT_COMMIT, lineage.GIT_DIRTY, lineage.COMPONENTS,
                                             lineage.INPUT_RUNS)


def test_without_input_runs_the_one_finetune_run_of_the_pipeline_gives_the_hyper_parameters(env, store, tmp_path,
                                                                                            monkeypatch):
    """On Azure ML no SLMOPS_INPUT_RUNS is set: the run under the pipeline run that logged finetune's parameters is
    found; with two such runs (two finetune jobs) neither is guessed."""
    c = registry.client(env)
    parent = c.create_run(store[1])
    monkeypatch.setenv("AZUREML_ROOT_RUN_ID", parent.info.run_id)
    c.create_run(store[1], tags={"mlflow.parentRunId": parent.info.run_id})          # prep: no such params
    first = c.create_run(store[1], tags={"mlflow.parentRunId": parent.info.run_id})
    for key, value in {"learning_rate": "0.001", "method": "qlora", "lora_r": "4"}.items():
        c.log_param(first.info.run_id, key, value)
    result = register.main(argv(write_inputs(tmp_path / "in"), tmp_path / "reg1", "tone-azure-train"))
    tags = registry.version_tags(env, "tone-azure-train", result["version"])
    assert tags["lineage.train_run_id"] == first.info.run_id
    assert (tags["train.method"], tags["train.lora_r"]) == ("qlora", "4")

    second = c.create_run(store[1], tags={"mlflow.parentRunId": parent.info.run_id})
    for key, value in {"learning_rate": "0.002", "method": "lora"}.items():
        c.log_param(second.info.run_id, key, value)
    result = register.main(argv(write_inputs(tmp_path / "in2"), tmp_path / "reg2", "tone-azure-train"))
    tags = registry.version_tags(env, "tone-azure-train", result["version"])
    assert "lineage.train_run_id" not in tags and not any(k.startswith("train.") for k in tags)
    assert result["lineage"]["train"] == {} and result["lineage"]["train_run_id"] is None
