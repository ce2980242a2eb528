"""MLflow records for a local pipeline run: one parent run per pipeline, one child run per step.

The runner never logs params into a step's run: the step's own script logs there (sklearn autolog, Trainer...), and
MLflow refuses a param logged twice with another value. A step's inputs are tags of its run (`slmops.input.<name>`)
and params of the pipeline's parent run (`<node>.<input>`). A step's `./outputs` folder (Azure ML's default
artifacts) is logged as the artifacts of its run, under `outputs/`.

The embedded default is a sqlite store at `<store>/mlflow.db` (artifacts in `<store>/mlartifacts/`), or
`MLFLOW_TRACKING_URI` when set. Importing mlflow costs ~2 s, so once the sqlite database and the experiment
exist, runs, params and tags are written with the standard library's sqlite3 into MLflow's own tables; they are
ordinary MLflow runs that `mlflow.MlflowClient` reads. Only the first run (creating the database through
MLflow's migrations) and non-sqlite tracking URIs go through the mlflow client.
"""

from __future__ import annotations

import getpass
import os
import shutil
import sqlite3
import time
import uuid
from pathlib import Path


def default_uri(store: Path) -> str:
    return f"sqlite:///{(Path(store) / 'mlflow.db').resolve()}"


def open_tracker(uri: str, experiment: str, store: Path):
    """A recorder for `experiment` (created if missing) at `uri`."""
    if uri.startswith("sqlite:///"):
        from slmops.tracking import ensure_store

        ensure_store(uri)       # created under a lock, atomically; a damaged store is a UserError naming the file
        db = Path(uri[len("sqlite:///"):])
        if db.exists():
            found = _sqlite_experiment(db, experiment)
            if found is not None:
                return SqliteRecorder(uri, db, *found)
        client_recorder = MlflowRecorder(uri, experiment, Path(store) / "mlartifacts")
        return SqliteRecorder(uri, db, client_recorder.experiment_id, client_recorder.artifact_location)
    return MlflowRecorder(uri, experiment, None)


def _sqlite_experiment(db: Path, name: str):
    with sqlite3.connect(db, timeout=30) as con:
        try:
            row = con.execute("SELECT experiment_id, artifact_location FROM experiments "
                              "WHERE name = ? AND lifecycle_stage = 'active'", (name,)).fetchone()
        except sqlite3.OperationalError:     # an empty file, not an MLflow database yet
            return None
    return (str(row[0]), row[1]) if row else None


def _now_ms() -> int:
    return int(time.time() * 1000)


class SqliteRecorder:
    """Runs written straight into an existing MLflow sqlite store."""

    def __init__(self, uri: str, db: Path, experiment_id: str, artifact_location: str):
        self.uri = uri
        self.db = db
        self.experiment_id = experiment_id
        self.artifact_location = artifact_location

    def _connect(self):
        return sqlite3.connect(self.db, timeout=60)

    def start_run(self, name: str, parent_id: str | None = None, tags: dict | None = None,
                  params: dict | None = None) -> str:
        run_id = uuid.uuid4().hex
        user = _user()
        all_tags = {"mlflow.runName": name, "mlflow.user": user, "mlflow.source.type": "LOCAL",
                    "mlflow.source.name": "slmops run", **(tags or {})}
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        with self._connect() as con:
            con.execute(
                "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, "
                "start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id) "
                "VALUES (?, ?, 'LOCAL', 'slmops run', '', ?, 'RUNNING', ?, NULL, '', 'active', ?, ?)",
                (run_id, name, user, _now_ms(), f"{self.artifact_location}/{run_id}/artifacts",
                 int(self.experiment_id)))
            con.executemany("INSERT OR REPLACE INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
                            [(k, str(v)[:8000], run_id) for k, v in all_tags.items()])
            con.executemany("INSERT OR REPLACE INTO params (key, value, run_uuid) VALUES (?, ?, ?)",
                            [(k, _param(v), run_id) for k, v in (params or {}).items()])
        return run_id

    def set_tags(self, run_id: str, tags: dict) -> None:
        with self._connect() as con:
            con.executemany("INSERT OR REPLACE INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
                            [(k, str(v)[:8000], run_id) for k, v in tags.items()])

    def log_params(self, run_id: str, params: dict) -> None:
        with self._connect() as con:
            con.executemany("INSERT OR REPLACE INTO params (key, value, run_uuid) VALUES (?, ?, ?)",
                            [(k[:250], _param(v), run_id) for k, v in params.items()])

    def artifact_dir(self, run_id: str) -> Path | None:
        """The folder of a run's artifacts when the experiment stores them on this file system."""
        return _local_dir(f"{self.artifact_location}/{run_id}/artifacts")

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str) -> Path | None:
        target = self.artifact_dir(run_id)
        if target is None:
            return None
        shutil.copytree(folder, target / artifact_path, dirs_exist_ok=True)
        return target

    def end_run(self, run_id: str, status: str) -> None:
        with self._connect() as con:
            con.execute("UPDATE runs SET status = ?, end_time = ? WHERE run_uuid = ?", (status, _now_ms(), run_id))


class MlflowRecorder:
    """The same records through the mlflow client (any tracking URI; used to create a new sqlite store)."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path | None):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import logging

        from mlflow import MlflowClient

        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)   # "Creating initial tables..."

        self.uri = uri
        self.client = MlflowClient(uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            location = (artifact_root / experiment).resolve().as_uri() if artifact_root else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = found.experiment_id
        self.artifact_location = self.client.get_experiment(self.experiment_id).artifact_location

    def start_run(self, name: str, parent_id: str | None = None, tags: dict | None = None,
                  params: dict | None = None) -> str:
        all_tags = {"mlflow.source.name": "slmops run", **(tags or {})}
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags={k: str(v) for k, v in all_tags.items()})
        for key, value in (params or {}).items():
            self.client.log_param(run.info.run_id, key, _param(value))
        return run.info.run_id

    def set_tags(self, run_id: str, tags: dict) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value))

    def log_params(self, run_id: str, params: dict) -> None:
        for key, value in params.items():
            self.client.log_param(run_id, key[:250], _param(value))

    def artifact_dir(self, run_id: str) -> Path | None:
        return _local_dir(self.client.get_run(run_id).info.artifact_uri)

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str) -> Path | None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)
        return self.artifact_dir(run_id)

    def end_run(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)


def _local_dir(uri: str) -> Path | None:
    from urllib.parse import unquote, urlparse

    if uri.startswith("file:"):
        return Path(unquote(urlparse(uri).path))
    return Path(uri) if "://" not in uri and uri.startswith("/") else None


def _param(value) -> str:
    return ("" if value is None else str(value))[:6000]


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:          # no user database entry (containers)
        return "unknown"
