"""Class-weighted cross-entropy over the completion tokens, for classification: a custom loss for the finetune step.

    python -m slmops.steps.finetune --train_data prep_out/ --base_model ./tiny-llama \\
        --loss examples/losses/class_weighted.py --loss_function loss ...

For a classification task the completion is the label (e.g. "positive" + end of text). Each example's class is its
completion's token ids; every token of an example is weighted by n / (k * count(class)) over the n examples and k
classes of the micro-batch (scikit-learn's "balanced" weights), so a rare class counts as much as a common one.
For fixed weights, copy the file and change `class_weights` (the file's content is part of the step's reuse key).

Needs completion-only loss (the step's default): with --completion_only_loss false every example is its own
"class" and the loss is the plain cross-entropy.
"""

from collections import Counter

import torch
import torch.nn.functional as F


def completions(targets: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each run of labelled tokens in the flattened targets: one run per example's completion."""
    flat, width = targets.reshape(-1).tolist(), targets.size(1)
    runs, start = [], None
    for i, token in enumerate(flat + [-100]):
        if start is not None and (token == -100 or i % width == 0):   # a run ends at -100 or at a row's end
            runs.append((start, i))
            start = None
        if token != -100 and start is None:
            start = i
    return runs


def class_weights(classes: list[tuple[int, ...]]) -> list[float]:
    """n / (k * count(class)) for each example: balanced over the micro-batch's classes."""
    counts = Counter(classes)
    return [len(classes) / (len(counts) * counts[c]) for c in classes]


def loss(outputs, labels, batch, num_items_in_batch=None):
    """The loss of one micro-batch: token t+1 predicted from position t (`labels` are aligned with `input_ids`,
    -100 = no loss; a position id of 0 starts another example under padding-free batching), each token's
    cross-entropy times its example's class weight, summed and divided by `num_items_in_batch` (the label tokens
    of the whole accumulated batch), as the trainer expects of a compute_loss_func."""
    logits = outputs.logits[:, :-1, :].float()
    targets = labels[:, 1:].clone()
    positions = batch.get("position_ids")
    if positions is not None:
        targets[positions[:, 1:] == 0] = -100
    per_token = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100,
                                reduction="none")
    runs = completions(targets)
    flat = targets.reshape(-1).tolist()
    weights = torch.zeros_like(per_token)
    for (start, end), weight in zip(runs, class_weights([tuple(flat[s:e]) for s, e in runs])):
        weights[start:end] = weight
    count = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum()
    return (per_token * weights).sum() / torch.as_tensor(count, device=per_token.device).clamp(min=1)
