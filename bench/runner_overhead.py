"""What the local runner costs: cached re-run wall time and per-step overhead versus running the commands directly.

    python bench/runner_overhead.py [--repeat 5] [--workdir DIR]

Uses the 5-step test pipeline tests/runner/assets/pipe5.yaml (each step: `python step.py ...`, ~0.05 s of work).
Every figure is the wall time of a whole `slmops` process, as a user runs it:
  cold       first run in a fresh folder: azure-ai-ml loads the YAML, the MLflow database is created
  first run  5 steps executed, graph already cached (`--force-rerun --max-parallel 1`)
  cached     every step reused: the resolved graph comes from the cache, azure-ai-ml and mlflow are not imported
  direct     the same 5 commands run one after another with subprocess, no runner
Per-step overhead = (first run - cached) / 5 - direct / 5: what the runner adds around each executed step
(snapshot, cache key, MLflow child run, log streaming, completion marker).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "tests" / "runner" / "assets"


def slmops(args: list[str], env: dict) -> float:
    exe = shutil.which("slmops")
    command = [exe] if exe else [sys.executable, "-c", "from slmops.cli import main; main()"]
    started = time.perf_counter()
    result = subprocess.run(command + args, cwd=ASSETS, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"slmops {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return seconds


def direct(workdir: Path) -> float:
    """The pipeline's five commands, run by hand in order (what the runner wraps)."""
    out = {n: workdir / "direct" / n for n in "abcde"}
    commands = [
        ["--out", out["a"], "--value", "2"],
        ["--out", out["b"], "--value", "3"],
        ["--out", out["c"], "--value", "0", "--inp", out["a"], "--inp", out["b"]],
        ["--out", out["d"], "--value", "0", "--inp", out["c"], "--scale", "10"],
        ["--out", out["e"], "--value", "1", "--inp", out["d"], "--inp", out["a"], "--mode", "mul"],
    ]
    started = time.perf_counter()
    for args in commands:
        subprocess.run([sys.executable, "step.py", *map(str, args)], cwd=ASSETS / "src", check=True,
                       capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="Timed repetitions per figure (median reported).")
    parser.add_argument("--workdir", type=Path, default=None, help="Scratch folder (default: a temp folder).")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="slmops-bench-"))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", OMP_NUM_THREADS="1")
    runs = workdir / "runs"

    cold = slmops(["run", "pipe5.yaml", "--run-dir", str(runs / "cold")], env)
    cached = [slmops(["run", "pipe5.yaml", "--run-dir", str(runs / f"cached{i}")], env) for i in range(args.repeat)]
    executed = [slmops(["run", "pipe5.yaml", "--force-rerun", "--max-parallel", "1", "--run-dir",
                        str(runs / f"forced{i}")], env) for i in range(args.repeat)]
    plain = [direct(workdir) for _ in range(args.repeat)]

    cached_s, executed_s, direct_s = (statistics.median(x) for x in (cached, executed, plain))
    result = {
        "cold_run_s": round(cold, 3),
        "cached_rerun_s": round(cached_s, 3),
        "cached_rerun_max_s": round(max(cached), 3),
        "executed_run_s": round(executed_s, 3),
        "direct_commands_s": round(direct_s, 3),
        "per_step_overhead_s": round((executed_s - cached_s) / 5 - direct_s / 5, 3),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result, indent=2))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
