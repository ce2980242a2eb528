"""Export training data to the chat fine-tuning JSONL of the hosted services, checked before anything is uploaded.

    convs, problems = load_conversations(Path("prep_out"), Options(), split="train")       # prep's output folder
    convs, problems = load_conversations(Path("tone.jsonl"), Options(template="Phrase: {phrase}",
                                         completion_column="tone", system_prompt="Classify ..."))
    table = load_table(None)                                   # base_models.json (+ an override file)
    report = check(convs, limits_for(table, "gpt-4o-mini-2024-07-18"), counter=token_counter("o200k_base"))
    write_jsonl(convs, Path("train_chat.jsonl"))               # one {"messages": [...]} a line

Output format (Azure OpenAI, OpenAI, Azure AI Foundry serverless fine-tuning, and Kaito's tuning input):
`{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}` per line.

Inputs, in the order they are recognised:
- prep's output folder: `<split>.jsonl` rows `{"prompt", "completion", ...}`. A prompt rendered with a chat template
  (ChatML, Phi-3, Llama 3 or Gemma markers) is read back into its turns and the completion loses its end marker;
  a raw prompt becomes the user turn. Exporting from the raw rows (below) is preferred: then the service applies
  its own template to exactly the text you wrote.
- a data file prep reads (.jsonl/.json/.csv/.parquet) with
  - `--template` (+ `--completion_column`, optional `--system_prompt`): prep's `--format chat`: the template fills the
    user turn, the column is the answer;
  - `--format template --template ...`: prep's template format (text up to the last placeholder is the prompt);
  - a `messages` column (`--messages_column`): the turns as they are;
  - `prompt`/`completion` columns (`--prompt_column`, `--completion_column`).

Checks (`check`), every problem with its file:line: message roles (system, user, assistant) and order (an optional
system turn first, then user and assistant alternating, ending with the assistant's answer), non-empty text, no
unknown keys, at least `min_examples` examples, each example within the base model's training context, the file
size limit. Token counts: tiktoken with the model's encoding when it is installed and its encoding files are at hand,
a local Hugging Face tokenizer when given, else an estimate of one token per 4 characters (the report says which).
Cost: billed tokens (each example capped at the limit) x epochs x the training price per 1M tokens.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import string
from pathlib import Path

from slmops import data
from slmops.errors import UserError
from slmops.io import write_text

TABLE = Path(__file__).with_name("base_models.json")
ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = {"role", "content", "name", "weight"}
MODEL_FIELDS = {"service", "aliases", "encoding", "max_example_tokens", "train_per_1m", "input_per_1m",
                "output_per_1m"}
FORMATS = ("auto", "chat", "template", "prompt_completion", "messages")
SPLITS = ("train", "validation", "test")

# Epochs the services choose when none is given (OpenAI's published rule, cookbook "Chat fine-tuning data prep").
TARGET_EPOCHS, MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES, MAX_DEFAULT_EPOCHS = 3, 100, 25_000, 25


@dataclasses.dataclass
class Options:
    """How to read the rows: the same names as prep's flags."""

    format: str = "auto"
    template: str | None = None
    system_prompt: str | None = None
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    messages_column: str = "messages"
    label_column: str | None = None


@dataclasses.dataclass
class Conversation:
    where: str                 # file:line
    messages: list[dict]
    label: str | None = None   # the label column (or prep's label), kept for scoring, never exported


# --------------------------------------------------------------------------------------------------------------
# Chat templates read back (prep's rendered prompts)


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    turn: re.Pattern
    generation: str            # what add_generation_prompt appends
    ends: tuple[str, ...]      # end-of-turn markers a completion may end with


FAMILIES = (
    Family("chatml", re.compile(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>\s*", re.S), "<|im_start|>assistant",
           ("<|im_end|>",)),
    Family("phi3", re.compile(r"<\|(system|user|assistant)\|>\n?(.*?)<\|end\|>\s*", re.S), "<|assistant|>",
           ("<|end|>",)),
    Family("llama3", re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>\s*", re.S),
           "<|start_header_id|>assistant<|end_header_id|>", ("<|eot_id|>",)),
    Family("gemma", re.compile(r"<start_of_turn>(\w+)\n(.*?)<end_of_turn>\s*", re.S), "<start_of_turn>model",
           ("<end_of_turn>",)),
)
BOS = ("<|begin_of_text|>", "<bos>", "<s>", "<|endoftext|>")
EOS = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")
MARKERS = re.compile(r"<\|[A-Za-z_]+\|>|<start_of_turn>|<end_of_turn>|\[INST\]|\[/INST\]|</s>")


def parse_rendered(prompt: str) -> list[dict] | None:
    """The turns of a prompt rendered by a chat template with the generation prompt appended (prep's `prompt`);
    a prompt without template markers is one user turn; None when it has markers of no known template."""
    text = prompt.strip()
    while text.startswith(BOS):
        text = text[len(next(b for b in BOS if text.startswith(b))):].lstrip()
    for family in FAMILIES:
        if not text.endswith(family.generation):
            continue
        body, pos, turns = text[:-len(family.generation)], 0, []
        while pos < len(body):
            match = family.turn.match(body, pos)
            if match is None:
                break
            role = {"model": "assistant"}.get(match[1], match[1])
            turns.append({"role": role, "content": match[2].strip()})
            pos = match.end()
        if pos == len(body) and turns:
            return turns
    if MARKERS.search(text):
        return None
    return [{"role": "user", "content": text}]


def clean_completion(completion: str) -> str:
    """The answer without a template's end-of-turn or end-of-text markers."""
    text = completion.strip()
    markers = [m for f in FAMILIES for m in f.ends] + list(EOS)
    changed = True
    while changed:
        changed = False
        for marker in markers:
            if text.endswith(marker):
                text, changed = text[:-len(marker)].rstrip(), True
    return text


# --------------------------------------------------------------------------------------------------------------
# Loading


def _value(row: data.Row, column: str, purpose: str, problems: list[str]) -> str | None:
    if column not in row.values:
        problems.append(f"{row.where}: field {column!r} is missing ({purpose}); the row has {sorted(row.values)}")
        return None
    value = row.values[column]
    if value is None or (isinstance(value, str) and not value.strip()):
        problems.append(f"{row.where}: field {column!r} is empty ({purpose})")
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _label(row: data.Row, column: str | None) -> str | None:
    value = row.values.get(column) if column else row.values.get("label")
    return None if value is None else str(value).strip()


def read_rows(source: Path, split: str = "train") -> tuple[list[data.Row], list[str]]:
    """Rows of a data file, or of `<split>.jsonl` in a folder (prep's output)."""
    source = Path(source)
    if source.is_dir():
        path = source / f"{split}.jsonl"
        if not path.is_file():
            present = sorted(p.name for p in source.glob("*.jsonl"))
            return [], [f"{source}: no {split}.jsonl (found {present}); pass prep's output folder or a data file"]
        return data.read_file(path, path.name)
    if not source.is_file():
        return [], [f"{source}: no such file or folder"]
    return data.read_file(source, source.name)


def pick_format(rows: list[data.Row], options: Options) -> str:
    if options.format != "auto":
        return options.format
    if options.template:
        return "chat"
    columns = {k for r in rows[:100] for k in r.values}
    if options.messages_column in columns:
        return "messages"
    return "prompt_completion"


def load_conversations(source: Path, options: Options, split: str = "train") -> tuple[list[Conversation], list[str]]:
    """Read `source` (see the module docstring) into conversations; returns (conversations, problems)."""
    rows, problems = read_rows(source, split)
    if not rows:
        return [], problems or [f"{source}: no rows"]
    fmt = pick_format(rows, options)
    fields = []
    if fmt in ("chat", "template"):
        if not options.template:
            return [], problems + [f"--format {fmt} needs --template, e.g. --template 'Phrase: {{phrase}}'"]
        fields, problem = data.template_fields(data.unescape(options.template))
        if problem:
            return [], problems + [problem]
    needed = {field: "--template" for field in fields}
    needed.update({"chat": {options.completion_column: "--completion_column"},
                   "prompt_completion": {options.prompt_column: "--prompt_column",
                                         options.completion_column: "--completion_column"},
                   "messages": {options.messages_column: "--messages_column"}}.get(fmt, {}))
    if options.label_column:
        needed[options.label_column] = "--label_column"
    if absent := data.absent_columns(rows, needed):
        return [], problems + absent
    convert = {"chat": _from_chat, "template": _from_template, "prompt_completion": _from_prompt_completion,
               "messages": _from_messages}[fmt]
    conversations = []
    for row in rows:
        conversation = convert(row, options, problems)
        if conversation is not None:
            conversations.append(conversation)
    return conversations, problems


def _from_chat(row, options, problems):
    template = data.unescape(options.template)
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    before = len(problems)
    values = {f: _value(row, f, "used by --template", problems) for f in fields}
    answer = _value(row, options.completion_column, "the completion column", problems)
    if len(problems) > before:
        return None
    messages = [{"role": "system", "content": options.system_prompt}] if options.system_prompt else []
    messages += [{"role": "user", "content": template.format(**values).strip()},
                 {"role": "assistant", "content": answer.strip()}]
    return Conversation(row.where, messages, _label(row, options.label_column))


def _from_template(row, options, problems):
    examples, found = data.render_template([row], data.unescape(options.template), options.label_column)
    problems.extend(found)
    return _from_pair(row, examples[0].prompt, examples[0].completion, options, problems) if examples else None


def _from_prompt_completion(row, options, problems):
    before = len(problems)
    prompt = _value(row, options.prompt_column, "the prompt column", problems)
    completion = _value(row, options.completion_column, "the completion column", problems)
    if len(problems) > before:
        return None
    return _from_pair(row, prompt, completion, options, problems)


def _from_pair(row, prompt, completion, options, problems):
    """A prompt (raw, or rendered by a chat template) and its completion as turns."""
    turns = parse_rendered(prompt)
    if turns is None:
        problems.append(f"{row.where}: the prompt is rendered with a chat template slmops cannot read back "
                        "(known: ChatML, Phi-3, Llama 3, Gemma); export from the raw data instead: --data RAW "
                        "--template '...' --completion_column COLUMN [--system_prompt ...]")
        return None
    if options.system_prompt and not any(t["role"] == "system" for t in turns):
        turns.insert(0, {"role": "system", "content": options.system_prompt})
    return Conversation(row.where, turns + [{"role": "assistant", "content": clean_completion(completion)}],
                        _label(row, options.label_column))


def _from_messages(row, options, problems):
    messages = row.values.get(options.messages_column)
    if isinstance(messages, str):  # CSV cells hold the list as JSON text
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            pass
    return Conversation(row.where, messages, _label(row, options.label_column))


# --------------------------------------------------------------------------------------------------------------
# Base models, limits and prices


def load_table(override: Path | None = None) -> dict:
    """The packaged base_models.json, with `override` (same shape) merged per model; unknown fields rejected."""
    table = json.loads(TABLE.read_text())
    if override is None:
        return table
    try:
        extra = json.loads(Path(override).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read --price-table {override}: {exc}; pass a JSON file shaped like "
                        f"{TABLE.name} ({{\"models\": {{NAME: {{...}}}}}})") from None
    problems = []
    if not isinstance(extra, dict) or not isinstance(extra.get("models", {}), dict):
        raise UserError(f"--price-table {override}: expected {{\"models\": {{NAME: {{field: value}}}}}}")
    for key in set(extra) - {"models", "defaults", "as_of", "sources", "_about"}:
        problems.append(f"{override}: unknown top-level key {key!r}; allowed: models, defaults, as_of, sources")
    for key in set(extra.get("defaults", {})) - set(table["defaults"]):
        problems.append(f"{override}: defaults: unknown key {key!r}; allowed: {sorted(table['defaults'])}")
    for name, fields in extra.get("models", {}).items():
        if not isinstance(fields, dict):
            problems.append(f"{override}: models.{name}: expected an object of {sorted(MODEL_FIELDS)}")
            continue
        for key in set(fields) - MODEL_FIELDS:
            problems.append(f"{override}: models.{name}: unknown field {key!r}; allowed: {sorted(MODEL_FIELDS)}")
        for key in ("max_example_tokens", "train_per_1m", "input_per_1m", "output_per_1m"):
            value = fields.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                problems.append(f"{override}: models.{name}.{key} = {value!r}: expected a number >= 0 or null")
    if problems:
        raise UserError(f"--price-table {override} has {len(problems)} problem(s)", problems=problems)
    merged = {**table, "defaults": {**table["defaults"], **extra.get("defaults", {})}, "models": dict(table["models"])}
    for name, fields in extra.get("models", {}).items():
        base = merged["models"].get(name, {key: None for key in MODEL_FIELDS} | {"aliases": []})
        merged["models"][name] = {**base, **fields}
    return merged


def base_name(model: str) -> str:
    """`azureml://registries/r/models/NAME/versions/3` -> NAME; `ft:BASE:org::id` -> BASE; else the name itself."""
    if match := re.search(r"/models/([^/]+)", model):
        return match[1]
    if model.startswith("ft:"):
        return model.split(":")[1]
    return model


def limits_for(table: dict, model: str | None) -> dict:
    """{"model", "known", "service", "encoding", "max_example_tokens", prices..., "min_examples", "max_file_mb"}."""
    defaults = dict(table["defaults"])
    if not model:
        return {"model": None, "known": False, **{k: None for k in MODEL_FIELDS - {"aliases"}}, **defaults}
    name = base_name(model)
    for key, fields in table["models"].items():
        if name == key or name in (fields.get("aliases") or []):
            return {"model": key, "known": True, **{k: v for k, v in fields.items() if k != "aliases"}, **defaults}
    return {"model": name, "known": False, **{k: None for k in MODEL_FIELDS - {"aliases"}}, **defaults}


# --------------------------------------------------------------------------------------------------------------
# Token counting


@dataclasses.dataclass
class TokenCounter:
    method: str
    count: object  # text -> int


def token_counter(encoding: str | None = None, tokenizer: Path | None = None) -> TokenCounter:
    """A local Hugging Face tokenizer when given; tiktoken with `encoding` when it is installed and can load it
    (its encoding files are fetched once, then cached); else the 4-characters-a-token estimate."""
    if tokenizer is not None:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(tokenizer))
        except (OSError, ValueError) as exc:
            raise UserError(f"--tokenizer {tokenizer}: cannot load a tokenizer there ({exc}); pass a local model "
                            "folder with tokenizer files") from None
        return TokenCounter(f"tokenizer {tokenizer}",
                            lambda text: len(tok(text, add_special_tokens=False)["input_ids"]))
    if encoding:
        try:
            import tiktoken

            enc = tiktoken.get_encoding(encoding)
            return TokenCounter(f"tiktoken {encoding}", lambda text: len(enc.encode(text, disallowed_special=())))
        except Exception:  # noqa: BLE001 - not installed, or its encoding file cannot be fetched offline
            pass
    return TokenCounter("estimate: 1 token per 4 characters (install tiktoken, or pass --tokenizer, for exact "
                        "counts)", lambda text: math.ceil(len(text) / 4))


def example_tokens(messages: list[dict], counter: TokenCounter) -> int:
    """Tokens of one example as the chat format counts them: 3 per message + its values (+1 for a name) + 3."""
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            if key in ("role", "content", "name") and isinstance(value, str):
                total += counter.count(value) + (1 if key == "name" else 0)
    return total


def default_epochs(n_examples: int) -> int:
    """The epochs the service picks for `n_examples` when none is given."""
    if n_examples <= 0:
        return TARGET_EPOCHS
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


# --------------------------------------------------------------------------------------------------------------
# Checks


def check_messages(conversation: Conversation) -> list[str]:
    """Format problems of one example: roles and their order, text, keys, an assistant answer at the end."""
    where, messages = conversation.where, conversation.messages
    if not isinstance(messages, list) or not messages:
        return [f"{where}: messages must be a non-empty list of {{\"role\", \"content\"}} objects"]
    problems = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            problems.append(f"{where}: message {i}: expected an object with role and content, got {type(m).__name__}")
            continue
        if unknown := sorted(set(m) - MESSAGE_KEYS):
            problems.append(f"{where}: message {i}: unknown key(s) {unknown}; allowed: {sorted(MESSAGE_KEYS)}")
        if m.get("role") not in ROLES:
            problems.append(f"{where}: message {i}: role {m.get('role')!r} is not one of {list(ROLES)}")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            problems.append(f"{where}: message {i} ({m.get('role')}): content is missing or empty")
        if "weight" in m and (m.get("role") != "assistant" or m["weight"] not in (0, 1)):
            problems.append(f"{where}: message {i}: weight must be 0 or 1, on assistant messages only")
    if problems:
        return problems
    roles = [m["role"] for m in messages]
    if "system" in roles[1:]:
        problems.append(f"{where}: a system message at position {roles.index('system', 1)}; only the first message "
                        "may be the system turn")
    turns = roles[1:] if roles[0] == "system" else roles
    if not turns or turns[0] != "user":
        problems.append(f"{where}: the first turn after the system message must be the user's, got "
                        f"{turns[0] if turns else 'none'!r}")
    for i in range(1, len(turns)):
        if turns[i] == turns[i - 1] and turns[i] in ("user", "assistant"):
            problems.append(f"{where}: two {turns[i]} messages in a row (turns {roles}); user and assistant must "
                            "alternate")
            break
    if "assistant" not in roles:
        problems.append(f"{where}: no assistant message; each example needs the assistant's answer to train on")
    elif roles[-1] != "assistant":
        problems.append(f"{where}: ends with a {roles[-1]!r} message; end each example with the assistant's answer")
    return problems


def check(conversations: list[Conversation], limits: dict, counter: TokenCounter, *, epochs: int | None = None,
          max_example_tokens: int | None = None, name: str = "the training data", file_bytes: int | None = None,
          minimum: bool = True) -> dict:
    """Check every example and the dataset; return the report `{"n_examples", "problems", "warnings", "tokens",
    "estimate"}` (problems empty when the file can be uploaded)."""
    problems, warnings = [], []
    lengths = []
    limit = max_example_tokens or limits.get("max_example_tokens")
    for conversation in conversations:
        found = check_messages(conversation)
        problems.extend(found)
        if found:
            continue
        n = example_tokens(conversation.messages, counter)
        lengths.append(n)
        if limit and n > limit:
            of = f" of {limits['model']}" if limits.get("model") else ""
            problems.append(f"{conversation.where}: example is {n:,} tokens, over the {limit:,}-token training "
                            f"context{of}; shorten it or drop it")
    n_examples = len(conversations)
    if minimum and n_examples < limits["min_examples"]:
        problems.append(f"{name}: {n_examples} example(s); fine-tuning needs at least {limits['min_examples']} "
                        "(50-100 good ones are a sensible start)")
    if file_bytes is not None and file_bytes > limits["max_file_mb"] * 1024 * 1024:
        problems.append(f"{name}: the file is {file_bytes / 2**20:,.1f} MB, over the {limits['max_file_mb']} MB "
                        "upload limit; split the data or drop examples")
    if limits.get("model") and not limits.get("known"):
        warnings.append(f"no limits or prices known for {limits['model']!r}: the per-example token check and the "
                        "cost estimate are skipped (add the model with --price-table FILE)")
    elif limits.get("known") and not limit:
        warnings.append(f"no per-example token limit known for {limits['model']}: that check is skipped "
                        "(pass --max-example-tokens)")
    billed = sum(min(n, limit) if limit else n for n in lengths)
    n_epochs = epochs or default_epochs(n_examples)
    trained = billed * n_epochs
    price = limits.get("train_per_1m")
    cost = round(trained * price / 1e6, 4) if price is not None else None
    return {
        "name": name, "n_examples": n_examples, "problems": problems, "warnings": warnings,
        "tokens": {"method": counter.method, "per_example": data.length_stats(lengths), "total": sum(lengths),
                   "max_example_tokens": limit},
        "estimate": {"model": limits.get("model"), "epochs": n_epochs, "epochs_source": "given" if epochs else
                     "the service's default for this many examples", "billed_tokens_per_epoch": billed,
                     "training_tokens": trained, "train_per_1m": price, "cost_usd": cost},
    }


# --------------------------------------------------------------------------------------------------------------
# Writing


def jsonl_text(conversations: list[Conversation]) -> str:
    return "".join(json.dumps({"messages": c.messages}, ensure_ascii=False) + "\n" for c in conversations)


def write_jsonl(conversations: list[Conversation], path: Path) -> Path:
    """Write the chat JSONL atomically (temp file + rename): a failed export leaves no half-written file."""
    write_text(path, jsonl_text(conversations))
    return path


def summary_lines(report: dict) -> list[str]:
    """The report as a few readable lines."""
    tokens, est = report["tokens"], report["estimate"]
    stats = tokens["per_example"]
    lines = [f"{report['name']}: {report['n_examples']} examples, {tokens['total']:,} tokens "
             f"(per example min {stats['min']}, mean {stats['mean']}, p95 {stats['p95']}, max {stats['max']}; "
             f"{tokens['method']})"]
    if tokens["max_example_tokens"]:
        lines.append(f"  every example within the {tokens['max_example_tokens']:,}-token training context of "
                     f"{est['model']}" if not report["problems"] else "")
    cost = f"${est['cost_usd']:,.2f}" if est["cost_usd"] is not None else "not priced"
    lines.append(f"  training: {est['billed_tokens_per_epoch']:,} billed tokens x {est['epochs']} epochs "
                 f"({est['epochs_source']}) = {est['training_tokens']:,} tokens; estimated cost {cost}"
                 + (f" at ${est['train_per_1m']}/1M ({est['model']})" if est["train_per_1m"] is not None else ""))
    lines.extend(f"  warning: {w}" for w in report["warnings"])
    return [line for line in lines if line]
