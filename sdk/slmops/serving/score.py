"""Scoring script for the Azure ML inference server (`azureml-inference-server-http`), the server managed online
endpoints run. The same file serves a fine-tuned PyTorch model (MLflow `mlflow.transformers` folder or a Hugging
Face folder) and an ONNX Runtime GenAI model (a folder with `genai_config.json`).

    azmlinfsrv --entry_script sdk/slmops/serving/score.py --model_dir ./model     # no auth, binds 0.0.0.0
    slmops serve ./model --port 8080                                               # loopback + key (use this)

Request (POST /score, JSON): either `prompt` (a string) or chat `messages` ([{"role", "content"}], rendered with
the model's chat template), plus optional `max_new_tokens` (1..SLMOPS_MAX_NEW_TOKENS, default 64) and
`temperature` (0 = greedy, default 0). Response: `{"text", "prompt_tokens", "completion_tokens",
"finish_reason": "stop"|"length", "model"}`. A bad request gets 400 with every problem listed, never a 500.

Generation is `slmops.generation`'s, the code evaluate (PyTorch) and optimize (ORT GenAI) measure with: the same
chat rendering, BOS rule, end-of-sequence ids, cut and decoding, so a greedy answer here is the evaluated one.
Requests that arrive together are generated together (`slmops.serving.batcher`): up to SLMOPS_MAX_BATCH (8) per
call, gathered for up to SLMOPS_BATCH_WAIT_MS (5) ms; SLMOPS_MAX_BATCH=1 generates one request at a time. An ORT
GenAI model on a CPU keeps the key/value cache of the last prompt across requests (`generation.OrtPromptCache`), so
a request sharing its system prompt runs only its own ids; SLMOPS_PROMPT_CACHE=0 turns that off.
The schema is published by the server at GET /swagger.json (from the inference-schema decorators below).

Several adapters on one base (`slmops.adapters`: the model folder has an `adapters/` folder - `<name>.onnx_adapter`
files written by `optimize --adapter_N`, or PEFT adapter folders beside a PyTorch base): one copy of the base is
loaded with every adapter, and each request names its adapter (`"adapter": "tone"`); a request without one, or
naming one the model does not have, is a 400 listing the available adapters. The response then also carries
`"adapter"`. Requests for the same adapter are batched together; PyTorch switches with PEFT's `set_adapter`, ORT
GenAI with `generator.set_active_adapter`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from azureml_inference_server_http.api.aml_response import AMLResponse
from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType
from inference_schema.schema_decorators import input_schema, output_schema

from slmops import adapters as multi
from slmops import generation, threads
from slmops.serving import batcher

logger = logging.getLogger("azmlinfsrv.slmops")

MAX_NEW_TOKENS = int(os.environ.get("SLMOPS_MAX_NEW_TOKENS", "512"))  # the cap a request may ask for
MAX_PROMPT_CHARS = int(os.environ.get("SLMOPS_MAX_PROMPT_CHARS", "32000"))  # prompt or all messages together
MAX_MESSAGES = 64
ROLES = ("system", "user", "assistant")
DEFAULT_MAX_NEW_TOKENS = 64

# Set once by init(); run() only reads them. The server's request threads hand their requests to BATCHER, whose one
# thread renders, encodes and generates: torch / ORT GenAI state (tokenizer options included) is never used from
# two threads at once.
MODEL = None
BATCHER: batcher.Batcher | None = None

SAMPLE_MESSAGES = [{"role": "user", "content": "What is the tone of this phrase? I felt furious about the call."}]
SAMPLE_OUTPUT = {"text": "angry", "prompt_tokens": 21, "completion_tokens": 2, "finish_reason": "stop",
                 "model": "tone-classifier"}


def find_model_dir(root: Path) -> Path:
    """The model folder under AZUREML_MODEL_DIR: the root itself or a folder up to two levels below it that has
    genai_config.json, MLmodel or config.json (Azure ML mounts a registered model as <root>/<name>/...)."""
    markers = ("genai_config.json", "MLmodel", "config.json")
    levels = [[root], sorted(p for p in root.glob("*") if p.is_dir()), sorted(p for p in root.glob("*/*") if p.is_dir())]
    for level in levels:
        for folder in level:
            if any((folder / m).exists() for m in markers):
                return folder
    found = sorted(str(p.relative_to(root)) for p in root.rglob("*"))[:20]
    raise RuntimeError(f"no model under AZUREML_MODEL_DIR={str(root)!r}: expected a folder with genai_config.json "
                       f"(ORT GenAI), MLmodel (MLflow) or config.json (Hugging Face); found {found}")


class OrtGenAIModel:
    """An ONNX Runtime GenAI model folder (what `onnxruntime_genai.models.builder` and Olive produce), generating
    through `slmops.generation` exactly as the optimize step measures it."""

    kind = "onnx"

    def __init__(self, folder: Path, prompt_cache: bool = True):
        import onnxruntime_genai as og

        og_config = og.Config(str(folder))
        raw = os.environ.get("OMP_NUM_THREADS", "").strip()
        if raw.isdigit() and int(raw) > 0:  # the worker's share of the cores (slmops serve, the deployment spec)
            og_config.overlay(threads.ort_overlay(int(raw)))
        self.model = og.Model(og_config)
        self.tokenizer = og.Tokenizer(self.model)
        self.og_adapters, self.adapters = multi.load_onnx_adapters(self.model, folder)  # [] without adapters/
        config = json.loads((folder / "genai_config.json").read_text())
        self.context_length = int(config["model"]["context_length"])
        # the key/value cache of the last prompt, kept across requests (SLMOPS_PROMPT_CACHE; CPU only, where it
        # beats batching: generation.OrtPromptCache)
        self.cache = generation.OrtPromptCache(self.model, self.og_adapters, self.context_length) \
            if prompt_cache and self.model.device_type == "CPU" else False

    def render_chat(self, messages: list[dict]) -> str:
        return generation.ort_render_chat(self.tokenizer, messages)

    def encode(self, prompt: str) -> list[int]:
        return generation.ort_encode(self.tokenizer, prompt)

    def complete(self, prompts: list[str], max_new_tokens: list[int], temperature: float, adapter: str | None = None,
                 on_done=None):
        return generation.ort_completions(self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens,
                                          batch_size=len(prompts), temperature=temperature,
                                          adapters=self.og_adapters, adapter=adapter, cache=self.cache,
                                          on_done=on_done)


class TorchModel:
    """A PyTorch causal LM: an MLflow `mlflow.transformers` folder or a Hugging Face folder (merged, no PEFT; or a
    base with PEFT adapters in `adapters/`, all loaded once), in float32 and generating through `slmops.generation`
    exactly as the evaluate step measures it."""

    kind = "pytorch"

    def __init__(self, folder: Path):
        import torch

        from slmops.models import load_causal_lm, load_tokenizer

        self.tokenizer = load_tokenizer(folder)
        self.model = load_causal_lm(folder, dtype=torch.float32).eval()  # evaluate's dtype
        self.adapters = multi.peft_names(folder)
        if self.adapters:  # one base, every adapter loaded on it (PEFT), switched per batch
            self.model = multi.load_peft(self.model, {n: folder / multi.ADAPTERS_DIR / n for n in self.adapters})
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 0) or 10**9)

    def render_chat(self, messages: list[dict]) -> str:
        return generation.torch_render_chat(self.tokenizer, messages)

    def encode(self, prompt: str) -> list[int]:
        return generation.torch_encode(self.tokenizer, prompt)

    def complete(self, prompts: list[str], max_new_tokens: list[int], temperature: float, adapter: str | None = None,
                 on_done=None):  # a batch's completions are ready together: the batcher answers them after the call
        return generation.torch_completions(self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens,
                                            batch_size=len(prompts), temperature=temperature, adapter=adapter)


def load_model(folder: Path, prompt_cache: bool = True):
    """The serving model for a folder: ORT GenAI when it has genai_config.json, else PyTorch."""
    if (folder / "genai_config.json").exists():
        return OrtGenAIModel(folder, prompt_cache)
    return TorchModel(folder)


def batch_settings(env) -> tuple[int, float, bool]:
    """(max batch, wait in seconds, prompt cache) from SLMOPS_MAX_BATCH, SLMOPS_BATCH_WAIT_MS and SLMOPS_PROMPT_CACHE;
    RuntimeError naming a bad value."""
    problems, max_batch, wait_ms = [], batcher.DEFAULT_MAX_BATCH, batcher.DEFAULT_WAIT_MS
    cache = env.get("SLMOPS_PROMPT_CACHE", "1").strip()
    if cache not in ("0", "1"):
        problems.append(f"SLMOPS_PROMPT_CACHE={cache!r} must be 1 (keep the last prompt's key/value cache, the "
                        "default) or 0 (every request prefills its whole prompt)")
    raw = env.get("SLMOPS_MAX_BATCH", "").strip()
    if raw:
        if raw.isdigit() and 1 <= int(raw) <= 256:
            max_batch = int(raw)
        else:
            problems.append(f"SLMOPS_MAX_BATCH={raw!r} must be an integer in 1..256 (1 = no batching)")
    raw = env.get("SLMOPS_BATCH_WAIT_MS", "").strip()
    if raw:
        try:
            wait_ms = float(raw)
        except ValueError:
            wait_ms = -1.0
        if not 0 <= wait_ms <= 1000:
            problems.append(f"SLMOPS_BATCH_WAIT_MS={raw!r} must be a number of milliseconds in 0..1000")
    if problems:
        raise RuntimeError("; ".join(problems))
    return max_batch, wait_ms / 1000, cache == "1"


def init():
    """Called once per worker by the inference server: load the model found under AZUREML_MODEL_DIR."""
    global MODEL, BATCHER
    root = Path(os.environ.get("AZUREML_MODEL_DIR", "")).expanduser()
    if not str(root) or not root.is_dir():
        raise RuntimeError(f"AZUREML_MODEL_DIR={str(root)!r} is not a folder; start the server with --model_dir")
    max_batch, wait_s, prompt_cache = batch_settings(os.environ)
    folder = find_model_dir(root)
    MODEL = load_model(folder, prompt_cache)
    # Azure ML mounts a registered model at .../<name>/<version>, and `slmops serve` caches registry models the
    # same way: report "name:version" then, the folder name otherwise.
    MODEL.name = f"{root.parent.name}:{root.name}" if root.name.isdigit() else folder.name
    if BATCHER is not None:
        BATCHER.close()
    BATCHER = batcher.Batcher(MODEL, max_batch=max_batch, wait_s=wait_s)
    logger.info("slmops: serving %s model from %s (context %d%s), batches of up to %d gathered for %.1f ms",
                MODEL.kind, folder, MODEL.context_length,
                f", adapters {MODEL.adapters}" if MODEL.adapters else "", max_batch, wait_s * 1000)


def adapter_problems(adapter, available: list[str]) -> list[str]:
    """The request's `adapter` against the model's adapters ([] for a model without them)."""
    if not available:
        return [] if adapter is None else [f"'adapter' is {adapter!r}, but this endpoint serves one model without "
                                           "adapters; drop 'adapter'"]
    if adapter is None:
        return [f"this endpoint serves several adapters on one base: name one with 'adapter', one of {available}"]
    if adapter not in available:
        return [f"unknown adapter {adapter!r}; this endpoint serves the adapters {available}"]
    return []


def request_problems(messages, prompt, max_new_tokens, temperature) -> list[str]:
    """Every problem with a request, so one 400 lists them all."""
    problems = []
    if (messages is None) == (prompt is None):
        problems.append("give exactly one of 'prompt' (a string) or 'messages' (a list of {role, content})")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt:
            problems.append(f"'prompt' must be a non-empty string, got {type(prompt).__name__}")
        elif len(prompt) > MAX_PROMPT_CHARS:
            problems.append(f"'prompt' has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            problems.append("'messages' must be a non-empty list of {\"role\": ..., \"content\": ...} objects")
        elif len(messages) > MAX_MESSAGES:
            problems.append(f"'messages' has {len(messages)} entries; the limit is {MAX_MESSAGES}")
        else:
            for i, m in enumerate(messages):
                if not isinstance(m, dict) or set(m) != {"role", "content"}:
                    problems.append(f"messages[{i}] must be an object with exactly 'role' and 'content'")
                elif m["role"] not in ROLES or not isinstance(m["content"], str):
                    problems.append(f"messages[{i}]: role must be one of {list(ROLES)} and content a string "
                                    f"(got role {m['role']!r})")
            total = sum(len(m.get("content", "")) for m in messages if isinstance(m, dict)
                        and isinstance(m.get("content"), str))
            if total > MAX_PROMPT_CHARS:
                problems.append(f"'messages' have {total} characters together; the limit is {MAX_PROMPT_CHARS}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        problems.append(f"'max_new_tokens' must be an integer in 1..{MAX_NEW_TOKENS}, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        problems.append(f"'temperature' must be a number in 0..2 (0 = greedy), got {temperature!r}")
    return problems


def bad_request(problems: list[str]) -> AMLResponse:
    return AMLResponse({"error": "bad request", "problems": problems}, 400, json_str=True)


@input_schema("prompt", StandardPythonParameterType("What is the tone of this phrase? I felt furious."),
              convert_to_provided_type=False, optional=True)
@input_schema("messages", StandardPythonParameterType(SAMPLE_MESSAGES), convert_to_provided_type=False,
              optional=True)
@input_schema("max_new_tokens", StandardPythonParameterType(DEFAULT_MAX_NEW_TOKENS), convert_to_provided_type=False,
              optional=True)
@input_schema("temperature", StandardPythonParameterType(0.0), convert_to_provided_type=False, optional=True)
@input_schema("adapter", StandardPythonParameterType("tone"), convert_to_provided_type=False, optional=True)
@output_schema(StandardPythonParameterType(SAMPLE_OUTPUT))
def run(prompt=None, messages=None, max_new_tokens=DEFAULT_MAX_NEW_TOKENS, temperature=0.0, adapter=None):
    """Generate a completion for one request (the inference server passes the JSON body's keys as arguments); the
    batcher generates it together with the requests other threads submit at the same time (and the same adapter)."""
    problems = request_problems(messages, prompt, max_new_tokens, temperature) + \
        adapter_problems(adapter, MODEL.adapters)
    if problems:
        return bad_request(problems)
    try:
        done = BATCHER.submit(prompt, messages, max_new_tokens, float(temperature), adapter)
    except batcher.Rejected as exc:  # e.g. longer than the context: a 400 for this request alone
        return bad_request(exc.problems)
    reply = {"text": done.text, "prompt_tokens": done.prompt_tokens, "completion_tokens": len(done.ids),
             "finish_reason": done.finish_reason, "model": MODEL.name}
    if MODEL.adapters:
        reply["adapter"] = adapter
    return reply
