"""The sweep objective: validation loss (pipelines/finetune_sweep.yaml's default) or accuracy. The template says how to
switch (primary_metric eval_mean_token_accuracy, goal maximize); that objective is a valid sweep over the finetune
component, finetune's metrics callback sends TRL's eval_mean_token_accuracy to MLflow under that name, and a sweep with
goal maximize picks the trial with the highest accuracy, not the lowest loss, and stops low-accuracy trials with the
template's bandit policy. Cheap fakes only (tests/runner/test_sweep.py's launcher); no training.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from slmops.pipeline.sweep_spec import read_sweep, validate_sweep
from slmops.runner.sweep import run_sweep, termination_reason
from tests.runner.test_sweep import CheapLauncher

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "pipelines" / "finetune_sweep.yaml"
ACCURACY = {"primary_metric": "eval_mean_token_accuracy", "goal": "maximize"}


def template_node() -> dict:
    return yaml.safe_load(TEMPLATE.read_text())["jobs"]["finetune"]


def documented_objective() -> dict:
    """The objective the template's comment says to write for accuracy (`#   primary_metric: ...`, `#   goal: ...`)."""
    found = dict(re.findall(r"^\s*#\s+(primary_metric|goal):\s*(\S+)", TEMPLATE.read_text(), re.MULTILINE))
    return found


def test_the_template_says_how_to_sweep_for_accuracy():
    assert template_node()["objective"] == {"primary_metric": "eval_loss", "goal": "minimize"}  # the default
    assert documented_objective() == ACCURACY


def test_the_accuracy_objective_is_a_valid_sweep_over_the_finetune_component():
    node = {**template_node(), "objective": documented_objective()}
    component = yaml.safe_load((ROOT / "components" / "finetune" / "component.yaml").read_text())
    assert validate_sweep(node, set(component["inputs"])) == []
    config, problems = read_sweep(node)
    assert problems == [] and (config.primary_metric, config.goal) == ("eval_mean_token_accuracy", "maximize")


def test_finetune_sends_trls_eval_accuracy_to_mlflow_under_that_name(monkeypatch):
    """TRL's SFTTrainer logs `eval_mean_token_accuracy` with every evaluation; the step's metrics callback passes every
    numeric log on unchanged, so the trial's MLflow run holds the metric the sweep reads."""
    from types import SimpleNamespace

    from slmops import tracking
    from slmops.training import metrics_callback

    logged = []
    monkeypatch.setattr(tracking, "log_metrics", lambda metrics, step=None: logged.append((metrics, step)))
    state = SimpleNamespace(is_world_process_zero=True, global_step=20)
    metrics_callback().on_log(None, state, None, logs={"eval_loss": 0.7, "eval_mean_token_accuracy": 0.81,
                                                       "epoch": 1.0, "note": "text"})
    assert logged == [({"eval_loss": 0.7, "eval_mean_token_accuracy": 0.81, "epoch": 1.0}, 20)]


# Three trials whose validation loss and accuracy disagree: x=3 has the lowest loss, x=4 the highest accuracy.
HISTORIES = {
    "eval_loss": {1: [2.0, 1.2], 3: [1.0, 0.50], 4: [1.1, 0.55]},
    "eval_mean_token_accuracy": {1: [0.40, 0.55], 3: [0.70, 0.80], 4: [0.72, 0.86]},
}


def cheap_sweep(objective: dict, early_termination=None):
    """The template's node with its search space narrowed to the launcher's x and no time limits, run on fake trials
    that log HISTORIES[metric] (read back by run id, as the runner reads MLflow)."""
    node = copy.deepcopy(template_node())
    node.update(search_space={"x": {"type": "choice", "values": [1, 3, 4]}}, sampling_algorithm="grid",
                objective=objective, early_termination=early_termination,
                limits={"max_total_trials": 3, "max_concurrent_trials": 3})
    launcher = CheapLauncher({1: 0.2, 3: 0.2, 4: 0.2})
    metric = objective["primary_metric"]
    lines: list[str] = []
    result = run_sweep(node, launcher, lines.append,
                       read_history=lambda run_id: HISTORIES[metric][int(run_id.removeprefix("x="))])
    return result, lines


@pytest.mark.parametrize("objective, best_x, best_metric", [
    ({"primary_metric": "eval_loss", "goal": "minimize"}, 3, 0.50),
    (ACCURACY, 4, 0.86),
])
def test_the_objective_decides_the_best_trial(objective, best_x, best_metric):
    result, lines = cheap_sweep(objective)
    assert (result.best_params, result.best_metric) == ({"x": best_x}, best_metric)
    assert [t["metric"] for t in result.trials] == [HISTORIES[objective["primary_metric"]][x][-1] for x in (1, 3, 4)]
    assert f"{objective['goal']} {objective['primary_metric']}" in lines[0]
    assert lines[-1].startswith(f"sweep: best trial {[1, 3, 4].index(best_x)} {objective['primary_metric']}=")


def test_the_template_s_bandit_policy_stops_low_accuracy_trials_when_maximizing():
    """The template's policy (slack 0.1 from the second interval) with goal maximize: a trial whose best accuracy
    is below the leader's / 1.1 is stopped, one within the slack runs on."""
    config, problems = read_sweep({**template_node(), "objective": ACCURACY})
    assert problems == []
    histories = {0: [0.70, 0.80], 1: [0.40, 0.55], 2: [0.70, 0.75]}       # leader 0.80: limit 0.727
    stop = termination_reason(config.policy, config.goal, histories, 1, 2)
    assert stop is not None and stop.startswith("bandit")
    assert termination_reason(config.policy, config.goal, histories, 2, 2) is None
    assert termination_reason(config.policy, config.goal, histories, 1, 1) is None   # delay_evaluation 2
