"""MLflow tracking for steps, as Azure ML does it: log into the run named by `MLFLOW_RUN_ID`.

The local runner and Azure ML both set `MLFLOW_TRACKING_URI` and `MLFLOW_RUN_ID` for a step process, so a
step only has to log. Run outside either (plain `python -m slmops.steps.x`), nothing is tracked unless
`MLFLOW_TRACKING_URI` is set, in which case a new run is started. Under torchrun only rank 0 logs.

    from slmops import tracking
    with tracking.step_run() as run:      # run is None when tracking is off
        tracking.log_params({"lr": 1e-4})
        tracking.log_metrics({"loss": 1.2}, step=10)

The step's run logs MLflow's system metrics (`system/cpu_utilization_percentage`,
`system/system_memory_usage_megabytes`, `system/gpu_0_utilization_percentage`, `system/gpu_0_memory_usage_megabytes`,
...: psutil, and nvidia-ml-py for GPUs) every SYSTEM_METRICS_INTERVAL_S seconds;
MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL sets another interval, MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false turns them
off. `slmops.resources` sums up the step's own use.

The embedded sqlite store (`sqlite:///mlflow.db`) is created by `ensure_store(uri)`: under a file lock beside
the database, migrated in a temp file that is renamed into place, so any number of processes may start at once on
a new path; a store that is damaged anyway is a UserError naming the file and the fix. `open_store(uri)` adds
one open through MLflow (schema checks); `step_run()` and `slmops.registry.client()` call it, the local runner
calls `ensure_store(uri)` before creating its store.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import sqlite3
import time
import urllib.parse
from pathlib import Path

from slmops.errors import UserError

_active = False
SYSTEM_METRICS_INTERVAL_S = 5  # MLflow's default is 10 s; a sample costs a few psutil calls and one run lookup
_SQLITE = "sqlite:///"
# Tables every MLflow 3 store has once its migrations ran (tracking and registry share the database).
_CORE_TABLES = {"experiments", "runs", "metrics", "params", "tags", "registered_models", "model_versions",
                "model_version_tags", "registered_model_aliases"}


def enabled() -> bool:
    if int(os.environ.get("RANK", "0")) != 0:
        return False
    return bool(os.environ.get("MLFLOW_RUN_ID") or os.environ.get("MLFLOW_TRACKING_URI"))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (relative to the working directory unless absolute); None for any
    other URI and for an in-memory database."""
    if not uri.startswith(_SQLITE):
        return None
    rest = uri[len(_SQLITE):].split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None


def _inspect(db: Path) -> tuple[str, str]:
    """("ready" | "new" | "damaged", why): a store we can open, a file to create (missing, empty, or an sqlite file
    without tables), or a damaged one. Standard library only, reads a few pages: cheap enough for every open."""
    try:
        if not db.exists() or db.stat().st_size == 0:
            return "new", ""
        with open(db, "rb") as f:
            magic = f.read(16)
        if magic != b"SQLite format 3\x00":
            return "damaged", f"it is not an SQLite database (it starts with {magic[:16]!r})"
        con = sqlite3.connect(f"file:{urllib.parse.quote(str(db.resolve()))}?mode=ro", uri=True, timeout=30)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                return "new", ""
            leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
            if leftovers:
                return "damaged", f"a schema migration was interrupted half-way (leftover tables {leftovers})"
            if "alembic_version" not in tables:
                return "damaged", f"it has tables {sorted(tables)[:5]}... but no MLflow schema version"
            versions = [r[0] for r in con.execute("SELECT version_num FROM alembic_version")]
            missing = sorted(_CORE_TABLES - tables)
            if len(versions) != 1 or missing:
                return "damaged", (f"its schema was only partly created (schema versions {versions}, missing tables "
                                   f"{missing})")
            con.execute("SELECT count(*) FROM experiments").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return "damaged", f"sqlite cannot read it ({exc})"
    return "ready", ""


def _settled(db: Path, wait_s: float = 30) -> tuple[str, str]:
    """_inspect(), but a store that looks damaged while it was written in the last two minutes is looked at again
    for up to `wait_s`: a process that creates it without our lock (an older slmops, plain mlflow) may be
    half-way through its migrations."""
    deadline = time.monotonic() + wait_s
    delay = 0.2
    while True:
        state, why = _inspect(db)
        try:
            recent = time.time() - db.stat().st_mtime < 120
        except OSError:
            recent = False
        if state != "damaged" or not recent or time.monotonic() > deadline:
            return state, why
        time.sleep(delay)
        delay = min(delay * 2, 3)


def damaged_store_error(db: Path, why: str) -> UserError:
    return UserError(f"the MLflow store {db} is damaged: {why}. It cannot be repaired in place: move it aside "
                     f"(mv {db} {db}.damaged) and run again to start a new store, or restore it from a backup")


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _create_store(db: Path) -> None:
    """Create and migrate a new store in a temp file beside `db`, then rename it into place (caller holds the lock)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service.utils import _get_sqlalchemy_store

    for stale in db.parent.glob(f".{db.name}.creating-*"):  # a creator that died; only the lock holder creates
        stale.unlink(missing_ok=True)
    tmp = db.with_name(f".{db.name}.creating-{os.getpid()}-{secrets.token_hex(4)}")
    tmp_uri = f"{_SQLITE}{tmp.resolve()}"
    try:
        # The same store (migrations, default experiment, artifact root) MlflowClient(uri) would create in place.
        store = _get_sqlalchemy_store(tmp_uri, None)
        store.engine.dispose()
        getattr(SqlAlchemyStore, "_engine_map", {}).pop(tmp_uri, None)
        os.replace(tmp, db)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)


def ensure_store(uri: str) -> None:
    """Make sure the MLflow store at `uri` exists and looks whole, creating it if needed. Only `sqlite:///` URIs are
    touched (servers and Azure ML manage their own stores).

    Creation is serialized by a lock file beside the database (`<db>.lock`) and atomic: the schema is created and
    migrated in a temp file that is renamed into place, so processes that start together on a new path all succeed
    and none ever sees a half-migrated store. UserError (exit 2) naming the file and the fix when it is damaged."""
    db = sqlite_path(uri)
    if db is None:
        return
    state, why = _settled(db)
    if state == "ready":
        return
    if state == "damaged":
        raise damaged_store_error(db, why)
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(db.with_name(db.name + ".lock")):
            state, why = _inspect(db)  # another process may have created it while we waited
            if state == "new":
                _create_store(db)
            elif state == "damaged":
                raise damaged_store_error(db, why)
    except OSError as exc:
        raise UserError(f"cannot create the MLflow store {db}: {exc.strerror or exc} ({exc.filename or db.parent}); "
                        f"set MLFLOW_TRACKING_URI to a sqlite file in a writable folder with free space") from None


_opened: set[str] = set()  # tracking URIs whose store this process has opened once
_BUSY = ("database is locked", "Giving up after")  # a store in use, not a damaged one


def open_store(uri: str) -> None:
    """ensure_store(), then open the sqlite store once through MLflow (both the tracking and the registry store
    verify their schema then): UserError naming the file and the fix when MLflow cannot open it (a schema from
    another MLflow version, damage the quick look missed). Once per URI and process; other URIs are left alone."""
    db = sqlite_path(uri)
    if db is None or uri in _opened:
        return
    ensure_store(uri)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    try:
        c = MlflowClient(tracking_uri=uri, registry_uri=uri)
        c.search_experiments(max_results=1)
        c.search_registered_models(max_results=1)
    except Exception as exc:
        if any(m in str(exc) for m in _BUSY):
            raise
        first = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else type(exc).__name__
        raise UserError(f"the MLflow store {db} cannot be opened: {first}. If MLflow says its schema is out of "
                        f"date, back it up and run: mlflow db upgrade {uri}; otherwise it is damaged: move it aside "
                        f"(mv {db} {db}.damaged) and run again to start a new store, or restore a backup") from None
    _opened.add(uri)


def system_metrics_on() -> bool:
    """MLflow's system metrics for the step's run: on unless MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false, and
    only with psutil installed (MLflow refuses to start the run without it)."""
    off = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").strip().lower() in ("false", "0")
    return not off and importlib.util.find_spec("psutil") is not None


@contextlib.contextmanager
def step_run():
    """Open the step's MLflow run, sampling system metrics while it is open (or yield None when tracking is off)."""
    global _active
    if not enabled():
        yield None
        return
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", str(SYSTEM_METRICS_INTERVAL_S))
    if os.environ.get("MLFLOW_TRACKING_URI"):
        open_store(os.environ["MLFLOW_TRACKING_URI"])
    import mlflow

    previous, active = _active, mlflow.active_run()
    with contextlib.nullcontext(active) if active is not None else \
            mlflow.start_run(run_id=os.environ.get("MLFLOW_RUN_ID"), log_system_metrics=system_metrics_on()) as run:
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
