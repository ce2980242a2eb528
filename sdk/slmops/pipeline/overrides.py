"""`--set NAME=VALUE`, `--compute` and `--experiment` as azure-ai-ml `params_override` entries: one typing for all.

    sets = parse_sets(["max_steps=200", "data=./rows.jsonl"])
    params, problems = typed_overrides(raw_yaml_inputs, sets, cwd=Path.cwd())
    load_job(path, params_override=params)     # the same typed values for `run`, `validate` and `submit`

A `--set` value is typed by what the pipeline declares for that input:
- a data input (`{type: uri_file|uri_folder|custom_model|mlflow_model|..., path: ...}`): a path relative to the
  current folder (made absolute), or a reference kept as given (`azureml:...`, `https://...`);
- `{type: integer|number|boolean|string, default: ...}`: checked and converted with `slmops.contract.coerce`;
- a bare literal (`max_steps: 200`): a boolean stays boolean (true/false), a number takes the number written on the
  command line (`1e3` -> 1000, `0.5` -> 0.5: the consuming component's input type decides, where it is checked),
  anything else is text.
A name the pipeline does not declare is an error (azure-ai-ml would drop it silently).
"""

from __future__ import annotations

import math
from pathlib import Path

from slmops.contract import coerce
from slmops.errors import UserError

DATA_TYPES = {"uri_file", "uri_folder", "mlflow_model", "custom_model", "mltable", "triton_model"}
PARAM_TYPES = {"integer", "number", "string", "boolean"}
REMOTE_PREFIXES = ("azureml:", "http:", "https:", "wasbs:", "abfss:", "adl:", "hf:")


def parse_sets(pairs) -> dict[str, str]:
    """`--set NAME=VALUE` options -> `{name: value}` (the value may hold `=`); every malformed pair reported at once."""
    values, problems = {}, []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            problems.append(f"--set {pair!r}: expected NAME=VALUE, e.g. --set learning_rate=0.0002")
        else:
            values[name.strip()] = value
    if problems:
        raise UserError("invalid --set option(s):", problems=problems)
    return values


def is_remote(text: str) -> bool:
    return text.startswith(REMOTE_PREFIXES) or "://" in text


def _number(text: str):
    value = float(text)
    if math.isfinite(value) and value.is_integer() and "." not in text.strip():
        return int(value)
    return value


def typed_value(name: str, declared, text: str, cwd: Path, problems: list[str]):
    """The value of `--set name=text` for an input declared as `declared` (raw YAML); problems appended."""
    where = f"--set {name}"
    if isinstance(declared, dict) and declared.get("type") in DATA_TYPES:
        path = text if is_remote(text) else str((Path(cwd) / text).resolve())
        if not is_remote(text) and not Path(path).exists():
            problems.append(f"{where}: {path} does not exist. Fix: give an existing file or folder (relative to the "
                            "current folder), or an azureml: reference.")
        return {**{k: v for k, v in declared.items() if k != "default"}, "path": path}
    if isinstance(declared, dict) and declared.get("type") in PARAM_TYPES:
        return {**declared, "default": coerce(declared, text, where, problems)}
    if isinstance(declared, dict):
        problems.append(f"{where}: the input is declared as {declared!r}, which cannot be overridden from the "
                        "command line. Fix: edit the YAML.")
        return None
    if isinstance(declared, bool):
        return coerce({"type": "boolean"}, text, where, problems)
    if isinstance(declared, (int, float)):
        try:
            return _number(text)
        except ValueError:
            problems.append(f"{where}: {text!r} is not a valid number. Fix: give a number, e.g. --set {name}="
                            f"{declared}.")
            return None
    return text


def typed_overrides(declared: dict, sets: dict[str, str], cwd: Path) -> tuple[list[dict], list[str]]:
    """azure-ai-ml `params_override` entries for `--set` values, typed by the pipeline's declared inputs."""
    params, problems = [], []
    for name, text in sets.items():
        if name not in declared:
            problems.append(f"--set {name}: the pipeline has no input '{name}' (inputs: "
                            f"{', '.join(sorted(declared)) or 'none'}). Fix: set one of the pipeline's inputs.")
            continue
        value = typed_value(name, declared[name], text, cwd, problems)
        if value is not None:
            params.append({f"inputs.{name}": value})
    return params, problems


def compute_overrides(compute, jobs: dict) -> tuple[list[dict], list[str]]:
    """`--compute NAME` (the pipeline's default compute) / `--compute NODE=NAME` (one node's) as overrides."""
    params, problems = [], []
    for item in compute:
        node, sep, name = item.rpartition("=")
        target = name if name.startswith("azureml:") else f"azureml:{name}"
        if not name:
            problems.append(f"--compute {item!r}: expected NAME or NODE=NAME, e.g. --compute finetune=gpu-a100")
        elif not sep:
            params.append({"settings.default_compute": target})
        elif node not in jobs:
            problems.append(f"--compute {item}: the pipeline has no job '{node}' (jobs: {', '.join(sorted(jobs))}). "
                            "Fix: name one of its jobs.")
        else:
            params.append({f"jobs.{node}.compute": target})
    return params, problems
