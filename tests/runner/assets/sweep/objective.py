"""A sweep trial with a known optimum: logs `score = -(x - 3)^2` once per step to the MLflow run.

    MLFLOW_TRACKING_URI=... MLFLOW_RUN_ID=... python objective.py --x 2.5 --steps 3 --sleep 0.1 --out DIR

Every step first sleeps `|x - 3| * sleep` seconds, so bad trials are also slow ones (early termination and
timeouts have something to stop). `x < 0` fails at once with exit code 3. `--out` receives `x.txt`.
"""

import argparse
import os
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--x", type=float, required=True, help="the parameter being searched")
    parser.add_argument("--steps", type=int, default=1, help="how many times to log the score")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds per step per unit of |x - 3|")
    parser.add_argument("--out", default=None, help="output folder: x.txt is written there")
    args = parser.parse_args()
    if args.x < 0:
        print(f"x={args.x} is negative: failing on purpose", file=sys.stderr)
        raise SystemExit(3)

    from mlflow import MlflowClient

    client = MlflowClient()
    run_id = os.environ["MLFLOW_RUN_ID"]
    for step in range(1, args.steps + 1):
        time.sleep(abs(args.x - 3) * args.sleep)
        client.log_metric(run_id, "score", -((args.x - 3) ** 2), step=step)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "x.txt").write_text(f"{args.x}\n")


if __name__ == "__main__":
    main()
