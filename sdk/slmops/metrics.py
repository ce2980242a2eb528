"""Task metrics as plain functions of predictions and references (strings) or summed token losses.

Classification: `accuracy`, `macro_f1`, `confusion_matrix`, all over the labels seen in the references (a
prediction that is none of them counts as wrong, under the extra label `OTHER`). Generation: `perplexity`
from summed negative log-likelihood, `bleu` (sacrebleu corpus BLEU, 0-100), `rouge_l` (rouge-score ROUGE-L
F-measure, mean over examples, 0-1).

Uncertainty: `wilson_interval` (95 % Wilson score interval of a proportion: accuracy), `bootstrap_interval`
(percentile bootstrap of any statistic over the examples, seeded: macro-F1, ROUGE-L), `intervals_overlap`.
Cost: `training_cost` (wall seconds x price per hour) and `break_even_requests` (training cost / money saved per
request by a shorter prompt).

    from slmops import metrics
    metrics.classification(["joyful", "sad"], ["joyful", "angry"])
    # {"accuracy": 0.5, "macro_f1": 0.333..., "labels": ["angry", "joyful", "sad"], "confusion_matrix": [...]}
"""

from __future__ import annotations

import math
import random

OTHER = "(other)"  # the confusion-matrix label of a prediction that matches none of the reference labels
# the metric a task's verdict (fine-tune or prompt?) is decided on, in evaluate and in the run report
VERDICT_METRIC = {"classification": "accuracy", "generation": "rouge_l"}
# validation loss ending more than this share above its lowest counts as risen (evaluate's over-fitting check, the
# report's over-fitting point)
OVERFIT_TOLERANCE = 0.01


def _check_lengths(predictions: list[str], references: list[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("no examples to score")


def accuracy(predictions: list[str], references: list[str]) -> float:
    """Fraction of predictions equal to their reference."""
    _check_lengths(predictions, references)
    return sum(p == r for p, r in zip(predictions, references)) / len(references)


def matrix_labels(predictions: list[str], references: list[str]) -> list[str]:
    """The confusion matrix's labels: those seen in the references, sorted, plus OTHER when a prediction is
    none of them."""
    labels = sorted(set(references))
    if any(p not in labels for p in predictions):
        labels.append(OTHER)
    return labels


def confusion_matrix(predictions: list[str], references: list[str]) -> list[list[int]]:
    """counts[i][j] = examples whose reference is labels[i] and prediction labels[j] (labels: matrix_labels)."""
    _check_lengths(predictions, references)
    labels = matrix_labels(predictions, references)
    index = {label: i for i, label in enumerate(labels)}
    counts = [[0] * len(labels) for _ in labels]
    for p, r in zip(predictions, references):
        counts[index[r]][index[p] if p in index else index[OTHER]] += 1
    return counts


def macro_f1(predictions: list[str], references: list[str]) -> float:
    """Unweighted mean of per-label F1 over the labels seen in the references (F1 is 0 when undefined)."""
    _check_lengths(predictions, references)
    tp: dict[str, int] = {}
    fp: dict[str, int] = {}
    fn: dict[str, int] = {}
    for p, r in zip(predictions, references):
        if p == r:
            tp[r] = tp.get(r, 0) + 1
        else:
            fp[p] = fp.get(p, 0) + 1
            fn[r] = fn.get(r, 0) + 1
    labels = set(references)
    scores = [2 * tp[label] / (2 * tp[label] + fp.get(label, 0) + fn.get(label, 0)) if tp.get(label) else 0.0
              for label in labels]
    return sum(scores) / len(scores)


def classification(predictions: list[str], references: list[str]) -> dict:
    """All classification metrics in the metrics.json layout."""
    return {
        "accuracy": accuracy(predictions, references),
        "macro_f1": macro_f1(predictions, references),
        "labels": matrix_labels(predictions, references),
        "confusion_matrix": confusion_matrix(predictions, references),
    }


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood per token), from the summed NLL over `n_tokens` scored tokens."""
    if n_tokens <= 0:
        raise ValueError("perplexity needs at least one scored token")
    return math.exp(nll_sum / n_tokens)


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenizer, exp smoothing), on the 0-100 scale."""
    import sacrebleu

    _check_lengths(predictions, references)
    return float(sacrebleu.corpus_bleu(predictions, [references]).score)


def rouge_l_scores(predictions: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F-measure of each example (rouge-score, no stemming), on the 0-1 scale."""
    from rouge_score import rouge_scorer

    _check_lengths(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure over examples (rouge-score, no stemming), on the 0-1 scale."""
    scores = rouge_l_scores(predictions, references)
    return sum(scores) / len(scores)


# ---------------------------------------------------------------------------------------------- uncertainty

Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile: two-sided 95 %


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion `successes / n` (95 % by default): unlike the normal
    approximation it stays inside [0, 1] and is not zero-width at 0 or n successes."""
    if n <= 0:
        raise ValueError("a confidence interval needs at least one example")
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(statistic, n: int, *, resamples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(indices)`: the statistic on `resamples` resamples (with
    replacement) of the example indices 0..n-1, drawn with `random.Random(seed)`, so the interval is the same on
    every run."""
    if n <= 0:
        raise ValueError("a confidence interval needs at least one example")
    rng = random.Random(seed)
    values = sorted(statistic(rng.choices(range(n), k=n)) for _ in range(resamples))
    tail = (1 - level) / 2
    return values[int(tail * resamples)], values[min(resamples - 1, int((1 - tail) * resamples))]


def intervals_overlap(a: tuple[float, float] | list[float], b: tuple[float, float] | list[float]) -> bool:
    """Whether two closed intervals share a point."""
    return a[0] <= b[1] and b[0] <= a[1]


# ----------------------------------------------------------------------------------------------------- cost

def training_cost(train_seconds: float | None, price_per_hour: float) -> float | None:
    """Wall seconds of training x price of the compute per hour; None when the price is 0 (not priced) or the
    training time is unknown."""
    if train_seconds is None or price_per_hour <= 0:
        return None
    return train_seconds / 3600 * price_per_hour


def break_even_requests(cost: float | None, tokens_saved_per_request: float | None,
                        price_per_1k_tokens: float) -> int | None:
    """Requests after which the prompt tokens fine-tuning saves have paid for its training:
    ceil(cost / (tokens saved per request x price per 1,000 tokens / 1000)). None when there is no cost, no
    saving (<= 0) or no token price."""
    if cost is None or tokens_saved_per_request is None or tokens_saved_per_request <= 0 or price_per_1k_tokens <= 0:
        return None
    per_request = tokens_saved_per_request * price_per_1k_tokens / 1000
    return math.ceil(round(cost / per_request, 6))  # 2.0 / 1e-4 is 19999.999999999996 in floating point


BOOTSTRAP = {"resamples": 1000, "seed": 0}   # the seeded bootstrap behind every non-accuracy interval


def quality(task: str, predictions: list[str], references: list[str]) -> dict:
    """The task's metrics with their 95 % intervals, as evaluate (and `slmops maas score`) report them: accuracy with
    a Wilson interval and macro-F1 with a seeded bootstrap (classification), or BLEU and ROUGE-L with a bootstrap
    interval (generation; perplexity is added by the caller)."""
    n = len(references)
    if task == "classification":
        result = classification(predictions, references)
        correct = sum(p == r for p, r in zip(predictions, references))
        return {"accuracy": result["accuracy"], "accuracy_ci": list(wilson_interval(correct, n)),
                "macro_f1": result["macro_f1"],
                "macro_f1_ci": list(bootstrap_interval(
                    lambda idx: macro_f1([predictions[i] for i in idx], [references[i] for i in idx]), n,
                    **BOOTSTRAP)),
                "labels": result["labels"], "confusion_matrix": result["confusion_matrix"]}
    scores = rouge_l_scores(predictions, references)
    return {"bleu": bleu(predictions, references), "rouge_l": sum(scores) / n,
            "rouge_l_ci": list(bootstrap_interval(lambda idx: sum(scores[i] for i in idx) / n, n, **BOOTSTRAP))}
