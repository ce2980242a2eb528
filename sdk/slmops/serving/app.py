"""The WSGI app `slmops serve` runs under gunicorn: the Azure ML inference server's own Flask app
(`azureml_inference_server_http.server.entry:app`, what `azmlinfsrv` runs) behind a gate, as a managed online
endpoint's gateway does it.

    routes without a key:  GET /  (azmlinfsrv liveness)   GET /health/live   GET /health/ready
    every other route:     `Authorization: Bearer <key>` or 401

Every request goes through these checks before the inference server sees it; each refusal is a 4xx whose JSON
body says why (the inference server itself answers 500 to some of these):

    a credential in the query string (?key=, ?api_key=, ?token=, ... or the key itself)   401, redacted from the log
    missing or wrong key                                                                   401
    a Content-Length that is not a number                                                  400
    a body (Content-Length or chunked) over the cap                                        413
    a JSON body that is not UTF-8, nests deeper than MAX_JSON_DEPTH, holds a number over Python's 4300-digit limit,
    or an unpaired surrogate escape ("\\ud800")                                             400

Bodies are read here (up to the cap) and handed on whole, so a chunked body is capped like any other. A refused
body is read to its end (up to DRAIN_LIMIT) first, so the client gets the answer instead of a reset connection.

gunicorn calls build() in each worker with the environment `slmops.serving.serve` sets:
SLMOPS_ENDPOINT_KEY, SLMOPS_MAX_BODY_BYTES, SLMOPS_LOAD_ERROR_FILE and the inference server's
AZUREML_ENTRY_SCRIPT/AZUREML_MODEL_DIR. Importing the server's app runs the scoring script's init(), so a worker
answers only once the model is loaded; when loading fails, the reason is written to SLMOPS_LOAD_ERROR_FILE for
`slmops serve` to report (exit 2).
"""

from __future__ import annotations

import hmac
import io
import json
import os
import re
import urllib.parse

OPEN_ROUTES = {"/", "/health/live", "/health/ready"}
MAX_JSON_DEPTH = 64
DRAIN_LIMIT = 64 * 1024 * 1024  # a refused body up to this size is read to its end so the client sees the answer
# Query parameters that carry credentials in common APIs; a key is accepted only in the Authorization header.
CREDENTIAL_PARAMS = {"key", "api_key", "api-key", "apikey", "access_token", "token", "auth", "authorization",
                     "bearer", "code", "subscription-key", "secret", "password", "sig"}
REDACTED = "REDACTED"
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKETS = re.compile(r"[\[\]{}]")


def _reply(start_response, status: str, body: dict, extra_headers=()):
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                            *extra_headers])
    return [data]


def _bad_request(start_response, problem: str):
    return _reply(start_response, "400 Bad Request", {"error": "bad request", "problems": [problem]})


def json_depth(text: str, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep the arrays/objects of a JSON text nest (stops counting once past `limit`); strings are skipped."""
    depth = deepest = 0
    for ch in _BRACKETS.findall(_STRING.sub('""', text)):
        if ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        else:
            depth -= 1
    return deepest


def json_problem(body: bytes) -> str | None:
    """Why a JSON body must be refused before the inference server parses it, or None. Plain syntax errors are
    left to the server (it answers 400 'could not be decoded as JSON')."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (f"the body is not valid UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start}); "
                f"send JSON encoded as UTF-8")
    if json_depth(text) > MAX_JSON_DEPTH:
        return f"the JSON nests arrays/objects deeper than {MAX_JSON_DEPTH} levels (the depth limit)"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    except ValueError as exc:  # e.g. an integer longer than Python's 4300-digit limit
        return f"the JSON holds a value that cannot be read: {exc}"
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "a JSON string holds an unpaired surrogate escape (such as \\ud800), which is not text"
    return None


def _credential_in_query(query: str, key: str) -> bool:
    if key and key in urllib.parse.unquote_plus(query):
        return True
    return any(name.lower() in CREDENTIAL_PARAMS for name, _ in urllib.parse.parse_qsl(query, keep_blank_values=True))


def redact_query(query: str, key: str) -> str:
    """`query` with credential parameters' values and the key itself replaced by REDACTED."""
    parts = []
    for part in query.split("&"):
        name, sep, value = part.partition("=")
        if urllib.parse.unquote_plus(name).lower() in CREDENTIAL_PARAMS:
            value = REDACTED
        parts.append(name + sep + value)
    out = "&".join(parts)
    return out.replace(key, REDACTED) if key else out


def _redact(environ, key: str) -> None:
    """Rewrite the URL fields gunicorn's access log and the inference server's request log read."""
    query = environ.get("QUERY_STRING", "")
    clean = redact_query(query, key)
    if urllib.parse.quote(key, safe="") != key:
        clean = clean.replace(urllib.parse.quote(key, safe=""), REDACTED)
    environ["QUERY_STRING"] = clean
    for field in ("RAW_URI", "REQUEST_URI"):
        if field in environ:
            path, sep, _ = environ[field].partition("?")
            environ[field] = path + sep + clean


def _read(stream, limit: int) -> bytes:
    """Up to `limit` bytes from a WSGI input (gunicorn de-chunks a chunked body and ends it)."""
    chunks, n = [], 0
    while n < limit:
        block = stream.read(min(65536, limit - n))
        if not block:
            break
        chunks.append(block)
        n += len(block)
    return b"".join(chunks)


def _drain(environ) -> None:
    """Read and drop what is left of the body (up to DRAIN_LIMIT), so the client can read our answer."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return
    length = environ.get("CONTENT_LENGTH") or ""
    if length.isdigit() and int(length) > DRAIN_LIMIT:
        return
    left = DRAIN_LIMIT
    try:
        while left > 0 and (block := stream.read(min(65536, left))):
            left -= len(block)
    except OSError:
        pass


def with_key_auth(inner, key: str, max_body_bytes: int):
    """Wrap the WSGI app `inner`: health routes open, everything else needs the bearer key; bodies capped and
    checked (see the module docstring)."""
    if not key:
        raise ValueError("an endpoint key is required")
    expected = f"Bearer {key}".encode()

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        query = environ.get("QUERY_STRING", "")
        if query and _credential_in_query(query, key):
            _redact(environ, key)
            _drain(environ)
            return _reply(start_response, "401 Unauthorized",
                          {"message": "keys are accepted only in the Authorization header ('Authorization: Bearer "
                                      "<key>'), never in the URL, where logs and browser histories keep them; "
                                      "this request was refused and the key redacted from the log (rotate the key "
                                      "if the URL was shared)"},
                          [("WWW-Authenticate", 'Bearer realm="slmops"')])
        if method == "GET" and path in ("/health/live", "/health/ready"):
            # Live: the worker answers. Ready: it answers only after the scoring script's init() has run.
            return _reply(start_response, "200 OK", {"status": path.rsplit("/", 1)[1]})
        if method == "GET" and path in OPEN_ROUTES:
            return inner(environ, start_response)
        given = environ.get("HTTP_AUTHORIZATION", "").encode()
        if not hmac.compare_digest(given, expected):
            _drain(environ)
            return _reply(start_response, "401 Unauthorized",
                          {"message": "missing or wrong key: send 'Authorization: Bearer <key>'"},
                          [("WWW-Authenticate", 'Bearer realm="slmops"')])
        length = (environ.get("CONTENT_LENGTH") or "").strip()
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if length and not length.isdigit():
            return _bad_request(start_response, f"Content-Length {length[:40]!r} is not a number of bytes")
        too_big = {"message": f"request body exceeds the limit of {max_body_bytes} bytes"}
        if length and int(length) > max_body_bytes:
            _drain(environ)
            too_big["message"] = f"request body of {length} bytes exceeds the limit of {max_body_bytes}"
            return _reply(start_response, "413 Request Entity Too Large", too_big)
        if not (length or chunked):
            return inner(environ, start_response)
        body = _read(environ.get("wsgi.input") or io.BytesIO(), max_body_bytes + 1)
        if len(body) > max_body_bytes:
            _drain(environ)
            return _reply(start_response, "413 Request Entity Too Large", too_big)
        media = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        if body and (media == "application/json" or media.endswith("+json")):
            problem = json_problem(body)
            if problem:
                return _bad_request(start_response, problem)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return inner(environ, start_response)

    return app


def _load_error_text(exc: BaseException) -> str:
    """The chain of causes, innermost (the real reason) first, one line each."""
    seen, lines = set(), []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if not isinstance(exc, SystemExit):  # the inference server exits after logging the real error
            lines.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(reversed(lines))


def build():
    """The gunicorn app factory (`gunicorn 'slmops.serving.app:build()'`); reads its settings from the env."""
    try:
        from azureml_inference_server_http.server.entry import app as aml_app
    except BaseException as exc:  # the scoring script's init() failed: tell `slmops serve` why, then fail the boot
        if os.environ.get("SLMOPS_LOAD_ERROR_FILE"):
            with open(os.environ["SLMOPS_LOAD_ERROR_FILE"], "w") as f:
                f.write(_load_error_text(exc))
        raise
    max_body = int(os.environ.get("SLMOPS_MAX_BODY_BYTES", "1048576"))
    aml_app.config["MAX_CONTENT_LENGTH"] = max_body
    return with_key_auth(aml_app, os.environ["SLMOPS_ENDPOINT_KEY"], max_body)
