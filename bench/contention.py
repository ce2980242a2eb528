"""Contention: how much a step slows down when other work holds some of the cores, with every core's worth of
threads (what a step did before `slmops.threads`) vs the threads `slmops.threads.choose()` picks, against the
ideal share.

    python bench/contention.py                        # tiny Llama training steps, 1 busy background process
    python bench/contention.py --model ~/.cache/slmops/models/smollm2-135m-instruct-* --steps 4 --busy 1

The workload is what finetune's steps do: forward + backward + AdamW step of a causal LM with a LoRA adapter
(all-linear, r 8) on a batch of `--batch` x `--tokens` tokens, `--steps` steps after one warm-up, in a fresh
process each time (thread pools are per process). Conditions, alternated for `--pairs` rounds:

- quiet-1: no background work, 1 thread (the cores-share baseline: with B of C cores busy a fair share is C-B);
- loaded-all: `--busy` background processes spinning (pure Python loops, one core each), threads = every core;
- loaded-auto: the same background, threads as `slmops.threads.choose()` picks them (no OMP_NUM_THREADS).

Reported: median seconds per step of each, and the slowdown of each loaded condition over quiet with the
threads of the fair share (C - B; quiet-1 on a 2-core machine with one busy process). 1.0 is ideal. Other work
on the machine (recorded: the 1-minute load before each run) adds to all conditions alike.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

WORKLOAD = r"""
import json, sys, time, torch
from slmops import threads
mode, model_ref, steps, batch, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
if mode == "auto":
    n = threads.apply({})
else:
    n = int(mode); torch.set_num_threads(n)
from peft import LoraConfig, get_peft_model
from slmops.models import load_causal_lm
torch.manual_seed(0)
model = get_peft_model(load_causal_lm(model_ref), LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
ids = torch.randint(10, model.config.vocab_size - 1, (batch, tokens))
times = []
for i in range(steps + 1):
    start = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward(); opt.step(); opt.zero_grad()
    if i:
        times.append(time.perf_counter() - start)
print(json.dumps({"threads": n, "seconds_per_step": sorted(times)[len(times) // 2]}))
"""


def spin(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x += 1


def run_workload(mode: str, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", WORKLOAD, mode, args.model, str(args.steps), str(args.batch),
                          str(args.tokens)], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: a tiny random-init Llama)")
    parser.add_argument("--busy", type=int, default=1, help="background processes spinning")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    from slmops import threads

    cores = threads.available_cores()
    if args.busy >= cores:
        parser.error(f"--busy {args.busy} leaves no core of {cores}")
    if args.model is None:
        import tempfile

        from slmops.tiny import build_tiny_model

        args.model = str(build_tiny_model(tempfile.mkdtemp(prefix="slmops-contention-")))
    fair = cores - args.busy
    runs = {"quiet-fair": [], "loaded-all": [], "loaded-auto": []}
    loads = []
    for _ in range(args.pairs):
        loads.append(os.getloadavg()[0])
        runs["quiet-fair"].append(run_workload(str(fair), args))
        stop_at = time.time() + 3600
        spinners = [multiprocessing.Process(target=spin, args=(stop_at,), daemon=True) for _ in range(args.busy)]
        for p in spinners:
            p.start()
        try:
            time.sleep(1.0)
            for mode, key in (("all", "loaded-all"), ("auto", "loaded-auto")):
                runs[key].append(run_workload(str(cores) if mode == "all" else "auto", args))
        finally:
            for p in spinners:
                p.terminate()
                p.join()
    medians = {k: statistics.median(r["seconds_per_step"] for r in v) for k, v in runs.items()}
    report = {"cores": cores, "busy": args.busy, "fair_threads": fair, "load_1min": loads, "median_s": medians,
              "auto_threads": [r["threads"] for r in runs["loaded-auto"]],
              "slowdown_all": medians["loaded-all"] / medians["quiet-fair"],
              "slowdown_auto": medians["loaded-auto"] / medians["quiet-fair"], "runs": runs}
    print(f"{cores} cores, {args.busy} busy background process(es), fair share {fair} thread(s); load before "
          f"rounds {', '.join(f'{x:.1f}' for x in loads)}; {args.batch}x{args.tokens} tokens, median of "
          f"{args.steps} steps, {args.pairs} rounds\n")
    print("| condition | threads | s/step | slowdown vs quiet fair share |")
    print("|---|---|---|---|")
    print(f"| quiet, {fair} thread(s) | {fair} | {medians['quiet-fair']:.2f} | 1.00 |")
    print(f"| loaded, every core | {cores} | {medians['loaded-all']:.2f} | {report['slowdown_all']:.2f} |")
    print(f"| loaded, slmops.threads | {report['auto_threads']} | {medians['loaded-auto']:.2f} | "
          f"{report['slowdown_auto']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
