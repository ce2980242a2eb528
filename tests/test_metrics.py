"""Golden numbers for slmops.metrics on fixed inputs (hand-computed; BLEU from sacrebleu's defaults)."""

from __future__ import annotations

import math

import pytest

from slmops import metrics

CLASSIFICATION = [
    # (predictions, references, accuracy, macro_f1, labels, confusion_matrix)
    (["a", "b", "c"], ["a", "b", "c"], 1.0, 1.0, ["a", "b", "c"], [[1, 0, 0], [0, 1, 0], [0, 0, 1]]),
    # a: tp 1 fp 1 fn 0 -> F1 2/3; b: tp 1 fp 0 fn 2 -> F1 1/2; "c" is not a reference label -> (other)
    (["a", "a", "b", "c"], ["a", "b", "b", "b"], 0.5, (2 / 3 + 1 / 2) / 2, ["a", "b", "(other)"],
     [[1, 0, 0], [1, 1, 1], [0, 0, 0]]),
    (["x", "y"], ["a", "b"], 0.0, 0.0, ["a", "b", "(other)"], [[0, 0, 1], [0, 0, 1], [0, 0, 0]]),
    # a label never predicted still counts in the macro average (F1 0)
    (["a", "a", "a", "a"], ["a", "a", "a", "b"], 0.75, (6 / 7 + 0) / 2, ["a", "b"], [[3, 0], [1, 0]]),
]


@pytest.mark.parametrize("preds,refs,acc,f1,labels,matrix", CLASSIFICATION)
def test_classification_golden(preds, refs, acc, f1, labels, matrix):
    result = metrics.classification(preds, refs)
    assert result["accuracy"] == pytest.approx(acc)
    assert result["macro_f1"] == pytest.approx(f1)
    assert result["labels"] == labels
    assert result["confusion_matrix"] == matrix


@pytest.mark.parametrize("preds,refs,acc,f1,labels,matrix", CLASSIFICATION)
def test_macro_f1_agrees_with_sklearn(preds, refs, acc, f1, labels, matrix):
    from sklearn.metrics import f1_score

    expected = f1_score(refs, preds, labels=sorted(set(refs)), average="macro", zero_division=0)
    assert metrics.macro_f1(preds, refs) == pytest.approx(expected)


GENERATION = [
    # (metric, predictions, references, expected)
    (metrics.bleu, ["the cat sat on the mat"], ["the cat sat on the mat"], 100.0),
    (metrics.bleu, ["the cat is on the mat", "there is a dog"],
     ["the cat sat on the mat", "there is a big dog here"], 32.0345719218535),
    (metrics.bleu, ["completely different words"], ["the cat sat on the mat"], 0.0),
    # LCS 5 of 5 predicted / 6 reference tokens: F = 2 * 1 * 5/6 / (1 + 5/6) = 10/11
    (metrics.rouge_l, ["the cat on the mat"], ["the cat sat on the mat"], 10 / 11),
    # mean of 5/6 (LCS 5 of 6 and 6) and 0.8 (LCS 4 of 4 and 6)
    (metrics.rouge_l, ["the cat is on the mat", "there is a dog"],
     ["the cat sat on the mat", "there is a big dog here"], (5 / 6 + 0.8) / 2),
    (metrics.rouge_l, [""], ["the cat"], 0.0),
]


@pytest.mark.parametrize("metric,preds,refs,expected", GENERATION)
def test_generation_golden(metric, preds, refs, expected):
    assert metric(preds, refs) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("nll_sum,n_tokens,expected", [
    (0.0, 5, 1.0),
    (2 * math.log(4), 2, 4.0),
    (3 * math.log(641), 3, 641.0),  # uniform over a 641-token vocabulary
])
def test_perplexity_golden(nll_sum, n_tokens, expected):
    assert metrics.perplexity(nll_sum, n_tokens) == pytest.approx(expected)


@pytest.mark.parametrize("call,match", [
    (lambda: metrics.accuracy(["a"], ["a", "b"]), "1 predictions for 2 references"),
    (lambda: metrics.macro_f1([], []), "no examples"),
    (lambda: metrics.bleu(["a", "b"], ["a"]), "2 predictions for 1 references"),
    (lambda: metrics.perplexity(1.0, 0), "at least one scored token"),
])
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_torch_generate_adds_no_second_bos_to_prompts_a_chat_template_opened(tiny_model):
    """Llama-3-style chat templates write the BOS token into the prompt text; the tokenizer also adds one by
    default. Generation must feed exactly one, as prep did when it tokenized the rendered chat prompt."""
    from tokenizers import processors

    from slmops import generation, models

    tok = models.load_tokenizer(tiny_model)
    tok.bos_token = "<|system|>"                      # stands in for <|begin_of_text|>
    bos = tok.convert_tokens_to_ids("<|system|>")
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<|system|> $A", special_tokens=[
        ("<|system|>", bos)])
    assert tok("hi")["input_ids"][0] == bos            # the tokenizer adds BOS by default

    seen = []

    class Recorder:
        device = "cpu"
        generation_config = type("G", (), {"eos_token_id": tok.eos_token_id})()

        def generate(self, input_ids, **kwargs):
            seen.extend(input_ids.tolist())
            return input_ids

    generation.torch_generate(Recorder(), tok, ["<|system|>hello", "<|system|>tone?"], max_new_tokens=1,
                              batch_size=2)
    assert all(sum(1 for t in row if t == bos) == 1 for row in seen), seen
    seen.clear()
    generation.torch_generate(Recorder(), tok, ["plain prompt"], max_new_tokens=1, batch_size=1)
    assert seen[0][0] == bos                           # a raw prompt still gets its BOS
