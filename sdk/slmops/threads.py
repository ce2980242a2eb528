"""How many compute threads a step uses: its share of the cores, never more than are free.

Two thread pools that each take every core slow each other down far more than the share they lose (a step's
matrix products wait on threads the other process has preempted). So each step picks its count once, at start:

1. `OMP_NUM_THREADS`, when set: the local runner sets it to the step's share of the cores when steps run in
   parallel (`runner/executor.py`), and a user or a job's `environment_variables` may set it;
2. otherwise, the cores this process may run on (CPU affinity, e.g. a container's cpuset) minus the ones other
   processes keep busy right now: the idle share of all cores over a short sample of /proc/stat, rounded, at least 1.

`apply()` gives the count to PyTorch (intra-op threads) and returns it; `ort_overlay()` is the same count for an
ONNX Runtime GenAI model (`og.Config.overlay`), whose own default is every core whatever else runs.
"""

from __future__ import annotations

import json
import os
import time


def available_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cpu_times(path: str = "/proc/stat") -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs, or None where /proc/stat is not there."""
    try:
        with open(path) as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return idle, sum(fields[:8])


def busy_cores(sample_s: float = 0.25) -> float | None:
    """Cores other processes keep busy, measured over `sample_s` (None where it cannot be measured)."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(sample_s)
    second = _cpu_times()
    if second is None or second[1] == first[1]:
        return None
    idle_share = (second[0] - first[0]) / (second[1] - first[1])
    return (1 - idle_share) * (os.cpu_count() or 1)


def choose(env: dict | None = None, busy: float | None = None) -> tuple[int, str]:
    """(threads, why) for this step: see the module docstring. `busy`: measured busy cores (None: measure now)."""
    env = os.environ if env is None else env
    raw = str(env.get("OMP_NUM_THREADS", "")).strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw), f"OMP_NUM_THREADS={raw}"
    cores = available_cores()
    busy = busy_cores() if busy is None else busy
    if busy is None:
        return cores, f"{cores} cores (load not measurable)"
    threads = max(1, min(cores, int(cores - busy + 0.5)))
    return threads, f"{cores} cores, {busy:.1f} busy with other work"


def apply(env: dict | None = None) -> int:
    """Choose the count (`choose`), give it to PyTorch, print it once, return it."""
    import torch

    threads, why = choose(env)
    torch.set_num_threads(threads)
    print(f"compute threads: {threads} ({why})", flush=True)
    return threads


def ort_overlay(threads: int) -> str:
    """An `og.Config.overlay` JSON giving the decoder session `threads` intra-op threads."""
    return json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}})
