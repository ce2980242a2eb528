"""Steps die with the runner, even when the runner is SIGKILLed (or its machine's job is cancelled hard).

Each step runs in its own process group (so the runner can stop all of a step's processes at once). A runner that
is killed with SIGKILL cannot stop them itself, so `slmops run` starts this watchdog in its own session, with a
pipe on its stdin, and tells it what to clean up:

    group PGID            a step's process group started
    ended PGID            it ended (nothing to do for it any more)
    run RUN_ID            an MLflow run that is RUNNING (step, trial or pipeline)
    closed RUN_ID         it ended
    done                  the runner ended normally: exit without doing anything

When the pipe closes without `done`, the runner died: the watchdog sends SIGTERM to every live group, SIGKILL after
GRACE_SECONDS, marks the open MLflow runs KILLED (sqlite stores, with the standard library), and rewrites the run
folder's run.json and each step.json that still says running as killed.

    python -m slmops.runner.watchdog RUN_DIR TRACKING_URI < pipe
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

from slmops.io import write_json

GRACE_SECONDS = 3.0


def stop_groups(groups: set[int], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM every process group, then SIGKILL the ones still there after `grace` seconds."""
    alive = set()
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGTERM)
            alive.add(pgid)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        for pgid in list(alive):
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                alive.discard(pgid)
        time.sleep(0.05)
    for pgid in alive:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def mark_runs_killed(uri: str, run_ids: set[str]) -> None:
    if not run_ids or not uri.startswith("sqlite:///"):
        return
    db = uri[len("sqlite:///"):]
    with sqlite3.connect(db, timeout=30) as con:
        now = int(time.time() * 1000)
        con.executemany("UPDATE runs SET status = 'KILLED', end_time = ? WHERE run_uuid = ? AND status = 'RUNNING'",
                        [(now, run_id) for run_id in run_ids])


def mark_records_killed(run_dir: Path, pipeline_run: str | None = None, uri: str | None = None) -> None:
    """run.json and every step.json of the run folder that still say running: killed, with the reason."""
    reason = "the runner was killed (SIGKILL); its steps were stopped by the watchdog"
    for step_file in run_dir.glob("*/step.json"):
        try:
            record = json.loads(step_file.read_text())
        except (OSError, ValueError):
            continue
        if record.get("status") == "running":
            record.update(status="killed", reason=reason)
            write_json(step_file, record)
    run_file = run_dir / "run.json"
    try:
        record = json.loads(run_file.read_text()) if run_file.exists() else {}
    except (OSError, ValueError):
        record = {}
    record.update(status="KILLED", reason=reason)
    if pipeline_run:
        record.setdefault("mlflow_run_id", pipeline_run)
        record.setdefault("tracking_uri", uri)
    write_json(run_file, record)


def main(argv=None) -> int:
    run_dir, uri = (argv or sys.argv[1:])[:2]
    groups: set[int] = set()
    runs: set[str] = set()
    pipeline_run = None             # the first run the runner opens is the pipeline's
    for line in sys.stdin:
        word, _, value = line.strip().partition(" ")
        if word == "done":
            return 0
        if word == "group":
            groups.add(int(value))
        elif word == "ended":
            groups.discard(int(value))
        elif word == "run":
            runs.add(value)
            pipeline_run = pipeline_run or value
        elif word == "closed":
            runs.discard(value)
    # The pipe closed without "done": the runner is gone.
    stop_groups(groups)
    try:
        mark_runs_killed(uri, runs)
    finally:
        mark_records_killed(Path(run_dir), pipeline_run, uri)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # a Ctrl-C meant for the runner must not stop the watchdog
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sys.exit(main())


class Client:
    """The runner's side: starts the watchdog and tells it about process groups and MLflow runs."""

    def __init__(self, run_dir: Path, uri: str):
        import subprocess

        self.proc = subprocess.Popen([sys.executable, "-m", "slmops.runner.watchdog", str(run_dir), uri],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, text=True)

    def _say(self, line: str) -> None:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass                                   # a dead watchdog must not stop the run

    def group(self, pgid: int) -> None:
        self._say(f"group {pgid}")

    def ended(self, pgid: int) -> None:
        self._say(f"ended {pgid}")

    def done(self) -> None:
        """The runner ends normally (it stopped its own steps): the watchdog exits without acting."""
        self._say("done")
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=10)


class Watched:
    """A tracker whose RUNNING runs the watchdog knows, so it can mark them KILLED if the runner dies."""

    def __init__(self, tracker, client: Client):
        self._tracker, self._client = tracker, client

    def __getattr__(self, name):
        return getattr(self._tracker, name)

    def start_run(self, *args, **kwargs):
        run_id = self._tracker.start_run(*args, **kwargs)
        self._client._say(f"run {run_id}")
        return run_id

    def end_run(self, run_id, *args, **kwargs):
        result = self._tracker.end_run(run_id, *args, **kwargs)
        self._client._say(f"closed {run_id}")
        return result
