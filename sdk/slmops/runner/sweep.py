"""Sweep nodes (`type: sweep`) run locally with Azure ML's semantics: sampling, trials, early termination, limits.

    from slmops.runner.sweep import run_sweep
    result = run_sweep(spec, start_trial, log)                        # raises UserError when nothing usable
    result.best_index, result.best_params, result.best_metric, result.best_outputs, result.trials
    print(trials_table(json.loads(Path("<run>/<node>/sweep.json").read_text()), "eval_loss"))

`spec` is the sweep node as a plain dict; its shape and the semantics (search space expressions, sampling, early
termination, limits, which trial is best) are written down once, in `slmops.pipeline.sweep_spec`, which reads and
checks it. The primary metric is read from each trial's MLflow run; a terminated trial is killed and recorded as
`early_terminated`; the best trial is the best completed one that logged the metric (only it has outputs).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slmops.errors import UserError
from slmops.pipeline.sweep_spec import Policy, SweepConfig, is_int, read_sweep

POLL_SECONDS = 0.2
METRIC_POLL_SECONDS = 1.0


@dataclass
class SweepResult:
    """What a sweep produced. `trials`: one dict per started trial (index, params, status, metric, run_id, seconds)."""

    best_index: int
    best_params: dict
    best_metric: float
    best_outputs: dict
    best_run_id: str
    trials: list[dict]

# --------------------------------------------------------------------------------------------------------------
# Sampling (pure)


def sample_value(expr: dict, rng: random.Random):
    """One draw from a search space expression, as Azure ML's random sampling defines it."""
    kind = expr["type"]
    if kind == "choice":
        return expr["values"][rng.randrange(len(expr["values"]))]
    if kind == "randint":
        return rng.randrange(int(expr["upper"]))
    if kind in ("uniform", "loguniform", "quniform", "qloguniform"):
        value = rng.uniform(expr["min_value"], expr["max_value"])
    else:
        value = rng.gauss(expr["mu"], expr["sigma"])
    if kind in ("loguniform", "qloguniform", "lognormal", "qlognormal"):
        value = math.exp(value)
    if "q" in expr:
        value = round(value / expr["q"]) * expr["q"]
        if is_int(expr["q"]):
            value = int(value)
    return value


def grid_points(search_space: dict) -> list[dict]:
    """Every combination of the choice values, names in sorted order, the last name varying fastest."""
    names = sorted(search_space)
    return [dict(zip(names, combo)) for combo in itertools.product(*(search_space[n]["values"] for n in names))]


def trial_params(config: SweepConfig) -> list[dict]:
    """The parameters of every trial the sweep may start, in order (deterministic for the config)."""
    if config.algorithm == "grid":
        return grid_points(config.search_space)[: config.max_total_trials]
    rng = random.Random(config.seed)
    names = sorted(config.search_space)
    return [{n: sample_value(config.search_space[n], rng) for n in names} for _ in range(config.max_total_trials)]


# --------------------------------------------------------------------------------------------------------------
# Early termination (pure): decisions over metric histories


def is_evaluation_point(policy: Policy, interval: int) -> bool:
    """Azure ML applies a policy at every multiple of evaluation_interval that is >= delay_evaluation."""
    return interval >= max(1, policy.delay_evaluation) and interval % policy.evaluation_interval == 0


def termination_reason(policy: Policy, goal: str, histories: dict[int, list[float]], index: int,
                       interval: int) -> str | None:
    """Why trial `index` should stop at `interval` (1-based count of its logged values), or None to keep it.

    `histories` holds every trial's values so far (finished and terminated trials included); each is compared
    only up to `interval`, and only trials that reached `interval` take part.
    """
    sign = 1.0 if goal == "maximize" else -1.0  # compare in "higher is better" space
    peers = {i: h[:interval] for i, h in histories.items() if len(h) >= interval}
    if index not in peers or not is_evaluation_point(policy, interval):
        return None
    best_so_far = {i: max(sign * v for v in h) * sign for i, h in peers.items()}
    mine = best_so_far[index]
    better = max if goal == "maximize" else min

    if policy.type == "bandit":
        leader = better(best_so_far.values())
        if mine == leader:
            return None
        if policy.slack_amount is not None:
            limit = leader - sign * policy.slack_amount
        else:
            limit = leader / (1 + policy.slack_factor) if goal == "maximize" else leader * (1 + policy.slack_factor)
        if sign * mine < sign * limit:
            return f"bandit: best {mine:.6g} at interval {interval} is outside the slack of the best trial's " \
                   f"{leader:.6g} (limit {limit:.6g})"
        return None

    if policy.type == "median_stopping":
        median = statistics.median(statistics.fmean(h) for h in peers.values())
        if sign * mine < sign * median:
            return f"median_stopping: best {mine:.6g} at interval {interval} is worse than the median " \
                   f"{median:.6g} of the running averages"
        return None

    # truncation_selection: the lowest truncation_percentage % of the values at this interval
    ranked = sorted(peers, key=lambda i: (sign * peers[i][-1], -i))  # worst first; ties: the later trial first
    cut = int(len(ranked) * policy.truncation_percentage // 100)
    if index in ranked[:cut]:
        return f"truncation_selection: value {peers[index][-1]:.6g} at interval {interval} is in the lowest " \
               f"{policy.truncation_percentage}% of {len(ranked)} trials"
    return None


def best_trial(records: list[dict], goal: str) -> dict | None:
    """The best completed trial that logged the metric (ties: the lowest index), or None."""
    usable = [r for r in records if r["status"] == "completed" and r["metric"] is not None]
    if not usable:
        return None
    sign = 1.0 if goal == "maximize" else -1.0
    return max(usable, key=lambda r: (sign * r["metric"], -r["index"]))


# --------------------------------------------------------------------------------------------------------------
# Orchestration


def mlflow_history_reader(metric: str) -> Callable[[str], list[float]]:
    """Read a run's values of `metric` from MLflow (MLFLOW_TRACKING_URI), in logging order."""
    from mlflow import MlflowClient

    client = MlflowClient()

    def read(run_id: str) -> list[float]:
        history = client.get_metric_history(run_id, metric)
        return [m.value for m in sorted(history, key=lambda m: (m.step, m.timestamp))]

    return read


def run_sweep(spec: dict, start_trial, log, *, read_history: Callable[[str], list[float]] | None = None,
              stop: threading.Event | None = None) -> SweepResult:
    """Run the sweep: start trials (at most max_concurrent_trials at once), stop them early as the policy says,
    honour the time limits, and return the best completed trial.

    `start_trial(index, params) -> slmops.runner.trial.Trial`; `log(message)` prints one line;
    `read_history(run_id) -> [values]` defaults to reading the primary metric from MLflow;
    `stop`: once set (e.g. by the executor when the run is aborted), running trials are killed as by the timeout
    and no more start. Should anything raise, the running trials are killed before the error propagates.
    """
    config, problems = read_sweep(spec)
    if problems:
        raise UserError("invalid sweep node", problems=problems)
    for notice in config.notices:
        log(f"notice: {notice}")
    read_history = read_history or mlflow_history_reader(config.primary_metric)
    pending = list(enumerate(trial_params(config)))
    log(f"sweep: {config.algorithm} sampling, {len(pending)} trials, {config.max_concurrent_trials} at a time, "
        f"{config.goal} {config.primary_metric}"
        + (f", early termination: {config.policy.type}" if config.policy else ""))

    started_at = time.monotonic()
    deadline = started_at + config.timeout if config.timeout else None
    running: dict[int, tuple] = {}  # index -> (trial, start time)
    histories: dict[int, list[float]] = {}
    evaluated: dict[int, int] = {}  # index -> last interval the policy looked at
    records: dict[int, dict] = {}
    trials: dict[int, object] = {}
    last_metric_poll = -math.inf

    def read(index: int, trial) -> list[float]:
        """The trial's metric values; on a read error (e.g. sqlite busy) the values read before."""
        try:
            histories[index] = read_history(trial.run_id)
        except Exception as exc:
            log(f"trial {index}: could not read metric '{config.primary_metric}' yet: {exc}")
        return histories.get(index) or []

    def finish(index: int, status: str, detail: str = "") -> None:
        trial, began = running.pop(index)
        if status not in ("completed", "failed"):
            trial.kill()
        values = read(index, trial)
        records[index] = {"index": index, "params": trial.params, "status": status,
                          "metric": values[-1] if values else None, "run_id": trial.run_id,
                          "seconds": round(time.monotonic() - began, 3)}
        shown = "no metric" if not values else f"{config.primary_metric}={values[-1]:.6g}"
        log(f"trial {index} {status} ({shown}, {time.monotonic() - began:.1f}s){': ' + detail if detail else ''}")

    try:
        while pending or running:
            now = time.monotonic()
            for index in sorted(running):
                trial, began = running[index]
                code = trial.poll()
                if code is not None:
                    finish(index, "completed" if code == 0 else "failed", "" if code == 0 else f"exit code {code}")
                elif config.trial_timeout and now - began >= config.trial_timeout:
                    finish(index, "timed_out", f"trial_timeout {config.trial_timeout}s")

            timed_out = deadline is not None and now >= deadline
            if timed_out or (stop is not None and stop.is_set()):
                reason = f"sweep timeout ({config.timeout}s)" if timed_out else "sweep stopped"
                log(f"{reason}: canceling {len(running)} running trial(s), {len(pending)} not started")
                for index in sorted(running):
                    finish(index, "canceled", reason)
                break

            if config.policy and running and now - last_metric_poll >= METRIC_POLL_SECONDS:
                last_metric_poll = now
                for index in sorted(running):
                    read(index, running[index][0])
                for index in sorted(running):
                    for interval in range(evaluated.get(index, 0) + 1, len(histories.get(index, [])) + 1):
                        evaluated[index] = interval
                        reason = termination_reason(config.policy, config.goal, histories, index, interval)
                        if reason:
                            finish(index, "early_terminated", reason)
                            break

            while pending and len(running) < config.max_concurrent_trials:
                index, params = pending.pop(0)
                log(f"trial {index} started: " + ", ".join(f"{k}={v!r}" for k, v in params.items()))
                trials[index] = start_trial(index, params)
                running[index] = (trials[index], time.monotonic())

            if running:
                time.sleep(POLL_SECONDS)
    except BaseException:
        for trial, _ in running.values():
            trial.kill()
        raise

    ordered = [records[i] for i in sorted(records)]
    best = best_trial(ordered, config.goal)
    if best is None:
        raise UserError(
            f"sweep: no completed trial logged the primary metric '{config.primary_metric}'; log it from the "
            f"trial with mlflow.log_metric('{config.primary_metric}', value) and check the trials' logs",
            problems=[f"trial {r['index']}: {r['status']}, metric {r['metric']}" for r in ordered])
    log(f"sweep: best trial {best['index']} {config.primary_metric}={best['metric']:.6g} "
        + ", ".join(f"{k}={v!r}" for k, v in best["params"].items()))
    return SweepResult(best["index"], best["params"], best["metric"], dict(trials[best["index"]].outputs),
                       best["run_id"], ordered)


# --------------------------------------------------------------------------------------------------------------
# Comparing the trials (pure): hyper-parameters against the objective


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def trials_table(record: dict, metric: str) -> str:
    """A markdown table of a sweep's trials (`<run>/<node>/sweep.json`): one row a trial, its sampled
    hyper-parameters, status, last value of the objective and seconds; the best trial marked with *."""
    names = sorted({name for trial in record["trials"] for name in trial["params"]})
    header = ["trial", *names, metric, "status", "seconds"]
    rows = [[f"{t['index']}{' *' if t['index'] == record['best_index'] else ''}",
             *(_cell(t["params"].get(name)) for name in names), _cell(t["metric"]), t["status"],
             _cell(float(t["seconds"]))] for t in record["trials"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def write_trials_tables(graph, run_dir: Path) -> list[str]:
    """For each sweep node that ran in `run_dir` (a reused one has no sweep.json there): its trials table, written
    to `<run>/<node>/sweep.md` and returned with a title line, for the run summary."""
    texts = []
    for name, node in graph.nodes.items():
        found = Path(run_dir) / name / "sweep.json"
        if node.kind != "sweep" or not found.is_file():
            continue
        record = json.loads(found.read_text())
        objective = (node.sweep or {}).get("objective") or {}
        metric = objective.get("primary_metric", "metric")
        title = (f"sweep {name}: {len(record['trials'])} trial(s), {objective.get('goal', '')} {metric}; best trial "
                 f"{record['best_index']} (*), its MLflow run {record['best_run_id']}")
        table = trials_table(record, metric)
        (found.parent / "sweep.md").write_text(f"# {title}\n\n{table}\n")
        texts.append(f"{title}\n{table}")
    return texts
