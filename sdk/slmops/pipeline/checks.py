"""The checks azure-ai-ml's offline `_validate()` misses, done while the loaded job is turned into a `Graph`.

`Builder` walks the pipeline job as azure-ai-ml loaded it (nested pipeline components expanded into `outer.inner`
nodes) and checks: unknown `${{parent.inputs.x}}`, unknown job/output references, literal types, enum and min/max
(with `slmops.contract.coerce`, the rule the steps' own argument parsers use), required inputs, sweep search spaces
naming a missing input, `${{inputs.x}}`/`${{outputs.y}}` in commands, missing `code:` folders, data paths, and what
cannot run on this machine. Each finding is an error (what Azure ML rejects) or a warning (what Azure ML accepts
but is probably a mistake, or what only a local run cannot do); `target` says which command asks:

    "local"   `slmops run`: multi-node/mpi/tensorflow jobs and job types other than command/sweep/pipeline are errors
              (they cannot run here); data that lives in a workspace is left to the runner (`slmops.runner.assets`),
              which maps it to a local stand-in or says how to give one
    "any"     `slmops validate`: those are warnings about local execution
    "azure"   `slmops submit`: they are fine
"""

from __future__ import annotations

import re
from pathlib import Path

from slmops.contract import coerce
from slmops.pipeline.graph import Node
from slmops.pipeline.overrides import DATA_TYPES
from slmops.pipeline.sweep_spec import validate_sweep

BINDING = re.compile(r"^\$\{\{\s*parent\.(?:inputs\.(?P<input>[\w.]+)|jobs\.(?P<job>\w+)\.outputs\.(?P<output>\w+)"
                     r"|outputs\.(?P<pout>\w+))\s*\}\}$")
OPTIONAL = re.compile(r"\$\[\[(.*?)\]\]", re.S)
INPUT_REF = re.compile(r"\$\{\{\s*inputs\.(\w+)\s*\}\}")
OUTPUT_REF = re.compile(r"\$\{\{\s*outputs\.(\w+)\s*\}\}")
TARGETS = ("local", "any", "azure")


def input_specs(component_dict: dict) -> dict[str, dict]:
    """Input specs with azure-ai-ml's stringified defaults/bounds turned back into typed values."""
    specs = {}
    for name, raw in (component_dict.get("inputs") or {}).items():
        spec = {k: raw.get(k) for k in ("type", "optional", "default", "min", "max", "enum")}
        spec["optional"] = bool(spec["optional"])
        if spec["default"] is not None:
            spec["default"] = coerce(spec, spec["default"], f"default of {name}", [])
        specs[name] = spec
    return specs


# A registered asset as azure-ai-ml leaves it after loading: it strips `azureml:` from `azureml:name:version` and
# `azureml:name@latest`, so such a path that is not a local file is the asset.
ASSET_REF = re.compile(r"^[A-Za-z0-9][\w.-]*(?::[\w.-]+|@latest)$")


DATASTORE_URI = re.compile(r"^azureml://(?:.*/)?datastores/(?P<store>[^/]+)/paths/(?P<path>.*)$")
ASSET_URI = re.compile(r"^azureml://(?:.*/)?(?P<what>data|models)/(?P<name>[^/]+)"
                       r"(?:/versions/(?P<version>[^/]+)|/labels/(?P<label>[^/]+))?/?$")
MODEL_TYPES = ("mlflow_model", "custom_model", "triton_model")


def cloud_ref(ref: str, kind: str) -> dict:
    """What a data path that is not a local file names, as fields of its binding (`ref` says which kind):

        {"ref": "asset", "asset": "data"|"model", "name", "version"|"label"}   azureml:name:1, azureml:name@latest,
                                                                               azureml://.../data/name/versions/1
        {"ref": "datastore", "datastore": name, "datastore_path": p}           azureml://datastores/name/paths/p
        {"ref": "url"}                                                         http(s)://...
        {"ref": "storage"}                                                     wasbs://, abfss://, s3://, ...
    """
    what = "model" if kind in MODEL_TYPES else "data"
    if m := DATASTORE_URI.match(ref):
        return {"ref": "datastore", "datastore": m["store"], "datastore_path": m["path"]}
    if m := ASSET_URI.match(ref):
        found = {"ref": "asset", "asset": "model" if m["what"] == "models" else "data", "name": m["name"]}
        return dict(found, **({"version": m["version"]} if m["version"] else {"label": m["label"] or "latest"}))
    if ref.startswith("azureml:") and not ref.startswith("azureml://"):
        name = ref[len("azureml:"):]
        if "@" in name:
            name, label = name.split("@", 1)
            return {"ref": "asset", "asset": what, "name": name, "label": label}
        name, _, version = name.partition(":")
        found = {"ref": "asset", "asset": what, "name": name}
        return dict(found, **({"version": version} if version else {"label": "latest"}))
    if ref.startswith(("http://", "https://")):
        return {"ref": "url"}
    return {"ref": "storage"}


def data_binding(path: str, kind: str, base: Path) -> dict:
    """A data input path: `azureml://...`, `azureml:name:1`, `https://...` stay cloud references (with `cloud_ref`'s
    fields, resolved by the local runner); the rest is local."""
    if path.startswith("azureml:"):
        local = base / path[len("azureml:"):]
        if not path.startswith("azureml://") and local.exists():
            return {"path": str(local.resolve()), "type": kind}
        return {"cloud": path, "type": kind, **cloud_ref(path, kind)}
    if "://" in path:
        return {"cloud": path, "type": kind, **cloud_ref(path, kind)}
    if ASSET_REF.match(path) and not (base / path).exists():
        return {"cloud": f"azureml:{path}", "type": kind, **cloud_ref(f"azureml:{path}", kind)}
    return {"path": str((base / path).resolve()), "type": kind}


# Job types Azure ML runs that this machine cannot, and the nearest thing that runs here.
LOCAL_ALTERNATIVE = {
    "automl": "AutoML needs the Azure ML service. Fix: locally, train with a command job (or a sweep job over a "
              "training component) and feed its model output to the consumers",
    "parallel": "parallel jobs need Azure ML's mini-batch runtime. Fix: locally, run the entry script over the whole "
                "input as one command job (it can loop over the files itself)",
    "spark": "Spark jobs need a Spark pool. Fix: locally, run the entry file as a command job with pyspark in local "
             "mode (spark.master local[*])",
    "import": "data import jobs need a workspace connection. Fix: locally, copy the data yourself and pass it with "
              "--set INPUT=./path or a local path in the YAML",
    "data_transfer": "data transfer jobs need Azure ML's copy service. Fix: locally, copy the data with a command job",
    "flow": "prompt flows need the promptflow runtime. Fix: locally, run `pf flow test` in a command job",
}
DISTRIBUTION_ALTERNATIVE = {
    "mpi": "Fix: use `type: pytorch` with process_count_per_instance (torchrun-style ranks), or run one process "
           "locally",
    "tensorflow": "Fix: use `type: pytorch`-style ranks or run one process (TF_CONFIG is not set up locally)",
}


def unsupported_job(kind: str) -> str:
    return LOCAL_ALTERNATIVE.get(kind, "Fix: use command, sweep or pipeline jobs locally (Azure ML runs it)")


def conda_requirement_files(conda: dict, folder: Path, sources: set[str]) -> dict:
    """The conda file with each `-r FILE` / `--requirement FILE` of its pip section replaced by that file's lines
    (relative to the conda file, as conda and pip read them), so the local runner builds exactly what Azure ML's
    image build would, and an edit to the requirements file changes the environment. The files join `sources`."""
    def expand(lines, seen):
        out = []
        for line in lines:
            text = str(line).strip()
            match = re.match(r"^(?:-r|--requirement)\s*=?\s*(\S+)$", text)
            if not match:
                out.append(line)
                continue
            path = (folder / match.group(1)).resolve()
            if not path.is_file() or path in seen:
                out.append(line)          # the runner reports a file it cannot read
                continue
            sources.add(str(path))
            inner = [ln.split(" #")[0].strip() for ln in path.read_text().splitlines()]
            out += expand([ln for ln in inner if ln and not ln.startswith("#")], seen | {path})
        return out

    deps = []
    for dep in conda.get("dependencies") or []:
        if isinstance(dep, dict) and isinstance(dep.get("pip"), list):
            dep = dict(dep, pip=expand(dep["pip"], frozenset()))
        deps.append(dep)
    return dict(conda, dependencies=deps)


def format_value(value) -> str:
    """A value as Azure ML writes it into a command line (booleans as True/False)."""
    return ("True" if value else "False") if isinstance(value, bool) else str(value)


# ------------------------------------------------------------------------------------------------ the builder

class Builder:
    """Walks a loaded pipeline job into `nodes`, collecting `problems` (errors) and `warnings`."""

    def __init__(self, target: str):
        assert target in TARGETS, target
        self.target = target
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.used_inputs: set[tuple[str, str]] = set()     # (scope, pipeline input) referenced by some job
        self.nodes: dict[str, Node] = {}
        self.exports: dict[tuple[str, str], dict] = {}    # (pipeline node, output) -> binding
        self.sources: set[str] = set()
        self.reported_cloud: set[str] = set()
        self.unsupported: dict[str, tuple[str, str]] = {}   # node name -> (where, job type): not run locally

    def local_limit(self, message: str) -> None:
        """What only a local run cannot do: an error for `run`, a warning for `validate`, nothing for `submit`."""
        if self.target == "local":
            self.problems.append(message)
        elif self.target == "any":
            self.warnings.append(f"{message} (only `slmops run` is affected; Azure ML runs it)")

    def bind(self, raw, where: str, scope_inputs: dict, scope_jobs: dict, prefix: str, base: Path):
        """One node input as azure-ai-ml holds it -> a binding dict (None: not given)."""
        if raw is None:
            return None
        path = getattr(raw, "path", None)
        if path is not None and not isinstance(raw, (str, int, float, bool)):
            if isinstance(path, str) and BINDING.match(path):
                raw = path
            else:
                return data_binding(str(path), getattr(raw, "type", None) or "uri_folder", base)
        if isinstance(raw, str) and (m := BINDING.match(raw.strip())):
            if m["input"]:
                if m["input"] not in scope_inputs:
                    self.problems.append(f"{where}: {raw} names an unknown pipeline input '{m['input']}' "
                                         f"(inputs: {', '.join(sorted(scope_inputs)) or 'none'}). "
                                         "Fix: declare it under the pipeline's inputs or correct the name.")
                    return None
                self.used_inputs.add((prefix, m["input"]))
                return scope_inputs[m["input"]]        # None: an optional pipeline input that was not given
            if m["job"]:
                job = scope_jobs.get(m["job"])
                if job is None:
                    self.problems.append(f"{where}: {raw} names an unknown job '{m['job']}' "
                                         f"(jobs: {', '.join(sorted(scope_jobs))}). Fix: correct the job name.")
                    return None
                if job.type not in ("command", "sweep", "pipeline"):
                    # automl, parallel, spark, import...: not run locally; the edge is dropped in resolve_aliases
                    known = set(getattr(job, "outputs", None) or {})
                    if known and m["output"] not in known:
                        self.problems.append(f"{where}: {raw}: job '{m['job']}' has no output '{m['output']}' "
                                             f"(outputs: {', '.join(sorted(known))}). Fix: correct the output name.")
                        return None
                    return {"node": prefix + m["job"], "output": m["output"]}
                comp = job.trial if job.type == "sweep" else job.component
                if isinstance(comp, str) or comp is None:
                    return {"node": prefix + m["job"], "output": m["output"]}   # reported where the job is built
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
                        bound[name] = data_binding(binding["value"], spec["type"], base)
                    continue
                value = binding["value"]
                if spec.get("type") == "string" and isinstance(value, (bool, int, float)):
                    # YAML read `label_column: 2024` or `flag: yes` as a number/boolean; the step gets its text
                    # form ("2024", "True"), which is rarely what was meant for a text input.
                    self.warnings.append(f"{field}: the text input gets the {type(value).__name__} {value!r}, "
                                         f"passed as the text {format_value(value)!r}. Fix: quote it in the YAML "
                                         f"(\"{value}\") if that text is meant.")
                bound[name] = {"value": coerce(spec, value, field, self.problems)}
            if "path" in binding and not Path(binding["path"]).exists():
                self.problems.append(f"{field}: {binding['path']} does not exist. Fix: correct the path (relative "
                                     "to the YAML that names it) or pass one with --set.")
            if "cloud" in binding and self.target == "local" and binding.get("ref") == "storage" \
                    and binding["cloud"] not in self.reported_cloud:
                # Registered assets, datastore paths and http(s) URLs are the runner's (slmops.runner.assets):
                # it maps them to local stand-ins or says how to give one. Other storage URLs cannot be read here.
                self.reported_cloud.add(binding["cloud"])
                source = binding.get("from")
                fix = (f"`--set {source}=./local/path`" if source else "a local path in the YAML")
                self.problems.append(
                    f"{field if not source else 'inputs.' + source}: {binding['cloud']} is a cloud storage URL that "
                    f"a local run cannot read. Fix: pass a local copy with {fix}.")
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
                specs = input_specs(comp._to_dict())
                inner_inputs = self.node_inputs(job, specs, where, scope_inputs, jobs, prefix, base)
                self.scope(comp.jobs, inner_inputs, flat + ".", Path(comp.base_path).resolve(), flat, pipeline_outputs)
                self.unused_inputs(f"{where}.component", inner_inputs, flat + ".")
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
                self.unsupported[flat] = (where, kind)      # reported in resolve_aliases, with its consumers
                continue
            data = job._to_dict()
            comp_obj = job.trial if kind == "sweep" else job.component
            if isinstance(comp_obj, str):
                self.problems.append(f"{where}.component: {comp_obj} is a registered component and cannot be "
                                     "loaded offline. Fix: point to the component YAML file.")
                continue
            self._source(comp_obj)
            comp = data["trial"] if kind == "sweep" else data["component"]
            specs = input_specs(comp)
            sweep = None
            searched: set[str] = set()
            if kind == "sweep":
                sweep = {k: data.get(k) for k in ("search_space", "sampling_algorithm", "objective", "limits",
                                                  "early_termination")}
                searched = set(sweep["search_space"] or {})
                self.problems += [f"{where}.{problem}" for problem in validate_sweep(sweep, set(specs))]
            inputs = self.node_inputs(job, specs, where, scope_inputs, jobs, prefix, base, searched)
            outputs = {}
            for out_name, spec in (comp.get("outputs") or {}).items():
                outputs[out_name] = dict(spec)
                raw = getattr(job.outputs.get(out_name), "_data", None) if job.outputs else None
                target = raw.get("path") if isinstance(raw, dict) else getattr(raw, "path", raw)
                if isinstance(target, str) and (m := BINDING.match(target.strip())) and m["pout"]:
                    if exports_to is None:
                        pipeline_outputs[m["pout"]] = {"node": flat, "output": out_name}
                    else:
                        self.exports[(exports_to, m["pout"])] = {"node": flat, "output": out_name}
                elif raw is not None and not isinstance(raw, str):
                    # The job's own output settings: where Azure ML writes it (an azureml://datastores/... path,
                    # possibly with ${{name}}/${{output_name}}) and how it is mounted; the runner publishes the
                    # output to the datastore's local stand-in.
                    for setting in ("path", "mode", "type"):
                        value = raw.get(setting) if isinstance(raw, dict) else getattr(raw, setting, None)
                        if isinstance(value, str) and value:
                            outputs[out_name][setting] = value
            code = comp.get("code")
            if code is not None and not (code.startswith("azureml:") or "://" in code):
                code = str(Path(code).resolve())
                if not Path(code).is_dir():
                    self.problems.append(f"{where}.component.code: folder {code} does not exist. "
                                         "Fix: correct `code:` (it is relative to the component YAML).")
            elif code is not None:
                self.local_limit(f"{where}.component.code: {code} is a cloud asset. Fix: use a local folder.")
            distribution = data.get("distribution") or comp.get("distribution")
            resources = data.get("resources") or comp.get("resources")
            if resources and int(resources.get("instance_count") or 1) > 1:
                self.local_limit(f"{where}.resources.instance_count: {resources['instance_count']} nodes cannot "
                                 "run on one machine. Fix: use instance_count: 1 locally (keep "
                                 "process_count_per_instance for several processes).")
            if distribution and distribution.get("type") not in ("pytorch", None):
                dist_type = str(distribution.get("type"))
                self.local_limit(f"{where}.distribution.type: {dist_type} is not supported locally. "
                                 + DISTRIBUTION_ALTERNATIVE.get(dist_type.lower(), "Fix: use `type: pytorch` locally")
                                 + ".")
            self.check_command(comp.get("command", ""), specs, inputs, outputs, searched, where)
            environment = comp.get("environment")
            conda_path = getattr(getattr(comp_obj, "environment", None), "_conda_file_path", None)
            if isinstance(environment, dict) and isinstance(environment.get("conda_file"), dict) and conda_path:
                environment = dict(environment, conda_file=conda_requirement_files(
                    environment["conda_file"], Path(conda_path).resolve().parent, self.sources))
                comp = dict(comp, environment=environment)
            self.nodes[flat] = Node(
                name=flat, kind=kind, command=comp.get("command", ""), code=code,
                environment=environment, component=comp, input_specs=specs, inputs=inputs,
                outputs=outputs, distribution=distribution, resources=resources,
                is_deterministic=bool(comp.get("is_deterministic", True)), sweep=sweep,
                environment_variables=data.get("environment_variables") or None,
                timeout=(data.get("limits") or {}).get("timeout") if kind == "command" else None,
                component_ref=component_ref(comp_obj))

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

    def unused_inputs(self, where: str, scope_inputs: dict, prefix: str) -> None:
        """A declared pipeline input no job of its scope binds: accepted by Azure ML, probably a mistake."""
        for name in sorted(scope_inputs):
            if (prefix, name) not in self.used_inputs:
                self.warnings.append(f"{where + '.' if where else ''}inputs.{name}: no job uses this pipeline input, so its value changes "
                                     f"nothing. Fix: bind it in a job (${{{{parent.inputs.{name}}}}}) or remove it.")

    def resolve_aliases(self, pipeline_outputs: dict) -> None:
        """Bindings to outputs of pipeline-component jobs become bindings to the job inside that produces them;
        jobs of a type that does not run locally are reported (with the jobs that consume their outputs) and
        every edge to them is dropped, so the graph stays a graph of runnable nodes."""
        self.drop_unsupported(pipeline_outputs)

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

    def drop_unsupported(self, pipeline_outputs: dict) -> None:
        for name, (where, kind) in sorted(self.unsupported.items()):
            consumers = sorted(n.name for n in self.nodes.values()
                               if any(b.get("node") == name for b in n.inputs.values()))
            after = (f" Its consumers ({', '.join(consumers)}) cannot run without it either." if consumers else "")
            self.local_limit(f"{where}: job type '{kind}' does not run locally: {unsupported_job(kind)}.{after}")
        dropped = set(self.unsupported)
        for node in self.nodes.values():
            for input_name, binding in list(node.inputs.items()):
                if binding.get("node") in dropped:
                    del node.inputs[input_name]
        for out_name, binding in list(pipeline_outputs.items()):
            if binding and binding.get("node") in dropped:
                del pipeline_outputs[out_name]
        for key, binding in list(self.exports.items()):
            if binding and binding.get("node") in dropped:
                del self.exports[key]




def component_ref(entity) -> str | None:
    """`name:version` as the component's YAML file declares them (loaded inline, azure-ai-ml names the entity
    azureml_anonymous); None for a component not read from a file."""
    import yaml

    src = getattr(entity, "_source_path", None)
    if not src or not Path(src).is_file():
        return None
    data = yaml.safe_load(Path(src).read_text()) or {}
    name, version = data.get("name"), data.get("version")
    if not name:
        return None
    return f"{name}:{version}" if version is not None else str(name)
