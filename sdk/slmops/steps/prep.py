"""prep: turn raw data into tokenized train/validation/test examples for fine-tuning, or say exactly what is wrong.

    python -m slmops.steps.prep --data tone.jsonl --base_model ./tiny-llama \\
        --template '<|user|>\\nWhat is the tone of this phrase? {phrase}<|end|>\\n<|assistant|>\\n{tone}' \\
        --label_column tone --output_data ./prepared

Input: one of --data (a .jsonl/.json/.csv/.parquet file), --data_dir (a folder of them) or --dataset_name (a
Hugging Face dataset; --dataset_split takes slices such as 'train[:4096]' or 'train[:10%]', and slices the
rows of local data the same way). Format: --format template (text up to the last {field} is the prompt, the
rest the completion), chat (--template fills the user turn, --completion_column is the answer, rendered with the
base model's chat template, optionally after --system_prompt), prompt_completion (two columns) or messages (chat
turns rendered with the base model's chat template). The base model's tokenizer (--base_model folder or
--base_model_id hub id) tokenizes.

Steps, in order: load -> render -> drop exact duplicates -> tokenize (prompt + completion + eos) -> check ->
hold out test (--test_fraction, or all rows of a separate --test_data file) and validation (--validation_fraction),
both stratified by --label_column -> write. finetune trains on train and selects on validation; evaluate,
optimize and the register gate score test only, rows no training or selection step saw. Every problem in the data
(file, line, field) is reported at once and nothing is written (exit 2). Output folder: train.jsonl,
validation.jsonl, test.jsonl, data_report.json (see docs/data.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from slmops import contract, data, tracking
from slmops.contract import Component, Input, Output
from slmops.errors import UserError, run_main
from slmops.io import atomic_dir, write_json
from slmops.models import load_tokenizer

MIN_EXAMPLES = 10


SOURCE = "data source (exactly one)"
MODEL = "base model whose tokenizer is used (exactly one)"
FORMAT = "format"
CONTRACT = Component(
    name="prep", display_name="slmops: prepare data",
    description="Load a local JSON/JSONL/CSV/Parquet file or folder, or a Hugging Face dataset split (train[:4096]); "
                "render a text template, prompt/completion columns or chat messages; drop duplicates; hold out a "
                "(stratified) validation and test split (or take a separate test file); tokenize with the base model's "
                "tokenizer; reject bad rows naming file, line and field. Writes train.jsonl, validation.jsonl, "
                "test.jsonl and data_report.json.",
    inputs=[
        Input("data", "uri_file", "A local JSON (array of records), JSONL, CSV or Parquet file.",
              optional=True, group=SOURCE),
        Input("data_dir", "uri_folder", "A folder of JSON/JSONL/CSV/Parquet files (read recursively, sorted by path; "
              "hidden files ignored).", optional=True, group=SOURCE),
        Input("dataset_name", "string", "A Hugging Face dataset name (needs the network or the HF cache).",
              optional=True, group=SOURCE),
        Input("dataset_split", "string", "Split with optional slice, e.g. train[:4096], train[4096:4224], "
              "train[:10%]. Local data is one split named train, sliced the same way.",
              default="train", quote='"', group=SOURCE),
        Input("base_model", "custom_model", "Base model folder (Hugging Face or MLflow layout); its tokenizer is used.",
              optional=True, group=MODEL),
        Input("base_model_id", "string", "Base model hub id, e.g. microsoft/Phi-3.5-mini-instruct (give this or "
              "base_model, not both).", optional=True, group=MODEL),
        Input("format", "string", "template ({field} placeholders), chat (--template is the user turn, "
              "--completion_column the answer, both rendered with the base model's chat template), "
              "prompt_completion (two columns) or messages (chat turns rendered with the base model's chat "
              "template).", default="template", enum=data.FORMATS, group=FORMAT),
        Input("template", "string", "Text with {field} placeholders. Format template: the last placeholder starts "
              "the completion. Format chat: the whole text is the user turn. The two characters \\n and \\t are "
              "read as newline and tab. The command line quotes it with single quotes, so it cannot contain one "
              "(write ’ or use prompt_completion).", optional=True, quote="'", group=FORMAT),
        Input("system_prompt", "string", "A system turn before the user turn (format chat); without it the chat "
              "template's own default applies.", optional=True, quote="'", group=FORMAT),
        Input("prompt_column", "string", "Prompt column (format prompt_completion).", default="prompt", group=FORMAT),
        Input("completion_column", "string", "Completion column (formats prompt_completion and chat).",
              default="completion", group=FORMAT),
        Input("messages_column", "string", "Column of [{role, content}] turns ending with the assistant's answer "
              "(format messages).", default="messages", group=FORMAT),
        Input("label_column", "string", "Column holding the class label: stratifies the split and is kept as "
              "label for classification metrics.", optional=True, group=FORMAT),
        Input("validation_fraction", "number", "Share of all rows held out for validation: finetune's evaluation, "
              "early stopping and checkpoint choice (stratified by label_column when given).",
              default=0.1, min=0.0, max=0.5),
        Input("test_fraction", "number", "Share of all rows held out for test: what evaluate, optimize and the "
              "register gate score (stratified by label_column when given). Ignored with test_data.",
              default=0.1, min=0.0, max=0.5),
        Input("test_data", "uri_file", "A separate test file (same columns and format as the data): all its rows "
              "are the test split, and training rows whose prompt equals a test prompt are dropped.",
              optional=True),
        Input("max_seq_len", "integer", "Longest example in tokens (prompt + completion + eos).", default=512, min=8),
        Input("on_too_long", "string", "Longer examples fail the step (error), or lose the start of the prompt, "
              "then the end of the completion if it alone does not fit (truncate).",
              default="error", enum=["error", "truncate"]),
        Input("max_rows", "integer", "Use only the first N rows after the split slice (0 = all).", default=0, min=0),
        Input("seed", "integer", "Seed of the validation and test hold-outs.", default=42),
    ],
    outputs=[Output("output_data", "train.jsonl, validation.jsonl, test.jsonl, data_report.json")],
)


def build_parser() -> argparse.ArgumentParser:
    return contract.parser(CONTRACT, doc=__doc__)


def check_args(args: argparse.Namespace) -> list[str]:
    """Every problem with the arguments themselves (before any data is read): the contract's enum/min/max
    checks, then what involves several flags or the disk."""
    problems = contract.check_values(CONTRACT, args)
    sources = [f"--{k}" for k in ("data", "data_dir", "dataset_name") if getattr(args, k)]
    if len(sources) != 1:
        problems.append(f"give exactly one of --data, --data_dir, --dataset_name (got {sources or 'none'})")
    if args.data and not Path(args.data).is_file():
        problems.append(f"--data {args.data!r} is not a file; pass a .jsonl, .json, .csv or .parquet file "
                        "(or a folder with --data_dir)")
    elif args.data and Path(args.data).suffix.lower() not in data.SUFFIXES:
        problems.append(f"--data {args.data!r} has an unsupported type {Path(args.data).suffix!r}; use "
                        ".jsonl, .json, .csv or .parquet")
    if args.data_dir and not Path(args.data_dir).is_dir():
        problems.append(f"--data_dir {args.data_dir!r} is not a folder; pass a folder of data files "
                        "(or a single file with --data)")
    if split_problem := data.check_split(args.dataset_split, local=not args.dataset_name):
        problems.append(split_problem)
    models = [f"--{k}" for k in ("base_model", "base_model_id") if getattr(args, k)]
    if len(models) != 1:
        problems.append(f"give exactly one of --base_model, --base_model_id (got {models or 'none'})")
    if args.format in ("template", "chat"):
        example = ("'<|user|>\\n{question}<|end|>\\n<|assistant|>\\n{answer}'" if args.format == "template"
                   else "'What is the tone of this phrase? {phrase}'")
        if not args.template:
            problems.append(f"--format {args.format} needs --template, e.g. {example}")
        elif (template_problem := data.template_fields(data.unescape(args.template))[1]) is not None:
            problems.append(template_problem)
    elif args.template:
        problems.append(f"--template is only used with --format template or chat (got --format {args.format}); "
                        "drop one of them")
    if args.system_prompt and args.format != "chat":
        problems.append(f"--system_prompt is only used with --format chat (got --format {args.format})")
    if args.test_data and not Path(args.test_data).is_file():
        problems.append(f"--test_data {args.test_data!r} is not a file; pass a .jsonl, .json, .csv or .parquet file")
    if args.validation_fraction + (0 if args.test_data else args.test_fraction) >= 0.9:
        problems.append(f"--validation_fraction {args.validation_fraction} + --test_fraction {args.test_fraction} "
                        "leave less than 10 % of the rows to train on; lower them")
    return problems


def needed_columns(args: argparse.Namespace, template: str | None) -> dict[str, str]:
    """The data columns the arguments name, each with the flag that names it."""
    if args.format == "template":
        needed = {field: "--template" for field in data.template_fields(template)[0]}
    elif args.format == "chat":
        needed = {field: "--template" for field in data.template_fields(template)[0]}
        needed.setdefault(args.completion_column, "--completion_column")
    elif args.format == "prompt_completion":
        needed = {args.prompt_column: "--prompt_column", args.completion_column: "--completion_column"}
    else:
        needed = {args.messages_column: "--messages_column"}
    if args.label_column:
        needed.setdefault(args.label_column, "--label_column")
    return needed


def render(args: argparse.Namespace, rows: list, template: str | None, tokenizer) -> tuple[list, list[str]]:
    """The rows as examples (prompt, completion, label) in the chosen --format."""
    if args.format == "template":
        return data.render_template(rows, template, args.label_column)
    if args.format == "chat":
        system = data.unescape(args.system_prompt) if args.system_prompt else None
        return data.render_chat(rows, template, args.completion_column, system, args.label_column, tokenizer)
    if args.format == "prompt_completion":
        return data.render_prompt_completion(rows, args.prompt_column, args.completion_column, args.label_column)
    return data.render_messages(rows, args.messages_column, args.label_column, tokenizer)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    problems = check_args(args)
    if problems:
        raise UserError("prep: invalid arguments", problems=problems)
    template = data.unescape(args.template) if args.template else None
    tokenizer = load_tokenizer(args.base_model or args.base_model_id)
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer of {args.base_model or args.base_model_id!r} has no eos token; "
                        "use a causal LM tokenizer that defines one")
    if args.format in ("messages", "chat") and not tokenizer.chat_template:
        raise UserError(f"--format {args.format} needs a chat template, and the tokenizer of "
                        f"{args.base_model or args.base_model_id!r} has none; use --format template instead")

    # Load.
    skipped: list[str] = []
    if args.dataset_name:
        rows, problems = data.load_hub(args.dataset_name, args.dataset_split), []
    else:
        rows, problems, skipped = data.load_local(Path(args.data or args.data_dir), args.dataset_split)
    if not rows and problems:
        raise UserError("prep: no data could be read; nothing was written", problems=data.cap(problems))
    if args.max_rows:
        rows = rows[:args.max_rows]
    sha256 = data.content_hash(rows)
    if absent := data.absent_columns(rows, needed_columns(args, template)):
        raise UserError("prep: the data does not have the columns the arguments name; nothing was written",
                        problems=data.cap(problems + absent))

    # Render (and the separate test file, the same way).
    examples, render_problems = render(args, rows, template, tokenizer)
    problems += render_problems
    test_examples, test_rows, test_duplicates, leaked = None, 0, 0, 0
    if args.test_data:
        raw_test, test_problems, _ = data.load_local(Path(args.test_data), "train")
        test_rows = len(raw_test)
        if absent := data.absent_columns(raw_test, needed_columns(args, template)):
            test_problems += absent
        else:
            test_examples, render_problems = render(args, raw_test, template, tokenizer)
            test_problems += render_problems
            test_examples, test_duplicates = data.drop_duplicates(test_examples)
            test_prompts = {e.prompt for e in test_examples}
            leaked = sum(e.prompt in test_prompts for e in examples)
            examples = [e for e in examples if e.prompt not in test_prompts]   # no test prompt is trained on
        problems += [f"--test_data: {p}" for p in test_problems]

    # Drop exact duplicates, tokenize, check.
    examples, duplicates = data.drop_duplicates(examples)
    n_main = len(examples)
    tokenized, length_problems = data.tokenize(
        examples + (test_examples or []), tokenizer, max_seq_len=args.max_seq_len,
        truncate=args.on_too_long == "truncate",
        add_special_tokens=args.format not in ("messages", "chat"))  # a chat template writes its own special tokens
    problems += length_problems
    if test_examples is not None and not test_examples and not test_problems:
        problems.append(f"--test_data {args.test_data!r} holds no usable rows")
    if len(examples) < MIN_EXAMPLES:
        problems.append(f"only {len(examples)} usable examples after dropping {duplicates} duplicates "
                        f"(from {len(rows)} rows); at least {MIN_EXAMPLES} are needed")
    if problems:
        raise UserError(f"prep: {len(problems)} problem{'s' if len(problems) > 1 else ''} in the data; nothing "
                        "was written",
                        problems=data.cap(problems))

    # Hold out test (unless a test file gives it) and validation.
    labels = [e.label for e in examples]
    stratify = args.label_column is not None
    if test_examples is None:
        train_idx, val_idx, test_idx = data.split_three(labels, args.validation_fraction, args.test_fraction,
                                                        args.seed, stratify)
    else:
        train_idx, val_idx = data.split_indices(labels, args.validation_fraction, args.seed, stratify)
        examples = examples + test_examples
        labels = [e.label for e in examples]
        test_idx = list(range(n_main, len(examples)))
    splits = {"train": train_idx, "validation": val_idx, "test": test_idx}

    # Write.
    report = {
        "source": {"data": args.data, "data_dir": args.data_dir, "dataset_name": args.dataset_name,
                   "dataset_split": args.dataset_split, "max_rows": args.max_rows, "files_skipped": skipped},
        "sha256": sha256,
        "base_model": args.base_model or args.base_model_id,
        "tokenizer": tokenizer.name_or_path,
        "format": args.format,
        "template": template,
        "label_column": args.label_column,
        "max_seq_len": args.max_seq_len,
        "on_too_long": args.on_too_long,
        "validation_fraction": args.validation_fraction,
        "test_fraction": None if args.test_data else args.test_fraction,
        "test_data": args.test_data,
        "seed": args.seed,
        "rows": {"raw": len(rows), "duplicates_dropped": duplicates, "examples": len(examples),
                 "train": len(train_idx), "validation": len(val_idx), "test": len(test_idx),
                 **({"test_raw": test_rows, "test_duplicates_dropped": test_duplicates,
                     "train_rows_dropped_as_test_prompts": leaked} if args.test_data else {})},
        "truncated": {"prompt": sum(t.truncated == "prompt" for t in tokenized),
                      "completion": sum(t.truncated == "completion" for t in tokenized)},
        "token_lengths": {
            "all": data.length_stats([len(t.input_ids) for t in tokenized]),
            **{name: data.length_stats([len(tokenized[i].input_ids) for i in idx]) for name, idx in splits.items()},
        },
        "labels": {name: data.label_counts([labels[i] for i in idx]) for name, idx in splits.items()},
    }
    with atomic_dir(args.output_data) as out:
        for name, indices in splits.items():
            with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
                for i in indices:
                    e, t = examples[i], tokenized[i]
                    f.write(json.dumps({"prompt": t.prompt, "completion": e.completion, "label": e.label,
                                        "input_ids": t.input_ids, "prompt_length": t.prompt_length},
                                       ensure_ascii=False) + "\n")
        write_json(out / "data_report.json", report)

    with tracking.step_run():
        tracking.log_params({k: v for k, v in vars(args).items() if v is not None})
        tracking.log_metrics({f"rows_{k}": v for k, v in report["rows"].items()})
        tracking.log_metrics({f"truncated_{k}": v for k, v in report["truncated"].items()})
        tracking.log_metrics({f"tokens_{k}": v for k, v in report["token_lengths"]["all"].items()})
        tracking.set_tags({"data_sha256": sha256})
        tracking.log_artifact(Path(args.output_data) / "data_report.json")
    rows_ = report["rows"]
    print(f"prep: {rows_['raw']} rows -> {rows_['examples']} examples ({duplicates} duplicates dropped) -> "
          f"train {rows_['train']}, validation {rows_['validation']}, test {rows_['test']}; tokens p95 "
          f"{report['token_lengths']['all']['p95']}, max {report['token_lengths']['all']['max']}; "
          f"written to {args.output_data}")
    return report


if __name__ == "__main__":
    run_main(main)
