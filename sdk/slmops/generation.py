"""Prompt -> completion, batched, for PyTorch (`generate`) and ONNX Runtime GenAI: the one generation path that
evaluate, optimize and the serving script (`serving/score.py`) share, so a served answer is the evaluated one.

The steps, the same for both backends and for one prompt or many:

1. **prompt**: a string as is, or chat `messages` rendered with the tokenizer's chat template and its generation
   prompt (`*_render_chat`, as prep renders the prompt of a `messages` row).
2. **tokens** (`*_encode`): the tokenizer's special tokens (BOS) are added unless the prompt already opens with
   the token they would add (a Llama-3-style chat template wrote `<|begin_of_text|>`; prep tokenized such
   prompts without special tokens), so the model never sees two BOS. Decided per prompt.
3. **generation**: greedy (`temperature` 0, the default) or sampled; batches of `batch_size` prompts (left
   padded for PyTorch, right padded by ORT GenAI), each prompt with its own `max_new_tokens`. A prefix every
   prompt of a call shares is run once: PyTorch gives its cache to each batch; ORT GenAI on a CPU runs greedy
   prompts one at a time through an `OrtPromptCache` when that beats batching (`_use_cache`), which the serving
   script also keeps across requests.
4. **stop**: at the first end-of-sequence id - the model's generation config plus the tokenizer's eos for
   PyTorch, the tokenizer's `eos_token_ids` (genai_config) for ORT GenAI. The end token is not part of the
   completion. `finish_reason` is "stop" when the completion is shorter than its `max_new_tokens` (an end token
   came), "length" otherwise. In a batch that mixes limits each row stops at its own, and the call ends once
   every row has its limit or an end token (batched serving; the ids are those of one prompt at a time).
5. **text**: the new ids decoded with special tokens skipped, whitespace stripped - the prediction the metrics
   compare with the reference, and the `text` the serving script returns.

    from slmops import generation, models
    model, tok = models.load_causal_lm(path).eval(), models.load_tokenizer(path)
    generation.torch_complete(model, tok, prompts, max_new_tokens=16, batch_size=16)        # texts
    generation.torch_completions(model, tok, prompts, max_new_tokens=[16, 4], batch_size=2)  # Completion each

    import onnxruntime_genai as og
    og_model = og.Model(onnx_dir)
    generation.ort_complete(og_model, og.Tokenizer(og_model), prompts, max_new_tokens=16, batch_size=16)

**Adapters** (several LoRA adapters on one base, `slmops.adapters`): `adapter=NAME` makes every prompt of the call
use that adapter - PyTorch: a PEFT model with its adapters loaded (`model.set_adapter(NAME)` before generating);
ORT GenAI: the `og.Adapters` they were loaded into, passed as `adapters=`
(`generator.set_active_adapter(adapters, NAME)` on each batch's generator). Without `adapter` nothing changes.

**Progress**: `progress=` (a callable, e.g. `slmops.progress` `Tracker.advance`) is called with the number of prompts
each batch completed; without it nothing is reported.

`min_new_tokens` forces a fixed number of new tokens (end-of-sequence suppressed until then), which is how
decode speed is measured with the same token count on both backends (`*_generate`: the ids only, nothing
decoded).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Completion:
    """One prompt's completion."""

    text: str            # `ids` decoded, special tokens skipped, stripped
    ids: list[int]       # the new token ids, up to (not including) the first end-of-sequence id
    prompt_tokens: int   # the prompt's token count, special tokens included (no padding)
    finish_reason: str   # "stop": the model ended the text; "length": max_new_tokens ended it


def _cut_at_eos(ids, eos_ids: set[int]) -> list[int]:
    out = []
    for token in ids:
        if int(token) in eos_ids:
            break
        out.append(int(token))
    return out


def _per_prompt(max_new_tokens: int | list[int], n: int) -> list[int]:
    if isinstance(max_new_tokens, int):
        return [max_new_tokens] * n
    if len(max_new_tokens) != n:
        raise ValueError(f"max_new_tokens has {len(max_new_tokens)} values for {n} prompts")
    return list(max_new_tokens)


def _finish(ids: list[int], max_new_tokens: int) -> str:
    return "stop" if len(ids) < max_new_tokens else "length"


def _one_bos(with_special: list[int], plain: list[int]) -> list[int]:
    """The BOS rule: the prompt's ids with the tokenizer's special tokens, unless the prompt already opens with
    the token the tokenizer puts first (it would be there twice) - then the ids without special tokens."""
    if plain and len(with_special) > len(plain) and with_special[0] == plain[0] \
            and with_special[1:len(plain) + 1] == plain:
        return plain
    return with_special


# ---------------------------------------------------------------------------------------------------- PyTorch

def torch_render_chat(tokenizer, messages: list[dict]) -> str:
    """Chat `messages` as a prompt: the chat template with its generation prompt (as prep renders them)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def torch_encode(tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids, BOS rule applied (module docstring, step 2)."""
    with_special = list(tokenizer(prompt)["input_ids"])
    return _one_bos(with_special, list(tokenizer(prompt, add_special_tokens=False)["input_ids"]))


def torch_eos_ids(model, tokenizer) -> set[int]:
    """End-of-sequence ids: the model's generation config (int or list) plus the tokenizer's eos."""
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _torch_row_limits(limits: list[int], width: int):
    """A `generate` stopping criterion that marks row i finished once it has `limits[i]` new tokens (transformers
    then pads that row and ends the call when every row is finished, by its limit or its end token)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class RowLimits(StoppingCriteria):
        def __init__(self):
            self.limits = torch.tensor(limits)

        def __call__(self, input_ids, scores, **kwargs):
            return (input_ids.shape[1] - width) >= self.limits.to(input_ids.device)

    return StoppingCriteriaList([RowLimits()])


# A prefix at least this long that every prompt of a call shares (a system prompt, k-shot examples) is run once and
# its key/value cache reused by every batch: the k-shot baseline's 350-token prompts cost what their last turn costs.
SHARED_PREFIX_MIN_TOKENS = 32


def _common_length(sequences: list[list[int]], stop: int) -> int:
    """The number of leading ids all `sequences` share, at most `stop`."""
    first, n = sequences[0], 0
    while n < stop and all(ids[n] == first[n] for ids in sequences):
        n += 1
    return n


def _shared_prefix(encoded: list[list[int]]) -> int:
    """The number of leading ids every prompt shares, leaving each prompt at least one id of its own."""
    if len(encoded) < 2:
        return 0
    n = _common_length(encoded, min(len(ids) for ids in encoded) - 1)
    return n if n >= SHARED_PREFIX_MIN_TOKENS else 0


def _torch_prefix_cache(model, prefix: list[int]):
    """The key/value cache of `prefix` (one row), computed once."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prefix], device=model.device), use_cache=True)
    return out.cache


def _torch_run(model, tokenizer, prompts: list[str], *, max_new_tokens: int | list[int], batch_size: int,
               min_new_tokens: int = 0, temperature: float = 0.0, adapter: str | None = None,
               progress=None) -> list[tuple[int, list[int]]]:
    """(prompt token count, new ids cut at eos) of each prompt: `model.generate` over left-padded batches.

    When every prompt opens with the same ids (`_shared_prefix`), those are run once: each row is the shared
    prefix, left padding, then the prompt's own ids, with the prefix's cache given to `generate` (which runs only
    the uncached ids; positions follow the attention mask, so the padding in the middle is skipped).
    """
    import copy

    import torch

    limits = _per_prompt(max_new_tokens, len(prompts))
    if adapter is not None:  # before the shared prefix's cache, which the adapter changes too
        model.set_adapter(adapter)
    eos_ids = torch_eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
    if temperature > 0:
        search = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    else:
        search = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    all_encoded = [torch_encode(tokenizer, p) for p in prompts]
    shared = _shared_prefix(all_encoded)
    prefix_cache = _torch_prefix_cache(model, all_encoded[0][:shared]) if shared else None
    results = []
    for start in range(0, len(prompts), batch_size):
        encoded = all_encoded[start:start + batch_size]
        batch_limits = limits[start:start + batch_size]
        width = max(len(ids) - shared for ids in encoded)
        # decoder-only models continue from the last position of each row: pad on the left (after the prefix)
        input_ids = torch.full((len(encoded), shared + width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), shared + width), dtype=torch.long)
        input_ids[:, :shared] = torch.tensor(encoded[0][:shared], dtype=torch.long)
        attention_mask[:, :shared] = 1
        for i, ids in enumerate(encoded):
            own = ids[shared:]
            if own:
                input_ids[i, shared + width - len(own):] = torch.tensor(own)
                attention_mask[i, shared + width - len(own):] = 1
        cache = {}
        if prefix_cache is not None:
            cache = {"cache": copy.deepcopy(prefix_cache)}
            cache["cache"].batch_repeat_interleave(len(encoded))
        # A batch that mixes limits (batched serving) stops each row at its own limit, so the call ends once every
        # row is done, not once the short rows too reach the largest limit or an end token; the ids are the same
        stop = {} if len(set(batch_limits)) == 1 else {
            "stopping_criteria": _torch_row_limits(batch_limits, shared + width)}
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                                 max_new_tokens=max(batch_limits), min_new_tokens=min_new_tokens,
                                 pad_token_id=pad_id, eos_token_id=sorted(eos_ids), **cache, **search, **stop)
        new = out[:, shared + width:]
        results.extend((len(ids), _cut_at_eos(row[:limit].tolist(), eos_ids))
                       for ids, row, limit in zip(encoded, new, batch_limits))
        if progress is not None:
            progress(len(encoded))
    return results


def torch_completions(model, tokenizer, prompts: list[str], *, max_new_tokens: int | list[int], batch_size: int,
                      temperature: float = 0.0, adapter: str | None = None, progress=None) -> list[Completion]:
    """The completion of each prompt with PyTorch (`max_new_tokens`: one for all, or one per prompt)."""
    runs = _torch_run(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                      temperature=temperature, adapter=adapter, progress=progress)
    texts = tokenizer.batch_decode([ids for _, ids in runs], skip_special_tokens=True)
    return [Completion(text.strip(), ids, n_prompt, _finish(ids, limit))
            for (n_prompt, ids), text, limit in zip(runs, texts, _per_prompt(max_new_tokens, len(prompts)))]


def torch_generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int,
                   min_new_tokens: int = 0, adapter: str | None = None) -> list[list[int]]:
    """Greedy: the new token ids of each prompt, cut at eos (nothing decoded; decode-speed measurement)."""
    return [ids for _, ids in _torch_run(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                         batch_size=batch_size, min_new_tokens=min_new_tokens, adapter=adapter)]


def torch_complete(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int,
                   adapter: str | None = None, progress=None) -> list[str]:
    """Greedy completions (decoded, special tokens skipped, stripped) with PyTorch."""
    return [c.text for c in torch_completions(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                              batch_size=batch_size, adapter=adapter, progress=progress)]


# ------------------------------------------------------------------------------------------- ONNX Runtime GenAI

def ort_render_chat(tokenizer, messages: list[dict]) -> str:
    """Chat `messages` as a prompt with ORT GenAI's tokenizer (the chat template copied beside the model)."""
    import json

    return tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)


def ort_encode(tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids, BOS rule applied (module docstring, step 2).

    Sets the `og.Tokenizer`'s add_special_tokens option (its default follows tokenizer_config.json, not the
    tokenizer's post-processor as transformers does); every encode here sets it first.
    """
    tokenizer.update_options(add_special_tokens="true")
    with_special = [int(t) for t in tokenizer.encode(prompt)]
    tokenizer.update_options(add_special_tokens="false")
    plain = [int(t) for t in tokenizer.encode(prompt)]
    return _one_bos(with_special, plain)


def ort_eos_ids(tokenizer) -> set[int]:
    """End-of-sequence ids: the tokenizer's `eos_token_ids` (genai_config.json's eos_token_id)."""
    return {int(i) for i in tokenizer.eos_token_ids}


class OrtPromptCache:
    """ORT GenAI continuous decoding: one batch-1 generator per adapter that keeps the key/value cache of the last
    prompt (and answer) it ran. A prompt sharing a prefix with it (a system prompt, k-shot examples, an earlier
    chat turn) runs only its own ids: `rewind_to(shared)`, then `append_tokens(rest)`. Greedy only: a generator's
    search options are fixed when it is made. Not thread-safe (the batcher's one thread owns it).

    ORT GenAI cannot give a batch a cached prefix (`append_tokens` runs once for batch > 1, `rewind_to` needs batch
    1), so the cache runs prompts one at a time: `_ort_run` takes it when the prefix it saves outweighs what
    batching would save (`_use_cache`)."""

    LENGTH_STEP = 512  # with a context_length: a generator's max_length (its key/value buffer) is the prompt + new
                       # tokens it needs rounded up to a multiple of this, up to the context (few re-made generators,
                       # and the buffer it keeps is at most one step larger than the longest request seen)

    def __init__(self, model, adapters=None, context_length: int | None = None):
        self.model, self.adapters, self.context_length = model, adapters, context_length
        self.slots: dict = {}  # adapter (None without) -> [generator, its max_length, the ids in its cache]

    def reusable(self, ids: list[int], adapter: str | None) -> int:
        """How many leading ids of `ids` the adapter's generator holds already (at least one id is left to run).
        The last id held is the last one generated, which a generator runs only with the next step: it is run again
        with the prompt's own ids rather than relied on."""
        slot = self.slots.get(adapter)
        return 0 if slot is None else _common_length([slot[2], ids], min(len(slot[2]) - 1, len(ids) - 1))

    def _slot(self, need: int, adapter: str | None) -> list:
        import onnxruntime_genai as og

        slot = self.slots.get(adapter)
        if slot is None or slot[1] < need:
            step = self.LENGTH_STEP
            length = need if not self.context_length else max(need, min(-(-need // step) * step, self.context_length))
            params = og.GeneratorParams(self.model)
            params.set_search_options(do_sample=False, batch_size=1, max_length=length, min_length=0)
            generator = og.Generator(self.model, params)
            if adapter is not None:
                generator.set_active_adapter(self.adapters, adapter)
            slot = self.slots[adapter] = [generator, length, []]
        return slot

    def generate(self, ids: list[int], limit: int, eos_ids: set[int], adapter: str | None,
                 need: int = 0) -> list[int]:
        """Greedy new ids of the prompt `ids` (up to `limit`, cut at an end id), reusing the held prefix. `need`:
        the prompt + new tokens the generator should have room for (at least this prompt's)."""
        import numpy as np

        slot = self._slot(max(need, len(ids) + limit), adapter)
        generator, shared = slot[0], self.reusable(ids, adapter)  # a new generator holds nothing: 0
        generator.rewind_to(shared)
        slot[2] = []  # if the calls below raise, nothing is assumed held (the next call rewinds to 0)
        generator.append_tokens(np.array([ids[shared:]], dtype=np.int32))
        new = []
        while len(new) < limit:
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in eos_ids:
                break
            new.append(token)
        slot[2] = [int(t) for t in generator.get_sequence(0)]
        return new


def _use_cache(cache, encoded: list[list[int]], limits: list[int], adapter: str | None) -> bool:
    """Whether a call runs its prompts one at a time through `cache` rather than in batches. One prompt: always
    (it costs what a batch of one costs, and leaves its prefix for the next call). Several: when they share a
    prefix of at least SHARED_PREFIX_MIN_TOKENS (with each other or with the cache) and ask for no more new tokens
    than that - on a CPU a prefix token's prefill costs about what batching saves on one decoded token (a decode
    step at batch 1 costs twice a batched row's; bench/serving_throughput.py, docs/serving.md)."""
    if len(encoded) == 1:
        return True
    shared = max(_shared_prefix(encoded), cache.reusable(encoded[0], adapter))
    return shared >= SHARED_PREFIX_MIN_TOKENS and max(limits) <= shared


def _ort_run(model, tokenizer, prompts: list[str], *, max_new_tokens: int | list[int], batch_size: int,
             min_new_tokens: int = 0, temperature: float = 0.0, adapters=None,
             adapter: str | None = None, progress=None, cache: OrtPromptCache | None = None,
             on_done=None) -> list[tuple[int, list[int]]]:
    """(prompt token count, new ids cut at eos) of each prompt: ORT GenAI (`og.Model`, `og.Tokenizer`) over batches,
    or, greedy with a `cache` (`_use_cache`), one at a time through it.

    A batch is right padded with the pad id (what `og.Tokenizer.encode_batch` does; ORT GenAI masks pad ids),
    and every row's sequence is padded prompt + new tokens, so the new tokens start at the padded width.
    """
    import numpy as np
    import onnxruntime_genai as og

    limits = _per_prompt(max_new_tokens, len(prompts))
    if adapter is not None and adapters is None:
        raise ValueError(f"adapter {adapter!r} without adapters: pass the og.Adapters it was loaded into")
    eos_ids = ort_eos_ids(tokenizer)
    all_encoded = [ort_encode(tokenizer, p) for p in prompts]
    results = []
    if cache is not None and temperature == 0 and min_new_tokens == 0 \
            and _use_cache(cache, all_encoded, limits, adapter):
        need = max(len(ids) + limit for ids, limit in zip(all_encoded, limits))
        for i, (ids, limit) in enumerate(zip(all_encoded, limits)):
            results.append((len(ids), cache.generate(ids, limit, eos_ids, adapter, need)))
            if on_done is not None:
                on_done(i, results[-1])
            if progress is not None:
                progress(1)
        return results
    for start in range(0, len(prompts), batch_size):
        encoded = all_encoded[start:start + batch_size]
        batch_limits = limits[start:start + batch_size]
        width = max(len(ids) for ids in encoded)
        input_ids = np.full((len(encoded), width), tokenizer.pad_token_id, dtype=np.int32)
        for i, ids in enumerate(encoded):
            input_ids[i, :len(ids)] = ids
        params = og.GeneratorParams(model)
        search = {"do_sample": temperature > 0, "batch_size": len(encoded),
                  "max_length": width + max(batch_limits), "min_length": width + min_new_tokens}
        if temperature > 0:
            search.update(temperature=temperature, top_k=0, top_p=1.0)
        params.set_search_options(**search)
        generator = og.Generator(model, params)
        if adapter is not None:
            generator.set_active_adapter(adapters, adapter)
        generator.append_tokens(input_ids)
        # ORT GenAI has one max_length per batch: when limits differ (batched serving), stop once every row has its
        # limit or an end token, not once the short rows too reach the largest limit; the ids are the same
        open_rows = None if len(set(batch_limits)) == 1 else np.array(batch_limits)
        steps = 0
        while not generator.is_done():
            generator.generate_next_token()
            if open_rows is not None:
                steps += 1
                ended = np.isin(generator.get_next_tokens(), list(eos_ids)) & (steps > min_new_tokens)
                open_rows = np.where(ended | (steps >= open_rows), 0, open_rows)
                if not open_rows.any():
                    break
        results.extend((len(ids), _cut_at_eos(generator.get_sequence(i)[width:width + limit], eos_ids))
                       for i, (ids, limit) in enumerate(zip(encoded, batch_limits)))
        del generator
        if progress is not None:
            progress(len(encoded))
    return results


def ort_completions(model, tokenizer, prompts: list[str], *, max_new_tokens: int | list[int], batch_size: int,
                    temperature: float = 0.0, adapters=None, adapter: str | None = None,
                    progress=None, cache: OrtPromptCache | bool = True, on_done=None) -> list[Completion]:
    """The completion of each prompt with ORT GenAI (`max_new_tokens`: one for all, or one per prompt). `cache`:
    an OrtPromptCache kept across calls (the serving script's), True for one made for this call when the model
    runs on the CPU (where reusing a shared prefix beats batching, `_use_cache`), False for none. `on_done(i,
    completion)` is called as each prompt's completion is ready when the cache runs them one at a time (the
    serving batcher answers those requests at once)."""
    if cache is True:
        cache = OrtPromptCache(model, adapters) if model.device_type == "CPU" else None
    limits = _per_prompt(max_new_tokens, len(prompts))

    def completion(run: tuple[int, list[int]], limit: int) -> Completion:
        n_prompt, ids = run
        return Completion(tokenizer.decode(ids).strip() if ids else "", ids, n_prompt, _finish(ids, limit))

    each = None if on_done is None else (lambda i, run: on_done(i, completion(run, limits[i])))
    runs = _ort_run(model, tokenizer, prompts, max_new_tokens=limits, batch_size=batch_size,
                    temperature=temperature, adapters=adapters, adapter=adapter, progress=progress,
                    cache=cache or None, on_done=each)
    return [completion(run, limit) for run, limit in zip(runs, limits)]


def ort_generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int,
                 min_new_tokens: int = 0, adapters=None, adapter: str | None = None) -> list[list[int]]:
    """Greedy: the new token ids of each prompt, cut at eos (nothing decoded; decode-speed measurement)."""
    return [ids for _, ids in _ort_run(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, min_new_tokens=min_new_tokens, adapters=adapters,
                                       adapter=adapter)]


def ort_complete(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int, adapters=None,
                 adapter: str | None = None, progress=None) -> list[str]:
    """Greedy completions (decoded, special tokens skipped, stripped) with ORT GenAI."""
    return [c.text for c in ort_completions(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                            batch_size=batch_size, adapters=adapters, adapter=adapter,
                                            progress=progress)]


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
    """The first `max_samples` (0 = all) rows of prep's `test.jsonl` in `test_data`: what evaluate, optimize (and
    through them the register gate) score. Never validation.jsonl: finetune chose its checkpoint on it, so scores
    there read high. Raises UserError when the file is missing or empty, and naming the file, line and field of
    every bad row (up to 10)."""
    from pathlib import Path

    from slmops.data import read_prepared_rows
    from slmops.errors import UserError

    path = Path(test_data) / "test.jsonl"
    if not path.is_file():
        raise UserError(f"no test.jsonl in {str(test_data)!r}: evaluate and optimize score prep's test split only "
                        "(finetune chose its checkpoint on validation.jsonl, so scores there read high); re-run prep "
                        "with this version of slmops, which writes train.jsonl, validation.jsonl and test.jsonl")
    required = ["prompt", "completion"] + (["input_ids", "prompt_length"] if need_input_ids else [])
    rows = read_prepared_rows(path, required, limit=max_samples)
    if not rows:
        raise UserError(f"{path} has no rows; re-run prep with a test split (--test_fraction > 0 or --test_data)")
    return rows
