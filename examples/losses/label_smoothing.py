"""Label-smoothed cross-entropy over the completion tokens: a custom loss for the finetune step.

    python -m slmops.steps.finetune --train_data prep_out/ --base_model ./tiny-llama \\
        --loss examples/losses/label_smoothing.py --loss_function loss ...

Each target token keeps 1 - SMOOTHING of its probability mass and shares SMOOTHING evenly over the vocabulary, so
the model is not pushed to ever more confident answers (Szegedy et al. 2016). SMOOTHING = 0 is TRL's own
cross-entropy. Copy the file and edit SMOOTHING to change it: the file's content is part of the step's reuse key.
"""

import torch
import torch.nn.functional as F

SMOOTHING = 0.1


def loss(outputs, labels, batch, num_items_in_batch=None):
    """The loss of one micro-batch. `labels` are aligned with `input_ids` (-100 = no loss), so token t+1 is
    predicted from position t; under padding-free batching a position id of 0 starts another example, whose first
    token is not predicted from the previous one. Summed and divided by `num_items_in_batch` (the label tokens of
    the whole accumulated batch), as the trainer expects of a compute_loss_func."""
    logits = outputs.logits[:, :-1, :].float()
    targets = labels[:, 1:].clone()
    positions = batch.get("position_ids")
    if positions is not None:
        targets[positions[:, 1:] == 0] = -100
    per_token = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100,
                                reduction="none", label_smoothing=SMOOTHING)
    count = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum()
    return per_token.sum() / torch.as_tensor(count, device=per_token.device).clamp(min=1)
