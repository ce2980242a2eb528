"""One-command verbs: `slmops finetune` (a model and a dataset to a fine-tuned, evaluated, registered model) and
`slmops optimize` (an existing model to its evaluated, gated and registered ONNX Runtime GenAI build).

    slmops finetune --model ./my-model --data rows.jsonl                        # pipelines/finetune.yaml, locally
    slmops finetune --model HuggingFaceTB/SmolLM2-135M-Instruct --data rows.jsonl --method dora --set max_steps=200
    slmops finetune --model ./my-model --data rows.jsonl --loss examples/losses/class_weighted.py:loss
    slmops finetune --model ./my-model --data rows.jsonl --sweep                # pipelines/finetune_sweep.yaml
    slmops finetune --model ORG/NAME --data azureml:my-rows:1 --azure           # submitted to Azure ML
    slmops finetune --model ./my-model --data rows.jsonl --dry-run              # print the resolved inputs only
    slmops finetune --model ./my-model --data rows.jsonl --save job.yaml        # write them (YAML or JSON) ...
    slmops finetune --inputs job.yaml --set max_steps=50                        # ... and start from them later
    slmops optimize --model runs/try1/finetune/outputs/model --precision int8  # pipelines/optimize.yaml, locally
    slmops optimize --model models:/slmops-tone@candidate --data rows.jsonl    # a registered version
    slmops optimize --model azureml:slmops-tone:3 --azure --dry-run

A verb only translates its flags into the pipeline's inputs and hands them to the same code as
`slmops run PIPELINE --set ...` or, with `--azure`, `slmops submit PIPELINE --set ...`: same checks, same errors,
same pipeline. finetune: `--model` -> base_model for a folder or an `azureml:` model, base_model_id for a hub id;
`--data` -> data; `--template` -> template; `--method` -> method; `--loss FILE.py[:NAME]` -> loss (and
loss_function). optimize: `--model` -> model (a `models:/NAME@ALIAS` or `models:/NAME/VERSION` reference is resolved
in the registry first: downloaded locally, `azureml:NAME:VERSION` with --azure); `--data` -> data; `--test-data` ->
test_data; `--precision` -> onnx_precision. Both: `--set NAME=VALUE` -> any other input. The pipeline is
`pipelines/<name>.yaml` of the current folder when it has one (a project made by `slmops init`), else of the slmops
checkout; `--pipeline FILE` names another. What both verbs share (the inputs file, --set merging, typing, --save,
--dry-run, run or submit) is `Verb` and `launch` below; each command only names its flags.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import click

from slmops.errors import UserError

INPUTS_FILE_KEYS = {"pipeline", "inputs"}
LOSS_FORM = "FILE.py or FILE.py:FUNCTION"


@dataclass(frozen=True)
class Verb:
    """What differs between the verbs: the command's name (for messages) and its flags' pipeline inputs."""

    name: str
    given: dict          # {input: (flag, value)}: what the verb's own flags set
    exclusive: tuple = ()  # groups of inputs of which one flag value replaces the others an inputs file set


def default_pipeline(name: str, cwd: Path) -> Path:
    """pipelines/<name> of `cwd`, else of the source checkout slmops is installed from."""
    import slmops

    for root in (cwd, Path(slmops.__file__).resolve().parents[2]):
        if (root / "pipelines" / name).is_file():
            return root / "pipelines" / name
    raise UserError(f"no pipelines/{name} in the current folder ({cwd}) nor beside the installed slmops package. "
                    "Fix: pass --pipeline FILE, or create a project with `slmops init DIR` and run from it.")


def model_input(model: str) -> tuple[str, str]:
    """(input name, value) for finetune's --model: a folder or an azureml: model -> base_model; ORG/NAME ->
    base_model_id."""
    if model.startswith("azureml:") or Path(model).exists():
        return "base_model", model
    parts = model.split("/")
    if len(parts) == 2 and all(parts) and not model.startswith((".", "~")):
        return "base_model_id", model
    raise UserError(f"--model {model!r} is neither an existing folder nor a hub id ORG/NAME. Fix: give the folder of "
                    "a Hugging Face or MLflow model (e.g. from `slmops models pull`), an azureml: model, or a hub id "
                    "such as HuggingFaceTB/SmolLM2-135M-Instruct.")


def loss_inputs(text: str) -> dict[str, str]:
    """{"loss": FILE, "loss_function": NAME} for --loss FILE.py[:NAME] (no NAME: only loss; the pipeline's
    loss_function default applies)."""
    file, sep, function = text.rpartition(":")
    if sep and file.endswith(".py") and function.isidentifier():
        return {"loss": file, "loss_function": function}
    if text.endswith(".py"):
        return {"loss": text}
    raise UserError(f"--loss {text!r}: expected {LOSS_FORM}, e.g. examples/losses/class_weighted.py:loss")


def read_inputs_file(path: Path, verb: str) -> tuple[str | None, dict[str, str]]:
    """(pipeline, {input: text}) from a file `--save` wrote (YAML or JSON: `{pipeline: PATH, inputs: {...}}`)."""
    import yaml

    fix = f"Fix: give a file written by `slmops {verb} --save FILE`."
    if not path.is_file():
        raise UserError(f"--inputs {path}: no such file. {fix}")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML
    except yaml.YAMLError as exc:
        raise UserError(f"--inputs {path}: not YAML or JSON ({str(exc).splitlines()[0]}). {fix}") from None
    problems = []
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict):
        problems.append("expected a mapping {pipeline: PATH, inputs: {NAME: VALUE, ...}}, got "
                        f"{type(doc).__name__ if not isinstance(doc, dict) else 'no inputs mapping'}")
    else:
        problems += [f"unknown key {key!r}; the keys are pipeline and inputs" for key in sorted(set(doc) -
                                                                                                  INPUTS_FILE_KEYS)]
        problems += [f"inputs.{name}: {value!r} is not a single value" for name, value in doc["inputs"].items()
                     if isinstance(value, (dict, list))]
    if problems:
        raise UserError(f"--inputs {path} is not an inputs file:", problems=problems)
    pipeline = doc.get("pipeline")
    return (str(pipeline) if pipeline else None), {name: _text(value) for name, value in doc["inputs"].items()
                                                   if value is not None}


def _text(value) -> str:
    """A value as `--set` text (booleans as true/false, as YAML writes them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def collect_sets(verb: Verb, sets: dict[str, str], base: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The `--set` values to run with: `base` (an inputs file), then the verb's flags, then --set; and the
    problems: a flag and a --set naming the same input."""
    chosen = dict(base)
    problems = []
    for group in verb.exclusive:     # e.g. --model sets base_model_id: an inputs file's base_model goes
        if any(name in verb.given for name in group):
            for name in group:
                chosen.pop(name, None)
    for name, (flag, value) in verb.given.items():
        if name in sets:
            problems.append(f"{flag} {value!r} and --set {name}={sets[name]!r} both set the input {name}. Fix: give "
                            "one of them.")
        chosen[name] = value
    chosen.update(sets)
    return chosen, problems


def resolved_inputs(pipeline: Path, sets: dict[str, str], cwd: Path) -> tuple[dict, list[str]]:
    """Every input of `pipeline` as it would run: its YAML default, or the `--set` value typed as `slmops run` types
    it (data paths absolute); and the problems (unknown names, badly typed values, missing data files)."""
    from slmops.pipeline.load import read_yaml
    from slmops.pipeline.overrides import typed_overrides

    raw, syntax = read_yaml(pipeline) if pipeline.is_file() else (None, f"pipeline file {pipeline} does not exist. "
                                                                   "Fix: pass --pipeline FILE.")
    if syntax:
        raise UserError(syntax)
    declared = (raw or {}).get("inputs") if isinstance((raw or {}).get("inputs"), dict) else {}
    params, problems = typed_overrides(declared, sets, cwd)
    typed = {key.removeprefix("inputs."): value for param in params for key, value in param.items()}
    return {name: _plain(typed.get(name, spec), pipeline.parent) for name, spec in declared.items()}, problems


def _plain(spec, folder: Path):
    """A declared or overridden input as one value: a data input's path (None when unset; a YAML default relative to
    the pipeline's `folder` made absolute, so a saved inputs file means the same from any folder), a typed input's
    default."""
    from slmops.pipeline.overrides import is_remote

    if not isinstance(spec, dict):
        return spec
    if "path" in spec:
        path = str(spec["path"])
        return path if is_remote(path) or Path(path).is_absolute() else str((folder / path).resolve())
    return spec.get("default")


def render(pipeline: Path, inputs: dict, fmt: str) -> str:
    """The inputs file: `{pipeline: PATH, inputs: {...}}` as YAML or JSON (unset inputs left out)."""
    import yaml

    doc = {"pipeline": str(pipeline), "inputs": {k: v for k, v in inputs.items() if v is not None}}
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=10**6)


def save_format(path: Path) -> tuple[str, list[str]]:
    """("yaml" or "json", problems) for the --save file name."""
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml", ".json"):
        return suffix.removeprefix(".").replace("yml", "yaml"), []
    return "", [f"--save {path}: unknown file type {suffix or '(none)'!r}. Fix: name a .yaml, .yml or .json file."]


def check_target(azure: bool, compute, run_dir) -> None:
    """--compute is for --azure, --run-dir for local runs (usage errors, before anything is read)."""
    if compute and not azure:
        raise click.UsageError("--compute applies to --azure only (locally every step runs here)")
    if run_dir is not None and azure:
        raise click.UsageError("--run-dir applies to local runs only (drop --azure or --run-dir)")


def choose_pipeline(pipeline: Path | None, saved: str | None, default: str, cwd: Path) -> Path:
    """--pipeline, else the inputs file's pipeline, else pipelines/<default>."""
    if pipeline is None and saved:
        pipeline = Path(saved)
    return (pipeline or default_pipeline(default, cwd)).resolve()


def launch(ctx, verb: Verb, pipeline: Path, sets: dict[str, str], problems: list[str], *, save: Path | None,
           dry_run: bool, azure: bool, compute, run_dir: Path | None) -> None:
    """Check `sets` against `pipeline` (with the verb's `problems` so far: all reported at once, exit 2), then
    --save, then --dry-run (print) or run (`slmops run`) or submit (`slmops submit`) with them."""
    cwd = Path.cwd()
    fmt, bad_save = save_format(save) if save else ("", [])
    inputs, typing = resolved_inputs(pipeline, sets, cwd)
    # a value that came from a flag is named by that flag, not by the --set it became
    for name, (flag, _) in verb.given.items():
        typing = [p.replace(f"--set {name}:", f"{flag}:", 1) if p.startswith(f"--set {name}:") else p
                  for p in typing]
    problems = bad_save + problems + typing
    if problems:
        raise UserError(f"slmops {verb.name} ({pipeline}): {len(problems)} problem(s):", problems=problems)
    if save:
        save.write_text(render(pipeline, inputs, fmt), encoding="utf-8")
        click.echo(f"inputs written to {save} (reuse: slmops {verb.name} --inputs {save})", err=True)
    set_args = tuple(f"{name}={value}" for name, value in sets.items())
    if dry_run:
        from slmops.pipeline.load import load, report

        report(load(pipeline, sets, target="azure" if azure else "local", cwd=cwd, compute=compute), strict=False,
               echo=lambda text: click.echo(text, err=True))
        click.echo(render(pipeline, inputs, "yaml"), nl=False)
        command = "slmops submit" if azure else "slmops run"
        click.echo(f"# would run: {command} {pipeline} " + " ".join(f"--set {_quoted(a)}" for a in set_args), err=True)
        return
    if azure:
        from slmops.azure.cli import submit

        ctx.invoke(submit, pipeline=pipeline, sets=set_args, compute=compute)
    else:
        from slmops.runner.cli import run

        ctx.invoke(run, pipeline=pipeline, set_=set_args, run_dir=run_dir)


def _quoted(text: str) -> str:
    import shlex

    return shlex.quote(text)


def pipeline_options(default: str, example: str):
    """The options every verb has: --set, --inputs, --pipeline, --azure, --compute, --run-dir, --dry-run, --save."""
    options = [
        click.option("--set", "set_", multiple=True, metavar="NAME=VALUE",
                     help=f"Any other pipeline input, e.g. {example} (repeatable)."),
        click.option("--inputs", "inputs_file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Start from an inputs file written by --save; the other flags override it."),
        click.option("--pipeline", type=click.Path(dir_okay=False, path_type=Path),
                     help=f"Pipeline YAML to fill (default: {default} of the current folder, else of the slmops "
                          "checkout)."),
        click.option("--azure", is_flag=True, help="Submit to Azure ML (`slmops submit`) instead of running here "
                                                   "(`slmops run`)."),
        click.option("--compute", multiple=True, metavar="[NODE=]NAME",
                     help="With --azure: compute cluster, as for `slmops submit` (repeatable)."),
        click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Without --azure: the run folder, as for `slmops run` (default: runs/<pipeline>-<time>)."),
        click.option("--dry-run", is_flag=True, help="Check the inputs and print them (the --save format); run "
                                                     "nothing."),
        click.option("--save", type=click.Path(dir_okay=False, path_type=Path),
                     help="Write the resolved inputs to this .yaml/.json file (reusable with --inputs)."),
    ]

    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return click.pass_context(fn)

    return decorate


def flag_inputs(flags: dict[str, tuple[str, str | None]]) -> dict[str, tuple[str, str]]:
    """{input: (flag, value)} for the flags given: `flags` maps each flag to (input, value or None)."""
    return {name: (flag, value) for flag, (name, value) in flags.items() if value is not None}


# ---------------------------------------------------------------------------------------------- slmops finetune

@click.command()
@click.option("--model", help="Base model: a folder (Hugging Face or MLflow layout, e.g. from `slmops models pull`), "
                              "an azureml: model, or a hub id ORG/NAME.")
@click.option("--data", help="Training rows: a JSONL/CSV/Parquet file (relative to the current folder) or an azureml: "
                             "data asset. prep splits it into train/validation/test.")
@click.option("--template", help="Prompt template with {column} placeholders (the pipeline input `template`).")
@click.option("--method", help="full, lora, qlora or dora (the pipeline input `method`; checked by the pipeline).")
@click.option("--loss", metavar=LOSS_FORM, help="A custom loss: the Python file (the pipeline input `loss`) and, "
                                                "after a colon, its function (`loss_function`, default loss), e.g. "
                                                "examples/losses/class_weighted.py:loss.")
@click.option("--sweep", is_flag=True, help="Run pipelines/finetune_sweep.yaml: a hyper-parameter sweep of the "
                                            "finetune step whose best trial is evaluated and registered.")
@pipeline_options("pipelines/finetune.yaml, or finetune_sweep.yaml with --sweep,",
                  "--set max_steps=200 --set label_column=label")
def finetune(ctx, model, data, template, method, loss, sweep, set_, inputs_file, pipeline, azure, compute, run_dir,
             dry_run, save):
    """Fine-tune MODEL on DATA with the pipeline (prep -> finetune -> evaluate -> optimize -> register), locally or
    on Azure ML."""
    from slmops.pipeline.overrides import parse_sets

    check_target(azure, compute, run_dir)
    cwd = Path.cwd()
    saved_pipeline, base = read_inputs_file(inputs_file, "finetune") if inputs_file else (None, {})
    pipeline = choose_pipeline(pipeline, None if sweep else saved_pipeline,
                               "finetune_sweep.yaml" if sweep else "finetune.yaml", cwd)
    problems, given = [], {}
    if model is not None:
        try:
            name, value = model_input(model)
        except UserError as exc:
            problems.append(str(exc))
        else:
            given[name] = ("--model", value)
    given.update(flag_inputs({"--data": ("data", data), "--template": ("template", template),
                              "--method": ("method", method)}))
    if loss is not None:
        try:
            given.update({name: ("--loss", value) for name, value in loss_inputs(loss).items()})
        except UserError as exc:
            problems.append(str(exc))
    verb = Verb("finetune", given, exclusive=(("base_model", "base_model_id"),))
    sets, more = collect_sets(verb, parse_sets(set_), base)
    problems += more
    if model is None and not sets.get("base_model") and not sets.get("base_model_id"):
        problems.append("no model: pass --model FOLDER|ORG/NAME (or an --inputs file that names one)")
    if "data" not in sets:
        problems.append("no data: pass --data FILE (JSONL/CSV/Parquet rows, or an azureml: data asset)")
    launch(ctx, verb, pipeline, sets, problems, save=save, dry_run=dry_run, azure=azure, compute=compute,
           run_dir=run_dir)


# ---------------------------------------------------------------------------------------------- slmops optimize

PRECISIONS = ("int4", "int8", "fp32")   # the optimize component's precision enum


def registry_uri(run_dir: Path | None, cwd: Path) -> str:
    """The registry a local run registers into: MLFLOW_TRACKING_URI, else the runner's store beside the run folders
    (`<run dir parent>/.slmops/mlflow.db`, runs/.slmops/mlflow.db by default), as `slmops run` picks it."""
    from slmops.runner.tracking import default_uri

    parent = (cwd / run_dir).resolve().parent if run_dir is not None else cwd / "runs"
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri(parent / ".slmops")


def registered_model(model: str, azure: bool, uri: str | None) -> str:
    """optimize's --model as the pipeline input `model`. A registry reference (models:/NAME@ALIAS,
    models:/NAME/VERSION, NAME:VERSION) becomes, locally, the version's folder (downloaded once into the model cache
    and checked against its recorded sha256) and, with --azure, azureml:NAME:VERSION (an alias is looked up in the
    registry MLFLOW_TRACKING_URI names: the workspace's). Anything else is passed as given."""
    from slmops import registry
    from slmops.serving.cli import CACHE_DIR

    ref = None if Path(model).exists() or model.startswith("azureml:") else registry.parse_ref(model)
    if ref is None:
        return model
    if not azure:
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
            raise UserError(f"--model {model}: no registry at {uri} (nothing registered from here yet). Fix: set "
                            "MLFLOW_TRACKING_URI to the registry that holds it, pass --run-dir beside the runs that "
                            "registered it, or give the model's folder.")
        return str(registry.resolve(model, tracking_uri=uri, cache_dir=CACHE_DIR.expanduser()))
    if ref.version:
        return f"azureml:{ref.name}:{ref.version}"
    if not uri:
        raise UserError(f"--model {model} with --azure: the alias {ref.alias!r} is looked up in the workspace's "
                        "registry. Fix: set MLFLOW_TRACKING_URI to the workspace's tracking URI (`az ml workspace show "
                        f"--query mlflow_tracking_uri`), or pass models:/{ref.name}/VERSION or "
                        f"azureml:{ref.name}:VERSION.")
    return f"azureml:{ref.name}:{registry.get_version(uri, ref).version}"


@click.command()
@click.option("--model", help="The model to optimize: an MLflow model folder (e.g. finetune's model output), a "
                              "registered version (models:/NAME@ALIAS, models:/NAME/VERSION) or an azureml: model.")
@click.option("--data", help="Rows to score (JSONL/CSV/Parquet or an azureml: data asset; default the pipeline's): "
                             "prep holds out a test split as pipelines/finetune.yaml does, so the model's own training "
                             "data is scored on the rows it did not train on.")
@click.option("--test-data", help="A separate test file: all its rows are scored (the pipeline input `test_data`).")
@click.option("--precision", type=click.Choice(PRECISIONS), help="ONNX weight precision (the pipeline input "
                                                                  "`onnx_precision`; default int4).")
@pipeline_options("pipelines/optimize.yaml", "--set execution_provider=cuda --set max_optimized_drop=0.02")
def optimize(ctx, model, data, test_data, precision, set_, inputs_file, pipeline, azure, compute, run_dir, dry_run,
             save):
    """Optimize an existing MODEL for ONNX Runtime GenAI with the pipeline (prep -> optimize -> evaluate ->
    register: the ONNX build re-scored against PyTorch, gated, registered), locally or on Azure ML."""
    from slmops.pipeline.overrides import parse_sets

    check_target(azure, compute, run_dir)
    cwd = Path.cwd()
    saved_pipeline, base = read_inputs_file(inputs_file, "optimize") if inputs_file else (None, {})
    pipeline = choose_pipeline(pipeline, saved_pipeline, "optimize.yaml", cwd)
    problems, given = [], {}
    if model is not None:
        uri = os.environ.get("MLFLOW_TRACKING_URI") if azure else registry_uri(run_dir, cwd)
        try:
            given["model"] = ("--model", registered_model(model, azure, uri))
        except UserError as exc:
            problems.append(str(exc))
    given.update(flag_inputs({"--data": ("data", data), "--test-data": ("test_data", test_data),
                              "--precision": ("onnx_precision", precision)}))
    verb = Verb("optimize", given)
    sets, more = collect_sets(verb, parse_sets(set_), base)
    problems += more
    if "model" not in sets:
        problems.append("no model: pass --model FOLDER|models:/NAME@ALIAS|azureml:NAME:VERSION (or an --inputs file "
                        "that names one)")
    launch(ctx, verb, pipeline, sets, problems, save=save, dry_run=dry_run, azure=azure, compute=compute,
           run_dir=run_dir)
