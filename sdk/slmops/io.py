"""Atomic outputs: a step writes into a temporary sibling folder and renames it into place when done.

Nothing half-written is ever left at the final path: a crash leaves only a `.tmp-*` folder that the next
attempt removes. A full disk or a read-only folder is a UserError (exit 2) saying what could not be written,
where, and how much space it needed, with the temporary files already removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from slmops.errors import UserError

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
_NO_SPACE_TEXT = ("No space left on device", "os error 28", "Disk quota exceeded")  # torch/safetensors wrap OSError


def _size(path: Path) -> int:
    """Bytes under `path` (a file or a folder), 0 when it is gone."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _free(path: Path) -> int | None:
    for p in (path, *path.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(p).free
    return None


def _storage_error(exc: BaseException, what: str, where: Path, needed: int | None) -> UserError | None:
    """A UserError for a full disk or an unwritable folder, or None when `exc` is something else."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code in _NO_SPACE or (code is None and any(t in str(exc) for t in _NO_SPACE_TEXT)):
        free = _free(where)
        need = f"; it needed at least {needed:,} bytes" if needed else ""
        have = f", {free:,} bytes are free there" if free is not None else ""
        return UserError(f"could not write {what} to {where}: no space left on the device{need}{have}; "
                         f"free some space or pass a path on a larger disk (nothing was left half-written)")
    if code in _NOT_WRITABLE:
        reason = "read-only file system" if code == errno.EROFS else "permission denied"
        return UserError(f"could not write {what} to {where}: {reason} ({exc.filename or where}); pass a writable "
                         f"path (nothing was left half-written)")
    return None


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike):
    """Yield a temp folder beside `final`; on success replace `final` with it, on error delete it.

    Azure ML mounts output folders that already exist (possibly empty); we fill them only at the end. A full disk
    or a read-only folder while creating, filling or moving the temp folder becomes a UserError."""
    final = Path(final)
    prefix = f".tmp-{final.name}-"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.iterdir():
            # mkdtemp's suffix has no '-': `.tmp-model-adapter-x1y2` is the live folder of a sibling `model-adapter`
            if stale.name.startswith(prefix) and "-" not in stale.name[len(prefix):]:
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
        tmp.chmod(0o755)
    except OSError as exc:
        if (error := _storage_error(exc, "an output folder", final, None)) is None:
            raise
        raise error from None
    try:
        yield tmp
    except BaseException as exc:
        needed = _size(tmp)  # what it had written when it failed: the least it needed
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, UserError) or not isinstance(exc, Exception) \
                or (error := _storage_error(exc, "the output", final, needed)) is None:
            raise
        raise error from exc
    try:
        if final.exists() and any(final.iterdir()):
            shutil.rmtree(final)
        if final.exists():
            # An existing empty folder may be a mount point: move the contents in rather than the folder.
            for child in tmp.iterdir():
                os.replace(child, final / child.name)
            tmp.rmdir()
        else:
            os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if (error := _storage_error(exc, "the output", final, None)) is None:
            raise
        raise error from None


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically (write_text), pretty-printed and key-sorted for stable diffs."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically: a temp file unique to this writer, then a rename, so a reader never sees
    half a file and a failure (a full disk: a UserError saying so) leaves none. Two processes writing the same file
    each rename a whole file into place; the last one wins."""
    path = Path(path)
    data = text.encode("utf-8")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make registration/report files unreadable to others
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if not isinstance(exc, OSError) or (
                error := _storage_error(exc, f"{path.name} ({len(data):,} bytes)", path, len(data))) is None:
            raise
        raise error from None
    return path
