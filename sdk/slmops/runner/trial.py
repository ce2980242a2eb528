"""One sweep trial as the runner starts it: the interface shared by the executor and `slmops.runner.sweep`.

The executor's `start_trial(index, params)` starts the trial component as a command step (its own outputs
folder, its own MLflow child run nested under the sweep node's run, its own user_logs) and returns a `Trial`.
`slmops.runner.sweep.run_sweep` polls it, reads its metrics from MLflow with `run_id`, and may kill it.

    trial = start_trial(0, {"learning_rate": 1e-4})
    while (code := trial.poll()) is None:
        time.sleep(0.2)
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Trial:
    """A started trial. `poll()` returns its exit code once it has ended (None while it runs); `kill()` ends it.

    `poll_fn`/`kill_fn` are supplied by whoever started the trial (the executor wraps its step process,
    which also finishes the trial's MLflow run before `poll()` reports the exit code).
    """

    index: int
    params: dict
    run_id: str
    outputs: dict[str, Path]
    poll_fn: Callable[[], int | None] = field(repr=False)
    kill_fn: Callable[[], None] = field(repr=False)

    def poll(self) -> int | None:
        return self.poll_fn()

    def kill(self) -> None:
        self.kill_fn()

    @classmethod
    def from_process(cls, index: int, params: dict, run_id: str, outputs: dict[str, Path],
                     process: subprocess.Popen) -> "Trial":
        """A trial backed directly by a process (started with `start_new_session=True`); handy in tests."""
        import os
        import signal

        def kill() -> None:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()

        return cls(index, dict(params), run_id, dict(outputs), process.poll, kill)
