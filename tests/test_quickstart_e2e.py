"""The main job end to end, CI-sized: `slmops quickstart --tiny` runs the real pipelines/finetune.yaml through the
local runner on a tiny model built offline — prep -> finetune -> evaluate -> optimize -> register — and a second run
reuses every step. (The README's default quickstart, on the real SmolLM2 model, takes minutes: its figures are in
docs/benchmarks.md; tests/test_real_model.py runs the real model through prep -> finetune -> evaluate in CI.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("quickstart")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "slmops", "quickstart", "--tiny", "--dir", str(work)],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return work, proc.stdout


def test_quickstart_runs_every_step_and_registers(quickstart_dir):
    work, stdout = quickstart_dir
    run = json.loads((work / "run" / "run.json").read_text())
    assert run["status"] == "FINISHED", run
    assert set(run["steps"]) == {"prep", "finetune", "evaluate", "optimize", "register"}
    assert set(run["steps"].values()) == {"done"}

    out = lambda node, name: work / "run" / node / "outputs" / name  # noqa: E731
    metrics = json.loads((out("evaluate", "metrics") / "metrics.json").read_text())
    # The tiny model starts from random weights; fine-tuning must teach it the task.
    assert metrics["finetuned"]["accuracy"] >= 0.5, metrics["finetuned"]
    assert metrics["finetuned"]["accuracy"] > metrics["base"]["accuracy"] + 0.3
    report = json.loads((out("optimize", "report") / "optimize_report.json").read_text())
    assert report["precision"] == "int4" and report["speedup"] > 1.0
    assert abs(report["accuracy_drop"]) <= 0.05
    reg = json.loads((out("register", "registration") / "registration.json").read_text())
    assert reg["name"] == "slmops-quickstart-tiny" and reg["alias"] == "candidate" and reg["gate"]["passed"]
    assert "random weights" in stdout
    # the answer to "should I fine-tune?": every variant on the test split, and the verdict
    assert metrics["split"] == "test" and set(metrics["variants"]) >= {"base_zero_shot", "base_k_shot", "finetuned"}
    assert "Verdict:" in stdout and metrics["verdict"]["text"].split(":")[0] in stdout
    assert "slmops serve models:/slmops-quickstart-tiny@candidate" in stdout


def test_quickstart_registers_lineage_commit_hyper_parameters_run_and_components(quickstart_dir):
    """The registered version names the project's commit (read by the runner before snapshotting the code), the
    training hyper-parameters finetune logged, the pipeline run and each node's component name:version."""
    import yaml

    from slmops import registry

    work, _ = quickstart_dir
    run = json.loads((work / "run" / "run.json").read_text())
    reg = json.loads((work / "run" / "register" / "outputs" / "registration" / "registration.json").read_text())
    tags = registry.version_tags(reg["tracking_uri"], reg["name"], reg["version"])
    assert tags["lineage.pipeline_run_id"] == run["mlflow_run_id"] == reg["lineage"]["pipeline_run_id"]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout (CI, a clone): the commit HEAD had when the run started, or before it
        commit = tags["lineage.git_commit"]
        assert subprocess.run(["git", "-C", repo, "merge-base", "--is-ancestor", commit, "HEAD"]).returncode == 0
        assert tags["lineage.git_dirty"] in ("True", "False")
        assert tags["lineage.code_version"].endswith(f"+g{commit[:12]}")
    for node in run["steps"]:
        spec = yaml.safe_load((Path(repo) / "components" / node / "component.yaml").read_text())
        assert tags[f"lineage.component.{node}"] == f"{spec['name']}:{spec['version']}"
    assert tags["train.method"] == "lora" and tags["lineage.train_run_id"] == reg["lineage"]["train_run_id"]
    hyper = set(reg["lineage"]["train"])
    assert {"learning_rate", "lora_r", "batch_size", "max_steps", "seed", "weight_decay"} <= hyper
    assert all(tags[f"train.{k}"] == str(v) for k, v in reg["lineage"]["train"].items())


def test_quickstart_rerun_reuses_every_step(quickstart_dir):
    work, _ = quickstart_dir
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "slmops", "quickstart", "--tiny", "--dir", str(work)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    run = json.loads((work / "run" / "run.json").read_text())
    assert set(run["steps"].values()) == {"reused"}, run["steps"]  # no step ran again (how fast: bench/)
