"""A trial that saves its model into the working directory, as many training scripts do: `model/` must not exist
yet (os.mkdir fails if another trial's is there). Logs `score` = --x to MLflow and copies model/ to --out.

    python save_model.py --x 3 --out DIR
"""

import argparse
import os
import shutil
import time
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--x", type=float, required=True, help="the sampled value, logged as the score")
p.add_argument("--out", required=True, help="output folder for the model")
a = p.parse_args()

os.mkdir("model")                      # FileExistsError if a trial shares this working directory
(Path("model") / "weights.txt").write_text(str(a.x))
time.sleep(1.0)                        # trials overlap
if os.environ.get("MLFLOW_RUN_ID"):
    import mlflow

    with mlflow.start_run(run_id=os.environ["MLFLOW_RUN_ID"]):
        mlflow.log_metric("score", a.x)
        mlflow.log_param("x", str(a.x) + "0")    # its own param, as autolog would log it: no clash with the runner
shutil.copytree("model", Path(a.out) / "model")
