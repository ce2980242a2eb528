"""Fine-tune a causal LM on prep's output: full, LoRA, QLoRA (4-bit NF4) or DoRA, with TRL's SFTTrainer.

    python -m slmops.steps.finetune --train_data prep_out/ --base_model ./tiny-llama --method lora \\
        --learning_rate 1e-3 --max_steps 100 --batch_size 16 \\
        --adapter out/adapter --model out/model --metrics out/metrics --checkpoints out/checkpoints

    torchrun --nproc_per_node 2 -m slmops.steps.finetune ...      # same code, several processes

Flow: parse -> validate (every problem reported at once) -> load model and data -> train -> save outputs.
- Loss on completion tokens only (prompt tokens get label -100) unless --completion_only_loss false.
- Batching: `padding_free` (default; examples concatenated, position_ids restart per example, no attention
  mask and no KV cache, so attention stays inside each example), `packing` (best-fit packing into rows no longer
  than the longest example, same isolation) or `padding` (dynamic padding to the longest in the batch).
- Precision from the hardware (`auto`: bf16 on GPUs with it, fp16 on older GPUs, fp32 on CPU).
- Evaluates on validation.jsonl every --eval_steps, stops early after --early_stopping_patience evaluations
  without a better eval_loss, checkpoints every --save_steps into --checkpoints and resumes from the latest
  `checkpoint-N` there when the step is restarted.
- Custom loss: --loss FILE.py (a uri_file input) and --loss_function NAME (default `loss`) name a function
  `NAME(outputs, labels, batch, num_items_in_batch=None)` returning the loss tensor; TRL's SFTTrainer calls it
  through its `compute_loss_func` for training and evaluation (docs/finetune.md, examples/losses/).
- Outputs (rank 0 only, each written atomically): --adapter (PEFT folder), --model (merged model as an MLflow
  `transformers` model), --metrics (train_history.json, train_summary.json with the step's resource use, and
  loss.py: the custom loss file, when one was given). Metrics go to the MLflow run named by MLFLOW_RUN_ID when
  set, with MLflow's system metrics (CPU, memory, GPU) every 5 s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import warnings
from pathlib import Path

from slmops import contract, progress, resources, threads, tracking
from slmops.contract import Component, Input, Output
from slmops.errors import UserError, run_main
from slmops.io import atomic_dir, write_json
from slmops.models import TINY_MARKER, check_weights, load_causal_lm, load_tokenizer, resolve
from slmops.registration import TRAIN_METADATA
from slmops.training import (DEEPSPEED_CONFIGS, LOSS_SIGNATURE, choose_precision, compute_loss_func, hardware,
                             latest_checkpoint, load_loss, loss_record, metrics_callback, read_prepared,
                             save_mlflow_transformers, score_labelled_positions_only, to_dataset)

METHODS = ["full", "lora", "qlora", "dora"]
BATCHING = ["padding_free", "packing", "padding"]
SCHEDULERS = ["cosine", "linear", "constant", "constant_with_warmup"]
PRECISIONS = ["auto", "fp32", "fp16", "bf16"]
# transformers' optimizer names; adamw_torch_fused (the transformers default) and adamw_torch are the same AdamW,
# adamw_8bit is bitsandbytes' 8-bit AdamW (optimizer state in 8 bits).
OPTIMIZERS = ["adamw_torch_fused", "adamw_torch", "adamw_8bit", "adafactor", "sgd"]


CONTRACT = Component(
    name="finetune", display_name="slmops: fine-tune", environment="azureml:slmops-gpu@latest",
    description="Fine-tune a causal LM on prep's output: full, LoRA, QLoRA (4-bit NF4) or DoRA. Completion-only "
                "loss, padding-free or packed batches with attention isolated per example, precision from the "
                "hardware, evaluation/early stopping/checkpoints, resume from the latest checkpoint. Runs under "
                "torchrun (distribution: pytorch) and DeepSpeed ZeRO on Azure ML. Outputs the PEFT adapter and the "
                "merged model as an MLflow model.",
    inputs=[
        Input("train_data", "uri_folder", "prep's output_data (train.jsonl, validation.jsonl)."),
        Input("base_model", "custom_model", "Base model folder (Hugging Face or MLflow transformers layout).",
              optional=True),
        Input("base_model_id", "string", "Base model hub id (give this or base_model, not both).", optional=True),
        Input("method", "string", "Full fine-tuning, LoRA, QLoRA (4-bit NF4 base, needs bitsandbytes) or DoRA.",
              default="lora", enum=METHODS),
        Input("lora_r", "integer", "LoRA rank.", default=16, min=1),
        Input("lora_alpha", "number", "LoRA scaling alpha.", default=32),
        Input("lora_dropout", "number", "Dropout on the LoRA path.", default=0.05, min=0.0, max=0.9),
        Input("target_modules", "string", "Comma-separated module names, or all-linear.", default="all-linear"),
        Input("modules_to_save", "string", "Comma-separated modules trained fully and saved with the adapter "
              "(e.g. lm_head).", optional=True),
        Input("learning_rate", "number", "Peak learning rate.", default=2e-4, min=1e-12),
        Input("lr_scheduler", "string", "Learning-rate schedule after the warm-up.", default="cosine",
              enum=SCHEDULERS),
        Input("warmup_ratio", "number", "Fraction of the steps for linear warm-up.", default=0.03, min=0.0, max=0.5),
        Input("optimizer", "string", "adamw_torch_fused / adamw_torch (AdamW), adamw_8bit (bitsandbytes 8-bit "
              "AdamW), adafactor or sgd.", default="adamw_torch_fused", enum=OPTIMIZERS),
        Input("weight_decay", "number", "Decoupled weight decay of the trained weights (0 = none; 0.01 against "
              "over-fitting).", default=0.0, min=0.0, max=1.0),
        Input("max_grad_norm", "number", "Clip the gradient norm to this value (0 = no clipping).", default=1.0,
              min=0.0),
        Input("num_epochs", "number", "Epochs (ignored when max_steps > 0).", default=1, min=0.0),
        Input("max_steps", "integer", "Stop after this many optimizer steps (-1 = use num_epochs).", default=-1,
              min=-1),
        Input("batch_size", "integer", "Examples per device per step.", default=8, min=1),
        Input("eval_batch_size", "integer", "Examples per device per evaluation step (unset = batch_size).",
              optional=True, min=1),
        Input("gradient_accumulation_steps", "integer", "Micro-batches per optimizer step.", default=1, min=1),
        Input("gradient_checkpointing", "boolean", "Recompute activations in the backward pass (true/false).",
              default=False),
        Input("precision", "string", "auto = bf16 on GPUs that support it, else fp16 on CUDA, fp32 on CPU.",
              default="auto", enum=PRECISIONS),
        Input("batching", "string", "padding_free (examples concatenated, attention kept inside each), packing "
              "(best-fit rows, same isolation) or padding (dynamic padding).", default="padding_free",
              enum=BATCHING),
        Input("completion_only_loss", "boolean", "Loss on completion tokens only (true/false).", default=True),
        Input("loss", "uri_file", "A Python file with a custom loss function (see loss_function); unset = TRL's "
              "cross-entropy.", optional=True),
        Input("loss_function", "string", f"The function of the loss file: loss_function{LOSS_SIGNATURE} returning "
              "the loss tensor.", default="loss"),
        Input("eval_steps", "integer", "Evaluate on validation.jsonl every N steps (0 = never).", default=50, min=0),
        Input("save_steps", "integer", "Checkpoint every N steps (0 = never).", default=50, min=0),
        Input("logging_steps", "integer", "Log metrics every N steps.", default=10, min=1),
        Input("early_stopping_patience", "integer", "Stop after this many evaluations without a lower eval_loss "
              "(0 = off).", default=0, min=0),
        Input("dataloader_workers", "integer", "Data-loader worker processes (0 = load in the training "
              "process).", default=0, min=0, max=64),
        Input("deepspeed", "string", "DeepSpeed ZeRO stage (config shipped in slmops/deepspeed; needs the GPU "
              "image).", default="none", enum=["none", *DEEPSPEED_CONFIGS]),
        Input("seed", "integer", "Seed for weights init, data order and dropout.", default=42, min=0,
              max=2**32 - 1),
    ],
    outputs=[
        Output("adapter", "The PEFT adapter folder (for full: a README saying there is none)."),
        Output("model", "The merged model, MLflow transformers layout.", type="mlflow_model"),
        Output("metrics", "train_history.json and train_summary.json."),
        Output("checkpoints", "Checkpoints every save_steps; a restarted step resumes from the latest one."),
    ],
)


def build_parser() -> argparse.ArgumentParser:
    return contract.parser(CONTRACT, doc=__doc__)


def validate(args) -> None:
    """Check every argument and the inputs on disk; raise one UserError listing every problem. Single values
    (enum, min/max) are checked by the contract; here what involves several flags, the disk or the installation."""
    problems = contract.check_values(CONTRACT, args)
    data = Path(args.train_data)
    for name in ("train.jsonl", "validation.jsonl"):
        if not (data / name).is_file():
            problems.append(f"--train_data {str(data)!r} has no {name}; pass prep's output_data folder")
    validation = data / "validation.jsonl"
    if args.eval_steps > 0 and validation.is_file() and not validation.stat().st_size:
        problems.append(f"--eval_steps {args.eval_steps} needs validation rows and {str(data)!r} holds none (prep "
                        "ran with --validation_fraction 0); re-run prep with --validation_fraction > 0, or pass "
                        "--eval_steps 0")
    if not args.base_model and not args.base_model_id:
        problems.append("no base model: pass --base_model FOLDER or --base_model_id ORG/NAME")
    elif args.base_model and args.base_model_id:
        problems.append(f"both --base_model {args.base_model!r} and --base_model_id {args.base_model_id!r} given; "
                        "pass exactly one (prep and evaluate take the same)")
    if args.base_model:
        try:
            check_weights(args.base_model)
        except UserError as exc:
            problems.append(f"--base_model: {exc}")
    if args.max_steps <= 0 and args.num_epochs <= 0:
        problems.append(f"--max_steps {args.max_steps} and --num_epochs {args.num_epochs}: give max_steps > 0 or "
                        "num_epochs > 0")
    if args.max_steps == 0:  # below -1: the contract's min
        problems.append(f"--max_steps {args.max_steps} must be -1 (use num_epochs) or > 0")
    if args.early_stopping_patience > 0:
        if args.eval_steps == 0:
            problems.append("--early_stopping_patience needs evaluations: set --eval_steps > 0")
        elif args.save_steps == 0 or args.save_steps % args.eval_steps:
            problems.append(f"--early_stopping_patience needs --save_steps ({args.save_steps}) to be a multiple of "
                            f"--eval_steps ({args.eval_steps}) so the best checkpoint is kept")
    if args.method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        problems.append("--method qlora needs bitsandbytes: pip install 'slmops[qlora]' (or use --method lora)")
    if args.optimizer == "adamw_8bit" and importlib.util.find_spec("bitsandbytes") is None:
        problems.append("--optimizer adamw_8bit needs bitsandbytes: pip install 'slmops[qlora]' (or use "
                        "--optimizer adamw_torch)")
    if args.deepspeed != "none" and importlib.util.find_spec("deepspeed") is None:
        problems.append(f"--deepspeed {args.deepspeed} needs the deepspeed package (GPU image): "
                        "pip install 'slmops[deepspeed]', or pass --deepspeed none")
    if args.loss:
        problems += load_loss(args.loss, args.loss_function)[1]
    if problems:
        raise UserError("finetune: invalid arguments", problems=problems)


def load_data(args):
    """train/validation rows of prep's output as datasets TRL takes as tokenized; plus the longest train row.
    The validation rows are read only when they are evaluated (--eval_steps > 0); else the dataset is None."""
    train_rows = read_prepared(Path(args.train_data) / "train.jsonl")
    eval_ds = None
    if args.eval_steps > 0:
        eval_ds = to_dataset(read_prepared(Path(args.train_data) / "validation.jsonl"), args.completion_only_loss)
    longest = max(len(r["input_ids"]) for r in train_rows)
    return to_dataset(train_rows, args.completion_only_loss), eval_ds, longest


def load_model(args, base_ref: str, precision: str):
    """The base model (4-bit NF4 for qlora, fp32 weights otherwise: mixed precision autocasts) and its tokenizer,
    wrapped with a LoRA/DoRA adapter unless the method is full."""
    import torch

    tokenizer = load_tokenizer(base_ref)
    compute_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    quantization = None
    if args.method == "qlora":
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute_dtype)
    # A 4-bit base is placed at load time: on this process's GPU under torchrun (on CPU it stays on the CPU).
    device_map = {"": int(os.environ.get("LOCAL_RANK", "0"))} if quantization and torch.cuda.is_available() else None
    torch.manual_seed(args.seed)
    model = load_causal_lm(base_ref, dtype=torch.float32 if quantization is None else compute_dtype,
                           quantization_config=quantization, device_map=device_map)
    model.config.use_cache = False  # no KV cache in training: packed examples must not attend to each other
    if args.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
    if args.method != "full":
        from peft import LoraConfig, get_peft_model
        from peft.utils import NoMatchingPeftModuleError

        targets = args.target_modules if args.target_modules == "all-linear" else args.target_modules.split(",")
        lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                          target_modules=targets, use_dora=args.method == "dora", task_type="CAUSAL_LM",
                          modules_to_save=args.modules_to_save.split(",") if args.modules_to_save else None)
        try:
            model = get_peft_model(model, lora)
        except NoMatchingPeftModuleError as exc:
            linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                             if isinstance(module, torch.nn.Linear)})
            raise UserError(f"--target_modules {args.target_modules!r} matches no module of the base model ({exc}); "
                            f"use all-linear or some of its linear modules {linear}") from None
    return model, tokenizer


def build_trainer(args, model, tokenizer, train_ds, eval_ds, longest: int, precision: str, callbacks: list):
    """TRL's SFTTrainer with every setting explicit (SFTConfig's own defaults are GPU-minded: bf16 and
    gradient checkpointing on)."""
    import torch
    from transformers import EarlyStoppingCallback, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    evaluating = args.eval_steps > 0
    early_stopping = args.early_stopping_patience > 0
    config = SFTConfig(
        output_dir=args.checkpoints,
        seed=args.seed, data_seed=args.seed,
        learning_rate=args.learning_rate, lr_scheduler_type=args.lr_scheduler, warmup_steps=args.warmup_ratio,
        num_train_epochs=args.num_epochs, max_steps=args.max_steps,
        optim=args.optimizer, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size or args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        activation_checkpointing=args.gradient_checkpointing,  # new name of gradient_checkpointing (TRL: default on)
        bf16=precision == "bf16", fp16=precision == "fp16",  # SFTConfig defaults bf16=True: always set both
        padding_free=args.batching in ("padding_free", "packing"),
        packing=args.batching == "packing", packing_strategy="bfd",
        max_length=longest if args.batching == "packing" else None,  # padding-free without packing needs None
        completion_only_loss=args.completion_only_loss,
        eval_strategy="steps" if evaluating else "no", eval_steps=args.eval_steps or None,
        save_strategy="steps" if args.save_steps else "no", save_steps=args.save_steps or None,
        load_best_model_at_end=early_stopping, metric_for_best_model="eval_loss" if early_stopping else None,
        greater_is_better=False if early_stopping else None,
        logging_steps=args.logging_steps, logging_first_step=True, report_to="none", disable_tqdm=True,
        include_num_input_tokens_seen="non_padding" if args.batching == "padding" else "all",
        use_cpu=not torch.cuda.is_available(),  # also what makes torchrun on CPU use gloo DDP
        ddp_find_unused_parameters=False, dataloader_num_workers=args.dataloader_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        deepspeed=str(DEEPSPEED_CONFIGS[args.deepspeed]) if args.deepspeed != "none" else None,
    )
    if early_stopping:
        callbacks = [*callbacks, EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience)]
    loss = None
    if args.loss:  # validate() checked it; loaded again here, where the model it hooks exists
        fn, problems = load_loss(args.loss, args.loss_function)
        if problems:
            raise UserError("finetune: invalid arguments", problems=problems)
        loss = compute_loss_func(fn, model)
    with warnings.catch_warnings():
        # TRL 1.16 marks compute_loss_func deprecated (removed in TRL 2, which pyproject keeps out: trl<2) and
        # suggests a subclass; we keep the supported argument (docs/finetune.md, "Custom loss").
        warnings.filterwarnings("ignore", message="`compute_loss_func` is deprecated", category=FutureWarning)
        trainer = SFTTrainer(model=model, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
                             processing_class=tokenizer, callbacks=callbacks, compute_loss_func=loss)
    trainer.remove_callback(PrinterCallback)  # raw log dicts; slmops.progress shows step, loss and ETA instead
    score_labelled_positions_only(trainer.model)  # CPU: the LM head scores answer positions only, not every token
    return trainer


def main(argv=None) -> None:
    # ---- parse and validate: every problem at once, before anything is loaded ----------------------------
    args = build_parser().parse_args(argv)
    validate(args)
    usage = resources.start()
    compute_threads = threads.apply()
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    precision = choose_precision(args.precision, **hardware())
    bars = progress.Progress()  # before loading: outside a terminal the libraries' tqdm bars are switched off
    # An absolute path, so the adapter's base_model_name_or_path (and the MLflow model's source) still resolve
    # from another working directory; a hub id stays as given.
    base_ref = str(Path(args.base_model).resolve()) if args.base_model else args.base_model_id
    checkpoints = Path(args.checkpoints)
    resume_from = latest_checkpoint(checkpoints)

    # ---- load data and model, build the trainer ----------------------------------------------------------
    train_ds, eval_ds, longest = load_data(args)
    model, tokenizer = load_model(args, base_ref, precision)
    metrics = metrics_callback()
    trainer = build_trainer(args, model, tokenizer, train_ds, eval_ds, longest, precision,
                            [metrics, progress.trainer_callback(bars)])

    # ---- train (resuming from the latest checkpoint a previous attempt left) -----------------------------
    params = {k: v for k, v in vars(args).items() if k not in ("adapter", "model", "metrics", "checkpoints")}
    loss = loss_record(args.loss, args.loss_function) if args.loss else None
    if loss:
        params["loss"] = f"{loss['file']}:{loss['function']} sha256:{loss['sha256'][:16]}"
    with bars, tracking.step_run():
        params = {**params, "precision_chosen": precision, "world_size": world_size,
                  "compute_threads": compute_threads, "resumed_from": resume_from.name if resume_from else None}
        tracking.log_params(params)
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        final_eval = final_evaluation(trainer, args) if args.eval_steps > 0 else {}
        # Every rank takes part in saving (ZeRO-3 gathers the weights); only the main process writes.
        final = checkpoints / "final"
        trainer.save_model(str(final))
        trainer.accelerator.wait_for_everyone()
        if rank != 0:
            return

        # ---- outputs (rank 0): adapter, merged MLflow model, metrics -------------------------------------
        history = trainer.state.log_history
        losses = [h["loss"] for h in history if "loss" in h]
        summary = {
            "method": args.method, "precision": precision, "batching": args.batching, "world_size": world_size,
            "base_model": base_ref, "global_step": trainer.state.global_step, "loss": loss,
            "resumed_from": resume_from.name if resume_from else None,
            "tokens_seen": metrics.tokens_seen, "tokens_this_attempt": metrics.tokens_this_attempt,
            "train_seconds": round(metrics.train_seconds, 3),
            "tokens_per_s": round(metrics.tokens_this_attempt / max(metrics.train_seconds, 1e-9), 1),
            "train_loss": whole_run_train_loss(history, resume_from, result.training_loss,
                                               trainer.state.global_step),
            "train_loss_this_attempt": result.training_loss, "final_loss": losses[-1] if losses else None,
            "final_eval_loss": final_eval.get("eval_loss"),
            "best_eval_loss": trainer.state.best_metric if args.early_stopping_patience > 0 else None,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "base_loaded_in_4bit": bool(getattr(model, "is_loaded_in_4bit", False)),
            "resources": resources.summary(usage),  # this process (rank 0), from loading to the end of training
        }
        save_outputs(args, final, base_ref, tokenizer, history, summary, params)
        tracking.log_metrics({**{k: summary[k] for k in ("tokens_per_s", "tokens_seen")},
                              **{k: summary["resources"][k] for k in ("peak_rss_mb", "mean_cpu_percent")}})
        print(json.dumps(summary, indent=2))


def final_evaluation(trainer, args) -> dict:
    """The validation metrics of the model as saved: the evaluation logged at the last step when there was one (the
    same weights, so not run twice), else a new one. With early stopping the best checkpoint is loaded at the end,
    so it is evaluated anew."""
    last = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h), None)
    if args.early_stopping_patience == 0 and last is not None and last.get("step") == trainer.state.global_step:
        return last
    return trainer.evaluate()


def whole_run_train_loss(history: list[dict], resumed_from: Path | None, attempt_loss: float,
                         global_step: int) -> float:
    """The mean training loss over every step of the run, also when it was resumed: transformers' training_loss
    covers only this attempt's steps, so the steps before the checkpoint are taken from the logged losses (each
    the mean since the previous log; the restored log history holds them), the rest from this attempt."""
    if resumed_from is None or not global_step:
        return attempt_loss
    resumed = int(resumed_from.name.rsplit("-", 1)[-1])
    total, previous, last = 0.0, 0, None
    for record in history:
        if "loss" in record and record["step"] <= resumed:
            total += record["loss"] * (record["step"] - previous)
            previous, last = record["step"], record["loss"]
    if last is not None and previous < resumed:       # steps after the last log before the checkpoint
        total += last * (resumed - previous)
    return (total + attempt_loss * (global_step - resumed)) / global_step


def save_outputs(args, final: Path, base_ref: str, tokenizer, history: list, summary: dict, params: dict) -> None:
    """Write the adapter, the merged MLflow model and the metrics; all three land together or not at all. The
    training parameters (those logged to the run) are recorded in the model's MLmodel too, so they reach the
    registered version's lineage where no run can be named (a sweep's best trial on Azure ML)."""
    import torch

    with atomic_dir(args.adapter) as adapter, atomic_dir(args.model) as model, atomic_dir(args.metrics) as metrics:
        if args.method == "full":
            (adapter / "README.md").write_text(
                "# No adapter\n\nThis model was trained with `--method full`: every weight changed, so there is "
                "no PEFT adapter. Use the `model` output (the fine-tuned model as an MLflow model).\n")
            merged = load_causal_lm(final, dtype=torch.float32)
        else:
            for f in final.iterdir():
                if f.is_file() and (f.name.startswith("adapter_") or f.name == "README.md"):
                    shutil.copy(f, adapter / f.name)
            # Fold the adapter into a full-precision copy of the base (also right for qlora's 4-bit base).
            merged = load_causal_lm(adapter, dtype=torch.float32, merge_adapter=True)
        merged.name_or_path = merged.config.name_or_path = base_ref  # the lineage MLflow records
        source = resolve(base_ref)
        save_mlflow_transformers(merged, tokenizer, model,
                                 tiny_marker=Path(source.weights) / TINY_MARKER if source.is_local else None,
                                 metadata={TRAIN_METADATA: {k: str(v) for k, v in params.items()}})
        write_json(metrics / "train_history.json", history)
        write_json(metrics / "train_summary.json", summary)
        if args.loss:  # the loss code travels with the result it trained (sha256 in train_summary.json)
            shutil.copy(args.loss, metrics / "loss.py")


if __name__ == "__main__":
    run_main(main)
