"""MLflow tracking for steps, as Azure ML does it: log into the run named by `MLFLOW_RUN_ID`.

The local runner and Azure ML both set `MLFLOW_TRACKING_URI` and `MLFLOW_RUN_ID` for a step process, so a
step only has to log. Run outside either (plain `python -m slmops.steps.x`), nothing is tracked unless
`MLFLOW_TRACKING_URI` is set, in which case a new run is started. Under torchrun only rank 0 logs.

    from slmops import tracking
    with tracking.step_run() as run:      # run is None when tracking is off
        tracking.log_params({"lr": 1e-4})
        tracking.log_metrics({"loss": 1.2}, step=10)
"""

from __future__ import annotations

import contextlib
import os

_active = False


def enabled() -> bool:
    if int(os.environ.get("RANK", "0")) != 0:
        return False
    return bool(os.environ.get("MLFLOW_RUN_ID") or os.environ.get("MLFLOW_TRACKING_URI"))


@contextlib.contextmanager
def step_run():
    """Open the step's MLflow run (or yield None when tracking is off)."""
    global _active
    if not enabled():
        yield None
        return
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    previous, active = _active, mlflow.active_run()
    with contextlib.nullcontext(active) if active is not None else \
            mlflow.start_run(run_id=os.environ.get("MLFLOW_RUN_ID")) as run:
        _active = True
        try:
            yield run
        finally:
            _active = previous  # log_* after the block must not start a run of their own


def _mlflow():
    if not _active:
        return None
    import mlflow

    return mlflow


def log_params(params: dict) -> None:
    if (m := _mlflow()) is not None:
        m.log_params({k: ("" if v is None else str(v))[:6000] for k, v in params.items()})


def log_metrics(metrics: dict, step: int | None = None) -> None:
    if (m := _mlflow()) is not None:
        m.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)


def set_tags(tags: dict) -> None:
    if (m := _mlflow()) is not None:
        m.set_tags({k: str(v) for k, v in tags.items()})


def log_artifacts(path, artifact_path: str | None = None) -> None:
    if (m := _mlflow()) is not None:
        m.log_artifacts(str(path), artifact_path)


def log_artifact(path, artifact_path: str | None = None) -> None:
    if (m := _mlflow()) is not None:
        m.log_artifact(str(path), artifact_path)
