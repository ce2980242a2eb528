"""Tiny models and sample data, made offline: the quickstart and the tests never download anything.

- `tone_dataset(n)`: a phrase -> tone classification set (5 labels) generated from word lists, deterministic.
- `topic_dataset(n)`: a sentence -> topic classification set (5 labels), the second task of the multi-adapter
  example (pipelines/multi_adapter.yaml, sdk/slmops/data/topic_sample.jsonl = `python -m slmops.tiny --topics`).
- `build_tiny_model(out)`: a byte-level BPE tokenizer trained with `tokenizers` on that data, wrapped as a
  `PreTrainedTokenizerFast` with a Phi-3-style chat template, plus a *random-init* causal LM config
  (llama, qwen2 or phi3). The base model knows nothing: fine-tuning is what teaches it the task.

    python -m slmops.tiny --out /tmp/tiny-llama --data /tmp/tone.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from slmops.io import atomic_dir

LABELS = ["joyful", "angry", "sad", "fearful", "neutral"]
TEMPLATE = "<|user|>\nWhat is the tone of this phrase? {phrase}<|end|>\n<|assistant|>\n{tone}"

_WORDS = {
    "joyful": ["delighted", "thrilled", "wonderful", "sunny", "laughing", "celebrate", "grateful", "cheerful"],
    "angry": ["furious", "outraged", "unacceptable", "slammed", "shouting", "fed up", "livid", "infuriating"],
    "sad": ["lonely", "tears", "miss", "grey", "heartbroken", "gloomy", "sorrow", "empty"],
    "fearful": ["terrified", "shaking", "dark", "afraid", "nervous", "panic", "dread", "scared"],
    "neutral": ["scheduled", "report", "meeting", "noted", "tuesday", "invoice", "attached", "update"],
}
_SUBJECTS = ["I", "we", "my sister", "the team", "our neighbour", "everyone", "the manager", "my friend"]
_OBJECTS = ["the trip", "the news", "the results", "this morning", "the weekend", "the letter", "the call",
            "the game", "the plan", "the house"]
_VERBS = ["feel", "felt", "am", "was", "seem", "looked", "sounded", "became"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]


def tone_phrase(rng: random.Random, label: str) -> str:
    """One phrase whose tone words come from `label`'s list, in a random sentence frame."""
    w1, w2 = rng.sample(_WORDS[label], 2)
    frame = rng.randrange(4)
    s, v, o = rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)
    if frame == 0:
        return f"{s} {v} {w1} about {o}, {w2}."
    if frame == 1:
        return f"{o.capitalize()} left {s.lower() if s != 'I' else s} {w1} and {w2}."
    if frame == 2:
        return f"After {o}, {s} {v} {w1}. So {w2}!"
    return f"{w1.capitalize()}: {s} {v} {w2} about {o}."


def tone_dataset(n: int = 2000, seed: int = 0) -> list[dict]:
    """`n` rows of {"phrase", "tone"} with balanced labels (deterministic for a seed)."""
    rng = random.Random(seed)
    return [{"phrase": tone_phrase(rng, LABELS[i % len(LABELS)]), "tone": LABELS[i % len(LABELS)]}
            for i in range(n)]


TOPICS = ["sports", "weather", "food", "money", "travel"]
TOPIC_TEMPLATE = "<|user|>\nWhich topic is this about? {text}<|end|>\n<|assistant|>\n{topic}"
_TOPIC_WORDS = {
    "sports": ["match", "goal", "coach", "league", "striker", "referee", "stadium", "tennis"],
    "weather": ["rain", "storm", "forecast", "snow", "windy", "cloudy", "thunder", "humid"],
    "food": ["soup", "recipe", "bakery", "pasta", "dinner", "spicy", "oven", "salad"],
    "money": ["bank", "salary", "loan", "budget", "prices", "savings", "tax", "invoice"],
    "travel": ["airport", "flight", "hotel", "passport", "beach", "luggage", "train", "tickets"],
}
_TOPIC_FRAMES = ["{S} talked about the {a} and the {b}.", "The {a} was all {s} could think of, then the {b}.",
                 "Yesterday {s} mentioned the {a}; today it is the {b}.", "{S} read a note about the {a} and the {b}."]


def topic_dataset(n: int = 2000, seed: int = 0) -> list[dict]:
    """`n` rows of {"text", "topic"} with balanced labels (deterministic for a seed): two words of the topic's
    list in a random sentence frame."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        a, b = rng.sample(_TOPIC_WORDS[topic], 2)
        s = rng.choice(_SUBJECTS)
        rows.append({"text": rng.choice(_TOPIC_FRAMES).format(s=s, S=s[0].upper() + s[1:], a=a, b=b),
                     "topic": topic})
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    return path


def build_tokenizer(texts: list[str], vocab_size: int = 2000):
    """Train a byte-level BPE tokenizer on `texts` and wrap it with the chat template and special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token=None,
                                   additional_special_tokens=SPECIAL_TOKENS[1:])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(arch: str, vocab_size: int, eos_id: int, pad_id: int, hidden: int = 128, layers: int = 4):
    """A small random-init config of a real architecture family (llama, qwen2 or phi3).

    `initializer_range=0.1` (HF default 0.02): with hidden size 128 a 0.02-scale random `lm_head` caps every
    logit near 2.5, so a LoRA adapter (which leaves `lm_head` frozen) cannot make one label token likely and
    the loss stalls around 4.8; at 0.1 the same 60 LoRA steps bring it below 1.
    """
    from transformers import LlamaConfig, Phi3Config, Qwen2Config

    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=eos_id,
                  tie_word_embeddings=False, initializer_range=0.1)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "phi3":
        return Phi3Config(**common)
    raise ValueError(f"unknown tiny architecture {arch!r}; choose llama, qwen2 or phi3")


def build_tiny_model(out: str | Path, *, arch: str = "llama", texts: list[str] | None = None,
                     vocab_size: int = 2000, hidden: int = 128, layers: int = 4, seed: int = 0) -> Path:
    """Write a tokenizer + random-init causal LM to `out` (atomically). Deterministic for a seed."""
    import torch
    from transformers import AutoModelForCausalLM

    if texts is None:
        texts = [TEMPLATE.format(**r) for r in tone_dataset(4000, seed=seed + 1)]
    tok = build_tokenizer(texts, vocab_size)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = tiny_config(arch, len(tok), eos, eos, hidden, layers)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.eos_token_id = [eos, tok.convert_tokens_to_ids("<|end|>")]
    model.generation_config.pad_token_id = eos
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "slmops_tiny.json").write_text(json.dumps(
            {"arch": arch, "vocab_size": len(tok), "hidden": hidden, "layers": layers, "seed": seed,
             "note": "random-init weights built offline by slmops.tiny; it knows nothing until fine-tuned"},
            indent=2))
    return Path(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to write the tiny model to")
    ap.add_argument("--arch", default="llama", choices=["llama", "qwen2", "phi3"], help="architecture family")
    ap.add_argument("--data", help="also write the tone dataset (JSONL) to this file")
    ap.add_argument("--rows", type=int, default=2000, help="rows of tone data to write with --data")
    ap.add_argument("--topics", help="also write the topic dataset (JSONL, --rows rows) to this file")
    ap.add_argument("--seed", type=int, default=0, help="seed for data, tokenizer corpus and weights")
    args = ap.parse_args(argv)
    build_tiny_model(args.out, arch=args.arch, seed=args.seed)
    if args.data:
        write_jsonl(tone_dataset(args.rows, seed=args.seed), args.data)
    if args.topics:
        write_jsonl(topic_dataset(args.rows, seed=args.seed), args.topics)
    print(f"tiny {args.arch} model (random weights) written to {args.out}")


if __name__ == "__main__":
    main()
