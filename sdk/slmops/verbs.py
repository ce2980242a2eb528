"""`slmops finetune`: one command from a model and a dataset to a fine-tuned, evaluated, registered model.

    slmops finetune --model ./my-model --data rows.jsonl                        # pipelines/finetune.yaml, locally
    slmops finetune --model HuggingFaceTB/SmolLM2-135M-Instruct --data rows.jsonl --method dora --set max_steps=200
    slmops finetune --model ./my-model --data rows.jsonl --sweep                # pipelines/finetune_sweep.yaml
    slmops finetune --model ORG/NAME --data azureml:my-rows:1 --azure           # submitted to Azure ML
    slmops finetune --model ./my-model --data rows.jsonl --dry-run              # print the resolved inputs only
    slmops finetune --model ./my-model --data rows.jsonl --save job.yaml        # write them (YAML or JSON) ...
    slmops finetune --inputs job.yaml --set max_steps=50                        # ... and start from them later

The command only translates its flags into the pipeline's inputs (`--model` -> base_model for a folder or an
`azureml:` model, base_model_id for a hub id; `--data` -> data; `--template` -> template; `--method` -> method;
`--set NAME=VALUE` -> any other input) and hands them to the same code as `slmops run PIPELINE --set ...` or, with
`--azure`, `slmops submit PIPELINE --set ...`: same checks, same errors, same pipeline. The pipeline is
`pipelines/finetune.yaml` (`finetune_sweep.yaml` with `--sweep`) of the current folder when it has one (a project made
by `slmops init`), else of the slmops checkout; `--pipeline FILE` names another.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from slmops.errors import UserError

# flag -> the pipeline input it sets (--model is special: base_model or base_model_id)
FLAG_INPUTS = {"--data": "data", "--template": "template", "--method": "method"}
INPUTS_FILE_KEYS = {"pipeline", "inputs"}


def default_pipeline(sweep: bool, cwd: Path) -> Path:
    """pipelines/finetune[_sweep].yaml of `cwd`, else of the source checkout slmops is installed from."""
    import slmops

    name = "finetune_sweep.yaml" if sweep else "finetune.yaml"
    for root in (cwd, Path(slmops.__file__).resolve().parents[2]):
        if (root / "pipelines" / name).is_file():
            return root / "pipelines" / name
    raise UserError(f"no pipelines/{name} in the current folder ({cwd}) nor beside the installed slmops package. "
                    "Fix: pass --pipeline FILE, or create a project with `slmops init DIR` and run from it.")


def model_input(model: str) -> tuple[str, str]:
    """(input name, value) for --model: a folder or an azureml: model -> base_model; ORG/NAME -> base_model_id."""
    if model.startswith("azureml:") or Path(model).exists():
        return "base_model", model
    parts = model.split("/")
    if len(parts) == 2 and all(parts) and not model.startswith((".", "~")):
        return "base_model_id", model
    raise UserError(f"--model {model!r} is neither an existing folder nor a hub id ORG/NAME. Fix: give the folder of "
                    "a Hugging Face or MLflow model (e.g. from `slmops models pull`), an azureml: model, or a hub id "
                    "such as HuggingFaceTB/SmolLM2-135M-Instruct.")


def read_inputs_file(path: Path) -> tuple[str | None, dict[str, str]]:
    """(pipeline, {input: text}) from a file `--save` wrote (YAML or JSON: `{pipeline: PATH, inputs: {...}}`)."""
    import yaml

    if not path.is_file():
        raise UserError(f"--inputs {path}: no such file. Fix: give a file written by `slmops finetune --save FILE`.")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML
    except yaml.YAMLError as exc:
        raise UserError(f"--inputs {path}: not YAML or JSON ({str(exc).splitlines()[0]}). Fix: give a file written "
                        "by `slmops finetune --save FILE`.") from None
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


def collect_sets(model: str | None, flags: dict[str, str | None], sets: dict[str, str],
                 base: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The `--set` values to run with: `base` (an inputs file), then --model/--data/..., then --set; and the
    problems: a flag and a --set naming the same input, no model or no data from any of them, a bad --model."""
    chosen = dict(base)
    problems = []
    named = {}
    if model is not None:
        try:
            name, value = model_input(model)
        except UserError as exc:
            problems.append(str(exc))
        else:
            named[name] = ("--model", value)
            chosen.pop("base_model" if name == "base_model_id" else "base_model_id", None)  # one of the two
    for flag, value in flags.items():
        if value is not None:
            named[FLAG_INPUTS[flag]] = (flag, value)
    for name, (flag, value) in named.items():
        if name in sets:
            problems.append(f"{flag} {value!r} and --set {name}={sets[name]!r} both set the input {name}. Fix: give "
                            "one of them.")
        chosen[name] = value
    chosen.update(sets)
    if model is None and not chosen.get("base_model") and not chosen.get("base_model_id"):
        problems.append("no model: pass --model FOLDER|ORG/NAME (or an --inputs file that names one)")
    if "data" not in chosen:
        problems.append("no data: pass --data FILE (JSONL/CSV/Parquet rows, or an azureml: data asset)")
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
    return {name: _plain(typed.get(name, spec)) for name, spec in declared.items()}, problems


def _plain(spec):
    """A declared or overridden input as one value: a data input's path (None when unset), a typed input's default."""
    if isinstance(spec, dict):
        return spec.get("path", spec.get("default"))
    return spec


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


@click.command()
@click.option("--model", help="Base model: a folder (Hugging Face or MLflow layout, e.g. from `slmops models pull`), "
                              "an azureml: model, or a hub id ORG/NAME.")
@click.option("--data", help="Training rows: a JSONL/CSV/Parquet file (relative to the current folder) or an azureml: "
                             "data asset. prep splits it into train/validation/test.")
@click.option("--template", help="Prompt template with {column} placeholders (the pipeline input `template`).")
@click.option("--method", help="full, lora, qlora or dora (the pipeline input `method`; checked by the pipeline).")
@click.option("--set", "set_", multiple=True, metavar="NAME=VALUE",
              help="Any other pipeline input, e.g. --set max_steps=200 --set label_column=label (repeatable).")
@click.option("--inputs", "inputs_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Start from an inputs file written by --save; the other flags override it.")
@click.option("--sweep", is_flag=True, help="Run pipelines/finetune_sweep.yaml: a hyper-parameter sweep of the "
                                            "finetune step whose best trial is evaluated and registered.")
@click.option("--pipeline", type=click.Path(dir_okay=False, path_type=Path),
              help="Pipeline YAML to fill (default: pipelines/finetune.yaml, or finetune_sweep.yaml with --sweep, of "
                   "the current folder, else of the slmops checkout).")
@click.option("--azure", is_flag=True, help="Submit to Azure ML (`slmops submit`) instead of running here "
                                            "(`slmops run`).")
@click.option("--compute", multiple=True, metavar="[NODE=]NAME", help="With --azure: compute cluster, as for "
                                                                      "`slmops submit` (repeatable).")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Without --azure: the run folder, as for `slmops run` (default: runs/<pipeline>-<time>).")
@click.option("--dry-run", is_flag=True, help="Check the inputs and print them (the --save format); run nothing.")
@click.option("--save", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the resolved inputs to this .yaml/.json file (reusable with --inputs).")
@click.pass_context
def finetune(ctx, model, data, template, method, set_, inputs_file, sweep, pipeline, azure, compute, run_dir,
             dry_run, save):
    """Fine-tune MODEL on DATA with the pipeline (prep -> finetune -> evaluate -> optimize -> register), locally or
    on Azure ML."""
    from slmops.pipeline.overrides import parse_sets

    cwd = Path.cwd()
    if compute and not azure:
        raise click.UsageError("--compute applies to --azure only (locally every step runs here)")
    if run_dir is not None and azure:
        raise click.UsageError("--run-dir applies to local runs only (drop --azure or --run-dir)")
    saved_pipeline, base = read_inputs_file(inputs_file) if inputs_file else (None, {})
    if pipeline is None and saved_pipeline and not sweep:
        pipeline = Path(saved_pipeline)
    pipeline = (pipeline or default_pipeline(sweep, cwd)).resolve()
    fmt, problems = save_format(save) if save else ("", [])
    flags = {"--data": data, "--template": template, "--method": method}
    sets, more = collect_sets(model, flags, parse_sets(set_), base)
    inputs, typing = resolved_inputs(pipeline, sets, cwd)
    # a value that came from a flag is named by that flag, not by the --set it became
    given = {FLAG_INPUTS[f]: f for f, v in flags.items() if v is not None}
    given.update({name: "--model" for name in ("base_model", "base_model_id") if model is not None})
    for name, flag in given.items():
        typing = [p.replace(f"--set {name}:", f"{flag}:", 1) if p.startswith(f"--set {name}:") else p
                  for p in typing]
    problems += more + typing
    if problems:
        raise UserError(f"slmops finetune ({pipeline}): {len(problems)} problem(s):", problems=problems)
    if save:
        save.write_text(render(pipeline, inputs, fmt), encoding="utf-8")
        click.echo(f"inputs written to {save} (reuse: slmops finetune --inputs {save})", err=True)
    set_args = tuple(f"{name}={value}" for name, value in sets.items())
    if dry_run:
        from slmops.pipeline.load import load, report

        report(load(pipeline, sets, target="azure" if azure else "local", cwd=cwd, compute=compute), strict=False,
               echo=lambda text: click.echo(text, err=True))
        click.echo(render(pipeline, inputs, "yaml"), nl=False)
        verb = "slmops submit" if azure else "slmops run"
        click.echo(f"# would run: {verb} {pipeline} " + " ".join(f"--set {_quoted(a)}" for a in set_args), err=True)
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
