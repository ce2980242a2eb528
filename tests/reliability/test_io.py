"""Issue 11, item 7 (partial): a full disk or a read-only folder under slmops.io is a UserError saying what, where
and how much space was needed, with nothing half-written; write_json's temp file is unique per writer.

Before: a raw OSError traceback (exit 1) and, for write_json, a `.<name>.tmp` file left behind; two writers of
the same file shared `.<name>.tmp`, so one's os.replace failed with FileNotFoundError or renamed the other's
half-written file into place."""

from __future__ import annotations

import json
import threading

import pytest

from slmops.errors import UserError
from slmops.io import atomic_dir, write_json

BIG = {"blob": "x" * 2_000_000}  # more than the 1 MiB filesystem holds


def test_concurrent_writers_of_one_file_never_collide(tmp_path):
    path = tmp_path / "state.json"
    errors = []

    def writer(n):
        try:
            for i in range(200):
                write_json(path, {"writer": n, "i": i, "pad": "y" * 2000})
        except Exception as exc:  # noqa: BLE001 - the failure is the finding
            errors.append(repr(exc))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert json.loads(path.read_text())["i"] == 199
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_write_json_on_a_full_disk(full_disk):
    path = full_disk / "out" / "report.json"
    with pytest.raises(UserError) as err:
        write_json(path, BIG)
    message = str(err.value)
    assert "no space left" in message and str(path) in message and "needed at least 2,000," in message
    assert "bytes are free" in message
    assert not path.exists() and not list(full_disk.rglob("*.tmp"))


def test_atomic_dir_on_a_full_disk_leaves_nothing(full_disk):
    final = full_disk / "model"
    with pytest.raises(UserError) as err:
        with atomic_dir(final) as tmp:
            (tmp / "small.txt").write_text("ok")
            (tmp / "weights.bin").write_bytes(b"\0" * 2_000_000)
    assert "no space left" in str(err.value) and str(final) in str(err.value)
    assert "needed at least" in str(err.value)
    assert list(full_disk.iterdir()) == []


def test_atomic_dir_keeps_the_previous_output_when_the_disk_fills(full_disk):
    final = full_disk / "model"
    with atomic_dir(final) as tmp:
        (tmp / "v1.txt").write_text("v1")
    with pytest.raises(UserError, match="no space left"):
        with atomic_dir(final) as tmp:
            (tmp / "weights.bin").write_bytes(b"\0" * 2_000_000)
    assert [p.name for p in final.iterdir()] == ["v1.txt"]
    assert [p.name for p in full_disk.iterdir()] == ["model"]


def test_a_read_only_folder(read_only_dir):
    with pytest.raises(UserError, match="(read-only file system|permission denied).*writable path") as err:
        write_json(read_only_dir / "report.json", {"a": 1})
    assert str(read_only_dir / "report.json") in str(err.value)
    with pytest.raises(UserError, match="(read-only file system|permission denied).*writable path"):
        with atomic_dir(read_only_dir / "model") as tmp:
            (tmp / "x").write_text("never")
    assert list(read_only_dir.iterdir()) == []


def test_other_errors_pass_through(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_dir(tmp_path / "out"):
            open(tmp_path / "no-such-input.txt").read()
    assert list(tmp_path.iterdir()) == []
