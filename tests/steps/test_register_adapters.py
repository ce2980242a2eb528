"""register with an adapter: the LoRA adapter becomes its own model version naming its base (id + weights sha256),
with the merged model's lineage, metrics and gate tags; the gate reads that adapter's figures in a multi-adapter
optimize_report.json; bad adapter inputs are input errors and nothing is registered."""

from __future__ import annotations

import json

import pytest

from slmops import registry, weights
from slmops.errors import GateFailed, UserError
from slmops.steps import register
from tests.steps.test_register import argv, env, store, write_inputs  # noqa: F401  (fixtures)


def safetensors(path, seed: int):
    header = json.dumps({"w": {"dtype": "U8", "shape": [256], "data_offsets": [0, 256]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes((i + seed) % 256 for i in range(256)))


def with_adapter(root, drops: dict[str, float]):
    """write_inputs() plus a base model folder, a PEFT adapter folder and a two-adapter optimize_report.json."""
    paths = write_inputs(root)
    base, adapter = root / "base", root / "adapter"
    base.mkdir()
    adapter.mkdir()
    (base / "config.json").write_text('{"model_type": "llama"}')
    safetensors(base / "model.safetensors", 1)
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    safetensors(adapter / "adapter_model.safetensors", 2)
    report = json.loads((paths["optimize_report"] / "optimize_report.json").read_text())
    report["adapters"] = {name: {"n": 40, "onnx": {"accuracy": 0.9 - drop}, "pytorch": {"accuracy": 0.9},
                                 "accuracy_drop": drop, "agreement": 0.95, "file": f"adapters/{name}.onnx_adapter"}
                          for name, drop in drops.items()}
    report["accuracy_drop"] = max(drops.values())
    (paths["optimize_report"] / "optimize_report.json").write_text(json.dumps(report))
    paths.pop("onnx_model")
    return {**paths, "base_model": base, "adapter": adapter}


def test_the_adapter_is_registered_naming_its_base(tmp_path, env):  # noqa: F811
    paths = with_adapter(tmp_path, {"tone": 0.0, "topic": 0.08})
    result = register.main(argv(paths, tmp_path / "out", "multi-tone", adapter_name="tone", max_optimized_drop=0.05,
                                min_accuracy=0.5))
    client = registry.client(env)
    adapter = result["adapter"]
    assert adapter["name"] == "multi-tone-adapter" and adapter["base_model"] == str(paths["base_model"])
    assert adapter["base_model_sha256"] == register.weights_digest(weights.verify_weights(paths["base_model"]))
    tags = client.get_model_version("multi-tone-adapter", adapter["version"]).tags
    assert tags["lineage.base_model"] == str(paths["base_model"])
    assert tags["lineage.base_model_sha256"] == adapter["base_model_sha256"]
    assert tags["lineage.dataset_sha256"] == "ab" * 32 and tags["gate"] == "passed"
    assert tags["eval.finetuned.accuracy"] == "0.9" and tags["optimize.adapter"] == "tone"
    assert tags["optimize.accuracy_drop"] == "0.0"                       # tone's figure, not the report's top level
    assert tags["finetuned_model"] == f"multi-tone/{result['version']}"
    assert registry.recorded_hashes(tags) == weights.verify_weights(paths["adapter"])   # serve/promote check these
    merged = client.get_model_version("multi-tone", result["version"]).tags
    assert merged["adapter_model"] == f"multi-tone-adapter/{adapter['version']}"   # the merged model stays
    assert str(client.get_model_version_by_alias("multi-tone-adapter", "candidate").version) == adapter["version"]
    on_disk = json.loads((tmp_path / "out" / "registration.json").read_text())
    assert on_disk["adapter"] == adapter


@pytest.mark.parametrize("adapter_name, drop_ok", [("tone", True), ("topic", False)])
def test_the_gate_reads_the_named_adapter(tmp_path, env, adapter_name, drop_ok):  # noqa: F811
    paths = with_adapter(tmp_path, {"tone": 0.01, "topic": 0.08})
    run = lambda: register.main(argv(paths, tmp_path / "out", f"gate-{adapter_name}",  # noqa: E731
                                     adapter_name=adapter_name, max_optimized_drop=0.05))
    if drop_ok:
        assert run()["gate"]["passed"]
    else:
        with pytest.raises(GateFailed, match="max_optimized_drop") as err:
            run()
        assert "0.0800" in str(err.value) and not (tmp_path / "out").exists()
        assert not registry.client(env).search_model_versions(f"name='gate-{adapter_name}-adapter'")


@pytest.mark.parametrize("change, message", [
    (lambda p: {**p, "adapter": p["base_model"]}, "has no adapter_config.json"),
    (lambda p: {**p, "adapter_name": "sentiment"}, "has the adapters ['tone', 'topic']; pass one of them"),
    (lambda p: {k: v for k, v in p.items() if k != "optimize_report"} | {"adapter_name": "tone"},
     "--adapter_name 'tone' needs --optimize_report"),
])
def test_bad_adapter_inputs_register_nothing(tmp_path, env, change, message):  # noqa: F811
    paths = change(with_adapter(tmp_path, {"tone": 0.0, "topic": 0.0}))
    with pytest.raises(UserError, match="nothing was registered") as err:
        register.main(argv(paths, tmp_path / "out", "bad-adapter"))
    assert message in str(err.value) and not (tmp_path / "out").exists()


def test_adapter_name_on_a_single_model_report(tmp_path, env):  # noqa: F811
    paths = write_inputs(tmp_path)
    with pytest.raises(UserError, match=r"has no adapters \(a single-model build\)"):
        register.main(argv(paths, tmp_path / "out", "single", adapter_name="tone"))


def with_adapter_set(root, drops: dict[str, float]):
    """with_adapter() plus a multi-adapter ORT GenAI folder (base + adapters/<name>.onnx_adapter per adapter)."""
    paths = with_adapter(root, drops)
    onnx = root / "adapters_onnx"
    (onnx / "adapters").mkdir(parents=True)
    (onnx / "genai_config.json").write_text('{"model": {"context_length": 128}}')
    (onnx / "model.onnx").write_bytes(b"onnx-graph")
    for i, name in enumerate(drops):
        (onnx / "adapters" / f"{name}.onnx_adapter").write_bytes(bytes([i + 1]) * 64)
    return {**paths, "adapters_onnx_model": onnx}


def test_the_shared_base_and_adapter_files_are_one_version(tmp_path, env):  # noqa: F811
    paths = with_adapter_set(tmp_path, {"tone": 0.01, "topic": 0.03})
    result = register.main(argv(paths, tmp_path / "out", "multi-topic", adapter_name="topic",
                                adapters_model_name="multi-set", max_optimized_drop=0.05, min_accuracy=0.5))
    assert result["adapters_onnx"] == {"name": "multi-set", "version": "1", "adapters": ["tone", "topic"]}
    checks = {c["name"]: c for c in result["gate"]["checks"]}
    assert set(checks) == {"min_accuracy", "max_optimized_drop", "max_optimized_drop.tone", "max_optimized_drop.topic"}
    assert checks["max_optimized_drop.tone"]["value"] == 0.01 and "adapters.tone" in checks["max_optimized_drop.tone"][
        "detail"]
    client = registry.client(env)
    tags = client.get_model_version("multi-set", "1").tags
    assert tags["adapters"] == "tone,topic" and tags["gate"] == "passed"
    assert tags["optimize.adapters.tone.accuracy_drop"] == "0.01" and tags["optimize.adapters.topic.onnx.accuracy"] \
        == str(0.9 - 0.03)
    assert tags["optimize.accuracy_drop"] == "0.03"                     # the whole report, not topic's narrowing
    assert tags["lineage.base_model"] == str(paths["base_model"]) and tags["lineage.base_model_sha256"] == \
        register.weights_digest(weights.verify_weights(paths["base_model"]))
    assert tags["lineage.dataset_sha256"] == "ab" * 32 and tags["finetuned_model"] == "multi-topic/1"
    recorded = registry.recorded_hashes(tags)
    assert set(recorded) == {"model.onnx", "adapters/tone.onnx_adapter", "adapters/topic.onnx_adapter"}
    assert recorded == weights.verify_weights(paths["adapters_onnx_model"])     # serve/promote check these
    assert client.get_model_version("multi-topic", "1").tags["adapters_onnx_model"] == "multi-set/1"
    assert str(client.get_model_version_by_alias("multi-set", "candidate").version) == "1"


def test_the_set_name_defaults_to_model_name_adapters_onnx(tmp_path, env):  # noqa: F811
    paths = with_adapter_set(tmp_path, {"tone": 0.0, "topic": 0.0})
    paths.pop("adapter")
    result = register.main(argv(paths, tmp_path / "out", "plain"))
    assert result["adapters_onnx"]["name"] == "plain-adapters-onnx" and result["gate"]["checks"] == []


def test_one_adapter_over_the_drift_bound_registers_nothing(tmp_path, env):  # noqa: F811
    paths = with_adapter_set(tmp_path, {"tone": 0.08, "topic": 0.0})
    with pytest.raises(GateFailed) as err:   # topic's own figures pass; tone's adapter in the set does not
        register.main(argv(paths, tmp_path / "out", "drift", adapter_name="topic", max_optimized_drop=0.05))
    assert err.value.exit_code == 3
    assert [p.split(" (pytorch")[0] for p in err.value.problems] == [
        "adapter tone: accuracy drop after optimization 0.0800"]
    assert "> max_optimized_drop.tone 0.05 (optimize_report: adapters.tone, test, n=40)" in err.value.problems[0]
    assert not (tmp_path / "out").exists()
    client = registry.client(env)
    for name in ("drift", "drift-adapter", "drift-adapters-onnx"):
        assert not client.search_model_versions(f"name='{name}'")


@pytest.mark.parametrize("change, message", [
    (lambda p: {**p, "adapters_onnx_model": p["base_model"]}, "is not an ORT GenAI folder with adapters/"),
    (lambda p: {k: v for k, v in p.items() if k != "optimize_report"}, "--adapters_onnx_model needs --optimize_report"),
    (lambda p: {**p, "adapters_model_name": "bad name"}, "--adapters_model_name 'bad name': use letters"),
    (lambda p: {k: v for k, v in p.items() if k != "adapters_onnx_model"} | {"adapters_model_name": "x"},
     "pass --adapters_onnx_model too"),
])
def test_bad_adapter_set_inputs_register_nothing(tmp_path, env, change, message):  # noqa: F811
    paths = change(with_adapter_set(tmp_path, {"tone": 0.0, "topic": 0.0}))
    with pytest.raises(UserError, match="nothing was registered") as err:
        register.main(argv(paths, tmp_path / "out", "bad-set"))
    assert err.value.exit_code == 2 and message in str(err.value) and not (tmp_path / "out").exists()


def test_a_report_of_other_adapters_is_refused(tmp_path, env):  # noqa: F811
    paths = with_adapter_set(tmp_path, {"tone": 0.0, "topic": 0.0})
    (paths["adapters_onnx_model"] / "adapters" / "topic.onnx_adapter").rename(
        paths["adapters_onnx_model"] / "adapters" / "sentiment.onnx_adapter")
    with pytest.raises(UserError, match=r"has the adapters \['sentiment', 'tone'\] but optimize_report.json reports "
                                        r"\['tone', 'topic'\]"):
        register.main(argv(paths, tmp_path / "out", "other"))


def after(root, passed: bool):
    """A register step's registration output (tone's), its gate passed or not."""
    root.mkdir()
    (root / "registration.json").write_text(json.dumps({"name": "multi-tone", "version": "4", "gate": {
        "passed": passed, "checks": []}}))
    return root


def test_the_set_waits_for_the_other_tasks_gate(tmp_path, env):  # noqa: F811
    """after_registration (tone's registration output): its gate is a check of topic's register, which registers
    the shared set only when both passed."""
    paths = with_adapter_set(tmp_path, {"tone": 0.0, "topic": 0.0})
    result = register.main(argv({**paths, "after_registration": after(tmp_path / "tone", True)}, tmp_path / "out",
                                "waits", adapter_name="topic"))
    checks = {c["name"]: c for c in result["gate"]["checks"]}
    assert checks["after.multi-tone"]["passed"] and "multi-tone version 4's gate passed" in \
        checks["after.multi-tone"]["detail"]
    assert result["adapters_onnx"]["name"] == "waits-adapters-onnx"

    paths = with_adapter_set(tmp_path / "failed", {"tone": 0.0, "topic": 0.0})
    with pytest.raises(GateFailed) as err:
        register.main(argv({**paths, "after_registration": after(tmp_path / "tone-failed", False)},
                           tmp_path / "out2", "blocked", adapter_name="topic"))
    assert err.value.exit_code == 3 and "multi-tone version 4's gate failed" in err.value.problems[0]
    assert not (tmp_path / "out2").exists()
    client = registry.client(env)
    for name in ("blocked", "blocked-adapter", "blocked-adapters-onnx"):
        assert not client.search_model_versions(f"name='{name}'")


def test_after_registration_must_be_a_registration_output(tmp_path, env):  # noqa: F811
    paths = with_adapter_set(tmp_path, {"tone": 0.0, "topic": 0.0})
    with pytest.raises(UserError, match="nothing was registered") as err:
        register.main(argv({**paths, "after_registration": paths["base_model"]}, tmp_path / "out", "bad-after"))
    assert err.value.exit_code == 2 and "--after_registration" in str(err.value)
