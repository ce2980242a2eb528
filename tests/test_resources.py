"""slmops.resources (a step's peak RSS, mean CPU %) and the system metrics slmops.tracking.step_run() turns on."""

from __future__ import annotations

import time

import pytest

from slmops import resources, tracking


def test_summary_measures_this_process():
    started = resources.start()
    block = bytearray(64 * 2**20)          # 64 MB touched: the peak RSS is at least that
    block[::4096] = b"x" * len(block[::4096])
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:     # one thread busy (on a shared machine: some of a core)
        pass
    use = resources.summary(started)
    assert use["peak_rss_mb"] > 64 and use["wall_s"] >= 0.3 and use["cpu_count"] >= 1
    assert 5 < use["mean_cpu_percent"] <= 100 * use["cpu_count"]   # 22 % measured on 2 busy cores
    del block


@pytest.mark.parametrize("enabled", ["true", "false"])
def test_step_run_logs_mlflow_system_metrics_unless_turned_off(enabled, tmp_path, monkeypatch):
    import mlflow

    uri = (tmp_path / "mlruns").as_uri()
    for name, value in {"MLFLOW_TRACKING_URI": uri, "MLFLOW_ALLOW_FILE_STORE": "true",
                        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2",
                        "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": enabled}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    with tracking.step_run() as run:
        time.sleep(1.0)
    logged = mlflow.MlflowClient(tracking_uri=uri).get_run(run.info.run_id).data.metrics
    system = {k for k in logged if k.startswith("system/")}
    if enabled == "true":
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system, system
    else:
        assert system == set()
