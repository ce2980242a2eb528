"""Sweep nodes (`type: sweep`): reading and checking the node as Azure ML defines it (run by `slmops.runner.sweep`).

    from slmops.pipeline.sweep_spec import read_sweep, validate_sweep
    problems = validate_sweep(spec, trial_input_names={"x", "lr"})   # for `slmops validate`
    config, problems = read_sweep(spec)                               # for the runner

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

import math
from dataclasses import dataclass, field

DEFAULT_SEED = 0

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




# --------------------------------------------------------------------------------------------------------------
# Reading and validating the node


def _clean(d) -> dict:
    """A mapping without its None values (azure-ai-ml's dicts carry unset fields as None)."""
    return {k: v for k, v in (d or {}).items() if v is not None} if isinstance(d, dict) else d


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value) -> bool:
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
        if kind == "randint" and (not is_int(expr["upper"]) or expr["upper"] < 1):
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
    if not is_int(seed):
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
        if key in limits and (not is_int(limits[key]) or limits[key] < 1):
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
        if key in early and (not is_int(early[key]) or early[key] < 0):
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
        if not is_int(pct) or not 1 <= pct <= 99:
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


