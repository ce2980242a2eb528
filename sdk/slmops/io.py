"""Atomic outputs: a step writes into a temporary sibling folder and renames it into place when done.

Nothing half-written is ever left at the final path: a crash leaves only a `.tmp-*` folder that the next
attempt removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike):
    """Yield a temp folder beside `final`; on success replace `final` with it, on error delete it.

    Azure ML mounts output folders that already exist (possibly empty); we fill them only at the end.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".tmp-{final.name}-"
    for stale in final.parent.iterdir():
        # mkdtemp's suffix has no '-': `.tmp-model-adapter-x1y2` is the live folder of a sibling `model-adapter`
        if stale.name.startswith(prefix) and "-" not in stale.name[len(prefix):]:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists() and any(final.iterdir()):
        shutil.rmtree(final)
    if final.exists():
        # An existing empty folder may be a mount point: move the contents in rather than the folder.
        for child in tmp.iterdir():
            os.replace(child, final / child.name)
        tmp.rmdir()
    else:
        os.replace(tmp, final)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically (temp file + rename), pretty-printed and key-sorted for stable diffs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
