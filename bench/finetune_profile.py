"""Where a fine-tuning step's time goes: batch collation, forward (with TRL's loss), backward, optimizer step, and
what the trainer adds around them - for `slmops.steps.finetune`'s own trainer on a model and prep output.

    python bench/finetune_profile.py --model ~/.cache/slmops/models/smollm2-135m-instruct-* \
        --data /tmp/qs/run/prep/outputs/output_data --steps 6 [--heads 6]

The trainer is the step's own (`finetune.load_model` + `finetune.build_trainer`, the step's defaults plus the
flags given: LoRA r 8 all-linear, padding-free batches, completion-only loss). The loop below does what one
training step of the trainer does, timing each part: the next batch from the trainer's own data loader (collation),
`trainer.compute_loss` (forward through the fused LM head, loss and TRL's token metrics), `backward`, the
optimizer's step and zero_grad. Then the trainer's own `train()` runs the same number of steps, timed from each
step's begin to its end (callbacks; collation happens before), and the difference per step from forward + backward
+ optimizer is what the trainer adds (gradient clipping, scheduler, logging, bookkeeping). Medians over
`--steps` steps after one warm-up step; the thread count is the step's (`slmops.threads`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="prep's output folder")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--heads", type=int, default=0,
                        help="also time forward + backward of one batch N times with the step's LM head and with "
                             "TRL's own fused head, alternating (A B, B A, ...): medians, ratio, both losses")
    args = parser.parse_args(argv)

    import torch

    from slmops import threads
    from slmops.steps import finetune

    compute_threads = threads.apply()
    work = Path(tempfile.mkdtemp(prefix="slmops-ft-profile-"))
    ft = finetune.build_parser().parse_args([
        "--train_data", args.data, "--base_model", args.model, "--lora_r", "8", "--batch_size", str(args.batch_size),
        "--max_steps", str(args.steps + 1), "--eval_steps", "0", "--save_steps", "0", "--learning_rate", "1e-4",
        *[a for name in ("adapter", "model", "metrics", "checkpoints") for a in (f"--{name}", str(work / name))]])
    train_ds, _, longest = finetune.load_data(ft)
    model, tokenizer = finetune.load_model(ft, args.model, "fp32")
    trainer = finetune.build_trainer(ft, model, tokenizer, train_ds, None, longest, "fp32", [])
    model = trainer.model
    model.train()
    optimizer = trainer.create_optimizer()
    batches = iter(trainer.get_train_dataloader())
    parts = {"collate": [], "forward": [], "backward": [], "optimizer": [], "tokens": []}
    for step in range(args.steps + 1):
        t0 = time.perf_counter()
        inputs = trainer._prepare_inputs(next(batches))
        t1 = time.perf_counter()
        loss = trainer.compute_loss(model, inputs)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad()
        t4 = time.perf_counter()
        if step:
            for key, value in zip(("collate", "forward", "backward", "optimizer"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[key].append(value)
            parts["tokens"].append(int(inputs["input_ids"].numel()))
    medians = {k: statistics.median(v) for k, v in parts.items()}
    compute = sum(medians[k] for k in ("forward", "backward", "optimizer"))

    # the trainer's own loop, same steps, fresh model
    model2, tokenizer2 = finetune.load_model(ft, args.model, "fp32")
    trainer2 = finetune.build_trainer(ft, model2, tokenizer2, train_ds, None, longest, "fp32", [])
    step_times = []

    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            step_times.append(time.perf_counter() - self.start)

    trainer2.add_callback(StepTimer())
    trainer2.train()
    trainer_step = statistics.median(step_times[1:])
    report = {"threads": compute_threads, "tokens_per_step": medians["tokens"], "parts_s": medians,
              "compute_s": compute, "trainer_step_s": trainer_step, "torch_threads": torch.get_num_threads()}
    print(f"\n{compute_threads} compute thread(s); batch {args.batch_size} (~{medians['tokens']:.0f} tokens, "
          f"padding-free); median of {args.steps} steps\n")
    print("| part | s/step | share of the trainer's step |")
    print("|---|---|---|")
    for key in ("forward", "backward", "optimizer"):
        print(f"| {key} | {medians[key]:.3f} | {medians[key] / trainer_step:.0%} |")
    print(f"| the trainer's own work (its step {trainer_step:.3f} s minus the three) | {trainer_step - compute:.3f} | "
          f"{(trainer_step - compute) / trainer_step:.0%} |")
    print(f"| collation (before the trainer's step begins) | {medians['collate']:.3f} | - |")
    if args.heads:
        report["heads"] = compare_heads(trainer, model, next(batches), args.heads)
    return report


def compare_heads(trainer, model, batch: dict, rounds: int) -> dict:
    """Forward (trainer.compute_loss) + backward of one batch, `rounds` times with each LM head, alternating: the
    step's (labelled positions only, slmops.training.score_labelled_positions_only) and TRL's fused head as
    SFTTrainer installs it (every position on a CPU). Same weights, same batch: the losses must agree."""
    from trl.trainer.utils import add_fused_lm_head

    base = model.get_base_model()
    heads = {"slmops": base.forward}
    del base.forward
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))
    heads["trl"] = base.forward
    times: dict[str, list] = {name: [] for name in heads}
    losses: dict[str, float] = {}
    model.eval()  # LoRA dropout off: both heads see the same inputs (autograd still on)
    for i in range(rounds):
        for name in (["slmops", "trl"] if i % 2 == 0 else ["trl", "slmops"]):
            base.forward = heads[name]
            model.zero_grad()
            start = time.perf_counter()
            loss = trainer.compute_loss(model, dict(batch))
            middle = time.perf_counter()
            loss.backward()
            times[name].append((middle - start, time.perf_counter() - middle))
            losses[name] = loss.item()
    base.forward = heads["slmops"]
    med = {name: {"forward": statistics.median(f for f, _ in t), "backward": statistics.median(b for _, b in t),
                  "total": statistics.median(f + b for f, b in t)} for name, t in times.items()}
    labelled = int((batch["labels"] != -100).sum())
    print(f"\nLM heads, one batch of {batch['input_ids'].numel()} tokens ({labelled} labelled), {rounds} rounds "
          "alternating, medians\n")
    print("| head | forward s | backward s | total s | loss |")
    print("|---|---|---|---|---|")
    for name in ("trl", "slmops"):
        print(f"| {name} | {med[name]['forward']:.3f} | {med[name]['backward']:.3f} | {med[name]['total']:.3f} | "
              f"{losses[name]:.6f} |")
    ratio = med["trl"]["total"] / med["slmops"]["total"]
    print(f"\nslmops' head: {ratio:.2f}x TRL's per forward + backward; losses differ by "
          f"{abs(losses['trl'] - losses['slmops']) / abs(losses['trl']):.1e} (relative)")
    return {"medians_s": med, "losses": losses, "ratio": ratio, "labelled": labelled}


if __name__ == "__main__":
    main()
