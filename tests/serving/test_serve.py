"""Real HTTP tests against `slmops serve` (gunicorn + the Azure ML inference server + score.py) on loopback."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner

from slmops.serving.cli import serve

PROMPT = "After the call, I felt furious."
MESSAGES = [{"role": "user", "content": "What is the tone of this phrase? We were delighted."}]


def post(server, body, *, key="RIGHT", headers=None, path="/score", timeout=60):
    """POST `body` (dict -> JSON, bytes as is); returns (status, parsed JSON or text, headers)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"Content-Type": "application/json", **(headers or {})}
    if key == "RIGHT":
        h["Authorization"] = f"Bearer {server.key}"
    elif key is not None:
        h["Authorization"] = key
    req = urllib.request.Request(server.url + path, data=data, headers=h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw, hdrs = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, raw, hdrs = e.code, e.read(), e.headers
    try:
        return status, json.loads(raw), hdrs
    except ValueError:
        return status, raw.decode(errors="replace"), hdrs


def get(server, path, key=None):
    req = urllib.request.Request(server.url + path, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def greedy_torch(model_dir, prompt, max_new_tokens):
    """What transformers' greedy generate() answers, decoded as evaluate decodes (trailing EOS dropped, special
    tokens skipped, whitespace stripped)."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tok(prompt)["input_ids"]
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)[0, len(ids):].tolist()
    eos = model.generation_config.eos_token_id
    if out and out[-1] in (eos if isinstance(eos, list) else [eos]):
        out = out[:-1]
    return tok.decode(out, skip_special_tokens=True).strip(), len(ids), len(out)


def greedy_ortgenai(model_dir, prompt, max_new_tokens):
    """What ONNX Runtime GenAI's greedy search answers for the same prompt (decoded and stripped as optimize does)."""
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    tok = og.Tokenizer(model)
    ids = tok.encode(prompt)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    while not gen.is_done():
        gen.generate_next_token()
    out = [int(t) for t in gen.get_sequence(0)][len(ids):]
    eos = json.loads((model_dir / "genai_config.json").read_text())["model"]["eos_token_id"]
    if out and out[-1] in (eos if isinstance(eos, list) else [eos]):
        out = out[:-1]
    return tok.decode(out).strip() if out else "", len(ids), len(out)


@pytest.mark.parametrize("key, status", [
    ("RIGHT", 200),
    (None, 401),
    ("Bearer wrong-key-0123456789", 401),
    ("test-key-0123456789abcdef", 401),  # the key without the Bearer scheme
])
def test_score_needs_the_key(torch_server, key, status):
    got, body, headers = post(torch_server, {"prompt": PROMPT, "max_new_tokens": 2}, key=key)
    assert got == status, body
    if status == 401:
        assert "Bearer" in body["message"] and headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path, key, status", [
    ("/health/live", None, 200),
    ("/health/ready", None, 200),
    ("/", None, 200),               # azmlinfsrv's own liveness route
    ("/swagger.json", None, 401),
    ("/swagger.json", "RIGHT", 200),
])
def test_probes_open_everything_else_keyed(torch_server, path, key, status):
    got, _ = get(torch_server, path, torch_server.key if key == "RIGHT" else key)
    assert got == status


def test_swagger_publishes_request_and_response_schema(torch_server):
    status, raw = get(torch_server, "/swagger.json", torch_server.key)
    assert status == 200
    defs = json.loads(raw)["definitions"]
    props = defs["ServiceInput"]["properties"]
    assert {"prompt", "messages", "max_new_tokens", "temperature"} <= set(props)
    assert props["messages"]["type"] == "array"
    assert set(defs["ServiceOutput"]["properties"]) >= {"text", "prompt_tokens", "completion_tokens"}


@pytest.mark.parametrize("body, headers, status, says", [
    (b"{not json", {}, 400, "could not be decoded as JSON"),
    (b"[1, 2]", {}, 400, "JSON dictionary"),
    (b"", {}, 400, "empty"),
    ({"prompt": "hi"}, {"Content-Type": "text/plain"}, 415, "application/json"),
    ({}, {}, 400, "exactly one of 'prompt'"),
    ({"prompt": "hi", "messages": MESSAGES}, {}, 400, "exactly one of 'prompt'"),
    ({"prompt": 42}, {}, 400, "non-empty string"),
    ({"messages": [{"role": "robot", "content": "x"}]}, {}, 400, "role must be one of"),
    ({"messages": [{"text": "x"}]}, {}, 400, "exactly 'role' and 'content'"),
    ({"messages": "hello"}, {}, 400, "non-empty list"),
    ({"prompt": "hi", "max_new_tokens": 0}, {}, 400, "1..512"),
    ({"prompt": "hi", "max_new_tokens": 100000}, {}, 400, "1..512"),
    ({"prompt": "hi", "max_new_tokens": "8"}, {}, 400, "1..512"),
    ({"prompt": "hi", "max_new_tokens": True}, {}, 400, "1..512"),
    ({"prompt": "hi", "temperature": -1}, {}, 400, "0..2"),
    ({"prompt": "x" * 40000}, {}, 400, "the limit is 32000"),
    ({"prompt": "hi " * 300, "max_new_tokens": 500}, {}, 400, "context of 512 tokens"),
    ({"prompt": "x" * 2_000_000}, {}, 413, "exceeds the limit"),
])
def test_bad_requests_get_4xx_with_a_message(torch_server, body, headers, status, says):
    got, reply, _ = post(torch_server, body, headers=headers)
    assert got == status, reply
    assert says in json.dumps(reply)


def test_pytorch_output_equals_greedy_generate(torch_server, tiny_model):
    status, reply, headers = post(torch_server, {"prompt": PROMPT, "max_new_tokens": 12, "temperature": 0})
    assert status == 200, reply
    text, n_prompt, n_new = greedy_torch(tiny_model, PROMPT, 12)
    assert reply == {"text": text, "prompt_tokens": n_prompt, "completion_tokens": n_new,
                     "finish_reason": "length" if n_new == 12 else "stop", "model": "tiny-llama"}
    assert "x-ms-run-fn-exec-ms" in headers  # answered by the Azure ML inference server itself


def test_onnx_output_equals_ort_genai_greedy(onnx_server, onnx_model):
    status, reply, _ = post(onnx_server, {"prompt": PROMPT, "max_new_tokens": 12})
    assert status == 200, reply
    text, n_prompt, n_new = greedy_ortgenai(onnx_model, PROMPT, 12)
    assert (reply["text"], reply["prompt_tokens"], reply["completion_tokens"]) == (text, n_prompt, n_new)
    assert n_prompt > 0 and reply["model"] == "tiny-onnx"


def test_onnx_and_pytorch_agree_on_chat_messages(torch_server, onnx_server):
    """Both backends render the same chat template and greedy-decode the same fp32 weights to the same tokens.
    (The random tiny model emits partial UTF-8 byte tokens; ORT GenAI's decoder stops at the first invalid
    sequence where transformers writes U+FFFD and goes on, so the ONNX text is a prefix of the PyTorch one.)"""
    body = {"messages": MESSAGES, "max_new_tokens": 6}
    (s1, r1, _), (s2, r2, _) = post(torch_server, body), post(onnx_server, body)
    assert s1 == s2 == 200
    assert r1["prompt_tokens"] == r2["prompt_tokens"] > 10
    assert (r1["completion_tokens"], r1["finish_reason"]) == (r2["completion_tokens"], r2["finish_reason"])
    assert r2["text"] and r1["text"].startswith(r2["text"])


@pytest.mark.parametrize("server", ["torch_server", "onnx_server"])
def test_sampling_temperature_is_accepted(server, request):
    status, reply, _ = post(request.getfixturevalue(server), {"prompt": PROMPT, "max_new_tokens": 4,
                                                              "temperature": 0.8})
    assert status == 200
    assert reply["completion_tokens"] == 4 or reply["finish_reason"] == "stop"  # sampling may hit EOS early


def test_200_concurrent_requests_get_no_5xx(onnx_server):
    n = 200
    barrier = threading.Barrier(n)
    statuses = [None] * n

    def one(i):
        barrier.wait(timeout=60)
        statuses[i] = post(onnx_server, {"prompt": f"{PROMPT} {i}", "max_new_tokens": 4}, timeout=120)[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert statuses.count(200) == n, sorted(set(statuses), key=str)


def test_server_listens_on_loopback_only(torch_server):
    import psutil

    listening = [c.laddr for c in psutil.net_connections("tcp") if c.status == "LISTEN"
                 and c.laddr.port == torch_server.port]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening)


@pytest.mark.parametrize("args, says", [
    (["/no/such/model"], "neither an existing folder nor a registry reference"),
    (["{tmp}", "--key", "short"], "at least 16"),
    (["{tmp}"], "no model under"),
    (["models:/tone@production"], "needs a model registry"),
    (["{hosted}"], "hosted fine-tune registered by `slmops maas register` (service azure-openai"),
])
def test_serve_rejects_bad_input_with_exit_2(args, says, tmp_path, monkeypatch):
    from slmops.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    hosted = tmp_path.with_name(tmp_path.name + "-hosted")   # what `slmops maas register` registers: a card
    (hosted / "model").mkdir(parents=True)
    (hosted / "model" / "hosted_model.json").write_text('{"service": "azure-openai", "fine_tuned_model": "ft-1"}')
    result = CliRunner().invoke(main, ["serve", *[a.format(tmp=tmp_path, hosted=hosted) for a in args]])
    assert result.exit_code == 2, result.output
    assert says in result.output


def test_serve_help():
    result = CliRunner().invoke(serve, ["--help"])
    assert result.exit_code == 0 and "--port" in result.output and "127.0.0.1" in result.output


@pytest.mark.parametrize("max_batch, expected_threads", [(None, 16), ("4", 8), ("1", 2), ("zero", 16), ("999", 16)])
def test_serve_sizes_itself_by_the_batcher_plan(max_batch, expected_threads, tmp_path, monkeypatch):
    """Request threads 2 x SLMOPS_MAX_BATCH (a bad value: the default, left to the worker to report); workers and
    compute threads from the cores this process may use and the model's weight bytes."""
    import os

    from slmops.serving import serve as srv

    (tmp_path / "model.safetensors").write_bytes(b"\0" * 4096)
    (tmp_path / "config.json").write_text("{}")
    env = {"OMP_NUM_THREADS": "64"} if max_batch is None else {"SLMOPS_MAX_BATCH": max_batch, "OMP_NUM_THREADS": "64"}
    plan = srv.server_plan(tmp_path, env)
    cores = len(os.sched_getaffinity(0))
    assert plan["threads"] == expected_threads and plan["model_bytes"] == 4096
    assert plan["workers"] == max(1, cores // 8) and plan["compute_threads"] == max(1, cores // plan["workers"])
    # cores busy with other work: the compute threads shrink to the free ones
    assert srv.server_plan(tmp_path, {"OMP_NUM_THREADS": "1"})["compute_threads"] == 1
    command = srv.server_command(0, plan["threads"], workers=plan["workers"])
    assert command[command.index("--threads") + 1] == str(expected_threads)
    assert srv.server_env(tmp_path, "k" * 16, compute_threads=3, base={})["OMP_NUM_THREADS"] == "3"
    assert srv.server_env(tmp_path, "k" * 16, compute_threads=3, base={"OMP_NUM_THREADS": "1"})["OMP_NUM_THREADS"] == "1"
