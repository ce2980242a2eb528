"""Several adapters on one base, served by score.py: the tone and topic LoRA adapters (tests/fixtures) on the tiny
base, as a PyTorch folder (base + adapters/<name>/ PEFT folders, `slmops.adapters.assemble`) and as an ORT GenAI
folder (one base + adapters/<name>.onnx_adapter, `optimize.build_switchable`).

Each request names its adapter: the served answers are the ones `slmops.generation` gives with that adapter (what
optimize and evaluate measure), each task is answered with its fine-tuned accuracy, an unknown or missing adapter is
a 400 listing the available ones, and concurrent requests are batched per adapter. Resident memory of one
multi-adapter scoring process is measured against two single-model ones (docs/multi_adapter.md quotes the figures
this test prints).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from slmops import adapters as multi
from slmops import generation, metrics
from slmops.generation import Completion
from slmops.serving.batcher import Batcher, Request, take_batch
from slmops.steps import optimize

NAMES = ["tone", "topic"]
ROWS = 20


@pytest.fixture(scope="module")
def adapter_dirs(finetuned, topic_finetuned):
    return {"tone": Path(finetuned["adapter"]), "topic": Path(topic_finetuned["adapter"])}


@pytest.fixture(scope="module")
def task_rows(prepared_data, topic_prepared_data):
    return {"tone": generation.read_examples(str(prepared_data), ROWS),
            "topic": generation.read_examples(str(topic_prepared_data), ROWS)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_model, adapter_dirs, switchable_onnx):
    """{"pytorch": base + PEFT adapters, "onnx": ORT GenAI base + .onnx_adapter files, "onnx-tone"/"onnx-topic":
    single-model ORT GenAI folders with that adapter built in (what one endpoint per task would serve)}. The ONNX
    folders are the session's `switchable_onnx` build and the single-model builds beside it (copied, with the
    tokenizer files), so the builder runs once per session."""
    import shutil

    tmp = tmp_path_factory.mktemp("multi-serve")
    out = {"pytorch": multi.assemble(tiny_model, adapter_dirs, tmp / "pytorch"), "onnx": switchable_onnx}
    for name in adapter_dirs:
        out[f"onnx-{name}"] = shutil.copytree(switchable_onnx.parent / "work" / f"fp32-{name}", tmp / f"onnx-{name}")
        optimize.copy_tokenizer_files(Path(tiny_model), out[f"onnx-{name}"])
    return out


def serve(folder: Path, monkeypatch):
    from slmops.serving import score

    monkeypatch.setenv("AZUREML_MODEL_DIR", str(folder))
    score.init()
    return score


@pytest.mark.parametrize("kind", ["pytorch", "onnx"])
def test_each_request_is_answered_by_its_adapter(kind, folders, task_rows, monkeypatch, tiny_model):
    score = serve(folders[kind], monkeypatch)
    assert score.MODEL.kind == kind and score.MODEL.adapters == NAMES
    for name in ["tone", "topic", "tone"]:   # switching back and forth on one loaded base
        prompts = [r["prompt"] for r in task_rows[name]]
        served = [score.run(prompt=p, max_new_tokens=16, adapter=name) for p in prompts]
        assert {a["adapter"] for a in served} == {name}
        if kind == "pytorch":
            want = generation.torch_complete(score.MODEL.model, score.MODEL.tokenizer, prompts, max_new_tokens=16,
                                             batch_size=16, adapter=name)
        else:
            want = generation.ort_complete(score.MODEL.model, score.MODEL.tokenizer, prompts, max_new_tokens=16,
                                           batch_size=16, adapters=score.MODEL.og_adapters, adapter=name)
        assert [a["text"] for a in served] == want, name
        labels = [r["label"] for r in task_rows[name]]
        assert metrics.accuracy([a["text"] for a in served], labels) >= 0.8, name  # each task, fine-tuned accuracy


@pytest.mark.parametrize("kind", ["pytorch", "onnx"])
def test_a_request_must_name_a_served_adapter(kind, folders, monkeypatch):
    score = serve(folders[kind], monkeypatch)
    for adapter, message in [("sentiment", "unknown adapter 'sentiment'; this endpoint serves the adapters "
                                           "['tone', 'topic']"),
                             (None, "name one with 'adapter', one of ['tone', 'topic']")]:
        reply = score.run(prompt="hi", max_new_tokens=2, adapter=adapter)
        [problem] = reply.get_json()["problems"]
        assert reply.status_code == 400 and message in problem
    both = score.run(prompt="", max_new_tokens=0, adapter="x")   # every problem in one 400
    assert both.status_code == 400 and len(both.get_json()["problems"]) == 3


def test_a_single_model_endpoint_refuses_an_adapter(folders, monkeypatch):
    score = serve(folders["onnx-tone"], monkeypatch)
    assert score.MODEL.adapters == []
    reply = score.run(prompt="hi", max_new_tokens=2, adapter="tone")
    assert reply.status_code == 400 and "without adapters; drop 'adapter'" in reply.get_json()["problems"][0]
    assert set(score.run(prompt="hi", max_new_tokens=2)) == {"text", "prompt_tokens", "completion_tokens",
                                                             "finish_reason", "model"}


def test_the_switchable_onnx_base_answers_as_each_single_model(folders, task_rows):
    """One base + the tone adapter file answers exactly as the ONNX model built with the tone adapter in it."""
    import onnxruntime_genai as og

    base = og.Model(str(folders["onnx"]))
    base_tok = og.Tokenizer(base)
    og_adapters, _ = multi.load_onnx_adapters(base, folders["onnx"])
    for name in NAMES:
        single = og.Model(str(folders[f"onnx-{name}"]))
        prompts = [r["prompt"] for r in task_rows[name][:6]]
        assert generation.ort_generate(base, base_tok, prompts, max_new_tokens=8, min_new_tokens=8, batch_size=6,
                                       adapters=og_adapters, adapter=name) == \
            generation.ort_generate(single, og.Tokenizer(single), prompts, max_new_tokens=8, min_new_tokens=8,
                                    batch_size=6)


# --------------------------------------------------------------------------------------------- batching per adapter

class AdapterFake:
    """Completes a prompt as "<adapter>:<prompt>"; records each call's adapter and prompts."""

    kind = "fake"
    context_length = 100

    def __init__(self):
        self.calls: list[tuple[str | None, list[str]]] = []

    def render_chat(self, messages):
        return messages[0]["content"]

    def encode(self, prompt):
        return list(prompt)

    def complete(self, prompts, max_new_tokens, temperature, adapter=None, on_done=None):
        self.calls.append((adapter, list(prompts)))
        threading.Event().wait(0.02)
        return [Completion(f"{adapter}:{p}", [1], len(p), "length") for p in prompts]


def test_concurrent_requests_are_batched_per_adapter():
    model = AdapterFake()
    b = Batcher(model, max_batch=8, wait_s=0.05)
    requests = [(f"p{i}", NAMES[i % 2]) for i in range(8)]
    out, gate = {}, threading.Barrier(len(requests))

    def one(prompt, adapter):
        gate.wait()
        out[prompt] = b.submit(prompt, None, 1, 0.0, adapter).text

    threads = [threading.Thread(target=one, args=r) for r in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    b.close()
    assert out == {p: f"{a}:{p}" for p, a in requests}          # each answered by its own adapter
    assert sorted(p for _, prompts in model.calls for p in prompts) == sorted(p for p, _ in requests)
    assert len(model.calls) < len(requests)                     # batched, one adapter per call
    assert all(p in {q for q, a in requests if a == adapter} for adapter, prompts in model.calls for p in prompts)


@pytest.mark.parametrize("pending, batch, left", [
    ([("a", "tone"), ("b", "topic"), ("c", "tone")], ["a", "c"], ["b"]),   # the oldest request's adapter
    ([("a", None), ("b", None)], ["a", "b"], []),                         # a model without adapters
    ([("a", "topic"), ("b", "tone"), ("c", "tone")], ["a"], ["b", "c"]),
])
def test_take_batch_takes_one_adapter(pending, batch, left):
    reqs = [Request(p, None, 1, 0.0, adapter) for p, adapter in pending]
    for r in reqs:
        r.text, r.n_prompt = r.prompt, 1
    assert [r.prompt for r in take_batch(reqs, max_batch=8, context_length=100)] == batch
    assert [r.prompt for r in reqs] == left


# --------------------------------------------------------------------------------------------- memory

MEASURE = """
import json, os, sys
from pathlib import Path
def rss_mb():
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}
import torch, onnxruntime_genai, peft  # every runtime imported before the baseline
from slmops.serving import score
before = rss_mb()["VmRSS"]
score.init()
for adapter in json.loads(sys.argv[1]):
    reply = score.run(prompt="What is the tone of this phrase? We won!", max_new_tokens=8, adapter=adapter)
    assert isinstance(reply, dict), reply
print(json.dumps({**rss_mb(), "model_mb": rss_mb()["VmRSS"] - before}))
"""


def scoring_process_memory(folder: Path, adapters: list) -> dict:
    """Resident memory (MB) of a fresh scoring process that loaded `folder` and answered one request per adapter:
    VmRSS, VmHWM (peak), and model_mb (VmRSS growth from init() on, runtimes already imported)."""
    env = {**os.environ, "AZUREML_MODEL_DIR": str(folder), "OMP_NUM_THREADS": "1", "SLMOPS_MAX_BATCH": "1"}
    proc = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(adapters)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_one_multi_adapter_process_holds_one_base(folders, finetuned, topic_finetuned):
    """One process serving both adapters vs one process per task serving its merged model (ONNX: built with the
    adapter in it; PyTorch: finetune's merged MLflow model): the pair takes about twice the memory of the one.
    The six processes run as many at a time as there are cores: each measures only itself, so the figures are those
    of one at a time."""
    from concurrent.futures import ThreadPoolExecutor

    merged = {"tone": Path(finetuned["model"]), "topic": Path(topic_finetuned["model"])}
    jobs = {}  # (kind, None): the multi-adapter process; (kind, name): that task's single-model process
    for kind in ("onnx", "pytorch"):
        jobs[kind, None] = (folders[kind], NAMES)
        for name in NAMES:
            jobs[kind, name] = (folders[f"onnx-{name}"] if kind == "onnx" else merged[name], [None])
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        measured = dict(zip(jobs, pool.map(lambda job: scoring_process_memory(*job), jobs.values())))
    figures = {}
    for kind in ("onnx", "pytorch"):
        one = measured[kind, None]
        pair = [measured[kind, n] for n in NAMES]
        figures[kind] = {"multi_adapter": one, "two_single": pair,
                         "ratio_rss": sum(p["VmRSS"] for p in pair) / one["VmRSS"]}
        assert one["VmRSS"] < 0.7 * sum(p["VmRSS"] for p in pair), figures[kind]
    print("multi-adapter memory (MB):", json.dumps(figures, indent=1))


# --------------------------------------------------------------------------------------------- over HTTP

def test_slmops_serve_routes_each_request_to_its_adapter(folders, task_rows, tmp_path):
    """`slmops serve` on the ORT GenAI multi-adapter folder: the JSON body's "adapter" reaches run(); an unknown
    adapter is a 400 naming the available ones."""
    from tests.serving.conftest import Served
    from tests.serving.test_serve import post

    server = Served(folders["onnx"], tmp_path, key="multi-key-0123456789abcdef")
    try:
        for name in NAMES:
            status, reply, _ = post(server, {"prompt": task_rows[name][0]["prompt"], "max_new_tokens": 16,
                                             "adapter": name})
            assert status == 200 and reply["adapter"] == name and reply["text"] == task_rows[name][0]["label"], reply
        status, reply, _ = post(server, {"prompt": "hi", "adapter": "sentiment"})
        assert status == 400 and "['tone', 'topic']" in reply["problems"][0], reply
    finally:
        server.stop()
