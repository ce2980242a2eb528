"""slmops.report: the self-contained HTML report of a run folder, built from a fake run folder holding the files the
steps write (schemas copied from slmops.steps.*), and the runner writing it at the end of a pipeline run.

The headless-browser check runs Debian's chromium (`apt-get install -y chromium`) when /usr/bin/chromium exists: it
renders the report to a screenshot, which must be a real picture (not blank), with no console message."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from slmops import report
from tests.runner.conftest import invoke, mlflow_db, runs  # noqa: F401  (fixtures of the runner's tests)

LABELS = ["angry", "joyful", "sad"]
HISTORY = [  # finetune's train_history.json: Trainer.state.log_history (training and evaluation records)
    {"step": 10, "epoch": 0.1, "loss": 1.90, "grad_norm": 3.1, "learning_rate": 0.001},
    {"step": 20, "epoch": 0.2, "eval_loss": 0.80, "eval_runtime": 1.0},
    {"step": 20, "epoch": 0.2, "loss": 0.70, "grad_norm": 1.2, "learning_rate": 0.001},
    {"step": 30, "epoch": 0.3, "loss": 0.20, "grad_norm": 0.4, "learning_rate": 0.001},
    {"step": 40, "epoch": 0.4, "eval_loss": 0.30, "eval_runtime": 1.0},
    {"step": 40, "epoch": 0.4, "loss": 0.05, "grad_norm": 0.1, "learning_rate": 0.001},
    {"step": 60, "epoch": 0.6, "eval_loss": 0.45, "eval_runtime": 1.0},
    {"step": 60, "epoch": 0.6, "loss": 0.01, "grad_norm": 0.1, "learning_rate": 0.001},
    {"step": 60, "epoch": 0.6, "eval_loss": 0.45, "eval_runtime": 1.0},   # the final evaluation, repeated
]
RESOURCES = {"peak_rss_mb": 3342.7, "mean_cpu_percent": 190.1, "cpu_count": 2, "wall_s": 238.5}


def variant(label: str, accuracy: float, ci: list, matrix: list | None, labels=LABELS) -> dict:
    """One evaluate variant (slmops.steps.evaluate.score's fields)."""
    v = {"label": label, "accuracy": accuracy, "accuracy_ci": ci, "macro_f1": accuracy * 0.9,
         "macro_f1_ci": [accuracy * 0.8, min(1.0, accuracy)], "prompt_tokens_mean": 54.5, "latency_ms": 315.9,
         "latency_samples": 8, "generated_tokens_mean": 2.0, "generated_tokens_per_s": 6.3, "n": 60, "split": "test"}
    if matrix is not None:
        v.update(labels=labels, confusion_matrix=matrix)
    return v


def metrics_json(labels=LABELS, verdict_text="Fine-tuning wins: +70.0 points accuracy over the 5-shot prompt.") -> dict:
    """evaluate's metrics.json (sorted keys, as write_json writes them)."""
    other = labels + ["(other)"]
    zero = variant("base, zero-shot", 0.0, [0.0, 0.06], [[0, 0, 0, 20], [0, 0, 0, 20], [0, 0, 0, 20], [0, 0, 0, 0]],
                   other)
    kshot = variant("base, 5-shot", 0.3, [0.2, 0.43], [[5, 5, 8, 2], [2, 8, 8, 2], [2, 5, 5, 8], [0, 0, 0, 0]], other)
    tuned = variant("fine-tuned", 1.0, [0.94, 1.0], [[20, 0, 0], [0, 20, 0], [0, 0, 20]], labels)
    onnx = {"label": "ONNX (int4, cpu)", "source": "optimize_report.json", "split": "test", "n": 60,
            "accuracy": 0.983, "accuracy_ci": [0.91, 0.997], "prompt_tokens_mean": None, "latency_ms": None,
            "generated_tokens_per_s": 94.3, "size_mb": 90.0, "speed": {"batch_size": 1, "new_tokens": 64,
                                                                        "prompts": 5}}
    return {"task": "classification", "split": "test", "n": 60, "k_shot": 5, "k_shot_seed": 0,
            "base": zero, "finetuned": tuned, "delta": {"accuracy": 1.0, "macro_f1": 0.9},
            "variants": dict(sorted({"base_zero_shot": zero, "base_k_shot": kshot, "finetuned": tuned,
                                     "onnx": onnx}.items())),
            "verdict": {"metric": "accuracy", "finetuning_wins": True, "text": verdict_text, "gain": 0.7},
            "overfitting": {"warning": True, "detail": "validation loss rose while training loss fell: ..."},
            "resources": {"peak_rss_mb": 1452.8, "mean_cpu_percent": 186.0, "cpu_count": 2, "wall_s": 95.6}}


OPTIMIZE_REPORT = {  # slmops.steps.optimize's optimize_report.json
    "precision": "int4", "execution_provider": "cpu", "task": "classification", "accuracy_metric": "accuracy",
    "split": "test", "n": 60, "onnx": {"accuracy": 0.983, "tokens_per_s": 94.3, "size_mb": 90.0, "build_s": 12.8},
    "pytorch": {"accuracy": 1.0, "tokens_per_s": 14.3}, "speedup": 6.59, "accuracy_drop": 0.017,
    "agreement": 0.983, "speed": {"prompts": 5, "new_tokens": 64, "batch_size": 1}, "tokenizer_files_copied": []}
REGISTRATION = {"name": "tone", "version": "1", "alias": "candidate", "gate": {"passed": True, "verdict": "passed",
                "checks": [{"name": "max_optimized_drop", "op": "<=", "passed": True, "threshold": 0.05,
                            "value": 0.017, "detail": "accuracy drop after optimization 0.0170 <= 0.05"}]}}
STEPS = {"prep": (0, 11), "finetune": (11, 259), "optimize": (259, 359), "evaluate": (359, 460),
         "register": (460, 465)}


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True))


def fake_run(root: Path, *, nodes=tuple(STEPS), metrics: dict | None = None, history=HISTORY) -> Path:
    """A run folder as `slmops run` leaves it (plain folders where it links into the step cache), and an MLflow
    sqlite store holding the runs' start and end times and a system metric."""
    run_dir = root / "run"
    db = root / ".slmops" / "mlflow.db"
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE runs (run_uuid TEXT, start_time INTEGER, end_time INTEGER)")
        con.execute("CREATE TABLE metrics (run_uuid TEXT, key TEXT, value REAL)")
        con.execute("INSERT INTO runs VALUES ('parent', 0, 465000)")
        for node, (start, end) in STEPS.items():
            con.execute("INSERT INTO runs VALUES (?, ?, ?)", (f"run-{node}", start * 1000, end * 1000))
            con.executemany("INSERT INTO metrics VALUES (?, 'system/cpu_utilization_percentage', ?)",
                            [(f"run-{node}", 90.0), (f"run-{node}", 100.0)])
    write(run_dir / "run.json", {"pipeline": "pipelines/finetune.yaml", "status": "FINISHED", "failed": [],
                                 "mlflow_run_id": "parent", "tracking_uri": f"sqlite:///{db}",
                                 "steps": {n: "done" for n in nodes}})
    reads = {"evaluate": {"train_metrics": report.step_output(run_dir, "finetune", "metrics")},
             "register": {"eval_metrics": report.step_output(run_dir, "evaluate", "metrics"),
                          "optimize_report": report.step_output(run_dir, "optimize", "report")}}
    for node in nodes:
        inputs = {k: str(v) for k, v in reads.get(node, {}).items()}
        write(run_dir / node / "step.json", {"node": node, "status": "reused" if node == "prep" else "done",
                                             "mlflow_run_id": f"run-{node}", "inputs": inputs})
    if "prep" in nodes:
        write(report.step_output(run_dir, "prep", "output_data") / "data_report.json",
              {"rows": {"raw": 600, "train": 480, "validation": 60, "test": 60}})
    if "finetune" in nodes:
        write(report.step_output(run_dir, "finetune", "metrics") / "train_history.json", history)
        write(report.step_output(run_dir, "finetune", "metrics") / "train_summary.json",
              {"global_step": 60, "train_seconds": 224.4, "resources": RESOURCES, "method": "lora"})
    if "evaluate" in nodes:
        write(report.step_output(run_dir, "evaluate", "metrics") / "metrics.json", metrics or metrics_json())
    if "optimize" in nodes:
        write(report.step_output(run_dir, "optimize", "report") / "optimize_report.json", OPTIMIZE_REPORT)
    if "register" in nodes:
        write(report.step_output(run_dir, "register", "registration") / "registration.json", REGISTRATION)
    return run_dir


def sections(page: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", page)


def test_a_full_run_has_every_section_with_its_figures(tmp_path):
    page = report.build(fake_run(tmp_path))
    assert sections(page) == ["Fine-tune or prompt?", "Loss curves", "Confusion matrices", "ONNX drift",
                              "Resource use per step"]
    assert 'class="omitted"' not in page
    # baselines vs fine-tuned vs ONNX, in reading order, with the 95 % intervals of metrics.json
    rows = re.findall(r"<tr><td>(?:<strong>)?([^<]+)", page.split("<h2>Loss curves")[0])
    assert rows == ["base, zero-shot", "base, 5-shot", "fine-tuned", "ONNX (int4, cpu)"]
    assert "1.000 (0.940–1.000)" in page and "0.300 (0.200–0.430)" in page and "0.983 (0.910–0.997)" in page
    assert "Fine-tuning wins: +70.0 points" in page and "gate passed" in page
    assert "train 480 / validation 60 / test 60 rows" in page
    # one confusion matrix per variant that has one; the ONNX build has none
    assert page.count('<table class="cm">') == 3 and "fine-tuned (accuracy 1.000)" in page
    # ONNX drift: both runtimes, the drop, the agreement, register's gate on it
    drift = page.split("<h2>ONNX drift</h2>")[1].split("<h2>")[0]
    assert "-0.017 (-1.7 points)" in drift and "98.3%" in drift and "×6.59" in drift
    assert "accuracy drop after optimization 0.0170 &lt;= 0.05: passed" in drift
    # resources: the steps in the order they ran, wall time from their MLflow runs, the steps' own figures
    use = page.split("<h2>Resource use per step</h2>")[1]
    assert re.findall(r"<tr><td>(\w+)</td>", use) == ["prep", "finetune", "optimize", "evaluate", "register"]
    assert "<td>finetune</td><td>done</td><td>4 min 08 s</td><td>3,343</td><td>190</td><td>95</td>" in use
    assert "<td>prep</td><td>reused</td><td>11.0 s</td><td>n/a</td><td>n/a</td>" in use
    assert "The whole pipeline run: 7 min 45 s" in use


@pytest.mark.parametrize("evals, expected_step, words", [
    ([(20, 0.8), (40, 0.3), (60, 0.45)], 40, "Over-fitting point: step 40"),
    ([(20, 0.8), (40, 0.3), (60, 0.302)], None, "within 1 % of its lowest"),         # noise, not a rise
    ([(20, 0.8), (40, 0.3), (60, 0.1)], None, "lowest at the last evaluation"),
    ([(20, 0.5), (40, 0.5), (60, 0.9)], 20, "Over-fitting point: step 20"),            # the first of equal lows
    ([(20, 0.8)], None, "One validation loss only"),
    ([], None, "No validation loss recorded"),
])
def test_over_fitting_point(evals, expected_step, words):
    history = [{"step": 10, "loss": 1.0}] + [{"step": s, "eval_loss": v} for s, v in evals]
    point = report.overfitting_point(history)
    assert point["step"] == expected_step
    assert words in point["text"]


def test_the_over_fitting_point_is_marked_on_the_loss_chart(tmp_path):
    losses = report.build(fake_run(tmp_path)).split("<h2>Loss curves</h2>")[1].split("<h2>")[0]
    assert "over-fitting point (step 40)" in losses and 'stroke-dasharray="5 4"' in losses
    assert "Over-fitting point: step 40. Validation loss was lowest there (0.3000) and rose to 0.4500" in losses
    assert "evaluate's check (warning)" in losses                    # evaluate's own verdict beside it
    calm = report.build(fake_run(tmp_path / "calm", history=[h for h in HISTORY if h["step"] < 60]))
    assert "over-fitting point (" not in calm and "No over-fitting seen" in calm


def test_sections_a_pipeline_did_not_produce_are_omitted_with_a_note(tmp_path):
    page = report.build(fake_run(tmp_path, nodes=("prep",)))
    assert sections(page) == ["Fine-tune or prompt?", "Loss curves", "Confusion matrices", "ONNX drift",
                              "Resource use per step"]
    assert "Loss curves: omitted; this pipeline run has no finetune/outputs/metrics/train_history.json." in page
    assert "ONNX drift: omitted; this pipeline run has no optimize/outputs/report/optimize_report.json." in page
    assert page.count('class="omitted"') == 4                                  # resources: prep's row
    # a folder with nothing in it at all still gives a page
    (tmp_path / "empty").mkdir()
    assert "Resource use: no &lt;node&gt;/step.json" in report.build(tmp_path / "empty")


def test_two_chains_in_one_pipeline_each_get_their_sections_and_their_own_gate(tmp_path):
    """multi_adapter.yaml: evaluate_topic and register_topic beside evaluate and register."""
    run_dir = fake_run(tmp_path)
    topic = metrics_json(["food", "money", "sports"], verdict_text="topic verdict")
    write(report.step_output(run_dir, "evaluate_topic", "metrics") / "metrics.json", topic)
    write(report.step_output(run_dir, "register_topic", "registration") / "registration.json",
          {**REGISTRATION, "name": "topic-model"})
    write(run_dir / "evaluate_topic" / "step.json", {"node": "evaluate_topic", "status": "done", "inputs": {}})
    write(run_dir / "register_topic" / "step.json", {"node": "register_topic", "status": "done", "inputs": {
        "eval_metrics": str(report.step_output(run_dir, "evaluate_topic", "metrics"))}})
    page = report.build(run_dir)
    assert sections(page)[:2] == ["Fine-tune or prompt?: evaluate", "Fine-tune or prompt?: evaluate_topic"]
    assert "Confusion matrices: evaluate_topic" in sections(page) and "Loss curves" in sections(page)
    first, second = page.split("<h2>Fine-tune or prompt?: evaluate_topic</h2>")
    assert "Registered tone v1" in first.split("<h2>Fine-tune or prompt?: evaluate</h2>")[1]
    assert "Registered topic-model v1" in second.split("<h2>")[0] and "topic verdict" in second.split("<h2>")[0]


def test_a_generation_task_and_unreadable_files_give_notes_not_errors(tmp_path):
    generation = metrics_json()
    generation["task"] = "generation"
    for v in generation["variants"].values():
        v.pop("confusion_matrix", None)
        v.update(perplexity=3.2, bleu=12.5, rouge_l=0.41, rouge_l_ci=[0.35, 0.47])
    run_dir = fake_run(tmp_path, metrics=generation)
    (report.step_output(run_dir, "optimize", "report") / "optimize_report.json").write_text("{not json")
    page = report.build(run_dir)
    assert "confusion matrices are for classification only" in page
    assert "0.410 (0.350–0.470)" in page and "ROUGE-L (95 % CI)" in page
    assert "ONNX drift: not shown; " in page and "could not be read" in page
    # a confusion matrix that does not match its labels is named, the others still drawn
    broken = metrics_json()
    broken["variants"]["finetuned"]["confusion_matrix"] = [[1, 2]]
    page = report.build(fake_run(tmp_path / "b", metrics=broken))
    assert "fine-tuned (accuracy 1.000): not drawn (confusion matrix does not match its 3 labels)." in page
    assert page.count('<table class="cm">') == 2


SWEEP = {"best_index": 0, "best_metric": 0.84, "best_params": {"learning_rate": 0.00127, "lora_r": 8},
         "best_run_id": "run-best", "objective": {"primary_metric": "eval_loss", "goal": "minimize"},
         "trials": [
             {"index": 0, "metric": 0.84, "params": {"learning_rate": 0.00127, "lora_r": 8}, "run_id": "run-best",
              "seconds": 17.9, "status": "completed"},
             {"index": 1, "metric": 6.90, "params": {"learning_rate": 1.15e-05, "lora_r": 16}, "run_id": "r1",
              "seconds": 13.6, "status": "early_terminated"},
             {"index": 2, "metric": 5.44, "params": {"learning_rate": 0.000206, "lora_r": "<b>16</b>"},
              "run_id": "r2", "seconds": 13.2, "status": "early_terminated"}]}


def test_a_sweep_node_gets_parallel_coordinates_and_its_trials_table(tmp_path):
    """A run with a sweep node (`<run>/finetune/sweep.json`, as the runner writes it): one line per trial across
    the hyper-parameter axes and the objective's, the best bold red, early-stopped trials dashed; the table of
    hyper-parameters against the objective; a sweep-less run has no such section."""
    run_dir = fake_run(tmp_path)
    assert not any(title.startswith("Hyper-parameter sweep") for title in sections(report.build(run_dir)))
    write(run_dir / "finetune" / "sweep.json", SWEEP)
    page = report.build(run_dir)
    assert "Hyper-parameter sweep: finetune" in sections(page)
    sweep = page.split("<h2>Hyper-parameter sweep: finetune</h2>")[1].split("<h2>")[0]
    assert "3 trial(s), objective: minimize eval_loss; best trial 0 (eval_loss 0.84)" in sweep
    lines = re.findall(r"<polyline [^>]*>", sweep)
    assert len(lines) == 3 and sum('stroke-dasharray' in line for line in lines) == 2
    assert 'stroke="#dc2626" stroke-width="3"' in lines[-1]                  # the best, drawn last
    assert all(len(re.search(r'points="([^"]*)"', line).group(1).split()) == 3 for line in lines)  # 3 axes each
    assert re.findall(r"<tr><td>([^<]+)</td>", sweep) == ["0 (best)", "1", "2"]
    assert "early_terminated" in sweep and "&lt;b&gt;16&lt;/b&gt;" in sweep and "<b>16" not in sweep
    write(run_dir / "finetune" / "sweep.json", {"trials": "not a list"})
    assert "Sweep: not shown" in report.build(run_dir)


def test_every_string_from_a_file_is_escaped(tmp_path):
    evil = "<script>alert('x')</script>&\""
    labels = ["<b>angry</b>", "joy&ful", evil]
    metrics = metrics_json(labels, verdict_text=evil)
    metrics["variants"]["finetuned"]["label"] = evil
    run_dir = fake_run(tmp_path, metrics=metrics)
    page = report.build(run_dir)
    assert "<script" not in page and "<b>angry" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;&quot;" in page
    assert "&lt;b&gt;angry&lt;/b&gt;" in page and "joy&amp;ful" in page


def test_the_report_is_self_contained(tmp_path):
    page = report.build(fake_run(tmp_path))
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"<script|<link|<iframe|@import|url\(", page, re.I)
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    assert page.count("<svg") == 2                                       # intervals and loss curves, inline


def test_slmops_report_writes_the_file_and_refuses_a_folder_that_is_no_run(tmp_path):
    run_dir = fake_run(tmp_path)
    written = invoke("report", run_dir)
    assert written.exit_code == 0, written.output
    assert written.output.strip() == f"report: {run_dir / 'report.html'}"
    assert "Loss curves" in (run_dir / "report.html").read_text()
    elsewhere = invoke("report", run_dir, "--out", tmp_path / "out" / "r.html")
    assert elsewhere.exit_code == 0 and (tmp_path / "out" / "r.html").is_file()
    (tmp_path / "nothing").mkdir()
    refused = invoke("report", tmp_path / "nothing")
    assert refused.exit_code == 2 and "is not a run folder" in refused.output
    assert "--out FILE" in invoke("report", "--help").output


def test_the_runner_writes_the_report_and_logs_it_to_the_pipelines_mlflow_run(runs):  # noqa: F811
    result = invoke("run", "no_outputs.yaml", "--run-dir", runs / "r1")
    assert result.exit_code == 0, result.output
    html = runs / "r1" / "report.html"
    assert f"report: {html}" in result.output
    page = html.read_text()
    assert "<td>hello</td><td>done</td>" in page and "Loss curves: omitted" in page
    parent = json.loads((runs / "r1" / "run.json").read_text())["mlflow_run_id"]
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{runs / '.slmops' / 'mlflow.db'}")
    assert [a.path for a in client.list_artifacts(parent, "report")] == ["report/report.html"]
    assert Path(client.download_artifacts(parent, "report/report.html", str(runs))).read_text() == page


def test_a_tracking_server_refusing_the_report_is_a_warning_and_the_file_stays(tmp_path):
    class Refusing:
        def log_artifacts(self, run_id, folder, artifact_path):
            raise ConnectionError("503 from the tracking server")

    said = []
    path = report.publish(fake_run(tmp_path), Refusing(), "parent", warn=said.append)
    assert path.is_file() and len(said) == 1
    assert "not logged to MLflow run parent (ConnectionError: 503 from the tracking server)" in said[0]


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (Debian: apt-get install -y chromium): the "
                                                   "report is not rendered in a headless browser")
def test_the_report_renders_in_headless_chromium_without_errors(tmp_path):
    from PIL import Image

    run_dir = fake_run(tmp_path)
    html = report.write(run_dir)
    shot = tmp_path / "shot.png"
    done = subprocess.run([str(CHROMIUM), "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                           "--window-size=1200,2000", "--enable-logging=stderr", "--v=0", html.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert console == []                                      # no script, no failed load, nothing logged by the page
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2000)
    colors = image.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50            # text, tables, charts: not a blank page
    background = max(colors)[0] / (1200 * 2000)
    assert background < 0.95                                  # something is drawn over most of the page's height
    shutil.copyfile(shot, run_dir / "screenshot.png")         # kept with the run folder under pytest's tmp_path
