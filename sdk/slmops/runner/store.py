"""The on-disk store beside the run folders (`<run dir parent>/.slmops/`): content hashes, code snapshots, step cache.

    .slmops/
      mlflow.db, mlartifacts/      embedded MLflow tracking (see slmops.runner.tracking)
      graphs/<key>.json            resolved pipeline graphs (see slmops.pipeline.load.cached_graph)
      filehash.json                sha256 per file, keyed by (path, size, mtime): big inputs are hashed once
      snapshots/<code hash>/       copies of components' `code:` folders (less what `.amlignore` excludes)
      bin/<hash>/python            `python`/`python3` shims for the interpreter steps run in (first on PATH)
      cache/<step key>/attempt/<output>/   outputs of a running or failed attempt (handed to the retry as is)
      cache/<step key>/done/<output>/      outputs of a finished step: renamed from attempt/ in one step
      cache/<step key>/done.json           what the finished step produced (output content hashes, run id)

A step's key hashes everything Azure ML's reuse rule names: the component spec, the code snapshot's content, the
environment definition, input contents and parameter values, and output/run settings.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from slmops.pipeline.graph import Node
from slmops.io import write_json

IGNORED = {"__pycache__", ".git", ".ipynb_checkpoints", ".pytest_cache"}


def code_files(folder: str | os.PathLike) -> list[Path]:
    """The files of a `code:` folder that Azure ML snapshots, relative to it, sorted.

    Azure ML leaves out what the folder's `.amlignore` names (or its `.gitignore` when there is no `.amlignore`),
    in gitignore syntax; caches (`__pycache__`, `*.pyc`, `.git`) never count. The local runner hashes and copies
    exactly these files, so an edit to an ignored file neither re-runs a step nor changes what `submit` uploads.
    """
    import pathspec

    folder = Path(folder)
    spec = None
    for name in (".amlignore", ".gitignore"):
        if (folder / name).is_file():
            spec = pathspec.GitIgnoreSpec.from_lines((folder / name).read_text().splitlines())
            break
    found = []
    for root, dirs, files in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        dirs[:] = sorted(d for d in dirs if d not in IGNORED
                         and not (spec and spec.match_file(f"{(rel_root / d).as_posix()}/")))
        for name in sorted(files):
            rel = rel_root / name
            if name.endswith(".pyc") or (spec and spec.match_file(rel.as_posix())):
                continue
            found.append(rel)
    return sorted(found)


class Store:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._hash_file = self.root / "filehash.json"
        try:
            self._hashes = json.loads(self._hash_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self._hashes = {}
        self._dirty = False

    # ---------------------------------------------------------------------------------------------- hashing
    def hash_path(self, path: str | os.PathLike) -> str:
        """sha256 over a file, or over a folder's relative names and file contents (ignoring caches)."""
        path = Path(path)
        digest = hashlib.sha256()
        if path.is_file():
            digest.update(self._file_sha(path).encode())
            return digest.hexdigest()
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in IGNORED)
            for name in sorted(files):
                if name.endswith(".pyc"):
                    continue
                full = Path(root) / name
                digest.update(str(full.relative_to(path)).encode() + b"\0" + self._file_sha(full).encode())
        return digest.hexdigest()

    def hash_code(self, folder: str | os.PathLike) -> str:
        """sha256 over a `code:` folder's snapshot: the relative names and contents of `code_files(folder)`."""
        digest = hashlib.sha256()
        for rel in code_files(folder):
            digest.update(str(rel).encode() + b"\0" + self._file_sha(Path(folder) / rel).encode())
        return digest.hexdigest()

    def _file_sha(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        stamp = [st.st_size, st.st_mtime_ns]
        cached = self._hashes.get(key)
        if cached and cached[0] == stamp:
            return cached[1]
        sha = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                sha.update(chunk)
        self._hashes[key] = [stamp, sha.hexdigest()]
        self._dirty = True
        return self._hashes[key][1]

    def save_hashes(self) -> None:
        if self._dirty:
            write_json(self._hash_file, self._hashes)
            self._dirty = False

    # ---------------------------------------------------------------------------------------------- snapshots
    def snapshot(self, code: str | None, code_hash: str) -> Path:
        """A content-addressed copy of a `code:` folder (an empty folder for components without code)."""
        target = self.root / "snapshots" / code_hash
        if target.exists():
            return target
        tmp = target.with_name(f".tmp-{code_hash}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for rel in code_files(code) if code else []:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(code) / rel, tmp / rel, follow_symlinks=False)
        try:
            os.replace(tmp, target)
        except OSError:            # another run made it first
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def python_shims(self, executable: str = sys.executable) -> Path:
        """A folder holding `python` and `python3` that start `executable`: put first on a step's PATH, so the
        `python` of a command is the interpreter its reuse key describes, whatever PATH holds (a venv need not be
        activated). Scripts, not links: a link to a venv's python outside the venv would lose the venv."""
        folder = self.root / "bin" / hashlib.sha256(executable.encode()).hexdigest()[:16]
        if not (folder / "python3").exists():
            tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for name in ("python", "python3"):
                (tmp / name).write_text(f'#!/bin/sh\nexec {shlex.quote(executable)} "$@"\n')
                (tmp / name).chmod(0o755)
            try:
                os.replace(tmp, folder)
            except OSError:        # another runner made it first
                shutil.rmtree(tmp, ignore_errors=True)
        return folder

    # ---------------------------------------------------------------------------------------------- step cache
    def step_dir(self, key: str) -> Path:
        return self.root / "cache" / key

    def lock(self, key: str) -> int | None:
        """Lock a step key for one attempt; None when another process holds it.

        The lock file descriptor is handed to the step's processes too, so a step orphaned by a killed runner
        keeps its key locked until it ends: a new run never writes into the same attempt folders at once.
        """
        d = self.step_dir(key)
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return fd

    def lock_holder(self, key: str) -> str:
        try:
            return (self.step_dir(key) / "lock").read_text().strip() or "?"
        except FileNotFoundError:
            return "?"

    def finished(self, key: str) -> dict | None:
        """done.json of a finished step, or None when nothing reusable exists under this key."""
        d = self.step_dir(key)
        if (d / "done").is_dir() and (d / "done.json").is_file():
            return json.loads((d / "done.json").read_text())
        return None

    def attempt_outputs(self, key: str, outputs: list[str]) -> dict[str, Path]:
        """Output folders for an attempt: the same ones a failed earlier attempt with this key used."""
        base = self.step_dir(key) / "attempt"
        base.mkdir(parents=True, exist_ok=True)   # a step with no outputs still completes through attempt/ -> done/
        paths = {}
        for name in outputs:
            paths[name] = base / name
            paths[name].mkdir(parents=True, exist_ok=True)
        return paths

    def complete(self, key: str, info: dict) -> dict[str, Path]:
        """Mark an attempt finished: hash its outputs, rename attempt/ -> done/ (atomic), then write done.json."""
        d = self.step_dir(key)
        if (d / "done").exists():
            shutil.rmtree(d / "done")
        (d / "done.json").unlink(missing_ok=True)
        os.replace(d / "attempt", d / "done")
        outputs = {p.name: p for p in sorted((d / "done").iterdir())}
        info = dict(info, output_hashes={name: self.hash_path(p) for name, p in outputs.items()})
        write_json(d / "done.json", info)
        return outputs

    def done_outputs(self, key: str, names: list[str]) -> dict[str, Path]:
        return {name: self.step_dir(key) / "done" / name for name in names}


@functools.lru_cache(maxsize=1)
def local_python() -> str:
    """The environment a step really runs in locally: this interpreter and the distributions installed for it.

    Components name an Azure ML environment (recorded, not built); locally every step runs in this Python, so an
    upgraded package must make steps re-run just as a changed environment does on Azure ML. The installed
    distributions are read from the `*.dist-info` / `*.egg-info` folder names in site-packages (name and version are
    in the folder name): a directory listing, not a metadata read, to keep a cached re-run fast.
    """
    import site
    import sysconfig

    folders = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    if site.ENABLE_USER_SITE:
        folders.add(site.getusersitepackages())
    names = []
    for folder in sorted(folders):   # site-packages only: sys.path also holds the cwd and test roots
        try:
            names += [n for n in os.listdir(folder) if n.endswith((".dist-info", ".egg-info"))]
        except OSError:
            continue
    blob = json.dumps([os.path.realpath(sys.executable), sys.version, sorted(set(names))])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def key_parts(node: Node, code_hash: str, input_identity: dict) -> dict:
    """What a step's reuse key is made of, each part hashed (kept in step.json: diff two to see why a step re-ran).

    Azure ML's rule: component spec, code snapshot content, environment definition, inputs (values and content),
    output settings and run settings.
    """
    def digest(obj) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]

    component = {k: v for k, v in node.component.items() if k != "code"}   # the code folder counts by content
    return {
        "component": digest(component),
        "code": code_hash[:16],
        "environment": digest([node.environment, local_python()]),
        "inputs": {name: digest(identity) for name, identity in sorted(input_identity.items())},
        "outputs": digest(node.outputs),
        "run_settings": digest([node.distribution, node.resources, node.environment_variables, node.sweep]),
    }


def step_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
