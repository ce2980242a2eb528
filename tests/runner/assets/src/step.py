"""A tiny test component: reads number files, combines them with parameters, writes `value.txt`.

    python step.py --out DIR [--value X] [--inp DIR ...] [--scale S] [--mode add|mul] [--fail] [--sleep S]
                   [--metric NAME] [--checkpoints DIR --steps N [--die-at K]] [--ranks DIR]

With --checkpoints it counts to --steps, one file per step, resuming from what is already there (the
runner hands a retried step the same output folders). Logs `value` to MLflow when MLFLOW_RUN_ID is set.
"""

import argparse
import os
import signal
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--value", type=float, default=0.0)
    p.add_argument("--inp", action="append", default=[])
    p.add_argument("--scale", type=float, default=None)
    p.add_argument("--mode", default="add", choices=["add", "mul"])
    p.add_argument("--flag", default=None)
    p.add_argument("--fail", action="store_true")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--checkpoints", default=None)
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--metric", default=None)
    p.add_argument("--die-at", type=int, default=None, help="SIGKILL itself before this step (not on a resume)")
    p.add_argument("--ranks", default=None, help="write RANK/WORLD_SIZE/... of this process into this folder")
    a = p.parse_args()

    total = a.value  # mul: the product of --value and the inputs
    for d in a.inp:
        v = float((Path(d) / "value.txt").read_text())
        total = total + v if a.mode == "add" else total * v
    if a.scale is not None:
        total *= a.scale
    print(f"total={total} flag={a.flag} cwd_has_step={Path('step.py').exists()}", flush=True)
    print(f"run={os.environ.get('MLFLOW_RUN_ID')} root={os.environ.get('AZUREML_ROOT_RUN_ID')}", flush=True)
    git = " ".join(f"{k}={os.environ.get(k)}" for k in ("SLMOPS_GIT_COMMIT", "SLMOPS_GIT_DIRTY"))
    print(f"lineage {git}", flush=True)
    print(f"components={os.environ.get('SLMOPS_COMPONENTS')}", flush=True)
    print(f"input_runs={os.environ.get('SLMOPS_INPUT_RUNS')}", flush=True)
    if a.checkpoints:
        ck = Path(a.checkpoints)
        ck.mkdir(parents=True, exist_ok=True)
        done = len(list(ck.glob("step-*")))
        print(f"resuming at step {done}", flush=True)
        for i in range(done, a.steps):
            if a.die_at is not None and i == a.die_at and done == 0:
                print(f"killing myself at step {i}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(a.sleep)
            (ck / f"step-{i}").write_text(str(i))
            print(f"step {i}", flush=True)
    elif a.sleep:
        time.sleep(a.sleep)
    if a.fail:
        print("failing on purpose", file=sys.stderr, flush=True)
        sys.exit(3)
    if a.ranks:
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
                 "TORCHELASTIC_RUN_ID")
        Path(a.ranks).mkdir(parents=True, exist_ok=True)
        line = " ".join(f"{n}={os.environ[n]}" for n in names if n in os.environ)
        (Path(a.ranks) / f"rank-{os.environ.get('RANK')}.txt").write_text(line)
        print(line, flush=True)
        if os.environ.get("RANK") != "0":
            return
    if a.metric and os.environ.get("MLFLOW_RUN_ID"):
        import mlflow

        with mlflow.start_run(run_id=os.environ["MLFLOW_RUN_ID"]):
            mlflow.log_metric(a.metric, total)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "value.txt").write_text(repr(total))


if __name__ == "__main__":
    main()
