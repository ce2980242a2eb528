"""k-shot scoring with and without the shared-prefix cache of `slmops.generation` (evaluate's k-shot baseline):
the same prompts, the same batches, answers compared, interleaved A/B, medians.

    python bench/kshot_prefix.py --model ~/.cache/slmops/models/smollm2-135m-instruct-* \
        --data /tmp/qs/run/prep/outputs/output_data --k 5 --rows 64 --pairs 3

The k-shot prompts are evaluate's own (`evaluate.kshot_examples` + `evaluate.kshot_prompt`: k training rows,
balanced across labels, then the test prompt), greedy, `--max-new-tokens` each, batches of 16. "without" sets
`generation.SHARED_PREFIX_MIN_TOKENS` beyond any prompt, so every batch runs its whole prompts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="prep's output folder (train.jsonl, test.jsonl)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args(argv)

    from slmops import generation, models, threads
    from slmops.steps import evaluate

    compute_threads = threads.apply()
    model, tok = models.load_causal_lm(args.model).eval(), models.load_tokenizer(args.model)
    rows = generation.read_examples(args.data, args.rows)
    import json
    from pathlib import Path

    train = [json.loads(line) for line in (Path(args.data) / "train.jsonl").read_text().splitlines()]
    special = tok.all_special_tokens
    shots = evaluate.kshot_examples(train, args.k, 0, lambda r: generation.reference(r, "classification", special))
    prompts = [evaluate.kshot_prompt(shots, r["prompt"]) for r in rows]
    shared = generation._shared_prefix([generation.torch_encode(tok, p) for p in prompts])
    default = generation.SHARED_PREFIX_MIN_TOKENS
    seconds = {"with": [], "without": []}
    answers = {}
    loads = []
    for pair in range(args.pairs):
        for side in (("with", "without") if pair % 2 == 0 else ("without", "with")):
            generation.SHARED_PREFIX_MIN_TOKENS = default if side == "with" else 10**9
            loads.append(os.getloadavg()[0])
            start = time.perf_counter()
            out = generation.torch_completions(model, tok, prompts, max_new_tokens=args.max_new_tokens, batch_size=16)
            seconds[side].append(time.perf_counter() - start)
            answers[side] = [(c.text, c.ids) for c in out]
    generation.SHARED_PREFIX_MIN_TOKENS = default
    medians = {side: statistics.median(v) for side, v in seconds.items()}
    same = answers["with"] == answers["without"]
    print(f"{len(prompts)} {args.k}-shot prompts (shared prefix {shared} tokens of "
          f"{len(generation.torch_encode(tok, prompts[0]))}), {compute_threads} thread(s), load "
          f"{min(loads):.1f}-{max(loads):.1f}, median of {args.pairs} interleaved pairs\n")
    print("| | s for all rows | rows/s |")
    print("|---|---|---|")
    for side in ("without", "with"):
        print(f"| {side} the shared-prefix cache | {medians[side]:.1f} | {len(prompts) / medians[side]:.1f} |")
    print(f"\nspeedup {medians['without'] / medians['with']:.1f}x; identical answers: {same}")
    return {"medians": medians, "identical": same, "shared_prefix": shared}


if __name__ == "__main__":
    main()
