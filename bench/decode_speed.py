"""Decode speed at batch 1: ONNX Runtime GenAI builds of one model (int4 / int8 / fp32, and int4 with other
builder settings) vs PyTorch eager `generate`, each with its accuracy on the same test rows, against the
memory-bandwidth ceiling measured in the same run.

    python bench/decode_speed.py --model /tmp/qs/run/finetune/outputs/model --data /tmp/qs/run/prep/outputs/output_data
    python bench/decode_speed.py ... --variants int4,int4-b128,int8 --rounds 5 --profile

`--model` is an MLflow model or HF folder (the quickstart's fine-tuned model: `<run>/finetune/outputs/model`),
`--data` prep's output folder (`test.jsonl` is scored). Every variant is built once with ORT GenAI's model builder
(`slmops.steps.optimize.build`, the optimize step's own call). Then, for `--rounds` rounds, each runtime generates
exactly `--tokens` new tokens from each of `--prompts` test prompts, one prompt at a time, the runtimes taking
turns prompt by prompt (interleaved, so a shared machine's load falls on all alike), and then exactly one new token
(the prompt's prefill and first token); the figures are medians over rounds:

- generation tok/s: `--tokens` / (prefill + all decode steps), what the optimize step reports;
- first token ms: the prefill and first token alone;
- decode tok/s: (`--tokens` - 1) / (generation time - first token time), the decode steps alone - what the
  bandwidth ceiling bounds (a prefill is compute-bound) and what the issue's 8x target compares.

The bandwidth ceiling of a build is the machine's read bandwidth (a 512 MB array summed with the runtimes' threads,
in this process, medians of 5, between rounds) divided by the bytes a decode step must read: every weight initializer of
the ONNX graph except the embedding table, which a step reads one row of. `--profile` runs one more pass of the
first variant with ORT's profiler on and prints where decode time goes by operator type. Both runtimes get the same
compute threads (`--threads`, default what `slmops.threads.choose()` picks for a step: the cores free at start).

The output is a markdown table; `--json PATH` also writes the raw figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {  # name: (precision, builder extra options)
    "int4": ("int4", {}),                                   # the optimize step's default build
    "int4-b128": ("int4", {"block_size": "128"}),
    "int4-acc1": ("int4", {"accuracy_level": "1"}),         # fp32 activations instead of int8
    "int4-prune": ("int4", {"prune_lm_head": "true"}),      # prefill computes the last position's logits only
    "int8": ("int8", {}),
    "fp32": ("fp32", {}),
}


def read_bandwidth_gbs(size_mb: int = 512, repeats: int = 5) -> dict:
    """Median GB/s of summing a `size_mb` array with torch's threads (the runtimes' count: bytes read / s; one
    thread reads about half what two do here), of the same sum on one thread, and of copying it
    ((read + written) / s, numpy, one thread)."""
    import numpy as np
    import torch

    src = torch.ones(size_mb * 2**20 // 4, dtype=torch.float32)
    one, dst = src.numpy(), np.empty(src.numel(), dtype=np.float32)
    reads, single, copies = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        src.sum()
        reads.append(one.nbytes / (time.perf_counter() - start) / 1e9)
        start = time.perf_counter()
        one.sum()
        single.append(one.nbytes / (time.perf_counter() - start) / 1e9)
        start = time.perf_counter()
        np.copyto(dst, one)
        copies.append(2 * one.nbytes / (time.perf_counter() - start) / 1e9)
    return {"read": statistics.median(reads), "read_1_thread": statistics.median(single),
            "copy": statistics.median(copies)}


def bytes_per_token(onnx_dir: Path) -> dict:
    """Weight bytes of the graph: all initializers, and those a decode step reads (all but the embedding table,
    the initializer only `Gather` nodes use)."""
    import onnx

    graph = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False).graph
    gathered = {node.input[0] for node in graph.node if node.op_type in ("Gather", "GatherBlockQuantized")}
    used_elsewhere = {name for node in graph.node if node.op_type not in ("Gather", "GatherBlockQuantized")
                      for name in node.input}
    total = read = 0
    for init in graph.initializer:
        size = next((int(e.value) for e in init.external_data if e.key == "length"), None)
        if size is None:
            size = len(init.raw_data) or onnx.numpy_helper.to_array(init).nbytes
        total += size
        if init.name not in gathered or init.name in used_elsewhere:
            read += size
    return {"total": total, "read": read}


def build_variant(name: str, hf_dir: Path, out: Path, cache: Path) -> Path:
    from slmops.steps.optimize import build, copy_tokenizer_files

    precision, extra = VARIANTS[name]
    build(hf_dir, out, precision, "cpu", cache, extra_options=extra)
    copy_tokenizer_files(hf_dir, out)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="MLflow model or HF folder")
    parser.add_argument("--data", required=True, help="prep's output folder (test.jsonl)")
    parser.add_argument("--variants", default="int4,int8", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--rows", type=int, default=200, help="test rows scored for accuracy (0 = all)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts timed per round")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per timed prompt")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="profile the first variant's decode by op type")
    parser.add_argument("--threads", type=int, default=None,
                        help="compute threads of both runtimes (default: slmops.threads.choose(), as the steps do)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    if unknown := [n for n in names if n not in VARIANTS]:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")

    import onnxruntime_genai as og
    import torch

    from slmops import generation, metrics, models, threads
    from slmops.steps.optimize import stage_hf_folder

    # both runtimes get the same threads, the count a step would take (ORT GenAI's own default is every core)
    compute_threads = threads.apply({"OMP_NUM_THREADS": str(args.threads)} if args.threads else None)

    rows = generation.read_examples(args.data, args.rows)
    prompts = [r["prompt"] for r in rows]
    tokenizer = models.load_tokenizer(args.model)
    references = [generation.reference(r, "classification", tokenizer.all_special_tokens) for r in rows]
    timed = [prompts[i % len(prompts)] for i in range(args.prompts)]
    work = Path(tempfile.mkdtemp(prefix="slmops-decode-bench-"))
    hf_dir = stage_hf_folder(models.resolve(args.model), work / "hf")

    runtimes, results = {}, {}
    torch_model = models.load_causal_lm(args.model, dtype=torch.float32).eval()
    runtimes["pytorch"] = lambda p, **kw: generation.torch_generate(torch_model, tokenizer, p, **kw)
    predictions = generation.torch_complete(torch_model, tokenizer, prompts, max_new_tokens=16, batch_size=16)
    results["pytorch"] = {"accuracy": metrics.accuracy(predictions, references), "size_mb": None}
    for name in names:
        started = time.perf_counter()
        out = build_variant(name, hf_dir, work / name, work / "cache")
        config = og.Config(str(out))
        config.overlay(threads.ort_overlay(compute_threads))
        og_model = og.Model(config)
        og_tok = og.Tokenizer(og_model)
        runtimes[name] = (lambda m, t: lambda p, **kw: generation.ort_generate(m, t, p, **kw))(og_model, og_tok)
        predictions = generation.ort_complete(og_model, og_tok, prompts, max_new_tokens=16, batch_size=16)
        weights = bytes_per_token(out)
        results[name] = {"accuracy": metrics.accuracy(predictions, references),
                         "size_mb": sum(f.stat().st_size for f in out.iterdir()) / 1e6,
                         "weights_read_mb": weights["read"] / 1e6, "build_s": time.perf_counter() - started}
        print(f"built {name}: {results[name]}", file=sys.stderr)

    from slmops.steps.optimize import decode_speeds

    speeds = {name: [] for name in runtimes}     # generation tok/s (prefill included)
    firsts = {name: [] for name in runtimes}     # s for the prefill and first token
    decodes = {name: [] for name in runtimes}    # decode tok/s (the steps after the first token)
    bandwidth = {"read": [], "read_1_thread": [], "copy": []}
    loads = []
    for round_ in range(args.rounds):
        loads.append(os.getloadavg()[0])
        whole = decode_speeds(runtimes, timed, args.tokens)
        first = decode_speeds(runtimes, timed, 1)
        for name in runtimes:
            per_prompt, first_s = args.tokens / whole[name], 1 / first[name]
            speeds[name].append(whole[name])
            firsts[name].append(first_s)
            decodes[name].append((args.tokens - 1) / (per_prompt - first_s))
        for kind, value in read_bandwidth_gbs().items():
            bandwidth[kind].append(value)
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {v[-1]:.0f} (decode {decodes[n][-1]:.0f})"
                                                  for n, v in speeds.items()), file=sys.stderr)
    read_gbs = statistics.median(bandwidth["read"])
    for name, values in speeds.items():
        results[name]["tokens_per_s"] = statistics.median(values)
        results[name]["speedup"] = statistics.median(v / p for v, p in zip(values, speeds["pytorch"]))
        results[name]["first_token_ms"] = 1000 * statistics.median(firsts[name])
        results[name]["decode_tokens_per_s"] = statistics.median(decodes[name])
        results[name]["decode_speedup"] = statistics.median(v / p for v, p in zip(decodes[name], decodes["pytorch"]))
        if name != "pytorch":
            ceiling = read_gbs * 1e9 / (results[name]["weights_read_mb"] * 1e6)
            results[name]["ceiling_tokens_per_s"] = ceiling
            results[name]["of_ceiling"] = results[name]["decode_tokens_per_s"] / ceiling
    report = {"results": results, "bandwidth_gbs": {k: statistics.median(v) for k, v in bandwidth.items()},
              "load_1min": loads, "rows": len(rows), "prompts": args.prompts, "tokens": args.tokens,
              "rounds": args.rounds, "threads": compute_threads}
    if args.profile:
        report["profile"] = profile(work / names[0], timed, args.tokens, compute_threads)

    print(f"\nread bandwidth {report['bandwidth_gbs']['read']:.1f} GB/s with {compute_threads} thread(s) (one thread "
          f"{report['bandwidth_gbs']['read_1_thread']:.1f}; copy {report['bandwidth_gbs']['copy']:.1f}); "
          f"load {min(loads):.1f}-{max(loads):.1f}; {compute_threads} compute thread(s) each; {len(rows)} test rows; "
          f"batch 1, {args.prompts} prompts x "
          f"{args.tokens} tokens, median of {args.rounds} interleaved rounds\n")
    print("| runtime | accuracy | size MB | generation tok/s | vs PyTorch | first token ms | decode tok/s | "
          "vs PyTorch | ceiling tok/s | decode of ceiling |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        ceiling = f"{r['ceiling_tokens_per_s']:.0f}" if "ceiling_tokens_per_s" in r else "-"
        share = f"{r['of_ceiling']:.0%}" if "of_ceiling" in r else "-"
        size = f"{r['size_mb']:.0f}" if r["size_mb"] else "-"
        print(f"| {name} | {r['accuracy']:.3f} | {size} | {r['tokens_per_s']:.0f} | {r['speedup']:.1f}x | "
              f"{r['first_token_ms']:.0f} | {r['decode_tokens_per_s']:.0f} | {r['decode_speedup']:.1f}x | "
              f"{ceiling} | {share} |")
    if args.profile:
        print(f"\nprofile of {names[0]} decode (ms per token, by operator type):")
        for op, ms in report["profile"].items():
            print(f"  {op:<28} {ms:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


def profile(onnx_dir: Path, prompts: list[str], tokens: int, compute_threads: int) -> dict:
    """ms per decoded token by operator type, from ORT's profiler (a copy of the build with profiling on)."""
    import shutil

    import onnxruntime_genai as og

    from slmops import generation

    copy = onnx_dir.with_name(onnx_dir.name + "-profiled")
    shutil.copytree(onnx_dir, copy)
    config_path = copy / "genai_config.json"
    config = json.loads(config_path.read_text())
    prefix = str(copy / "ort_profile")
    config["model"]["decoder"]["session_options"].update(enable_profiling=prefix, intra_op_num_threads=compute_threads)
    config_path.write_text(json.dumps(config))
    model = og.Model(str(copy))
    tok = og.Tokenizer(model)
    generation.ort_generate(model, tok, prompts, max_new_tokens=tokens, min_new_tokens=tokens, batch_size=1)
    del model, tok
    [trace] = list(copy.glob("ort_profile*.json"))
    per_op: dict[str, float] = {}
    runs = 0
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + event["dur"] / 1000
        elif event.get("cat") == "Session" and event["name"] == "model_run":
            runs += 1
            per_op["(whole run)"] = per_op.get("(whole run)", 0.0) + event["dur"] / 1000
    steps = max(runs, 1)
    return {op: ms / steps for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])}


if __name__ == "__main__":
    main()
