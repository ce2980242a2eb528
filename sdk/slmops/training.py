"""Library helpers for the finetune step: precision choice, prepared-data loading, checkpoints, DeepSpeed
configs, MLflow metric logging and throughput, and writing the merged model in the `mlflow.transformers` layout.

The step (`slmops.steps.finetune`) keeps the parse -> validate -> load -> train -> save flow in plain view and
calls these small functions; each takes explicit arguments so it can be tested on its own.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import re
import shutil
from pathlib import Path

from slmops.errors import UserError

DEEPSPEED_DIR = Path(__file__).parent / "deepspeed"
DEEPSPEED_CONFIGS = {"zero2": DEEPSPEED_DIR / "zero2.json", "zero3": DEEPSPEED_DIR / "zero3.json"}


# ---------------------------------------------------------------------------------------------- custom loss

LOSS_SIGNATURE = "(outputs, labels, batch, num_items_in_batch=None)"


def load_loss(path: str, name: str) -> tuple[object, list[str]]:
    """(the function `name` of the Python file `path`, problems): the file exists and imports, the name is a
    function, and it accepts `LOSS_SIGNATURE`. Importing runs the file's top-level code."""
    fix = f"pass a Python file that defines {name}{LOSS_SIGNATURE} (examples/losses/ has two)"
    where = f"--loss {path!r}"
    file = Path(path)
    if not file.is_file():
        return None, [f"{where}: no such file; {fix}"]
    spec = importlib.util.spec_from_file_location(f"slmops_user_loss_{file.stem}", file)
    if spec is None or file.suffix != ".py":
        return None, [f"{where} is not a .py file; {fix}"]
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's file: any error in it is theirs to fix
        return None, [f"{where} cannot be imported ({type(exc).__name__}: {exc}); fix the file, {fix}"]
    fn = getattr(module, name, None)
    if not callable(fn):
        functions = sorted(k for k, v in vars(module).items() if inspect.isfunction(v) and not k.startswith("_"))
        return None, [f"--loss_function {name!r}: {path!r} has no function {name!r} (its functions: {functions}); "
                      f"pass one of them as --loss_function, or {fix}"]
    try:
        inspect.signature(fn).bind(None, None, None, num_items_in_batch=None)
    except (TypeError, ValueError) as exc:
        return None, [f"--loss_function {name!r} in {path!r}: its signature {_signature(fn)} does not take "
                      f"{LOSS_SIGNATURE} ({exc}); change it to {name}{LOSS_SIGNATURE}"]
    return fn, []


def _signature(fn) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(?)"


def loss_record(path: str, name: str) -> dict:
    """What identifies a custom loss in train_summary.json and the MLflow params: file name, function, sha256."""
    return {"file": Path(path).name, "function": name, "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def compute_loss_func(fn, model):
    """TRL's `compute_loss_func` calling `fn(outputs, labels, batch, num_items_in_batch=...)`.

    SFTTrainer.compute_loss calls compute_loss_func(outputs, labels, num_items_in_batch=...) right after the
    forward that made `outputs`; the batch (input_ids, position_ids, ... as the collator built it) is the keyword
    arguments of that forward, kept by a forward pre-hook on the model, plus the labels."""
    seen: dict = {}

    def remember(module, args, kwargs):
        seen["batch"] = kwargs

    model.register_forward_pre_hook(remember, with_kwargs=True)

    def loss(outputs, labels, num_items_in_batch=None):
        batch = {k: v for k, v in seen.get("batch", {}).items() if k not in ("use_cache", "output_router_logits")}
        return fn(outputs, labels, {**batch, "labels": labels}, num_items_in_batch=num_items_in_batch)

    return loss


# ---------------------------------------------------------------------------------------------- LM head

LABEL_CHUNK = 1024  # labelled positions projected through the LM head at a time (1024 x vocab fp32 logits)


def score_labelled_positions_only(model) -> bool:
    """Make the trainer's LM head score only the positions that have a label, on CPU. Returns whether it did.

    SFTTrainer patches the base model with TRL's fused LM head (`model(..., fused_lm_head=True)` returns per-token
    log-probabilities, entropy and top-1 flags). On a device without Triton, TRL scores *every* position against
    the whole vocabulary, forward and again in backward, although completion-only loss needs the few answer
    positions; for a 135 M model with a 49 k vocabulary that is about a third of a step. This wraps TRL's forward
    (call it after the trainer is built): with `fused_lm_head=True` the backbone runs as before and only positions
    whose next-token label is not -100 go through the head, in checkpointed chunks, returning TRL's output type with
    the same fields, so the loss and the logged entropy/accuracy are the same numbers. Models that scale or
    soft-cap their logits, MoE router losses and pre-shifted labels (sequence parallelism) keep TRL's path, as does
    any CUDA/XPU run (TRL's Triton kernel already scores labelled positions only there)."""
    import types

    import torch
    from torch.utils.checkpoint import checkpoint
    from trl.trainer.utils import FusedCausalLMOutput

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.get_text_config()
    scaled = any(getattr(config, k, None) is not None for k in
                 ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"))
    if torch.cuda.is_available() or scaled or getattr(config, "output_router_logits", False):
        return False
    trl_forward = base.forward

    def scores(hidden, weight, bias, targets):
        logits = torch.nn.functional.linear(hidden, weight, bias).float()
        log_softmax = logits.log_softmax(-1)
        log_probs = log_softmax.gather(-1, targets[:, None]).squeeze(-1)
        entropy = -(log_softmax.exp() * log_softmax).sum(-1)
        return log_probs, entropy, logits.argmax(-1) == targets  # argmax: the first maximum, as TRL's is_top1

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head or shift_labels is not None or kwargs.get("output_router_logits"):
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        labels = labels[:, 1:].to(hidden.device)
        mask = labels != -100
        head = self.get_output_embeddings()
        picked, targets = hidden[mask], labels[mask]
        parts = [checkpoint(scores, picked[i:i + LABEL_CHUNK], head.weight, head.bias, targets[i:i + LABEL_CHUNK],
                            use_reentrant=False) for i in range(0, len(targets), LABEL_CHUNK)]
        if parts:
            flat = [torch.cat([part[k] for part in parts]) for k in range(3)]
        else:  # no labelled position: zeros that stay connected to the graph (a differentiable zero, as in TRL)
            empty = picked.float().sum(-1)
            flat = [empty, empty.detach(), empty.detach().bool()]
        log_probs, entropy, is_top1 = (mask.new_zeros(mask.shape, dtype=f.dtype).masked_scatter(mask, f) for f in flat)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-log_probs.sum() / count, log_probs=log_probs, entropy=entropy,
                                   is_top1=is_top1, label_mask=mask)

    base.forward = types.MethodType(forward, base)
    return True


# ---------------------------------------------------------------------------------------------- precision

def hardware() -> dict:
    """What the precision choice depends on, read once: CUDA present, CUDA bf16, CPU bf16 kernels."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "cuda": cuda,
        "cuda_bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "cpu_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    }


def choose_precision(requested: str, *, cuda: bool, cuda_bf16: bool, cpu_bf16: bool) -> str:
    """`auto` -> bf16 on CUDA GPUs that support it, fp16 on older CUDA GPUs, fp32 on CPU.

    An explicit choice the hardware cannot run raises UserError (fp16 on CPU, bf16 without bf16 support).
    """
    if requested == "auto":
        if cuda:
            return "bf16" if cuda_bf16 else "fp16"
        return "fp32"
    if requested == "fp32":
        return "fp32"
    if requested == "fp16" and not cuda:
        raise UserError("precision 'fp16' needs a CUDA GPU and none is available; use --precision auto or fp32")
    if requested == "bf16" and not (cuda_bf16 if cuda else cpu_bf16):
        where = "this GPU" if cuda else "this CPU"
        raise UserError(f"precision 'bf16' is not supported on {where}; use --precision auto (picks "
                        f"{'fp16' if cuda else 'fp32'}) or fp32")
    return requested


# ---------------------------------------------------------------------------------------------- data

def _completion_problem(row: dict) -> str | None:
    """Why a prep row has no usable completion tokens (None when it has)."""
    ids, plen = row["input_ids"], row["prompt_length"]
    if not isinstance(ids, list) or not isinstance(plen, int) or isinstance(plen, bool):
        return (f"input_ids must be a list and prompt_length an integer (got {type(ids).__name__}, "
                f"{type(plen).__name__}); run the prep step on the raw data first")
    if not ids or not 0 <= plen < len(ids):
        return (f"prompt_length {plen} leaves no completion tokens in {len(ids)} input_ids; re-run prep with a "
                "larger max_seq_len")
    return None


def read_prepared(path: Path) -> list[dict]:
    """Rows of a prep JSONL file as {"input_ids", "completion_mask"} (1 on completion tokens).

    Raises UserError naming the file and line of rows that do not follow the prep contract.
    """
    from slmops.data import read_prepared_rows

    rows = read_prepared_rows(path, ["input_ids", "prompt_length"], check=_completion_problem)
    if not rows:
        raise UserError(f"{path} holds no rows; re-run prep on non-empty data")
    return [{"input_ids": r["input_ids"],
             "completion_mask": [0] * r["prompt_length"] + [1] * (len(r["input_ids"]) - r["prompt_length"])}
            for r in rows]


def to_dataset(rows: list[dict], completion_only_loss: bool):
    """A `datasets.Dataset` TRL takes as already tokenized (it builds labels from `completion_mask`)."""
    from datasets import Dataset

    if not completion_only_loss:
        rows = [{"input_ids": r["input_ids"]} for r in rows]
    return Dataset.from_list(rows)


# ---------------------------------------------------------------------------------------------- checkpoints

def latest_checkpoint(folder: Path) -> Path | None:
    """The `checkpoint-N` with the largest N that holds a trainer state (a complete checkpoint), or None."""
    found = []
    for p in Path(folder).glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and p.is_dir() and (p / "trainer_state.json").exists():
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


# ---------------------------------------------------------------------------------------------- tracking

def metrics_callback():
    """A transformers callback that sends every log (loss, eval_loss, lr, ...) to the step's MLflow run via
    `slmops.tracking` (rank 0 only, so no second run is created), and measures this attempt's training wall time
    and the tokens it consumed (`state.num_input_tokens_seen`, which a resumed run restores from its checkpoint).
    """
    import time

    from transformers import TrainerCallback

    from slmops import tracking

    class MetricsCallback(TrainerCallback):
        def __init__(self):
            self.tokens_seen = self.tokens_this_attempt = 0
            self.train_seconds = 0.0
            self._start = (0.0, 0)

        def on_train_begin(self, args, state, control, **kwargs):
            self._start = (time.perf_counter(), state.num_input_tokens_seen)

        def on_train_end(self, args, state, control, **kwargs):
            self.train_seconds = time.perf_counter() - self._start[0]
            self.tokens_seen = state.num_input_tokens_seen
            self.tokens_this_attempt = state.num_input_tokens_seen - self._start[1]

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                tracking.log_metrics({k: v for k, v in logs.items() if isinstance(v, (int, float))},
                                     step=state.global_step)

    return MetricsCallback()


# ---------------------------------------------------------------------------------------------- model output

def save_mlflow_transformers(model, tokenizer, out: Path, *, tiny_marker: Path | None,
                             metadata: dict | None = None) -> None:
    """Write `model` + `tokenizer` with `mlflow.transformers.save_model` into the (empty) folder `out`:
    `MLmodel`, `model/`, `components/tokenizer/` (~2 s on the tiny model).

    Requirements are given explicitly so MLflow does not infer them. MLflow looks up the model card and license
    of `model.name_or_path` on the hub; the step sets it to the base model's absolute path for local bases, which
    MLflow rejects as a repo id at once (a warning, no network), and to the hub id otherwise (a real card).
    A tiny model's marker is copied into `model/` so loaders keep its fast tokenizer. `metadata` goes into the
    MLmodel file (finetune records its training parameters there: slmops.registration.TRAIN_METADATA)."""
    import os

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import torch
    import transformers

    reqs = [f"mlflow=={mlflow.__version__}", f"transformers=={transformers.__version__}",
            f"torch=={torch.__version__.split('+')[0]}", "safetensors", "tokenizers"]
    mlflow.transformers.save_model({"model": model, "tokenizer": tokenizer}, str(out), task="text-generation",
                                   pip_requirements=reqs, metadata=metadata)
    if tiny_marker is not None and tiny_marker.exists():
        shutil.copy(tiny_marker, Path(out) / "model" / tiny_marker.name)
