"""Issue 11, item 6: every malformed body gets a 4xx with a reason, keys only in the Authorization header, a busy
port is exit 2 before anything is served. Through a real `slmops serve` process on the tiny model.

Before: JSON nested 100,000 deep, invalid UTF-8, a 5,001-digit integer -> 500; an unpaired surrogate escape ->
500 from the scoring script; a 10 MB body (chunked or with Content-Length) -> connection reset (BrokenPipeError);
`?key=<key>` with the header -> 200, and the key written to the access log; a busy port -> "serving ..." printed,
then gunicorn retried for 5 s and exited 1."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess

import pytest

from slmops.serving import app as gate
from tests.reliability.conftest import KEY

OK = b'{"prompt": "hi", "max_new_tokens": 1}'
MB10 = json.dumps({"prompt": "x" * 10_000_000}).encode()


def send(server, body: bytes, *, path="/score", headers=None, chunked=False, auth=True):
    """POST through http.client (so bodies can be chunked); returns (status, reply text)."""
    h = {"Content-Type": "application/json", **(headers or {})}
    if auth:
        h["Authorization"] = f"Bearer {server.key}"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    try:
        if chunked:
            conn.request("POST", path, body=(body[i:i + 65536] for i in range(0, len(body), 65536)), headers=h,
                         encode_chunked=True)
        else:
            conn.request("POST", path, body=body, headers=h)
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


# (id, body, send() options, status, what the reply says)
BAD_INPUT = [
    ("array nested 100000 deep", b"[" * 100_000 + b"]" * 100_000, {}, 400, "depth limit"),
    ("object nested 100000 deep", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, {}, 400, "depth limit"),
    ("nested field in a request", b'{"prompt": "hi", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", {}, 400,
     "depth limit"),
    ("nested 100000 deep, chunked", b"[" * 100_000 + b"]" * 100_000, {"chunked": True}, 400, "depth limit"),
    ("invalid UTF-8", b'{"prompt": "\xff\xfe hi"}', {}, 400, "not valid UTF-8"),
    ("invalid UTF-8, chunked", b'{"prompt": "\xc3\x28"}', {"chunked": True}, 400, "not valid UTF-8"),
    ("unpaired surrogate escape", b'{"prompt": "\\ud800"}', {}, 400, "unpaired surrogate"),
    ("5001-digit integer", b'{"prompt": "hi", "max_new_tokens": 1' + b"0" * 5000 + b"}", {}, 400, "4300"),
    ("NaN temperature", b'{"prompt": "hi", "temperature": NaN}', {}, 400, "0..2"),
    ("truncated JSON", b'{"prompt": "hi', {}, 400, "could not be decoded as JSON"),
    ("truncated JSON, chunked", b'{"prompt": "hi', {"chunked": True}, 400, "could not be decoded as JSON"),
    ("a JSON list", b"[]", {}, 400, "JSON dictionary"),
    ("empty body, chunked", b"", {"chunked": True}, 400, "empty"),
    ("10 MB chunked", MB10, {"chunked": True}, 413, "exceeds the limit"),
    ("10 MB with Content-Length", MB10, {}, 413, "exceeds the limit"),
    ("1 MiB + 1 byte chunked", b" " * (1_048_576 + 1), {"chunked": True}, 413, "exceeds the limit"),
    ("Content-Length not a number", b"{}", {"headers": {"Content-Length": "abc"}}, 400, "Bad Request"),
    ("text/plain", OK, {"headers": {"Content-Type": "text/plain"}}, 415, "application/json"),
    ("key in the query only", OK, {"path": f"/score?key={KEY}", "auth": False}, 401, "Authorization header"),
    ("key in the query and the header", OK, {"path": f"/score?api_key={KEY}"}, 401, "Authorization header"),
    ("another credential parameter", OK, {"path": "/score?access_token=abc"}, 401, "Authorization header"),
    ("key as a bare query value", OK, {"path": f"/score?x=1&{KEY}"}, 401, "Authorization header"),
    ("health probe with a key in the query", b"", {"path": f"/health/live?code={KEY}", "auth": False}, 401,
     "Authorization header"),
    ("no key", OK, {"auth": False}, 401, "Bearer"),
]


@pytest.mark.parametrize("body, opts, status, says", [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gets_a_4xx_with_a_reason(served, body, opts, status, says):
    got, reply = send(served, body, **opts)
    assert got == status, reply[:300]
    assert says in reply


def test_no_bad_input_reaches_a_5xx_and_the_server_still_answers(served):
    statuses = [send(served, body, **opts)[0] for _, body, opts, _, _ in BAD_INPUT]
    assert not [s for s in statuses if s >= 500]
    status, reply = send(served, OK)
    assert status == 200, reply


def test_a_key_in_the_query_is_redacted_from_the_log(served):
    send(served, OK, path=f"/score?key={KEY}&api_key={KEY}&n=1")
    send(served, OK, path=f"/score?x={KEY}", auth=False)
    log = served.log.read_text(errors="replace")
    assert "key=REDACTED&api_key=REDACTED&n=1" in log
    assert KEY not in log


def test_a_busy_port_is_exit_2_before_serving_is_printed(tiny_model):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = subprocess.run(["slmops", "serve", str(tiny_model), "--port", str(port)], capture_output=True,
                             text=True, timeout=120, env=dict(os.environ, SLMOPS_ENDPOINT_KEY=KEY))
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in run.stderr
    assert "serving" not in run.stdout


@pytest.mark.parametrize("text, depth", [
    ("{}", 1), ("[[[]]]", 3), ('{"a": "[[[[[["}', 1), ('["\\"[[["]', 1), ("1", 0), ('"x"', 0),
    ("[" * 100 + "]" * 100, gate.MAX_JSON_DEPTH + 1),  # counting stops past the limit
])
def test_json_depth_skips_strings(text, depth):
    assert gate.json_depth(text) == depth


@pytest.mark.parametrize("query, clean", [
    ("key=s3cr3t-key-0123456789", "key=REDACTED"),
    ("a=1&API_KEY=zzz&b=2", "a=1&API_KEY=REDACTED&b=2"),
    ("x=s3cr3t-key-0123456789", "x=REDACTED"),
    ("a=1", "a=1"),
])
def test_redact_query(query, clean):
    assert gate.redact_query(query, "s3cr3t-key-0123456789") == clean
