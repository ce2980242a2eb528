"""optimize: build an ONNX Runtime GenAI model from the merged model and measure it against PyTorch.

    python -m slmops.steps.optimize --model finetune_model/ --test_data prep_out/ --precision int4 \\
        --execution_provider cpu --onnx_model onnx_out/ --report report_out/

1. Build with ORT GenAI's model builder (`python -m onnxruntime_genai.models.builder -i <hf dir> -o <out>
   -p <precision> -e <provider> -c <cache>`, run as a subprocess with its output captured) from the model's
   local Hugging Face folder; the tokenizer files and chat template are copied beside it so `og.Tokenizer`
   and serving work from that folder alone.
2. Task accuracy on the held-out data (greedy, batched) with ORT GenAI and with PyTorch on the same merged
   model; for `generation` the score is ROUGE-L (`accuracy_metric` says which).
3. Decode speed: `speed_prompts` prompts one at a time x exactly `speed_tokens` new tokens (greedy, the
   end-of-sequence token suppressed until then), the two runtimes taking turns prompt by prompt after one
   warm-up prompt each (on a shared machine both see the same load).
Writes the ORT GenAI model folder to `--onnx_model` and `optimize_report.json` to `--report`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slmops import contract, generation, metrics, models, tracking
from slmops.contract import Component, Input, Output
from slmops.errors import UserError, run_main
from slmops.io import atomic_dir, write_json

PRECISIONS = ["fp32", "int8", "int4"]
PROVIDERS = ["cpu", "cuda", "dml"]
TASKS = ["classification", "generation"]
BATCH_SIZE = 16  # prompts per generation call when measuring accuracy
# The runtime a provider needs, and how to get it (pyproject extras).
PROVIDER_RUNTIME = {
    "cuda": ("is_cuda_available", "pip install 'slmops[cuda]' (onnxruntime-genai-cuda, Linux with an NVIDIA GPU)"),
    "dml": ("is_dml_available", "pip install 'slmops[directml]' (onnxruntime-genai-directml; Windows only)"),
}
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json"]


CONTRACT = Component(
    name="optimize", display_name="slmops: optimize for ONNX Runtime GenAI",
    description="Build an ONNX Runtime GenAI model (fp32/int8/int4 for cpu/cuda/dml) from the merged model with ORT "
                "GenAI's model builder; re-measure task accuracy with ORT GenAI on held-out data and decode tokens/s "
                "against PyTorch generate in the same run. Writes the model folder and optimize_report.json.",
    inputs=[
        Input("model", "mlflow_model", "The merged model (finetune's model output): MLflow model folder or Hugging "
              "Face folder."),
        Input("test_data", "uri_folder", "prep's output_data (test.jsonl is scored, never validation.jsonl)."),
        Input("precision", "string", "ONNX weight precision.", default="int4", enum=PRECISIONS),
        Input("execution_provider", "string", "ONNX Runtime execution provider.", default="cpu", enum=PROVIDERS),
        Input("task", "string", "How accuracy is scored (generation: ROUGE-L).", default="classification",
              enum=TASKS),
        Input("max_new_tokens", "integer", "Greedy decoding length limit for accuracy.", default=16, min=1),
        Input("max_samples", "integer", "Score at most N held-out examples (0 = all).", default=200, min=0),
        Input("speed_prompts", "integer", "Prompts timed for decode speed (each runtime, taking turns).", default=5, min=1),
        Input("speed_tokens", "integer", "New tokens generated per timed prompt.", default=64, min=1),
    ],
    outputs=[
        Output("onnx_model", "The ORT GenAI model folder (with the tokenizer files)."),
        Output("report", "optimize_report.json"),
    ],
)


def build_parser() -> argparse.ArgumentParser:
    return contract.parser(CONTRACT, doc=__doc__)


def validate(args) -> tuple[models.ModelSource, list[dict]]:
    """Check every argument and read the inputs; raise one UserError listing every problem."""
    import onnxruntime_genai as og

    problems = contract.check_values(CONTRACT, args)  # enum, min/max
    if args.execution_provider in PROVIDER_RUNTIME:
        check, install = PROVIDER_RUNTIME[args.execution_provider]
        if not getattr(og, check)():
            problems.append(f"--execution_provider {args.execution_provider}: this ONNX Runtime GenAI build has no "
                            f"{args.execution_provider} support; {install}, or use --execution_provider cpu")
    source = None
    try:
        source = models.check_weights(args.model)
        if not source.is_local:
            problems.append(f"--model {args.model!r}: the model builder needs a local folder; pass finetune's "
                            "model output (or download the hub model first)")
        elif source.adapter:
            problems.append(f"--model {args.model!r} is an adapter; pass the merged model (finetune's model output)")
    except UserError as exc:
        problems.append(f"--model: {exc}")
    rows = []
    try:
        rows = generation.read_examples(args.test_data, args.max_samples)
    except UserError as exc:
        problems.append(f"--test_data: {exc}")
    if problems:
        raise UserError("optimize: invalid arguments", problems=problems)
    return source, rows


def stage_hf_folder(source: models.ModelSource, folder: Path) -> Path:
    """The builder reads weights and tokenizer from one folder: link both there (MLflow keeps them apart)."""
    folder.mkdir(parents=True)
    for src_dir in [Path(source.tokenizer), Path(source.weights)]:  # weights last: its config files win
        for f in src_dir.iterdir():
            if f.is_file():
                link = folder / f.name
                link.unlink(missing_ok=True)
                link.symlink_to(f.resolve())
    return folder


def build(hf_dir: Path, out: Path, precision: str, provider: str, cache: Path,
          extra_options: dict | None = None) -> str:
    """Run ORT GenAI's model builder (`extra_options`: its KEY=VALUE options, e.g. block_size); return its output.
    An unsupported architecture is a UserError."""
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
           "-p", precision, "-e", provider, "-c", str(cache)]
    if extra_options:
        cmd += ["--extra_options", *(f"{k}={v}" for k, v in extra_options.items())]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = "\n".join(log.strip().splitlines()[-15:])
        if "is not currently supported" in log:
            raise UserError(f"ORT GenAI's model builder does not support this model's architecture:\n{tail}")
        raise RuntimeError(f"model builder failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return log


def copy_tokenizer_files(tokenizer_dir: Path, out: Path) -> list[str]:
    """Copy the tokenizer files the builder did not write (e.g. the chat template) into the ONNX folder."""
    copied = []
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file() and not (out / name).exists():
            shutil.copy2(tokenizer_dir / name, out / name)
            copied.append(name)
    return copied


def task_score(task: str, predictions: list[str], references: list[str]) -> float:
    if task == "classification":
        return metrics.accuracy(predictions, references)
    return metrics.rouge_l(predictions, references)


def decode_speeds(generators: dict, prompts: list[str], new_tokens: int) -> dict[str, float]:
    """Tokens/s of each `generate(prompts, max_new_tokens=, min_new_tokens=, batch_size=)`, one prompt at a
    time. The runtimes take turns prompt by prompt, so both see the same load on a shared machine."""
    fixed = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "batch_size": 1}
    for generate in generators.values():
        generate(prompts[:1], **fixed)  # warm-up
    elapsed = dict.fromkeys(generators, 0.0)
    for prompt in prompts:
        for name, generate in generators.items():
            start = time.perf_counter()
            [ids] = generate([prompt], **fixed)
            elapsed[name] += time.perf_counter() - start
            if len(ids) != new_tokens:  # eos is suppressed until new_tokens, so the count is fixed
                raise RuntimeError(f"decode speed: {name} generated {len(ids)} tokens, expected {new_tokens}")
    return {name: len(prompts) * new_tokens / seconds for name, seconds in elapsed.items()}


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    source, rows = validate(args)
    import onnxruntime_genai as og
    import torch

    tokenizer = models.load_tokenizer(args.model)
    prompts = [r["prompt"] for r in rows]
    references = [generation.reference(r, args.task, tokenizer.all_special_tokens) for r in rows]
    speed_prompts = [prompts[i % len(prompts)] for i in range(args.speed_prompts)]

    with tracking.step_run():
        tracking.log_params({"precision": args.precision, "execution_provider": args.execution_provider,
                             "task": args.task, "n": len(rows), "speed_prompts": args.speed_prompts,
                             "speed_tokens": args.speed_tokens})
        with tempfile.TemporaryDirectory(prefix="slmops-optimize-") as work, \
                atomic_dir(args.onnx_model) as onnx_out, atomic_dir(args.report) as report_out:
            hf_dir = stage_hf_folder(source, Path(work, "hf"))
            started = time.perf_counter()
            build(hf_dir, onnx_out, args.precision, args.execution_provider, Path(work, "cache"))
            build_s = time.perf_counter() - started
            copied = copy_tokenizer_files(Path(source.tokenizer), onnx_out)

            config = og.Config(str(onnx_out))
            config.clear_providers()
            if args.execution_provider != "cpu":
                config.append_provider(args.execution_provider)
            og_model = og.Model(config)
            og_tokenizer = og.Tokenizer(og_model)
            torch_model = models.load_causal_lm(args.model, dtype=torch.float32).eval()
            if args.execution_provider == "cuda" and torch.cuda.is_available():  # compare on the same device
                torch_model = torch_model.to("cuda")

            onnx_predictions = generation.ort_complete(og_model, og_tokenizer, prompts,
                                                       max_new_tokens=args.max_new_tokens, batch_size=BATCH_SIZE)
            torch_predictions = generation.torch_complete(torch_model, tokenizer, prompts,
                                                          max_new_tokens=args.max_new_tokens, batch_size=BATCH_SIZE)
            speeds = decode_speeds(
                {"onnx": lambda p, **kw: generation.ort_generate(og_model, og_tokenizer, p, **kw),
                 "pytorch": lambda p, **kw: generation.torch_generate(torch_model, tokenizer, p, **kw)},
                speed_prompts, args.speed_tokens)
            onnx_speed, torch_speed = speeds["onnx"], speeds["pytorch"]
            del og_tokenizer, og_model, torch_model

            onnx_accuracy = task_score(args.task, onnx_predictions, references)
            torch_accuracy = task_score(args.task, torch_predictions, references)
            report = {
                "precision": args.precision,
                "execution_provider": args.execution_provider,
                "task": args.task,
                "accuracy_metric": "accuracy" if args.task == "classification" else "rouge_l",
                "split": "test",
                "n": len(rows),
                "onnx": {"accuracy": onnx_accuracy, "tokens_per_s": onnx_speed, "size_mb": folder_mb(onnx_out),
                         "build_s": build_s},
                "pytorch": {"accuracy": torch_accuracy, "tokens_per_s": torch_speed},
                "speedup": onnx_speed / torch_speed,
                "accuracy_drop": torch_accuracy - onnx_accuracy,
                "agreement": metrics.accuracy(onnx_predictions, torch_predictions),
                "speed": {"prompts": args.speed_prompts, "new_tokens": args.speed_tokens, "batch_size": 1},
                "tokenizer_files_copied": copied,
            }
            write_json(report_out / "optimize_report.json", report)

        tracking.log_metrics({"onnx_accuracy": onnx_accuracy, "pytorch_accuracy": torch_accuracy,
                              "onnx_tokens_per_s": onnx_speed, "pytorch_tokens_per_s": torch_speed,
                              "speedup": report["speedup"], "accuracy_drop": report["accuracy_drop"],
                              "onnx_size_mb": report["onnx"]["size_mb"], "agreement": report["agreement"]})
        tracking.log_artifact(Path(args.report) / "optimize_report.json", "optimize")
    print(f"optimize: {args.precision}/{args.execution_provider} {report['onnx']['size_mb']:.1f} MB; "
          f"accuracy ONNX {onnx_accuracy:.3f} vs PyTorch {torch_accuracy:.3f}; decode {onnx_speed:,.0f} vs "
          f"{torch_speed:,.0f} tokens/s ({report['speedup']:.1f}x)")
    return report


if __name__ == "__main__":
    run_main(main)
