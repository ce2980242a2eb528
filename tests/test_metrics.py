"""Golden numbers for slmops.metrics on fixed inputs (hand-computed; BLEU from sacrebleu's defaults; Wilson intervals
cross-checked with scipy; break-even arithmetic worked out in the comments)."""

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


# Wilson score interval, 95 % (z = 1.959964): centre (p + z²/2n) / (1 + z²/n), half-width
# z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n). 0 of 10: (0, 0.27753); 5 of 10: 0.5 ± 0.26341.
WILSON = [
    (0, 10, 0.0, 0.2775327998628892),
    (5, 10, 0.236593090512564, 0.7634069094874361),
    (10, 10, 0.7224672001371107, 1.0),
    (81, 100, 0.7222115462093562, 0.8748524849023126),
    (56, 60, 0.8407464268680283, 0.9737713012754938),
    (1, 1, 0.20654931437723745, 1.0),
]


@pytest.mark.parametrize("successes,n,low,high", WILSON)
def test_wilson_interval_golden(successes, n, low, high):
    got = metrics.wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=1e-12)


@pytest.mark.parametrize("successes,n,low,high", WILSON)
def test_wilson_interval_agrees_with_scipy(successes, n, low, high):
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert metrics.wilson_interval(successes, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_bootstrap_interval_is_seeded_and_brackets_the_statistic():
    scores = [1.0] * 30 + [0.0] * 10
    mean = lambda idx: sum(scores[i] for i in idx) / len(idx)  # noqa: E731
    first = metrics.bootstrap_interval(mean, len(scores))
    assert first == metrics.bootstrap_interval(mean, len(scores))  # seed 0: the same every run
    assert first != metrics.bootstrap_interval(mean, len(scores), seed=1)
    assert first[0] < 0.75 < first[1] and 0.5 < first[0] and first[1] <= 1.0
    assert metrics.bootstrap_interval(mean, 3, resamples=50) is not None
    assert metrics.bootstrap_interval(lambda idx: 0.5, 7) == (0.5, 0.5)


@pytest.mark.parametrize("a,b,overlap", [
    ((0.1, 0.3), (0.2, 0.5), True), ((0.1, 0.3), (0.3, 0.5), True), ((0.1, 0.3), (0.31, 0.5), False),
    ((0.6, 0.9), (0.0, 0.59), False), ((0.0, 1.0), (0.4, 0.5), True),
])
def test_intervals_overlap(a, b, overlap):
    assert metrics.intervals_overlap(a, b) is overlap
    assert metrics.intervals_overlap(b, a) is overlap


@pytest.mark.parametrize("seconds,price_per_hour,saved,price_per_1k,cost,requests", [
    # 1 h at 2.00/h = 2.00; 200 tokens x 0.0005 / 1000 = 0.0001 saved per request -> 20,000 requests
    # (2.0 / 1e-4 is 19999.999999999996 in floating point: must not round up to 20,001 or down)
    (3600, 2.0, 200, 0.0005, 2.0, 20_000),
    # 36 s at 2.00/h = 0.02; 75 tokens x 0.0005 / 1000 = 3.75e-5 -> 533.33 -> 534 (a partial request rounds up)
    (36, 2.0, 75, 0.0005, 0.02, 534),
    # 90 min at 3.60/h = 5.40; 212 tokens at 0.001 -> 0.000212 per request -> 25,471.7 -> 25,472
    (5400, 3.6, 212, 0.001, 5.4, 25_472),
    (3600, 0.0, 200, 0.0005, None, None),   # compute not priced
    (None, 2.0, 200, 0.0005, None, None),   # training time unknown
    (3600, 2.0, 0, 0.0005, 2.0, None),      # no tokens saved: never pays back
    (3600, 2.0, -40, 0.0005, 2.0, None),    # fine-tuned prompt is longer
    (3600, 2.0, 200, 0.0, 2.0, None),       # tokens free
    (0, 2.0, 200, 0.0005, 0.0, 0),          # free training pays back at once
])
def test_training_cost_and_break_even_golden(seconds, price_per_hour, saved, price_per_1k, cost, requests):
    got = metrics.training_cost(seconds, price_per_hour)
    assert got == (pytest.approx(cost) if cost is not None else None)
    assert metrics.break_even_requests(got, saved, price_per_1k) == requests


def test_rouge_l_scores_are_per_example():
    scores = metrics.rouge_l_scores(["the cat on the mat", ""], ["the cat sat on the mat", "a dog"])
    assert scores == pytest.approx([10 / 11, 0.0])
    assert metrics.rouge_l(["the cat on the mat", ""], ["the cat sat on the mat", "a dog"]) == pytest.approx(5 / 11)


@pytest.mark.parametrize("call,match", [
    (lambda: metrics.accuracy(["a"], ["a", "b"]), "1 predictions for 2 references"),
    (lambda: metrics.macro_f1([], []), "no examples"),
    (lambda: metrics.bleu(["a", "b"], ["a"]), "2 predictions for 1 references"),
    (lambda: metrics.perplexity(1.0, 0), "at least one scored token"),
    (lambda: metrics.wilson_interval(0, 0), "at least one example"),
    (lambda: metrics.wilson_interval(11, 10), "11 successes out of 10"),
    (lambda: metrics.bootstrap_interval(len, 0), "at least one example"),
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
