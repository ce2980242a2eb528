"""The pure parts of promotion and routing: step parsing, slot choice, traffic plans, reply checks, the router's
traffic draw, and the CLI's up-front validation (every problem reported at once, exit 2)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from click.testing import CliRunner

from slmops.errors import UserError
from slmops.serving.promote import Plan, check_reply, parse_steps, pick_slots, traffic_steps
from slmops.serving.router import pick_slot


@pytest.mark.parametrize("text, steps", [("10,50,100", (10, 50, 100)), ("100", (100,)), ("1,2,100", (1, 2, 100))])
def test_parse_steps(text, steps):
    assert parse_steps(text) == steps


@pytest.mark.parametrize("text", ["", "10,50", "50,10,100", "0,100", "10,10,100", "10,x,100", "10,150"])
def test_parse_steps_rejects(text):
    with pytest.raises(UserError, match="--steps"):
        parse_steps(text)


@pytest.mark.parametrize("traffic, live, target", [
    ({}, None, "blue"),
    ({"blue": 100}, "blue", "green"),
    ({"green": 100}, "green", "blue"),
    ({"blue": 90, "green": 10}, "blue", "green"),
])
def test_pick_slots(traffic, live, target):
    assert pick_slots(traffic) == (live, target)


def test_pick_slots_refuses_foreign_deployments():
    with pytest.raises(UserError, match="not a blue/green slot"):
        pick_slots({"main": 100})


def test_traffic_steps():
    plan = Plan(endpoint="e", model="m", name="n", version="1", steps=(10, 50, 100))
    assert traffic_steps(plan, "blue", "green") == [{"green": 10, "blue": 90}, {"green": 50, "blue": 50},
                                                    {"green": 100, "blue": 0}]
    assert traffic_steps(plan, None, "blue") == [{"blue": 100}]


@pytest.mark.parametrize("status, reply, ok", [
    (200, {"text": "a", "prompt_tokens": 3, "completion_tokens": 1}, True),
    (200, {"text": "", "prompt_tokens": 3, "completion_tokens": 0}, True),
    (200, {"text": "a"}, False),
    (200, "plain text", False),
    (400, {"error": "bad request"}, False),
    (503, "no deployment", False),
])
def test_check_reply(status, reply, ok):
    assert (check_reply(status, reply) is None) == ok


def test_router_traffic_draw_follows_the_split():
    rng = random.Random(0)
    counts = Counter(pick_slot({"blue": 90, "green": 10}, rng) for _ in range(5000))
    assert set(counts) == {"blue", "green"} and 0.08 < counts["green"] / 5000 < 0.12
    assert pick_slot({}, rng) is None
    assert {pick_slot({"green": 100, "blue": 0}, rng) for _ in range(200)} == {"green"}


def test_promote_reports_every_problem_at_once(tmp_path, monkeypatch):
    from slmops.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    bad_smoke = tmp_path / "smoke.json"
    bad_smoke.write_text("[1, 2]")
    result = CliRunner().invoke(main, ["promote", "./some/folder", "--endpoint", "x", "--steps", "50,10",
                                       "--smoke-request", str(bad_smoke), "--local"])
    assert result.exit_code == 2, result.output
    for says in ("is not a registry reference", "--endpoint 'x'", "--steps '50,10'", "list of objects",
                 "no model registry"):
        assert says in result.output


def test_promote_help():
    from slmops.serving.cli import promote

    result = CliRunner().invoke(promote, ["--help"])
    assert result.exit_code == 0 and "--mirror" in result.output and "--dry-run" in result.output


def test_key_auth_wsgi_wrapper():
    """The gateway in front of the inference server's Flask app, without a server."""
    from slmops.serving.app import with_key_auth

    def inner(environ, start_response):
        start_response("200 OK", [])
        return [b"inner"]

    app = with_key_auth(inner, "k" * 20, max_body_bytes=100)
    cases = [
        ({"PATH_INFO": "/score", "REQUEST_METHOD": "POST"}, "401"),
        ({"PATH_INFO": "/score", "REQUEST_METHOD": "POST", "HTTP_AUTHORIZATION": "Bearer " + "k" * 20,
          "CONTENT_LENGTH": "10"}, "200"),
        ({"PATH_INFO": "/score", "REQUEST_METHOD": "POST", "HTTP_AUTHORIZATION": "Bearer " + "k" * 20,
          "CONTENT_LENGTH": "101"}, "413"),
        ({"PATH_INFO": "/health/ready", "REQUEST_METHOD": "GET"}, "200"),
        ({"PATH_INFO": "/", "REQUEST_METHOD": "GET"}, "200"),
        ({"PATH_INFO": "/", "REQUEST_METHOD": "POST"}, "401"),
        ({"PATH_INFO": "/swagger.json", "REQUEST_METHOD": "GET"}, "401"),
    ]
    for environ, status in cases:
        seen = []
        app(environ, lambda s, h: seen.append(s))
        assert seen[0].startswith(status), (environ, seen)
