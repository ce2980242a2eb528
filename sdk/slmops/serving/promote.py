"""Blue/green promotion of a registered model to an online endpoint, with automatic rollback.

    slmops promote models:/tone/3 --endpoint tone --dry-run            # the plan and payloads, no network
    slmops promote models:/tone/3 --endpoint tone --local              # the same roll-out on 127.0.0.1
    slmops promote models:/tone/3 --endpoint tone --mirror 10 --steps 10,50,100   # Azure ML

The roll-out (`roll_out`) is one plain sequence over an endpoint backend (slmops.serving.backends):
  0. refuse a version whose register gate did not pass (version tag gate=passed; gate=none, registered without
     thresholds, only with --allow-ungated); with --local, check its weight files against the sha256 recorded at
     registration (exit 2 naming a damaged file);
  1. make sure the endpoint exists; the slot without traffic (blue or green) is the target;
  2. deploy the model to the target slot and wait until it is healthy;
  3. smoke test the target slot only (`azureml-model-deployment: <slot>`): every request must get 200 with a
     well-formed reply. A base + adapters model (a version registered from a multi-adapter optimize: tag `adapters`,
     an `adapters/` folder) refuses requests that name no adapter, so every smoke and probe request without
     `"adapter"` is sent naming the model's first adapter (sorted; `for_adapters`); name another in
     --smoke-request;
  4. optionally mirror PCT % of live traffic to the target while probe requests run, then smoke test again;
  5. shift traffic in steps (e.g. 10, 50, 100 %); after each, probe requests through the endpoint must stay
     within the error rate;
  6. move the registry alias (`production`, or `--alias`) to the version, then retire the old slot.
Any failure in 2-6 rolls back: traffic and mirroring restored to what they were, the target slot deleted,
the alias untouched; the command exits 4.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from slmops.errors import UserError

SLOTS = ("blue", "green")
DEFAULT_SMOKE = {"messages": [{"role": "user", "content": "Hello! Reply with one word."}], "max_new_tokens": 8}
REPLY_KEYS = {"text": str, "prompt_tokens": int, "completion_tokens": int}


class RolloutFailed(UserError):
    """The roll-out failed and was rolled back. Exit code 4 so CI can tell it from bad input or a failed gate."""

    exit_code = 4


@dataclasses.dataclass(frozen=True)
class Plan:
    endpoint: str
    model: str            # what the backend deploys: azureml:NAME:VERSION (Azure) or a local model folder
    name: str             # registered model name and version whose alias moves on success
    version: str
    alias: str = "production"  # the registry alias moved to the version on success
    steps: tuple[int, ...] = (10, 50, 100)
    mirror: int = 0
    probes: int = 20
    max_error_rate: float = 0.0
    smoke_requests: tuple = (DEFAULT_SMOKE,)
    healthy_timeout_s: float = 1800
    allow_ungated: bool = False  # gate=none (registered without thresholds) accepted too


def parse_steps(text: str) -> tuple[int, ...]:
    """'10,50,100' -> (10, 50, 100): strictly increasing percentages ending at 100."""
    try:
        steps = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise UserError(f"--steps {text!r} is not a comma-separated list of integers; use e.g. 10,50,100") from None
    if not steps or steps[-1] != 100 or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
        raise UserError(f"--steps {text!r} must be strictly increasing percentages in 1..100 ending at 100, "
                        f"e.g. 10,50,100")
    return steps


def load_smoke_requests(path: Path | None) -> tuple:
    """The smoke requests: a JSON object or a list of objects in `path`, or one default chat request."""
    if path is None:
        return (DEFAULT_SMOKE,)
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--smoke-request {str(path)!r} is not a readable JSON file ({exc}); pass a file with a "
                        f"scoring request such as {json.dumps(DEFAULT_SMOKE)}") from None
    requests = data if isinstance(data, list) else [data]
    if not requests or not all(isinstance(r, dict) for r in requests):
        raise UserError(f"--smoke-request {str(path)!r} must hold a JSON object or a non-empty list of objects")
    return tuple(requests)


def pick_slots(traffic: dict[str, int]) -> tuple[str | None, str]:
    """(live slot or None, target slot): the live slot is the one with the most traffic."""
    live = max(traffic, key=traffic.get) if traffic else None
    if live is not None and live not in SLOTS:
        raise UserError(f"the endpoint's traffic goes to deployment {live!r}, not a blue/green slot; "
                        f"move its traffic to a deployment named 'blue' or 'green' first")
    return live, ("green" if live == "blue" else "blue")


def traffic_steps(plan: Plan, live: str | None, target: str) -> list[dict[str, int]]:
    """The traffic split after each step; a first deployment (nothing live) goes straight to 100 %."""
    if live is None:
        return [{target: 100}]
    return [{target: pct, live: 100 - pct} for pct in plan.steps]


def check_reply(status: int, reply) -> str | None:
    """None for a well-formed 200 scoring reply, else what is wrong with it."""
    if status != 200:
        return f"HTTP {status}: {str(reply)[:300]}"
    if not isinstance(reply, dict) or any(not isinstance(reply.get(k), t) for k, t in REPLY_KEYS.items()):
        return f"malformed reply (want {sorted(REPLY_KEYS)}): {str(reply)[:300]}"
    return None


def for_adapters(requests: tuple, adapters: list[str]) -> tuple:
    """The smoke/probe requests for a model serving `adapters` (a multi-adapter endpoint answers only requests that
    name one): each request without "adapter" names the first adapter; unchanged for a single model ([])."""
    if not adapters:
        return tuple(requests)
    return tuple(r if "adapter" in r else {**r, "adapter": adapters[0]} for r in requests)


def error_rate(backend, body: dict, n: int) -> tuple[float, list[str]]:
    """Send `n` requests through the endpoint (traffic split applies); the share that failed, and why."""
    problems = [p for p in (check_reply(*backend.invoke(body)) for _ in range(n)) if p]
    return (len(problems) / n if n else 0.0), problems


def roll_out(backend, plan: Plan, move_alias, say=print) -> dict:
    """Run the roll-out (steps 1-6 above). `move_alias()` moves the alias (step 6). Returns a report."""
    say(f"[1/6] endpoint {plan.endpoint}: checking it exists")
    backend.ensure_endpoint()
    before = backend.state()
    live, target = pick_slots(before["traffic"])
    say(f"      live slot: {live or 'none (first deployment)'}, target slot: {target}, traffic {before['traffic']}")
    report = {"endpoint": plan.endpoint, "model": f"{plan.name}/{plan.version}", "live": live, "target": target,
              "steps": []}
    deployed = False
    try:
        say(f"[2/6] deploying {plan.model} to {target}")
        deployed = True  # from here on a failure deletes the target slot (deploy replaces a leftover one)
        backend.deploy(target, plan.model)
        deadline = time.monotonic() + plan.healthy_timeout_s
        while not backend.healthy(target):
            if time.monotonic() > deadline:
                raise RuntimeError(f"deployment {target} not healthy within {plan.healthy_timeout_s:.0f} s")
            time.sleep(5)
        adapters = backend.adapters(plan.model)
        requests = for_adapters(plan.smoke_requests, adapters)
        say(f"[3/6] smoke test against {target} only ({len(requests)} request(s))"
            + (f"; the model serves the adapters {adapters}: requests naming none name {adapters[0]!r}"
               if adapters else ""))
        for body in requests:
            problem = check_reply(*backend.invoke(body, deployment=target))
            if problem:
                raise RuntimeError(f"smoke test on {target} failed: {problem}")
        if plan.mirror and live:
            say(f"[4/6] mirroring {plan.mirror}% of live traffic to {target} during {plan.probes} probe requests")
            backend.set_traffic(before["traffic"], {target: plan.mirror})
            rate, problems = error_rate(backend, requests[0], plan.probes)
            backend.set_traffic(before["traffic"], {})
            if rate > plan.max_error_rate:
                raise RuntimeError(f"live slot {live} failed {rate:.0%} of probes while mirroring: {problems[:3]}")
            for body in requests:
                problem = check_reply(*backend.invoke(body, deployment=target))
                if problem:
                    raise RuntimeError(f"{target} failed after mirrored traffic: {problem}")
        else:
            say("[4/6] no mirrored traffic" + ("" if live else " (nothing live to mirror)"))
        for traffic in traffic_steps(plan, live, target):
            backend.set_traffic(traffic, {})
            rate, problems = error_rate(backend, requests[0], plan.probes)
            report["steps"].append({"traffic": traffic, "error_rate": rate})
            say(f"[5/6] traffic {traffic}: error rate {rate:.0%} over {plan.probes} probe(s)")
            if rate > plan.max_error_rate:
                raise RuntimeError(f"error rate {rate:.0%} > {plan.max_error_rate:.0%} at traffic {traffic}: "
                                   f"{problems[:3]}")
        say(f"[6/6] moving alias {plan.alias} of {plan.name} to version {plan.version}")
        report[f"previous_{plan.alias}"] = move_alias()
    except Exception as exc:
        say(f"FAILED: {exc}\nrolling back: traffic {before['traffic']}, no mirroring, deleting {target}")
        undo_problems = []
        try:
            backend.set_traffic(before["traffic"], {})
        except Exception as undo:  # keep going: the slot must still be deleted
            undo_problems.append(f"restoring traffic failed: {undo}")
        if deployed:
            try:
                backend.delete(target)
            except Exception as undo:
                undo_problems.append(f"deleting {target} failed: {undo}")
        raise RolloutFailed(f"promotion of {plan.name} version {plan.version} to {plan.endpoint} failed and was "
                            f"rolled back ({plan.alias} alias untouched): {exc}", problems=undo_problems) from exc
    if live:
        say(f"retiring the old slot {live}")
        backend.delete(live)
    report["result"] = "promoted"
    return report


def dry_run_text(backend, plan: Plan, assumed_live: str | None = "blue") -> str:
    """The plan and every payload, computed offline (the live slot is not looked up: it is assumed)."""
    live, target = pick_slots({assumed_live: 100} if assumed_live else {})
    lines = [f"promotion plan (dry run: nothing is contacted; assuming live slot {live}, so target {target}; "
             f"the roles swap if {target} is live)",
             f"  0. require tag gate=passed on {plan.name} version {plan.version}"
             + (" (or gate=none: --allow-ungated)" if plan.allow_ungated else ""),
             f"  1. ensure endpoint {plan.endpoint} exists",
             f"  2. deploy to {target}, wait healthy (up to {plan.healthy_timeout_s:.0f} s)",
             f"  3. smoke test {target} with header azureml-model-deployment: {target}",
             f"  4. " + (f"mirror {plan.mirror}% of traffic to {target}" if plan.mirror else "no mirroring"),
             "  5. traffic steps, each checked with "
             f"{plan.probes} probes, max error rate {plan.max_error_rate:.0%}: {traffic_steps(plan, live, target)}",
             f"  6. move alias {plan.alias} -> {plan.name}/{plan.version}; delete {live}",
             f"  on any failure in 2-6: restore traffic, delete the target slot, leave {plan.alias} as is",
             "payloads:",
             "  deployment:",
             _indent(json.dumps(backend.describe_deploy(target, plan.model), indent=2, default=str), 4),
             "  smoke requests (POST /score, Authorization: Bearer <endpoint key>, "
             f"azureml-model-deployment: {target}):"]
    lines += [_indent(json.dumps(body), 4) for body in plan.smoke_requests]
    lines.append("    (a base + adapters model - tag `adapters`, an adapters/ folder - gets \"adapter\": its first "
                 "adapter in every request that names none; the probes too)")
    lines.append("  endpoint traffic updates:")
    if plan.mirror:
        lines.append(_indent(json.dumps({"traffic": {live: 100}, "mirror_traffic": {target: plan.mirror}}), 4))
    lines += [_indent(json.dumps({"traffic": t, "mirror_traffic": {}}), 4) for t in traffic_steps(plan, live, target)]
    return "\n".join(lines)


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())
