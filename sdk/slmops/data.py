"""Fine-tuning data: load rows, render them to prompt/completion, split, tokenize, and describe the result.

The `prep` step (`slmops.steps.prep`) chains these functions; `read_prepared_rows` reads its JSONL output back
(finetune, evaluate and optimize). Every function that inspects user data returns the problems it found as
strings naming the file, line and field (`"tone.jsonl:12: field 'tone' is empty"`) instead of raising on the
first one, so the step can report all of them at once.

Rows carry where they came from (`Row.where`): `file:line` for JSON Lines, CSV and pretty-printed JSON arrays,
`file row N` for Parquet, `file record N` for a JSON object of columns, `dataset[split] row N` for a Hugging
Face dataset.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from slmops.errors import UserError

SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
FORMATS = ("template", "chat", "prompt_completion", "messages")
ROLES = ("system", "user", "assistant")


@dataclass
class Row:
    """One source record and where it came from."""

    where: str
    values: dict


@dataclass
class Example:
    """One rendered training example (before tokenization)."""

    where: str
    prompt: str
    completion: str
    label: str | None


# --------------------------------------------------------------------------------------------------------------
# Split slices


def slice_rows(rows: list[Row], split: str) -> list[Row]:
    """Apply a split spec like `train`, `train[:4096]`, `train[4096:4224]`, `train[10%:20%]` to local rows.

    A local file or folder is one split named `train`; the slice arithmetic (percent rounding, negative
    bounds, `+` of several slices) is exactly that of `datasets.load_dataset(..., split=...)`.
    """
    from datasets import ReadInstruction

    out: list[Row] = []
    for part in ReadInstruction.from_spec(split).to_absolute({"train": len(rows)}):
        out.extend(rows[part.from_:part.to])
    return out


def check_split(split: str, *, local: bool) -> str | None:
    """Return a problem string when `split` is not a valid split spec (None when it is)."""
    from datasets import ReadInstruction

    try:
        instruction = ReadInstruction.from_spec(split)
    except (ValueError, AssertionError) as exc:
        return (f"--dataset_split {split!r} is not a split spec ({exc}); use e.g. 'train', 'train[:4096]', "
                "'train[4096:4224]' or 'train[:10%]'")
    if local:
        try:
            instruction.to_absolute({"train": 0})
        except ValueError:
            return (f"--dataset_split {split!r} names a split other than 'train'; a local file or folder is a "
                    "single split called 'train' (e.g. 'train[:1000]')")
    return None


# --------------------------------------------------------------------------------------------------------------
# Loading


def data_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The data files under `folder` (recursively, sorted by relative path) and the other files skipped."""
    found, skipped = [], []
    for p in sorted(folder.rglob("*"), key=lambda x: x.relative_to(folder).as_posix()):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        (found if p.suffix.lower() in SUFFIXES else skipped).append(p)
    return found, skipped


def read_file(path: Path, name: str) -> tuple[list[Row], list[str]]:
    """Read one local data file into rows; `name` is how messages refer to it. Returns (rows, problems)."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        return [], [f"{name}: unsupported file type {path.suffix!r}; use .jsonl, .json, .csv or .parquet"]
    if kind == "parquet":
        return _read_parquet(path, name)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        return [], [f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8"]
    if kind == "csv":
        return _read_csv(text, name)
    if kind == "json" and text.lstrip()[:1] in ("[", ""):
        return _read_json_array(text, name)
    if kind == "json" and text.lstrip()[:1] == "{":
        try:
            return _read_json_columns(json.loads(text), name)
        except json.JSONDecodeError:
            pass  # not one JSON value: JSON Lines saved as .json
    return _read_jsonl(text, name)


def _read_jsonl(text: str, name: str) -> tuple[list[Row], list[str]]:
    rows, problems = [], []
    for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{name}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(value, dict):
            problems.append(f"{name}:{lineno}: expected a JSON object per line, got {type(value).__name__}")
            continue
        rows.append(Row(f"{name}:{lineno}", value))
    return rows, problems


def _read_json_array(text: str, name: str) -> tuple[list[Row], list[str]]:
    """A JSON array of objects; each row is located at the line its object starts on."""
    decoder = json.JSONDecoder()
    rows, problems = [], []
    pos = len(text) - len(text.lstrip())
    if pos == len(text):
        return [], []
    pos += 1  # past "["
    line, counted = 1, 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            problems.append(f"{name}: invalid JSON (the array is not closed with ']')")
            break
        if text[pos] == "]":
            break
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            problems.append(f"{name}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}); "
                            "records after it were not read")
            break
        if isinstance(value, dict):
            rows.append(Row(f"{name}:{line}", value))
        else:
            problems.append(f"{name}:{line}: expected a JSON object in the array, got {type(value).__name__}")
    return rows, problems


def _read_json_columns(obj: dict, name: str) -> tuple[list[Row], list[str]]:
    """A JSON object of equal-length columns (`{"phrase": [...], "tone": [...]}`)."""
    if not obj or not all(isinstance(v, list) for v in obj.values()):
        return [], [f"{name}: a JSON object must map column names to lists of equal length; use a JSON array "
                    "of records or JSON Lines instead"]
    lengths = {k: len(v) for k, v in obj.items()}
    if len(set(lengths.values())) != 1:
        return [], [f"{name}: columns have different lengths {lengths}"]
    n = next(iter(lengths.values()))
    return [Row(f"{name} record {i + 1}", {k: obj[k][i] for k in obj}) for i in range(n)], []


def _read_csv(text: str, name: str) -> tuple[list[Row], list[str]]:
    rows, problems = [], []
    reader = csv.DictReader(io.StringIO(text, newline=""))  # quoted fields may span lines
    start = 2  # line 1 is the header
    try:
        for record in reader:
            if None in record:
                problems.append(f"{name}:{start}: more values than the {len(reader.fieldnames)} header columns")
            elif any(v is None for v in record.values()):
                missing = [k for k, v in record.items() if v is None]
                problems.append(f"{name}:{start}: fewer values than the header; missing {missing}")
            else:
                rows.append(Row(f"{name}:{start}", dict(record)))
            start = reader.line_num + 1
    except csv.Error as exc:
        problems.append(f"{name}:{reader.line_num}: invalid CSV ({exc})")
    return rows, problems


def _read_parquet(path: Path, name: str) -> tuple[list[Row], list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        return [], [f"{name}: not a readable Parquet file ({exc})"]
    return [Row(f"{name} row {i + 1}", r) for i, r in enumerate(table.to_pylist())], []


def load_local(path: Path, split: str) -> tuple[list[Row], list[str], list[str]]:
    """Rows of a local file or folder, sliced by `split`. Returns (rows, problems, skipped file names)."""
    if path.is_dir():
        files, skipped = data_files(path)
        if not files:
            return [], [f"{path}: no .jsonl, .json, .csv or .parquet files in the folder "
                        f"(found: {[p.name for p in skipped[:10]]})"], []
        names = [p.relative_to(path).as_posix() for p in files]
        skipped_names = [p.relative_to(path).as_posix() for p in skipped]
    else:
        files, names, skipped_names = [path], [path.name], []
    rows, problems = [], []
    for p, name in zip(files, names):
        file_rows, file_problems = read_file(p, name)
        rows.extend(file_rows)
        problems.extend(file_problems)
    return slice_rows(rows, split), problems, skipped_names


def load_hub(dataset_name: str, split: str) -> list[Row]:
    """Rows of a Hugging Face dataset split (from the local HF cache, or the network when there is one)."""
    import datasets

    try:
        ds = datasets.load_dataset(dataset_name, split=split)
    except (FileNotFoundError, ValueError, ConnectionError) as exc:
        raise UserError(f"cannot load dataset {dataset_name!r} split {split!r}: {exc}; check the name and split, "
                        "or pass a local file with --data / --data_dir") from exc
    where = f"{dataset_name}[{split}]"
    return [Row(f"{where} row {i + 1}", dict(r)) for i, r in enumerate(ds)]


def content_hash(rows: list[Row]) -> str:
    """sha256 of the rows' values (canonical JSON, one a line), independent of file format and location."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r.values, sort_keys=True, ensure_ascii=False, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Rendering


def unescape(template: str) -> str:
    r"""Turn the two-character sequences `\n` and `\t` into newline and tab (templates typed in a shell)."""
    return template.replace("\\n", "\n").replace("\\t", "\t")


def template_fields(template: str) -> tuple[list[str], str | None]:
    """The `{field}` names in `template` in order, and a problem string when the template is unusable."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        return [], f"--template {template!r} is not a valid format string ({exc}); write literal braces as {{{{ }}}}"
    fields = [f for _, f, _, _ in parsed if f is not None]
    if not fields:
        return [], (f"--template {template!r} has no {{field}} placeholder; e.g. "
                    "'<|user|>\\n{question}<|end|>\\n<|assistant|>\\n{answer}'")
    if any(f == "" or f.isdigit() for f in fields):
        return [], (f"--template {template!r} has positional placeholders like {{}} or {{0}}; name the column "
                    "in each, e.g. {phrase}")
    if any(spec or conversion for _, f, spec, conversion in parsed if f is not None):
        return [], (f"--template {template!r} has a placeholder with a format spec or conversion ({{x:...}}, "
                    "{x!r}); values are inserted as text, so write just {x}")
    return fields, None


def _text(value) -> str | None:
    """A field's value as text (None when missing/empty). Numbers and booleans are written as in JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return json.dumps(value, ensure_ascii=False)


def _field(row: Row, name: str, purpose: str, problems: list[str]) -> str | None:
    if name not in row.values:
        problems.append(f"{row.where}: field {name!r} is missing ({purpose}); the row has {sorted(row.values)}")
        return None
    text = _text(row.values[name])
    if text is None:
        problems.append(f"{row.where}: field {name!r} is empty ({purpose})")
    return text


def render_template(rows: list[Row], template: str, label_column: str | None) -> tuple[list[Example], list[str]]:
    """Fill `template`; text up to the last placeholder is the prompt, the rest is the completion."""
    parsed = list(string.Formatter().parse(template))
    last = max(i for i, (_, f, _, _) in enumerate(parsed) if f is not None)
    examples, problems = [], []
    for row in rows:
        before = len(problems)
        values = {f: _field(row, f, "used by --template", problems) for _, f, _, _ in parsed if f is not None}
        label = _label(row, label_column, problems)
        if len(problems) > before:
            continue
        pieces = [(literal, "" if field is None else values[field]) for literal, field, _, _ in parsed]
        prompt = "".join(lit + val for lit, val in pieces[:last]) + pieces[last][0]
        completion = pieces[last][1] + "".join(lit + val for lit, val in pieces[last + 1:])
        examples.append(Example(row.where, prompt, completion, label))
    return examples, problems


def render_prompt_completion(rows: list[Row], prompt_column: str, completion_column: str,
                             label_column: str | None) -> tuple[list[Example], list[str]]:
    """Take the prompt and completion verbatim from two columns."""
    examples, problems = [], []
    for row in rows:
        before = len(problems)
        prompt = _field(row, prompt_column, "the prompt column", problems)
        completion = _field(row, completion_column, "the completion column", problems)
        label = _label(row, label_column, problems)
        if len(problems) == before:
            examples.append(Example(row.where, prompt, completion, label))
    return examples, problems


def render_messages(rows: list[Row], messages_column: str, label_column: str | None,
                    tokenizer) -> tuple[list[Example], list[str]]:
    """Render chat `messages` with the tokenizer's chat template (see `render_chat_turns`)."""
    examples, problems = [], []
    for row in rows:
        before = len(problems)
        messages = _messages(row, messages_column, problems)
        label = _label(row, label_column, problems)
        if len(problems) == before:
            render_chat_turns(row, messages, label, tokenizer, f"field {messages_column!r}", examples, problems)
    return examples, problems


def render_chat(rows: list[Row], template: str, completion_column: str, system_prompt: str | None,
                label_column: str | None, tokenizer) -> tuple[list[Example], list[str]]:
    """One user turn filled from `template`, the answer from `completion_column`, an optional system turn: rendered
    with the model's own chat template, the way the model was instruction-tuned to read a request."""
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    examples, problems = [], []
    for row in rows:
        before = len(problems)
        values = {f: _field(row, f, "used by --template", problems) for f in fields}
        answer = _field(row, completion_column, "the completion column", problems)
        label = _label(row, label_column, problems)
        if len(problems) > before:
            continue
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": template.format(**values)}, {"role": "assistant", "content": answer}]
        render_chat_turns(row, messages, label, tokenizer, "--template", examples, problems)
    return examples, problems


def render_chat_turns(row: Row, messages: list[dict], label, tokenizer, what: str, examples: list[Example],
                      problems: list[str]) -> None:
    """prompt = every turn before the final assistant turn, with the generation prompt appended;
    completion = what the template writes for the final assistant turn (its content and end marker)."""
    from jinja2 import TemplateError

    try:
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
    except TemplateError as exc:  # e.g. a template that does not accept a system turn
        problems.append(f"{row.where}: {what}: the model's chat template rejected these messages ({exc})")
        return
    if full.startswith(prompt):
        completion = full[len(prompt):]
    else:  # templates that rewrite earlier turns (e.g. drop past reasoning): keep the content itself
        completion = messages[-1]["content"]
    examples.append(Example(row.where, prompt, completion, label))


def _messages(row: Row, column: str, problems: list[str]) -> list[dict] | None:
    if column not in row.values:
        problems.append(f"{row.where}: field {column!r} is missing (the messages column); "
                        f"the row has {sorted(row.values)}")
        return None
    messages = row.values[column]
    if isinstance(messages, str):  # CSV cells hold the list as JSON text
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            pass
    if not isinstance(messages, list) or not messages:
        problems.append(f"{row.where}: field {column!r} must be a non-empty list of "
                        "{\"role\", \"content\"} objects")
        return None
    before = len(problems)
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            problems.append(f"{row.where}: field {column!r} message {i}: expected an object with role and content")
            continue
        if m.get("role") not in ROLES:
            problems.append(f"{row.where}: field {column!r} message {i}: role {m.get('role')!r} is not one of "
                            f"{list(ROLES)}")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            problems.append(f"{row.where}: field {column!r} message {i}: content is missing or empty")
    if len(problems) > before:
        return None
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        problems.append(f"{row.where}: field {column!r} has no assistant turn; the last message must be the "
                        "assistant's answer to train on")
        return None
    if roles[-1] != "assistant":
        problems.append(f"{row.where}: field {column!r} ends with a {roles[-1]!r} turn after the last assistant "
                        "turn; end each conversation with the assistant's answer")
        return None
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _label(row: Row, label_column: str | None, problems: list[str]) -> str | None:
    if label_column is None:
        return None
    return _field(row, label_column, "the label column", problems)


def absent_columns(rows: list[Row], needed: dict[str, str]) -> list[str]:
    """One problem per needed column that no row has at all (rather than one message per row).

    `needed` maps a column to the flag that names it, e.g. {"tone": "--label_column"}.
    """
    if not rows:
        return []
    present = {k for r in rows for k in r.values}
    columns = sorted({k for r in rows[:100] for k in r.values})
    return [f"{flag} names column {column!r}, which is in no row of the data; columns are {columns}"
            for column, flag in needed.items() if column not in present]


def drop_duplicates(examples: list[Example]) -> tuple[list[Example], int]:
    """Keep the first of each exactly repeated (prompt, completion) pair. Returns (kept, dropped count)."""
    seen, kept = set(), []
    for e in examples:
        key = (e.prompt, e.completion)
        if key not in seen:
            seen.add(key)
            kept.append(e)
    return kept, len(examples) - len(kept)


# --------------------------------------------------------------------------------------------------------------
# Splitting


def split_indices(labels: list[str | None], fraction: float, seed: int,
                  stratify: bool) -> tuple[list[int], list[int]]:
    """Indices of (kept, held out), each in source order; deterministic for `seed`.

    The held-out size is round(n * fraction) (at least 1 when fraction > 0). Stratified: each label gets its
    proportional share, the rounding remainders going to the labels with the largest fractional parts.
    """
    n = len(labels)
    n_val = max(1, round(n * fraction)) if fraction > 0 else 0
    rng = random.Random(seed)
    if not stratify:
        order = list(range(n))
        rng.shuffle(order)
        val = set(order[:n_val])
    else:
        groups: dict[str, list[int]] = {}
        for i, label in enumerate(labels):
            groups.setdefault(label, []).append(i)
        names = sorted(groups)
        exact = {k: len(groups[k]) * n_val / n for k in names}
        quota = {k: int(exact[k]) for k in names}
        by_remainder = sorted(names, key=lambda k: (-(exact[k] - quota[k]), k))
        for k in by_remainder[:n_val - sum(quota.values())]:
            quota[k] += 1
        val = set()
        for k in names:
            members = list(groups[k])
            rng.shuffle(members)
            val.update(members[:quota[k]])
    train = [i for i in range(n) if i not in val]
    return train, sorted(val)


def split_three(labels: list[str | None], validation_fraction: float, test_fraction: float, seed: int,
                stratify: bool) -> tuple[list[int], list[int], list[int]]:
    """Indices of (train, validation, test): test is held out first (a share of all rows), then validation (a share
    of all rows, taken from what is left), both stratified by label when asked; deterministic for `seed`."""
    rest, test = split_indices(labels, test_fraction, seed, stratify)
    share = validation_fraction / (1 - test_fraction) if validation_fraction and test_fraction < 1 else 0.0
    kept, val = split_indices([labels[i] for i in rest], share, seed + 1, stratify)
    return [rest[i] for i in kept], [rest[i] for i in val], test


# --------------------------------------------------------------------------------------------------------------
# Tokenizing


@dataclass
class Tokenized:
    input_ids: list[int]
    prompt_length: int
    prompt: str
    truncated: str | None  # None, "prompt" or "completion"


def tokenize(examples: list[Example], tokenizer, *, max_seq_len: int, truncate: bool,
             add_special_tokens: bool) -> tuple[list[Tokenized], list[str]]:
    """input_ids = prompt + completion + eos, tokenized in batch; prompt_length = tokens of the prompt.

    Too long (> max_seq_len): a problem, or when `truncate` the prompt loses tokens from its start (the text
    nearest the answer is kept, and completion-only training keeps its whole target); only a completion that
    alone does not fit is cut at the end (then without eos, since the answer does not end there).
    The result has one entry per example when no problems are returned.
    """
    if not examples:
        return [], []
    eos = tokenizer.eos_token_id
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=add_special_tokens)["input_ids"]
    completions = tokenizer([e.completion for e in examples], add_special_tokens=False)["input_ids"]
    out, problems = [], []
    for e, p, c in zip(examples, prompts, completions):
        total = len(p) + len(c) + 1
        if total <= max_seq_len:
            out.append(Tokenized(p + c + [eos], len(p), e.prompt, None))
        elif not truncate:
            problems.append(f"{e.where}: example is {total} tokens, longer than --max_seq_len {max_seq_len} "
                            f"(prompt {len(p)}, completion {len(c)} + eos); raise --max_seq_len, shorten the "
                            "text, or pass --on_too_long truncate")
        elif len(c) + 1 < max_seq_len:
            keep = p[len(p) - (max_seq_len - len(c) - 1):]
            out.append(Tokenized(keep + c + [eos], len(keep), tokenizer.decode(keep), "prompt"))
        else:
            head = p[-1:]
            keep = c[:max_seq_len - len(head)]
            out.append(Tokenized(head + keep, len(head), tokenizer.decode(head), "completion"))
    return out, problems


# --------------------------------------------------------------------------------------------------------------
# Reading prep's output (finetune, evaluate and optimize)


def read_prepared_rows(path: Path, required: list[str], *, limit: int = 0, check=None) -> list[dict]:
    """The rows of a JSON Lines file prep wrote (train.jsonl, validation.jsonl): the first `limit` (0 = all),
    each a JSON object with the `required` fields; `check(row)` may return a problem string for a row.

    Raises UserError naming the file and line of every bad row (up to 10); an empty file gives [].
    """
    rows, problems = [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{line_no}: not valid JSON ({exc.msg}); re-run prep to write the file")
                continue
            missing = [k for k in required if not isinstance(row, dict) or k not in row]
            if missing:
                problems.append(f"{path}:{line_no}: missing field(s) {missing}; re-run prep to write them")
                continue
            if check is not None and (problem := check(row)) is not None:
                problems.append(f"{path}:{line_no}: {problem}")
                continue
            rows.append(row)
            if limit and len(rows) >= limit:
                break
    if problems:
        raise UserError(f"{path} has {len(problems)} bad row(s)", problems=problems[:10])
    return rows


# --------------------------------------------------------------------------------------------------------------
# Report


def length_stats(lengths: list[int]) -> dict:
    """min/mean/p50/p95/max of token lengths (nearest-rank percentiles); zeros for an empty list."""
    if not lengths:
        return {"min": 0, "mean": 0.0, "p50": 0, "p95": 0, "max": 0}
    s = sorted(lengths)

    def rank(q: float) -> int:
        return s[max(0, -(-len(s) * q // 100) - 1)]

    return {"min": s[0], "mean": round(sum(s) / len(s), 2), "p50": int(rank(50)), "p95": int(rank(95)),
            "max": s[-1]}


def label_counts(labels: list[str | None]) -> dict[str, int]:
    return dict(sorted(Counter(labels).items())) if any(x is not None for x in labels) else {}


def cap(problems: list[str], limit: int = 20) -> list[str]:
    """The first `limit` problems, plus a line saying how many more there are."""
    if len(problems) <= limit:
        return problems
    return problems[:limit] + [f"... and {len(problems) - limit} more problems"]
