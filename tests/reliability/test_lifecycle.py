"""A runner stopped by SIGTERM or killed by SIGKILL leaves no step running, and its records say so; a re-run reuses
the finished steps; a second runner on the same run folder fails before touching anything."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.runner.conftest import ASSETS, cli_env, mlflow_db, runs  # noqa: F401  (fixtures)

MARK = "--sleep 61.5"          # a command line no other process on the machine has


def project(tmp_path: Path) -> Path:
    component = {"$schema": "https://azuremlschemas.azureedge.net/latest/commandComponent.schema.json",
                 "type": "command", "name": "sleeper", "version": "1", "code": str(ASSETS / "src"),
                 "environment": "azureml:AzureML-sklearn-1.5-ubuntu22.04-py39-cpu@latest",
                 "inputs": {"s": {"type": "number"}, "a": {"type": "uri_folder", "optional": True}},
                 "outputs": {"out": {"type": "uri_folder"}},
                 "command": "python step.py --out ${{outputs.out}} --sleep ${{inputs.s}} $[[--inp ${{inputs.a}}]]"}
    (tmp_path / "sleeper.yaml").write_text(yaml.safe_dump(component))
    pipeline = {"type": "pipeline", "experiment_name": "runner-tests", "inputs": {"s": 61.5},
                "jobs": {"quick": {"type": "command", "component": "./sleeper.yaml", "inputs": {"s": 0}},
                         "slow": {"type": "command", "component": "./sleeper.yaml",
                                  "inputs": {"s": "${{parent.inputs.s}}", "a": "${{parent.jobs.quick.outputs.out}}"}}}}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    return tmp_path / "pipeline.yaml"


def start(pipeline: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "slmops", "run", str(pipeline), "--run-dir", str(run_dir), *extra],
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def sleepers() -> list[int]:
    """pids of step processes of these tests still alive."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if MARK.encode() in (entry / "cmdline").read_bytes().replace(b"\0", b" "):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def slow_is_running(run_dir: Path) -> bool:
    step = run_dir / "slow" / "step.json"
    return step.exists() and json.loads(step.read_text()).get("status") == "running" and bool(sleepers())


def parent_status(runs_root: Path, run_dir: Path) -> str:
    run_id = json.loads((run_dir / "run.json").read_text())["mlflow_run_id"]
    with sqlite3.connect(runs_root / ".slmops" / "mlflow.db") as con:
        return con.execute("SELECT status FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()[0]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stopped_runner_leaves_no_steps_and_says_killed_then_rerun_reuses(tmp_path, runs, how):
    pipeline = project(tmp_path)
    run_dir = runs / "r1"
    runner = start(pipeline, run_dir)
    try:
        wait_for(lambda: slow_is_running(run_dir), 120, "the slow step to start")
        runner.send_signal(how)
        runner.wait(timeout=30)
        wait_for(lambda: not sleepers(), 10, "the step processes to end")     # 5 s + the watchdog's grace
        if how == signal.SIGTERM:
            assert runner.returncode == 128 + signal.SIGTERM, runner.stdout.read()
        wait_for(lambda: (run_dir / "run.json").exists()
                 and json.loads((run_dir / "run.json").read_text()).get("status") == "KILLED", 10, "run.json KILLED")
        assert json.loads((run_dir / "slow" / "step.json").read_text())["status"] == "killed"
        wait_for(lambda: parent_status(runs, run_dir) == "KILLED", 10, "the MLflow pipeline run to be KILLED")
    finally:
        runner.kill()
        for pid in sleepers():
            os.kill(pid, signal.SIGKILL)
    again = subprocess.run([sys.executable, "-m", "slmops", "run", str(pipeline), "--run-dir", str(run_dir),
                            "--set", "s=0"], env=cli_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    steps = json.loads((run_dir / "run.json").read_text())["steps"]
    assert steps == {"quick": "reused", "slow": "done"}


def test_a_second_runner_on_the_same_run_folder_fails_before_touching_it(tmp_path, runs):
    pipeline = project(tmp_path)
    run_dir = runs / "r1"
    first = start(pipeline, run_dir)
    try:
        wait_for(lambda: slow_is_running(run_dir), 120, "the slow step to start")
        log = run_dir / "slow" / "user_logs" / "std_log.txt"
        before = log.stat().st_mtime_ns, sorted(p.name for p in run_dir.iterdir())
        second = subprocess.run([sys.executable, "-m", "slmops", "run", str(pipeline), "--run-dir", str(run_dir)],
                                env=cli_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"(pid {first.pid}) is using the run folder" in second.stderr and "Traceback" not in second.stderr
        assert log.exists() and (log.stat().st_mtime_ns, sorted(p.name for p in run_dir.iterdir()))[1] == before[1]
        assert not (run_dir / "run.json").exists()        # the loser wrote no FAILED record over the live run
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=30)
        for pid in sleepers():
            os.kill(pid, signal.SIGKILL)
