"""The on-disk store beside the run folders (`<run dir parent>/.slmops/`): content hashes, code snapshots, step cache.

    .slmops/
      mlflow.db, mlartifacts/      embedded MLflow tracking (see slmops.runner.tracking)
      graphs/<key>.json            resolved pipeline graphs (see slmops.pipeline.load.cached_graph)
      filehash.json                sha256 per file, keyed by (path, size, mtime): big inputs are hashed once
      snapshots/<code hash>/       copies of components' `code:` folders (less what `.amlignore` excludes): immutable
      work/<node>-<id>/            a step's (or trial's) own working copy of its snapshot (cwd/) and Python layer (py/)
      envs/<hash>/                 virtual environments built for environment definitions (slmops.runner.envs)
      datastores/<name>/           default local stand-ins of Azure ML datastores (slmops.runner.assets)
      downloads/<sha>/             http(s) data inputs, downloaded once
      nodes/<sha>.json             the reuse key parts of each pipeline node's last run (to say why a step re-runs)
      cache/<step key>/attempt/<output>/   outputs of a running or failed attempt (handed to the retry as is)
      cache/<step key>/done/<output>/      outputs of a finished step: renamed from attempt/ in one step
      cache/<step key>/done.json           what the finished step produced (output content hashes, run id)

A step's key hashes everything Azure ML's reuse rule names: the component spec, the code snapshot's content, the
environment (its definition, and the interpreter and package versions it resolves to here), input contents and
parameter values, and output/run settings. A `uri_file` output is a file inside `<output>/` (its name from the
output's `path`, else the output's name); other outputs are the `<output>/` folder itself.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
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

    def touch(self, path: Path) -> None:
        """Record a use (mtime) of a snapshot or cache entry, for `slmops cache prune`."""
        try:
            os.utime(path)
        except OSError:
            pass

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

    def attempt_outputs(self, key: str, outputs: dict[str, dict]) -> dict[str, Path]:
        """Output paths for an attempt: the same ones a failed earlier attempt with this key used. A uri_file output
        is a file path whose folder exists (the step creates the file); any other output is a folder."""
        base = self.step_dir(key) / "attempt"
        base.mkdir(parents=True, exist_ok=True)   # a step with no outputs still completes through attempt/ -> done/
        paths = {}
        for name, spec in outputs.items():
            (base / name).mkdir(parents=True, exist_ok=True)
            paths[name] = output_path(base, name, spec)
        return paths

    def complete(self, key: str, info: dict, outputs: dict[str, dict]) -> dict[str, Path]:
        """Mark an attempt finished: hash its outputs, rename attempt/ -> done/ (atomic), then write done.json."""
        d = self.step_dir(key)
        if (d / "done").exists():
            shutil.rmtree(d / "done")
        (d / "done.json").unlink(missing_ok=True)
        os.replace(d / "attempt", d / "done")
        paths = self.done_outputs(key, outputs)
        info = dict(info, output_hashes={name: self.hash_path(d / "done" / name) for name in paths})
        write_json(d / "done.json", info)
        return paths

    def done_outputs(self, key: str, outputs: dict[str, dict]) -> dict[str, Path]:
        self.touch(self.step_dir(key) / "done.json")
        return {name: output_path(self.step_dir(key) / "done", name, spec) for name, spec in outputs.items()}

    # ---------------------------------------------------------------------------------------------- last runs
    def last_run(self, pipeline: str, node: str) -> dict | None:
        """What the previous run of this pipeline node recorded (key parts, environment, run folder), or None."""
        try:
            return json.loads(self._node_file(pipeline, node).read_text())
        except (OSError, ValueError):
            return None

    def save_last_run(self, pipeline: str, node: str, record: dict) -> None:
        write_json(self._node_file(pipeline, node), record)

    def _node_file(self, pipeline: str, node: str) -> Path:
        digest = hashlib.sha256(json.dumps([pipeline, node]).encode()).hexdigest()[:24]
        return self.root / "nodes" / f"{digest}.json"


def output_path(base: Path, name: str, spec: dict) -> Path:
    """`base/<name>` for a folder output; `base/<name>/<file>` for a uri_file output (the file's name from the
    output's `path` setting when it has one without expressions, else the output's name)."""
    if (spec or {}).get("type") != "uri_file":
        return base / name
    path = str((spec or {}).get("path") or "").rstrip("/")
    file_name = path.rsplit("/", 1)[-1].replace("${{output_name}}", name) if path else ""
    if not file_name or "{" in file_name or file_name in (".", ".."):
        file_name = name
    return base / name / file_name


def key_parts(node: Node, code_hash: str, input_identity: dict, environment: dict | None = None) -> dict:
    """What a step's reuse key is made of, each part hashed (kept in step.json: diff two to see why a step re-ran).

    Azure ML's rule: component spec, code snapshot content, environment definition, inputs (values and content),
    output settings and run settings. `environment` is what the step's environment resolves to here
    (`slmops.runner.envs.Environments.identity`: interpreter version and the versions of what it declares).
    """
    def digest(obj) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]

    # the code folder counts by content, the environment in its own part
    component = {k: v for k, v in node.component.items() if k not in ("code", "environment")}
    return {
        "component": digest(component),
        "code": code_hash[:16],
        "environment": digest([node.environment, environment]),
        "inputs": {name: digest(identity) for name, identity in sorted(input_identity.items())},
        "outputs": digest(node.outputs),
        "run_settings": digest([node.distribution, node.resources, node.environment_variables, node.sweep]),
    }


def step_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
