"""Score a hosted chat deployment on the same test rows as `evaluate`: a variant in evaluate's shape.

    client = chat_client("https://my-aoai.openai.azure.com", api_key=key)       # or any OpenAI-compatible /v1 URL
    rows, problems = export.load_conversations(Path("prep_out"), export.Options(), split="test")
    variant = score(client, "tone-ft", rows, task="classification", label="hosted fine-tune (gpt-4o-mini)",
                    prices={"input_per_1m": 0.3, "output_per_1m": 1.2})

Each test row is sent once, one request at a time (batch size 1, like evaluate's latency), with every turn but the
final assistant answer, at temperature 0. The variant has evaluate's keys (`label`, `split`, `n`, `accuracy`,
`accuracy_ci` (Wilson), `macro_f1`, `macro_f1_ci`, `labels`, `confusion_matrix` - or `bleu`, `rouge_l`, `rouge_l_ci` -
`prompt_tokens_mean`, `generated_tokens_mean`, `latency_ms`, `generated_tokens_per_s`) plus `latency_p95_ms`,
`cost_per_1k_requests` (from the token prices, None when not priced), `endpoint` (scheme and host only),
`deployment` and `errors` (requests that failed, with the row's file:line). Token counts are the service's `usage`.
"""

from __future__ import annotations

import time
from urllib.parse import urlparse

from slmops import metrics
from slmops.maas.openai_ft import DEFAULT_API_VERSION, is_azure_host, require_openai



def chat_client(endpoint: str, *, api_key: str | None = None, token_provider=None, api_version: str | None = None,
                http_client=None, max_retries: int = 2):
    """AzureOpenAI for an Azure OpenAI resource URL (no /v1 path); OpenAI(base_url=...) for any OpenAI-compatible
    endpoint (OpenAI, Azure `.../openai/v1`, Foundry serverless `.../v1`, vLLM/Kaito)."""
    openai = require_openai()
    path = urlparse(endpoint).path.rstrip("/")
    if is_azure_host(endpoint) and not path.endswith("/v1"):
        return openai.AzureOpenAI(azure_endpoint=endpoint.rstrip("/"), api_version=api_version or DEFAULT_API_VERSION,
                                  api_key=api_key, azure_ad_token_provider=None if api_key else token_provider,
                                  http_client=http_client, max_retries=max_retries)
    return openai.OpenAI(base_url=endpoint.rstrip("/"), api_key=api_key or "unused", http_client=http_client,
                         max_retries=max_retries)


def reference(conversation, task: str) -> str:
    if task == "classification" and conversation.label is not None:
        return conversation.label
    return conversation.messages[-1]["content"].strip()


def cost_per_1k(prompt_tokens: float, completion_tokens: float, prices: dict | None) -> float | None:
    """Dollars per 1,000 requests at the mean tokens per request; None without both token prices."""
    if not prices or prices.get("input_per_1m") is None or prices.get("output_per_1m") is None:
        return None
    return round(1000 * (prompt_tokens * prices["input_per_1m"] + completion_tokens * prices["output_per_1m"]) / 1e6,
                 6)


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[max(0, -(-len(s) * 95 // 100) - 1)]


def score(client, deployment: str, conversations: list, *, task: str, label: str, max_tokens: int = 32,
          prices: dict | None = None, endpoint: str | None = None, clock=time.perf_counter,
          progress=None) -> dict:
    """Send each conversation (without its final answer) to `deployment`; return the variant."""
    openai = require_openai()
    predictions, references, seconds, prompt_tokens, completion_tokens, errors = [], [], [], [], [], []
    for i, conversation in enumerate(conversations):
        start = clock()
        try:
            response = client.chat.completions.create(model=deployment, messages=conversation.messages[:-1],
                                                      max_tokens=max_tokens, temperature=0)
        except openai.APIStatusError as exc:
            errors.append(f"{conversation.where}: HTTP {exc.status_code}: {str(exc)[:200]}")
            continue
        seconds.append(clock() - start)
        predictions.append((response.choices[0].message.content or "").strip())
        references.append(reference(conversation, task))
        usage = response.usage
        prompt_tokens.append(usage.prompt_tokens if usage else 0)
        completion_tokens.append(usage.completion_tokens if usage else 0)
        if progress:
            progress(i + 1, len(conversations))
    n = len(predictions)
    variant = {"label": label, "split": "test", "n": n, "deployment": deployment,
               "endpoint": _public(endpoint) if endpoint else None, "errors": errors}
    if n == 0:
        return variant
    variant.update(metrics.quality(task, predictions, references))
    mean_prompt, mean_completion = sum(prompt_tokens) / n, sum(completion_tokens) / n
    total = sum(seconds)
    variant.update({
        "prompt_tokens_mean": mean_prompt, "generated_tokens_mean": mean_completion,
        "latency_ms": 1000 * total / n, "latency_p95_ms": 1000 * _p95(seconds),
        "generated_tokens_per_s": sum(completion_tokens) / total if total > 0 else None, "latency_samples": n,
        "cost_per_1k_requests": cost_per_1k(mean_prompt, mean_completion, prices),
        "prices": prices or None,
    })
    return variant


def _public(endpoint: str) -> str:
    """Scheme and host of the endpoint: no path, query or credentials go into reports."""
    parts = urlparse(endpoint)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
