"""The prep step: formats, input file types, split slices, validation hold-out, dedup, truncation, and every
bad-input case failing with exit 2, the file/line/field named, and no output folder."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from slmops import data
from slmops.errors import UserError
from slmops.errors import run_main
from slmops.steps.prep import build_parser, main
from slmops.tiny import tone_dataset
from tests.fixtures.prep import TONE_TEMPLATE

REPO = Path(__file__).resolve().parents[2]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def run_prep(tiny_model, out: Path, *args: str) -> dict:
    return main([*args, "--base_model", str(tiny_model), "--output_data", str(out)])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the fixture other steps use ------------------------------------------------------------------------------

def test_prepared_data_fixture_golden(prepared_data, tiny_model):
    """Golden numbers for the 600-row tone set: no duplicates, 60 held out for validation and 60 for test, 12 per
    label in each."""
    from slmops.models import load_tokenizer

    report = json.loads((prepared_data / "data_report.json").read_text())
    assert report["rows"] == {"raw": 600, "duplicates_dropped": 0, "examples": 600, "train": 480,
                              "validation": 60, "test": 60}
    assert report["labels"]["validation"] == {k: 12 for k in ("angry", "fearful", "joyful", "neutral", "sad")}
    assert report["labels"]["test"] == {k: 12 for k in ("angry", "fearful", "joyful", "neutral", "sad")}
    assert report["labels"]["train"] == {k: 96 for k in ("angry", "fearful", "joyful", "neutral", "sad")}
    assert report["truncated"] == {"prompt": 0, "completion": 0}
    assert report["token_lengths"]["all"] == {"min": 24, "mean": 25.96, "p50": 26, "p95": 28, "max": 29}
    assert len(report["sha256"]) == 64

    tok = load_tokenizer(tiny_model)
    train = read_jsonl(prepared_data / "train.jsonl")
    assert len(train) == 480
    splits = {name: {r["prompt"] for r in read_jsonl(prepared_data / f"{name}.jsonl")}
              for name in ("train", "validation", "test")}
    assert not splits["train"] & splits["test"] and not splits["validation"] & splits["test"]
    assert not splits["train"] & splits["validation"]
    first = train[0]
    assert set(first) == {"prompt", "completion", "label", "input_ids", "prompt_length"}
    assert first["prompt"].endswith("<|end|>\n<|assistant|>\n") and first["completion"] == first["label"]
    assert first["input_ids"] == (tok(first["prompt"])["input_ids"] + tok(first["completion"])["input_ids"]
                                  + [tok.eos_token_id])
    assert first["prompt_length"] == len(tok(first["prompt"])["input_ids"])


# --- formats --------------------------------------------------------------------------------------------------

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi {i}"},
        {"role": "assistant", "content": "Hello {i}!"}]

FORMATS = [
    # (id, row for index i, extra args, expected prompt of row 0, expected completion of row 0)
    ("template", lambda i: {"q": f"question {i}", "a": f"answer {i}"},
     ["--template", "Q: {q}\\nA: {a}."], "Q: question 0\nA: ", "answer 0."),
    ("template_two_fields_before", lambda i: {"ctx": "c", "q": f"q{i}", "a": f"a{i}"},
     ["--template", "{ctx} | {q} -> {a}"], "c | q0 -> ", "a0"),
    ("prompt_completion", lambda i: {"prompt": f"2+{i}=", "completion": f" {2 + i}"},
     ["--format", "prompt_completion"], "2+0=", " 2"),
    ("prompt_completion_named", lambda i: {"in": f"x{i}", "out": f"y{i}"},
     ["--format", "prompt_completion", "--prompt_column", "in", "--completion_column", "out"], "x0", "y0"),
    ("messages", lambda i: {"messages": [{**m, "content": m["content"].format(i=i)} for m in CHAT]},
     ["--format", "messages"], "<|system|>\nBe brief.<|end|>\n<|user|>\nHi 0<|end|>\n<|assistant|>\n",
     "Hello 0!<|end|>\n"),
    ("messages_multi_turn", lambda i: {"chat": [{"role": "user", "content": "a"}, {"role": "assistant",
                                                                                   "content": "b"},
                                                {"role": "user", "content": f"c{i}"},
                                                {"role": "assistant", "content": f"d{i}"}]},
     ["--format", "messages", "--messages_column", "chat"],
     "<|user|>\na<|end|>\n<|assistant|>\nb<|end|>\n<|user|>\nc0<|end|>\n<|assistant|>\n", "d0<|end|>\n"),
    ("chat", lambda i: {"phrase": f"p{i}", "tone": "calm"},
     ["--format", "chat", "--template", "Tone of: {phrase}", "--completion_column", "tone"],
     "<|user|>\nTone of: p0<|end|>\n<|assistant|>\n", "calm<|end|>\n"),
    ("chat_with_system", lambda i: {"phrase": f"p{i}", "tone": "calm"},
     ["--format", "chat", "--template", "Tone of: {phrase}", "--completion_column", "tone",
      "--system_prompt", "Answer with one word."],
     "<|system|>\nAnswer with one word.<|end|>\n<|user|>\nTone of: p0<|end|>\n<|assistant|>\n", "calm<|end|>\n"),
]


@pytest.mark.parametrize("make_row,args,prompt,completion", [c[1:] for c in FORMATS], ids=[c[0] for c in FORMATS])
def test_formats(tmp_path, tiny_model, make_row, args, prompt, completion):
    from slmops.models import load_tokenizer

    src = write_jsonl(tmp_path / "d.jsonl", [make_row(i) for i in range(20)])
    out = tmp_path / "out"
    report = run_prep(tiny_model, out, "--data", str(src), "--validation_fraction", "0", "--test_fraction", "0", *args)
    assert report["rows"] == {"raw": 20, "duplicates_dropped": 0, "examples": 20, "train": 20, "validation": 0,
                              "test": 0}
    rows = read_jsonl(out / "train.jsonl")
    assert (rows[0]["prompt"], rows[0]["completion"]) == (prompt, completion)
    assert (out / "validation.jsonl").read_text() == ""
    tok = load_tokenizer(tiny_model)
    chat = "messages" in args or "chat" in args
    p = tok(prompt, add_special_tokens=not chat)["input_ids"]  # chat templates add their own
    assert rows[0]["input_ids"] == p + tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert rows[0]["prompt_length"] == len(p)


# --- input file types -----------------------------------------------------------------------------------------

TONE = tone_dataset(60, seed=3)


def as_jsonl(d: Path) -> Path:
    return write_jsonl(d / "t.jsonl", TONE)


def as_json_array(d: Path) -> Path:
    p = d / "t.json"
    p.write_text(json.dumps(TONE, indent=2))
    return p


def as_json_columns(d: Path) -> Path:
    p = d / "t.json"
    p.write_text(json.dumps({"phrase": [r["phrase"] for r in TONE], "tone": [r["tone"] for r in TONE]}))
    return p


def as_csv(d: Path) -> Path:
    p = d / "t.csv"
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["phrase", "tone"])
        w.writeheader()
        w.writerows(TONE)
    return p


def as_parquet(d: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = d / "t.parquet"
    pq.write_table(pa.Table.from_pylist(TONE), p)
    return p


def as_folder(d: Path) -> Path:
    folder = d / "folder"
    (folder / "b").mkdir(parents=True)
    write_jsonl(folder / "a.jsonl", TONE[:25])
    with open(folder / "b" / "c.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["phrase", "tone"])
        w.writeheader()
        w.writerows(TONE[25:])
    (folder / "README.md").write_text("not data")
    (folder / ".amlignore").write_text("hidden")
    return folder


INPUTS = [("jsonl", as_jsonl), ("json_array", as_json_array), ("json_columns", as_json_columns),
          ("csv", as_csv), ("parquet", as_parquet), ("folder", as_folder)]


@pytest.mark.parametrize("make", [m for _, m in INPUTS], ids=[i for i, _ in INPUTS])
def test_input_types_give_identical_output(tmp_path, tiny_model, make):
    """Every file type (and a folder mixing them) yields the same examples and the same content hash."""
    src = make(tmp_path)
    flag = "--data_dir" if src.is_dir() else "--data"
    out = tmp_path / "out"
    report = run_prep(tiny_model, out, flag, str(src), "--template", TONE_TEMPLATE, "--label_column", "tone")
    expected = tmp_path / "expected"
    run_prep(tiny_model, expected, "--data", str(as_jsonl(tmp_path)), "--template", TONE_TEMPLATE,
             "--label_column", "tone")
    for name in ("train.jsonl", "validation.jsonl"):
        assert (out / name).read_text() == (expected / name).read_text()
    assert report["sha256"] == json.loads((expected / "data_report.json").read_text())["sha256"]
    assert report["rows"]["raw"] == 60
    assert report["source"]["files_skipped"] == (["README.md"] if src.is_dir() else [])


def test_line_numbers_survive_multiline_csv_and_unicode_separators(tmp_path, tiny_model, capsys):
    """A quoted CSV field spanning lines, and a JSON string holding U+2028, keep later line numbers right."""
    (tmp_path / "d.csv").write_text('phrase,tone\n"two\nlines",sad\n' + "".join(f"p\u2028{i},sad\n" for i in range(10))
                                    + "p,\n")
    write_jsonl(tmp_path / "d.jsonl", [json.dumps({"phrase": f"a\u2028b {i}", "tone": "sad"}, ensure_ascii=False)
                                       for i in range(10)] + [{"phrase": "c"}])
    for name, expected in (("d.csv", "d.csv:14: field 'tone' is empty"),
                           ("d.jsonl", "d.jsonl:11: field 'tone' is missing")):
        with pytest.raises(SystemExit):
            run_main(main, ["--data", str(tmp_path / name), "--template", TONE_TEMPLATE, "--base_model",
                            str(tiny_model), "--output_data", str(tmp_path / "out")])
        assert expected in capsys.readouterr().err


# --- split slices ---------------------------------------------------------------------------------------------

SLICES = ["train", "train[:50]", "train[50:75]", "train[10%:20%]", "train[-30:]", "train[:33%]",
          "train[:10]+train[-10:]"]


@pytest.mark.parametrize("spec", SLICES)
def test_split_slices_match_datasets(tmp_path, spec):
    """Local slicing equals what `datasets.load_dataset('json', split=spec)` selects from the same file."""
    import datasets

    rows = [{"i": i, "text": f"row {i}"} for i in range(97)]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    ours = data.slice_rows(data.load_local(src, "train")[0], spec)
    theirs = datasets.load_dataset("json", data_files=str(src), split=spec, cache_dir=str(tmp_path / "cache"))
    assert [r.values["i"] for r in ours] == theirs["i"]


def test_dataset_name_path_with_slice(tmp_path, tiny_model):
    """The Hugging Face path (load_dataset with a split slice) on a local dataset folder, against --data."""
    folder = tmp_path / "ds"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", tone_dataset(200, seed=5))
    common = ["--template", TONE_TEMPLATE, "--label_column", "tone", "--dataset_split", "train[20:120]"]
    hub = run_prep(tiny_model, tmp_path / "hub", "--dataset_name", str(folder), *common)
    local = run_prep(tiny_model, tmp_path / "local", "--data", str(folder / "train.jsonl"), *common)
    assert hub["rows"]["raw"] == local["rows"]["raw"] == 100
    assert hub["sha256"] == local["sha256"]
    assert (tmp_path / "hub" / "train.jsonl").read_text() == (tmp_path / "local" / "train.jsonl").read_text()


def test_max_rows(tmp_path, tiny_model, tone_jsonl):
    report = run_prep(tiny_model, tmp_path / "o", "--data", str(tone_jsonl), "--template", TONE_TEMPLATE,
                      "--dataset_split", "train[100:]", "--max_rows", "40")
    assert report["rows"]["raw"] == 40


# --- hold-out and dedup ---------------------------------------------------------------------------------------

def test_separate_test_file_is_the_test_split_and_never_trained_on(tmp_path, tiny_model):
    rows = [{"x": f"item {i}", "y": "ab"[i % 2]} for i in range(40)]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    test = write_jsonl(tmp_path / "t.jsonl", [{"x": f"item {i}", "y": "ab"[i % 2]} for i in (0, 1, 2, 100, 101)]
                       + [{"x": "item 100", "y": "a"}])
    report = run_prep(tiny_model, tmp_path / "o", "--data", str(src), "--template", "{x} => {y}",
                      "--label_column", "y", "--validation_fraction", "0.1", "--test_data", str(test))
    assert report["rows"] == {"raw": 40, "duplicates_dropped": 0, "examples": 42, "train": 33, "validation": 4,
                              "test": 5, "test_raw": 6, "test_duplicates_dropped": 1,
                              "train_rows_dropped_as_test_prompts": 3}
    tested = {r["prompt"] for r in read_jsonl(tmp_path / "o" / "test.jsonl")}
    trained = {r["prompt"] for name in ("train", "validation") for r in read_jsonl(tmp_path / "o" / f"{name}.jsonl")}
    assert tested == {"item 0 => ", "item 1 => ", "item 2 => ", "item 100 => ", "item 101 => "}
    assert not tested & trained


@pytest.mark.parametrize("args, words", [
    (["--test_data", "nowhere.jsonl"], "--test_data 'nowhere.jsonl' is not a file"),
    (["--validation_fraction", "0.5", "--test_fraction", "0.45"], "leave less than 10 % of the rows"),
    (["--system_prompt", "hi"], "--system_prompt is only used with --format chat"),
    (["--format", "chat"], "--format chat needs --template"),
])
def test_split_and_chat_argument_problems(tmp_path, tiny_model, args, words):
    src = write_jsonl(tmp_path / "d.jsonl", [{"x": f"i{i}", "y": "a"} for i in range(20)])
    template = [] if "chat" in args else ["--template", "{x} => {y}"]
    with pytest.raises(UserError) as err:
        run_prep(tiny_model, tmp_path / "o", "--data", str(src), *template, *args)
    assert any(words in p for p in err.value.problems), err.value.problems
    assert not (tmp_path / "o").exists()


def test_stratified_split_keeps_label_proportions(tmp_path, tiny_model):
    rows = [{"x": f"item {i}", "y": y} for i, y in enumerate(["a"] * 140 + ["b"] * 40 + ["c"] * 20)]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    report = run_prep(tiny_model, tmp_path / "o", "--data", str(src), "--template", "{x} => {y}",
                      "--label_column", "y", "--validation_fraction", "0.15", "--test_fraction", "0.1")
    assert report["labels"]["test"] == {"a": 14, "b": 4, "c": 2}
    assert report["labels"]["validation"] == {"a": 21, "b": 6, "c": 3}
    assert report["labels"]["train"] == {"a": 105, "b": 30, "c": 15}
    val = read_jsonl(tmp_path / "o" / "validation.jsonl")
    assert Counter(r["label"] for r in val) == {"a": 21, "b": 6, "c": 3}


@pytest.mark.parametrize("labels,fraction,expected", [
    (["a"] * 7 + ["b"] * 3, 0.1, {"a": 1}),              # 1 slot goes to the larger remainder (0.7 > 0.3)
    (["a"] * 5 + ["b"] * 5 + ["c"] * 5, 0.2, {"a": 1, "b": 1, "c": 1}),
    (["a"] * 99 + ["b"], 0.5, {"a": 50}),                # 49.5 vs 0.5: tie broken by name
    (["a"] * 10, 0.0, {}),
])
def test_stratified_allocation(labels, fraction, expected):
    _, val = data.split_indices(labels, fraction, seed=0, stratify=True)
    assert Counter(labels[i] for i in val) == expected


def test_split_is_deterministic_for_seed():
    labels = [None] * 100
    a = data.split_indices(labels, 0.2, seed=1, stratify=False)
    assert a == data.split_indices(labels, 0.2, seed=1, stratify=False)
    assert a != data.split_indices(labels, 0.2, seed=2, stratify=False)
    train, val = a
    assert len(val) == 20 and sorted(train + val) == list(range(100))


def test_exact_duplicates_dropped(tmp_path, tiny_model):
    rows = [{"q": f"q{i}", "a": "x"} for i in range(12)] + [{"q": "q3", "a": "x"}] * 3 + [{"q": "q3", "a": "y"}]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    report = run_prep(tiny_model, tmp_path / "o", "--data", str(src), "--template", "{q}:{a}",
                      "--validation_fraction", "0", "--test_fraction", "0")
    assert report["rows"] == {"raw": 16, "duplicates_dropped": 3, "examples": 13, "train": 13, "validation": 0,
                              "test": 0}


# --- truncation -----------------------------------------------------------------------------------------------

def test_truncate_cuts_prompt_start_first(tmp_path, tiny_model):
    from slmops.models import load_tokenizer

    tok = load_tokenizer(tiny_model)
    rows = [{"q": " ".join(["word"] * (5 + i)), "a": "the answer"} for i in range(12)]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    args = ["--data", str(src), "--template", "{q} => {a}", "--validation_fraction", "0", "--max_seq_len", "12"]
    report = run_prep(tiny_model, tmp_path / "o", *args, "--on_too_long", "truncate")
    out = read_jsonl(tmp_path / "o" / "train.jsonl")
    completion_ids = tok("the answer", add_special_tokens=False)["input_ids"]
    assert report["truncated"]["prompt"] > 0 and report["truncated"]["completion"] == 0
    assert report["token_lengths"]["all"]["max"] == 12
    for source, r in zip(rows, out):
        assert f"{source['q']} => ".endswith(r["prompt"])
        assert len(r["input_ids"]) <= 12
        assert r["input_ids"][r["prompt_length"]:] == completion_ids + [tok.eos_token_id]
        assert r["input_ids"][:r["prompt_length"]] == tok(r["prompt"])["input_ids"][-r["prompt_length"]:]


def test_truncate_completion_that_alone_is_too_long(tmp_path, tiny_model):
    rows = [{"q": f"q{i}", "a": " ".join(["word"] * 30)} for i in range(10)]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    report = run_prep(tiny_model, tmp_path / "o", "--data", str(src), "--template", "{q} {a}",
                      "--validation_fraction", "0", "--max_seq_len", "8", "--on_too_long", "truncate")
    assert report["truncated"] == {"prompt": 0, "completion": 10}
    for r in read_jsonl(tmp_path / "o" / "train.jsonl"):
        assert len(r["input_ids"]) == 8 and r["prompt_length"] == 1


# --- bad input: exit 2, file/line/field named, nothing written -----------------------------------------------

GOOD = [{"phrase": f"phrase number {i}", "tone": "sad"} for i in range(12)]
MSG = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


def _numbered(rows):
    return [{**r, "messages": [{**m, "content": f"{m['content']} {i}"} for m in r["messages"]]}
            if "messages" in r else r for i, r in enumerate(rows)]


BAD = [
    # (id, file name, rows or raw lines, extra args, substrings expected in the message)
    ("invalid_json_line", "d.jsonl", GOOD[:2] + ['{"phrase": "oops", tone: sad}'] + GOOD[2:],
     ["--template", TONE_TEMPLATE], ["d.jsonl:3: invalid JSON"]),
    ("not_an_object", "d.jsonl", GOOD + ["[1, 2]"], ["--template", TONE_TEMPLATE],
     ["d.jsonl:13: expected a JSON object"]),
    ("missing_field", "d.jsonl", GOOD[:4] + [{"phrase": "no tone here"}] + GOOD[4:],
     ["--template", TONE_TEMPLATE], ["d.jsonl:5: field 'tone' is missing"]),
    ("empty_field", "d.jsonl", GOOD + [{"phrase": "  ", "tone": "sad"}], ["--template", TONE_TEMPLATE],
     ["d.jsonl:13: field 'phrase' is empty"]),
    ("null_label", "d.jsonl", GOOD + [{"phrase": "x", "tone": None}],
     ["--template", "{phrase}", "--label_column", "tone"], ["d.jsonl:13: field 'tone' is empty (the label column)"]),
    ("label_column_absent", "d.jsonl", GOOD, ["--template", TONE_TEMPLATE, "--label_column", "mood"],
     ["--label_column names column 'mood', which is in no row of the data; columns are ['phrase', 'tone']"]),
    ("template_column_absent", "d.jsonl", GOOD, ["--template", "{phrase} {mood} => {tone}"],
     ["--template names column 'mood', which is in no row"]),
    ("messages_column_absent", "d.jsonl", GOOD, ["--format", "messages"],
     ["--messages_column names column 'messages', which is in no row"]),
    ("prompt_column_absent", "d.jsonl", [{"prompt": "p", "answer": f"a{i}"} for i in range(12)],
     ["--format", "prompt_completion"], ["does not have the columns", "--completion_column names column 'completion'"]),
    ("completion_missing_in_one_row", "d.jsonl",
     [{"prompt": f"p{i}", "completion": "c"} for i in range(12)] + [{"prompt": "p"}],
     ["--format", "prompt_completion"], ["d.jsonl:13: field 'completion' is missing (the completion column)"]),
    ("bad_role", "d.jsonl",
     _numbered([MSG] * 11) + [{"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}],
     ["--format", "messages"], ["d.jsonl:12: field 'messages' message 1: role 'bot'"]),
    ("no_assistant_turn", "d.jsonl", _numbered([MSG] * 11) + [{"messages": [{"role": "user", "content": "q"}]}],
     ["--format", "messages"], ["d.jsonl:12: field 'messages' has no assistant turn"]),
    ("ends_with_user", "d.jsonl",
     _numbered([MSG] * 11) + [{"messages": MSG["messages"] + [{"role": "user", "content": "more"}]}],
     ["--format", "messages"], ["d.jsonl:12: field 'messages' ends with a 'user' turn"]),
    ("empty_content", "d.jsonl",
     _numbered([MSG] * 11) + [{"messages": [{"role": "user", "content": ""}, {"role": "assistant",
                                                                            "content": "a"}]}],
     ["--format", "messages"], ["d.jsonl:12: field 'messages' message 0: content is missing or empty"]),
    ("messages_not_list", "d.jsonl", _numbered([MSG] * 11) + [{"messages": "hello"}], ["--format", "messages"],
     ["d.jsonl:12: field 'messages' must be a non-empty list"]),
    ("too_few", "d.jsonl", GOOD[:5], ["--template", TONE_TEMPLATE], ["only 5 usable examples"]),
    ("too_few_after_dedup", "d.jsonl", [GOOD[0]] * 12, ["--template", TONE_TEMPLATE],
     ["only 1 usable examples after dropping 11 duplicates (from 12 rows)"]),
    ("too_long", "d.jsonl", GOOD + [{"phrase": "word " * 40, "tone": "sad"}],
     ["--template", TONE_TEMPLATE, "--max_seq_len", "32"],
     ["d.jsonl:13: example is", "longer than --max_seq_len 32", "--on_too_long truncate"]),
    ("csv_short_row", "d.csv", ["phrase,tone"] + [f"p{i},sad" for i in range(11)] + ["lonely"],
     ["--template", TONE_TEMPLATE], ["d.csv:13: fewer values than the header"]),
    ("csv_empty_cell", "d.csv", ["phrase,tone"] + [f"p{i},sad" for i in range(11)] + ["p,"],
     ["--template", TONE_TEMPLATE], ["d.csv:13: field 'tone' is empty"]),
    ("json_array_bad_record", "d.json", ["[", '{"phrase": "a", "tone": "sad"},', '{"phrase": "b"},', "3", "]"],
     ["--template", TONE_TEMPLATE], ["d.json:3: field 'tone' is missing", "d.json:4: expected a JSON object",
                                     "only 1 usable examples"]),
    ("several_problems_at_once", "d.jsonl",
     GOOD + ["not json", {"phrase": "x"}, {"tone": "sad"}], ["--template", TONE_TEMPLATE],
     ["3 problems", "d.jsonl:13: invalid JSON", "d.jsonl:14: field 'tone'", "d.jsonl:15: field 'phrase'"]),
    ("problem_list_is_capped", "d.jsonl", GOOD + [{"phrase": f"p{i}"} for i in range(30)],
     ["--template", TONE_TEMPLATE], ["30 problems", "d.jsonl:13:", "d.jsonl:32:", "... and 10 more problems"]),
    # argument problems, all reported together
    ("no_template", "d.jsonl", GOOD, [], ["--format template needs --template"]),
    ("template_without_placeholder", "d.jsonl", GOOD, ["--template", "hello"], ["has no {field} placeholder"]),
    ("template_positional", "d.jsonl", GOOD, ["--template", "{} {}"], ["positional placeholders"]),
    ("template_format_spec", "d.jsonl", GOOD, ["--template", "{phrase:>10} {tone}"], ["a format spec"]),
    ("template_unbalanced", "d.jsonl", GOOD, ["--template", "{phrase"], ["not a valid format string"]),
    ("bad_split_and_fraction", "d.jsonl", GOOD,
     ["--template", TONE_TEMPLATE, "--dataset_split", "train[:x]", "--validation_fraction", "0.9"],
     ["--dataset_split 'train[:x]' is not a split spec", "--validation_fraction: 0.9 is above the maximum 0.5"]),
    ("local_split_not_train", "d.jsonl", GOOD, ["--template", TONE_TEMPLATE, "--dataset_split", "test[:5]"],
     ["names a split other than 'train'"]),
    ("two_sources", "d.jsonl", GOOD, ["--template", TONE_TEMPLATE, "--dataset_name", "org/ds"],
     ["exactly one of --data, --data_dir, --dataset_name"]),
    ("template_with_other_format", "d.jsonl", GOOD, ["--format", "messages", "--template", "{a}"],
     ["--template is only used with --format template"]),
    ("unsupported_file", "d.txt", GOOD, ["--template", TONE_TEMPLATE], ["unsupported type '.txt'"]),
]


@pytest.mark.parametrize("name,rows,args,expected", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_exits_2_names_location_writes_nothing(tmp_path, tiny_model, capsys, name, rows, args, expected):
    src = tmp_path / name
    if name.endswith(".csv") or name.endswith(".json"):
        src.write_text("\n".join(rows) + "\n")
    else:
        write_jsonl(src, rows)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        run_main(main, ["--data", str(src), *args, "--base_model", str(tiny_model), "--output_data", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, f"{text!r} not in:\n{err}"
    assert not out.exists()
    assert list(tmp_path.glob(".tmp-*")) == []


def test_missing_paths_and_model_reported_together(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_main(main, ["--data", str(tmp_path / "nope.jsonl"), "--template", "{a}", "--output_data",
                        str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "nope.jsonl' is not a file" in err and "exactly one of --base_model, --base_model_id" in err


NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


@pytest.mark.parametrize("chat_template,expected", [
    (NO_SYSTEM_TEMPLATE, ["d.jsonl:12: field 'messages': the model's chat template rejected these messages",
                          "System role not supported"]),
    (None, ["--format messages needs a chat template", "use --format template"]),
], ids=["template_rejects_system_turn", "no_chat_template"])
def test_chat_template_problems(tmp_path, tiny_model, capsys, chat_template, expected):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "chat_template.jinja").unlink()
    if chat_template is not None:
        (model / "chat_template.jinja").write_text(chat_template)
    sys_turn = {"messages": [{"role": "system", "content": "s"}] + MSG["messages"]}
    src = write_jsonl(tmp_path / "d.jsonl", _numbered([MSG] * 11 + [sys_turn]))
    with pytest.raises(SystemExit) as exc:
        run_main(main, ["--data", str(src), "--format", "messages", "--base_model", str(model),
                        "--output_data", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, f"{text!r} not in:\n{err}"
    assert not (tmp_path / "out").exists()


def test_empty_folder(tmp_path, tiny_model, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("x")
    with pytest.raises(SystemExit):
        run_main(main, ["--data_dir", str(tmp_path / "in"), "--template", "{a}", "--base_model", str(tiny_model),
                        "--output_data", str(tmp_path / "out")])
    assert "no .jsonl, .json, .csv or .parquet files in the folder (found: ['notes.txt'])" in capsys.readouterr().err


def test_failed_rerun_keeps_previous_output(tmp_path, tiny_model, tone_jsonl):
    out = tmp_path / "out"
    run_prep(tiny_model, out, "--data", str(tone_jsonl), "--template", TONE_TEMPLATE, "--max_rows", "50")
    before = (out / "train.jsonl").read_text()
    with pytest.raises(SystemExit):
        run_main(main, ["--data", str(tone_jsonl), "--template", TONE_TEMPLATE, "--max_seq_len", "10",
                        "--base_model", str(tiny_model), "--output_data", str(out)])
    assert (out / "train.jsonl").read_text() == before


# --- contract: CLI flags == component inputs/outputs; --help; MLflow ------------------------------------------

def test_flags_match_component_yaml():
    spec = yaml.safe_load((REPO / "components" / "prep" / "component.yaml").read_text())
    flags = {a.dest for a in build_parser()._actions if a.dest != "help"}
    assert flags == set(spec["inputs"]) | set(spec["outputs"])
    assert all(a.help for a in build_parser()._actions)
    for name, inp in spec["inputs"].items():
        if "default" in inp:
            assert build_parser().get_default(name) == inp["default"], name


def test_help_runs_as_module():
    res = subprocess.run([sys.executable, "-m", "slmops.steps.prep", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0
    assert "--dataset_split" in res.stdout and "python -m slmops.steps.prep --data" in res.stdout


def test_logs_to_mlflow(tmp_path, tiny_model, tone_jsonl, monkeypatch):
    import mlflow

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a file store is quicker to create than sqlite
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    run_prep(tiny_model, tmp_path / "o", "--data", str(tone_jsonl), "--template", TONE_TEMPLATE,
             "--label_column", "tone", "--max_rows", "100")
    client = mlflow.MlflowClient(tracking_uri=uri)   # not mlflow.set_tracking_uri: that would leak to later tests
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["label_column"] == "tone"
    assert run.data.metrics["rows_raw"] == 100 and run.data.metrics["rows_validation"] == 10
    assert run.data.tags["data_sha256"] == json.loads((tmp_path / "o" / "data_report.json").read_text())["sha256"]
