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

Several LoRA adapters on one base (`--adapter_1 ... --adapter_4`, finetune's adapter outputs; `--model` is then the
base model they were trained on, `--adapter_names tone,topic` names them):

    python -m slmops.steps.optimize --model tiny-llama/ --adapter_1 tone/adapter --test_data tone/prep \
        --adapter_2 topic/adapter --test_data_2 topic/prep --adapter_names tone,topic \
        --onnx_model onnx_out/ --report report_out/

the model folder is one ORT GenAI base plus `adapters/<name>.onnx_adapter` per adapter (`slmops.adapters`): the
builder writes the base with adapter_1's LoRA MatMuls at `--precision`, their weights become graph inputs, and each
adapter's values (the builder's own fp32 build of it, scaling folded in) go to its adapter file. Each adapter is
scored on its own test data (`--test_data` for adapter_1, `--test_data_N` for adapter_N) through ORT GenAI with
that adapter active and through PyTorch with PEFT (`set_adapter`); the report's `adapters` holds each one's
figures, and its top-level accuracy / accuracy_drop / agreement are those of the adapter that lost the most (so
register's `max_optimized_drop` gate holds for every adapter). Decode speed is timed with adapter_1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slmops import adapters as multi
from slmops import contract, generation, metrics, models, progress, threads, tracking
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
MAX_ADAPTERS = 4  # adapter slots of the component (Azure ML components have a fixed set of inputs)
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json"]


CONTRACT = Component(
    name="optimize", display_name="slmops: optimize for ONNX Runtime GenAI",
    description="Build an ONNX Runtime GenAI model (fp32/int8/int4 for cpu/cuda/dml) from the merged model with ORT "
                "GenAI's model builder; re-measure task accuracy with ORT GenAI on held-out data and decode tokens/s "
                "against PyTorch generate in the same run. Writes the model folder and optimize_report.json.",
    inputs=[
        Input("model", "mlflow_model", "The merged model (finetune's model output): MLflow model folder or Hugging "
              "Face folder; with adapter_N, the base model folder they were trained on. Required.", optional=True),
        Input("test_data", "uri_folder", "prep's output_data (test.jsonl is scored, never validation.jsonl)."),
        Input("precision", "string", "ONNX weight precision.", default="int4", enum=PRECISIONS),
        Input("execution_provider", "string", "ONNX Runtime execution provider.", default="cpu", enum=PROVIDERS),
        Input("task", "string", "How accuracy is scored (generation: ROUGE-L).", default="classification",
              enum=TASKS),
        Input("max_new_tokens", "integer", "Greedy decoding length limit for accuracy.", default=16, min=1),
        Input("max_samples", "integer", "Score at most N held-out examples (0 = all).", default=200, min=0),
        Input("speed_prompts", "integer", "Prompts timed for decode speed (each runtime, taking turns).", default=5, min=1),
        Input("speed_tokens", "integer", "New tokens generated per timed prompt.", default=64, min=1),
        *[Input(f"adapter_{i}", "uri_folder", f"LoRA adapter {i} (finetune's adapter output) trained on --model; "
                "with adapters, --model is their base and the ONNX model is that base with switchable adapters.",
                optional=True, group="several adapters on one base") for i in range(1, MAX_ADAPTERS + 1)],
        *[Input(f"test_data_{i}", "uri_folder", f"prep's output_data of adapter {i}'s task (adapter 1 is scored on "
                "test_data).", optional=True, group="several adapters on one base")
          for i in range(2, MAX_ADAPTERS + 1)],
        Input("adapter_names", "string", "Adapter names in slot order, comma-separated (default adapter_1, "
              "adapter_2, ...): the file names in adapters/ and the 'adapter' a request names.", optional=True,
              group="several adapters on one base"),
    ],
    outputs=[
        Output("onnx_model", "The ORT GenAI model folder (with the tokenizer files)."),
        Output("report", "optimize_report.json"),
    ],
)


def build_parser() -> argparse.ArgumentParser:
    return contract.parser(CONTRACT, doc=__doc__)


def adapter_slots(args, problems: list[str]) -> list[tuple[str, str, str]]:
    """(name, adapter folder, test data folder) of each adapter given, in slot order; appends every problem."""
    given = [i for i in range(1, MAX_ADAPTERS + 1) if getattr(args, f"adapter_{i}")]
    if given != list(range(1, len(given) + 1)):
        problems.append(f"adapters given in slots {given}: fill --adapter_1, --adapter_2, ... in order, without gaps")
    for i in range(2, MAX_ADAPTERS + 1):
        adapter, data = getattr(args, f"adapter_{i}"), getattr(args, f"test_data_{i}")
        if adapter and not data:
            problems.append(f"--adapter_{i} needs --test_data_{i} (prep's output_data of its task): every adapter is "
                            "scored through ONNX against PyTorch on its own held-out rows")
        if data and not adapter:
            problems.append(f"--test_data_{i} given without --adapter_{i}; pass the adapter or drop the data")
    if args.adapter_names is None:
        names = [f"adapter_{i}" for i in given]
    else:
        names = [n.strip() for n in args.adapter_names.split(",")]
        if not given:
            problems.append(f"--adapter_names {args.adapter_names!r} given without adapters; pass --adapter_1 ...")
        elif len(names) != len(given):
            problems.append(f"--adapter_names {args.adapter_names!r} has {len(names)} names for {len(given)} "
                            "adapters; give one name per adapter, comma-separated, in slot order")
        problems += [f"--adapter_names: {p}" for p in (multi.name_problem(n) for n in names) if p]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"--adapter_names: {dupes} named twice; each adapter needs its own name")
    slots = []
    for i, name in zip(given, names):
        folder = Path(getattr(args, f"adapter_{i}"))
        config = folder / "adapter_config.json"
        if not config.is_file():
            problems.append(f"--adapter_{i} {str(folder)!r} has no adapter_config.json; pass finetune's adapter "
                            "output of a LoRA run (a --method full run has no adapter)")
        elif json.loads(config.read_text()).get("peft_type") != "LORA":
            problems.append(f"--adapter_{i} {str(folder)!r} is not a LoRA adapter (peft_type "
                            f"{json.loads(config.read_text()).get('peft_type')!r}); only LoRA adapters switch")
        data = args.test_data if i == 1 else getattr(args, f"test_data_{i}")
        slots.append((name, str(folder), data))
    return slots


def validate(args) -> tuple[models.ModelSource, list[tuple[str | None, str | None, list[dict]]]]:
    """Check every argument and read the inputs; raise one UserError listing every problem. Returns the model
    source and what is scored: [(adapter name, adapter folder, test rows)], or [(None, None, rows)] without
    adapters."""
    import onnxruntime_genai as og

    problems = contract.check_values(CONTRACT, args)  # enum, min/max
    if args.execution_provider in PROVIDER_RUNTIME:
        check, install = PROVIDER_RUNTIME[args.execution_provider]
        if not getattr(og, check)():
            problems.append(f"--execution_provider {args.execution_provider}: this ONNX Runtime GenAI build has no "
                            f"{args.execution_provider} support; {install}, or use --execution_provider cpu")
    slots = adapter_slots(args, problems)
    source = None
    if args.model is None:  # optional in the contract only so a template can bind an unset base_model input
        problems.append("--model is required: the merged model (finetune's model output), or with --adapter_N the "
                        "base model folder the adapters were trained on (pipelines/multi_adapter.yaml: set "
                        "base_model to a folder)")
    else:
        try:
            source = models.check_weights(args.model)
            if not source.is_local:
                problems.append(f"--model {args.model!r}: the model builder needs a local folder; pass finetune's "
                                "model output (or download the hub model first)")
            elif source.adapter and slots:
                problems.append(f"--model {args.model!r} is an adapter; with --adapter_N pass the base model the "
                                "adapters were trained on (finetune's base_model)")
            elif source.adapter:
                problems.append(f"--model {args.model!r} is an adapter; pass the merged model (finetune's model "
                                "output), or pass it as --adapter_1 with its base model as --model")
        except UserError as exc:
            problems.append(f"--model: {exc}")
    targets = []
    for i, (name, folder, data) in enumerate(slots or [(None, None, args.test_data)], start=1):
        flag = "--test_data" if i == 1 else f"--test_data_{i}"
        if data is None:  # reported above
            continue
        try:
            targets.append((name, folder, generation.read_examples(data, args.max_samples)))
        except UserError as exc:
            problems.append(f"{flag}: {exc}")
    if problems:
        raise UserError("optimize: invalid arguments", problems=problems)
    return source, targets


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


def build_switchable(hf_dir: Path, slots: list[tuple[str, str]], out: Path, precision: str, provider: str,
                     work: Path) -> dict[str, Path]:
    """One ORT GenAI base with switchable LoRA adapters (`slmops.adapters`): each adapter built at fp32 on the CPU
    for its weights (the builder names, splits and scales them), the base built at `precision` with the first
    adapter, its LoRA weights turned into inputs, and `adapters/<name>.onnx_adapter` written per adapter.
    `slots`: [(name, adapter folder)]. Returns {name: adapter file}."""
    weights = {}
    for name, folder in slots:
        fp32 = work / f"fp32-{name}"
        build(hf_dir, fp32, "fp32", "cpu", work / "cache", {"adapter_path": str(Path(folder).resolve())})
        weights[name] = multi.lora_weights(fp32)
    if problems := multi.same_targets(weights):
        raise UserError("optimize: the adapters cannot share one base", problems=problems)
    first_name, first_folder = slots[0]
    if (precision, provider) == ("fp32", "cpu"):  # the first adapter's fp32 build is the base
        shutil.copytree(work / f"fp32-{first_name}", out, dirs_exist_ok=True)
    else:
        build(hf_dir, out, precision, provider, work / "cache", {"adapter_path": str(Path(first_folder).resolve())})
    dtype = multi.make_switchable(out, weights[first_name])
    (out / multi.ADAPTERS_DIR).mkdir()
    return {name: multi.write_onnx_adapter(out / multi.ADAPTERS_DIR / f"{name}{multi.ONNX_SUFFIX}", weights[name],
                                           dtype) for name, _ in slots}


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


def decode_speeds(generators: dict, prompts: list[str], new_tokens: int, progress=None) -> dict[str, float]:
    """Tokens/s of each `generate(prompts, max_new_tokens=, min_new_tokens=, batch_size=)`, one prompt at a
    time. The runtimes take turns prompt by prompt, so both see the same load on a shared machine. `progress(1)`
    after each timed prompt, outside the timed span."""
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
            if progress is not None:
                progress(1)
    return {name: len(prompts) * new_tokens / seconds for name, seconds in elapsed.items()}


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def score_targets(task: str, targets, onnx_generate, torch_generate, references) -> dict:
    """Each target's (adapter's) ONNX and PyTorch accuracy on its own rows: {name: {...}}."""
    scores = {}
    for name, _, rows in targets:
        prompts = [r["prompt"] for r in rows]
        onnx_predictions, torch_predictions = onnx_generate(prompts, name), torch_generate(prompts, name)
        onnx_accuracy = task_score(task, onnx_predictions, references[name])
        torch_accuracy = task_score(task, torch_predictions, references[name])
        scores[name] = {"n": len(rows), "onnx": {"accuracy": onnx_accuracy}, "pytorch": {"accuracy": torch_accuracy},
                        "accuracy_drop": torch_accuracy - onnx_accuracy,
                        "agreement": metrics.accuracy(onnx_predictions, torch_predictions)}
    return scores


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    source, targets = validate(args)
    compute_threads = threads.apply()
    bars = progress.Progress()  # before loading: outside a terminal the libraries' tqdm bars are switched off
    import onnxruntime_genai as og
    import torch

    switchable = targets[0][0] is not None
    tokenizer = models.load_tokenizer(args.model)
    references = {name: [generation.reference(r, args.task, tokenizer.all_special_tokens) for r in rows]
                  for name, _, rows in targets}
    first_prompts = [r["prompt"] for r in targets[0][2]]
    speed_prompts = [first_prompts[i % len(first_prompts)] for i in range(args.speed_prompts)]

    with bars, tracking.step_run():
        stages = bars.stages(3, "optimize")
        tracking.log_params({"precision": args.precision, "execution_provider": args.execution_provider,
                             "task": args.task, "n": sum(len(rows) for _, _, rows in targets),
                             "speed_prompts": args.speed_prompts, "speed_tokens": args.speed_tokens,
                             "adapters": ",".join(name for name, _, _ in targets) if switchable else ""})
        with tempfile.TemporaryDirectory(prefix="slmops-optimize-") as work, \
                atomic_dir(args.onnx_model) as onnx_out, atomic_dir(args.report) as report_out:
            hf_dir = stage_hf_folder(source, Path(work, "hf"))
            stages.stage(f"export + quantize ({args.precision}, {args.execution_provider}"
                         f"{f', {len(targets)} adapters' if switchable else ''})")
            started = time.perf_counter()
            files = {}
            if switchable:
                files = build_switchable(hf_dir, [(name, folder) for name, folder, _ in targets], onnx_out,
                                         args.precision, args.execution_provider, Path(work))
            else:
                build(hf_dir, onnx_out, args.precision, args.execution_provider, Path(work, "cache"))
            build_s = time.perf_counter() - started
            copied = copy_tokenizer_files(Path(source.tokenizer), onnx_out)

            n_rows = sum(len(rows) for _, _, rows in targets)
            stages.stage(f"accuracy check (ONNX and PyTorch on {n_rows} test rows)")
            rows_done = bars.tracker(2 * n_rows, "optimize accuracy", unit="rows")
            config = og.Config(str(onnx_out))
            config.overlay(threads.ort_overlay(compute_threads))  # ORT's own default: every core, busy or not
            config.clear_providers()
            if args.execution_provider != "cpu":
                config.append_provider(args.execution_provider)
            og_model = og.Model(config)
            og_tokenizer = og.Tokenizer(og_model)
            og_adapters = multi.load_onnx_adapters(og_model, onnx_out)[0] if switchable else None
            torch_model = models.load_causal_lm(args.model, dtype=torch.float32).eval()
            if switchable:  # PyTorch with PEFT: the same base, every adapter loaded, switched per call
                torch_model = multi.load_peft(torch_model, {name: folder for name, folder, _ in targets})
            if args.execution_provider == "cuda" and torch.cuda.is_available():  # compare on the same device
                torch_model = torch_model.to("cuda")

            scores = score_targets(
                args.task, targets,
                lambda prompts, name: generation.ort_complete(og_model, og_tokenizer, prompts,
                                                              max_new_tokens=args.max_new_tokens,
                                                              batch_size=BATCH_SIZE, adapters=og_adapters,
                                                              adapter=name, progress=rows_done.advance),
                lambda prompts, name: generation.torch_complete(torch_model, tokenizer, prompts,
                                                                max_new_tokens=args.max_new_tokens,
                                                                batch_size=BATCH_SIZE, adapter=name,
                                                                progress=rows_done.advance),
                references)
            stages.stage(f"decode speed ({args.speed_prompts} prompts x {args.speed_tokens} tokens, each runtime)")
            first = targets[0][0]
            speeds = decode_speeds(
                {"onnx": lambda p, **kw: generation.ort_generate(og_model, og_tokenizer, p, adapters=og_adapters,
                                                                 adapter=first, **kw),
                 "pytorch": lambda p, **kw: generation.torch_generate(torch_model, tokenizer, p, adapter=first,
                                                                      **kw)},
                speed_prompts, args.speed_tokens,
                progress=bars.tracker(2 * len(speed_prompts), "optimize decode speed", unit="prompts").advance)
            stages.close()
            onnx_speed, torch_speed = speeds["onnx"], speeds["pytorch"]
            del og_adapters, og_tokenizer, og_model, torch_model

            # one target, or the adapter that lost the most (a gate on the top level then holds for each)
            worst = max(scores.values(), key=lambda score: score["accuracy_drop"])
            onnx_accuracy, torch_accuracy = worst["onnx"]["accuracy"], worst["pytorch"]["accuracy"]
            report = {
                "precision": args.precision,
                "execution_provider": args.execution_provider,
                "task": args.task,
                "accuracy_metric": "accuracy" if args.task == "classification" else "rouge_l",
                "split": "test",
                "n": worst["n"],
                "onnx": {"accuracy": onnx_accuracy, "tokens_per_s": onnx_speed, "size_mb": folder_mb(onnx_out),
                         "build_s": build_s},
                "pytorch": {"accuracy": torch_accuracy, "tokens_per_s": torch_speed},
                "speedup": onnx_speed / torch_speed,
                "accuracy_drop": worst["accuracy_drop"],
                "agreement": worst["agreement"],
                "speed": {"prompts": args.speed_prompts, "new_tokens": args.speed_tokens, "batch_size": 1},
                "tokenizer_files_copied": copied,
            }
            if switchable:
                report["adapters"] = {name: {**score, "file": f"{multi.ADAPTERS_DIR}/{files[name].name}",
                                             "size_mb": files[name].stat().st_size / 1e6}
                                      for name, score in scores.items()}
                report["speed"]["adapter"] = first
            write_json(report_out / "optimize_report.json", report)

        tracking.log_metrics({"onnx_accuracy": onnx_accuracy, "pytorch_accuracy": torch_accuracy,
                              "onnx_tokens_per_s": onnx_speed, "pytorch_tokens_per_s": torch_speed,
                              "speedup": report["speedup"], "accuracy_drop": report["accuracy_drop"],
                              "onnx_size_mb": report["onnx"]["size_mb"], "agreement": report["agreement"]})
        if switchable:
            tracking.log_metrics({f"{name}.{key}": value for name, score in scores.items()
                                  for key, value in [("onnx_accuracy", score["onnx"]["accuracy"]),
                                                     ("pytorch_accuracy", score["pytorch"]["accuracy"]),
                                                     ("accuracy_drop", score["accuracy_drop"])]})
        tracking.log_artifact(Path(args.report) / "optimize_report.json", "optimize")
    for name, score in scores.items():
        print(f"optimize: {name or 'model'}: accuracy ONNX {score['onnx']['accuracy']:.3f} vs PyTorch "
              f"{score['pytorch']['accuracy']:.3f} on {score['n']} test rows")
    print(f"optimize: {args.precision}/{args.execution_provider} {report['onnx']['size_mb']:.1f} MB"
          f"{f' with {len(files)} switchable adapters' if switchable else ''}; decode {onnx_speed:,.0f} vs "
          f"{torch_speed:,.0f} tokens/s ({report['speedup']:.1f}x)")
    return report


if __name__ == "__main__":
    run_main(main)
