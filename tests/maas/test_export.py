"""`slmops maas export`: raw rows, prep's output and chat messages to the hosted services' chat JSONL, with their
checks (every problem with file:line, exit 2, nothing written), token counts and the cost estimate."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

from tests.maas.conftest import SAMPLE, SYSTEM, TONE, write_rows


def openai_format_errors(path: Path) -> dict:
    """The format checks of OpenAI's cookbook "Data preparation and analysis for chat model fine-tuning", written
    out independently of slmops: the file is accepted when this returns {}."""
    errors = defaultdict(int)
    for line in path.read_text().splitlines():
        ex = json.loads(line)
        if not isinstance(ex, dict):
            errors["data_type"] += 1
            continue
        messages = ex.get("messages")
        if not messages:
            errors["missing_messages_list"] += 1
            continue
        for message in messages:
            if "role" not in message or "content" not in message:
                errors["message_missing_key"] += 1
            if any(k not in ("role", "content", "name", "function_call", "weight") for k in message):
                errors["message_unrecognized_key"] += 1
            if message.get("role") not in ("system", "user", "assistant", "function"):
                errors["unrecognized_role"] += 1
            content = message.get("content")
            if not content or not isinstance(content, str):
                errors["missing_content"] += 1
        if not any(m.get("role") == "assistant" for m in messages):
            errors["example_missing_assistant_message"] += 1
    return dict(errors)


def export(run_cli, *args):
    return run_cli("maas", "export", *args)


def test_sample_data_with_the_tone_template(run_cli, tmp_path):
    out, report = tmp_path / "tone_chat.jsonl", tmp_path / "report.json"
    result = export(run_cli, "--data", SAMPLE, *TONE, "--model", "gpt-4o-mini", "--out", out, "--report", report)
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert len(lines) == 2000 and openai_format_errors(out) == {}
    assert json.loads(lines[0]) == {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Phrase: Grateful: I seem cheerful about the plan."},
        {"role": "assistant", "content": "joyful"}]}
    facts = json.loads(report.read_text())
    assert facts["n_examples"] == 2000 and facts["problems"] == []
    tokens, estimate = facts["tokens"], facts["estimate"]
    assert tokens["max_example_tokens"] == 65536 and 40 < tokens["per_example"]["mean"] < 100
    assert estimate["model"] == "gpt-4o-mini-2024-07-18" and estimate["epochs"] == 3
    assert estimate["training_tokens"] == 3 * tokens["total"]
    assert estimate["cost_usd"] == round(estimate["training_tokens"] * 3.0 / 1e6, 4)
    assert "2000 examples" in result.output and f"estimated cost ${estimate['cost_usd']:,.2f}" in result.output
    assert f"wrote {out}" in result.output


@pytest.mark.parametrize("fmt_args", [
    ["--format", "template", "--template", "Phrase: {phrase}\\nTone: {tone}"],
    ["--format", "prompt_completion", "--prompt_column", "phrase", "--completion_column", "tone"],
], ids=["template", "prompt_completion"])
def test_other_raw_formats(run_cli, tmp_path, fmt_args):
    out = tmp_path / "out.jsonl"
    result = export(run_cli, "--data", SAMPLE, *fmt_args, "--out", out)
    assert result.exit_code == 0, result.output
    first = json.loads(out.read_text().splitlines()[0])["messages"]
    assert first[-1] == {"role": "assistant", "content": "joyful"}
    assert first[0]["role"] == "user" and "Grateful: I seem cheerful about the plan." in first[0]["content"]


def test_messages_and_csv_inputs(run_cli, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(12)]
    out = tmp_path / "out.jsonl"
    assert export(run_cli, "--data", write_rows(tmp_path / "m.jsonl", rows), "--out", out).exit_code == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    csv = tmp_path / "d.csv"
    csv.write_text("phrase,tone\n" + "".join(f"p{i},sad\n" for i in range(12)))
    result = export(run_cli, "--data", csv, "--template", "{phrase}", "--completion_column", "tone", "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text().splitlines()[0])["messages"] == [{"role": "user", "content": "p0"},
                                                                       {"role": "assistant", "content": "sad"}]


def test_prep_output_folder_is_read_back_into_turns(run_cli, tmp_path, prepared_data):
    """prep's train.jsonl for the tiny model (a Phi-3 style template: <|user|> ... <|end|> <|assistant|>)."""
    out = tmp_path / "out.jsonl"
    result = export(run_cli, "--data", prepared_data, "--out", out)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    prepared = [json.loads(line) for line in (prepared_data / "train.jsonl").read_text().splitlines()]
    assert len(rows) == len(prepared) and openai_format_errors(out) == {}
    for row, source in zip(rows, prepared):
        user, answer = row["messages"]
        assert user["role"] == "user" and user["content"].startswith("What is the tone of this phrase? ")
        assert "<|" not in user["content"] and answer == {"role": "assistant", "content": source["label"]}
    for split in ("validation", "test"):  # smaller than the training minimum of 10, which is not applied to them
        result = export(run_cli, "--data", prepared_data, "--split", split, "--out", tmp_path / f"{split}.jsonl")
        assert result.exit_code == 0, result.output


CHATML = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nPhrase: hi<|im_end|>\n<|im_start|>assistant\n"
PHI3 = "<|system|>\nBe brief.<|end|>\n<|user|>\nPhrase: hi<|end|>\n<|assistant|>\n"
LLAMA3 = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
          "<|start_header_id|>user<|end_header_id|>\n\nPhrase: hi<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\n")
GEMMA = "<bos><start_of_turn>user\nPhrase: hi<end_of_turn>\n<start_of_turn>model\n"


@pytest.mark.parametrize("prompt,completion,turns", [
    (CHATML, "sad<|im_end|>\n", [("system", "Be brief."), ("user", "Phrase: hi")]),
    (PHI3, "sad<|end|><|endoftext|>", [("system", "Be brief."), ("user", "Phrase: hi")]),
    (LLAMA3, "sad<|eot_id|>", [("system", "Be brief."), ("user", "Phrase: hi")]),
    (GEMMA, "sad<end_of_turn>\n", [("user", "Phrase: hi")]),
    ("Phrase: hi\nTone:", " sad", [("user", "Phrase: hi\nTone:")]),
], ids=["chatml", "phi3", "llama3", "gemma", "raw"])
def test_rendered_prompts_are_read_back(prompt, completion, turns):
    from slmops.maas import export

    assert [(t["role"], t["content"]) for t in export.parse_rendered(prompt)] == turns
    assert export.clean_completion(completion) == "sad"


def test_unknown_rendered_template_is_a_problem_with_the_fix(run_cli, tmp_path):
    rows = [{"prompt": f"[INST] q{i} [/INST]", "completion": "a"} for i in range(12)]
    result = export(run_cli, "--data", write_rows(tmp_path / "train.jsonl", rows), "--out", tmp_path / "o.jsonl")
    assert result.exit_code == 2
    assert "train.jsonl:1: the prompt is rendered with a chat template slmops cannot read back" in result.output
    assert "train.jsonl:12:" in result.output and "--template" in result.output


GOOD = [{"phrase": f"phrase number {i}", "tone": "sad"} for i in range(12)]
MSG = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


def _msgs(*turns, **extra):
    return {"messages": [{"role": r, "content": c, **extra} for r, c in turns]}


BAD = [
    # (id, rows or raw lines, extra args, substrings expected in the message) - all problems reported together
    ("rows", GOOD[:2] + ['{"phrase": "oops", tone: sad}', "[1, 2]", {"phrase": "no tone"}, {"phrase": " ",
                                                                                             "tone": "sad"}] + GOOD,
     TONE, ["4 problem(s)", "d.jsonl:3: invalid JSON", "d.jsonl:4: expected a JSON object",
            "d.jsonl:5: field 'tone' is missing", "d.jsonl:6: field 'phrase' is empty"]),
    ("messages", [MSG] * 10 + [
        _msgs(("user", "q"), ("bot", "a")),                                  # 11 unknown role
        _msgs(("user", "q")),                                                 # 12 no assistant
        _msgs(("user", "q"), ("assistant", "a"), ("system", "s")),           # 13 system late + ends with system
        _msgs(("user", "q"), ("user", "q2"), ("assistant", "a")),            # 14 two users
        _msgs(("user", ""), ("assistant", "a")),                              # 15 empty content
        {"messages": [{"role": "user", "content": "q", "lang": "en"}, {"role": "assistant", "content": "a"}]},  # 16
        {"messages": "hello"},                                                # 17 not a list
        _msgs(("assistant", "a")),                                            # 18 no user first
        {"messages": [{"role": "user", "content": "q", "weight": 1}, {"role": "assistant", "content": "a"}]},  # 19
        {"text": "no messages"},                                              # 20 no messages field
    ], [], ["d.jsonl:11: message 1: role 'bot'", "d.jsonl:12: no assistant message",
            "d.jsonl:13: a system message at position 2", "d.jsonl:13: ends with a 'system' message",
            "d.jsonl:14: two user messages in a row", "d.jsonl:15: message 0 (user): content is missing or empty",
            "d.jsonl:16: message 0: unknown key(s) ['lang']", "d.jsonl:17: messages must be a non-empty list",
            "d.jsonl:18: the first turn after the system message must be the user's",
            "d.jsonl:19: message 0: weight must be 0 or 1, on assistant messages only",
            "d.jsonl:20: messages must be a non-empty list"]),
    ("too_few", GOOD[:4], TONE, ["d.jsonl: 4 example(s); fine-tuning needs at least 10"]),
    ("too_long", GOOD + [{"phrase": "word " * 400, "tone": "sad"}], [*TONE, "--max-example-tokens", "200"],
     ["d.jsonl:13: example is", "over the 200-token training context"]),
    ("model_limit", GOOD + [{"phrase": "word " * 5000, "tone": "sad"}], [*TONE, "--model", "Phi-3-mini-4k-instruct"],
     ["d.jsonl:13: example is", "over the 4,096-token training context of Phi-3-mini-4k-instruct"]),
    ("column_absent", GOOD, ["--template", "{phrase} {mood}", "--completion_column", "tone"],
     ["--template names column 'mood', which is in no row of the data"]),
    ("completion_absent", GOOD, ["--template", "{phrase}", "--completion_column", "label"],
     ["--completion_column names column 'label', which is in no row of the data"]),
    ("bad_template", GOOD, ["--template", "no placeholder"], ["has no {field} placeholder"]),
    ("template_format_needs_template", GOOD, ["--format", "template"], ["--format template needs --template"]),
]


@pytest.mark.parametrize("rows,args,expected", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_exits_2_names_every_location_writes_nothing(run_cli, tmp_path, rows, args, expected):
    src = write_rows(tmp_path / "d.jsonl", rows)
    out = tmp_path / "out.jsonl"
    result = export(run_cli, "--data", src, *args, "--out", out)
    assert result.exit_code == 2, result.output
    for text in expected:
        assert text in result.output, f"{text!r} not in:\n{result.output}"
    assert "nothing was written" in result.output or "needs --template" in result.output
    assert not out.exists() and list(tmp_path.glob(".out.jsonl*")) == []
    assert "Traceback" not in result.output


def test_price_table_overrides_and_rejects_unknown_fields(run_cli, tmp_path):
    table = tmp_path / "prices.json"
    table.write_text(json.dumps({"models": {"my-model": {"train_per_1m": 10.0, "max_example_tokens": 100}}}))
    report = tmp_path / "r.json"
    result = export(run_cli, "--data", SAMPLE, *TONE, "--model", "my-model", "--price-table", table, "--epochs", "1",
                    "--out", tmp_path / "o.jsonl", "--report", report)
    assert result.exit_code == 0, result.output
    estimate = json.loads(report.read_text())["estimate"]
    assert estimate["cost_usd"] == round(estimate["training_tokens"] * 10.0 / 1e6, 4) and estimate["epochs"] == 1
    table.write_text(json.dumps({"models": {"my-model": {"train_price": 10.0, "max_example_tokens": "many"}}}))
    bad = export(run_cli, "--data", SAMPLE, *TONE, "--price-table", table, "--out", tmp_path / "o2.jsonl")
    assert bad.exit_code == 2
    assert "models.my-model: unknown field 'train_price'" in bad.output
    assert "models.my-model.max_example_tokens = 'many': expected a number >= 0 or null" in bad.output


def test_unknown_model_warns_and_skips_the_estimate(run_cli, tmp_path):
    result = export(run_cli, "--data", SAMPLE, *TONE, "--model", "gpt-99", "--out", tmp_path / "o.jsonl")
    assert result.exit_code == 0, result.output
    assert "no limits or prices known for 'gpt-99'" in result.output and "not priced" in result.output


@pytest.mark.parametrize("n,epochs", [(10, 10), (20, 5), (34, 3), (1000, 3), (10000, 2), (30000, 1)])
def test_default_epochs_follow_the_services_rule(n, epochs):
    from slmops.maas import export

    assert export.default_epochs(n) == epochs


def test_example_tokens_count_the_chat_overhead():
    from slmops.maas import export

    counter = export.TokenCounter("words", lambda text: len(text.split()))
    messages = [{"role": "user", "content": "a b c"}, {"role": "assistant", "content": "d", "name": "x"}]
    assert export.example_tokens(messages, counter) == 3 + (3 + 1 + 3) + (3 + 1 + 1 + 1 + 1)


def test_limits_resolve_aliases_registry_uris_and_fine_tuned_names():
    from slmops.maas import export

    table = export.load_table()
    assert export.limits_for(table, "gpt-35-turbo-0125")["model"] == "gpt-3.5-turbo-0125"
    assert export.limits_for(table, "ft:gpt-4o-mini-2024-07-18:org::abc")["max_example_tokens"] == 65536
    assert export.limits_for(table, "azureml://registries/azureml/models/Phi-3-mini-4k-instruct/versions/2")[
        "max_example_tokens"] == 4096
    assert export.limits_for(table, "gpt-4.1-nano")["max_example_tokens"] == 32768
    assert export.limits_for(table, None)["min_examples"] == 10


def test_every_packaged_figure_names_its_source_and_date():
    """base_models.json: each model's limits and prices say where they come from and when they were checked; a
    figure that could not be confirmed is null and says so."""
    from slmops.maas import export as exporting

    table = json.loads(exporting.TABLE.read_text())
    checked = table["as_of"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", checked)
    assert set(table["sources"]["models"]) == set(table["models"])
    for name, fields in table["models"].items():
        sources = table["sources"]["models"][name]
        for figure in ("max_example_tokens", "train_per_1m"):
            [source] = [text for key, text in sources.items() if figure in key.split(", ")]
            if fields[figure] is None:
                assert source.startswith("not confirmed"), (name, figure)
            else:
                assert "https://" in source and checked in source, (name, figure)
        if fields["train_per_1m"] is not None:
            assert fields["input_per_1m"] is not None and fields["output_per_1m"] is not None
    for key in ("defaults.min_examples", "defaults.max_file_mb"):
        assert "https://" in table["sources"][key] and checked in table["sources"][key]
    assert table["sources"]["not_confirmed"]
