"""Fixtures for the local runner's tests: the test pipelines under assets/, and a runs folder per test.

Creating an MLflow sqlite database takes ~5 s, so one is made per session (with the `runner-tests` experiment
every test pipeline names) and copied into each test's `<runs>/.slmops/`; everything else is per test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ASSETS = Path(__file__).parent / "assets"
EXPERIMENT = "runner-tests"


@pytest.fixture(scope="session")
def mlflow_db(tmp_path_factory) -> Path:
    from slmops.runner.tracking import default_uri, open_tracker

    store = tmp_path_factory.mktemp("mlflow-template")
    open_tracker(default_uri(store), EXPERIMENT, store)
    return store / "mlflow.db"


@pytest.fixture
def runs(tmp_path, mlflow_db) -> Path:
    """A folder for run dirs; its `.slmops/` store starts with an MLflow database holding the test experiment."""
    root = tmp_path / "runs"
    (root / ".slmops").mkdir(parents=True)
    shutil.copyfile(mlflow_db, root / ".slmops" / "mlflow.db")
    return root


def cli_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def invoke(*args):
    """Run `slmops ARGS` in this process (click's CliRunner): azure-ai-ml is imported once per test session.

    Relative paths are relative to assets/. Returns click's Result (exit_code, stdout, stderr, output).
    """
    from click.testing import CliRunner

    from slmops.cli import main

    env = {"MLFLOW_TRACKING_URI": None, "MLFLOW_RUN_ID": None, "MLFLOW_DISABLE_TELEMETRY": "true",
           "OMP_NUM_THREADS": "1"}
    cwd = os.getcwd()
    os.chdir(ASSETS)
    try:
        return CliRunner(env=env).invoke(main, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(cwd)


def slmops(*args, cwd: Path = ASSETS, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run the real `slmops` CLI in a subprocess (stdout is a pipe: plain lines, no live display)."""
    exe = shutil.which("slmops")
    command = [exe] if exe else [sys.executable, "-c", "from slmops.cli import main; main()"]
    return subprocess.run(command + [str(a) for a in args], cwd=cwd, env=cli_env(), capture_output=True,
                          text=True, timeout=timeout)
