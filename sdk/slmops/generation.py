"""Prompt -> completion with greedy decoding, batched, for PyTorch (`generate`) and ONNX Runtime GenAI.

Both backends take prompt strings, tokenize them with their own tokenizer, and return the new token ids of
each prompt cut at the first end-of-sequence token; `*_complete` decodes those (special tokens skipped) and
strips whitespace, which is the prediction the metrics compare with the reference.

    from slmops import generation, models
    model, tok = models.load_causal_lm(path).eval(), models.load_tokenizer(path)
    generation.torch_complete(model, tok, prompts, max_new_tokens=16, batch_size=16)

    import onnxruntime_genai as og
    og_model = og.Model(onnx_dir)
    generation.ort_complete(og_model, og.Tokenizer(og_model), prompts, max_new_tokens=16, batch_size=16)

`min_new_tokens` forces a fixed number of new tokens (end-of-sequence suppressed until then), which is how
decode speed is measured with the same token count on both backends.
"""

from __future__ import annotations


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _cut_at_eos(ids, eos_ids: set[int]) -> list[int]:
    out = []
    for token in ids:
        if int(token) in eos_ids:
            break
        out.append(int(token))
    return out


def _starts_with_bos(tokenizer, prompts: list[str]) -> bool:
    """True when every prompt already opens with the tokenizer's begin-of-text token: a chat template wrote it
    (Llama 3 style), and prep tokenized such prompts without adding special tokens, so generation must not
    add a second one."""
    bos = tokenizer.bos_token
    return bool(bos) and all(p.startswith(bos) for p in prompts)


def torch_eos_ids(model, tokenizer) -> set[int]:
    """End-of-sequence ids: the model's generation config (int or list) plus the tokenizer's eos."""
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def torch_generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int,
                   min_new_tokens: int = 0) -> list[list[int]]:
    """Greedy `model.generate` over left-padded batches; the new token ids of each prompt, cut at eos."""
    import torch

    eos_ids = torch_eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
    saved_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models continue from the last position of each row
    results = []
    try:
        for batch in _batches(prompts, batch_size):
            enc = tokenizer(batch, return_tensors="pt", padding=True,
                            add_special_tokens=not _starts_with_bos(tokenizer, batch)).to(model.device)
            with torch.inference_mode():
                out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                     min_new_tokens=min_new_tokens, pad_token_id=pad_id,
                                     eos_token_id=sorted(eos_ids), temperature=None, top_p=None, top_k=None)
            new = out[:, enc["input_ids"].shape[1]:]
            results.extend(_cut_at_eos(row.tolist(), eos_ids) for row in new)
    finally:
        tokenizer.padding_side = saved_side
    return results


def ort_generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int,
                 min_new_tokens: int = 0) -> list[list[int]]:
    """Greedy ORT GenAI generation over batches (`og.Model`, `og.Tokenizer`); new token ids, cut at eos.

    ORT GenAI pads a batch on the right itself; every row's sequence is padded prompt + new tokens, so the
    new tokens start at the padded prompt length.
    """
    import onnxruntime_genai as og

    eos_ids = {int(i) for i in tokenizer.eos_token_ids}
    results = []
    for batch in _batches(prompts, batch_size):
        input_ids = tokenizer.encode_batch(batch)
        prompt_len = input_ids.as_numpy().shape[1]
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, batch_size=len(batch), max_length=prompt_len + max_new_tokens,
                                  min_length=prompt_len + min_new_tokens)
        generator = og.Generator(model, params)
        generator.append_tokens(input_ids)
        while not generator.is_done():
            generator.generate_next_token()
        results.extend(_cut_at_eos(generator.get_sequence(i)[prompt_len:], eos_ids) for i in range(len(batch)))
        del generator
    return results


def torch_complete(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy completions (decoded, special tokens skipped, stripped) with PyTorch."""
    ids = torch_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def ort_complete(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy completions (decoded, special tokens skipped, stripped) with ORT GenAI."""
    ids = ort_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [tokenizer.decode(row).strip() if row else "" for row in ids]


def reference(row: dict, task: str, special_tokens: list[str]) -> str:
    """What a prediction is compared with: the label (classification, when prep recorded one), otherwise the
    completion text with the tokenizer's special tokens (e.g. a template's `<|end|>`) removed, stripped."""
    if task == "classification" and row.get("label") is not None:
        return str(row["label"]).strip()
    text = row["completion"]
    for token in special_tokens:
        text = text.replace(token, "")
    return text.strip()


def read_examples(test_data: str, max_samples: int, *, need_input_ids: bool = False) -> list[dict]:
    """The held-out rows of prep's `validation.jsonl` in `test_data` (the first `max_samples`; 0 = all).

    Raises UserError naming the file, line and field of every bad row (up to 10).
    """
    from pathlib import Path

    from slmops.data import read_prepared_rows
    from slmops.errors import UserError

    path = Path(test_data) / "validation.jsonl"
    if not path.is_file():
        raise UserError(f"test_data {str(test_data)!r} has no validation.jsonl; pass prep's output_data folder")
    required = ["prompt", "completion"] + (["input_ids", "prompt_length"] if need_input_ids else [])
    rows = read_prepared_rows(path, required, limit=max_samples)
    if not rows:
        raise UserError(f"{path} has no rows; prep must hold out a validation split (validation_fraction > 0)")
    return rows
