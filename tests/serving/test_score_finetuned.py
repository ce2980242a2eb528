"""score.py in-process on the fine-tuned model (merged MLflow folder from the finetune step), mounted the way
Azure ML mounts a registered model (one folder below AZUREML_MODEL_DIR): it must answer the tone task."""

from __future__ import annotations

import shutil

import pytest

from slmops.tiny import LABELS, tone_dataset


@pytest.mark.slow
def test_scores_the_finetuned_mlflow_model(finetuned, tmp_path, monkeypatch):
    from slmops.serving import score

    mount = tmp_path / "azureml-models"
    shutil.copytree(finetuned["model"], mount / "tone")
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(mount))
    score.init()
    assert score.MODEL.kind == "pytorch" and score.MODEL.name == "tone"
    rows = tone_dataset(40, seed=123)
    answers = [score.run(messages=[{"role": "user", "content": f"What is the tone of this phrase? {r['phrase']}"}],
                         max_new_tokens=4) for r in rows]
    assert all(a["finish_reason"] == "stop" and a["text"].strip() in LABELS for a in answers), answers[:3]
    accuracy = sum(a["text"].strip() == r["tone"] for a, r in zip(answers, rows)) / len(rows)
    assert accuracy >= 0.8, accuracy
