"""Reliability fixtures: a `slmops serve` process on the tiny model, and small filesystems to fill or write-protect."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from slmops.serving import serve as srv

STARTUP_S = 90
KEY = "reliability-key-0123456789abcdef"


class Served:
    """A running `slmops serve MODEL` process (its own log file), stopped with SIGTERM."""

    def __init__(self, model, tmp: Path, key: str = KEY):
        self.port = srv.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = key
        self.log = tmp / f"serve-{self.port}.log"
        env = dict(os.environ, OMP_NUM_THREADS="1", **{srv.KEY_ENV: key})
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(["slmops", "serve", str(model), "--port", str(self.port)], env=env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        srv.wait_ready(self.url, STARTUP_S, self.proc, self.log)

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    s = Served(tiny_model, tmp_path_factory.mktemp("serve-reliability"))
    yield s
    s.stop()


def _mount(target: Path, options: str) -> str | None:
    """Mount a tmpfs at `target`; None when done, else why it could not be (the test then skips saying so)."""
    if not shutil.which("mount"):
        return "no mount command on this machine"
    target.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True,
                         text=True, timeout=30)
    if run.returncode != 0:
        return f"cannot mount a tmpfs here (mount -t tmpfs -o {options}: {run.stderr.strip() or run.returncode})"
    return None


def _unmount(target: Path) -> None:
    if subprocess.run(["umount", str(target)], capture_output=True, timeout=30).returncode != 0:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs: writing more than that fails with ENOSPC."""
    target = tmp_path / "small"
    why = _mount(target, "size=1m")
    if why:
        pytest.skip(why)
    yield target
    _unmount(target)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder writes fail in: a read-only tmpfs (as root, permission bits would not stop us), or a 0555 folder
    for other users."""
    target = tmp_path / "ro"
    if os.geteuid() != 0:
        target.mkdir()
        target.chmod(0o555)
        yield target
        target.chmod(0o755)
        return
    why = _mount(target, "ro,size=1m")
    if why:
        pytest.skip(why)
    yield target
    _unmount(target)
