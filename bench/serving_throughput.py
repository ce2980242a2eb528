"""Serving throughput: batched serving (SLMOPS_MAX_BATCH > 1, and for ORT GenAI on a CPU the prompt cache) vs one
request at a time (SLMOPS_MAX_BATCH=1 and SLMOPS_PROMPT_CACHE=0: the server before either), at concurrency 1 and 32,
on the same model and machine.

    python bench/serving_throughput.py                                   # tiny model (PyTorch), smoke size
    python bench/serving_throughput.py --backend onnx --requests 256 --pairs 5
    python bench/serving_throughput.py --model ~/.cache/slmops/models/smollm2-135m-instruct-* --requests 128
    python bench/serving_throughput.py --mode inprocess --requests 64   # no HTTP: score's batcher called directly

`--mode serve` (default) starts two `slmops serve` processes on loopback, A batched and B unbatched (each one
gunicorn worker with `--threads`), and sends each the same requests over keep-alive HTTP connections, one client
thread per concurrent request. `--mode inprocess` loads the model twice in this process (A with its prompt cache,
B without) and calls two batchers (the one score.py's run() hands requests to) from the client threads instead.
`--baseline-cache` keeps B's prompt cache: batching alone, against one request at a time with the cache.

For each concurrency level the sides alternate (A B, B A, A B, ...) for `--pairs` pairs; each run sends `--requests`
requests (greedy, `--max-new-tokens` each, prompts of uneven lengths) after a short warm-up. Reported per side:
requests/s, p50 and p99 latency, errors (non-200 or failed connection), all medians over the pairs, the 1-minute
load average before each run (other work on the machine skews the figures: compare pairs run on a quiet machine),
and whether both sides gave the same answer to every request (greedy parity). The speedup is the median of the
per-pair ratios. Output: a markdown table (and `--json PATH` for the raw runs).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

KEY = "bench-key-0123456789abcdef"
PROMPTS = [
    "After the call, I felt furious.", "hi", "What is the tone of this phrase? " + "We were delighted. " * 6,
    "Tone: sad", "The parcel never came and nobody called back.", "ok", "Summarise: the meeting moved to Friday.",
    "What is the tone of this phrase? I cannot believe they cancelled again, after three weeks of waiting.",
]


SYSTEM = ("Classify the tone of the phrase as one of: angry, fearful, joyful, neutral, sad. "
          "Answer with the label only.")  # the quickstart's system prompt: what its endpoint is asked


def bodies(n: int, max_new_tokens: int, workload: str = "raw") -> list[bytes]:
    """`raw`: uneven raw prompts (each answer runs to max_new_tokens on a chat model: decode-heavy); `chat`: the
    fine-tuned tone endpoint's own requests, the system prompt and one phrase as chat messages (prefill-heavy,
    a shared system prompt, answers of a few tokens)."""
    if workload == "chat":
        from slmops.tiny import tone_dataset

        rows = tone_dataset(n, seed=1)
        return [json.dumps({"messages": [{"role": "system", "content": SYSTEM},
                                         {"role": "user", "content": f"Phrase: {r['phrase']}"}],
                            "max_new_tokens": max_new_tokens, "temperature": 0}).encode() for r in rows]
    return [json.dumps({"prompt": f"{PROMPTS[i % len(PROMPTS)]} ({i})", "max_new_tokens": max_new_tokens,
                        "temperature": 0}).encode() for i in range(n)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def load(send, requests: list[bytes], concurrency: int) -> dict:
    """Send every request, `concurrency` at a time (one client thread each); latencies, errors, answers."""
    latencies, answers, errors = [0.0] * len(requests), [None] * len(requests), []
    next_index, lock = iter(range(len(requests))), threading.Lock()

    def client():
        state = {}
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            started = time.perf_counter()
            try:
                status, answer = send(requests[i], state)
            except Exception as exc:  # a reset connection counts as an error, then a new connection
                status, answer = f"{type(exc).__name__}", None
                state.clear()
            latencies[i] = time.perf_counter() - started
            answers[i] = answer
            if status != 200:
                errors.append(status)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"requests_per_s": len(requests) / wall, "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000, "errors": len(errors), "answers": answers}


def http_sender(port: int):
    def send(body: bytes, state: dict):
        if "conn" not in state:
            state["conn"] = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        conn = state["conn"]
        conn.request("POST", "/score", body=body, headers={"Content-Type": "application/json",
                                                            "Authorization": f"Bearer {KEY}"})
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data).get("text") if response.status == 200 else None
    return send


def start_server(model: Path, max_batch: int, wait_ms: float, threads: int, log: Path, prompt_cache: bool,
                 workers: int | None = None):
    from slmops.serving import serve as srv

    port = srv.free_port()
    env = dict(os.environ, SLMOPS_ENDPOINT_KEY=KEY, SLMOPS_MAX_BATCH=str(max_batch),
               SLMOPS_BATCH_WAIT_MS=str(wait_ms), SLMOPS_PROMPT_CACHE=str(int(prompt_cache)))
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "slmops", "serve", str(model), "--port", str(port),
                                 "--threads", str(threads), *(["--workers", str(workers)] if workers else [])],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    srv.wait_ready(f"http://127.0.0.1:{port}", 120, proc, log)
    return proc, http_sender(port)


def inprocess_senders(model: Path, max_batch: int, wait_ms: float, baseline_cache: bool):
    from slmops.serving import batcher, score

    sides = {}
    for name, size, cache in (("batched", max_batch, True), ("one-at-a-time", 1, baseline_cache)):
        b = batcher.Batcher(score.load_model(score.find_model_dir(model), cache), max_batch=size,
                            wait_s=wait_ms / 1000)

        def send(body: bytes, state: dict, b=b):
            r = json.loads(body)
            return 200, b.submit(r.get("prompt"), r.get("messages"), r["max_new_tokens"], r["temperature"]).text
        sides[name] = send
    return sides


def tiny(backend: str, work: Path) -> Path:
    from slmops.tiny import build_tiny_model

    hf = build_tiny_model(work / "tiny-llama", arch="llama", seed=0)
    if backend == "pytorch":
        return hf
    out = work / "tiny-onnx"
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out), "-p",
                    "fp32", "-e", "cpu", "-c", str(work / "builder-cache")], check=True, capture_output=True)
    return out


def table(results: dict, args, model: Path) -> str:
    lines = [f"model `{model.name}`, mode {args.mode}, {os.cpu_count()} cores, SLMOPS_MAX_BATCH {args.max_batch} vs 1, "
             f"SLMOPS_PROMPT_CACHE 1 vs {int(args.baseline_cache)}, "
             f"workers {args.workers or 'planned'} vs planned, "
             f"SLMOPS_BATCH_WAIT_MS {args.wait_ms}, threads {args.threads}, {args.requests} {args.workload} requests x "
             f"up to {args.max_new_tokens} new tokens per run, {args.pairs} A/B pairs (medians)", "",
             "| concurrency | server | requests/s | p50 ms | p99 ms | errors | load avg (1 min) | speedup | "
             "same answers |", "|---|---|---|---|---|---|---|---|---|"]
    for concurrency, runs in results.items():
        ratios = [a["requests_per_s"] / b["requests_per_s"] for a, b in zip(runs["batched"], runs["one-at-a-time"])]
        same = all(a["answers"] == b["answers"] for a, b in zip(runs["batched"], runs["one-at-a-time"]))
        for side in ("batched", "one-at-a-time"):
            r = runs[side]
            med = {k: statistics.median(x[k] for x in r) for k in ("requests_per_s", "p50_ms", "p99_ms", "errors")}
            loads = "/".join(f"{x['load_avg']:.1f}" for x in r)
            extra = (f"{statistics.median(ratios):.2f}x", "yes" if same else "NO") if side == "batched" else ("", "")
            lines.append(f"| {concurrency} | {side} | {med['requests_per_s']:.1f} | {med['p50_ms']:.0f} | "
                         f"{med['p99_ms']:.0f} | {med['errors']:g} | {loads} | {extra[0]} | {extra[1]} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="model folder (HF, MLflow or ORT GenAI); default: the tiny random-init Llama")
    parser.add_argument("--backend", choices=["pytorch", "onnx"], default="pytorch",
                        help="for the tiny model: PyTorch folder or its ORT GenAI export")
    parser.add_argument("--mode", choices=["serve", "inprocess"], default="serve",
                        help="serve: two `slmops serve` processes over HTTP; inprocess: the batchers called directly")
    parser.add_argument("--requests", type=int, default=64, help="requests per run")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated client concurrency levels")
    parser.add_argument("--pairs", type=int, default=3, help="A/B pairs per concurrency level (medians reported)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="max_new_tokens of every request")
    parser.add_argument("--workload", choices=["raw", "chat"], default="raw",
                        help="raw: uneven raw prompts (decode-heavy); chat: the tone endpoint's chat requests")
    parser.add_argument("--max-batch", type=int, default=8, help="SLMOPS_MAX_BATCH of the batched side")
    parser.add_argument("--wait-ms", type=float, default=5.0, help="SLMOPS_BATCH_WAIT_MS of the batched side")
    parser.add_argument("--threads", type=int, default=None,
                        help="`slmops serve --threads` for both sides (default: 2 x --max-batch)")
    parser.add_argument("--warmup", type=int, default=4, help="requests sent to each side before measuring")
    parser.add_argument("--workers", type=int, default=None,
                        help="`slmops serve --workers` of the batched side (--mode serve; default: its plan). The "
                             "one-at-a-time side keeps its plan")
    parser.add_argument("--baseline-cache", action="store_true",
                        help="the one-at-a-time side keeps its prompt cache (ORT GenAI on a CPU): batching alone")
    parser.add_argument("--json", type=Path, default=None, help="write the raw runs here")
    args = parser.parse_args()
    args.threads = args.threads or 2 * args.max_batch
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory(prefix="slmops-bench-serving-") as tmp:
        work = Path(tmp)
        model = args.model.expanduser() if args.model else tiny(args.backend, work)
        procs = []
        try:
            if args.mode == "serve":
                sides = {}
                for name, size, cache, workers in (("batched", args.max_batch, True, args.workers),
                                                   ("one-at-a-time", 1, args.baseline_cache, None)):
                    proc, sides[name] = start_server(model, size, args.wait_ms, args.threads, work / f"{name}.log",
                                                     cache, workers)
                    procs.append(proc)
            else:
                sides = inprocess_senders(model, args.max_batch, args.wait_ms, args.baseline_cache)
            warm = bodies(args.warmup, args.max_new_tokens, args.workload)
            for send in sides.values():
                load(send, warm, min(4, len(warm)))
            requests = bodies(args.requests, args.max_new_tokens, args.workload)
            results = {c: {"batched": [], "one-at-a-time": []} for c in levels}
            for concurrency in levels:
                for pair in range(args.pairs):
                    order = ["batched", "one-at-a-time"] if pair % 2 == 0 else ["one-at-a-time", "batched"]
                    for side in order:
                        load_avg = os.getloadavg()[0]
                        run = load(sides[side], requests, concurrency)
                        run["load_avg"] = load_avg
                        results[concurrency][side].append(run)
                        print(f"concurrency {concurrency} pair {pair} {side}: {run['requests_per_s']:.1f} req/s, "
                              f"p50 {run['p50_ms']:.0f} ms, errors {run['errors']}, load {load_avg:.1f}",
                              file=sys.stderr)
        finally:
            for proc in procs:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        print(table(results, args, model))
        if args.json:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                             "cpu_count": os.cpu_count(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
