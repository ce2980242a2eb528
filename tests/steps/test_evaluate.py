"""evaluate: declared outputs, metrics schema, over-fitting check, perplexity cross-check, bad inputs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from slmops import generation, models
from slmops.errors import UserError
from slmops.steps import evaluate

RISING = [{"step": 10, "loss": 2.0}, {"step": 20, "loss": 1.5, "eval_loss": 1.6},
          {"step": 30, "loss": 1.0}, {"step": 40, "loss": 0.6, "eval_loss": 1.9}]


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory, prepared_data, tiny_model, finetuned):
    """One classification run: the random tiny base vs its LoRA fine-tune; a synthetic over-fitting history."""
    tmp = tmp_path_factory.mktemp("evaluate")
    (tmp / "train_metrics").mkdir()
    (tmp / "train_metrics" / "train_history.json").write_text(json.dumps(RISING))
    out = tmp / "metrics"
    result = evaluate.main(["--test_data", str(prepared_data), "--model", str(finetuned["model"]),
                            "--base_model", str(tiny_model), "--train_metrics", str(tmp / "train_metrics"),
                            "--max_new_tokens", "4", "--metrics", str(out)])
    return out, result


def test_classification_writes_declared_outputs(classification_run, prepared_data):
    out, result = classification_run
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion_matrix_base.png", "confusion_matrix_finetuned.png", "loss_curves.png", "metrics.json",
        "report.md"]
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert set(on_disk) == {"task", "n", "base", "finetuned", "delta", "overfitting"}
    n_rows = sum(1 for line in (prepared_data / "validation.jsonl").read_text().splitlines() if line.strip())
    assert on_disk["n"] == n_rows
    for which in ["base", "finetuned"]:
        m = on_disk[which]
        assert set(m) == {"accuracy", "macro_f1", "confusion_matrix", "labels"}
        assert m["labels"][:5] == ["angry", "fearful", "joyful", "neutral", "sad"]
        assert sum(map(sum, m["confusion_matrix"])) == n_rows
        assert m["accuracy"] == pytest.approx(sum(m["confusion_matrix"][i][i] for i in range(5)) / n_rows)
    # the random-init base never says a label; the fine-tune mostly does (golden for this seed and data)
    assert on_disk["base"]["accuracy"] == 0.0 and on_disk["base"]["labels"][-1] == "(other)"
    assert on_disk["finetuned"]["accuracy"] >= 0.8
    assert on_disk["delta"] == {k: on_disk["finetuned"][k] - on_disk["base"][k] for k in ["accuracy", "macro_f1"]}
    assert on_disk["overfitting"]["warning"] is True
    report = (out / "report.md").read_text()
    assert "Over-fitting: WARNING" in report and "![loss_curves.png](loss_curves.png)" in report
    assert (out / "confusion_matrix_base.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("history,warning", [
    (RISING, True),
    ([{"step": 10, "loss": 2.0, "eval_loss": 2.1}, {"step": 20, "loss": 1.0, "eval_loss": 1.5}], False),  # both fell
    ([{"step": 10, "loss": 1.0, "eval_loss": 1.5}, {"step": 20, "loss": 1.2, "eval_loss": 1.8}], False),  # both rose
    ([{"step": 10, "loss": 2.0, "eval_loss": 1.500}, {"step": 20, "loss": 1.0, "eval_loss": 1.510}], False),  # < 1 %
    ([{"step": 10, "loss": 2.0, "eval_loss": 1.5}, {"step": 20, "loss": 1.0, "eval_loss": 1.2},
      {"step": 30, "loss": 0.5, "eval_loss": 1.4}], True),  # rose after its best, not from the start
    ([{"step": 10, "loss": 2.0, "eval_loss": 1.5}, {"step": 20, "loss": 1.0}], False),  # one eval point
    ([], False),
])
def test_overfitting_check(history, warning):
    result = evaluate.overfitting(history)
    assert result["warning"] is warning
    assert result["detail"]


def test_generation_task_metrics_and_perplexity(tmp_path, prepared_data, tiny_model):
    import torch

    out = tmp_path / "metrics"
    result = evaluate.main(["--test_data", str(prepared_data), "--model", str(tiny_model), "--base_model",
                            str(tiny_model), "--task", "generation", "--max_samples", "8", "--max_new_tokens",
                            "4", "--metrics", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "report.md"]
    assert set(result["finetuned"]) == {"perplexity", "bleu", "rouge_l"}
    assert result["n"] == 8 and result["overfitting"]["warning"] is False

    # perplexity = exp(mean completion-token loss), as transformers computes it with prompt labels masked
    rows = generation.read_examples(str(prepared_data), 8, need_input_ids=True)
    model = models.load_causal_lm(tiny_model, dtype=torch.float32).eval()
    nll, count = 0.0, 0
    for r in rows:
        ids = torch.tensor([r["input_ids"]])
        labels = ids.clone()
        labels[0, :r["prompt_length"]] = -100
        with torch.inference_mode():
            loss = float(model(input_ids=ids, labels=labels).loss)
        n = len(r["input_ids"]) - r["prompt_length"]
        nll, count = nll + loss * n, count + n
    assert result["finetuned"]["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)


def test_batched_left_padded_generation_matches_one_at_a_time(prepared_data, tiny_model):
    import torch

    prompts = [r["prompt"] for r in generation.read_examples(str(prepared_data), 6)]
    prompts[0] = prompts[0].replace("What is the tone of this phrase?", "Tone?")  # uneven lengths -> padding
    model = models.load_causal_lm(tiny_model, dtype=torch.float32).eval()
    tok = models.load_tokenizer(tiny_model)
    batched = generation.torch_generate(model, tok, prompts, max_new_tokens=6, batch_size=6)
    single = generation.torch_generate(model, tok, prompts, max_new_tokens=6, batch_size=1)
    assert batched == single
    assert tok.padding_side == "right"  # restored


@pytest.mark.parametrize("row,task,expected", [
    ({"prompt": "p", "completion": " joyful", "label": "joyful"}, "classification", "joyful"),
    ({"prompt": "p", "completion": " joyful<|end|>", "label": None}, "classification", "joyful"),
    ({"prompt": "p", "completion": "A long answer.<|end|>\n", "label": "x"}, "generation", "A long answer."),
])
def test_reference(row, task, expected):
    assert generation.reference(row, task, ["<|end|>", "<|endoftext|>"]) == expected


def _bad_cases(data, model, tmp):
    (tmp / "empty").mkdir(exist_ok=True)
    (tmp / "not_a_model").mkdir(exist_ok=True)
    (tmp / "not_a_model" / "notes.txt").write_text("hello")
    (tmp / "not_history").mkdir(exist_ok=True)
    (tmp / "not_history" / "train_history.json").write_text('[{"loss": 1.2}, 3]')
    return [
        (["--test_data", str(tmp / "empty"), "--model", model, "--base_model", model], ["no validation.jsonl"]),
        (["--test_data", data, "--model", str(tmp / "not_a_model"), "--base_model", model],
         ["is not a model folder"]),
        (["--test_data", data, "--model", model], ["exactly one of --base_model"]),
        (["--test_data", data, "--model", model, "--base_model", model, "--train_metrics", str(tmp / "empty")],
         ["no train_history.json"]),
        (["--test_data", data, "--model", model, "--base_model", model, "--train_metrics", str(tmp / "not_history")],
         ["must hold a JSON list of step records"]),
        # every problem is reported at once
        (["--test_data", str(tmp / "empty"), "--model", str(tmp / "not_a_model"), "--max_new_tokens", "0"],
         ["no validation.jsonl", "is not a model folder", "exactly one of", "--max_new_tokens: 0 is below"]),
    ]


def test_bad_inputs_raise_user_error_and_write_nothing(tmp_path, prepared_data, tiny_model):
    for argv, messages in _bad_cases(str(prepared_data), str(tiny_model), tmp_path):
        out = tmp_path / "metrics"
        with pytest.raises(UserError) as err:
            evaluate.main(argv + ["--metrics", str(out)])
        for message in messages:
            assert message in str(err.value)
        assert not out.exists()


def test_cli_exit_codes(tmp_path, prepared_data, tiny_model):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "slmops.steps.evaluate"]
    help_ = subprocess.run(run + ["--help"], capture_output=True, text=True, env=env)
    assert help_.returncode == 0 and "--train_metrics" in help_.stdout
    bad = subprocess.run(run + ["--test_data", str(tmp_path), "--model", str(tiny_model), "--base_model",
                                str(tiny_model), "--metrics", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2, bad.stderr
    assert "no validation.jsonl" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "out").exists()


def test_metrics_and_artifacts_logged_to_mlflow(tmp_path, monkeypatch, prepared_data, tiny_model):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a file store is enough to see what was logged
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    evaluate.main(["--test_data", str(prepared_data), "--model", str(tiny_model), "--base_model", str(tiny_model),
                   "--max_samples", "5", "--max_new_tokens", "2", "--metrics", str(tmp_path / "metrics")])
    import mlflow

    [run] = mlflow.search_runs(experiment_ids=["0"], output_format="list")
    assert run.data.metrics["finetuned_accuracy"] == 0.0 and "delta_macro_f1" in run.data.metrics
    assert run.data.params["task"] == "classification"
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/report.md", "evaluation/confusion_matrix_base.png"} <= logged
