"""Build the plain-data `Graph` from pipeline-job YAML with azure-ai-ml's own loaders, checking what it misses.

azure-ai-ml parses the YAML (`load_job`), resolves component files relative to the YAML that names them, and
runs its own `_validate()`. On top of that we check, offline, what it does not: unknown `${{parent.inputs.x}}`,
unknown job/output references, literal types, enum and min/max, sweep search spaces naming a missing input,
dependency cycles and missing `code:` folders. Every problem is collected and raised together as one UserError.

The resolved graph is cached as JSON (see `cached_graph`) keyed by the content of every file it was built from
plus the `--set` values, so a re-run of an unchanged pipeline never imports azure-ai-ml.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path

from local_runner.graph import Graph, Node, toposort
from slmops.errors import UserError

BINDING = re.compile(r"^\$\{\{\s*parent\.(?:inputs\.(?P<input>[\w.]+)|jobs\.(?P<job>\w+)\.outputs\.(?P<output>\w+)"
                     r"|outputs\.(?P<pout>\w+))\s*\}\}$")
OPTIONAL = re.compile(r"\$\[\[(.*?)\]\]", re.S)
INPUT_REF = re.compile(r"\$\{\{\s*inputs\.(\w+)\s*\}\}")
OUTPUT_REF = re.compile(r"\$\{\{\s*outputs\.(\w+)\s*\}\}")
DATA_TYPES = {"uri_file", "uri_folder", "mlflow_model", "custom_model", "mltable", "triton_model"}
PARAM_TYPES = {"integer", "number", "string", "boolean"}
# azure-ai-ml asks for a compute target on every node; a local run has none, so these are not problems here.
IGNORED_AZURE_ERRORS = ("Compute not set",)


# ---------------------------------------------------------------------------------------------------------- cache

def file_sha(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def graph_cache_key(pipeline: Path, sets: dict[str, str], mode: str) -> str:
    blob = json.dumps([str(pipeline.resolve()), file_sha(pipeline), sorted(sets.items()), mode])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cached_graph(pipeline: Path, sets: dict[str, str], store: Path) -> Graph:
    """The run graph for `pipeline` + `sets`: from `store/graphs/` when no source file changed, else built."""
    cache_file = store / "graphs" / f"{graph_cache_key(pipeline, sets, 'run')}.json"
    if cache_file.exists():
        entry = json.loads(cache_file.read_text())
        graph = Graph.from_json(entry["graph"])
        unchanged = all(Path(p).exists() and file_sha(p) == sha for p, sha in entry["sources"].items())
        inputs_exist = all(Path(b["path"]).exists() for node in graph.nodes.values()
                           for b in node.inputs.values() if "path" in b)
        if unchanged and inputs_exist:        # else: rebuild, which reports what is missing
            return graph
    graph, sources = build_graph(pipeline, sets, for_run=True)
    from slmops.io import write_json

    write_json(cache_file, {"sources": {p: file_sha(p) for p in sources}, "graph": graph.to_json()})
    return graph


# ------------------------------------------------------------------------------------------------ azure-ai-ml

def _load_job(pipeline: Path, tmp: Path):
    """azure-ai-ml's `load_job`, with its load-time schema errors turned into per-field problems.

    azure-ai-ml stops at the first component whose `code:` folder is missing; such components (of top-level
    jobs) are reported here and loaded with an empty stand-in folder, so every other problem is reported too.
    """
    import logging

    logging.getLogger("azure.ai.ml._utils._experimental").disabled = True   # "experimental class" notices
    from azure.ai.ml import load_job

    problems: list[str] = []
    overrides = _prescan(pipeline, tmp, problems)
    try:
        with warnings.catch_warnings():                    # marshmallow deprecation noise from inside azure-ai-ml
            warnings.simplefilter("ignore")
            return load_job(str(pipeline), params_override=overrides), problems
    except Exception as exc:                               # marshmallow ValidationError / ValidationException
        return None, problems + _azure_problems(str(exc))


def _prescan(pipeline: Path, tmp: Path, problems: list[str]) -> list[dict]:
    """What azure-ai-ml's loader stops at or silently drops, for top-level jobs (a walk of the YAML's names):
    a component whose `code:` folder does not exist (returns params_override entries with a stand-in folder),
    and job inputs the component does not declare (azure-ai-ml drops a misspelled input without a word)."""
    import yaml

    try:
        raw = yaml.safe_load(pipeline.read_text()) or {}
    except yaml.YAMLError:
        return []                                          # azure-ai-ml reports the syntax error
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
            problems.append(f"jobs.{job_name}.inputs.{name}: the component has no input '{name}' (inputs: "
                            f"{', '.join(sorted(declared)) or 'none'}). Fix: correct the name.")
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
                        if not e.get("message", "").startswith(IGNORED_AZURE_ERRORS)]
    return [f"azure-ai-ml could not load the pipeline: {text.strip().splitlines()[0] if text.strip() else text}"]


def _azure_problem(error: dict) -> str:
    message = str(error.get("message", "")).strip()
    missing = re.search(r"Can't find directory or file in resolved absolute path: (.*?)\.?;", message)
    if missing:
        message = f"{missing.group(1)} does not exist. Fix: correct the path (it is relative to its YAML file)."
    value = error.get("value")
    return f"{error.get('path', '?')}: {message}" + (f" (value: {value!r})" if value is not None else "")


# ------------------------------------------------------------------------------------------------ typed values

def coerce(spec: dict, value, where: str, problems: list[str]):
    """Check a literal against a typed input spec (type, enum, min/max); return it in canonical Python form."""
    kind = spec.get("type")
    if kind not in PARAM_TYPES or value is None:
        return value
    try:
        if kind == "integer":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            value = int(str(value)) if not isinstance(value, float) else int(value)
        elif kind == "number":
            if isinstance(value, bool):
                raise ValueError
            value = value if isinstance(value, (int, float)) else float(str(value))
        elif kind == "boolean":
            if not isinstance(value, bool):
                text = str(value).strip().lower()
                if text not in ("true", "false"):
                    raise ValueError
                value = text == "true"
        else:
            value = str(value)
    except ValueError:
        problems.append(f"{where}: {value!r} is not a valid {kind}. Fix: give a {kind} value.")
        return value
    if spec.get("enum") and str(value) not in [str(e) for e in spec["enum"]]:
        problems.append(f"{where}: {value!r} is not one of {spec['enum']}. Fix: use one of the listed values.")
    for bound, ok in (("min", lambda v, b: v >= b), ("max", lambda v, b: v <= b)):
        if spec.get(bound) is not None and kind in ("integer", "number") and isinstance(value, (int, float)):
            if not ok(value, float(spec[bound])):
                problems.append(f"{where}: {value!r} is {'below the minimum' if bound == 'min' else 'above the maximum'} "
                                f"{spec[bound]}. Fix: give a value within [{spec.get('min')}, {spec.get('max')}].")
    return value


def _input_specs(component_dict: dict) -> dict[str, dict]:
    """Input specs with azure-ai-ml's stringified defaults/bounds turned back into typed values."""
    specs = {}
    for name, raw in (component_dict.get("inputs") or {}).items():
        spec = {k: raw.get(k) for k in ("type", "optional", "default", "min", "max", "enum")}
        spec["optional"] = bool(spec["optional"])
        if spec["default"] is not None:
            spec["default"] = coerce(spec, spec["default"], f"default of {name}", [])
        specs[name] = spec
    return specs


def _data_binding(path: str, kind: str, base: Path) -> dict:
    """A data input path: `azureml://...`/`azureml:name:1` stay cloud references; anything else is local."""
    if path.startswith("azureml:"):
        local = base / path[len("azureml:"):]
        if not path.startswith("azureml://") and local.exists():
            return {"path": str(local.resolve()), "type": kind}
        return {"cloud": path, "type": kind}
    if "://" in path:
        return {"cloud": path, "type": kind}
    return {"path": str((base / path).resolve()), "type": kind}


# ------------------------------------------------------------------------------------------------ the builder

class _Builder:
    def __init__(self, for_run: bool):
        self.for_run = for_run
        self.problems: list[str] = []
        self.nodes: dict[str, Node] = {}
        self.exports: dict[tuple[str, str], dict] = {}    # (pipeline node, output) -> binding
        self.sources: set[str] = set()
        self.reported_cloud: set[str] = set()

    def bind(self, raw, where: str, scope_inputs: dict, scope_jobs: dict, prefix: str, base: Path):
        """One node input as azure-ai-ml holds it -> a binding dict (None: not given)."""
        if raw is None:
            return None
        path = getattr(raw, "path", None)
        if path is not None and not isinstance(raw, (str, int, float, bool)):
            if isinstance(path, str) and BINDING.match(path):
                raw = path
            else:
                return _data_binding(str(path), getattr(raw, "type", None) or "uri_folder", base)
        if isinstance(raw, str) and (m := BINDING.match(raw.strip())):
            if m["input"]:
                if m["input"] not in scope_inputs:
                    self.problems.append(f"{where}: {raw} names an unknown pipeline input '{m['input']}' "
                                         f"(inputs: {', '.join(sorted(scope_inputs)) or 'none'}). "
                                         "Fix: declare it under the pipeline's inputs or correct the name.")
                    return None
                return scope_inputs[m["input"]]
            if m["job"]:
                job = scope_jobs.get(m["job"])
                if job is None:
                    self.problems.append(f"{where}: {raw} names an unknown job '{m['job']}' "
                                         f"(jobs: {', '.join(sorted(scope_jobs))}). Fix: correct the job name.")
                    return None
                comp = job.trial if job.type == "sweep" else job.component
                if m["output"] not in (comp.outputs or {}):
                    self.problems.append(f"{where}: {raw}: job '{m['job']}' has no output '{m['output']}' "
                                         f"(outputs: {', '.join(sorted(comp.outputs or {})) or 'none'}). "
                                         "Fix: correct the output name.")
                    return None
                if job.type == "pipeline":
                    return {"alias": prefix + m["job"], "output": m["output"]}
                return {"node": prefix + m["job"], "output": m["output"]}
            self.problems.append(f"{where}: {raw} can only be used for an output. Fix: bind an input instead.")
            return None
        if isinstance(raw, str) and "${{" in raw:
            self.problems.append(f"{where}: {raw!r} is not a binding this runner understands. Fix: use "
                                 "${{parent.inputs.x}} or ${{parent.jobs.a.outputs.b}}.")
            return None
        return {"value": raw}

    def node_inputs(self, job, specs: dict, where: str, scope_inputs, scope_jobs, prefix, base,
                    searched: set[str] = frozenset()) -> dict:
        bound = {}
        for name, node_input in job.inputs.items():
            raw = getattr(node_input, "_data", node_input)
            binding = self.bind(raw, f"{where}.inputs.{name}", scope_inputs, scope_jobs, prefix, base)
            if binding is not None:
                bound[name] = binding
        for name, spec in specs.items():
            field = f"{where}.inputs.{name}"
            binding = bound.get(name)
            if binding is None:
                if spec["default"] is not None:
                    bound[name] = {"value": spec["default"]}
                elif not spec["optional"] and name not in searched:
                    self.problems.append(f"{field}: required input is not given. Fix: bind it in the job's inputs "
                                         "or give the component input a default.")
                continue
            if "value" in binding:
                if spec.get("type") in DATA_TYPES:
                    if isinstance(binding["value"], str):
                        bound[name] = _data_binding(binding["value"], spec["type"], base)
                    continue
                bound[name] = {"value": coerce(spec, binding["value"], field, self.problems)}
            if "path" in binding and self.for_run and not Path(binding["path"]).exists():
                self.problems.append(f"{field}: {binding['path']} does not exist. Fix: correct the path (relative "
                                     "to the YAML that names it) or pass one with --set.")
            if "cloud" in binding and self.for_run and binding["cloud"] not in self.reported_cloud:
                self.reported_cloud.add(binding["cloud"])
                source = binding.get("from")
                fix = (f"`--set {source}=./local/path`" if source else "a local path in the YAML")
                self.problems.append(
                    f"{field if not source else 'inputs.' + source}: {binding['cloud']} is an Azure ML asset and "
                    f"cannot be resolved offline. Fix: pass a local copy with {fix}.")
        return bound

    def scope(self, jobs: dict, scope_inputs: dict, prefix: str, base: Path, exports_to: str | None,
              pipeline_outputs: dict):
        for name, job in jobs.items():
            where = f"jobs.{prefix}{name}"
            flat = prefix + name
            kind = job.type
            if kind == "pipeline":
                comp = job.component
                self._source(comp)
                specs = _input_specs(comp._to_dict())
                inner_inputs = self.node_inputs(job, specs, where, scope_inputs, jobs, prefix, base)
                self.scope(comp.jobs, inner_inputs, flat + ".", Path(comp.base_path).resolve(), flat, pipeline_outputs)
                for out_name, node_output in (job.outputs or {}).items():
                    target = getattr(getattr(node_output, "_data", None), "path", getattr(node_output, "_data", None))
                    if isinstance(target, str) and (m := BINDING.match(target.strip())) and m["pout"]:
                        alias = {"alias": flat, "output": out_name}
                        if exports_to is None:
                            pipeline_outputs[m["pout"]] = alias
                        else:
                            self.exports[(exports_to, m["pout"])] = alias
                continue
            if kind not in ("command", "sweep"):
                self.problems.append(f"{where}: job type '{kind}' is not supported locally. Fix: use command, "
                                     "sweep or pipeline jobs.")
                continue
            data = job._to_dict()
            comp_obj = job.trial if kind == "sweep" else job.component
            if isinstance(comp_obj, str):
                self.problems.append(f"{where}.component: {comp_obj} is a registered component and cannot be "
                                     "loaded offline. Fix: point to the component YAML file.")
                continue
            self._source(comp_obj)
            comp = data["trial"] if kind == "sweep" else data["component"]
            specs = _input_specs(comp)
            sweep = None
            searched: set[str] = set()
            if kind == "sweep":
                sweep = {k: data.get(k) for k in ("search_space", "sampling_algorithm", "objective", "limits",
                                                  "early_termination")}
                searched = set(sweep["search_space"] or {})
                from local_runner.sweep import validate_sweep

                self.problems += [f"{where}.{problem}" for problem in validate_sweep(sweep, set(specs))]
            inputs = self.node_inputs(job, specs, where, scope_inputs, jobs, prefix, base, searched)
            outputs = {}
            for out_name, spec in (comp.get("outputs") or {}).items():
                outputs[out_name] = dict(spec)
                raw = getattr(job.outputs.get(out_name), "_data", None) if job.outputs else None
                target = getattr(raw, "path", raw)
                if isinstance(target, str) and (m := BINDING.match(target.strip())) and m["pout"]:
                    if exports_to is None:
                        pipeline_outputs[m["pout"]] = {"node": flat, "output": out_name}
                    else:
                        self.exports[(exports_to, m["pout"])] = {"node": flat, "output": out_name}
                elif raw is not None and hasattr(raw, "type") and getattr(raw, "mode", None):
                    outputs[out_name]["mode"] = raw.mode
            code = comp.get("code")
            if code is not None and not (code.startswith("azureml:") or "://" in code):
                code = str(Path(code).resolve())
                if not Path(code).is_dir():
                    self.problems.append(f"{where}.component.code: folder {code} does not exist. "
                                         "Fix: correct `code:` (it is relative to the component YAML).")
            elif code is not None:
                self.problems.append(f"{where}.component.code: {code} is a cloud asset. Fix: use a local folder.")
            distribution = data.get("distribution") or comp.get("distribution")
            resources = data.get("resources") or comp.get("resources")
            if self.for_run and resources and int(resources.get("instance_count") or 1) > 1:
                self.problems.append(f"{where}.resources.instance_count: {resources['instance_count']} nodes cannot "
                                     "run on one machine. Fix: use instance_count: 1 locally (keep "
                                     "process_count_per_instance for several processes).")
            if distribution and distribution.get("type") not in ("pytorch", None):
                self.problems.append(f"{where}.distribution.type: {distribution.get('type')} is not supported "
                                     "locally. Fix: use `type: pytorch` (or run it on Azure ML).")
            self.check_command(comp.get("command", ""), specs, inputs, outputs, searched, where)
            self.nodes[flat] = Node(
                name=flat, kind=kind, command=comp.get("command", ""), code=code,
                environment=comp.get("environment"), component=comp, input_specs=specs, inputs=inputs,
                outputs=outputs, distribution=distribution, resources=resources,
                is_deterministic=bool(comp.get("is_deterministic", True)), sweep=sweep,
                environment_variables=data.get("environment_variables") or None,
                timeout=(data.get("limits") or {}).get("timeout") if kind == "command" else None)

    def check_command(self, command: str, specs: dict, inputs: dict, outputs: dict, searched: set[str],
                      where: str) -> None:
        """Every `${{inputs.x}}`/`${{outputs.y}}` of the command is declared; outside `$[[ ]]`, x has a value."""
        for name in sorted(set(INPUT_REF.findall(command)) - set(specs)):
            self.problems.append(f"{where}.command: uses ${{{{inputs.{name}}}}} but the component has no input "
                                 f"'{name}'. Fix: declare it under the component's inputs.")
        for name in sorted(set(OUTPUT_REF.findall(command)) - set(outputs)):
            self.problems.append(f"{where}.command: uses ${{{{outputs.{name}}}}} but the component has no output "
                                 f"'{name}'. Fix: declare it under the component's outputs.")
        required = set(INPUT_REF.findall(OPTIONAL.sub("", command))) & set(specs)
        for name in sorted(required - set(inputs) - searched):
            self.problems.append(f"{where}.inputs.{name}: the optional input is not given, but the command uses it "
                                 "outside $[[ ]]. Fix: give it a value, or wrap its part of the command in $[[ ]].")

    def _source(self, entity) -> None:
        """Remember the files an entity was read from: its YAML, and an inline environment's conda file."""
        src = getattr(entity, "_source_path", None)
        if src and Path(src).is_file():
            self.sources.add(str(Path(src).resolve()))
        conda = getattr(getattr(entity, "environment", None), "_conda_file_path", None)
        if conda and Path(conda).is_file():
            self.sources.add(str(Path(conda).resolve()))

    def resolve_aliases(self, pipeline_outputs: dict) -> None:
        def follow(binding):
            seen = 0
            while binding is not None and "alias" in binding and seen < 100:
                binding = self.exports.get((binding["alias"], binding["output"]))
                seen += 1
            return binding

        for node in self.nodes.values():
            for name, binding in list(node.inputs.items()):
                if "alias" in binding:
                    target = follow(binding)
                    if target is None:
                        self.problems.append(f"jobs.{node.name}.inputs.{name}: output '{binding['output']}' of "
                                             f"pipeline job '{binding['alias']}' is not produced by any of its "
                                             "jobs. Fix: bind it with ${{parent.outputs.x}} inside the component.")
                        del node.inputs[name]
                    else:
                        node.inputs[name] = target
        for name, binding in list(pipeline_outputs.items()):
            pipeline_outputs[name] = follow(binding)


def build_graph(pipeline: Path, sets: dict[str, str], for_run: bool) -> tuple[Graph, set[str]]:
    """Load, resolve and check `pipeline`; raise one UserError listing every problem."""
    pipeline = Path(pipeline)
    if not pipeline.is_file():
        raise UserError(f"pipeline file {pipeline} does not exist. Fix: pass the path of a pipeline-job YAML.")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="slmops-validate-") as tmp:
        job, problems = _load_job(pipeline, Path(tmp))
        if job is None:
            raise UserError(f"{pipeline} is not a valid pipeline job:", problems=problems)
        return _build(pipeline, job, problems, sets, for_run)


def _build(pipeline: Path, job, problems: list[str], sets: dict[str, str], for_run: bool) -> tuple[Graph, set[str]]:
    if getattr(job, "type", None) != "pipeline":
        raise UserError(f"{pipeline} is a '{job.type}' job, not a pipeline. Fix: give a `type: pipeline` job YAML.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = job._validate()
    for error in result._to_dict().get("errors", []):
        if not str(error.get("message", "")).startswith(IGNORED_AZURE_ERRORS):
            problems.append(f"{error.get('path')}: {error.get('message')}")

    base = Path(job.base_path).resolve()
    builder = _Builder(for_run)
    builder.problems = problems
    builder.sources.add(str(pipeline.resolve()))
    scope_inputs = {}
    for name, pipeline_input in (job.inputs or {}).items():
        raw = pipeline_input._data
        if name in sets:
            raw = _apply_set(name, raw, sets[name], problems)
        if raw is not None and hasattr(raw, "path") and not isinstance(raw, str):
            scope_inputs[name] = _data_binding(str(raw.path), raw.type or "uri_folder", base)
            if "cloud" in scope_inputs[name]:
                scope_inputs[name]["from"] = name
        elif raw is not None:
            scope_inputs[name] = {"value": raw}
    for name in sorted(set(sets) - set(job.inputs or {})):
        problems.append(f"--set {name}: the pipeline has no input '{name}' (inputs: "
                        f"{', '.join(sorted(job.inputs or {}))}). Fix: set one of the pipeline's inputs.")
    for name in sets:
        if name in scope_inputs and "path" in scope_inputs[name] and not Path(scope_inputs[name]["path"]).exists():
            problems.append(f"--set {name}: {scope_inputs[name]['path']} does not exist. Fix: give an existing path.")

    pipeline_outputs: dict[str, dict] = {}
    builder.scope(job.jobs, scope_inputs, "", base, None, pipeline_outputs)
    builder.resolve_aliases(pipeline_outputs)
    try:
        toposort({name: node.upstream() for name, node in builder.nodes.items()})
    except UserError as exc:
        problems.append(f"jobs: {exc}")
    if problems:
        raise UserError(f"{pipeline} has {len(problems)} problem(s):", problems=problems)

    settings = job.settings._to_dict() if job.settings is not None and hasattr(job.settings, "_to_dict") else {}
    graph = Graph(
        name=job.display_name or job.name or pipeline.stem,
        experiment_name=job.experiment_name or pipeline.stem,
        nodes=builder.nodes, outputs={k: v for k, v in pipeline_outputs.items() if v is not None},
        force_rerun=bool((settings or {}).get("force_rerun", False)),
    )
    return graph, builder.sources


def _apply_set(name: str, raw, text: str, problems: list[str]):
    """`--set name=value`: a path for a data input (relative to the current folder), else a typed literal."""
    if raw is not None and hasattr(raw, "path") and not isinstance(raw, str):
        from azure.ai.ml import Input

        path = text if text.startswith("azureml:") or "://" in text else str(Path(text).resolve())
        return Input(type=raw.type, path=path)
    if isinstance(raw, bool):
        spec = {"type": "boolean"}
    elif isinstance(raw, int):
        spec = {"type": "integer"}
    elif isinstance(raw, float):
        spec = {"type": "number"}
    else:
        return text
    if spec["type"] == "integer" and re.fullmatch(r"-?\d+\.\d*|-?\d*\.\d+|-?\d+e-?\d+", text.strip()):
        spec = {"type": "number"}        # 1 in the YAML, 0.5 on the command line: the component decides
    return coerce(spec, text, f"--set {name}", problems)
