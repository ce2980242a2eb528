"""Library helpers for the finetune step: precision choice, prepared-data loading, checkpoints, DeepSpeed
configs, MLflow metric logging and throughput, and writing the merged model in the `mlflow.transformers` layout.

The step (`slmops.steps.finetune`) keeps the parse -> validate -> load -> train -> save flow in plain view and
calls these small functions; each takes explicit arguments so it can be tested on its own.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from slmops.errors import UserError

DEEPSPEED_DIR = Path(__file__).parent / "deepspeed"
DEEPSPEED_CONFIGS = {"zero2": DEEPSPEED_DIR / "zero2.json", "zero3": DEEPSPEED_DIR / "zero3.json"}


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

def save_mlflow_transformers(model, tokenizer, out: Path, *, tiny_marker: Path | None) -> None:
    """Write `model` + `tokenizer` with `mlflow.transformers.save_model` into the (empty) folder `out`:
    `MLmodel`, `model/`, `components/tokenizer/` (~2 s on the tiny model).

    Requirements are given explicitly so MLflow does not infer them. MLflow looks up the model card and license
    of `model.name_or_path` on the hub; the step sets it to the base model's absolute path for local bases, which
    MLflow rejects as a repo id at once (a warning, no network), and to the hub id otherwise (a real card).
    A tiny model's marker is copied into `model/` so loaders keep its fast tokenizer."""
    import os

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import torch
    import transformers

    reqs = [f"mlflow=={mlflow.__version__}", f"transformers=={transformers.__version__}",
            f"torch=={torch.__version__.split('+')[0]}", "safetensors", "tokenizers"]
    mlflow.transformers.save_model({"model": model, "tokenizer": tokenizer}, str(out), task="text-generation",
                                   pip_requirements=reqs)
    if tiny_marker is not None and tiny_marker.exists():
        shutil.copy(tiny_marker, Path(out) / "model" / tiny_marker.name)
