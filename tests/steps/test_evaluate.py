"""evaluate: test split only, the prompt baselines (k-shot construction), intervals, verdict arithmetic, declared
outputs and metrics schema, over-fitting check, perplexity cross-check, bad inputs."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from slmops import generation, metrics, models
from slmops.errors import UserError
from slmops.steps import evaluate

RISING = [{"step": 10, "loss": 2.0}, {"step": 20, "loss": 1.5, "eval_loss": 1.6},
          {"step": 30, "loss": 1.0}, {"step": 40, "loss": 0.6, "eval_loss": 1.9}]
ONNX_REPORT = {"precision": "int4", "execution_provider": "cpu", "task": "classification", "split": "test", "n": 40,
               "accuracy_metric": "accuracy", "onnx": {"accuracy": 0.875, "tokens_per_s": 4800.0, "size_mb": 3.1},
               "pytorch": {"accuracy": 0.9, "tokens_per_s": 260.0}, "speedup": 18.5, "accuracy_drop": 0.025,
               "speed": {"prompts": 20, "new_tokens": 64, "batch_size": 1}}


@pytest.fixture(scope="module")
def prep_dir(tmp_path_factory, prepared_data):
    """prep's output with a test split: prep's own test.jsonl when it writes one, else (older prep) its validation
    rows as test.jsonl. validation.jsonl is overwritten with garbage: evaluate must never read it."""
    out = tmp_path_factory.mktemp("prep_test") / "output_data"
    shutil.copytree(prepared_data, out)
    if not (out / "test.jsonl").is_file():
        shutil.copy(prepared_data / "validation.jsonl", out / "test.jsonl")
    (out / "validation.jsonl").write_text("not JSON: evaluate must not read the validation split\n")
    return out


def _count(path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory, prep_dir, tiny_model, finetuned):
    """One classification run: the random tiny base (zero-shot and 3-shot) vs its LoRA fine-tune, a synthetic
    over-fitting history, a 36 s training priced at 2.0 per hour, and an optimize report."""
    tmp = tmp_path_factory.mktemp("evaluate")
    (tmp / "train_metrics").mkdir()
    (tmp / "train_metrics" / "train_history.json").write_text(json.dumps(RISING))
    (tmp / "train_metrics" / "train_summary.json").write_text(json.dumps({"train_seconds": 36.0,
                                                                          "resumed_from": None}))
    (tmp / "optimize").mkdir()
    (tmp / "optimize" / "optimize_report.json").write_text(json.dumps(ONNX_REPORT))
    out = tmp / "metrics"
    result = evaluate.main(["--test_data", str(prep_dir), "--model", str(finetuned["model"]),
                            "--base_model", str(tiny_model), "--train_metrics", str(tmp / "train_metrics"),
                            "--optimize_report", str(tmp / "optimize"), "--k_shot", "3",
                            "--compute_price_per_hour", "2.0", "--price_per_1k_tokens", "0.0005",
                            "--max_new_tokens", "4", "--latency_samples", "2", "--metrics", str(out)])
    return out, result


def test_classification_writes_declared_outputs(classification_run, prep_dir):
    out, result = classification_run
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion_matrix_base.png", "confusion_matrix_base_k_shot.png", "confusion_matrix_finetuned.png",
        "loss_curves.png", "metrics.json", "report.md"]
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert set(on_disk) == {"task", "split", "n", "k_shot", "k_shot_seed", "base", "finetuned", "delta", "variants",
                            "verdict", "overfitting", "resources"}
    use = on_disk["resources"]   # this step's process: peak RSS, mean CPU % (100 = one core), wall seconds
    assert use["peak_rss_mb"] > 100 and 0 < use["mean_cpu_percent"] <= 100 * use["cpu_count"] and use["wall_s"] > 0
    assert f"Resources (this step): peak RSS {use['peak_rss_mb']:,.0f} MB" in (out / "report.md").read_text()
    n_rows = _count(prep_dir / "test.jsonl")
    assert (on_disk["split"], on_disk["n"], on_disk["k_shot"]) == ("test", n_rows, 3)
    # the keys other code reads (quickstart, register) stay: base = the zero-shot base, finetuned, delta
    assert on_disk["base"] == on_disk["variants"]["base_zero_shot"]
    assert on_disk["finetuned"] == on_disk["variants"]["finetuned"]
    for which in ["base", "finetuned"]:
        m = on_disk[which]
        assert m["labels"][:5] == ["angry", "fearful", "joyful", "neutral", "sad"]
        assert sum(map(sum, m["confusion_matrix"])) == n_rows
        assert m["accuracy"] == pytest.approx(sum(m["confusion_matrix"][i][i] for i in range(5)) / n_rows)
    # the random-init base never says a label; the fine-tune mostly does (golden for this seed and data)
    assert on_disk["base"]["accuracy"] == 0.0 and on_disk["base"]["labels"][-1] == "(other)"
    assert on_disk["finetuned"]["accuracy"] >= 0.8
    assert on_disk["delta"] == {k: on_disk["finetuned"][k] - on_disk["base"][k] for k in ["accuracy", "macro_f1"]}
    assert on_disk["overfitting"]["warning"] is True


def test_every_variant_reports_split_rows_intervals_and_cost(classification_run, prep_dir):
    _, result = classification_run
    variants = result["variants"]
    assert list(variants) == ["base_zero_shot", "base_k_shot", "finetuned", "onnx"]
    n_rows = _count(prep_dir / "test.jsonl")
    for name in ["base_zero_shot", "base_k_shot", "finetuned"]:
        v = variants[name]
        assert (v["split"], v["n"]) == ("test", n_rows), name
        correct = sum(v["confusion_matrix"][i][i] for i in range(len(v["labels"])))
        assert v["accuracy_ci"] == list(metrics.wilson_interval(correct, n_rows))
        assert v["accuracy_ci"][0] <= v["accuracy"] <= v["accuracy_ci"][1]
        assert v["macro_f1_ci"][0] <= v["macro_f1"] <= v["macro_f1_ci"][1]
        assert v["prompt_tokens_mean"] > 0 and v["latency_ms"] > 0 and v["generated_tokens_per_s"] > 0
        assert v["latency_samples"] == 2
    assert variants["base_k_shot"]["label"] == "base, 3-shot"
    # the 3-shot prompt holds 3 examples before the same test prompt: about 4x the tokens
    zero, kshot = variants["base_zero_shot"]["prompt_tokens_mean"], variants["base_k_shot"]["prompt_tokens_mean"]
    assert 3 * zero < kshot < 5 * zero
    assert variants["finetuned"]["prompt_tokens_mean"] == zero  # the same prompts, the same tokenizer
    onnx = variants["onnx"]  # copied from optimize's report, with its own rows
    assert (onnx["accuracy"], onnx["generated_tokens_per_s"], onnx["size_mb"]) == (0.875, 4800.0, 3.1)
    assert (onnx["split"], onnx["n"], onnx["label"]) == ("test", 40, "ONNX (int4, cpu)")
    assert onnx["accuracy_ci"] == list(metrics.wilson_interval(35, 40))
    assert onnx["latency_ms"] is None and onnx["prompt_tokens_mean"] is None


def test_verdict_in_metrics_and_at_the_end_of_the_report(classification_run):
    out, result = classification_run
    v, variants = result["verdict"], result["variants"]
    tuned, zero = variants["finetuned"], variants["base_zero_shot"]
    assert (v["metric"], v["split"], v["n"]) == ("accuracy", "test", result["n"])
    assert v["best_prompt_baseline"] == "base_zero_shot"  # both prompts score 0 on the random base: the cheaper
    assert v["gain"] == pytest.approx(tuned["accuracy"] - zero["accuracy"])
    assert v["significant"] is True and v["finetuning_wins"] is True
    saved = variants["base_k_shot"]["prompt_tokens_mean"] - tuned["prompt_tokens_mean"]
    assert v["prompt_tokens_saved_per_request"] == pytest.approx(saved)
    assert v["training_cost"] == pytest.approx(0.02)  # 36 s at 2.0 per hour
    assert v["break_even_requests"] == math.ceil(0.02 / (saved * 0.0005 / 1000) - 1e-9)
    assert v["text"] == (f"Fine-tuning wins: {100 * v['gain']:+.1f} points accuracy over the zero-shot prompt (95 % "
                         f"CIs do not overlap), {saved:,.0f} fewer prompt tokens per request than the 3-shot "
                         f"prompt; training cost pays back after {v['break_even_requests']:,} requests.")
    report = (out / "report.md").read_text()
    assert report.startswith(f"# Evaluation (classification, test split: {result['n']} rows)")
    assert "Over-fitting: WARNING" in report and "![loss_curves.png](loss_curves.png)" in report
    assert report.index("## Fine-tune or prompt?") < report.index("## Examples") < report.index("## Verdict")
    assert f"**{v['text']}**" in report.split("## Verdict")[1]
    for label in ["base, zero-shot", "base, 3-shot", "fine-tuned", "ONNX (int4, cpu)"]:
        assert f"| {label} | " in report
    assert (out / "confusion_matrix_base.png").read_bytes()[:4] == b"\x89PNG"


# ---- k-shot prompt construction --------------------------------------------------------------------------------

POOL = [{"prompt": f"P{i} ", "completion": label, "label": label}
        for i, label in enumerate(["a"] * 6 + ["b"] * 3 + ["c"] * 1)]


def _label(row):
    return row["label"]


@pytest.mark.parametrize("k,counts", [
    (3, {"a": 1, "b": 1, "c": 1}),
    (5, {"a": 2, "b": 2, "c": 1}),        # c has one row: a and b fill in, still differing by at most one
    (7, {"a": 3, "b": 3, "c": 1}),
    (10, {"a": 6, "b": 3, "c": 1}),       # the whole pool
    (12, {"a": 6, "b": 3, "c": 1}),       # k above the pool: every row once
])
def test_kshot_examples_are_balanced_across_labels(k, counts):
    shots = evaluate.kshot_examples(POOL, k, seed=0, key=_label)
    got = {}
    for s in shots:
        got[s["label"]] = got.get(s["label"], 0) + 1
    assert got == counts
    assert len({id(s) for s in shots}) == len(shots)  # no row twice


def test_kshot_examples_are_deterministic_and_k0_is_off():
    first = evaluate.kshot_examples(POOL, 3, seed=0, key=_label)
    assert first == evaluate.kshot_examples(POOL, 3, seed=0, key=_label)
    seeds = {tuple(s["prompt"] for s in evaluate.kshot_examples(POOL, 3, seed=seed, key=_label)) for seed in range(8)}
    assert len(seeds) > 1  # the seed chooses
    assert evaluate.kshot_examples(POOL, 0, seed=0, key=_label) == []
    assert evaluate.kshot_examples([], 3, seed=0, key=_label) == []
    # k below the number of labels: k different labels
    assert len({s["label"] for s in evaluate.kshot_examples(POOL, 2, seed=0, key=_label)}) == 2
    # generation (no key): a seeded sample of distinct rows
    sample = evaluate.kshot_examples(POOL, 4, seed=3)
    assert sample == evaluate.kshot_examples(POOL, 4, seed=3) and len({s["prompt"] for s in sample}) == 4


def test_kshot_prompt_concatenates_examples_then_the_test_prompt():
    shots = [{"prompt": "<|user|>\nTone? great day<|end|>\n<|assistant|>\n", "completion": "joyful"},
             {"prompt": "Q: 2+2?\nA:", "completion": " 4\n"}]
    assert evaluate.kshot_prompt(shots, "<|user|>\nTone? awful<|end|>\n<|assistant|>\n") == (
        "<|user|>\nTone? great day<|end|>\n<|assistant|>\njoyful\n"   # a newline ends an example...
        "Q: 2+2?\nA: 4\n"                                             # ...unless it ends in one
        "<|user|>\nTone? awful<|end|>\n<|assistant|>\n")
    assert evaluate.kshot_prompt([], "prompt") == "prompt"


# ---- verdict arithmetic ----------------------------------------------------------------------------------------

def _variant(label, accuracy, ci, prompt_tokens, n=120):
    return {"label": label, "split": "test", "n": n, "accuracy": accuracy, "accuracy_ci": list(ci),
            "prompt_tokens_mean": prompt_tokens}


def test_verdict_golden_win_with_break_even():
    variants = {"base_zero_shot": _variant("base, zero-shot", 0.30, (0.23, 0.39), 40.0),
                "base_k_shot": _variant("base, 3-shot", 0.50, (0.41, 0.59), 252.0),
                "finetuned": _variant("fine-tuned", 0.91, (0.85, 0.95), 40.0)}
    v = evaluate.verdict("classification", variants, train_seconds=5400.0, resumed_from=None,
                         compute_price_per_hour=3.6, price_per_1k_tokens=0.001)
    assert v["best_prompt_baseline"] == "base_k_shot" and v["gain"] == pytest.approx(0.41)
    assert v["significant"] and v["finetuning_wins"]
    assert v["prompt_tokens_saved_per_request"] == 212.0
    # 1.5 h at 3.6/h = 5.40; 212 tokens x 0.001 / 1000 = 0.000212 per request -> 25,471.7 -> 25,472
    assert v["training_cost"] == pytest.approx(5.4) and v["break_even_requests"] == 25_472
    assert v["text"] == ("Fine-tuning wins: +41.0 points accuracy over the 3-shot prompt (95 % CIs do not overlap), "
                         "212 fewer prompt tokens per request; training cost pays back after 25,472 requests.")


@pytest.mark.parametrize("tuned,ci,price,text", [
    (0.55, (0.46, 0.64), 3.6,
     "Fine-tuning scores +5.0 points accuracy over the 3-shot prompt on these 120 test rows, but the 95 % CIs "
     "overlap: not a clear win, 212 fewer prompt tokens per request; training cost pays back after 25,472 requests."),
    (0.91, (0.85, 0.95), 0.0,
     "Fine-tuning wins: +41.0 points accuracy over the 3-shot prompt (95 % CIs do not overlap), 212 fewer prompt "
     "tokens per request; training cost not priced (compute_price_per_hour 0)."),
    (0.45, (0.36, 0.54), 3.6, "Fine-tuning does not beat the 3-shot prompt on these 120 test rows (accuracy 0.450 "
                              "vs 0.500)."),
])
def test_verdict_text_when_the_gain_is_unclear_unpriced_or_negative(tuned, ci, price, text):
    variants = {"base_zero_shot": _variant("base, zero-shot", 0.30, (0.23, 0.39), 40.0),
                "base_k_shot": _variant("base, 3-shot", 0.50, (0.41, 0.59), 252.0),
                "finetuned": _variant("fine-tuned", tuned, ci, 40.0)}
    v = evaluate.verdict("classification", variants, train_seconds=5400.0, resumed_from=None,
                         compute_price_per_hour=price, price_per_1k_tokens=0.001)
    assert v["text"] == text
    assert v["finetuning_wins"] is (text.startswith("Fine-tuning wins"))


def test_verdict_without_k_shot_compares_with_zero_shot_and_saves_nothing():
    variants = {"base_zero_shot": _variant("base, zero-shot", 0.30, (0.23, 0.39), 40.0),
                "finetuned": _variant("fine-tuned", 0.91, (0.85, 0.95), 40.0)}
    v = evaluate.verdict("classification", variants, train_seconds=None, resumed_from=None,
                         compute_price_per_hour=3.6, price_per_1k_tokens=0.001)
    assert v["best_prompt_baseline"] == "base_zero_shot"
    assert v["prompt_tokens_saved_per_request"] is None and v["break_even_requests"] is None
    assert v["text"] == ("Fine-tuning wins: +61.0 points accuracy over the zero-shot prompt (95 % CIs do not "
                         "overlap); training time unknown (no train_seconds in finetune's train_summary.json).")


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


def test_generation_task_metrics_and_perplexity(tmp_path, prep_dir, tiny_model):
    import torch

    out = tmp_path / "metrics"
    result = evaluate.main(["--test_data", str(prep_dir), "--model", str(tiny_model), "--base_model",
                            str(tiny_model), "--task", "generation", "--max_samples", "8", "--max_new_tokens",
                            "4", "--k_shot", "2", "--latency_samples", "1", "--metrics", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "report.md"]
    assert list(result["variants"]) == ["base_zero_shot", "base_k_shot", "finetuned"]
    for v in result["variants"].values():
        assert {"perplexity", "bleu", "rouge_l", "rouge_l_ci", "n", "split", "prompt_tokens_mean",
                "latency_ms"} <= set(v)
        assert (v["n"], v["split"]) == (8, "test") and v["rouge_l_ci"][0] <= v["rouge_l"] <= v["rouge_l_ci"][1]
    assert set(result["delta"]) == {"perplexity", "bleu", "rouge_l"}
    assert result["n"] == 8 and result["overfitting"]["warning"] is False
    assert result["verdict"]["metric"] == "rouge_l"
    # the same completion tokens after a longer prompt: a different (finite) perplexity
    assert math.isfinite(result["variants"]["base_k_shot"]["perplexity"])

    # perplexity = exp(mean completion-token loss), as transformers computes it with prompt labels masked
    rows = generation.read_examples(str(prep_dir), 8, need_input_ids=True)
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


def test_batched_left_padded_generation_matches_one_at_a_time(prep_dir, tiny_model):
    import torch

    prompts = [r["prompt"] for r in generation.read_examples(str(prep_dir), 6)]
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
    (tmp / "test_only").mkdir(exist_ok=True)
    shutil.copy(f"{data}/test.jsonl", tmp / "test_only" / "test.jsonl")
    (tmp / "generation_report").mkdir(exist_ok=True)
    (tmp / "generation_report" / "optimize_report.json").write_text(json.dumps({**ONNX_REPORT,
                                                                               "task": "generation"}))
    (tmp / "not_a_model").mkdir(exist_ok=True)
    (tmp / "not_a_model" / "notes.txt").write_text("hello")
    (tmp / "not_history").mkdir(exist_ok=True)
    (tmp / "not_history" / "train_history.json").write_text('[{"loss": 1.2}, 3]')
    return [
        (["--test_data", str(tmp / "empty"), "--model", model, "--base_model", model, "--k_shot", "0"],
         ["no test.jsonl", "re-run prep"]),
        (["--test_data", str(tmp / "test_only"), "--model", model, "--base_model", model],
         ["--k_shot 3: no train.jsonl"]),
        (["--test_data", data, "--model", model, "--base_model", model, "--optimize_report", str(tmp / "empty")],
         ["no optimize_report.json"]),
        (["--test_data", data, "--model", model, "--base_model", model, "--optimize_report",
          str(tmp / "generation_report")], ["optimize scored task 'generation'"]),
        (["--test_data", data, "--model", str(tmp / "not_a_model"), "--base_model", model],
         ["is not a model folder"]),
        (["--test_data", data, "--model", model], ["exactly one of --base_model"]),
        (["--test_data", data, "--model", model, "--base_model", model, "--train_metrics", str(tmp / "empty")],
         ["no train_history.json"]),
        (["--test_data", data, "--model", model, "--base_model", model, "--train_metrics", str(tmp / "not_history")],
         ["must hold a JSON list of step records"]),
        # every problem is reported at once
        (["--test_data", str(tmp / "empty"), "--model", str(tmp / "not_a_model"), "--max_new_tokens", "0"],
         ["no test.jsonl", "is not a model folder", "exactly one of", "--max_new_tokens: 0 is below",
          "--k_shot 3: no train.jsonl"]),
    ]


def test_bad_inputs_raise_user_error_and_write_nothing(tmp_path, prep_dir, tiny_model):
    for argv, messages in _bad_cases(str(prep_dir), str(tiny_model), tmp_path):
        out = tmp_path / "metrics"
        with pytest.raises(UserError) as err:
            evaluate.main(argv + ["--metrics", str(out)])
        for message in messages:
            assert message in str(err.value)
        assert not out.exists()


def test_prep_output_without_test_jsonl_exits_2_and_says_to_rerun_prep(tmp_path, prepared_data, tiny_model):
    """prep output from before the test split (train.jsonl and validation.jsonl only): no silent fallback to
    validation.jsonl, which finetune used to choose its checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    old = tmp_path / "old_prep"
    old.mkdir()
    for name in ["train.jsonl", "validation.jsonl", "data_report.json"]:
        shutil.copy(prepared_data / name, old / name)
    run = [sys.executable, "-m", "slmops.steps.evaluate"]
    help_ = subprocess.run(run + ["--help"], capture_output=True, text=True, env=env)
    assert help_.returncode == 0 and "--train_metrics" in help_.stdout and "--k_shot" in help_.stdout
    bad = subprocess.run(run + ["--test_data", str(old), "--model", str(tiny_model), "--base_model",
                                str(tiny_model), "--metrics", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2, bad.stderr
    assert f"no test.jsonl in {str(old)!r}" in bad.stderr and "re-run prep" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert not (tmp_path / "out").exists()


def test_metrics_and_artifacts_logged_to_mlflow(tmp_path, monkeypatch, prep_dir, tiny_model):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a file store is enough to see what was logged
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    # a warm tiny-model evaluate can finish within a second: sample often enough to see the system metrics
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")  # the step's default: every 5 s
    result = evaluate.main(["--test_data", str(prep_dir), "--model", str(tiny_model), "--base_model",
                            str(tiny_model), "--max_samples", "5", "--max_new_tokens", "2", "--latency_samples", "1",
                            "--metrics", str(tmp_path / "metrics")])
    import mlflow

    [run] = mlflow.search_runs(experiment_ids=["0"], output_format="list")
    logged = run.data.metrics
    assert logged["finetuned_accuracy"] == 0.0 and "delta_macro_f1" in logged
    assert logged["base_k_shot_accuracy_ci_high"] == pytest.approx(metrics.wilson_interval(0, 5)[1])
    assert logged["base_zero_shot_n"] == 5 and logged["base_k_shot_prompt_tokens_mean"] > 0
    assert logged["verdict_gain"] == 0.0 and logged["verdict_finetuning_wins"] == 0.0
    assert logged["verdict_prompt_tokens_saved_per_request"] > 0
    assert logged["peak_rss_mb"] == result["resources"]["peak_rss_mb"] > 0 and logged["mean_cpu_percent"] > 0
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(logged), logged
    assert run.data.params["task"] == "classification"
    assert (run.data.params["split"], run.data.params["n"], run.data.params["k_shot"]) == ("test", "5", "3")
    assert run.data.tags["verdict"] == result["verdict"]["text"]
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/report.md", "evaluation/confusion_matrix_base.png"} <= logged
