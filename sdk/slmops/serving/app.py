"""The WSGI app `slmops serve` runs under gunicorn: the Azure ML inference server's own Flask app
(`azureml_inference_server_http.server.entry:app`, what `azmlinfsrv` runs) behind a key check, as a managed
online endpoint's gateway does it.

    routes without a key:  GET /  (azmlinfsrv liveness)   GET /health/live   GET /health/ready
    every other route:     `Authorization: Bearer <key>` or 401; bodies over the size cap get 413

gunicorn calls build() in each worker with the environment `slmops.serving.serve` sets:
SLMOPS_ENDPOINT_KEY, SLMOPS_MAX_BODY_BYTES, and the inference server's AZUREML_ENTRY_SCRIPT/AZUREML_MODEL_DIR.
Importing the server's app runs the scoring script's init(), so a worker answers only once the model is loaded.
"""

from __future__ import annotations

import hmac
import json
import os

OPEN_ROUTES = {"/", "/health/live", "/health/ready"}


def _reply(start_response, status: str, body: dict, extra_headers=()):
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                            *extra_headers])
    return [data]


def with_key_auth(inner, key: str, max_body_bytes: int):
    """Wrap the WSGI app `inner`: health routes open, everything else needs the bearer key; bodies capped."""
    if not key:
        raise ValueError("an endpoint key is required")
    expected = f"Bearer {key}".encode()

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "GET" and path in ("/health/live", "/health/ready"):
            # Live: the worker answers. Ready: it answers only after the scoring script's init() has run.
            return _reply(start_response, "200 OK", {"status": path.rsplit("/", 1)[1]})
        if not (method == "GET" and path in OPEN_ROUTES):
            given = environ.get("HTTP_AUTHORIZATION", "").encode()
            if not hmac.compare_digest(given, expected):
                return _reply(start_response, "401 Unauthorized",
                              {"message": "missing or wrong key: send 'Authorization: Bearer <key>'"},
                              [("WWW-Authenticate", 'Bearer realm="slmops"')])
            length = environ.get("CONTENT_LENGTH") or "0"
            if not length.isdigit() or int(length) > max_body_bytes:
                return _reply(start_response, "413 Request Entity Too Large",
                              {"message": f"request body of {length} bytes exceeds the limit of {max_body_bytes}"})
        return inner(environ, start_response)

    return app


def build():
    """The gunicorn app factory (`gunicorn 'slmops.serving.app:build()'`); reads its settings from the env."""
    from azureml_inference_server_http.server.entry import app as aml_app

    max_body = int(os.environ.get("SLMOPS_MAX_BODY_BYTES", "1048576"))
    aml_app.config["MAX_CONTENT_LENGTH"] = max_body  # chunked bodies without a Content-Length are capped too
    return with_key_auth(aml_app, os.environ["SLMOPS_ENDPOINT_KEY"], max_body)

