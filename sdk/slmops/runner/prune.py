"""Garbage collection of the runner's store (`slmops cache prune`, `slmops env list/prune`).

    entries = cache_entries(store) / env_entries(store)
    chosen = select(entries, older_than_days=30, keep_last=5)      # pure: by last use
    removed = [e for e in chosen if remove(e)]                      # never an entry whose lock is held

An entry's last use is the modification time the runner refreshes when it uses it (a reused step touches its
`done.json`, a step touches its snapshot and its environment's `env.json`). A step that is running holds its cache
entry's lock (exclusive) and its environment's lock (shared), and an environment being built holds its lock
(exclusive): `remove` takes the lock without waiting and leaves the entry when it cannot.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

DAY = 86400.0


@dataclass
class Entry:
    kind: str                  # "step" | "work" | "snapshot" | "download" | "graph" | "env"
    path: Path
    last_used: float
    lock: Path | None = None
    detail: str = ""

    def size(self) -> int:
        if self.path.is_file():
            return self.path.stat().st_size
        return sum(p.lstat().st_size for p in self.path.rglob("*") if p.is_file() and not p.is_symlink())


def _mtime(*paths: Path) -> float:
    times = []
    for path in paths:
        try:
            times.append(path.stat().st_mtime)
        except OSError:
            continue
    return max(times) if times else 0.0


def cache_entries(store: Path) -> list[Entry]:
    store = Path(store)
    found = []
    for d in sorted((store / "cache").glob("*")):
        if d.is_dir():
            state = "finished" if (d / "done.json").exists() else "unfinished attempt"
            found.append(Entry("step", d, _mtime(d, d / "done.json"), d / "lock", state))
    for d in sorted((store / "work").glob("*")):
        key = d.name.split("-", 1)[0]
        locks = sorted((store / "cache").glob(f"{key}*/lock")) if key else []
        found.append(Entry("work", d, _mtime(d), locks[0] if locks else None, "working copy"))
    for d in sorted((store / "snapshots").glob("*")):
        if not d.name.startswith(".tmp-"):
            found.append(Entry("snapshot", d, _mtime(d), None, "code snapshot"))
    for d in sorted((store / "downloads").glob("*")):
        found.append(Entry("download", d, _mtime(d, *d.glob("*")), None, "downloaded input"))
    for f in sorted((store / "graphs").glob("*.json")):
        found.append(Entry("graph", f, _mtime(f), None, "resolved pipeline"))
    return found


def env_entries(store: Path) -> list[Entry]:
    found = []
    for d in sorted((Path(store) / "envs").glob("*")):
        if not d.is_dir():
            continue
        try:
            info = json.loads((d / "env.json").read_text())
            detail = f"{info.get('mode')}: {' '.join(info.get('installed') or [])} ({info.get('label')})"
        except (OSError, ValueError):
            detail = "not built (a failed or interrupted build)"
        found.append(Entry("env", d, _mtime(d / "env.json", d / "build.log", d), d / "lock", detail))
    return found


def select(entries: list[Entry], older_than_days: float | None, keep_last: int | None,
           now: float | None = None) -> list[Entry]:
    """The entries to remove: last used more than `older_than_days` ago (when given) and not among the
    `keep_last` most recently used of their kind (when given)."""
    now = time.time() if now is None else now
    chosen = []
    kinds = sorted({e.kind for e in entries})
    for kind in kinds:
        ranked = sorted((e for e in entries if e.kind == kind), key=lambda e: e.last_used, reverse=True)
        for rank, entry in enumerate(ranked):
            old = older_than_days is None or now - entry.last_used > older_than_days * DAY
            surplus = keep_last is None or rank >= keep_last
            if old and surplus:
                chosen.append(entry)
    return chosen


def remove(entry: Entry) -> bool:
    """Delete an entry unless its lock is held (a running step, a build, an environment in use)."""
    fd = None
    if entry.lock is not None and entry.lock.exists():
        fd = os.open(entry.lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
    try:
        if entry.path.is_dir() and not entry.path.is_symlink():
            shutil.rmtree(entry.path)
        else:
            entry.path.unlink(missing_ok=True)
        return True
    finally:
        if fd is not None:
            os.close(fd)


def human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"
