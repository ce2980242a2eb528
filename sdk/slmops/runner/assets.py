"""Data that lives in a workspace, mapped to local stand-ins before a local run starts.

    stand_ins = StandIns(store, assets_file=Path(".slmops/assets.yaml"), datastores={"blob": Path("./blob")})
    problems = stand_ins.resolve(graph)             # every input the runner cannot map, each with its fix

The pipeline front-end leaves data it cannot find on disk as `{"cloud": ref, "ref": kind, ...}` bindings
(`slmops.pipeline.checks.cloud_ref`). Here, for `slmops run`:
- `azureml:name:version`, `azureml:name@latest` (and `azureml://.../data/<name>/versions/<v>`) are registered data or
  model assets: mapped by the asset file (`assets: {"name:version": path, "name@latest": path, "name": path}`,
  paths relative to the file), else reported with the fix: `--set INPUT=./path` or an entry in the asset file.
- `azureml://datastores/<name>/paths/<p>` is `<p>` under the datastore's local stand-in: `--datastore NAME=DIR`,
  `datastores: {NAME: DIR}` in the asset file, or `<store>/datastores/<NAME>/` by default. Job outputs with such a
  path are published there too (`output_target`), with `${{name}}` (the run's name) and `${{output_name}}` filled in.
- `http(s)://...` is downloaded once into `<store>/downloads/<sha of the URL>/` (when the network allows); when it
  cannot be, the message says so and how to pass a local copy.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from slmops.pipeline.checks import DATASTORE_URI
from slmops.pipeline.graph import Graph

NAME_EXPR = re.compile(r"\$\{\{\s*(name|output_name|run_id)\s*\}\}|\{(name|output_name|run_id)\}")
DOWNLOAD_TIMEOUT = 30


def read_asset_file(path: Path) -> tuple[dict[str, Path], dict[str, Path], list[str]]:
    """(assets, datastores, problems) of an asset file; paths are relative to the file's folder."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        return {}, {}, [f"{path}: cannot be read ({exc}). Fix: correct or remove it."]
    problems = []
    if not isinstance(data, dict) or set(data) - {"assets", "datastores"}:
        problems.append(f"{path}: expected the keys `assets` (name:version -> path) and `datastores` (name -> "
                        f"folder), got {sorted(data) if isinstance(data, dict) else type(data).__name__}")
        data = data if isinstance(data, dict) else {}
    found: list[dict[str, Path]] = []
    for section in ("assets", "datastores"):
        entries = data.get(section) or {}
        if not isinstance(entries, dict):
            problems.append(f"{path}: `{section}` must map names to paths")
            entries = {}
        found.append({str(k): (path.parent / str(v)).resolve() for k, v in entries.items()})
    return found[0], found[1], problems


def expand_path(template: str, run_name: str, output_name: str) -> str:
    """Azure ML's expressions in output paths: ${{name}} (the job's name: here the run's), ${{output_name}}."""
    values = {"name": run_name, "run_id": run_name, "output_name": output_name}
    return NAME_EXPR.sub(lambda m: values[m.group(1) or m.group(2)], template)


class StandIns:
    def __init__(self, store: Path, assets_file: Path | None = None, datastores: dict[str, Path] | None = None):
        self.store = Path(store)
        self.assets_file = assets_file
        self.assets: dict[str, Path] = {}
        self.datastores: dict[str, Path] = {}
        self.problems: list[str] = []
        if assets_file is not None and assets_file.is_file():
            self.assets, self.datastores, self.problems = read_asset_file(assets_file)
        self.datastores.update({k: Path(v).resolve() for k, v in (datastores or {}).items()})

    @property
    def file_hint(self) -> str:
        return str(self.assets_file) if self.assets_file is not None else ".slmops/assets.yaml"

    def datastore_root(self, name: str) -> Path:
        return self.datastores.get(name) or self.store / "datastores" / name

    def datastore_path(self, uri: str) -> Path | None:
        m = DATASTORE_URI.match(uri)
        return self.datastore_root(m["store"]) / m["path"] if m else None

    # ------------------------------------------------------------------------------------------------ inputs
    def resolve(self, graph: Graph) -> list[str]:
        """Replace every cloud binding of the graph's nodes by a local path; return what could not be mapped."""
        problems = list(self.problems)
        reported: set[str] = set()
        for node in graph.nodes.values():
            for name, binding in sorted(node.inputs.items()):
                if "cloud" not in binding:
                    continue
                where = f"inputs.{binding['from']}" if binding.get("from") else f"jobs.{node.name}.inputs.{name}"
                path, problem = self._resolve(binding, where)
                if path is not None:
                    node.inputs[name] = {"path": str(path), "type": binding.get("type"), "source": binding["cloud"]}
                elif binding["cloud"] not in reported:
                    reported.add(binding["cloud"])
                    problems.append(problem)
        return problems

    def _resolve(self, binding: dict, where: str) -> tuple[Path | None, str]:
        ref, kind, source = binding["cloud"], binding.get("ref"), binding.get("from")
        set_fix = f"pass a local stand-in with `--set {source}=./path`" if source else \
            "pass a local stand-in (make it a pipeline input and use `--set INPUT=./path`, or a local path in the YAML)"
        if kind == "asset":
            version = binding.get("version")
            keys = [f"{binding['name']}:{version}"] if version else [f"{binding['name']}@{binding.get('label')}"]
            keys.append(binding["name"])
            for key in keys:
                if key in self.assets:
                    if self.assets[key].exists():
                        return self.assets[key], ""
                    return None, (f"{where}: {ref} maps to {self.assets[key]} in {self.file_hint}, which does not "
                                  "exist. Fix: correct the path there.")
            what = f"version {version}" if version else f"label {binding.get('label')}"
            return None, (f"{where}: {ref} is a registered {binding.get('asset', 'data')} asset ({binding['name']}, "
                          f"{what}) that a local run cannot fetch. Fix: {set_fix}, or map it once in "
                          f"{self.file_hint} (`assets: {{\"{keys[0]}\": ./path}}`).")
        if kind == "datastore":
            path = self.datastore_root(binding["datastore"]) / binding["datastore_path"]
            if path.exists():
                return path, ""
            return None, (f"{where}: {ref} is a path in datastore '{binding['datastore']}', whose local stand-in "
                          f"{path} does not exist. Fix: put the data there, point the datastore at a local folder "
                          f"with `--datastore {binding['datastore']}=DIR` (or `datastores:` in {self.file_hint}), "
                          f"or {set_fix}.")
        if kind == "url":
            try:
                return self.download(ref, binding.get("type") or "uri_file"), ""
            except (OSError, ValueError) as exc:         # urllib's URLError is an OSError
                reason = getattr(exc, "reason", None) or exc
                return None, (f"{where}: {ref} could not be downloaded ({reason}). Fix: download it yourself and "
                              f"{set_fix.replace('a local stand-in', 'the local copy')}.")
        return None, (f"{where}: {ref} is a cloud storage URL that a local run cannot read. Fix: {set_fix}.")

    def download(self, url: str, kind: str) -> Path:
        """`url` fetched once into `<store>/downloads/<sha>/` (renamed into place when complete)."""
        folder = self.store / "downloads" / hashlib.sha256(url.encode()).hexdigest()[:24]
        name = os.path.basename(url.split("?", 1)[0].rstrip("/")) or "data"
        target = folder / name
        if not target.exists():
            import urllib.request

            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{name}.{os.getpid()}.part"
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response, open(tmp, "wb") as fh:
                shutil.copyfileobj(response, fh)
            os.replace(tmp, target)
        return target if kind == "uri_file" else folder

    # ------------------------------------------------------------------------------------------------ outputs
    def output_target(self, spec: dict, run_name: str, output_name: str) -> Path | None:
        """Where Azure ML would write an output whose settings name an azureml://datastores/... path, locally."""
        path = spec.get("path")
        if not isinstance(path, str):
            return None
        return self.datastore_path(expand_path(path, run_name, output_name))

    @staticmethod
    def publish(source: Path, target: Path) -> None:
        """Copy a finished output to its datastore stand-in (a copy: editing it there never changes the cache)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            if target.exists() and not target.is_dir():
                target.unlink()
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            if target.is_dir():
                shutil.rmtree(target)
            shutil.copy2(source, target)


def pipeline_output_settings(pipeline_file: str | os.PathLike) -> dict[str, dict]:
    """The pipeline's own `outputs:` settings (type, path, mode) as written in its YAML. (azure-ai-ml already gives
    the producing job's output the pipeline output's type; the path is what is read here, so a pipeline without
    any `azureml://` path is not parsed again.)"""
    try:
        text = Path(pipeline_file).read_text()
    except OSError:
        return {}
    if "azureml://" not in text:
        return {}
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return {}
    outputs = data.get("outputs") if isinstance(data, dict) else None
    return {k: v for k, v in (outputs or {}).items() if isinstance(v, dict)}


def apply_pipeline_outputs(graph: Graph, pipeline_file: str | os.PathLike) -> None:
    """Give the nodes that produce pipeline outputs those outputs' type and path (Azure ML's binding semantics)."""
    if not graph.outputs:
        return
    settings = pipeline_output_settings(pipeline_file)
    for name, binding in graph.outputs.items():
        spec = settings.get(name) or {}
        node = graph.nodes.get(binding.get("node", ""))
        if node is None or binding.get("output") not in node.outputs:
            continue
        out = node.outputs[binding["output"]]
        for setting in ("path", "mode"):
            if isinstance(spec.get(setting), str) and setting not in out:
                out[setting] = spec[setting]
        if spec.get("type") and not out.get("type"):
            out["type"] = spec["type"]
