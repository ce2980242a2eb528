"""Batched serving (slmops.serving.batcher through score.py's run()): concurrent requests become batched
generations whose answers are exactly the one-at-a-time answers.

First the batcher's rules on a fake model (instant, no runtime): grouping by temperature, the context fit, per-request
limits, a failing request or a rejected prompt failing alone, shutdown, the settings and the workers/threads plan.
Then both real backends on the tiny model: N concurrent run() calls from threads answer exactly what N sequential
unbatched calls answer (SLMOPS_MAX_BATCH=1, the server before batching), in fewer generation calls than requests,
each within its own max_new_tokens; and a batch that mixes limits stops when its rows are done, not at the largest
limit.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from slmops.generation import Completion
from slmops.serving import batcher
from slmops.serving.batcher import Batcher, Rejected, Request, take_batch

# --------------------------------------------------------------------------------------------- a fake model


class FakeModel:
    """Encodes a prompt as one token per character; completes each prompt as its reversed text, cut to the
    request's limit; raises for any batch holding a prompt with "boom". Records every call."""

    kind = "fake"
    context_length = 40

    def __init__(self, delay_s: float = 0.02):
        self.calls: list[tuple[list[str], list[int], float]] = []
        self.delay_s = delay_s
        self.threads: set[str] = set()

    def render_chat(self, messages):
        if any(m["content"] == "bad template" for m in messages):
            raise ValueError("the chat template failed")
        return "|".join(m["content"] for m in messages)

    def encode(self, prompt):
        return list(prompt)

    def complete(self, prompts, max_new_tokens, temperature, on_done=None):
        self.threads.add(threading.current_thread().name)
        self.calls.append((list(prompts), list(max_new_tokens), temperature))
        threading.Event().wait(self.delay_s)
        if any("boom" in p for p in prompts):
            raise RuntimeError("boom in the batch")
        return [answer(p, n) for p, n in zip(prompts, max_new_tokens)]


def answer(prompt: str, limit: int) -> Completion:
    ids = [ord(c) for c in prompt[::-1][:limit]]
    return Completion(prompt[::-1][:limit], ids, len(prompt), "length" if len(ids) == limit else "stop")


def submit_together(b: Batcher, requests: list[dict]) -> list:
    """Submit every request from its own thread, released at once; each result or exception, in order."""
    out, gate = [None] * len(requests), threading.Barrier(len(requests))

    def one(i):
        gate.wait()
        try:
            out[i] = b.submit(**requests[i])
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def req(prompt=None, *, messages=None, n=4, t=0.0):
    return {"prompt": prompt, "messages": messages, "max_new_tokens": n, "temperature": t}


def test_concurrent_requests_are_batched_with_their_own_limits():
    model = FakeModel()
    b = Batcher(model, max_batch=8, wait_s=0.2)
    requests = [req(f"prompt {i}", n=1 + i % 5) for i in range(12)]
    got = submit_together(b, requests)
    assert got == [answer(r["prompt"], r["max_new_tokens"]) for r in requests]
    assert b.stats["requests"] == 12 and b.stats["batches"] < 12 and 1 < b.stats["largest"] <= 8
    assert all(len(prompts) <= 8 for prompts, _, _ in model.calls)
    assert model.threads == {"slmops-batcher"}  # the model is used from one thread only
    b.close()


def test_one_temperature_per_call_and_greedy_answers_unchanged():
    model = FakeModel()
    b = Batcher(model, max_batch=8, wait_s=0.2)
    requests = [req(f"p{i}", t=0.0 if i % 3 else 0.7) for i in range(9)]
    got = submit_together(b, requests)
    assert got == [answer(r["prompt"], 4) for r in requests]
    for prompts, _, temperature in model.calls:
        assert {requests[int(p[1:])]["temperature"] for p in prompts} == {temperature}
    b.close()


def test_a_failing_request_fails_alone():
    model = FakeModel()
    b = Batcher(model, max_batch=8, wait_s=0.2)
    user = [{"role": "user", "content": c} for c in ("bad template", "hi", "yo")]
    requests = [req("ok one"), req("boom"), req("ok two"), req(messages=user[:1]), req("x" * 39, n=4),
                req(messages=user[1:])]
    got = submit_together(b, requests)
    assert got[0] == answer("ok one", 4) and got[2] == answer("ok two", 4) and got[5] == answer("hi|yo", 4)
    assert isinstance(got[1], RuntimeError) and "boom" in str(got[1])
    assert isinstance(got[3], ValueError)  # raised in its own preparation, the others unaffected
    assert isinstance(got[4], Rejected) and "exceed the model's context of 40 tokens" in got[4].problems[0]
    # the batch holding "boom" failed, then ran one request at a time: only "boom" failed again
    assert any(len(p) > 1 and "boom" in p for p, _, _ in model.calls)
    assert ["boom"] in [p for p, _, _ in model.calls]
    # still serving
    assert b.submit("after", None, 2, 0.0) == answer("after", 2)
    b.close()


class OneAtATimeModel(FakeModel):
    """Completes a batch's prompts one by one, calling on_done as each is ready (what ORT GenAI's prompt cache does),
    and before the next waits until the request just answered has been handed back to its caller."""

    def __init__(self):
        super().__init__()
        self.returned: dict[str, threading.Event] = {}
        self.answered_early: list[bool] = []

    def complete(self, prompts, max_new_tokens, temperature, on_done=None):
        self.calls.append((list(prompts), list(max_new_tokens), temperature))
        if len(self.calls) == 1:  # a lone first request starts at once: the others queue behind it meanwhile
            threading.Event().wait(0.3)
        out = []
        for i, (p, n) in enumerate(zip(prompts, max_new_tokens)):
            out.append(answer(p, n))
            if on_done is not None:
                on_done(i, out[-1])
            if i < len(prompts) - 1:  # the caller has its answer while the batch is still generating
                self.answered_early.append(self.returned.setdefault(p, threading.Event()).wait(5))
        return out


def test_a_request_is_answered_as_soon_as_its_completion_is_ready():
    model = OneAtATimeModel()
    b = Batcher(model, max_batch=8, wait_s=0.3)
    prompts = [f"prompt {i}" for i in range(4)]
    for p in prompts:
        model.returned[p] = threading.Event()
    got, gate = [None] * 4, threading.Barrier(4)

    def one(i):
        gate.wait()
        got[i] = b.submit(prompts[i], None, 3, 0.0)
        model.returned[prompts[i]].set()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert got == [answer(p, 3) for p in prompts]
    assert b.stats["largest"] > 1 and model.answered_early and all(model.answered_early)
    b.close()


def test_the_batch_fits_the_context_and_keeps_arrival_order():
    def r(n_prompt, n, t=0.0):
        x = Request("p", None, n, t)
        x.n_prompt = n_prompt
        return x

    pending = [r(10, 20), r(30, 5), r(5, 5, t=0.5), r(15, 10), r(2, 2)]
    first = take_batch(pending, max_batch=8, context_length=40)
    # r(30, 5) would make the batch 30 + 20 wide; the sampled one waits for its own batch
    assert [(x.n_prompt, x.max_new_tokens) for x in first] == [(10, 20), (15, 10), (2, 2)]
    assert [(x.n_prompt, x.max_new_tokens) for x in pending] == [(30, 5), (5, 5)]
    assert [x.n_prompt for x in take_batch(pending, 8, 40)] == [30]
    assert [x.temperature for x in take_batch(pending, 8, 40)] == [0.5] and not pending
    many = [r(1, 1) for _ in range(5)]
    assert len(take_batch(many, max_batch=3, context_length=40)) == 3 and len(many) == 2


def test_max_batch_1_generates_one_request_at_a_time_in_the_caller():
    model = FakeModel(delay_s=0)
    b = Batcher(model, max_batch=1, wait_s=0.2)
    requests = [req(f"p{i}") for i in range(6)]
    assert submit_together(b, requests) == [answer(r["prompt"], 4) for r in requests]
    assert all(len(p) == 1 for p, _, _ in model.calls) and b.stats["batches"] == 6
    assert "slmops-batcher" not in model.threads
    with pytest.raises(Rejected):
        b.submit("x" * 40, None, 1, 0.0)


def test_close_stops_the_thread():
    b = Batcher(FakeModel(delay_s=0), max_batch=4, wait_s=0)
    assert b.submit("a", None, 1, 0.0) == answer("a", 1)
    b.close()
    b._thread.join(5)
    assert not b._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        b.submit("a", None, 1, 0.0)


def test_batch_settings_from_the_environment():
    from slmops.serving.score import batch_settings

    assert batch_settings({}) == (batcher.DEFAULT_MAX_BATCH, batcher.DEFAULT_WAIT_MS / 1000, True)
    assert batch_settings({"SLMOPS_MAX_BATCH": "1", "SLMOPS_BATCH_WAIT_MS": "0", "SLMOPS_PROMPT_CACHE": "0"}) == \
        (1, 0.0, False)
    with pytest.raises(RuntimeError) as err:
        batch_settings({"SLMOPS_MAX_BATCH": "0", "SLMOPS_BATCH_WAIT_MS": "soon", "SLMOPS_PROMPT_CACHE": "yes"})
    assert "SLMOPS_MAX_BATCH='0' must be an integer in 1..256" in str(err.value)
    assert "SLMOPS_BATCH_WAIT_MS='soon'" in str(err.value)
    assert "SLMOPS_PROMPT_CACHE='yes' must be 1" in str(err.value)


GB = 1024 ** 3


@pytest.mark.parametrize("cores, memory, model, gpu, expected", [
    (4, 14 * GB, GB // 2, False, (1, 16, 4)),      # Standard_DS3_v2, a 135M model in fp32: one worker
    (2, 24 * GB, GB // 2, False, (1, 16, 2)),
    (32, 128 * GB, GB // 2, False, (4, 16, 8)),    # one worker per 8 cores
    (32, 16 * GB, 6 * GB, False, (1, 16, 32)),     # memory allows one copy (6 GB x 1.25 into 12 GB)
    (32, 16 * GB, 40 * GB, False, (1, 16, 32)),    # does not fit at all: one worker, whose load says why
    (8, 64 * GB, GB, True, (1, 16, 8)),            # GPU: one worker
])
def test_plan(cores, memory, model, gpu, expected):
    got = batcher.plan(cores, memory, model, gpu=gpu)
    assert (got["workers"], got["threads"], got["compute_threads"]) == expected


# ------------------------------------------------------------------------------------------- the tiny model

PROMPTS = ["After the call, I felt furious.", "hi", "What is the tone of this phrase? " + "We were delighted. " * 6,
           "Tone: sad", "The parcel never came and nobody called back.", "ok"]
MESSAGES = [[{"role": "user", "content": "What is the tone of this phrase? I felt furious about the call."}],
            [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "Tone? We were sad."}]]
LIMITS = [8, 3, 5, 1, 6, 2, 4, 7]


def mixed_requests() -> list[dict]:
    out = [req(p, n=n) for p, n in zip(PROMPTS, LIMITS)]
    out += [req(messages=m, n=n) for m, n in zip(MESSAGES, LIMITS[len(PROMPTS):])]
    return out


def serve(folder: Path, monkeypatch, **env):
    from slmops.serving import score

    monkeypatch.setenv("AZUREML_MODEL_DIR", str(folder))
    for name in ("SLMOPS_MAX_BATCH", "SLMOPS_BATCH_WAIT_MS", "SLMOPS_PROMPT_CACHE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    score.init()
    return score


def run_together(score, requests: list[dict]) -> list:
    out, gate = [None] * len(requests), threading.Barrier(len(requests))

    def one(i):
        gate.wait()
        out[i] = score.run(**requests[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


@pytest.fixture(scope="module")
def folders(tiny_model, onnx_model):
    return {"pytorch": Path(tiny_model), "onnx": Path(onnx_model)}


@pytest.mark.parametrize("kind", ["pytorch", "onnx"])
def test_concurrent_run_calls_answer_as_sequential_unbatched_ones(kind, folders, monkeypatch):
    requests = mixed_requests()
    score = serve(folders[kind], monkeypatch, SLMOPS_MAX_BATCH="1", SLMOPS_PROMPT_CACHE="0")  # the server before both
    sequential = [score.run(**r) for r in requests]
    assert score.BATCHER.stats["batches"] == len(requests)
    if kind == "onnx":
        assert score.MODEL.cache is False
        score = serve(folders[kind], monkeypatch, SLMOPS_MAX_BATCH="1")  # one at a time, each after the one before
        assert [score.run(**r) for r in requests] == sequential
        assert score.MODEL.cache.slots[None][2]  # it holds the last request's ids

    score = serve(folders[kind], monkeypatch, SLMOPS_MAX_BATCH="8", SLMOPS_BATCH_WAIT_MS="300")
    assert score.MODEL.kind == kind
    together = run_together(score, requests)
    assert together == sequential
    assert score.BATCHER.stats["batches"] < len(requests) and score.BATCHER.stats["largest"] > 1
    assert [a["completion_tokens"] for a in together] == LIMITS  # each its own limit (none ends early here)
    assert {a["finish_reason"] for a in together} == {"length"} and all(a["text"] for a in together)

    # sampled requests in the same burst are generated apart from the greedy ones, which keep their answers
    sampled = [req(PROMPTS[0], n=4, t=0.9), req(PROMPTS[1], n=4, t=0.9)]
    mixed = run_together(score, requests + sampled)
    assert mixed[:len(requests)] == sequential
    assert all(a["completion_tokens"] <= 4 for a in mixed[len(requests):])


@pytest.mark.parametrize("kind", ["pytorch", "onnx"])
def test_a_bad_request_in_a_burst_fails_alone(kind, folders, monkeypatch):
    score = serve(folders[kind], monkeypatch, SLMOPS_MAX_BATCH="8", SLMOPS_BATCH_WAIT_MS="300")
    good = mixed_requests()[:4]
    expected = [score.run(**r) for r in good]
    too_long = req("word " * score.MODEL.context_length, n=2)
    real_complete = score.MODEL.complete

    def complete(prompts, max_new_tokens, temperature, on_done=None):
        if "explode" in prompts:
            raise RuntimeError("this prompt breaks the runtime")
        return real_complete(prompts, max_new_tokens, temperature)

    monkeypatch.setattr(score.MODEL, "complete", complete)
    out, gate = [None] * 6, threading.Barrier(6)
    requests = good[:2] + [too_long, req("explode")] + good[2:]

    def one(i):
        gate.wait()
        try:
            out[i] = score.run(**requests[i])
        except RuntimeError as exc:
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert out[:2] + out[4:] == expected
    assert out[2].status_code == 400 and "exceed the model's context" in out[2].get_json()["problems"][0]
    assert isinstance(out[3], RuntimeError) and "breaks the runtime" in str(out[3])


def stop_copy(kind: str, folder: Path, out: Path) -> tuple[Path, int, int]:
    """A copy of the model with one more end-of-sequence id: a token PROMPTS[0]'s greedy continuation emits at
    position >= 2 (not seen before it). Returns (copy, that id, its position)."""
    from slmops.serving import score

    ids = score.load_model(folder).complete([PROMPTS[0]], [8], 0.0)[0].ids
    position = next(i for i in range(2, len(ids)) if ids[i] not in ids[:i])
    copy = out / f"{kind}-stop"
    shutil.copytree(folder, copy)
    path, section = (copy / "genai_config.json", "model") if kind == "onnx" else (copy / "generation_config.json", None)
    config = json.loads(path.read_text())
    node = config[section] if section else config
    eos = node["eos_token_id"]
    node["eos_token_id"] = [*(eos if isinstance(eos, list) else [eos]), ids[position]]
    path.write_text(json.dumps(config, indent=2))
    return copy, ids[position], position


@pytest.mark.parametrize("kind", ["pytorch", "onnx"])
def test_a_batch_with_mixed_limits_ends_when_its_rows_are_done(kind, folders, tmp_path, monkeypatch):
    """A short request batched with one that may run long: once the long one emits its end token and the short one
    has its tokens, the call ends (one generation step per token of the longest answer, not max_new_tokens)."""
    from slmops.serving import score

    copy, _end, position = stop_copy(kind, folders[kind], tmp_path)
    model = score.load_model(copy)
    steps = []
    if kind == "pytorch":
        model.model.register_forward_hook(lambda *_: steps.append(1))
    else:
        import onnxruntime_genai as og

        class Counting(og.Generator):
            def generate_next_token(self):
                steps.append(1)
                return super().generate_next_token()

        monkeypatch.setattr(og, "Generator", Counting)
    prompts, limits = [PROMPTS[0], PROMPTS[1]], [64, 2]
    batched = model.complete(prompts, limits, 0.0)
    assert len(steps) <= position + 1 < 64  # the end token came at `position`
    steps.clear()
    single = [model.complete([p], [n], 0.0)[0] for p, n in zip(prompts, limits)]
    assert batched == single
    assert batched[0].finish_reason == "stop" and len(batched[0].ids) == position
    assert batched[1].finish_reason == "length" and len(batched[1].ids) == 2
