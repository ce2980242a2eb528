"""score.py in-process on the fine-tuned model (merged MLflow folder from the finetune step), mounted the way
Azure ML mounts a registered model (one folder below AZUREML_MODEL_DIR): it must answer the tone task, with
exactly the predictions the evaluate step (PyTorch) and the optimize step (ONNX) make for the same prompts."""

from __future__ import annotations

import shutil

import pytest

from slmops import generation, models
from slmops.tiny import LABELS, tone_dataset


def chats(rows):
    return [[{"role": "user", "content": f"What is the tone of this phrase? {r['phrase']}"}] for r in rows]


@pytest.mark.slow
def test_scores_the_finetuned_mlflow_model(finetuned, tmp_path, monkeypatch):
    import torch

    from slmops.serving import score

    mount = tmp_path / "azureml-models"
    shutil.copytree(finetuned["model"], mount / "tone")
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(mount))
    score.init()
    assert score.MODEL.kind == "pytorch" and score.MODEL.name == "tone"
    rows = tone_dataset(40, seed=123)
    answers = [score.run(messages=m, max_new_tokens=4) for m in chats(rows)]
    assert all(a["finish_reason"] == "stop" and a["text"] in LABELS for a in answers), answers[:3]
    accuracy = sum(a["text"] == r["tone"] for a, r in zip(answers, rows)) / len(rows)
    assert accuracy >= 0.8, accuracy
    # the evaluate step's predictions for the same prompts (rendered as prep renders them, one batch) are the answers
    tok = models.load_tokenizer(mount / "tone")
    prompts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in chats(rows)]
    model = models.load_causal_lm(mount / "tone", dtype=torch.float32).eval()
    assert [a["text"] for a in answers] == generation.torch_complete(model, tok, prompts, max_new_tokens=4,
                                                                     batch_size=16)


@pytest.mark.slow
def test_scores_the_finetuned_onnx_model_mounted_at_name_version(finetuned, prepared_data, tmp_path, monkeypatch):
    """The same task through ORT GenAI (the optimize step's int4 model) at Azure ML's `<name>/<version>` mount: the
    reply names "name:version", and an answer that ended on an end token is "stop" even though ORT GenAI leaves
    that token out of the sequence it returns."""
    import onnxruntime_genai as og

    from slmops.serving import score
    from slmops.steps import optimize

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mount = tmp_path / "azureml-models" / "tone-onnx" / "3"
    optimize.main(["--model", str(finetuned["model"]), "--test_data", str(prepared_data), "--precision", "int4",
                   "--max_samples", "4", "--speed_prompts", "1", "--speed_tokens", "4", "--onnx_model", str(mount),
                   "--report", str(tmp_path / "report")])
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(mount))
    score.init()
    assert score.MODEL.kind == "onnx" and score.MODEL.name == "tone-onnx:3"
    rows = tone_dataset(20, seed=7)
    answers = [score.run(messages=m, max_new_tokens=6) for m in chats(rows)]
    assert all(a["finish_reason"] == "stop" and a["completion_tokens"] < 6 for a in answers), answers[:3]
    assert sum(a["text"] == r["tone"] for a, r in zip(answers, rows)) / len(rows) >= 0.8
    # the optimize step's ONNX predictions for the same prompts (rendered as prep renders them) are the answers
    tok = models.load_tokenizer(finetuned["model"])
    prompts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in chats(rows)]
    og_model = og.Model(str(mount))
    assert [a["text"] for a in answers] == generation.ort_complete(og_model, og.Tokenizer(og_model), prompts,
                                                                   max_new_tokens=6, batch_size=16)
