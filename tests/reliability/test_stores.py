"""Issue 11, item 1: the embedded MLflow sqlite store is created under a lock and atomically, so processes that
start together on a new path all succeed; a damaged store is a UserError (exit 2) naming the file and the fix.

Before: 10 processes opening a new `sqlite:///reg.db` at once -> 0/10 succeed (alembic "duplicate column name",
"table _alembic_tmp_runs already exists"), and the store stays broken for every later process."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from slmops import registry, tracking
from slmops.errors import UserError

# One process imports slmops.registry and MLflow and forks ten children (the imports paid once, not ten times on
# two cores);
# each child waits for the go file, then opens the store as register/serve/promote do (slmops.registry.client:
# ensure_store, then both MLflow stores, each child with connections of its own) and creates a registered model of
# its own. "ready" once all ten wait; then the failed children's numbers.
CHILDREN = """
import json, os, sys, time, traceback
go, uri = sys.argv[1], sys.argv[2]
from slmops import registry
import mlflow  # what registry.client imports when called (lazily): the modules only, no store is opened
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking._tracking_service.utils import _get_sqlalchemy_store
pids = []
for i in range(10):
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            while not os.path.exists(go):
                time.sleep(0.01)
            registry.ensure_registered_model(uri, f"model-{i}")
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stderr.flush()
        os._exit(code)
    pids.append(pid)
print("ready", flush=True)
print(json.dumps([i for i, pid in enumerate(pids) if os.waitpid(pid, 0)[1] != 0]))
"""


def test_ten_processes_create_a_new_store_at_once(tmp_path):
    db = tmp_path / "stores" / "reg.db"
    uri = f"sqlite:///{db}"
    go = tmp_path / "go"
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    proc = subprocess.Popen([sys.executable, "-c", CHILDREN, str(go), uri], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"   # all ten have imported mlflow, so the creations really overlap
    go.touch()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    failed = json.loads(out.strip().splitlines()[-1])
    assert not failed, f"{len(failed)}/10 failed:\n" + err[-6000:]
    assert sorted(m.name for m in registry.client(uri).search_registered_models()) == \
        sorted(f"model-{i}" for i in range(10))
    assert not list(db.parent.glob(".reg.db.creating-*"))  # no temp store left behind
    assert (db.parent / "reg.db.lock").exists()


def test_an_empty_file_becomes_a_store(tmp_path):
    db = tmp_path / "mlflow.db"
    db.touch()
    tracking.ensure_store(f"sqlite:///{db}")
    assert tracking._inspect(db) == ("ready", "")


def _interrupted_migration(db):
    tracking.ensure_store(f"sqlite:///{db}")
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE _alembic_tmp_runs (run_uuid VARCHAR(32))")


def _no_schema_version(db):
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE experiments (experiment_id INTEGER)")


def _truncated(db):
    tracking.ensure_store(f"sqlite:///{db}")
    with open(db, "r+b") as f:
        f.truncate(20_000)


DAMAGE = [
    ("not sqlite", lambda db: db.write_bytes(b"this is not a database" * 10), "not an SQLite database"),
    ("truncated", _truncated, "sqlite cannot read it"),
    ("interrupted migration", _interrupted_migration, "schema migration was interrupted"),
    ("tables without a schema version", _no_schema_version, "no MLflow schema version"),
]


@pytest.mark.parametrize("damage, says", [(d, s) for _, d, s in DAMAGE], ids=[i for i, _, _ in DAMAGE])
def test_a_damaged_store_names_the_file_and_the_fix(tmp_path, damage, says):
    db = tmp_path / "mlflow.db"
    damage(db)
    old = time.time() - 3600
    os.utime(db, (old, old))  # a store damaged an hour ago (a fresh one is looked at again for a while)
    with pytest.raises(UserError, match=says) as err:
        tracking.ensure_store(f"sqlite:///{db}")
    assert str(db) in str(err.value) and f"mv {db} {db}.damaged" in str(err.value)


def test_a_damaged_store_exits_2_from_the_cli(tmp_path, monkeypatch):
    from slmops.cli import main

    db = tmp_path / "mlflow.db"
    db.write_bytes(b"garbage" * 100)
    old = time.time() - 3600
    os.utime(db, (old, old))
    result = CliRunner().invoke(main, ["serve", "models:/tone@production", "--tracking-uri", f"sqlite:///{db}"])
    assert result.exit_code == 2, result.output
    assert f"the MLflow store {db} is damaged" in result.output


def test_a_store_being_created_by_another_process_is_waited_for(tmp_path):
    """A store that looks half-created but was written just now is looked at again: a process creating it without
    the lock (an older slmops, plain mlflow) may be half-way through its migrations."""
    db = tmp_path / "mlflow.db"
    _interrupted_migration(db)

    def finish():
        time.sleep(1)
        with sqlite3.connect(db) as con:
            con.execute("DROP TABLE _alembic_tmp_runs")

    import threading

    t = threading.Thread(target=finish)
    t.start()
    tracking.ensure_store(f"sqlite:///{db}")
    t.join()


def test_other_uris_are_left_alone(tmp_path):
    for uri in ("http://127.0.0.1:5000", "azureml://x", "sqlite://", "sqlite:///:memory:"):
        tracking.ensure_store(uri)
    assert tracking.sqlite_path(f"sqlite:///{tmp_path}/a.db?mode=rw") == tmp_path / "a.db"
