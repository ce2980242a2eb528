"""evaluate: on prep's test split only, answer "fine-tune or not?": the fine-tuned model against the base model
prompted zero-shot and k-shot (and the ONNX build, from optimize's report), with confidence intervals, cost per
request and a verdict.

    python -m slmops.steps.evaluate --test_data prep_out/ --model finetune_model/ --base_model base/ \\
        --train_metrics finetune_metrics/ --optimize_report optimize_report/ --task classification \\
        --k_shot 3 --compute_price_per_hour 2.5 --price_per_1k_tokens 0.0005 --metrics eval_out/

Rows: `test.jsonl` of prep's output only (never validation.jsonl, which finetune used to stop early and pick
its checkpoint; no fallback: without test.jsonl the step exits 2). The k-shot examples come from `train.jsonl`.
Variants, all on the same test rows (generation through `slmops.generation`, greedy):
- `base_zero_shot`: the base model on the prompt as prep rendered it;
- `base_k_shot`: the base model on k training examples (`prompt + completion`, each ended by a newline unless it
  ends in one) followed by the test prompt; examples drawn with `--k_shot_seed`, for classification balanced
  across labels as far as k allows (`--k_shot 0`: no such variant);
- `finetuned`: the fine-tuned model on prep's prompt;
- `onnx`: copied from optimize's `optimize_report.json` (its accuracy, tokens/s, size; its own rows and split).
Per variant: classification accuracy (95 % Wilson score interval) and macro-F1 (95 % percentile bootstrap,
1000 resamples, seed 0), or generation perplexity, BLEU and ROUGE-L (bootstrap interval); prompt tokens per
request (mean over all rows); latency per request and generated tokens/s measured on `--latency_samples` test
prompts sent one at a time (batch size 1, after one warm-up request).
Verdict: gain of the fine-tuned model over the best prompt baseline (significant when the two 95 % intervals do
not overlap), prompt tokens saved per request against the k-shot prompt, training cost (finetune's
`train_summary.json` `train_seconds` x `--compute_price_per_hour`) and the break-even request count at
`--price_per_1k_tokens`.
Over-fitting: warns when the validation loss in finetune's `train_history.json` ended more than 1 % above its
best while the training loss fell over the same steps.
Writes `metrics.json` (schema in docs/architecture.md), `report.md` and PNG plots to `--metrics`, and logs the
metrics, the verdict and those files to MLflow.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from slmops import contract, generation, metrics, models, progress, resources, threads, tracking
from slmops.contract import Component, Input, Output
from slmops.data import read_prepared_rows
from slmops.errors import UserError, run_main
from slmops.io import atomic_dir, write_json
from slmops.metrics import OVERFIT_TOLERANCE, VERDICT_METRIC

TASKS = ["classification", "generation"]
SPLIT = "test"  # the only split evaluate scores
EXAMPLES_IN_REPORT = 5
# Quality metrics per task (`delta` covers these); the verdict compares slmops.metrics.VERDICT_METRIC.
QUALITY = {"classification": ["accuracy", "macro_f1"], "generation": ["perplexity", "bleu", "rouge_l"]}
METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "perplexity": "perplexity", "bleu": "BLEU",
                "rouge_l": "ROUGE-L"}
PROMPT_BASELINES = ("base_zero_shot", "base_k_shot")
SIGNIFICANCE = "95 % confidence intervals do not overlap"


CONTRACT = Component(
    name="evaluate", display_name="slmops: evaluate fine-tune vs prompt",
    description="On prep's test split only: score the fine-tuned model against the base model prompted zero-shot "
                "and k-shot (plus the ONNX build from optimize's report): accuracy and macro-F1 with 95 % intervals "
                "(or perplexity, BLEU, ROUGE-L), prompt tokens, latency and tokens/s per request; a verdict with the "
                "gain over the best prompt, tokens saved, training cost and break-even requests; over-fitting check. "
                "Writes metrics.json and report.md with PNG plots; logs them to MLflow.",
    inputs=[
        Input("test_data", "uri_folder", "prep's output_data: test.jsonl is scored (never validation.jsonl); "
              "train.jsonl gives the k-shot examples."),
        Input("model", "mlflow_model", "The fine-tuned model (finetune's model output): MLflow model folder, "
              "Hugging Face folder or adapter."),
        Input("base_model", "custom_model", "The base model folder (Hugging Face or MLflow layout); or give "
              "base_model_id.", optional=True),
        Input("base_model_id", "string", "The base model as a Hugging Face hub id; or give base_model.",
              optional=True),
        Input("train_metrics", "uri_folder", "finetune's metrics output (train_history.json: loss curves, "
              "over-fitting check; train_summary.json: train_seconds for the training cost).", optional=True),
        Input("optimize_report", "uri_folder", "optimize's report output (optimize_report.json): the ONNX build's "
              "accuracy, tokens/s and size join the comparison.", optional=True),
        Input("task", "string", "Which metrics to compute.", default="classification", enum=TASKS),
        Input("k_shot", "integer", "Training examples put before each test prompt for the base model's k-shot "
              "baseline (0 = no k-shot baseline).", default=3, min=0),
        Input("k_shot_seed", "integer", "Seed of the choice of k-shot examples.", default=0, min=0),
        Input("compute_price_per_hour", "number", "Price per hour of the compute finetune ran on, for the training "
              "cost (0 = not priced: no cost or break-even).", default=0.0, min=0.0),
        Input("price_per_1k_tokens", "number", "Price per 1,000 prompt tokens at inference, for the break-even "
              "request count (set your provider's).", default=0.0005, min=0.0),
        Input("max_new_tokens", "integer", "Greedy decoding length limit.", default=16, min=1),
        Input("max_samples", "integer", "Score at most N test examples (0 = all).", default=0, min=0),
        Input("batch_size", "integer", "Prompts per generate/forward call.", default=16, min=1),
        Input("latency_samples", "integer", "Test prompts timed one at a time per variant for latency and "
              "tokens/s (0 = not measured).", default=8, min=0),
    ],
    outputs=[Output("metrics", "metrics.json, report.md, PNG plots")],
)


def build_parser() -> argparse.ArgumentParser:
    return contract.parser(CONTRACT, doc=__doc__)


@dataclass
class Inputs:
    """What validate() read: the test rows, the k-shot pool, finetune's history and summary, optimize's report."""

    rows: list[dict]
    train_rows: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    train_summary: dict | None = None
    optimize: dict | None = None


def _read_json(folder: str, name: str, flag: str, problems: list[str], *, required: bool = True):
    """The JSON in `<folder>/<name>`; None (with a problem when `required`) when it is missing or unreadable."""
    path = Path(folder) / name
    if not path.is_file():
        if required:
            problems.append(f"--{flag}: no {name} in {folder!r}; pass the producing step's output or leave the "
                            "option out")
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        problems.append(f"--{flag}: {path} is not valid JSON ({exc.msg})")
        return None


def validate(args) -> Inputs:
    """Check every argument and read the inputs; raise one UserError listing every problem."""
    problems = contract.check_values(CONTRACT, args)  # enum, min/max
    if bool(args.base_model) == bool(args.base_model_id):
        problems.append("pass exactly one of --base_model (a folder) and --base_model_id (a hub id); "
                        f"got base_model={args.base_model!r}, base_model_id={args.base_model_id!r}")
    for flag, ref in [("--model", args.model), ("--base_model", args.base_model or args.base_model_id)]:
        try:
            if ref:
                models.check_weights(ref)     # the fine-tuned model first: nothing is scored if it is damaged
        except UserError as exc:
            problems.append(f"{flag}: {exc}")
    inputs = Inputs(rows=[])
    try:
        inputs.rows = generation.read_examples(args.test_data, args.max_samples,
                                               need_input_ids=args.task == "generation")
    except UserError as exc:
        problems.append(f"--test_data: {exc}")
    if args.k_shot > 0:
        path = Path(args.test_data) / "train.jsonl"
        try:
            if not path.is_file():
                problems.append(f"--k_shot {args.k_shot}: no train.jsonl in {args.test_data!r} to draw the examples "
                                "from; pass prep's output_data, or --k_shot 0")
            else:
                inputs.train_rows = read_prepared_rows(path, ["prompt", "completion"])
                if not inputs.train_rows:
                    problems.append(f"--k_shot {args.k_shot}: {path} has no rows; pass --k_shot 0")
        except UserError as exc:
            problems.append(f"--k_shot: {exc}")
    if args.train_metrics:
        path = Path(args.train_metrics) / "train_history.json"
        history = _read_json(args.train_metrics, "train_history.json", "train_metrics", problems)
        if history is not None and (not isinstance(history, list)
                                    or not all(isinstance(h, dict) and "step" in h for h in history)):
            problems.append(f"--train_metrics: {path} must hold a JSON list of step records "
                            "({\"step\": ..., \"loss\" or \"eval_loss\": ...}); pass finetune's metrics output")
            history = None
        inputs.history = history or []
        summary = _read_json(args.train_metrics, "train_summary.json", "train_metrics", problems, required=False)
        if summary is not None and not isinstance(summary, dict):
            problems.append(f"--train_metrics: {Path(args.train_metrics) / 'train_summary.json'} holds a JSON "
                            f"{type(summary).__name__}, not finetune's summary object")
            summary = None
        inputs.train_summary = summary
    if args.optimize_report:
        report = _read_json(args.optimize_report, "optimize_report.json", "optimize_report", problems)
        if report is not None:
            if not isinstance(report, dict) or not isinstance(report.get("onnx"), dict):
                problems.append(f"--optimize_report: {Path(args.optimize_report) / 'optimize_report.json'} has no "
                                "\"onnx\" object; pass optimize's report output")
            elif report.get("task", args.task) != args.task:
                problems.append(f"--optimize_report: optimize scored task {report['task']!r}, this is --task "
                                f"{args.task!r}; pass the report of the same pipeline")
            else:
                inputs.optimize = report
    if problems:
        raise UserError("evaluate: invalid arguments", problems=problems)
    return inputs


# ------------------------------------------------------------------------------------------------ k-shot prompt

def kshot_examples(train_rows: list[dict], k: int, seed: int, key=None) -> list[dict]:
    """k of `train_rows`, the same for the same seed. With `key` (classification: a row's label) they are balanced:
    the labels, in a seeded order, take turns giving their next row (each label's rows in a seeded order), so the
    per-label counts differ by at most one as long as every label has rows left; with k below the number of labels,
    the first k labels of that order. Without `key`: a seeded sample."""
    if k <= 0 or not train_rows:
        return []
    rng = random.Random(seed)
    if key is None:
        return rng.sample(train_rows, min(k, len(train_rows)))
    groups: dict[str, list[dict]] = {}
    for row in train_rows:
        groups.setdefault(key(row), []).append(row)
    labels = sorted(groups)
    rng.shuffle(labels)
    for label in labels:
        rng.shuffle(groups[label])
    shots: list[dict] = []
    for depth in range(max(len(rows) for rows in groups.values())):
        for label in labels:
            if depth < len(groups[label]) and len(shots) < k:
                shots.append(groups[label][depth])
    return shots


def kshot_prompt(shots: list[dict], prompt: str) -> str:
    """The k-shot prompt: each example's `prompt + completion` (ended by a newline unless it ends in one), then the
    test prompt as prep rendered it."""
    parts = [s["prompt"] + s["completion"] for s in shots]
    return "".join(p if p.endswith("\n") else p + "\n" for p in parts) + prompt


# -------------------------------------------------------------------------------------------------------- scoring

def completion_nll(model, rows: list[dict], batch_size: int, progress=None) -> tuple[float, int]:
    """Summed negative log-likelihood of the completion tokens (`input_ids[prompt_length:]`) and their count;
    `progress(n)` after each batch of n rows."""
    import torch
    import torch.nn.functional as F

    nll, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        attention = torch.zeros(len(batch), width, dtype=torch.long)
        scored = torch.zeros(len(batch), width, dtype=torch.bool)  # target positions that are completion tokens
        for i, r in enumerate(batch):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            attention[i, :n] = 1
            scored[i, max(1, r["prompt_length"]):n] = True
        with torch.inference_mode():
            logits = model(input_ids=ids.to(model.device), attention_mask=attention.to(model.device)).logits
        # position t is predicted by the logits at t - 1
        losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2).cpu(), ids[:, 1:], reduction="none")
        mask = scored[:, 1:]
        nll += float(losses[mask].sum())
        count += int(mask.sum())
        if progress is not None:
            progress(len(batch))
    return nll, count


def measure_latency(model, tokenizer, prompts: list[str], args, progress=None) -> dict:
    """Per-request cost at batch size 1: the first `latency_samples` prompts sent one at a time after one
    warm-up request; mean wall milliseconds per request and generated tokens / summed seconds."""
    sample = prompts[:args.latency_samples]
    if not sample:
        return {"latency_ms": None, "generated_tokens_per_s": None, "latency_samples": 0}
    one = {"max_new_tokens": args.max_new_tokens, "batch_size": 1}
    generation.torch_completions(model, tokenizer, sample[:1], **one)  # warm-up
    seconds, tokens = 0.0, 0
    for prompt in sample:
        start = time.perf_counter()
        [completion] = generation.torch_completions(model, tokenizer, [prompt], **one)
        seconds += time.perf_counter() - start
        tokens += len(completion.ids)
        if progress is not None:  # outside the timed span
            progress(1)
    return {"latency_ms": 1000 * seconds / len(sample), "generated_tokens_per_s": tokens / seconds,
            "latency_samples": len(sample)}


def score(model, tokenizer, label: str, prompts: list[str], references: list[str], args,
          nll_rows: list[dict] | None = None, bars: progress.Progress = progress.OFF) -> tuple[dict, list[str]]:
    """One variant on the test rows: quality with intervals, prompt tokens, latency. Returns (metrics, predictions).
    Progress on `bars`: one tracker per variant counting generated rows, perplexity rows and timed requests."""
    timed = min(args.latency_samples, len(prompts))
    track = bars.tracker(len(prompts) + (len(nll_rows) if args.task == "generation" else 0) + timed,
                         f"evaluate {label}")
    track.update(status="generate")
    completions = generation.torch_completions(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                               batch_size=args.batch_size, progress=track.advance)
    predictions = [c.text for c in completions]
    result = {"label": label, "split": SPLIT, "n": len(prompts)}
    if args.task == "generation":
        track.update(status="perplexity")
        nll, n_tokens = completion_nll(model, nll_rows, args.batch_size, progress=track.advance)
        result["perplexity"] = metrics.perplexity(nll, n_tokens)
    result.update(metrics.quality(args.task, predictions, references))
    result["prompt_tokens_mean"] = sum(c.prompt_tokens for c in completions) / len(completions)
    result["generated_tokens_mean"] = sum(len(c.ids) for c in completions) / len(completions)
    track.update(status="latency")
    result.update(measure_latency(model, tokenizer, prompts, args, progress=track.advance))
    track.update(status="")
    track.close()
    return result, predictions


def load(ref: str):
    import torch

    tokenizer = models.load_tokenizer(ref)
    model = models.load_causal_lm(ref, dtype=torch.float32, merge_adapter=True).eval()
    if torch.cuda.is_available():  # a GPU compute target; CPU otherwise
        model = model.to("cuda")
    return model, tokenizer


def check_fits(model, tokenizer, prompts: list[str], args) -> None:
    """A k-shot prompt plus the new tokens must fit the base model's positions; else name the fix."""
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = max(len(generation.torch_encode(tokenizer, p)) for p in prompts)
    if limit and longest + args.max_new_tokens > limit:
        raise UserError(f"--k_shot {args.k_shot}: the longest k-shot prompt is {longest} tokens, which with "
                        f"--max_new_tokens {args.max_new_tokens} exceeds the base model's {limit} positions; lower "
                        "--k_shot")


def onnx_variant(report: dict, task: str) -> dict:
    """optimize's ONNX figures as a variant: copied, not re-measured (its rows, split and speed method)."""
    onnx = report.get("onnx") or {}

    def number(value):
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    n = report.get("n") if isinstance(report.get("n"), int) else None
    metric = report.get("accuracy_metric") or VERDICT_METRIC[task]
    value = number(onnx.get("accuracy"))
    variant = {"label": f"ONNX ({report.get('precision')}, {report.get('execution_provider')})",
               "source": "optimize_report.json", "split": report.get("split"), "n": n, metric: value}
    if metric == "accuracy" and value is not None and n:
        variant["accuracy_ci"] = list(metrics.wilson_interval(round(value * n), n))
    variant.update({"prompt_tokens_mean": None, "latency_ms": None,
                    "generated_tokens_per_s": number(onnx.get("tokens_per_s")), "size_mb": number(onnx.get("size_mb")),
                    "speed": report.get("speed")})
    return variant


# -------------------------------------------------------------------------------------------------------- verdict

def _short(name: str, variant: dict) -> str:
    return {"base_zero_shot": "zero-shot prompt"}.get(name, variant["label"].removeprefix("base, ") + " prompt")


def verdict(task: str, variants: dict, *, train_seconds: float | None, resumed_from: str | None,
            compute_price_per_hour: float, price_per_1k_tokens: float) -> dict:
    """Fine-tune or not, from the numbers: gain over the best prompt baseline (significant when the 95 %
    intervals do not overlap), prompt tokens saved per request (k-shot minus fine-tuned), training cost and
    break-even requests. Pure: every figure comes from the arguments."""
    metric = VERDICT_METRIC[task]
    baselines = [name for name in PROMPT_BASELINES if name in variants]
    best = max(baselines, key=lambda name: variants[name][metric])  # a tie keeps zero-shot, the cheaper prompt
    tuned, base = variants["finetuned"], variants[best]
    gain = tuned[metric] - base[metric]
    overlap = metrics.intervals_overlap(tuned[f"{metric}_ci"], base[f"{metric}_ci"])
    kshot = variants.get("base_k_shot")
    saved = kshot["prompt_tokens_mean"] - tuned["prompt_tokens_mean"] if kshot else None
    cost = metrics.training_cost(train_seconds, compute_price_per_hour)
    break_even = metrics.break_even_requests(cost, saved, price_per_1k_tokens)
    wins = gain > 0 and not overlap
    result = {
        "metric": metric, "split": tuned["split"], "n": tuned["n"],
        "best_prompt_baseline": best, "baseline": base[metric], "finetuned": tuned[metric], "gain": gain,
        "baseline_ci": base[f"{metric}_ci"], "finetuned_ci": tuned[f"{metric}_ci"],
        "significant": not overlap, "significance_test": SIGNIFICANCE, "finetuning_wins": wins,
        "prompt_tokens_saved_per_request": saved, "train_seconds": train_seconds, "resumed_from": resumed_from,
        "compute_price_per_hour": compute_price_per_hour, "training_cost": cost,
        "price_per_1k_tokens": price_per_1k_tokens, "break_even_requests": break_even,
    }
    result["text"] = verdict_text(result, _short(best, base), _short("base_k_shot", kshot) if kshot else None)
    return result


def verdict_text(v: dict, baseline: str, kshot: str | None) -> str:
    """The one-line human verdict."""
    name = METRIC_NAMES[v["metric"]]
    points = 100 * v["gain"]
    if v["gain"] <= 0:
        return (f"Fine-tuning does not beat the {baseline} on these {v['n']} {v['split']} rows ({name} "
                f"{v['finetuned']:.3f} vs {v['baseline']:.3f}).")
    if v["finetuning_wins"]:
        text = f"Fine-tuning wins: {points:+.1f} points {name} over the {baseline} (95 % CIs do not overlap)"
    else:
        text = (f"Fine-tuning scores {points:+.1f} points {name} over the {baseline} on these {v['n']} {v['split']} "
                "rows, but the 95 % CIs overlap: not a clear win")
    saved = v["prompt_tokens_saved_per_request"]
    if saved is not None:
        fewer = f"{saved:,.0f} fewer" if saved >= 0 else f"{-saved:,.0f} more"
        text += f", {fewer} prompt tokens per request" + ("" if kshot == baseline else f" than the {kshot}")
    if v["break_even_requests"] is not None:
        text += f"; training cost pays back after {v['break_even_requests']:,} requests"
    elif v["training_cost"] is None and v["compute_price_per_hour"] <= 0:
        text += "; training cost not priced (compute_price_per_hour 0)"
    elif v["training_cost"] is None:
        text += "; training time unknown (no train_seconds in finetune's train_summary.json)"
    return text + "."


# ------------------------------------------------------------------------------------------------- over-fitting

def overfitting(history: list[dict]) -> dict:
    """Warn when validation loss rose (ended > 1 % above its best) while training loss fell after that best."""
    by_step = {h["step"]: h for h in history if h.get("eval_loss") is not None}  # a repeated final eval once
    evals = [by_step[step] for step in sorted(by_step)]
    trains = [h for h in history if h.get("loss") is not None]
    if len(evals) < 2 or not trains:
        return {"warning": False,
                "detail": f"not enough history to judge ({len(evals)} evaluation and {len(trains)} training "
                          "loss records; needs 2 and 1)"}
    best = min(evals, key=lambda h: h["eval_loss"])
    last = evals[-1]

    def train_loss_at(step):  # the latest training loss logged at or before `step` (else the first one)
        before = [h for h in trains if h["step"] <= step]
        return (before[-1] if before else trains[0])["loss"]

    train_then, train_now = train_loss_at(best["step"]), train_loss_at(last["step"])
    rose = last["eval_loss"] > best["eval_loss"] * (1 + OVERFIT_TOLERANCE)
    fell = train_now < train_then
    detail = (f"validation loss {best['eval_loss']:.4f} at step {best['step']} (best) -> {last['eval_loss']:.4f} "
              f"at step {last['step']} (last); training loss {train_then:.4f} -> {train_now:.4f}")
    if rose and fell:
        return {"warning": True, "detail": "validation loss rose while training loss fell: " + detail +
                "; use the checkpoint at the best step, fewer steps, or more data"}
    return {"warning": False, "detail": "no sign of over-fitting: " + detail}


# ---------------------------------------------------------------------------------------------------- reporting

def plot_confusion(path: Path, labels: list[str], matrix: list[list[int]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(labels), 1.0 + 0.7 * len(labels)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(title)
    darkest = max(max(row) for row in matrix)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if count > darkest / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_losses(path: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in [("loss", "training loss"), ("eval_loss", "validation loss")]:
        points = [(h["step"], h[key]) for h in history if h.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o" if key == "eval_loss" else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _num(value, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _with_ci(variant: dict, key: str) -> str:
    value, ci = variant.get(key), variant.get(f"{key}_ci")
    return _num(value) + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")


def comparison_table(result: dict) -> list[str]:
    task = result["task"]
    quality_cols = (["accuracy (95 % CI)", "macro-F1 (95 % CI)"] if task == "classification"
                    else ["perplexity", "BLEU", "ROUGE-L (95 % CI)"])
    lines = ["| variant | " + " | ".join(quality_cols) + " | prompt tokens / request | latency ms / request "
             "| generated tokens/s | rows |", "|---" * (len(quality_cols) + 5) + "|"]
    for name, v in result["variants"].items():
        if task == "classification":
            cells = [_with_ci(v, "accuracy"), _with_ci(v, "macro_f1")]
        else:
            cells = [_num(v.get("perplexity")), _num(v.get("bleu"), ".2f"), _with_ci(v, "rouge_l")]
        rows = f"{v['n']} ({v['split'] or 'split not stated'})"
        lines.append(f"| {v['label']} | " + " | ".join(cells) + f" | {_num(v['prompt_tokens_mean'], '.1f')} | "
                     f"{_num(v['latency_ms'], '.1f')} | {_num(v['generated_tokens_per_s'], ',.0f')} | {rows} |")
    return lines


def report_markdown(result: dict, base_ref: str, model_ref: str, plots: list[str], examples: list[dict],
                    shots: list[dict]) -> str:
    v = result["verdict"]
    lines = [f"# Evaluation ({result['task']}, {result['split']} split: {result['n']} rows)", "",
             f"- base model: `{base_ref}`", f"- fine-tuned model: `{model_ref}`",
             f"- rows: prep's `{result['split']}.jsonl` only, {result['n']} of them (never validation.jsonl, which "
             "finetune used to pick its checkpoint)"]
    if shots:
        labels = ", ".join(sorted({str(s.get("label") or s["completion"].strip()) for s in shots}))
        lines.append(f"- k-shot prompt: {len(shots)} examples from train.jsonl (seed {result['k_shot_seed']}; "
                     f"{labels}), each `prompt + completion` and a newline, then the test prompt")
    else:
        lines.append("- k-shot prompt: none (--k_shot 0)")
    lines += ["", "## Fine-tune or prompt?", ""] + comparison_table(result) + [
        "",
        "95 % intervals: accuracy — Wilson score interval; macro-F1 and ROUGE-L — percentile bootstrap over the "
        "rows (1000 resamples, seed 0). Latency and generated tokens/s: the first "
        f"{result['variants']['finetuned']['latency_samples']} test prompts sent one at a time (batch size 1, after "
        "one warm-up), greedy, up to max_new_tokens; prompt tokens: mean over all rows."]
    if "onnx" in result["variants"]:
        o = result["variants"]["onnx"]
        speed = o.get("speed") or {}
        lines.append(f"ONNX: copied from optimize_report.json (its own {o['n']} rows, split "
                     f"{o['split'] or 'not stated'}); its tokens/s is optimize's decode speed at batch size "
                     f"{speed.get('batch_size', 1)} with {speed.get('new_tokens', '?')} forced new tokens.")
    keys = QUALITY[result["task"]]
    lines += ["", "| metric | base (zero-shot) | fine-tuned | difference |", "|---|---|---|---|"]
    lines += [f"| {k} | {result['base'][k]:.4f} | {result['finetuned'][k]:.4f} | {result['delta'][k]:+.4f} |"
              for k in keys]
    warn = result["overfitting"]
    lines += ["", f"**Over-fitting: {'WARNING' if warn['warning'] else 'no warning'}** — {warn['detail']}", ""]
    lines += [f"![{name}]({name})" for name in plots]
    use = result["resources"]
    gpu = (f", peak GPU memory {', '.join(f'{m:,.0f}' for m in use['gpu_peak_memory_mb'])} MB"
           if use.get("gpu_peak_memory_mb") else "")
    lines += ["", f"Resources (this step): peak RSS {use['peak_rss_mb']:,.0f} MB, mean CPU "
              f"{use['mean_cpu_percent']:.0f} % (100 % = one core; {use['cpu_count']} cores), {use['wall_s']:.1f} s"
              f"{gpu}; CPU, memory and GPU over time are the MLflow run's system metrics."]
    columns = ["base"] + (["k-shot"] if shots else []) + ["fine-tuned"]
    lines += ["", "## Examples", "", "| prompt (end) | reference | " + " | ".join(columns) + " |",
              "|---" * (len(columns) + 2) + "|"]

    def cell(text):
        return text.replace("|", "\\|").replace("\n", " ")[-60:]

    for e in examples:
        lines.append(f"| {cell(e['prompt'])} | {cell(e['reference'])} | "
                     + " | ".join(cell(e[c]) for c in columns) + " |")
    name = METRIC_NAMES[v["metric"]]
    cost = (f"{v['training_cost']:.4f} ({v['train_seconds']:.1f} s at {v['compute_price_per_hour']} per hour)"
            if v["training_cost"] is not None else
            "not priced (--compute_price_per_hour 0)" if v["compute_price_per_hour"] <= 0 else
            "unknown (no train_seconds in finetune's train_summary.json)")
    lines += ["", "## Verdict", "", f"**{v['text']}**", "",
              f"- {name}: fine-tuned {v['finetuned']:.3f} ({v['finetuned_ci'][0]:.3f}–{v['finetuned_ci'][1]:.3f}) vs "
              f"best prompt baseline `{v['best_prompt_baseline']}` {v['baseline']:.3f} ({v['baseline_ci'][0]:.3f}–"
              f"{v['baseline_ci'][1]:.3f}): {100 * v['gain']:+.1f} points; significant "
              f"({v['significance_test']}): {'yes' if v['significant'] else 'no'}",
              f"- prompt tokens saved per request (k-shot − fine-tuned): "
              f"{_num(v['prompt_tokens_saved_per_request'], '.1f')}",
              f"- training cost: {cost}" + (f"; resumed from {v['resumed_from']}: counts the last attempt only"
                                            if v["resumed_from"] else ""),
              f"- break-even: {v['break_even_requests']:,} requests at {v['price_per_1k_tokens']} per 1,000 prompt "
              "tokens" if v["break_even_requests"] is not None else
              f"- break-even: n/a (needs a training cost, tokens saved > 0 and a token price; price per 1,000 prompt "
              f"tokens {v['price_per_1k_tokens']})"]
    return "\n".join(lines) + "\n"


def flat_metrics(result: dict) -> dict:
    """Scalars for MLflow: `<variant>_<metric>`, the CIs as `_ci_low/_ci_high`, the legacy `base_*`,
    `finetuned_*`, `delta_*`, and `verdict_*`."""
    flat = {}
    for prefix, values in [*result["variants"].items(), ("base", result["base"]), ("finetuned", result["finetuned"]),
                           ("delta", result["delta"]), ("verdict", result["verdict"])]:
        for key, value in values.items():
            if isinstance(value, list) and len(value) == 2 and key.endswith("_ci"):
                flat[f"{prefix}_{key}_low"], flat[f"{prefix}_{key}_high"] = value
            elif isinstance(value, (int, float)):
                flat[f"{prefix}_{key}"] = float(value)
    return flat


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    inputs = validate(args)
    threads.apply()
    usage = resources.start()
    bars = progress.Progress()  # before loading: outside a terminal the libraries' tqdm bars are switched off
    rows = inputs.rows
    base_ref = args.base_model or args.base_model_id
    special = models.load_tokenizer(args.model).all_special_tokens
    references = [generation.reference(r, args.task, special) for r in rows]
    prompts = [r["prompt"] for r in rows]
    key = (lambda r: generation.reference(r, "classification", special)) if args.task == "classification" else None
    shots = kshot_examples(inputs.train_rows, args.k_shot, args.k_shot_seed, key)
    summary = inputs.train_summary or {}
    train_seconds = summary.get("train_seconds") if isinstance(summary.get("train_seconds"), (int, float)) else None

    with bars, tracking.step_run():
        tracking.log_params({"task": args.task, "split": SPLIT, "n": len(rows), "k_shot": len(shots),
                             "k_shot_seed": args.k_shot_seed, "max_new_tokens": args.max_new_tokens,
                             "compute_price_per_hour": args.compute_price_per_hour,
                             "price_per_1k_tokens": args.price_per_1k_tokens, "base_model": base_ref,
                             "model": args.model})
        variants, predictions = {}, {}
        model, tokenizer = load(base_ref)
        variants["base_zero_shot"], predictions["base"] = score(model, tokenizer, "base, zero-shot", prompts,
                                                                references, args, rows, bars)
        if shots:
            kshot_prompts = [kshot_prompt(shots, p) for p in prompts]
            check_fits(model, tokenizer, kshot_prompts, args)
            nll_rows = None
            if args.task == "generation":  # the same completion tokens, after the tokenized k-shot prompt
                encoded = [generation.torch_encode(tokenizer, p) for p in kshot_prompts]
                nll_rows = [{"input_ids": ids + r["input_ids"][r["prompt_length"]:], "prompt_length": len(ids)}
                            for ids, r in zip(encoded, rows)]
            variants["base_k_shot"], predictions["k-shot"] = score(model, tokenizer, f"base, {len(shots)}-shot",
                                                                   kshot_prompts, references, args, nll_rows, bars)
        del model
        model, tokenizer = load(args.model)
        variants["finetuned"], predictions["fine-tuned"] = score(model, tokenizer, "fine-tuned", prompts,
                                                                 references, args, rows, bars)
        del model
        if inputs.optimize is not None:
            variants["onnx"] = onnx_variant(inputs.optimize, args.task)

        base, tuned = variants["base_zero_shot"], variants["finetuned"]
        result = {
            "task": args.task, "split": SPLIT, "n": len(rows), "k_shot": len(shots), "k_shot_seed": args.k_shot_seed,
            "base": base, "finetuned": tuned, "delta": {k: tuned[k] - base[k] for k in QUALITY[args.task]},
            "variants": variants,
            "verdict": verdict(args.task, variants, train_seconds=train_seconds,
                               resumed_from=summary.get("resumed_from"),
                               compute_price_per_hour=args.compute_price_per_hour,
                               price_per_1k_tokens=args.price_per_1k_tokens),
            "overfitting": overfitting(inputs.history) if args.train_metrics else
            {"warning": False, "detail": "no --train_metrics given; over-fitting not checked"},
        }
        result["resources"] = resources.summary(usage)
        examples = [{"prompt": r["prompt"], "reference": ref, **{k: p[i] for k, p in predictions.items()}}
                    for i, (r, ref) in enumerate(zip(rows, references))][:EXAMPLES_IN_REPORT]

        with atomic_dir(args.metrics) as out:
            plots = []
            if inputs.history:
                plot_losses(out / "loss_curves.png", inputs.history)
                plots.append("loss_curves.png")
            if args.task == "classification":
                for which, name in [("base_zero_shot", "base"), ("base_k_shot", "base_k_shot"),
                                    ("finetuned", "finetuned")]:
                    if which in variants:
                        v = variants[which]
                        plot_confusion(out / f"confusion_matrix_{name}.png", v["labels"], v["confusion_matrix"],
                                       f"{v['label']} (accuracy {v['accuracy']:.3f})")
                        plots.append(f"confusion_matrix_{name}.png")
            write_json(out / "metrics.json", result)
            (out / "report.md").write_text(report_markdown(result, base_ref, args.model, plots, examples, shots))

        tracking.log_metrics({**flat_metrics(result), "overfitting_warning": int(result["overfitting"]["warning"]),
                              **{k: result["resources"][k] for k in ("peak_rss_mb", "mean_cpu_percent")}})
        tracking.set_tags({"verdict": result["verdict"]["text"]})
        tracking.log_artifacts(args.metrics, "evaluation")
    summary_text = ", ".join(f"{v['label']} {v[VERDICT_METRIC[args.task]]:.3f}" for v in variants.values()
                             if v.get(VERDICT_METRIC[args.task]) is not None)
    print(f"evaluate ({args.task}, {SPLIT} split, {len(rows)} rows): {summary_text}")
    print(result["verdict"]["text"])
    if result["overfitting"]["warning"]:
        print("WARNING: " + result["overfitting"]["detail"])
    return result


if __name__ == "__main__":
    run_main(main)
