"""Sweep nodes: sampling, validation and early termination as pure functions (golden decisions); `run_sweep` over
cheap subprocess trials (limits, concurrency, failures, stop); and `slmops run` end to end on a pipeline whose trials
(tests/runner/assets/sweep/objective.py) log `score = -(x - 3)^2` to MLflow: the bandit policy kills the slow bad
trial and the best trial's output flows to the next node.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from slmops.errors import UserError
from slmops.pipeline.sweep_spec import Policy, read_sweep, validate_sweep
from slmops.runner.sweep import best_trial, grid_points, run_sweep, termination_reason, trial_params, trials_table
from slmops.runner.trial import Trial


def spec(**overrides) -> dict:
    """A valid sweep node; keyword arguments replace its top-level fields."""
    base = {
        "search_space": {"x": {"type": "choice", "values": [1, 2, 3]}},
        "sampling_algorithm": "grid",
        "objective": {"primary_metric": "score", "goal": "maximize"},
        "limits": {"max_total_trials": 10, "max_concurrent_trials": 2},
        "early_termination": None,
    }
    base.update(overrides)
    return base


RANDOM_SPACE = {
    "c": {"type": "choice", "values": ["a", "b", "c"]},
    "r": {"type": "randint", "upper": 4},
    "u": {"type": "uniform", "min_value": -1, "max_value": 2},
    "lr": {"type": "loguniform", "min_value": -9, "max_value": -4},
    "bs": {"type": "quniform", "min_value": 8, "max_value": 64, "q": 8},
    "qlu": {"type": "qloguniform", "min_value": 0, "max_value": 3, "q": 0.5},
    "n": {"type": "normal", "mu": 10, "sigma": 2},
    "ln": {"type": "lognormal", "mu": 0, "sigma": 1},
    "qn": {"type": "qnormal", "mu": 100, "sigma": 10, "q": 5},
    "qln": {"type": "qlognormal", "mu": 1, "sigma": 0.5, "q": 1},
}


def random_config(seed=7, trials=200, algorithm="random"):
    sampling = {"type": algorithm, "seed": seed} if algorithm == "random" else algorithm
    config, problems = read_sweep(spec(search_space=RANDOM_SPACE, sampling_algorithm=sampling,
                                       limits={"max_total_trials": trials}))
    assert problems == []
    return config


# ---------------------------------------------------------------------------------------------------- sampling


def test_random_sampling_is_deterministic_for_a_seed():
    first = trial_params(random_config(seed=7))
    assert first == trial_params(random_config(seed=7))
    assert first != trial_params(random_config(seed=8))
    assert len(first) == 200
    # Golden values: Python's Mersenne Twister is stable across versions.
    assert {k: v for k, v in first[0].items() if k in ("bs", "c", "qln", "qlu", "qn", "r")} == {
        "bs": 24, "c": "a", "qln": 5, "qlu": 15.5, "qn": 105, "r": 1}
    assert (first[0]["u"], first[0]["lr"]) == pytest.approx((-0.887513, 0.00749418), rel=1e-5)


def test_random_sampling_respects_every_expression_range():
    samples = trial_params(random_config(seed=1, trials=500))
    for s in samples:
        assert s["c"] in ("a", "b", "c")
        assert s["r"] in (0, 1, 2, 3) and isinstance(s["r"], int)
        assert -1 <= s["u"] <= 2
        assert math.exp(-9) <= s["lr"] <= math.exp(-4)
        assert 8 <= s["bs"] <= 64 and s["bs"] % 8 == 0 and isinstance(s["bs"], int)
        assert s["qlu"] % 0.5 == 0 and 0.5 <= s["qlu"] <= math.exp(3) + 0.25
        assert s["ln"] > 0 and s["qn"] % 5 == 0 and isinstance(s["qln"], int)
    assert {s["c"] for s in samples} == {"a", "b", "c"} and {s["r"] for s in samples} == {0, 1, 2, 3}
    mean_n = sum(s["n"] for s in samples) / len(samples)
    assert 9.5 < mean_n < 10.5
    # loguniform is uniform in the exponent: about half the draws fall below exp(-6.5)
    low = sum(s["lr"] < math.exp(-6.5) for s in samples) / len(samples)
    assert 0.4 < low < 0.6


def test_grid_enumerates_every_combination_in_order():
    space = {"b": {"type": "choice", "values": ["x", "y", "z"]}, "a": {"type": "choice", "values": [1, 2]}}
    assert grid_points(space) == [{"a": a, "b": b} for a in (1, 2) for b in ("x", "y", "z")]
    config, _ = read_sweep(spec(search_space=space, limits={"max_total_trials": 4}))
    assert trial_params(config) == grid_points(space)[:4]
    config, _ = read_sweep(spec(search_space=space, limits={}))
    assert config.max_total_trials == 6 and len(trial_params(config)) == 6


def test_bayesian_runs_as_random_with_a_notice():
    config = random_config(trials=5, algorithm="bayesian")
    assert config.algorithm == "random"
    assert any("bayesian" in n and "random" in n for n in config.notices)
    assert trial_params(config) == trial_params(random_config(seed=0, trials=5))  # the default seed


# ---------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "overrides, inputs, expected",
    [
        ({}, {"x"}, []),
        ({}, {"lr"}, ["search_space.x: the trial component has no input 'x'; its inputs are: lr"]),
        ({"search_space": {"x": {"type": "uniform", "min_value": 0, "max_value": 1}}}, None,
         ["search_space.x: grid sampling supports only choice"]),
        ({"search_space": {"x": {"type": "gaussian", "mu": 0}}}, None, ["search_space.x.type: unknown expression"]),
        ({"search_space": {"x": {"type": "uniform", "min_value": 2, "max_value": 1}}, "sampling_algorithm": "random"},
         None, ["min_value 2 is above max_value 1"]),
        ({"search_space": {"x": {"type": "uniform", "low": 0}}, "sampling_algorithm": "random"}, None,
         ["search_space.x.low: not a field of uniform", "search_space.x: uniform needs min_value, max_value"]),
        ({"search_space": {"x": {"type": "randint", "upper": 0}}, "sampling_algorithm": "random"}, None,
         ["search_space.x.upper: must be an integer >= 1"]),
        ({"search_space": {"x": {"type": "choice", "values": []}}}, None,
         ["search_space.x.values: must be a non-empty"]),
        ({"search_space": {}}, None, ["search_space: must map at least one"]),
        ({"sampling_algorithm": "hyperband"}, None, ["sampling_algorithm.type: unknown 'hyperband'"]),
        ({"sampling_algorithm": {"type": "random", "seed": "x"}}, None,
         ["sampling_algorithm.seed: must be an integer"]),
        ({"sampling_algorithm": {"type": "grid", "seed": 1}}, None, ["sampling_algorithm.seed: not a field of grid"]),
        ({"objective": {"primary_metric": "score", "goal": "up"}}, None,
         ["objective.goal: must be maximize or minimize"]),
        ({"objective": {"goal": "minimize"}}, None, ["objective.primary_metric: must name"]),
        ({"limits": {"max_total_trials": 0, "wallclock": 5}}, None,
         ["limits.wallclock: unknown field", "limits.max_total_trials: must be an integer >= 1"]),
        ({"sampling_algorithm": "random", "limits": {}}, None, ["limits.max_total_trials: required for random"]),
        ({"early_termination": {"type": "bandit", "evaluation_interval": 1}}, None,
         ["bandit needs exactly one of slack_factor or slack_amount"]),
        ({"early_termination": {"type": "bandit", "slack_factor": 0.1, "slack_amount": 1}}, None,
         ["bandit needs exactly one of slack_factor or slack_amount"]),
        ({"early_termination": {"type": "truncation_selection", "truncation_percentage": 100}}, None,
         ["truncation_percentage: must be an integer from 1 to 99"]),
        ({"early_termination": {"type": "median_stopping", "delay_evaluation": -1, "slack_factor": 0.1}}, None,
         ["early_termination.slack_factor: not a field of median_stopping",
          "early_termination.delay_evaluation: must be an integer >= 0"]),
        ({"early_termination": {"type": "hyperband"}}, None, ["early_termination.type: unknown 'hyperband'"]),
    ],
)
def test_validate_sweep_reports_every_problem(overrides, inputs, expected):
    problems = validate_sweep(spec(**overrides), inputs)
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected):
        assert fragment in problem


def test_validate_reports_problems_of_every_section_together():
    bad = spec(search_space={"y": {"type": "uniform", "min_value": 0, "max_value": 1}},
               objective={"primary_metric": "score", "goal": "best"}, limits={"timeout": -5},
               early_termination={"type": "bandit"})
    problems = validate_sweep(bad, {"x"})
    assert [p.split(":")[0] for p in problems] == [
        "search_space.y", "search_space.y", "objective.goal", "limits.timeout", "early_termination"]
    with pytest.raises(UserError, match="invalid sweep node") as exc:
        run_sweep(bad, start_trial=None, log=print)
    assert len(exc.value.problems) == 4  # without the trial's input names, the unknown input is not checked


def test_azure_dict_with_none_fields_and_capitalised_goal_is_accepted():
    node = spec(objective={"primary_metric": "score", "goal": "Minimize"},
                limits={"max_total_trials": 3, "max_concurrent_trials": None, "timeout": None, "trial_timeout": None},
                early_termination={"type": "bandit", "slack_factor": 0.1, "slack_amount": None,
                                   "evaluation_interval": 0, "delay_evaluation": 0})
    config, problems = read_sweep(node)
    assert problems == []
    assert config.goal == "minimize" and config.max_concurrent_trials == 1 and config.timeout is None
    assert config.policy == Policy("bandit", evaluation_interval=1, delay_evaluation=0, slack_factor=0.1)


# ---------------------------------------------------------------------------------------------------- policies

BANDIT_F = Policy("bandit", slack_factor=0.2)
BANDIT_A = Policy("bandit", slack_amount=0.5)
MEDIAN = Policy("median_stopping")
TRUNC20 = Policy("truncation_selection", truncation_percentage=20)
TRUNC50 = Policy("truncation_selection", truncation_percentage=50)


@pytest.mark.parametrize(
    "policy, goal, histories, index, interval, stop",
    [
        # Azure ML's example: best 0.8, slack_factor 0.2 -> trials below 0.8 / 1.2 = 0.667 stop
        (BANDIT_F, "maximize", {0: [0.8], 1: [0.65]}, 1, 1, True),
        (BANDIT_F, "maximize", {0: [0.8], 1: [0.7]}, 1, 1, False),
        (BANDIT_F, "maximize", {0: [0.8], 1: [0.65]}, 0, 1, False),  # the leader never stops
        (BANDIT_F, "minimize", {0: [1.0], 1: [1.25]}, 1, 1, True),  # above 1.0 * 1.2
        (BANDIT_F, "minimize", {0: [1.0], 1: [1.15]}, 1, 1, False),
        (BANDIT_A, "minimize", {0: [1.0], 1: [1.6]}, 1, 1, True),
        (BANDIT_A, "minimize", {0: [1.0], 1: [1.4]}, 1, 1, False),
        (BANDIT_A, "maximize", {0: [-1.0], 1: [-1.6]}, 1, 1, True),
        # compared at the same interval only: trial 0 was worse at interval 1
        (BANDIT_A, "maximize", {0: [0.1, 9.0], 1: [0.5]}, 1, 1, False),
        (BANDIT_A, "maximize", {0: [0.1, 9.0], 1: [0.5, 0.6]}, 1, 2, True),
        # the best value so far counts, not the last one
        (BANDIT_A, "maximize", {0: [1.0, 1.0], 1: [1.0, 0.0]}, 1, 2, False),
        # delay_evaluation and evaluation_interval: applied at multiples of the interval >= the delay
        (Policy("bandit", slack_amount=0.5, delay_evaluation=2), "maximize", {0: [1, 1], 1: [0, 0]}, 1, 1, False),
        (Policy("bandit", slack_amount=0.5, delay_evaluation=2), "maximize", {0: [1, 1], 1: [0, 0]}, 1, 2, True),
        (Policy("bandit", slack_amount=0.5, evaluation_interval=2), "maximize", {0: [1] * 3, 1: [0] * 3}, 1, 3, False),
        (Policy("bandit", slack_amount=0.5, evaluation_interval=2), "maximize", {0: [1] * 4, 1: [0] * 4}, 1, 4, True),
        # a trial alone at its interval has nothing to be compared with
        (BANDIT_A, "maximize", {0: [5.0], 1: [0.0, 0.0]}, 1, 2, False),
        # median stopping: running averages 1, 2, 0.5 -> median 1
        (MEDIAN, "maximize", {0: [1, 1, 1], 1: [2, 2, 2], 2: [0.5, 0.5, 0.5]}, 2, 3, True),
        (MEDIAN, "maximize", {0: [1, 1, 1], 1: [2, 2, 2], 2: [0.5, 0.5, 0.5]}, 0, 3, False),
        (MEDIAN, "maximize", {0: [1, 1, 1], 1: [2, 2, 2], 2: [0.1, 1.5, 0.2]}, 2, 3, False),  # best so far 1.5
        (MEDIAN, "minimize", {0: [1, 1], 1: [2, 2], 2: [3, 3]}, 2, 2, True),
        (MEDIAN, "minimize", {0: [1, 1], 1: [2, 2], 2: [3, 3]}, 1, 2, False),
        # truncation selection: lowest 20 % of 5 trials = 1 trial; 50 % = 2 trials
        (TRUNC20, "maximize", {i: [v] for i, v in enumerate([5, 4, 3, 2, 1])}, 4, 1, True),
        (TRUNC20, "maximize", {i: [v] for i, v in enumerate([5, 4, 3, 2, 1])}, 3, 1, False),
        (TRUNC50, "maximize", {i: [v] for i, v in enumerate([5, 4, 3, 2, 1])}, 3, 1, True),
        (TRUNC50, "minimize", {i: [v] for i, v in enumerate([5, 4, 3, 2, 1])}, 0, 1, True),
        (TRUNC50, "minimize", {i: [v] for i, v in enumerate([5, 4, 3, 2, 1])}, 2, 1, False),
        (TRUNC20, "maximize", {0: [5], 1: [1]}, 1, 1, False),  # 20 % of 2 trials rounds down to none
        # truncation ranks the value at the interval, compared with the others' values at that interval
        (TRUNC50, "maximize", {0: [1, 9], 1: [2, 0]}, 1, 1, False),
        (TRUNC50, "maximize", {0: [1, 9], 1: [2, 0]}, 1, 2, True),
    ],
)
def test_policy_decisions(policy, goal, histories, index, interval, stop):
    reason = termination_reason(policy, goal, histories, index, interval)
    assert (reason is not None) is stop, reason
    if stop:
        assert reason.startswith(policy.type)


def test_best_trial_is_the_best_completed_one():
    records = [
        {"index": 0, "status": "early_terminated", "metric": 10.0},
        {"index": 1, "status": "completed", "metric": 2.0},
        {"index": 2, "status": "failed", "metric": 9.0},
        {"index": 3, "status": "completed", "metric": 2.0},
        {"index": 4, "status": "completed", "metric": None},
        {"index": 5, "status": "completed", "metric": 1.0},
    ]
    assert best_trial(records, "maximize")["index"] == 1  # ties: the first
    assert best_trial(records, "minimize")["index"] == 5
    assert best_trial(records[:1] + records[2:3], "maximize") is None


# ---------------------------------------------------------------------------------------------------- orchestration


class CheapLauncher:
    """`start_trial` for the tests that need no MLflow: trial x sleeps `seconds[x]`, then exits (x < 0: code 3).

    `history(run_id)` plays the metric reader: what objective.py would have logged (`-(x - 3)^2`).
    """

    def __init__(self, seconds: dict):
        self.seconds = seconds
        self.trials: list[Trial] = []
        self.running_at_start: list[int] = []  # trials still running when each trial started

    def __call__(self, index: int, params: dict) -> Trial:
        self.running_at_start.append(sum(t.poll() is None for t in self.trials))
        x = params["x"]
        code = f"import sys, time; time.sleep({self.seconds[x]}); sys.exit({3 if x < 0 else 0})"
        process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        self.trials.append(Trial.from_process(index, params, f"x={x}", {"out": Path(f"out-{index}")}, process))
        return self.trials[-1]

    def history(self, run_id: str) -> list[float]:
        x = float(run_id.removeprefix("x="))
        return [] if x < 0 else [0.0 - (x - 3) ** 2]


def test_sweep_picks_the_best_completed_trial_with_limited_concurrency():
    launcher = CheapLauncher({-1: 0, 1: 0.5, 3: 0.5, 4: 0.5, 5: 0.5})
    lines: list[str] = []
    node = spec(search_space={"x": {"type": "choice", "values": [-1, 1, 3, 4, 5]}},
                limits={"max_concurrent_trials": 2})
    result = run_sweep(node, launcher, lines.append, read_history=launcher.history)

    assert (result.best_index, result.best_params, result.best_metric) == (2, {"x": 3}, 0.0)
    assert result.best_outputs == {"out": Path("out-2")}
    assert [(t["params"]["x"], t["status"], t["metric"]) for t in result.trials] == [
        (-1, "failed", None), (1, "completed", -4.0), (3, "completed", 0.0), (4, "completed", -1.0),
        (5, "completed", -4.0)]
    assert max(launcher.running_at_start) == 1  # never a third trial while two run
    assert any("trial 0 failed" in line and "exit code 3" in line for line in lines)
    assert lines[-1].startswith("sweep: best trial 2 score=0")


@pytest.mark.parametrize("limits, status", [
    ({"max_concurrent_trials": 2, "timeout": 3}, "canceled"),
    ({"max_concurrent_trials": 2, "trial_timeout": 3}, "timed_out"),
])
def test_time_limits_kill_running_trials(limits, status):
    launcher = CheapLauncher({3: 0, 0: 60})
    node = spec(search_space={"x": {"type": "choice", "values": [3, 0]}}, limits=limits)
    started = time.monotonic()
    result = run_sweep(node, launcher, print, read_history=launcher.history)

    assert 3 <= time.monotonic() - started < 6
    assert [(t["status"], t["metric"]) for t in result.trials] == [("completed", 0.0), (status, -9.0)]
    assert launcher.trials[1].poll() is not None  # the process is gone
    assert result.best_index == 0


def test_sweep_timeout_stops_launching_trials():
    node = spec(search_space={"x": {"type": "choice", "values": [0, 3]}},
                limits={"max_concurrent_trials": 1, "timeout": 2})
    launcher = CheapLauncher({3: 0, 0: 60})
    with pytest.raises(UserError, match="no completed trial") as exc:
        run_sweep(node, launcher, print, read_history=launcher.history)
    assert exc.value.problems == ["trial 0: canceled, metric -9.0"]  # trial 1 was never started
    assert len(launcher.trials) == 1


def test_stop_event_cancels_the_sweep_and_errors_kill_running_trials():
    launcher = CheapLauncher({3: 0, 0: 60})
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    node = spec(search_space={"x": {"type": "choice", "values": [3, 0]}})
    result = run_sweep(node, launcher, print, read_history=launcher.history, stop=stop)
    assert [t["status"] for t in result.trials] == ["completed", "canceled"]
    assert launcher.trials[1].poll() is not None

    def start_then_fail(index, params):
        if index == 1:
            raise RuntimeError("launcher broke")
        return launcher(index, params)

    launcher = CheapLauncher({0: 60, 3: 60})
    with pytest.raises(RuntimeError, match="launcher broke"):
        run_sweep(spec(search_space={"x": {"type": "choice", "values": [0, 3]}}), start_then_fail, print,
                  read_history=launcher.history)
    assert launcher.trials[0].poll() is not None  # not left running


def test_sweep_fails_when_no_trial_logs_the_metric():
    launcher = CheapLauncher({-1: 0, -2: 0})
    node = spec(search_space={"x": {"type": "choice", "values": [-1, -2]}})
    with pytest.raises(UserError, match="no completed trial logged the primary metric 'score'") as exc:
        run_sweep(node, launcher, print, read_history=launcher.history)
    assert exc.value.problems == ["trial 0: failed, metric None", "trial 1: failed, metric None"]


# ---------------------------------------------------------------------------------------------------- end to end


def test_slmops_run_sweep_node_kills_a_bad_trial_and_adopts_the_best(tmp_path, monkeypatch):
    """`slmops run` on tests/runner/assets/sweep/pipeline.yaml: a grid over x in [0, 3, 3.5] with a bandit policy;
    x=0 (1.5 s per step, 15 s in all) is killed, the best trial's output flows on to the downstream node."""
    from click.testing import CliRunner

    from slmops.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # the runner sets it globally
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    pipeline = Path(__file__).parent / "assets" / "sweep" / "pipeline.yaml"
    run_dir = tmp_path / "runs" / "first"
    result = CliRunner().invoke(main, ["run", str(pipeline), "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output

    summary = json.loads((run_dir / "tune" / "sweep.json").read_text())
    assert (summary["best_index"], summary["best_params"], summary["best_metric"]) == (1, {"x": 3}, 0.0)
    assert [(t["params"]["x"], t["status"]) for t in summary["trials"]] == [
        (0, "early_terminated"), (3, "completed"), (3.5, "completed")]
    assert [t["metric"] for t in summary["trials"]] == [-9.0, 0.0, -0.25]
    from mlflow import MlflowClient  # killed before its 10 slow steps were done: fewer than 10 scores logged

    assert len(MlflowClient().get_metric_history(summary["trials"][0]["run_id"], "score")) < 10
    assert "trial 0 early_terminated" in result.output and "bandit" in result.output
    assert (run_dir / "tune" / "outputs" / "out" / "x.txt").read_text() == "3.0\n"
    assert (run_dir / "outputs" / "best_x" / "x.txt").read_text() == "3.0\n"  # through the downstream node
    # the downstream step is told which run made its input: the best trial's (its params are the hyper-parameters)
    assert json.loads((run_dir / "outputs" / "best_x" / "runs.json").read_text()) == {"best": summary["best_run_id"]}

    again = CliRunner().invoke(main, ["run", str(pipeline), "--run-dir", str(tmp_path / "runs" / "second")])
    assert again.exit_code == 0, again.output
    assert "reused 2" in again.output  # a seeded sweep is deterministic, so it is reused like any step


def test_trials_table_lists_hyper_parameters_against_the_objective():
    record = {"best_index": 1, "best_run_id": "r1", "trials": [
        {"index": 0, "params": {"lr": 1e-05, "r": 8}, "status": "early_terminated", "metric": 7.50716, "seconds": 34.8},
        {"index": 1, "params": {"lr": 0.0012709, "r": 16}, "status": "completed", "metric": 0.667649, "seconds": 72},
        {"index": 2, "params": {"lr": 0.002, "r": 16}, "status": "failed", "metric": None, "seconds": 3.25}]}
    assert trials_table(record, "eval_loss").splitlines() == [
        "| trial | lr | r | eval_loss | status | seconds |",
        "|---|---|---|---|---|---|",
        "| 0 | 1e-05 | 8 | 7.507 | early_terminated | 34.8 |",
        "| 1 * | 0.001271 | 16 | 0.6676 | completed | 72 |",
        "| 2 | 0.002 | 16 |  | failed | 3.25 |",
    ]


# The template's CPU-size run: the tiny random-init model, 20 steps, an evaluation every 5 (4 bandit intervals), on
# the first 500 rows of the sample data (50 validation and 50 test rows) with a short system prompt (the template's
# is 53 tokens on the tiny tokenizer, over half of each row, and the random-init model cannot read it anyway).
TINY_SWEEP_SETS = {"max_steps": "20", "eval_steps": "5", "save_steps": "0", "lr_scheduler": "constant",
                   "model_name": "sweep-tiny", "min_accuracy": "0", "min_gain": "-1", "min_gain_over_prompt": "-1",
                   "max_optimized_drop": "1", "system_prompt": "What is the tone of this phrase?"}
TINY_SWEEP_ROWS = 500


@pytest.mark.slow
def test_finetune_sweep_template_runs_end_to_end_on_the_tiny_model(tiny_model, tmp_path, monkeypatch):
    """pipelines/finetune_sweep.yaml as shipped (search space, seed, objective, bandit policy), with only its limits
    made CPU-size (3 trials, one at a time, so the policy's comparisons do not depend on timing; TINY_SWEEP_SETS and
    500 data rows) and its paths made absolute: trial 0 (lr 1.3e-3) completes, trials 1 (lr 1.2e-5) and 2 (lr 2.1e-4) are stopped by the bandit
    policy after their second evaluation, and the best trial's model is what evaluate, optimize and register read.
    The trials are MLflow child runs of the sweep node's run, with the finetune step's params; the run summary
    prints the trials table. ~2 min on 2 cores, most of it the 7 step processes starting."""
    import mlflow
    import yaml
    from click.testing import CliRunner

    from slmops.cli import main

    root = Path(__file__).resolve().parents[2]
    doc = yaml.safe_load((root / "pipelines" / "finetune_sweep.yaml").read_text())
    rows = (root / "sdk" / "slmops" / "data" / "tone_sample.jsonl").read_text().splitlines(keepends=True)
    data = tmp_path / "tone_sample_head.jsonl"
    data.write_text("".join(rows[:TINY_SWEEP_ROWS]))
    doc["inputs"]["data"]["path"] = str(data)
    for job in doc["jobs"].values():
        key = "trial" if job["type"] == "sweep" else "component"
        job[key] = str((root / "pipelines" / job[key]).resolve())
    sweep = doc["jobs"]["finetune"]
    assert sweep["objective"] == {"primary_metric": "eval_loss", "goal": "minimize"}
    sweep["limits"].update(max_total_trials=3, max_concurrent_trials=1)
    pipeline = tmp_path / "finetune_sweep.yaml"
    pipeline.write_text(yaml.safe_dump(doc, sort_keys=False))

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_dir = tmp_path / "runs" / "sweep"
    sets = [a for k, v in {"base_model": str(tiny_model), **TINY_SWEEP_SETS}.items() for a in ("--set", f"{k}={v}")]
    result = CliRunner().invoke(main, ["run", str(pipeline), "--run-dir", str(run_dir), *sets])
    assert result.exit_code == 0, result.output[-5000:]

    record = json.loads((run_dir / "finetune" / "sweep.json").read_text())
    assert [(t["index"], t["status"]) for t in record["trials"]] == [
        (0, "completed"), (1, "early_terminated"), (2, "early_terminated")]
    assert [round(t["params"]["learning_rate"], 7) for t in record["trials"]] == [0.0012710, 0.0000115, 0.0002061]
    assert record["best_index"] == 0 and record["best_params"] == record["trials"][0]["params"]
    assert record["objective"]["primary_metric"] == "eval_loss"
    assert "<h2>Hyper-parameter sweep: finetune</h2>" in (run_dir / "report.html").read_text()   # the run's report
    losses = [t["metric"] for t in record["trials"]]
    # fast learner << stopped ones (seen: 0.84, 6.9, 4.65-5.4). A stopped trial's figure is its last evaluation
    # before the policy stopped it, which depends on how far it got meanwhile: order and bounds, not a golden value.
    assert losses[0] < 2.0 < losses[2] < losses[1]
    # the node's outputs are the best trial's: its summary's final eval loss is the objective the sweep read
    summary = json.loads((run_dir / "finetune" / "outputs" / "metrics" / "train_summary.json").read_text())
    assert summary["final_eval_loss"] == pytest.approx(record["best_metric"]) and summary["global_step"] == 20
    # ... and flowed on: evaluate scored that model, register registered it
    assert json.loads((run_dir / "evaluate" / "outputs" / "metrics" / "metrics.json").read_text())["n"] > 0
    registration = json.loads((run_dir / "register" / "outputs" / "registration" / "registration.json").read_text())
    assert registration["name"] == "sweep-tiny" and registration["gate"]["passed"]

    client = mlflow.MlflowClient(tracking_uri=uri)
    trials = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                "tags.`slmops.kind` = 'trial'")
    assert len(trials) == 3
    sweep_run = client.get_run(trials[0].data.tags["mlflow.parentRunId"])
    assert sweep_run.data.tags["slmops.node"] == "finetune" and sweep_run.data.tags["slmops.best_trial"] == "0"
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {sweep_run.info.run_id}
    by_index = {int(r.data.tags["slmops.trial"]): r for r in trials}
    for t in record["trials"]:
        assert float(by_index[t["index"]].data.params["learning_rate"]) == pytest.approx(t["params"]["learning_rate"])
        assert by_index[t["index"]].data.metrics["eval_loss"] == pytest.approx(t["metric"])

    table = trials_table(record, "eval_loss")
    assert table in result.output and "| 0 * | 16 | 0.001271 | 8 |" in table
    assert (run_dir / "finetune" / "sweep.md").read_text().endswith(table + "\n")
