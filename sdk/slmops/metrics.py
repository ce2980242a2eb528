"""Task metrics as plain functions of predictions and references (strings) or summed token losses.

Classification: `accuracy`, `macro_f1`, `confusion_matrix`, all over the labels seen in the references (a
prediction that is none of them counts as wrong, under the extra label `OTHER`). Generation: `perplexity`
from summed negative log-likelihood, `bleu` (sacrebleu corpus BLEU, 0-100), `rouge_l` (rouge-score ROUGE-L
F-measure, mean over examples, 0-1).

    from slmops import metrics
    metrics.classification(["joyful", "sad"], ["joyful", "angry"])
    # {"accuracy": 0.5, "macro_f1": 0.333..., "labels": ["angry", "joyful", "sad"], "confusion_matrix": [...]}
"""

from __future__ import annotations

import math

OTHER = "(other)"  # the confusion-matrix label of a prediction that matches none of the reference labels


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
    scores = []
    for label in sorted(set(references)):
        tp = sum(p == label and r == label for p, r in zip(predictions, references))
        fp = sum(p == label and r != label for p, r in zip(predictions, references))
        fn = sum(p != label and r == label for p, r in zip(predictions, references))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
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


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure over examples (rouge-score, no stemming), on the 0-1 scale."""
    from rouge_score import rouge_scorer

    _check_lengths(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(references)
