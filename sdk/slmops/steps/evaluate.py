"""evaluate: score the base model and the fine-tuned model on the same held-out data, and report the difference.

    python -m slmops.steps.evaluate --test_data prep_out/ --model finetune_model/ --base_model base/ \\
        --train_metrics finetune_metrics/ --task classification --metrics eval_out/

- classification: greedy completion (stripped) vs the row's label -> accuracy, macro-F1, confusion matrix
  over the labels seen in the data;
- generation: perplexity on the completion tokens (prep's `input_ids[prompt_length:]`), BLEU and ROUGE-L of
  the greedy completion against the reference completion.
Over-fitting: warns when the validation loss in finetune's `train_history.json` ended more than 1 % above its
best while the training loss fell over the same steps.
Writes `metrics.json` (schema in docs/architecture.md), `report.md` and PNG plots to `--metrics`, and logs the
metrics and those files to MLflow.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from slmops import contract, generation, metrics, models, tracking
from slmops.contract import Component, Input, Output
from slmops.errors import UserError, run_main
from slmops.io import atomic_dir, write_json

TASKS = ["classification", "generation"]
OVERFIT_TOLERANCE = 0.01  # validation loss must end > 1 % above its best to count as rising
EXAMPLES_IN_REPORT = 5


CONTRACT = Component(
    name="evaluate", display_name="slmops: evaluate base vs fine-tuned",
    description="Score the base and the fine-tuned model on the same held-out data: classification (accuracy, "
                "macro-F1, confusion matrix) or generation (perplexity, BLEU, ROUGE-L); report the difference and "
                "warn of over-fitting. Writes metrics.json and report.md with PNG plots; logs them to MLflow.",
    inputs=[
        Input("test_data", "uri_folder", "prep's output_data (validation.jsonl is scored)."),
        Input("model", "mlflow_model", "The fine-tuned model (finetune's model output): MLflow model folder, "
              "Hugging Face folder or adapter."),
        Input("base_model", "custom_model", "The base model folder (Hugging Face or MLflow layout); or give "
              "base_model_id.", optional=True),
        Input("base_model_id", "string", "The base model as a Hugging Face hub id; or give base_model.",
              optional=True),
        Input("train_metrics", "uri_folder", "finetune's metrics output (train_history.json: loss curves, "
              "over-fitting check).", optional=True),
        Input("task", "string", "Which metrics to compute.", default="classification", enum=TASKS),
        Input("max_new_tokens", "integer", "Greedy decoding length limit.", default=16, min=1),
        Input("max_samples", "integer", "Score at most N examples (0 = all).", default=0, min=0),
        Input("batch_size", "integer", "Prompts per generate/forward call.", default=16, min=1),
    ],
    outputs=[Output("metrics", "metrics.json, report.md, PNG plots")],
)


def build_parser() -> argparse.ArgumentParser:
    return contract.parser(CONTRACT, doc=__doc__)


def validate(args) -> tuple[list[dict], list[dict]]:
    """Check every argument and read the inputs; raise one UserError listing every problem.
    Returns (held-out rows, train history; [] when --train_metrics is not given)."""
    problems = contract.check_values(CONTRACT, args)  # enum, min/max
    if bool(args.base_model) == bool(args.base_model_id):
        problems.append("pass exactly one of --base_model (a folder) and --base_model_id (a hub id); "
                        f"got base_model={args.base_model!r}, base_model_id={args.base_model_id!r}")
    for flag, ref in [("--model", args.model), ("--base_model", args.base_model or args.base_model_id)]:
        try:
            if ref:
                models.resolve(ref)
        except UserError as exc:
            problems.append(f"{flag}: {exc}")
    rows = []
    try:
        rows = generation.read_examples(args.test_data, args.max_samples,
                                        need_input_ids=args.task == "generation")
    except UserError as exc:
        problems.append(f"--test_data: {exc}")
    history = []
    if args.train_metrics:
        path = Path(args.train_metrics) / "train_history.json"
        try:
            history = json.loads(path.read_text())
            if not isinstance(history, list) or not all(isinstance(h, dict) and "step" in h for h in history):
                problems.append(f"--train_metrics: {path} must hold a JSON list of step records "
                                "({\"step\": ..., \"loss\" or \"eval_loss\": ...}); pass finetune's metrics output")
                history = []
        except FileNotFoundError:
            problems.append(f"--train_metrics: no train_history.json in {args.train_metrics!r}; "
                            "pass finetune's metrics output or leave the option out")
        except json.JSONDecodeError as exc:
            problems.append(f"--train_metrics: {path} is not valid JSON ({exc.msg})")
    if problems:
        raise UserError("evaluate: invalid arguments", problems=problems)
    return rows, history


def completion_nll(model, rows: list[dict], batch_size: int) -> tuple[float, int]:
    """Summed negative log-likelihood of the completion tokens (`input_ids[prompt_length:]`) and their count."""
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
    return nll, count


def score(model_ref: str, rows: list[dict], references: list[str], args) -> tuple[dict, list[str]]:
    """Load one model and compute the task's metrics on `rows`. Returns (metrics, predictions)."""
    import torch

    tokenizer = models.load_tokenizer(model_ref)
    model = models.load_causal_lm(model_ref, dtype=torch.float32, merge_adapter=True).eval()
    if torch.cuda.is_available():  # a GPU compute target; CPU otherwise
        model = model.to("cuda")
    prompts = [r["prompt"] for r in rows]
    predictions = generation.torch_complete(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                            batch_size=args.batch_size)
    if args.task == "classification":
        return metrics.classification(predictions, references), predictions
    nll, n_tokens = completion_nll(model, rows, args.batch_size)
    result = {
        "perplexity": metrics.perplexity(nll, n_tokens),
        "bleu": metrics.bleu(predictions, references),
        "rouge_l": metrics.rouge_l(predictions, references),
    }
    return result, predictions


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


def report_markdown(result: dict, base_ref: str, model_ref: str, plots: list[str], examples: list[dict]) -> str:
    keys = [k for k, v in result["finetuned"].items() if isinstance(v, (int, float))]
    lines = [f"# Evaluation ({result['task']}, {result['n']} held-out examples)", "",
             f"- base model: `{base_ref}`", f"- fine-tuned model: `{model_ref}`", "",
             "| metric | base | fine-tuned | difference |", "|---|---|---|---|"]
    lines += [f"| {k} | {result['base'][k]:.4f} | {result['finetuned'][k]:.4f} | {result['delta'][k]:+.4f} |"
              for k in keys]
    warn = result["overfitting"]
    lines += ["", f"**Over-fitting: {'WARNING' if warn['warning'] else 'no warning'}** — {warn['detail']}", ""]
    lines += [f"![{name}]({name})" for name in plots]
    lines += ["", "## Examples", "", "| prompt (end) | reference | base | fine-tuned |", "|---|---|---|---|"]

    def cell(text):
        return text.replace("|", "\\|").replace("\n", " ")[-60:]

    lines += [f"| {cell(e['prompt'])} | {cell(e['reference'])} | {cell(e['base'])} | {cell(e['finetuned'])} |"
              for e in examples]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    rows, history = validate(args)
    base_ref = args.base_model or args.base_model_id
    special = models.load_tokenizer(args.model).all_special_tokens
    references = [generation.reference(r, args.task, special) for r in rows]

    with tracking.step_run():
        tracking.log_params({"task": args.task, "n": len(rows), "max_new_tokens": args.max_new_tokens,
                             "base_model": base_ref, "model": args.model})
        base, base_predictions = score(base_ref, rows, references, args)
        tuned, tuned_predictions = score(args.model, rows, references, args)
        delta = {k: tuned[k] - base[k] for k, v in tuned.items() if isinstance(v, (int, float))}
        result = {"task": args.task, "n": len(rows), "base": base, "finetuned": tuned, "delta": delta,
                  "overfitting": overfitting(history) if args.train_metrics else
                  {"warning": False, "detail": "no --train_metrics given; over-fitting not checked"}}
        examples = [{"prompt": r["prompt"], "reference": ref, "base": b, "finetuned": t} for r, ref, b, t in
                    zip(rows, references, base_predictions, tuned_predictions)][:EXAMPLES_IN_REPORT]

        with atomic_dir(args.metrics) as out:
            plots = []
            if history:
                plot_losses(out / "loss_curves.png", history)
                plots.append("loss_curves.png")
            if args.task == "classification":
                for which in ["base", "finetuned"]:
                    name = f"confusion_matrix_{which}.png"
                    plot_confusion(out / name, result[which]["labels"], result[which]["confusion_matrix"],
                                   f"{which} (accuracy {result[which]['accuracy']:.3f})")
                    plots.append(name)
            write_json(out / "metrics.json", result)
            (out / "report.md").write_text(report_markdown(result, base_ref, args.model, plots, examples))

        flat = {f"{which}_{k}": v for which in ["base", "finetuned", "delta"] for k, v in result[which].items()}
        tracking.log_metrics({**flat, "overfitting_warning": int(result["overfitting"]["warning"])})
        tracking.log_artifacts(args.metrics, "evaluation")
    summary = ", ".join(f"{k} {base[k]:.3f} -> {tuned[k]:.3f}" for k in delta)
    print(f"evaluate ({args.task}, {len(rows)} examples, base -> fine-tuned): {summary}")
    if result["overfitting"]["warning"]:
        print("WARNING: " + result["overfitting"]["detail"])
    return result


if __name__ == "__main__":
    run_main(main)
