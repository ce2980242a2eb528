"""A fresh working copy of a step's code snapshot for every step and sweep trial, as each Azure ML job gets its own.

    work = Workspace.create(store / "work", snapshot, tag="train")   # <store>/work/<tag>-<id>/{cwd,py}
    ... run the step with cwd=work.cwd ...
    work.harvest()        # ./outputs (Azure ML's default artifacts) -> returned folder, or None
    work.remove()         # or keep it for a failed step (its path is in the failure report)

The snapshot (`<store>/snapshots/<code hash>/`) is shared and must stay as Azure ML uploaded it. Small files are
copied; files of `LINK_MIN` bytes or more are hard-linked (a rename or delete in the working copy never reaches the
snapshot; writing into such a file in place would, so `check_links` compares them after the step and discards a
snapshot that was changed: it is rebuilt from the code folder next time). `./outputs` exists in the working directory
when the step starts, as on Azure ML.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

LINK_MIN = 1 << 20       # files this big are hard-linked, smaller ones copied


@dataclass
class Workspace:
    root: Path                         # <store>/work/<tag>-<id>
    snapshot: Path
    links: dict[str, tuple[int, int]] = field(default_factory=dict)   # rel path -> (size, mtime_ns) when linked

    @property
    def cwd(self) -> Path:
        return self.root / "cwd"

    @property
    def layer(self) -> Path:
        return self.root / "py"

    @classmethod
    def create(cls, base: Path, snapshot: Path, tag: str) -> "Workspace":
        root = Path(base) / f"{_safe(tag)}-{uuid.uuid4().hex[:10]}"
        work = cls(root, Path(snapshot))
        cwd = work.cwd
        cwd.mkdir(parents=True)
        for folder, dirs, files in os.walk(snapshot):
            rel = Path(folder).relative_to(snapshot)
            for name in dirs:
                (cwd / rel / name).mkdir()
            for name in files:
                src, dst = Path(folder) / name, cwd / rel / name
                st = src.lstat()
                if os.path.islink(src):
                    os.symlink(os.readlink(src), dst)
                elif st.st_size >= LINK_MIN:
                    try:
                        os.link(src, dst)
                        work.links[str(rel / name)] = (st.st_size, st.st_mtime_ns)
                    except OSError:             # another file system, or links not allowed
                        shutil.copy2(src, dst)
                else:
                    shutil.copy2(src, dst)
        (cwd / "outputs").mkdir(exist_ok=True)
        return work

    def check_links(self) -> list[str]:
        """Linked files the step changed in place (so the shared snapshot changed too); the snapshot is removed."""
        changed = []
        for rel, (size, mtime) in self.links.items():
            try:
                st = (self.snapshot / rel).stat()
            except FileNotFoundError:
                continue
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                changed.append(rel)
        if changed:
            shutil.rmtree(self.snapshot, ignore_errors=True)
        return changed

    def outputs(self) -> Path | None:
        """The step's ./outputs folder when it holds anything (Azure ML's default artifacts of the job)."""
        folder = self.cwd / "outputs"
        return folder if folder.is_dir() and any(folder.iterdir()) else None

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:60]
