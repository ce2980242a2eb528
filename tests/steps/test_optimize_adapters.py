"""optimize with several adapters: one ORT GenAI base + one .onnx_adapter per LoRA adapter (tone and topic, each
fine-tuned on the tiny base), switched per call; each adapter's ONNX answers checked against PyTorch (PEFT) on its
own held-out rows; bad adapter arguments fail cleanly with nothing written."""

from __future__ import annotations

import json

import pytest

from slmops import adapters as multi
from slmops import generation, models
from slmops.errors import UserError
from slmops.steps import optimize

NAMES = ["tone", "topic"]


def _optimize(tmp, precision, finetuned, topic_finetuned, tiny_model, prepared_data, topic_prepared_data):
    report = optimize.main([
        "--model", str(tiny_model), "--adapter_1", str(finetuned["adapter"]), "--test_data", str(prepared_data),
        "--adapter_2", str(topic_finetuned["adapter"]), "--test_data_2", str(topic_prepared_data),
        "--adapter_names", ",".join(NAMES), "--precision", precision, "--max_samples", "20",
        "--speed_prompts", "2", "--speed_tokens", "8", "--onnx_model", str(tmp / "onnx"),
        "--report", str(tmp / "report")])
    return tmp, report


@pytest.fixture(scope="module")
def switchable(request, tmp_path_factory, finetuned, topic_finetuned, tiny_model, prepared_data,
               topic_prepared_data):
    runs = {}
    for precision in ("fp32", "int4"):
        runs[precision] = _optimize(tmp_path_factory.mktemp(f"adapters-{precision}"), precision, finetuned,
                                    topic_finetuned, tiny_model, prepared_data, topic_prepared_data)
    return runs


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_one_base_and_one_adapter_file_each(precision, switchable):
    import onnx

    tmp, report = switchable[precision]
    onnx_dir = tmp / "onnx"
    assert multi.names(onnx_dir) == NAMES
    assert sorted(p.name for p in (onnx_dir / "adapters").iterdir()) == ["tone.onnx_adapter", "topic.onnx_adapter"]
    graph = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False).graph
    lora_inputs = [i.name for i in graph.input if ".lora_" in i.name]
    assert len(lora_inputs) == 4 * 7 * 2   # 4 layers x 7 LoRA'd linear layers x (A, B)
    assert not [i.name for i in graph.initializer if ".lora_" in i.name]   # the adapter weights left the base
    assert {n.op_type for n in graph.node if "/lora_" in n.name} == {"MatMul"}  # LoRA stays unquantized
    assert len([n for n in graph.node if n.name.endswith("/lora/Add")]) == 4 * 7

    on_disk = json.loads((tmp / "report" / "optimize_report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert set(on_disk["adapters"]) == set(NAMES) and on_disk["speed"]["adapter"] == "tone"
    for name, score in on_disk["adapters"].items():
        assert score["n"] == 20 and score["file"] == f"adapters/{name}.onnx_adapter"
        assert score["pytorch"]["accuracy"] >= 0.8, name     # each adapter learned its own task
        assert score["accuracy_drop"] == pytest.approx(score["pytorch"]["accuracy"] - score["onnx"]["accuracy"])
        if precision == "fp32":   # same weights, same greedy decoding: identical answers
            assert score["agreement"] == 1.0 and score["accuracy_drop"] == 0.0
        else:  # int4 base weights: at most 2 of the 20 answers change
            assert score["accuracy_drop"] <= 0.1 + 1e-9
    worst = max(on_disk["adapters"].values(), key=lambda s: s["accuracy_drop"])
    assert (on_disk["accuracy_drop"], on_disk["onnx"]["accuracy"], on_disk["n"]) == \
        (worst["accuracy_drop"], worst["onnx"]["accuracy"], worst["n"])


def test_switching_adapters_equals_pytorch_peft_greedy(switchable, finetuned, topic_finetuned, tiny_model,
                                                       prepared_data, topic_prepared_data):
    """fp32: the ids ORT GenAI generates with each adapter active are PEFT's with that adapter set - in any order of
    switching, on one loaded base - and differ between the adapters."""
    import onnxruntime_genai as og
    import torch

    tmp, _ = switchable["fp32"]
    og_model = og.Model(str(tmp / "onnx"))
    og_tok = og.Tokenizer(og_model)
    og_adapters, names = multi.load_onnx_adapters(og_model, tmp / "onnx")
    assert names == NAMES
    peft = multi.load_peft(models.load_causal_lm(tiny_model, dtype=torch.float32).eval(),
                           {"tone": finetuned["adapter"], "topic": topic_finetuned["adapter"]})
    tok = models.load_tokenizer(tiny_model)
    prompts = [r["prompt"] for r in generation.read_examples(str(prepared_data), 2)]
    prompts += [r["prompt"] for r in generation.read_examples(str(topic_prepared_data), 2)]
    got = {}
    for name in ["tone", "topic", "tone"]:
        ort_ids = generation.ort_generate(og_model, og_tok, prompts, max_new_tokens=12, min_new_tokens=12,
                                          batch_size=4, adapters=og_adapters, adapter=name)
        torch_ids = generation.torch_generate(peft, tok, prompts, max_new_tokens=12, min_new_tokens=12, batch_size=4,
                                              adapter=name)
        assert ort_ids == torch_ids, name
        assert got.setdefault(name, ort_ids) == ort_ids   # switching back gives the same answers
    assert got["tone"] != got["topic"]
    with pytest.raises(ValueError, match="without adapters"):
        generation.ort_generate(og_model, og_tok, prompts, max_new_tokens=2, batch_size=4, adapter="tone")


def _bad_cases(model, adapter, data, tmp):
    (tmp / "not_an_adapter").mkdir(exist_ok=True)
    return [
        (["--test_data", data, "--adapter_1", adapter], ["--model is required", "set base_model to a folder"]),
        (["--model", model, "--test_data", data, "--adapter_2", adapter, "--test_data_2", data],
         ["adapters given in slots [2]"]),
        (["--model", model, "--test_data", data, "--adapter_1", adapter, "--adapter_2", adapter],
         ["--adapter_2 needs --test_data_2"]),
        (["--model", model, "--test_data", data, "--test_data_3", data], ["--test_data_3 given without --adapter_3"]),
        (["--model", model, "--test_data", data, "--adapter_names", "tone"], ["given without adapters"]),
        (["--model", model, "--test_data", data, "--adapter_1", adapter, "--adapter_names", "tone,topic"],
         ["has 2 names for 1 adapters"]),
        (["--model", model, "--test_data", data, "--adapter_1", adapter, "--adapter_2", adapter, "--test_data_2",
          data, "--adapter_names", "tone,tone"], ["['tone'] named twice"]),
        (["--model", model, "--test_data", data, "--adapter_1", adapter, "--adapter_names", "../x"],
         ["adapter name '../x' must be"]),
        (["--model", model, "--test_data", data, "--adapter_1", str(tmp / "not_an_adapter")],
         ["has no adapter_config.json"]),
        (["--model", adapter, "--test_data", data, "--adapter_1", adapter], ["with --adapter_N pass the base model"]),
        (["--model", model, "--test_data", data, "--adapter_1", adapter, "--adapter_2", adapter, "--test_data_2",
          str(tmp / "not_an_adapter")], ["--test_data_2: no test.jsonl"]),
    ]


def test_bad_adapter_arguments_raise_user_error_and_write_nothing(tmp_path, finetuned, tiny_model, prepared_data):
    for argv, messages in _bad_cases(str(tiny_model), str(finetuned["adapter"]), str(prepared_data), tmp_path):
        with pytest.raises(UserError) as err:
            optimize.main(argv + ["--onnx_model", str(tmp_path / "onnx"), "--report", str(tmp_path / "report")])
        for message in messages:
            assert message in str(err.value), (argv, str(err.value))
        assert not (tmp_path / "onnx").exists() and not (tmp_path / "report").exists()


def test_adapters_on_different_modules_cannot_share_a_base(tmp_path, tiny_model, finetuned, prepared_data):
    """An adapter on q_proj/v_proj only beside one on every linear layer: a UserError naming both, nothing written."""
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(models.load_causal_lm(tiny_model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                         task_type="CAUSAL_LM"))
    peft.save_pretrained(tmp_path / "qv")
    with pytest.raises(UserError, match="put LoRA on different modules") as err:
        optimize.main(["--model", str(tiny_model), "--adapter_1", str(finetuned["adapter"]), "--test_data",
                       str(prepared_data), "--adapter_2", str(tmp_path / "qv"), "--test_data_2", str(prepared_data),
                       "--adapter_names", "all,qv", "--onnx_model", str(tmp_path / "onnx"), "--report",
                       str(tmp_path / "report")])
    assert "'all' and 'qv'" in str(err.value) and "--target_modules" in str(err.value)
    assert not (tmp_path / "onnx").exists() and not (tmp_path / "report").exists()
