"""Sweep nodes (`type: sweep`) run locally with Azure ML's semantics.

    from local_runner.sweep import run_sweep, validate_sweep
    problems = validate_sweep(spec, trial_input_names={"x", "lr"})   # for `slmops validate`
    result = run_sweep(spec, start_trial, log)                        # raises UserError when nothing usable
    result.best_index, result.best_params, result.best_metric, result.best_outputs, result.trials

`spec` is the sweep node as a plain dict, shaped like the YAML (and like azure-ai-ml's `Sweep._to_dict()`):

    search_space:        {name: {type: choice, values: [...]} | {type: uniform, min_value, max_value} | ...}
    sampling_algorithm:  random | grid | bayesian | {type: random, seed: N, rule: random|sobol}
    objective:           {primary_metric: str, goal: maximize|minimize}
    limits:              {max_total_trials, max_concurrent_trials, timeout (s), trial_timeout (s)}
    early_termination:   None | {type: bandit, slack_factor|slack_amount, evaluation_interval, delay_evaluation}
                         | {type: median_stopping, ...} | {type: truncation_selection, truncation_percentage, ...}

Semantics (as Azure ML documents them):
- Search space expressions: choice(values), randint(upper) -> [0, upper), uniform(min_value, max_value),
  loguniform -> exp(uniform(min_value, max_value)) (the bounds are exponents), quniform/qloguniform (rounded
  to a multiple of q), normal(mu, sigma), lognormal -> exp(normal), qnormal/qlognormal.
- Grid sampling enumerates every combination and accepts only `choice`. Random sampling is deterministic for
  its seed (default 0, so local runs are reproducible and cacheable). Bayesian sampling needs the Azure ML
  service: locally it is replaced by random sampling, with a notice.
- The primary metric is read from each trial's MLflow run: the last value logged decides the best trial; every
  logged value is one "interval" for early termination.
- An early termination policy is applied at every interval N that is a multiple of `evaluation_interval` and
  `>= delay_evaluation`. At interval N a trial is compared only with the first N values of the other trials:
  bandit: its best value so far is outside the slack of the best trial's best value so far
    (maximize: value < best / (1 + slack_factor) or value < best - slack_amount; minimize mirrored);
  median_stopping: its best value so far is worse than the median of all trials' running averages over 1..N;
  truncation_selection: its value at N ranks in the lowest `truncation_percentage` % of the trials' values at N.
  A terminated trial is killed and recorded as `early_terminated`.
- Limits: at most `max_total_trials` trials (grid: the grid's size when unset; random: required),
  `max_concurrent_trials` at once (locally 1 when unset), `trial_timeout` kills a trial (`timed_out`),
  `timeout` stops launching and kills running trials (`canceled`).
- The best trial is the best *completed* trial (exit code 0) that logged the metric: only it has outputs. The
  sweep fails (UserError) when no completed trial logged the metric.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from slmops.errors import UserError

DEFAULT_SEED = 0
POLL_SECONDS = 0.2
METRIC_POLL_SECONDS = 1.0

# Search space expression type -> its required parameters (Azure ML YAML names).
EXPRESSIONS: dict[str, tuple[str, ...]] = {
    "choice": ("values",),
    "randint": ("upper",),
    "uniform": ("min_value", "max_value"),
    "loguniform": ("min_value", "max_value"),
    "quniform": ("min_value", "max_value", "q"),
    "qloguniform": ("min_value", "max_value", "q"),
    "normal": ("mu", "sigma"),
    "lognormal": ("mu", "sigma"),
    "qnormal": ("mu", "sigma", "q"),
    "qlognormal": ("mu", "sigma", "q"),
}
POLICY_FIELDS: dict[str, tuple[str, ...]] = {
    "bandit": ("slack_factor", "slack_amount", "evaluation_interval", "delay_evaluation"),
    "median_stopping": ("evaluation_interval", "delay_evaluation"),
    "truncation_selection": ("truncation_percentage", "evaluation_interval", "delay_evaluation"),
}
SAMPLING = ("random", "grid", "bayesian")
LIMIT_FIELDS = ("max_total_trials", "max_concurrent_trials", "timeout", "trial_timeout")


@dataclass
class Policy:
    """An early termination policy, read from the node's `early_termination`."""

    type: str
    evaluation_interval: int = 1
    delay_evaluation: int = 0
    slack_factor: float | None = None
    slack_amount: float | None = None
    truncation_percentage: float | None = None


@dataclass
class SweepConfig:
    """The sweep node, validated."""

    search_space: dict[str, dict]
    algorithm: str  # "random" or "grid" (bayesian is run as random)
    seed: int
    primary_metric: str
    goal: str  # "maximize" or "minimize"
    max_total_trials: int
    max_concurrent_trials: int
    timeout: float | None
    trial_timeout: float | None
    policy: Policy | None
    notices: list[str] = field(default_factory=list)


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
# Reading and validating the node


def _clean(d) -> dict:
    """A mapping without its None values (azure-ai-ml's dicts carry unset fields as None)."""
    return {k: v for k, v in (d or {}).items() if v is not None} if isinstance(d, dict) else d


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return _is_number(value) and float(value).is_integer()


def _read_search_space(spec: dict, trial_input_names, problems: list[str]) -> dict[str, dict]:
    """The well-formed expressions of `search_space` (types lower-cased); problems appended."""
    space = _clean(spec.get("search_space"))
    if not isinstance(space, dict) or not space:
        problems.append("search_space: must map at least one trial input to an expression, "
                        "e.g. {learning_rate: {type: loguniform, min_value: -9, max_value: -4}}")
        return {}
    good: dict[str, dict] = {}
    for name, expr in space.items():
        where = f"search_space.{name}"
        if trial_input_names is not None and name not in trial_input_names:
            known = ", ".join(sorted(trial_input_names)) or "(none)"
            problems.append(f"{where}: the trial component has no input '{name}'; its inputs are: {known}")
        expr = _clean(expr)
        if not isinstance(expr, dict) or "type" not in expr:
            problems.append(f"{where}: expected {{type: choice|uniform|..., ...}}, got {expr!r}")
            continue
        kind = str(expr["type"]).lower()
        if kind not in EXPRESSIONS:
            problems.append(f"{where}.type: unknown expression '{expr['type']}'; use one of "
                            + ", ".join(EXPRESSIONS))
            continue
        required = EXPRESSIONS[kind]
        for key in sorted(set(expr) - set(required) - {"type"}):
            problems.append(f"{where}.{key}: not a field of {kind}; its fields are: " + ", ".join(required))
        missing = [k for k in required if k not in expr]
        if missing:
            problems.append(f"{where}: {kind} needs " + ", ".join(missing))
            continue
        good[name] = {**expr, "type": kind}
        if kind == "choice":
            if not isinstance(expr["values"], list) or not expr["values"]:
                problems.append(f"{where}.values: must be a non-empty list, got {expr['values']!r}")
            continue
        bad = [k for k in required if not _is_number(expr[k])]
        if bad:
            problems.append(f"{where}: " + ", ".join(f"{k}={expr[k]!r}" for k in bad) + " must be numbers")
            continue
        if kind == "randint" and (not _is_int(expr["upper"]) or expr["upper"] < 1):
            problems.append(f"{where}.upper: must be an integer >= 1, got {expr['upper']!r}")
        if "min_value" in required and expr["min_value"] > expr["max_value"]:
            problems.append(f"{where}: min_value {expr['min_value']} is above max_value {expr['max_value']}")
        if "sigma" in required and expr["sigma"] < 0:
            problems.append(f"{where}.sigma: must be >= 0, got {expr['sigma']}")
        if "q" in required and expr["q"] <= 0:
            problems.append(f"{where}.q: must be > 0, got {expr['q']}")
    return good


def _read_sampling(spec: dict, space: dict, problems: list[str], notices: list[str]) -> tuple[str, int]:
    """(algorithm, seed) from `sampling_algorithm`; bayesian becomes random with a notice."""
    sampling = _clean(spec.get("sampling_algorithm", "random"))
    if isinstance(sampling, str):
        sampling = {"type": sampling}
    if not isinstance(sampling, dict) or "type" not in sampling:
        problems.append(f"sampling_algorithm: expected random, grid, bayesian or {{type: random, seed: N}}, "
                        f"got {sampling!r}")
        return "random", DEFAULT_SEED
    algorithm = str(sampling["type"]).lower()
    if algorithm not in SAMPLING:
        problems.append(f"sampling_algorithm.type: unknown '{sampling['type']}'; use random, grid or bayesian")
    allowed = {"type", "seed", "rule"} if algorithm == "random" else {"type"}
    for key in sorted(set(sampling) - allowed):
        problems.append(f"sampling_algorithm.{key}: not a field of {algorithm} sampling")
    seed = sampling.get("seed", DEFAULT_SEED)
    if not _is_int(seed):
        problems.append(f"sampling_algorithm.seed: must be an integer, got {seed!r}")
        seed = DEFAULT_SEED
    rule = str(sampling.get("rule", "random")).lower()
    if rule not in ("random", "sobol"):
        problems.append(f"sampling_algorithm.rule: unknown '{sampling['rule']}'; use random or sobol")
    elif rule == "sobol":
        notices.append("sampling rule 'sobol' is not available locally: plain random sampling is used")
    if algorithm == "bayesian":
        notices.append(f"bayesian sampling needs the Azure ML service: running random sampling (seed {seed}) "
                       "locally instead")
        algorithm = "random"
    if algorithm == "grid":
        for name, expr in space.items():
            if expr["type"] != "choice":
                problems.append(f"search_space.{name}: grid sampling supports only choice, got {expr['type']}; "
                                "use choice or sampling_algorithm: random")
    return algorithm, int(seed)


def _read_objective(spec: dict, problems: list[str]) -> tuple[str, str]:
    """(primary_metric, goal) from `objective`; goal lower-cased."""
    objective = _clean(spec.get("objective"))
    if not isinstance(objective, dict):
        problems.append(f"objective: must be {{primary_metric: NAME, goal: maximize|minimize}}, got {objective!r}")
        return "", "maximize"
    for key in sorted(set(objective) - {"primary_metric", "goal"}):
        problems.append(f"objective.{key}: unknown field; use primary_metric and goal")
    metric = objective.get("primary_metric")
    if not isinstance(metric, str) or not metric:
        problems.append(f"objective.primary_metric: must name the MLflow metric the trial logs, got {metric!r}")
        metric = ""
    goal = str(objective.get("goal", "")).lower()
    if goal not in ("maximize", "minimize"):
        problems.append(f"objective.goal: must be maximize or minimize, got {objective.get('goal')!r}")
    return metric, goal


def _read_limits(spec: dict, algorithm: str, space: dict, problems: list[str], notices: list[str]) -> dict:
    """`limits` with max_total_trials and max_concurrent_trials resolved (grid: its size; concurrency: 1)."""
    limits = _clean(spec.get("limits"))
    if not isinstance(limits, dict):
        problems.append(f"limits: must be a mapping, got {limits!r}")
        limits = {}
    for key in sorted(set(limits) - set(LIMIT_FIELDS)):
        problems.append(f"limits.{key}: unknown field; use " + ", ".join(LIMIT_FIELDS))
    for key in LIMIT_FIELDS:
        if key in limits and (not _is_int(limits[key]) or limits[key] < 1):
            problems.append(f"limits.{key}: must be an integer >= 1, got {limits[key]!r}")
    resolved = {key: limits.get(key) for key in LIMIT_FIELDS}
    if algorithm == "grid":
        size = math.prod(len(e["values"]) for e in space.values() if isinstance(e.get("values"), list))
        resolved["max_total_trials"] = min(size, limits.get("max_total_trials") or size)
    elif "max_total_trials" not in limits:
        problems.append("limits.max_total_trials: required for random sampling (how many trials to run)")
    if "max_concurrent_trials" not in limits:
        notices.append("limits.max_concurrent_trials is not set: running one trial at a time locally")
        resolved["max_concurrent_trials"] = 1
    return resolved


def _read_policy(spec: dict, problems: list[str]) -> Policy | None:
    """The `early_termination` policy, or None when there is none (or it has problems)."""
    early = _clean(spec.get("early_termination"))
    if not early:
        return None
    if not isinstance(early, dict) or "type" not in early:
        problems.append("early_termination: expected {type: bandit|median_stopping|truncation_selection, ...}, "
                        f"got {early!r}")
        return None
    kind = str(early["type"]).lower()
    if kind not in POLICY_FIELDS:
        problems.append(f"early_termination.type: unknown '{early['type']}'; use " + ", ".join(POLICY_FIELDS))
        return None
    before = len(problems)
    fields = POLICY_FIELDS[kind]
    for key in sorted(set(early) - set(fields) - {"type"}):
        problems.append(f"early_termination.{key}: not a field of {kind}; its fields are: " + ", ".join(fields))
    for key in ("evaluation_interval", "delay_evaluation"):
        if key in early and (not _is_int(early[key]) or early[key] < 0):
            problems.append(f"early_termination.{key}: must be an integer >= 0, got {early[key]!r}")
    if kind == "bandit":
        slack = [k for k in ("slack_factor", "slack_amount") if early.get(k)]
        if len(slack) != 1:
            given = {k: early.get(k) for k in ("slack_factor", "slack_amount")}
            problems.append(f"early_termination: bandit needs exactly one of slack_factor or slack_amount (> 0), "
                            f"got {given}")
        for key in slack:
            if not _is_number(early[key]) or early[key] < 0:
                problems.append(f"early_termination.{key}: must be a number >= 0, got {early[key]!r}")
    if kind == "truncation_selection":
        pct = early.get("truncation_percentage")
        if not _is_int(pct) or not 1 <= pct <= 99:
            problems.append(f"early_termination.truncation_percentage: must be an integer from 1 to 99, got {pct!r}")
    if len(problems) > before:
        return None
    return Policy(kind, evaluation_interval=int(early.get("evaluation_interval", 1)) or 1,  # Azure's 0: every one
                  delay_evaluation=int(early.get("delay_evaluation", 0)),
                  slack_factor=early.get("slack_factor") or None, slack_amount=early.get("slack_amount") or None,
                  truncation_percentage=early.get("truncation_percentage"))


def read_sweep(spec: dict, trial_input_names=None) -> tuple[SweepConfig | None, list[str]]:
    """Parse and check a sweep node. Returns (config, problems); config is None when there are problems.

    `trial_input_names`: the trial component's input names, to check the search space against (None: skip).
    """
    problems: list[str] = []
    notices: list[str] = []
    space = _read_search_space(spec, trial_input_names, problems)
    algorithm, seed = _read_sampling(spec, space, problems, notices)
    metric, goal = _read_objective(spec, problems)
    limits = _read_limits(spec, algorithm, space, problems, notices)
    policy = _read_policy(spec, problems)
    if problems:
        return None, problems
    return SweepConfig(space, algorithm, seed, metric, goal, int(limits["max_total_trials"]),
                       int(limits["max_concurrent_trials"]), limits["timeout"], limits["trial_timeout"], policy,
                       notices), []


def validate_sweep(spec: dict, trial_input_names=None) -> list[str]:
    """Every problem with a sweep node (empty when it is fine); `slmops validate` prefixes them with the node."""
    return read_sweep(spec, trial_input_names)[1]


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
        if _is_int(expr["q"]):
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

    `start_trial(index, params) -> local_runner.trial.Trial`; `log(message)` prints one line;
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
