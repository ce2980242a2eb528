"""A step runs in a working copy of the snapshot of its `code:` folder, less what `.amlignore` excludes (as on
Azure ML), with `python` meaning a throw-away layer over the runner's interpreter whatever PATH holds."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

from slmops.runner.store import code_files
from tests.runner.conftest import invoke

ROOT = Path(__file__).resolve().parents[2]

STEP = """import argparse, json, os, pathlib, sys
p = argparse.ArgumentParser(); p.add_argument("--out"); a = p.parse_args()
pathlib.Path(a.out, "exe.json").write_text(json.dumps({"exe": os.path.realpath(sys.executable), "prefix": sys.prefix,
                                                       "version": sys.version, "cwd": os.getcwd()}))
"""


def project(tmp_path: Path) -> Path:
    code = tmp_path / "src"
    (code / "extra").mkdir(parents=True)
    (code / "step.py").write_text(STEP)
    (code / "extra" / "notes.py").write_text("# not needed by the step\n")
    (code / ".amlignore").write_text("extra/\n")
    component = {"$schema": "https://azuremlschemas.azureedge.net/latest/commandComponent.schema.json",
                 "type": "command", "name": "exe", "version": "1", "code": "./src",
                 "environment": "azureml:AzureML-sklearn-1.5-ubuntu22.04-py39-cpu@latest",
                 "outputs": {"out": {"type": "uri_folder"}}, "command": "python step.py --out ${{outputs.out}}"}
    (tmp_path / "component.yaml").write_text(yaml.safe_dump(component))
    pipeline = {"type": "pipeline", "experiment_name": "runner-tests",
                "jobs": {"exe": {"type": "command", "component": "./component.yaml"}}}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    return tmp_path / "pipeline.yaml"


def test_the_components_snapshot_holds_what_the_steps_need_only():
    files = {str(f) for f in code_files(ROOT / "sdk")}
    assert {"slmops/steps/finetune.py", "slmops/training.py", "slmops/generation.py"} <= files
    for left_out in ("slmops/cli.py", "slmops/serving/score.py", "slmops/runner/executor.py",
                     "slmops/pipeline/load.py", "slmops/azure/submit.py", "slmops/quickstart.py"):
        assert left_out not in files


def test_an_ignored_edit_keeps_the_step_reused_and_python_is_the_runners(tmp_path, runs, monkeypatch):
    pipeline = project(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")      # no venv activated: `python` may be another or none
    first = invoke("run", pipeline, "--run-dir", runs / "r1")
    assert first.exit_code == 0, first.output
    seen = json.loads((runs / "r1" / "exe" / "outputs" / "out" / "exe.json").read_text())
    assert seen["exe"] == os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    assert seen["version"] == sys.version
    work = runs / ".slmops" / "work"
    assert Path(seen["prefix"]).parent.parent == work and Path(seen["cwd"]).parent.parent == work
    assert not Path(seen["cwd"]).exists(), "the step's working copy is removed once it finished"
    snapshot = Path(yaml.safe_load((runs / "r1" / "exe" / "step.json").read_text())["key_parts"]["code"])
    assert snapshot

    (tmp_path / "src" / "extra" / "notes.py").write_text("# edited\n")
    second = invoke("run", pipeline, "--run-dir", runs / "r2")
    assert second.exit_code == 0 and "reused" in second.output, second.output

    (tmp_path / "src" / "step.py").write_text(STEP + "# edited\n")
    third = invoke("run", pipeline, "--run-dir", runs / "r3")
    assert third.exit_code == 0 and "done 1" in third.output, third.output
    snapshots = list((runs / ".slmops" / "snapshots").iterdir())
    assert all(not (s / "extra").exists() for s in snapshots)
