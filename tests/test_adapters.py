"""slmops.adapters without a model: adapter names, the adapters/ folder layout for each backend, assemble()'s checks,
and the same-modules rule (the builds and the serving are in tests/steps/test_optimize_adapters.py and
tests/serving/test_multi_adapter.py)."""

from __future__ import annotations

import pytest

from slmops import adapters as multi
from slmops.errors import UserError


@pytest.mark.parametrize("name, ok", [
    ("tone", True), ("topic-v2", True), ("a.b_c", True), ("7", True),
    ("", False), ("../x", False), ("-tone", False), ("to ne", False), ("x" * 65, False), (None, False),
])
def test_name_problem(name, ok):
    problem = multi.name_problem(name)
    assert (problem is None) == ok
    if not ok:
        assert repr(name) in problem and "letters, digits" in problem


def test_names_follow_the_backend_of_the_folder(tmp_path):
    onnx, peft, plain = tmp_path / "onnx", tmp_path / "peft", tmp_path / "plain"
    (onnx / "adapters").mkdir(parents=True)
    (onnx / "genai_config.json").write_text("{}")
    for name in ("topic", "tone"):
        (onnx / "adapters" / f"{name}.onnx_adapter").write_bytes(b"x")
        (peft / "adapters" / name).mkdir(parents=True)
        (peft / "adapters" / name / "adapter_config.json").write_text("{}")
    (onnx / "adapters" / "notes.txt").write_text("not an adapter")
    (peft / "adapters" / "empty").mkdir()                 # no adapter_config.json: not an adapter
    plain.mkdir()
    assert multi.names(onnx) == ["tone", "topic"] and multi.onnx_names(onnx) == ["tone", "topic"]
    assert multi.names(peft) == ["tone", "topic"] and multi.onnx_names(peft) == []
    assert multi.names(plain) == [] and multi.load_onnx_adapters(None, plain) == (None, [])


def test_assemble_copies_the_base_and_each_adapter(tmp_path):
    base, tone = tmp_path / "base", tmp_path / "tone"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "llama"}')
    (base / "adapters").mkdir()                           # a stale adapters/ of the base is not copied
    (base / "adapters" / "old.txt").write_text("x")
    tone.mkdir()
    (tone / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    out = multi.assemble(base, {"tone": tone}, tmp_path / "out")
    assert (out / "config.json").is_file() and multi.peft_names(out) == ["tone"]
    assert not (out / "adapters" / "old.txt").exists()


def test_assemble_reports_every_bad_adapter(tmp_path):
    (tmp_path / "base").mkdir()
    with pytest.raises(UserError) as err:
        multi.assemble(tmp_path / "base", {"../x": tmp_path / "base", "tone": tmp_path / "missing"}, tmp_path / "out")
    text = str(err.value)
    assert "adapter name '../x'" in text and "'tone':" in text and "has no adapter_config.json" in text
    assert not (tmp_path / "out").exists()


def test_same_targets():
    a = {"/l0/q/lora_A/MatMul": 1, "/l0/q/lora_B/MatMul": 1}
    assert multi.same_targets({"tone": a, "topic": dict(a)}) == []
    [problem] = multi.same_targets({"tone": a, "qv": {"/l0/v/lora_A/MatMul": 1}})
    assert "'tone' and 'qv' put LoRA on different modules" in problem and "--target_modules" in problem


def test_the_shipped_topic_data_is_the_generated_one():
    """sdk/slmops/data/topic_sample.jsonl (pipelines/multi_adapter.yaml's second task) = topic_dataset(1000, seed=0):
    balanced labels, every row's words from its topic's list."""
    import json
    from collections import Counter
    from pathlib import Path

    from slmops.tiny import _TOPIC_WORDS, TOPICS, topic_dataset

    path = Path(multi.__file__).parent / "data" / "topic_sample.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == topic_dataset(1000, seed=0)
    assert Counter(r["topic"] for r in rows) == {t: 200 for t in TOPICS}
    assert all(sum(w in r["text"] for w in _TOPIC_WORDS[r["topic"]]) >= 2 for r in rows)
