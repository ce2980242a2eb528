"""Where models come from and how they are loaded: a local Hugging Face folder, an MLflow model folder
(`mlflow.transformers` layout), or a Hugging Face hub id (uses the local HF cache, or the network when the
user has one; the quickstart passes local folders, and tests/test_hub_ids.py resolves hub ids from a
temporary HF cache offline; an id found neither there nor on the hub is a UserError).

Every step loads its models through these functions, so the same inputs work for every step.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from slmops.errors import UserError

TINY_MARKER = "slmops_tiny.json"  # written by slmops.tiny; such folders load PreTrainedTokenizerFast directly


@dataclass(frozen=True)
class ModelSource:
    """Resolved locations of a model's weights and tokenizer (`weights`/`tokenizer` are paths or a hub id)."""

    weights: str
    tokenizer: str
    is_local: bool
    is_tiny: bool = False
    adapter: str | None = None  # a PEFT adapter folder when the source is an adapter on a base


def resolve(path_or_id: str | os.PathLike) -> ModelSource:
    """Resolve a model reference. Raises UserError with the fix when a local path is not a model."""
    ref = str(path_or_id)
    p = Path(ref).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UserError(f"model path {ref!r} is a file; pass the model folder (with config.json or MLmodel)")
        if (p / "MLmodel").exists():  # mlflow.transformers layout
            weights = p / "model"
            tok = p / "components" / "tokenizer"
            if not weights.is_dir():
                raise UserError(f"MLflow model {ref!r} has no 'model/' folder; is it a transformers-flavor model?")
            return ModelSource(str(weights), str(tok if tok.is_dir() else weights), True,
                               (weights / TINY_MARKER).exists() or (p / TINY_MARKER).exists())
        if (p / "adapter_config.json").exists():
            base = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
            if not base:
                raise UserError(f"adapter {ref!r} names no base model (base_model_name_or_path)")
            src = resolve(base)
            return ModelSource(src.weights, src.tokenizer, src.is_local, src.is_tiny, adapter=str(p))
        if not (p / "config.json").exists():
            found = sorted(x.name for x in p.iterdir())[:10]
            raise UserError(
                f"{ref!r} is not a model folder: no config.json, MLmodel or adapter_config.json in it "
                f"(found: {found}); pass a Hugging Face model folder, an MLflow model folder, or a hub id"
            )
        return ModelSource(str(p), str(p), True, (p / TINY_MARKER).exists())
    if ref.startswith((".", "/", "~")) or os.sep in ref.strip("/").replace("/", "", 1):
        raise UserError(f"model path {ref!r} does not exist; check the path or pass a hub id like 'org/name'")
    return ModelSource(ref, ref, False)


def check_weights(path_or_id: str | os.PathLike) -> ModelSource:
    """`resolve()`, then, for a local model, every weight and config file read whole (`slmops.weights.check_files`:
    safetensors headers and sizes, configs, shard indexes): a truncated or corrupt model is a UserError naming the
    file before any work starts, not a traceback minutes later."""
    from slmops import weights

    source = resolve(path_or_id)
    if source.is_local:
        weights.check_files(source.weights)
        if source.adapter:
            weights.check_files(source.adapter)
    return source


def _from_pretrained(cls, ref: str, *, local: bool, what: str, **kwargs):
    """`cls.from_pretrained(ref)`. For a hub id, the OSError transformers raises when the id is neither in the
    local HF cache nor reachable on the hub becomes a UserError (exit 2) that says how to fix it."""
    if local:
        return cls.from_pretrained(ref, **kwargs)
    try:
        return cls.from_pretrained(ref, **kwargs)
    except OSError as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        where = ("only the local Hugging Face cache was searched because HF_HUB_OFFLINE is set"
                 if offline else "looked in the local Hugging Face cache and on the hub")
        raise UserError(
            f"could not load the {what} of hub model {ref!r} ({where}): {reason} -- check the id is spelled "
            "'org/name' exactly as on huggingface.co; for a gated or private model log in (`hf auth login` or "
            "HF_TOKEN) and check the network (or unset HF_HUB_OFFLINE, or pre-fill the cache, HF_HUB_CACHE); "
            "or pass a local model folder instead"
        ) from exc


def load_tokenizer(path_or_id: str | os.PathLike):
    """Load the tokenizer; pad token falls back to eos. Tiny models use PreTrainedTokenizerFast directly
    (AutoTokenizer would pick e.g. Qwen2Tokenizer for a Qwen2 config, which splits digits differently)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    src = resolve(path_or_id)
    if src.is_tiny:
        tok = PreTrainedTokenizerFast.from_pretrained(src.tokenizer)
    else:
        tok = _from_pretrained(AutoTokenizer, src.tokenizer, local=src.is_local, what="tokenizer")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path_or_id: str | os.PathLike, *, dtype=None, quantization_config=None, device_map=None,
                   merge_adapter: bool = False):
    """Load a causal LM (and its PEFT adapter, if the reference is an adapter folder)."""
    from transformers import AutoModelForCausalLM

    src = resolve(path_or_id)
    kwargs = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = _from_pretrained(AutoModelForCausalLM, src.weights, local=src.is_local, what="weights", **kwargs)
    if src.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, src.adapter)
        if merge_adapter:
            model = model.merge_and_unload()
    return model
