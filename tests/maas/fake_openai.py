"""A recording stand-in for the Azure OpenAI / OpenAI REST API at httpx's transport layer.

`FakeOpenAI.client()` is the `http_client` handed to `openai.OpenAI`/`openai.AzureOpenAI`: all of the openai package
runs (request building, auth headers, multipart encoding, retries, response parsing) and only the socket is
replaced. Every request is recorded as `Call(method, path, query, headers, body)` (path relative to the API base:
`/openai` for Azure, `/v1` for OpenAI, is stripped). Responses have the shape the service documents for the routes
slmops uses. What this cannot prove: that the real service accepts these bodies or how long its jobs take.
"""

from __future__ import annotations

import dataclasses
import json
import re
from urllib.parse import parse_qs, urlparse

import openai

# the http library the installed openai is built on (httpx, or its successor httpx2)
httpx = __import__(openai.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])

NOW = 1_790_000_000


@dataclasses.dataclass
class Call:
    method: str
    path: str
    query: dict
    headers: dict
    body: object  # parsed JSON, or the raw bytes of a multipart upload


def multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """The parts of a multipart/form-data body: field name -> (file name or None, content)."""
    boundary = re.search(r"boundary=([^;]+)", content_type)[1].strip('"').encode()
    parts = {}
    for chunk in body.split(b"--" + boundary)[1:-1]:
        head, _, content = chunk[2:-2].partition(b"\r\n\r\n")  # each part is \r\n<headers>\r\n\r\n<content>\r\n
        name = re.search(rb'name="([^"]+)"', head)[1].decode()
        filename = re.search(rb'filename="([^"]+)"', head)
        parts[name] = (filename[1].decode() if filename else None, content)
    return parts


class FakeOpenAI:
    def __init__(self, *, answer=None, statuses=("pending", "processed")):
        self.calls: list[Call] = []
        self.files: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.uploads: dict[str, bytes] = {}
        self.answer = answer or (lambda messages: "joyful")
        self.statuses = list(statuses)  # what GET /files/<id> answers in turn (the last one stays)
        self.fail: dict[tuple[str, str], tuple[int, dict]] = {}  # (method, path regex) -> (status, body)

    def client(self):
        return httpx.Client(transport=httpx.MockTransport(self.handle))

    def of(self, method: str, pattern: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and re.fullmatch(pattern, c.path)]

    def handle(self, request):
        url = urlparse(str(request.url))
        path = re.sub(r"^/(openai|v1)(?=/)", "", url.path)
        raw = request.read()
        content_type = request.headers.get("content-type", "")
        body = json.loads(raw) if raw and content_type.startswith("application/json") else (raw or None)
        call = Call(request.method, path, {k: v[0] for k, v in parse_qs(url.query).items()}, dict(request.headers),
                    body)
        self.calls.append(call)
        for (method, pattern), (status, answer) in self.fail.items():
            if method == request.method and re.fullmatch(pattern, path):
                return httpx.Response(status, json=answer)
        return self.route(request.method, path, call)

    def route(self, method, path, call):
        if method == "POST" and path == "/files":
            parts = multipart(call.body, call.headers["content-type"])
            name, content = parts["file"]
            assert parts["purpose"] == (None, b"fine-tune"), parts["purpose"]
            file_id = f"file-{len(self.files) + 1}"
            self.uploads[file_id] = content
            self.files[file_id] = {"id": file_id, "object": "file", "bytes": len(content), "created_at": NOW,
                                   "filename": name, "purpose": "fine-tune", "status": "pending"}
            return httpx.Response(200, json=self.files[file_id])
        if method == "GET" and (m := re.fullmatch(r"/files/([^/]+)", path)):
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            self.files[m[1]]["status"] = status
            return httpx.Response(200, json=self.files[m[1]])
        if method == "POST" and path == "/fine_tuning/jobs":
            job_id = f"ftjob-{len(self.jobs) + 1:04d}"
            body = call.body
            hyper = body.get("hyperparameters") or body.get("method", {}).get("supervised", {}).get(
                "hyperparameters", {})
            self.jobs[job_id] = {"id": job_id, "object": "fine_tuning.job", "model": body["model"], "created_at": NOW,
                                 "status": "validating_files", "training_file": body["training_file"],
                                 "validation_file": body.get("validation_file"), "fine_tuned_model": None,
                                 "finished_at": None, "organization_id": "org-1", "result_files": [],
                                 "seed": body.get("seed", 7), "trained_tokens": None, "error": None,
                                 "metadata": body.get("metadata"),
                                 "hyperparameters": {"n_epochs": hyper.get("n_epochs", "auto")}}
            return httpx.Response(200, json=self.jobs[job_id])
        if m := re.fullmatch(r"/fine_tuning/jobs/([^/]+)(/\w+)?", path):
            job = self.jobs.get(m[1])
            if job is None:
                return httpx.Response(404, json={"error": {"code": "NotFound", "message": f"job {m[1]} not found"}})
            if method == "GET" and m[2] is None:
                return httpx.Response(200, json=job)
            if method == "POST" and m[2] == "/cancel":
                job["status"] = "cancelled"
                return httpx.Response(200, json=job)
            if method == "GET" and m[2] == "/events":
                events = [{"id": f"ftevent-{i}", "object": "fine_tuning.job.event", "created_at": NOW + i,
                           "level": "info", "message": message}
                          for i, message in enumerate(["Validating training file", "Fine-tuning job started",
                                                       "Step 10/30: training loss=0.41"])]
                return httpx.Response(200, json={"object": "list", "data": list(reversed(events)),
                                                 "has_more": False})
            if method == "GET" and m[2] == "/checkpoints":
                data = [{"id": "ftckpt-1", "object": "fine_tuning.job.checkpoint", "created_at": NOW,
                         "fine_tuned_model_checkpoint": f"ft:{job['model']}:org-1::ckpt-step-10",
                         "fine_tuning_job_id": job["id"], "step_number": 10,
                         "metrics": {"step": 10, "train_loss": 0.41, "valid_loss": 0.52}}]
                return httpx.Response(200, json={"object": "list", "data": data, "has_more": False,
                                                 "first_id": "ftckpt-1", "last_id": "ftckpt-1"})
        if method == "POST" and (m := re.fullmatch(r"(/deployments/([^/]+))?/chat/completions", path)):
            messages = call.body["messages"]
            text = self.answer(messages)
            prompt_tokens = sum(len(msg["content"].split()) + 4 for msg in messages)
            return httpx.Response(200, json={
                "id": "chatcmpl-1", "object": "chat.completion", "created": NOW, "model": call.body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 2,
                          "total_tokens": prompt_tokens + 2}})
        return httpx.Response(404, json={"error": {"code": "NotFound", "message": f"{method} {path} not found"}})
