"""`slmops kaito manifest`: Kaito Workspace manifests from our pipeline's inputs, validated against Kaito's CRD schema
(sdk/slmops/maas/kaito_workspace_crd.json, copied from kaito-project/kaito) and its webhook's rules."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.maas.conftest import ROOT

BASE = ["kaito", "manifest", "--name", "tone", "--input-url", "https://example.com/data/train_chat.jsonl",
        "--output-image", "myacr.azurecr.io/tone-adapter:1", "--output-secret", "acr-push"]


def test_manifests_from_the_pipeline_validate_against_the_crd(run_cli, tmp_path):
    import jsonschema

    from slmops.maas import kaito

    out = tmp_path / "kaito.yaml"
    result = run_cli(*BASE, "--pipeline", ROOT / "pipelines" / "finetune.yaml", "--base-model-id",
                     "microsoft/Phi-3.5-mini-instruct", "--namespace", "ml", "--out", out)
    assert result.exit_code == 0, result.output
    assert "validated against Kaito's CRD kaito.sh/v1beta1" in result.output
    config, tuning, inference = list(yaml.safe_load_all(out.read_text()))
    schema = kaito.crd_schema(strict=False)  # the CRD's own schema, as the API server applies it
    for doc in (tuning, inference):
        jsonschema.validate(doc, schema)
        assert doc["apiVersion"] == "kaito.sh/v1beta1" and doc["kind"] == "Workspace"
        assert doc["metadata"]["namespace"] == "ml"
    assert tuning["tuning"] == {"preset": {"name": "phi-3.5-mini-instruct"}, "method": "lora",
                                "config": "tone-tuning-params",
                                "input": {"urls": ["https://example.com/data/train_chat.jsonl"]},
                                "output": {"image": "myacr.azurecr.io/tone-adapter:1", "imagePushSecret": "acr-push"}}
    assert tuning["resource"]["labelSelector"] == {"matchLabels": {"apps": "tone-tuning"}}
    assert inference["inference"] == {"preset": {"name": "phi-3.5-mini-instruct"}, "adapters": [
        {"source": {"name": "tone-adapter", "image": "myacr.azurecr.io/tone-adapter:1"}, "strength": "1.0"}]}
    training = yaml.safe_load(config["data"]["training_config.yaml"])["training_config"]
    # pipelines/finetune.yaml: method lora, lora_r 8, learning_rate 0.001, batch_size 8, max_steps -1
    assert training["LoraConfig"] == {"r": 8, "lora_alpha": 32, "lora_dropout": 0.05}
    assert training["TrainingArguments"]["learning_rate"] == 0.001
    assert training["TrainingArguments"]["per_device_train_batch_size"] == 8
    assert training["TrainingArguments"]["num_train_epochs"] == 1 and "QuantizationConfig" not in training
    assert config["metadata"]["name"] == tuning["tuning"]["config"]


def test_qlora_flags_win_over_the_pipeline_and_pvc_io(run_cli):
    result = run_cli("kaito", "manifest", "--name", "tone", "--preset", "phi-3-mini-4k-instruct", "--method", "qlora",
                     "--input-pvc", "tone-data", "--output-pvc", "tone-out", "--lora-r", "8", "--max-steps", "300",
                     "--pipeline", ROOT / "pipelines" / "finetune.yaml")
    assert result.exit_code == 0, result.output
    config, tuning, inference = list(yaml.safe_load_all(result.output))
    training = yaml.safe_load(config["data"]["training_config.yaml"])["training_config"]
    assert training["QuantizationConfig"]["load_in_4bit"] is True and training["LoraConfig"]["r"] == 8
    assert training["TrainingArguments"]["max_steps"] == 300 and "num_train_epochs" not in training["TrainingArguments"]
    assert tuning["tuning"]["method"] == "qlora"
    assert tuning["tuning"]["input"] == {"volumeSource": {"persistentVolumeClaim": {"claimName": "tone-data"}}}
    assert inference["inference"]["adapters"][0]["source"] == {
        "name": "tone-adapter", "volumeSource": {"persistentVolumeClaim": {"claimName": "tone-out"}}}


@pytest.mark.parametrize("args,expected", [
    (["--method", "dora"], ["tuning.method 'dora': Kaito tunes with ['lora', 'qlora']"]),
    (["--input-image", "myacr.azurecr.io/data:1"], ["tuning.input needs exactly one of urls, image, volumeSource"]),
    (["--output-pvc", "out"], ["tuning.output needs exactly one of image"]),
    (["--name", "Tone_Model"], ["metadata.name 'Tone_Model-tuning' is not a DNS-1123 subdomain"]),
    (["--adapter-strength", "2"], ["strength '2' must be a number between 0 and 1"]),
    (["--preset", "gpt-4o"], ["preset 'gpt-4o' is not a Kaito preset"]),
], ids=["method", "two_inputs", "two_outputs", "name", "strength", "preset"])
def test_invalid_manifests_exit_2_and_write_nothing(run_cli, tmp_path, args, expected):
    out = tmp_path / "kaito.yaml"
    result = run_cli(*BASE, "--base-model-id", "microsoft/Phi-4-mini-instruct", *args, "--out", out)
    assert result.exit_code == 2, result.output
    for text in expected:
        assert text in result.output
    assert not out.exists()


def test_unknown_base_model_lists_the_presets(run_cli):
    result = run_cli(*BASE, "--base-model-id", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert result.exit_code == 2
    assert "has no Kaito preset" in result.output and "microsoft/Phi-3.5-mini-instruct" in result.output
    assert "no base model" in run_cli(*BASE).output


def test_schema_catches_types_unknown_fields_and_required():
    from slmops.maas import kaito

    spec = kaito.Spec(name="tone", preset="phi-4-mini-instruct", input_urls=["https://x/train.jsonl"],
                      output_image="acr.io/a:1", output_secret="s")
    tuning = kaito.tuning_workspace(spec)
    assert kaito.validate([tuning]) == ([], [])
    broken = json.loads(json.dumps(tuning))
    broken["resource"]["count"] = "two"
    broken["tuning"]["inputs"] = broken["tuning"].pop("input")      # a typo the API server would silently drop
    del broken["resource"]["labelSelector"]
    problems, _ = kaito.validate([broken])
    text = "\n".join(problems)
    assert "resource.count: 'two' is not of type 'integer'" in text
    assert "(top level): 'labelSelector' is a required property" not in text
    assert "resource: 'labelSelector' is a required property" in text
    assert "tuning: 'input' is a required property" in text
    assert "tuning: Additional properties are not allowed ('inputs' was unexpected)" in text


def test_without_jsonschema_the_notes_say_so(monkeypatch):
    import builtins

    from slmops.maas import kaito

    real_import = builtins.__import__

    def no_jsonschema(name, *args, **kwargs):
        if name == "jsonschema":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_jsonschema)
    spec = kaito.Spec(name="tone", preset="phi-4-mini-instruct", input_urls=["https://x"], output_image="a:1",
                      output_secret="s")
    problems, notes = kaito.validate(kaito.manifests(spec))
    assert problems == [] and "NOT checked against Kaito's CRD schema" in notes[0]


def test_packaged_schema_says_where_it_came_from():
    from slmops.maas import kaito

    source = json.loads(kaito.CRD.read_text())["_source"]
    assert source["repository"] == "https://github.com/kaito-project/kaito"
    assert source["path"] == "config/crd/bases/kaito.sh_workspaces.yaml" and len(source["commit"]) == 40
    assert json.loads(kaito.PRESETS.read_text())["_source"]["commit"]


def test_defaults_agree_with_finetune_contract():
    from slmops.maas import kaito
    from slmops.steps.finetune import CONTRACT

    defaults = {i.name: i.default for i in CONTRACT.inputs}
    assert {k: defaults[k] for k in kaito.FINETUNE_DEFAULTS} == kaito.FINETUNE_DEFAULTS
