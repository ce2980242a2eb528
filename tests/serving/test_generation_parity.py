"""One generation path: what score.py serves equals what evaluate (PyTorch) and optimize (ORT GenAI) measure.

For each backend, the tiny random-init model answers a set of prompts - raw strings of uneven lengths and chat
`messages` - through score.py's `init()` + `run()` one request at a time, and through `generation.torch_complete`
/ `generation.ort_complete` called as evaluate / optimize call them: all prompts in one left/right-padded batch,
chat prompts rendered the way prep renders them. Text, token counts and finish reasons must be equal. A copy of
each model with one extra end-of-sequence id (a token its greedy continuation emits) makes some answers end with
"stop"; a copy whose tokenizer adds a BOS token (and whose chat template writes one) checks the BOS rule.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from slmops import generation, models

PROMPTS = ["After the call, I felt furious.", "hi", "What is the tone of this phrase? " + "We were delighted. " * 6]
CHATS = [
    [{"role": "user", "content": "What is the tone of this phrase? I felt furious about the call."}],
    [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "Tone? We were sad."}],
]
MAX_NEW = 8
BOS = "<|system|>"  # stands in for <|begin_of_text|> in the BOS-adding copies


def hf_chat_prompt(model_dir, messages) -> str:
    """A chat prompt as prep renders it (data.render_messages), i.e. what evaluate and optimize generate from."""
    return models.load_tokenizer(model_dir).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def add_end_token(hf_dir: Path, onnx_dir: Path, out: Path) -> tuple[Path, Path, int, int]:
    """Copies of both models with one more end-of-sequence id: the first token of PROMPTS[0]'s greedy
    continuation (from position 2 on) not seen before it. Returns (hf copy, onnx copy, that id, its position)."""
    import torch

    model = models.load_causal_lm(hf_dir, dtype=torch.float32).eval()
    [ids] = generation.torch_generate(model, models.load_tokenizer(hf_dir), PROMPTS[:1], max_new_tokens=MAX_NEW,
                                      batch_size=1)
    position = next(i for i in range(2, len(ids)) if ids[i] not in ids[:i])
    end = ids[position]
    hf, onnx = out / "hf-stop", out / "onnx-stop"
    shutil.copytree(hf_dir, hf)
    shutil.copytree(onnx_dir, onnx)
    for path, section in [(hf / "generation_config.json", None), (onnx / "genai_config.json", "model")]:
        config = json.loads(path.read_text())
        node = config[section] if section else config
        node["eos_token_id"] = [*node["eos_token_id"], end]
        path.write_text(json.dumps(config, indent=2))
    return hf, onnx, end, position


def add_bos(hf_dir: Path, onnx_dir: Path, out: Path) -> tuple[Path, Path]:
    """Copies whose tokenizer adds BOS (as Llama 3's does) and whose chat template opens with it."""
    from tokenizers import processors

    from slmops.tiny import CHAT_TEMPLATE

    tok = models.load_tokenizer(hf_dir)
    tok.bos_token = BOS
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tok.convert_tokens_to_ids(BOS))])
    tok.chat_template = BOS + CHAT_TEMPLATE
    hf, onnx = out / "hf-bos", out / "onnx-bos"
    shutil.copytree(hf_dir, hf)
    shutil.copytree(onnx_dir, onnx)
    tok.save_pretrained(hf)
    tok.save_pretrained(out / "bos-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(out / "bos-tokenizer" / name, onnx / name)
    return hf, onnx


@pytest.fixture(scope="module")
def variants(tiny_model, onnx_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("parity")
    hf_stop, onnx_stop, end, position = add_end_token(Path(tiny_model), Path(onnx_model), out)
    hf_bos, onnx_bos = add_bos(Path(tiny_model), Path(onnx_model), out)
    return {"pytorch": Path(tiny_model), "onnx": Path(onnx_model), "pytorch-stop": hf_stop, "onnx-stop": onnx_stop,
            "pytorch-bos": hf_bos, "onnx-bos": onnx_bos, "end": end, "position": position}


def serve(folder: Path, monkeypatch):
    """score.py's init() on `folder` mounted as Azure ML mounts a model; returns the score module."""
    from slmops.serving import score

    monkeypatch.setenv("AZUREML_MODEL_DIR", str(folder))
    score.init()
    return score


def evaluated(kind: str, folder: Path, prompts: list[str], max_new_tokens: int):
    """(texts, new ids, prompt ids) as evaluate (PyTorch) / optimize (ORT GenAI) generate them: one batch."""
    if kind == "pytorch":
        import torch

        model = models.load_causal_lm(folder, dtype=torch.float32).eval()  # as evaluate.score loads it
        tok = models.load_tokenizer(folder)
        texts = generation.torch_complete(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=16)
        ids = generation.torch_generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=16)
        return texts, ids, [generation.torch_encode(tok, p) for p in prompts]
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    tok = og.Tokenizer(model)
    texts = generation.ort_complete(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=16)
    ids = generation.ort_generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=16)
    return texts, ids, [generation.ort_encode(tok, p) for p in prompts]


@pytest.mark.parametrize("variant", ["pytorch", "onnx", "pytorch-stop", "onnx-stop"])
def test_served_answer_is_the_evaluated_one(variant, variants, monkeypatch):
    kind = variant.split("-")[0]
    folder = variants[variant]
    score = serve(folder, monkeypatch)
    assert score.MODEL.kind == kind
    hf_folder = variants[variant.replace("onnx", "pytorch")]  # prep renders chat prompts with the HF tokenizer
    prompts = PROMPTS + [hf_chat_prompt(hf_folder, m) for m in CHATS]
    if kind == "onnx":  # ORT GenAI's chat template renders them the same
        assert [score.MODEL.render_chat(m) for m in CHATS] == prompts[len(PROMPTS):]
    texts, ids, prompt_ids = evaluated(kind, folder, prompts, MAX_NEW)

    served = [score.run(prompt=p, max_new_tokens=MAX_NEW) for p in PROMPTS]
    served += [score.run(messages=m, max_new_tokens=MAX_NEW) for m in CHATS]
    got = [(a["text"], a["completion_tokens"], a["prompt_tokens"], a["finish_reason"], a["model"]) for a in served]
    want = [(t, len(i), len(p), "stop" if len(i) < MAX_NEW else "length", folder.name)
            for t, i, p in zip(texts, ids, prompt_ids)]
    assert got == want
    assert all(ids) and any(t for t in texts)  # non-empty completions: the comparison says something

    if variant.endswith("-stop"):  # the extra end id cut PROMPTS[0] where it was emitted
        assert served[0]["finish_reason"] == "stop" and served[0]["completion_tokens"] == variants["position"]
        assert variants["end"] not in ids[0]
    else:
        assert all(a["finish_reason"] == "length" and a["completion_tokens"] == MAX_NEW for a in served)


@pytest.mark.parametrize("kind", ["pytorch", "onnx"])
def test_served_ids_are_plain_greedy_decoding(kind, variants, monkeypatch):
    """An independent reference: the runtime's own greedy loop on the prompt ids, cut at the first end id."""
    folder = variants[f"{kind}-stop"]
    score = serve(folder, monkeypatch)
    [done] = score.MODEL.complete([PROMPTS[0]], [MAX_NEW], 0.0)
    if kind == "pytorch":
        import torch

        model, tok = score.MODEL.model, score.MODEL.tokenizer
        ids = tok(PROMPTS[0])["input_ids"]
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=tok.pad_token_id)
        full = out[0, len(ids):].tolist()
        eos = set(model.generation_config.eos_token_id)
    else:
        import onnxruntime_genai as og

        ids = score.MODEL.tokenizer.encode(PROMPTS[0])
        params = og.GeneratorParams(score.MODEL.model)
        params.set_search_options(max_length=len(ids) + MAX_NEW, do_sample=False)
        gen = og.Generator(score.MODEL.model, params)
        gen.append_tokens(ids)
        while not gen.is_done():
            gen.generate_next_token()
        full = [int(t) for t in gen.get_sequence(0)][len(ids):]
        eos = set(json.loads((folder / "genai_config.json").read_text())["model"]["eos_token_id"])
    cut = next((i for i, t in enumerate(full) if t in eos), len(full))
    assert done.ids == full[:cut] and done.prompt_tokens == len(ids)
    assert cut == variants["position"] and done.finish_reason == "stop"


@pytest.mark.parametrize("kind", ["pytorch", "onnx"])
def test_bos_is_added_once(kind, variants, monkeypatch):
    """A tokenizer that adds BOS: a raw prompt gets it, a prompt (or chat template) that already opens with it gets
    no second one - the same ids on both backends, served and evaluated."""
    folder = variants[f"{kind}-bos"]
    hf_tok = models.load_tokenizer(variants["pytorch-bos"])
    bos = hf_tok.convert_tokens_to_ids(BOS)
    plain = hf_tok("hello there", add_special_tokens=False)["input_ids"]
    assert hf_tok("hello there")["input_ids"] == [bos, *plain]  # the tokenizer adds BOS by default
    score = serve(folder, monkeypatch)
    assert score.MODEL.encode("hello there") == [bos, *plain]
    assert score.MODEL.encode(BOS + "hello there") == [bos, *plain]
    chat = score.MODEL.render_chat(CHATS[0])
    assert chat == hf_chat_prompt(variants["pytorch-bos"], CHATS[0]) and chat.startswith(BOS)
    chat_ids = score.MODEL.encode(chat)
    assert chat_ids == hf_tok(chat, add_special_tokens=False)["input_ids"] and chat_ids.count(bos) == 1

    _, ids, prompt_ids = evaluated(kind, folder, ["hello there", BOS + "hello there", chat], 4)
    assert prompt_ids == [[bos, *plain], [bos, *plain], chat_ids]
    assert ids[0] == ids[1]  # the same tokens in, the same tokens out, in one batch
    served = [score.run(prompt="hello there", max_new_tokens=4), score.run(prompt=BOS + "hello there",
                                                                           max_new_tokens=4),
              score.run(messages=CHATS[0], max_new_tokens=4)]
    assert [(a["prompt_tokens"], a["completion_tokens"]) for a in served] == \
        [(len(p), len(i)) for p, i in zip(prompt_ids, ids)]


@pytest.mark.parametrize("kind", ["pytorch", "onnx"])
def test_a_batch_with_per_prompt_limits_equals_one_prompt_at_a_time(kind, variants):
    """The shape batched serving will use: one call, each prompt with its own max_new_tokens."""
    folder = variants[f"{kind}-stop"]
    limits = [MAX_NEW, 3, 5, 1]
    prompts = PROMPTS + [hf_chat_prompt(variants["pytorch-stop"], CHATS[0])]
    if kind == "pytorch":
        import torch

        model, tok = models.load_causal_lm(folder, dtype=torch.float32).eval(), models.load_tokenizer(folder)
        complete = generation.torch_completions
    else:
        import onnxruntime_genai as og

        model = og.Model(str(folder))
        tok = og.Tokenizer(model)
        complete = generation.ort_completions
    batched = complete(model, tok, prompts, max_new_tokens=limits, batch_size=len(prompts))
    single = [complete(model, tok, [p], max_new_tokens=n, batch_size=1)[0] for p, n in zip(prompts, limits)]
    assert batched == single
    assert [len(c.ids) for c in batched] == [variants["position"], 3, 5, 1]
    assert [c.finish_reason for c in batched] == ["stop", "length", "length", "length"]
    with pytest.raises(ValueError, match="2 values for 4 prompts"):
        complete(model, tok, prompts, max_new_tokens=[1, 2], batch_size=4)


@pytest.mark.parametrize("kind", ["pytorch", "onnx"])
def test_sampling_answers_within_the_limit(kind, variants, monkeypatch):
    score = serve(variants[kind], monkeypatch)
    reply = score.run(prompt=PROMPTS[0], max_new_tokens=4, temperature=0.8)
    assert set(reply) == {"text", "prompt_tokens", "completion_tokens", "finish_reason", "model"}
    assert reply["completion_tokens"] == 4 or reply["finish_reason"] == "stop"


@pytest.mark.parametrize("with_special, plain, expected", [
    ([1, 5, 6], [5, 6], [1, 5, 6]),        # BOS added to a raw prompt
    ([1, 1, 5, 6], [1, 5, 6], [1, 5, 6]),  # the prompt opened with BOS: no second one
    ([5, 6], [5, 6], [5, 6]),              # a tokenizer that adds nothing
    ([1, 1, 5, 2], [1, 5], [1, 5]),        # BOS and EOS added, prompt opened with BOS: neither
    ([1], [], [1]),
])
def test_bos_rule(with_special, plain, expected):
    assert generation._one_bos(with_special, plain) == expected


def test_prompts_sharing_a_prefix_run_it_once_with_the_same_answers(variants, monkeypatch):
    """k-shot prompts share a long opening: it is run once and its cache reused (evaluate's k-shot baseline);
    every answer equals the prompt's answer generated alone."""
    import torch

    folder = variants["pytorch-stop"]
    model, tok = models.load_causal_lm(folder, dtype=torch.float32).eval(), models.load_tokenizer(folder)
    shots = " ".join(f"Phrase: {p} Tone: angry." for p in PROMPTS * 3)
    prompts = [f"{shots} Phrase: {p} Tone:" for p in [*PROMPTS, "We won!", "It rained all week and the roof leaked."]]
    encoded = [generation.torch_encode(tok, p) for p in prompts]
    shared = generation._shared_prefix(encoded)
    assert shared >= generation.SHARED_PREFIX_MIN_TOKENS and all(len(ids) > shared for ids in encoded)
    prefixes = []
    real = generation._torch_prefix_cache
    monkeypatch.setattr(generation, "_torch_prefix_cache", lambda m, ids: prefixes.append(ids) or real(m, ids))
    limits = [MAX_NEW, 3, 5, MAX_NEW, 2]
    batched = generation.torch_completions(model, tok, prompts, max_new_tokens=limits, batch_size=3)
    assert prefixes == [encoded[0][:shared]]   # one prefix run for the whole call
    single = [generation.torch_completions(model, tok, [p], max_new_tokens=n, batch_size=1)[0]
              for p, n in zip(prompts, limits)]
    assert prefixes == [encoded[0][:shared]]   # one prompt alone shares nothing
    assert batched == single


@pytest.mark.parametrize("encoded, expected", [
    ([[1] * 40 + [2], [1] * 40 + [3]], 40),
    ([[1] * 40, [1] * 40], 39),            # each prompt keeps one id of its own
    ([[1] * 10 + [2], [1] * 10 + [3]], 0),  # too short to be worth a cache
    ([[1] * 40 + [2]], 0),                  # one prompt
    ([[5] + [1] * 40, [1] * 41], 0),
])
def test_shared_prefix(encoded, expected):
    assert generation._shared_prefix(encoded) == expected


# --------------------------------------------------------------------------- ORT GenAI: the prompt cache

def kshot_prompts(n_shots: int = 3) -> list[str]:
    shots = " ".join(f"Phrase: {p} Tone: angry." for p in PROMPTS * n_shots)
    return [f"{shots} Phrase: {p} Tone:" for p in [*PROMPTS, "We won!", "It rained all week and the roof leaked."]]


def test_ort_prompt_cache_runs_a_shared_prefix_once_with_the_same_answers(variants):
    """Prompts sharing a long opening (k-shot examples, a system prompt): through the cache each runs only what
    follows the prefix the generator already holds, across calls too - and every answer equals plain generation."""
    import onnxruntime_genai as og

    model = og.Model(str(variants["onnx-stop"]))
    tok = og.Tokenizer(model)
    prompts = kshot_prompts()
    limits = [MAX_NEW, 3, 5, MAX_NEW, 2]
    encoded = [generation.ort_encode(tok, p) for p in prompts]
    shared = generation._shared_prefix(encoded)
    assert shared >= generation.SHARED_PREFIX_MIN_TOKENS
    plain = generation.ort_completions(model, tok, prompts, max_new_tokens=limits, batch_size=16, cache=False)
    assert all(c.ids for c in plain)  # (the end token: test_served_ids_are_plain_greedy_decoding, through the cache)

    # one call (what optimize's accuracy check does on a CPU): the call's own cache
    assert generation._use_cache(generation.OrtPromptCache(model), encoded, limits, None)
    ready = []  # each completion as it is ready (how the serving batcher answers a request before the next runs)
    assert generation.ort_completions(model, tok, prompts, max_new_tokens=limits, batch_size=16,
                                      on_done=lambda i, c: ready.append((i, c))) == plain
    assert ready == list(enumerate(plain))

    # one request per call (the serving script's cache, kept across calls): each reuses the one before
    cache = generation.OrtPromptCache(model, context_length=512)
    reused = []
    for prompt, ids, limit, want in zip(prompts, encoded, limits, plain):
        reused.append(cache.reusable(ids, None))
        assert generation.ort_completions(model, tok, [prompt], max_new_tokens=limit, batch_size=1,
                                          cache=cache) == [want]
    assert reused[0] == 0 and min(reused[1:]) >= shared
    assert cache.slots[None][1] == 512  # room for later requests: the need rounded up to LENGTH_STEP

    # the next turn of a chat holds the whole last exchange: all of it is reused but the last generated id (run again
    # with the new ids, not relied on)
    held = cache.slots[None][2]
    follow = held + encoded[1][-6:]
    assert cache.reusable(follow, None) == len(held) - 1
    eos = generation.ort_eos_ids(tok)
    assert cache.generate(follow, 6, eos, None) == generation.OrtPromptCache(model).generate(follow, 6, eos, None)

    # sampled requests never touch it (a generator's search options are fixed)
    sampled = generation.ort_completions(model, tok, prompts[:2], max_new_tokens=4, batch_size=2,
                                         temperature=0.9, cache=cache)
    assert all(len(c.ids) <= 4 for c in sampled) and cache.reusable(encoded[1], None) >= shared


def test_ort_prompt_cache_grows_within_the_context_and_recovers_from_a_failed_call(variants):
    import onnxruntime_genai as og

    model = og.Model(str(variants["onnx"]))
    tok = og.Tokenizer(model)
    context = json.loads((variants["onnx"] / "genai_config.json").read_text())["model"]["context_length"]
    eos = generation.ort_eos_ids(tok)
    short = generation.ort_encode(tok, PROMPTS[0])
    roomy = generation.OrtPromptCache(model, context_length=context)  # the serving script's: room to spare
    roomy.generate(short, 4, eos, None)
    assert roomy.slots[None][1] == min(context, generation.OrtPromptCache.LENGTH_STEP)
    cache = generation.OrtPromptCache(model)  # a call's own: the room the call needs
    first = cache.generate(short, 4, eos, None)
    assert cache.slots[None][1] == len(short) + 4
    generator = cache.slots[None][0]
    long = short * (context // len(short) // 2)
    cache.generate(long, 4, eos, None, need=context)
    assert cache.slots[None][0] is not generator and cache.slots[None][1] == context  # re-made for the longer need

    with pytest.raises(Exception):  # an id past the vocabulary: ORT GenAI raises mid-call
        cache.generate(short[:-1] + [10**6], 4, eos, None)
    assert cache.slots[None][2] == []  # nothing assumed held: the next call starts from 0
    assert cache.generate(short, 4, eos, None) == first


@pytest.mark.parametrize("lengths, limits, held, expected", [
    ([50], [64], 0, True),                    # one prompt: always (what a batch of one costs, prefix kept)
    ([40, 41], [8, 8], 0, True),              # 39 shared ids, 8 new tokens each
    ([40, 41], [64, 8], 0, False),            # more new tokens than the shared prefix saves: batched decode
    ([20, 21], [2, 2], 0, False),             # too short a prefix to be worth one-at-a-time
    ([50, 51], [2, 2], 40, True),             # nothing shared within the call, but the cache holds 40 ids of each
])
def test_use_cache_rule(lengths, limits, held, expected):
    class Cache:
        def reusable(self, ids, adapter):
            return min(held, len(ids) - 1)

    encoded = [[7] * (n - 1) + [i] for i, n in enumerate(lengths)]
    if held:
        encoded = [[9] * (n - 1) + [i] for i, n in enumerate(lengths)]  # nothing shared within the call
    assert generation._use_cache(Cache(), encoded, limits, None) is expected
