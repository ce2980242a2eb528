"""Read a pipeline-job YAML the one way `slmops run`, `slmops validate` and `slmops submit` all share.

    loaded = load(Path("pipelines/finetune.yaml"), {"max_steps": "200"}, target="local")
    report(loaded, strict=False, echo=print)     # prints warnings; raises one UserError listing every error
    loaded.graph                                 # the plain-data graph the local runner executes
    loaded.job                                   # the azure-ai-ml PipelineJob, overrides applied (for submit)

Steps: the file is read as YAML (a syntax error names its line and column); `--set`/`--compute`/`--experiment`
become typed `params_override` entries (`overrides.py`); azure-ai-ml parses the job (`load_job`), resolves component
files relative to the YAML that names them and runs its own `_validate()`; then `checks.Builder` checks what it
misses while building the `Graph`. azure-ai-ml's private API is used here and in `checks.py`, and in the REST/log
code of `slmops.azure`, nowhere else.

`cached_graph` keeps the resolved graph (and its warnings) as JSON keyed by the content of every file it was built
from plus the `--set` values, so a re-run of an unchanged pipeline never imports azure-ai-ml.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from slmops.errors import UserError
from slmops.pipeline.checks import BINDING, TARGETS, Builder, data_binding
from slmops.pipeline.graph import Graph, toposort
from slmops.pipeline.overrides import compute_overrides, typed_overrides

# azure-ai-ml asks for a compute target on every node. A local run has none; Azure ML runs a pipeline without one
# on serverless compute, but azure-ai-ml 1.35 refuses to submit it, so `submit` keeps it as an error.
COMPUTE_NOT_SET = "Compute not set"


@dataclass
class Loaded:
    """A pipeline as read for one command: its graph (None when loading failed), problems and source files."""

    path: Path
    job: object = None                          # azure-ai-ml PipelineJob (None when the graph came from the cache)
    graph: Graph | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sources: set[str] = field(default_factory=set)


def report(loaded: Loaded, *, strict: bool, echo) -> None:
    """Print the warnings (`echo(text)`); raise one UserError listing every error (and every warning if `strict`)."""
    for text in loaded.warnings:
        echo(f"warning: {text}")
    errors = list(loaded.errors)
    if strict:
        errors += [f"{text} [a warning; --strict makes it an error]" for text in loaded.warnings]
    if errors:
        raise UserError(f"{loaded.path} has {len(errors)} problem(s):", problems=errors)


# ---------------------------------------------------------------------------------------------------------- cache

def file_sha(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def graph_cache_key(pipeline: Path, sets: dict[str, str], cwd: Path) -> str:
    blob = json.dumps([str(pipeline.resolve()), file_sha(pipeline), sorted(sets.items()), str(cwd), "local"])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cached_graph(pipeline: Path, sets: dict[str, str], store: Path, cwd: Path | None = None) -> Loaded:
    """`load(pipeline, sets, target="local")`, from `store/graphs/` when no source file changed."""
    pipeline, cwd = Path(pipeline), Path(cwd or Path.cwd())
    missing = _missing_file(pipeline)
    if missing:
        return Loaded(pipeline, errors=[missing])
    cache_file = store / "graphs" / f"{graph_cache_key(pipeline, sets, cwd)}.json"
    try:
        entry = json.loads(cache_file.read_text())
        graph = Graph.from_json(entry["graph"])
        if any("component_ref" not in node for node in entry["graph"]["nodes"].values()):
            entry = None                                    # cached by an slmops without component_ref: rebuild
    except (OSError, ValueError, KeyError, TypeError):
        entry = None
    if entry is not None:
        unchanged = all(Path(p).exists() and file_sha(p) == sha for p, sha in entry["sources"].items())
        inputs_exist = all(Path(b["path"]).exists() for node in graph.nodes.values()
                           for b in node.inputs.values() if "path" in b)
        if unchanged and inputs_exist:        # else: rebuild, which reports what is missing
            return Loaded(pipeline, graph=graph, warnings=entry.get("warnings", []), sources=set(entry["sources"]))
    loaded = load(pipeline, sets, target="local", cwd=cwd)
    if loaded.graph is not None and not loaded.errors:
        from slmops.io import write_json

        write_json(cache_file, {"sources": {p: file_sha(p) for p in loaded.sources}, "warnings": loaded.warnings,
                                "graph": loaded.graph.to_json()})
    return loaded


# ------------------------------------------------------------------------------------------------ the front-end

def _missing_file(pipeline: Path) -> str | None:
    if pipeline.is_dir():
        return (f"{pipeline} is a folder, not a pipeline file. Fix: pass the path of a pipeline-job YAML, e.g. "
                "pipelines/finetune.yaml.")
    if not pipeline.is_file():
        return (f"pipeline file {pipeline} does not exist. Fix: pass the path of a pipeline-job YAML, e.g. "
                "pipelines/finetune.yaml.")
    return None


def read_yaml(path: Path) -> tuple[object, str | None]:
    """The file's YAML (None + a message naming line and column when it is not YAML)."""
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")), None
    except UnicodeDecodeError as exc:
        return None, f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}). Fix: save the file as UTF-8."
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return None, f"{path}: YAML syntax error at {where}: {what}. Fix: correct the YAML there."


def load(pipeline: Path, sets: dict[str, str], *, target: str, cwd: Path | None = None, compute=(),
         experiment: str | None = None) -> Loaded:
    """Read `pipeline` for `target` ("local": `run`, "any": `validate`, "azure": `submit`); never raises for
    anything in the files or the overrides: every finding is in `errors`/`warnings` (see `report`)."""
    assert target in TARGETS, target
    pipeline, cwd = Path(pipeline), Path(cwd or Path.cwd())
    loaded = Loaded(pipeline)
    missing = _missing_file(pipeline)
    if missing:
        loaded.errors.append(missing)
        return loaded
    raw, syntax = read_yaml(pipeline)
    if syntax:
        loaded.errors.append(syntax)
        return loaded
    if not isinstance(raw, dict) or raw.get("type") != "pipeline":
        kind = raw.get("type") if isinstance(raw, dict) else type(raw).__name__
        loaded.errors.append(f"{pipeline} is not a pipeline job (type: {kind!r}). Fix: give a `type: pipeline` "
                             "job YAML.")
        return loaded
    declared = raw.get("inputs") if isinstance(raw.get("inputs"), dict) else {}
    params, problems = typed_overrides(declared, sets, cwd)
    more, compute_problems = compute_overrides(compute, raw.get("jobs") if isinstance(raw.get("jobs"), dict) else {})
    params += more + ([{"experiment_name": experiment}] if experiment else [])
    loaded.errors += problems + compute_problems
    if loaded.errors:
        return loaded            # types of the overrides first: azure-ai-ml would stop at the first bad one

    import tempfile

    with tempfile.TemporaryDirectory(prefix="slmops-load-") as tmp:
        job, problems = _load_job(pipeline, raw, params, Path(tmp), loaded.warnings)
        loaded.errors += problems
        if job is None:
            return loaded
        loaded.job = job
        _check(loaded, job, target, _parent_inputs_named(raw.get("jobs")))
    return loaded


def _parent_inputs_named(node) -> set[str]:
    """Every `${{parent.inputs.x}}` anywhere in the YAML's jobs: bindings of job types the graph leaves out (spark,
    automl, registered components) count as uses of the pipeline input too."""
    if isinstance(node, dict):
        return set().union(*(_parent_inputs_named(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_parent_inputs_named(v) for v in node)) if node else set()
    if isinstance(node, str):
        return set(re.findall(r"\$\{\{\s*parent\.inputs\.(\w+)\s*\}\}", node))
    return set()


def _check(loaded: Loaded, job, target: str, bound_in_yaml: set[str] = frozenset()) -> None:
    """azure-ai-ml's `_validate()`, then our checks while the graph is built."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = job._validate()
    no_compute = []
    for error in result._to_dict().get("errors", []):
        message = str(error.get("message", ""))
        if message.startswith(COMPUTE_NOT_SET):
            no_compute.append(str(error.get("path", "")).removeprefix("jobs.").removesuffix(".compute"))
        else:
            loaded.errors.append(f"{error.get('path')}: {message}")
    if no_compute and target == "azure":
        loaded.errors.append(f"jobs {', '.join(sorted(no_compute))}: no compute, and the pipeline has no "
                             "settings.default_compute. Fix: pass --compute NAME (all jobs) or --compute JOB=NAME, or "
                             "set settings.default_compute in the YAML.")

    base = Path(job.base_path).resolve()
    builder = Builder(target)
    builder.problems, builder.warnings = loaded.errors, loaded.warnings
    builder.sources.add(str(loaded.path.resolve()))
    scope_inputs = {}
    for name, pipeline_input in (job.inputs or {}).items():
        raw = getattr(pipeline_input, "_data", pipeline_input)
        if raw is not None and hasattr(raw, "type") and not isinstance(raw, str) and getattr(raw, "path", None) is None \
                and getattr(raw, "default", None) is None:
            scope_inputs[name] = None        # declared (`{type: custom_model}`) and not given: binds to nothing
        elif raw is not None and hasattr(raw, "path") and not isinstance(raw, str):
            scope_inputs[name] = data_binding(str(raw.path), raw.type or "uri_folder", base)
            if "cloud" in scope_inputs[name]:
                scope_inputs[name]["from"] = name
        elif raw == "":
            scope_inputs[name] = None        # azure-ai-ml leaves an empty literal out of the REST body: not given
        elif raw is not None:
            scope_inputs[name] = {"value": raw}
    for name in _leave_out_unset(job, {name for name, value in scope_inputs.items() if value is None}) | set(
            bound_in_yaml):
        builder.used_inputs.add(("", name))      # bound (maybe by a job the graph leaves out): not unused
    pipeline_outputs: dict[str, dict] = {}
    builder.scope(job.jobs, scope_inputs, "", base, None, pipeline_outputs)
    builder.unused_inputs("", scope_inputs, "")
    builder.resolve_aliases(pipeline_outputs)
    loaded.sources = builder.sources
    try:
        toposort({name: node.upstream() for name, node in builder.nodes.items()})
    except UserError as exc:
        loaded.errors.append(f"jobs: {exc}")
        return
    settings = job.settings._to_dict() if job.settings is not None and hasattr(job.settings, "_to_dict") else {}
    loaded.graph = Graph(
        name=job.display_name or job.name or loaded.path.stem,
        experiment_name=job.experiment_name or loaded.path.stem,
        nodes=builder.nodes, outputs={k: v for k, v in pipeline_outputs.items() if v is not None},
        force_rerun=bool((settings or {}).get("force_rerun", False)),
    )


def _leave_out_unset(job, unset: set[str]) -> set[str]:
    """Pipeline inputs declared without a value (`{type: custom_model}`, `""`) and the job inputs bound to them are
    left out of the job, as azure-ai-ml already does for an empty literal: the component input is then not given
    (its `$[[ ]]` part of the command is dropped), the same locally and on Azure ML."""
    bound: set[str] = set()
    for name in unset:
        if name in job.inputs:
            job.inputs[name]._data = None
    for node in job.jobs.values():
        for node_input in (getattr(node, "inputs", None) or {}).values():
            data = getattr(node_input, "_data", None)
            if isinstance(data, str) and (m := BINDING.match(data.strip())) and m["input"] in unset:
                node_input._data = None
                bound.add(m["input"])
    return bound


# ------------------------------------------------------------------------------------------------ azure-ai-ml

def _load_job(pipeline: Path, raw: dict, params: list[dict], tmp: Path, warned: list[str]):
    """azure-ai-ml's `load_job`, with its load-time schema errors turned into per-field problems.

    azure-ai-ml stops at the first component whose `code:` folder is missing; such components (of top-level
    jobs) are reported here and loaded with an empty stand-in folder, so every other problem is reported too.
    """
    import logging

    logging.getLogger("azure.ai.ml._utils._experimental").disabled = True   # "experimental class" notices
    from azure.ai.ml import load_job

    problems: list[str] = []
    overrides = _prescan(pipeline, raw, tmp, problems, warned)
    try:
        with warnings.catch_warnings():                    # marshmallow deprecation noise from inside azure-ai-ml
            warnings.simplefilter("ignore")
            return load_job(str(pipeline), params_override=overrides + params), problems
    except Exception as exc:                               # marshmallow ValidationError / ValidationException
        return None, problems + _azure_problems(str(exc))


def _prescan(pipeline: Path, raw: dict, tmp: Path, problems: list[str], warned: list[str]) -> list[dict]:
    """What azure-ai-ml's loader stops at or silently drops, for top-level jobs (a walk of the YAML's names):
    a component whose `code:` folder does not exist (an error; returns params_override entries with a stand-in
    folder so every other problem is reported too), and job inputs the component does not declare (a warning:
    Azure ML ignores them, and azure-ai-ml drops them without a word, so a misspelled input does nothing)."""
    import difflib

    import yaml

    overrides = []
    for job_name, job in (raw.get("jobs") or {}).items() if isinstance(raw, dict) else []:
        if not isinstance(job, dict):
            continue
        key = "trial" if job.get("type") == "sweep" else "component"
        ref, source = job.get(key), pipeline
        if isinstance(ref, str) and not ref.startswith("azureml:") and (pipeline.parent / ref).is_file():
            source = (pipeline.parent / ref).resolve()
            try:
                ref = yaml.safe_load(source.read_text())
            except yaml.YAMLError:
                continue
        if not isinstance(ref, dict):
            continue
        declared = ref.get("inputs") if isinstance(ref.get("inputs"), dict) else {}
        given = job.get("inputs") if isinstance(job.get("inputs"), dict) else {}
        for name in sorted(set(given) - set(declared)):
            close = difflib.get_close_matches(name, list(declared), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            warned.append(f"jobs.{job_name}.inputs.{name}: the component has no input '{name}', so Azure ML ignores "
                          f"it ({hint}inputs: {', '.join(sorted(declared)) or 'none'}). Fix: correct the name or "
                          "remove it.")
        code = ref.get("code")
        if not isinstance(code, str) or code.startswith(("azureml:", "git+")) or "://" in code \
                or (source.parent / code).is_dir():
            continue
        problems.append(f"jobs.{job_name}.{key}.code: folder {(source.parent / code).resolve()} does not exist. "
                        f"Fix: correct `code:` in {source} (it is relative to that file).")
        stand_in = tmp / f"missing-code-{job_name}"
        stand_in.mkdir(parents=True, exist_ok=True)
        overrides.append({f"jobs.{job_name}.{key}": dict(ref, code=str(stand_in))})
    return overrides


def _azure_problems(text: str) -> list[str]:
    """Pull the {"errors": [{"path", "message", "value"}]} block out of an azure-ai-ml error message."""
    start = text.find("{\n")
    if start >= 0:
        depth = 0
        for end in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                try:
                    errors = json.loads(text[start:end + 1]).get("errors", [])
                except json.JSONDecodeError:
                    break
                return [_azure_problem(e) for e in errors
                        if not e.get("message", "").startswith((COMPUTE_NOT_SET,))]
    return [f"azure-ai-ml could not load the pipeline: {text.strip().splitlines()[0] if text.strip() else text}"]


def _azure_problem(error: dict) -> str:
    message = str(error.get("message", "")).strip()
    missing = re.search(r"Can't find directory or file in resolved absolute path: (.*?)\.?;", message)
    if missing:
        message = f"{missing.group(1)} does not exist. Fix: correct the path (it is relative to its YAML file)."
    value = error.get("value")
    return f"{error.get('path', '?')}: {message}" + (f" (value: {value!r})" if value is not None else "")
