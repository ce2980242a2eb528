"""`slmops maas score`: a hosted chat deployment scored on prep's test rows, through a recording httpx transport;
the variant has evaluate's shape so a report can put the hosted fine-tune beside our LoRA and the prompt baseline."""

from __future__ import annotations

import json
import logging

import pytest

pytest.importorskip("openai", reason="the openai package (pip install 'slmops[maas]') drives these calls")

from tests.azure.fake_service import SECRET_MARK
from tests.maas.conftest import AOAI, FAKE_KEY, write_rows

CHATML = ("<|im_start|>system\nClassify the tone.<|im_end|>\n<|im_start|>user\nPhrase: {phrase}<|im_end|>\n"
          "<|im_start|>assistant\n")
LABELS = ["joyful", "sad", "angry", "joyful", "neutral", "sad", "fearful", "joyful", "angry", "sad"]
WRONG = {3, 7}  # rows the fake deployment gets wrong


@pytest.fixture
def prep_out(tmp_path):
    """A prep output folder whose test.jsonl was rendered with a ChatML template (label column kept)."""
    folder = tmp_path / "prep_out"
    folder.mkdir()
    write_rows(folder / "test.jsonl", [{"prompt": CHATML.format(phrase=f"phrase {i}"),
                                        "completion": f"{label}<|im_end|>", "label": label, "input_ids": [1, 2, 3],
                                        "prompt_length": 2} for i, label in enumerate(LABELS)])
    return folder


@pytest.fixture
def deployment(openai_service):
    def answer(messages):
        i = int(messages[-1]["content"].rsplit(" ", 1)[1])
        return "joyful" if i in WRONG and LABELS[i] != "joyful" else ("sad" if i in WRONG else LABELS[i])

    openai_service.answer = answer
    return openai_service


def test_score_an_azure_openai_deployment(run_cli, deployment, clean_env, prep_out, tmp_path):
    from slmops import metrics

    clean_env.setenv("AZURE_OPENAI_API_KEY", FAKE_KEY)
    out = tmp_path / "hosted.json"
    result = run_cli("maas", "score", "--endpoint", AOAI, "--deployment", "tone-ft", "--test-data", prep_out,
                     "--model", "gpt-4o-mini", "--label", "hosted fine-tune (gpt-4o-mini)", "--out", out)
    assert result.exit_code == 0, result.output

    assert len(deployment.calls) == len(LABELS)
    for i, call in enumerate(deployment.calls):
        assert (call.method, call.path, call.query) == ("POST", "/deployments/tone-ft/chat/completions",
                                                        {"api-version": "2024-10-21"})
        assert call.body == {"model": "tone-ft", "max_tokens": 32, "temperature": 0, "messages": [
            {"role": "system", "content": "Classify the tone."}, {"role": "user", "content": f"Phrase: phrase {i}"}]}
        assert call.headers["api-key"] == FAKE_KEY
    variant = json.loads(out.read_text())
    n, correct = len(LABELS), len(LABELS) - len(WRONG)
    assert variant["label"] == "hosted fine-tune (gpt-4o-mini)" and variant["split"] == "test" and variant["n"] == n
    assert variant["accuracy"] == correct / n
    assert variant["accuracy_ci"] == list(metrics.wilson_interval(correct, n))
    assert variant["labels"] == sorted(set(LABELS)) and len(variant["confusion_matrix"]) == len(variant["labels"])
    prompt_mean = sum(len(f"Phrase: phrase {i}".split()) + 4 + len("Classify the tone.".split()) + 4
                      for i in range(n)) / n
    assert variant["prompt_tokens_mean"] == prompt_mean and variant["generated_tokens_mean"] == 2
    assert variant["cost_per_1k_requests"] == round(1000 * (prompt_mean * 0.3 + 2 * 1.2) / 1e6, 6)
    assert variant["latency_ms"] > 0 and variant["latency_p95_ms"] >= 0 and variant["errors"] == []
    assert variant["endpoint"] == AOAI and variant["deployment"] == "tone-ft"
    assert f"accuracy {correct / n:.3f}" in result.output and "per 1k requests" in result.output


def test_variant_metrics_are_evaluates():
    """`slmops maas score` reports slmops.metrics.quality, the metrics (and intervals) evaluate reports."""
    from slmops import metrics

    predictions, references = ["a", "b", "a", "c"], ["a", "b", "b", "c"]
    result = metrics.quality("classification", predictions, references)
    assert set(result) == {"accuracy", "accuracy_ci", "macro_f1", "macro_f1_ci", "labels", "confusion_matrix"}
    assert result["accuracy"] == 0.75 and result["accuracy_ci"] == list(metrics.wilson_interval(3, 4))
    assert set(metrics.quality("generation", predictions, references)) == {"bleu", "rouge_l", "rouge_l_ci"}


def test_openai_compatible_endpoint_and_generation_task(run_cli, deployment, clean_env, tmp_path):
    """A Foundry serverless (or any /v1) endpoint: the OpenAI client, bearer key; rows without labels: generation."""
    clean_env.setenv("OPENAI_API_KEY", FAKE_KEY)
    rows = [{"messages": [{"role": "user", "content": f"Phrase: phrase {i}"},
                          {"role": "assistant", "content": LABELS[i]}]} for i in range(len(LABELS))]
    data = write_rows(tmp_path / "test_chat.jsonl", rows)
    out = tmp_path / "v.json"
    endpoint = "https://tone-ft.eastus2.models.ai.azure.com/v1"
    result = run_cli("maas", "score", "--endpoint", endpoint, "--deployment", "tone-ft", "--test-data", data,
                     "--limit", "4", "--out", out)
    assert result.exit_code == 0, result.output
    assert [(c.method, c.path) for c in deployment.calls] == [("POST", "/chat/completions")] * 4
    assert all(c.headers["authorization"] == f"Bearer {FAKE_KEY}" for c in deployment.calls)
    variant = json.loads(out.read_text())
    assert variant["n"] == 4 and {"bleu", "rouge_l", "rouge_l_ci"} <= set(variant) and "accuracy" not in variant
    assert variant["cost_per_1k_requests"] is None and "cost not priced" in result.output


def test_local_endpoint_without_auth(run_cli, deployment, prep_out, tmp_path):
    result = run_cli("maas", "score", "--endpoint", "http://localhost:8080/v1", "--deployment", "phi-3.5-tone",
                     "--test-data", prep_out, "--no-key", "--input-price", "0", "--output-price", "0", "--out",
                     tmp_path / "v.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "v.json").read_text())["cost_per_1k_requests"] == 0
    missing = run_cli("maas", "score", "--endpoint", "http://localhost:8080/v1", "--deployment", "x",
                      "--test-data", prep_out, "--out", tmp_path / "w.json")
    assert missing.exit_code == 2 and "set OPENAI_API_KEY" in missing.output and "--no-key" in missing.output


def test_failed_requests_are_listed_not_scored(run_cli, deployment, clean_env, prep_out, tmp_path):
    clean_env.setenv("AZURE_OPENAI_API_KEY", FAKE_KEY)
    deployment.fail[("POST", r"/deployments/gone/chat/completions")] = (
        404, {"error": {"code": "DeploymentNotFound", "message": "The API deployment for this resource does not "
                                                                  "exist."}})
    result = run_cli("maas", "score", "--endpoint", AOAI, "--deployment", "gone", "--test-data", prep_out,
                     "--out", tmp_path / "v.json")
    assert result.exit_code == 2
    assert "every request to gone failed" in result.output and "test.jsonl:1: HTTP 404" in result.output
    assert not (tmp_path / "v.json").exists()


def test_key_never_in_the_variant_or_logs(run_cli, deployment, clean_env, prep_out, tmp_path, caplog):
    clean_env.setenv("AZURE_OPENAI_API_KEY", FAKE_KEY)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "v.json"
    result = run_cli("maas", "score", "--endpoint", f"{AOAI}/", "--deployment", "tone-ft", "--test-data", prep_out,
                     "--out", out)
    assert result.exit_code == 0, result.output
    for text in (result.output, caplog.text, out.read_text()):
        assert SECRET_MARK not in text
