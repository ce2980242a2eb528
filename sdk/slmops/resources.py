"""What a step used: peak RSS, mean CPU %, peak GPU memory - from counters the OS and torch keep, so no sampling
thread of our own. The time series (CPU %, memory, GPU utilisation and memory every few seconds) are MLflow's
system metrics, which `slmops.tracking.step_run()` turns on for the step's run.

    usage = resources.start()
    ...                                   # the step's work
    summary = resources.summary(usage)    # {"peak_rss_mb", "mean_cpu_percent", "cpu_count", "wall_s", ...}

`mean_cpu_percent` is CPU time over wall time of this process (its threads together; 100 = one core busy the
whole time); `peak_rss_mb` is the process's peak resident memory since it started (the OS's high-water mark).
Under torchrun each rank is its own process: the summary a step writes is rank 0's.
"""

from __future__ import annotations

import os
import sys
import time


def start() -> dict:
    """The counters at the start of the measured work."""
    cpu = os.times()
    return {"wall": time.monotonic(), "cpu": cpu.user + cpu.system}


def peak_rss_mb() -> float:
    """The process's peak resident set size in MB (ru_maxrss: KB on Linux, bytes on macOS); the current RSS
    where the resource module is missing (Windows)."""
    try:
        import resource
    except ImportError:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def summary(started: dict) -> dict:
    """Peak RSS, mean CPU % and wall seconds since `started`; peak GPU memory (MB, per device) when torch has
    used CUDA in this process."""
    wall = time.monotonic() - started["wall"]
    cpu = os.times()
    result = {
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "mean_cpu_percent": round(100 * (cpu.user + cpu.system - started["cpu"]) / max(wall, 1e-9), 1),
        "cpu_count": os.cpu_count(),
        "wall_s": round(wall, 3),
    }
    torch = sys.modules.get("torch")  # only when the step imported it: never import torch for this
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        result["gpu_peak_memory_mb"] = [round(torch.cuda.max_memory_allocated(d) / 2**20, 1)
                                        for d in range(torch.cuda.device_count())]
    return result
