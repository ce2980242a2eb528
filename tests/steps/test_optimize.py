"""optimize: builds fp32 and int4 ORT GenAI models from the fine-tuned tiny model, report schema, ORT GenAI
greedy output equal to PyTorch's at fp32, bad inputs (exit 2, nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from slmops import generation, models
from slmops.errors import UserError
from slmops.steps import optimize

REPORT_KEYS = {"precision", "execution_provider", "task", "accuracy_metric", "split", "n", "onnx", "pytorch", "speedup",
               "accuracy_drop", "agreement", "speed", "tokenizer_files_copied"}


def _optimize(tmp, precision, finetuned, prepared_data):
    report = optimize.main(["--model", str(finetuned["model"]), "--test_data", str(prepared_data),
                            "--precision", precision, "--max_samples", "20", "--speed_prompts", "2",
                            "--speed_tokens", "8", "--onnx_model", str(tmp / "onnx"), "--report", str(tmp / "report")])
    return precision, tmp, report


@pytest.fixture(scope="module")
def fp32(tmp_path_factory, finetuned, prepared_data):
    return _optimize(tmp_path_factory.mktemp("optimize-fp32"), "fp32", finetuned, prepared_data)


@pytest.fixture(scope="module")
def int4(tmp_path_factory, finetuned, prepared_data):
    return _optimize(tmp_path_factory.mktemp("optimize-int4"), "int4", finetuned, prepared_data)


@pytest.mark.parametrize("run", ["fp32", "int4"])
def test_writes_model_folder_and_report(run, request):
    precision, tmp, report = request.getfixturevalue(run)
    assert {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja"} <= {p.name for p in (tmp / "onnx").iterdir()}
    assert [p.name for p in (tmp / "report").iterdir()] == ["optimize_report.json"]
    on_disk = json.loads((tmp / "report" / "optimize_report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert set(on_disk) == REPORT_KEYS
    assert on_disk["split"] == "test" and on_disk["n"] == 20     # --max_samples 20 of the test rows, never validation
    assert set(on_disk["onnx"]) == {"accuracy", "tokens_per_s", "size_mb", "build_s"}
    assert set(on_disk["pytorch"]) == {"accuracy", "tokens_per_s"}
    assert (on_disk["precision"], on_disk["execution_provider"], on_disk["n"]) == (precision, "cpu", 20)
    assert on_disk["pytorch"]["accuracy"] >= 0.8  # the fine-tuned tiny model learned the task
    assert on_disk["accuracy_drop"] == pytest.approx(on_disk["pytorch"]["accuracy"] - on_disk["onnx"]["accuracy"])
    assert on_disk["speedup"] == pytest.approx(on_disk["onnx"]["tokens_per_s"] / on_disk["pytorch"]["tokens_per_s"])
    assert on_disk["onnx"]["tokens_per_s"] > 0 and on_disk["pytorch"]["tokens_per_s"] > 0
    if precision == "fp32":  # same weights, same greedy decoding: identical answers
        assert on_disk["agreement"] == 1.0 and on_disk["accuracy_drop"] == 0.0
        assert 2.5 < on_disk["onnx"]["size_mb"] < 4.0
    else:  # int4 weights: smaller, and on this task no accuracy lost
        assert on_disk["onnx"]["size_mb"] < 1.5
        assert on_disk["accuracy_drop"] <= 0.05


def test_ort_genai_matches_pytorch_greedy_at_fp32(fp32, finetuned, prepared_data):
    _, tmp, _ = fp32
    import onnxruntime_genai as og
    import torch

    prompts = [r["prompt"] for r in generation.read_examples(str(prepared_data), 4)]
    prompts[1] = prompts[1].replace("What is the tone of this phrase?", "Tone?")  # uneven lengths in a batch
    og_model = og.Model(str(tmp / "onnx"))
    og_tok = og.Tokenizer(og_model)
    model = models.load_causal_lm(finetuned["model"], dtype=torch.float32).eval()
    tok = models.load_tokenizer(finetuned["model"])
    for prompt in prompts:  # the copied tokenizer gives the same ids as the Hugging Face one
        assert og_tok.encode(prompt).tolist() == tok(prompt)["input_ids"]
    # 12 forced new tokens, so the comparison goes past the (one-token) label and the end token
    ort_ids = generation.ort_generate(og_model, og_tok, prompts, max_new_tokens=12, min_new_tokens=12, batch_size=4)
    torch_ids = generation.torch_generate(model, tok, prompts, max_new_tokens=12, min_new_tokens=12, batch_size=4)
    assert ort_ids == torch_ids and all(len(ids) == 12 for ids in ort_ids)
    assert generation.ort_complete(og_model, og_tok, prompts, max_new_tokens=4, batch_size=4) == \
        generation.torch_complete(model, tok, prompts, max_new_tokens=4, batch_size=4)
    messages = [{"role": "user", "content": "hello"}]
    assert og_tok.apply_chat_template(json.dumps(messages), add_generation_prompt=True) == \
        tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _bad_cases(data, model, adapter, tmp):
    (tmp / "empty").mkdir(exist_ok=True)
    (tmp / "not_a_model").mkdir(exist_ok=True)
    (tmp / "not_a_model" / "weights.bin").write_bytes(b"\0")
    return [
        (["--model", model, "--test_data", str(tmp / "empty")], ["no test.jsonl"]),
        (["--model", str(tmp / "not_a_model"), "--test_data", data], ["is not a model folder"]),
        (["--model", adapter, "--test_data", data], ["is an adapter; pass the merged model"]),
        (["--model", model, "--test_data", data, "--execution_provider", "cuda"],
         ["no cuda support", "pip install 'slmops[cuda]'"]),
        (["--model", model, "--test_data", data, "--execution_provider", "dml"],
         ["no dml support", "pip install 'slmops[directml]'", "Windows only"]),
        (["--model", str(tmp / "not_a_model"), "--test_data", str(tmp / "empty"), "--speed_tokens", "0",
          "--execution_provider", "cuda"],
         ["no test.jsonl", "is not a model folder", "--speed_tokens: 0 is below", "slmops[cuda]"]),
    ]


def test_bad_inputs_raise_user_error_and_write_nothing(tmp_path, monkeypatch, finetuned, prepared_data):
    import onnxruntime_genai as og

    monkeypatch.setattr(og, "is_cuda_available", lambda: False)  # as on a CPU-only install
    monkeypatch.setattr(og, "is_dml_available", lambda: False)
    for argv, messages in _bad_cases(str(prepared_data), str(finetuned["model"]), str(finetuned["adapter"]),
                                     tmp_path):
        with pytest.raises(UserError) as err:
            optimize.main(argv + ["--onnx_model", str(tmp_path / "onnx"), "--report", str(tmp_path / "report")])
        for message in messages:
            assert message in str(err.value)
        assert not (tmp_path / "onnx").exists() and not (tmp_path / "report").exists()


def test_cli_exit_codes(tmp_path, tiny_model):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "slmops.steps.optimize"]
    help_ = subprocess.run(run + ["--help"], capture_output=True, text=True, env=env)
    assert help_.returncode == 0 and "--speed_tokens" in help_.stdout
    bad = subprocess.run(run + ["--model", str(tiny_model), "--test_data", str(tmp_path), "--onnx_model",
                                str(tmp_path / "onnx"), "--report", str(tmp_path / "report")],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2, bad.stderr
    assert "no test.jsonl" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "onnx").exists() and not (tmp_path / "report").exists()
