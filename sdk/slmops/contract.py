"""One typed definition per step: the component YAML, the step's argparse and its single-field checks come from it.

Each step module declares `CONTRACT = Component(...)` next to its code. From that one value:
- `parser(CONTRACT, prog, doc)` is the step's ArgumentParser: one flag per input/output, named alike, typed with
  the same rules as the pipeline validator (`coerce`), help from the description;
- `check_values(CONTRACT, args)` lists every enum/min/max problem of the parsed values (min/max inclusive, as in
  Azure ML); the step's `validate()` starts from it and adds only cross-field and on-disk checks, so every
  problem is still reported at once;
- `render_yaml(CONTRACT)` is the Azure ML command component, checked in as `components/<step>/component.yaml`:

    python -m slmops.contract --check components/    # exit 1 with a diff naming each stale file
    python -m slmops.contract --write components/    # regenerate them

A lower layer: imports nothing from slmops but the package version and `errors`; only `main()` (the command
above) imports the step modules to find their contracts.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from slmops.errors import UserError, run_main

SCHEMA = "https://azuremlschemas.azureedge.net/latest/commandComponent.schema.json"
PARAM_TYPES = {"integer", "number", "string", "boolean"}
PATH_TYPES = {"uri_folder", "uri_file", "custom_model", "mlflow_model"}
STEPS = ("prep", "finetune", "evaluate", "optimize", "register")
WIDTH = 110  # longest line of the rendered YAML (folded text wraps there)


@dataclass
class Input:
    """A component input: the flag `--<name>` of the step, `${{inputs.<name>}}` in the component."""

    name: str
    type: str                                   # integer, number, string, boolean or a PATH_TYPES type
    description: str                            # YAML description and --help text (one line, no double spaces)
    default: str | int | float | bool | None = None   # None: no default (the input is required unless optional)
    optional: bool = False                      # passed inside $[[ ]]; argparse default None
    enum: tuple[str, ...] | list[str] | None = None
    min: int | float | None = None              # inclusive, like Azure ML
    max: int | float | None = None
    group: str | None = None                    # --help section (argparse only)
    quote: str = ""                             # quote around the value in the command line: "" , ' or "

    def spec(self) -> dict:
        """The input as the YAML declares it (key order as rendered)."""
        spec: dict = {"type": self.type}
        if self.optional:
            spec["optional"] = True
        for key in ("default", "enum", "min", "max"):
            value = getattr(self, key)
            if value is not None:
                spec[key] = list(value) if key == "enum" else value
        spec["description"] = self.description
        return spec


@dataclass
class Output:
    """A component output: the required flag `--<name>` of the step, `${{outputs.<name>}}` in the component."""

    name: str
    description: str
    type: str = "uri_folder"


@dataclass
class Component:
    """An Azure ML command component `slmops_<name>` running `python -m slmops.steps.<name>`."""

    name: str                                   # the step: slmops_<name>, components/<name>/component.yaml
    display_name: str
    description: str
    inputs: list[Input] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    environment: str = "azureml:slmops-cpu@latest"
    code: str = "../../sdk"
    is_deterministic: bool = True
    module: str | None = None                   # the command's module; default slmops.steps.<name>

    def __post_init__(self):
        self.module = self.module or f"slmops.steps.{self.name}"
        problems = _definition_problems(self)
        if problems:  # a wrong contract is a bug in the step module, not a user error
            raise ValueError(f"contract of {self.name}:\n" + "\n".join(f"  - {p}" for p in problems))

    def command(self) -> list[str]:
        """The command line, one flag a line; optional inputs inside $[[ ]]."""
        parts = [f"python -m {self.module}"]
        for inp in self.inputs:
            flag = f"--{inp.name} {inp.quote}${{{{inputs.{inp.name}}}}}{inp.quote}"
            parts.append(f"$[[{flag}]]" if inp.optional else flag)
        parts += [f"--{out.name} ${{{{outputs.{out.name}}}}}" for out in self.outputs]
        return parts

    def to_dict(self) -> dict:
        """The component YAML as data (what `render_yaml` writes and yaml.safe_load reads back)."""
        from slmops import __version__

        return {
            "$schema": SCHEMA, "type": "command", "name": f"slmops_{self.name}", "display_name": self.display_name,
            "version": __version__, "description": self.description, "is_deterministic": self.is_deterministic,
            "inputs": {inp.name: inp.spec() for inp in self.inputs},
            "outputs": {out.name: {"type": out.type, "description": out.description} for out in self.outputs},
            "code": self.code, "environment": self.environment, "command": " ".join(self.command()),
        }


def _definition_problems(component: Component) -> list[str]:
    """Everything wrong with a contract definition itself (types, bounds, a default outside its own range)."""
    problems = []
    names = [i.name for i in component.inputs] + [o.name for o in component.outputs]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"flags declared twice: {dupes}")
    texts = [("description", component.description)]
    for inp in component.inputs:
        where = f"inputs.{inp.name}"
        texts.append((where, inp.description))
        if inp.type not in PARAM_TYPES | PATH_TYPES:
            problems.append(f"{where}: type {inp.type!r} is not one of {sorted(PARAM_TYPES | PATH_TYPES)}")
        if inp.optional and inp.default is not None:
            problems.append(f"{where}: optional with a default; an optional input has none")
        if inp.enum is not None and inp.type != "string":
            problems.append(f"{where}: enum on a {inp.type} input; only string inputs take one")
        if (inp.min is not None or inp.max is not None) and inp.type not in ("integer", "number"):
            problems.append(f"{where}: min/max on a {inp.type} input; only integer/number inputs take them")
        if inp.min is not None and inp.max is not None and inp.min > inp.max:
            problems.append(f"{where}: min {inp.min} > max {inp.max}")
        if inp.quote not in ("", "'", '"'):
            problems.append(f"{where}: quote {inp.quote!r} is not '', \"'\" or '\"'")
        if inp.default is not None:
            coerce(inp.spec(), inp.default, f"{where}.default", problems)
    for out in component.outputs:
        texts.append((f"outputs.{out.name}", out.description))
        if out.type not in PATH_TYPES:
            problems.append(f"outputs.{out.name}: type {out.type!r} is not one of {sorted(PATH_TYPES)}")
    for where, text in texts:
        if not text or text != text.strip() or "\n" in text or "  " in text:
            problems.append(f"{where}: the description must be one non-empty line without double spaces")
    return problems


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
                low, high = spec.get("min"), spec.get("max")
                allowed = (f"within [{low}, {high}]" if low is not None and high is not None
                           else f">= {low}" if low is not None else f"<= {high}")
                problems.append(f"{where}: {value!r} is {'below the minimum' if bound == 'min' else 'above the maximum'} "
                                f"{spec[bound]}. Fix: give a value {allowed}.")
    return value


def check_values(component: Component, args: argparse.Namespace) -> list[str]:
    """Every enum/min/max problem of the parsed arguments, in `coerce`'s words with the flag as `where`."""
    problems: list[str] = []
    for inp in component.inputs:
        if inp.enum is not None or inp.min is not None or inp.max is not None:
            coerce(inp.spec(), getattr(args, inp.name), f"--{inp.name}", problems)
    return problems


# ------------------------------------------------------------------------------------------------ argparse

def _converter(kind: str):
    """argparse `type=` for an integer/number/boolean input: `coerce`'s rules and message ("'x' is not a valid
    integer. Fix: ..."); argparse prefixes the flag and exits 2."""
    def convert(text: str):
        problems: list[str] = []
        value = coerce({"type": kind}, text, "value", problems)
        if problems:
            raise argparse.ArgumentTypeError(problems[0].removeprefix("value: "))
        return value

    convert.__name__ = kind
    return convert


def _help(inp: Input) -> str:
    notes = [f"{key} {getattr(inp, key)}" for key in ("min", "max") if getattr(inp, key) is not None]
    if inp.default is not None:
        notes.append(f"default: {inp.default}")
    text = inp.description + (f" ({'; '.join(notes)})" if notes else "")
    return text.replace("%", "%%")


def parser(component: Component, prog: str | None = None, doc: str | None = None) -> argparse.ArgumentParser:
    """The step's ArgumentParser: `--<name>` per input (typed, default, required when it has neither a default
    nor `optional`) and per output (required). Enum values are listed as the metavar; they and min/max are
    checked by `check_values`, so a step reports them together with its other problems."""
    ap = argparse.ArgumentParser(prog=prog or f"python -m {component.module}", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    groups: dict[str, argparse._ArgumentGroup] = {}  # --help sections in order of first use
    for inp in component.inputs:
        group = inp.group or "inputs"
        if group not in groups:
            groups[group] = ap.add_argument_group(group)
        target = groups[group]
        kwargs: dict = {"help": _help(inp), "required": inp.default is None and not inp.optional}
        if inp.type in ("integer", "number", "boolean"):
            kwargs["type"] = _converter(inp.type)
        if inp.enum is not None:
            kwargs["metavar"] = "{" + ",".join(inp.enum) + "}"
        if inp.default is not None:
            kwargs["default"] = inp.default
        target.add_argument(f"--{inp.name}", **kwargs)
    outputs = ap.add_argument_group("outputs")
    for out in component.outputs:
        outputs.add_argument(f"--{out.name}", required=True, help=f"{out.description} ({out.type})".replace("%", "%%"))
    return ap


# ------------------------------------------------------------------------------------------------ YAML

def _scalar(value) -> str:
    """One YAML value on one line, quoted only where YAML needs it (then in double quotes, as JSON writes them:
    easier to read than YAML's single quotes, which double every apostrophe)."""
    import json

    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**6)
    text = text.removesuffix("\n...\n").strip()  # a lone scalar is dumped as a document: drop its end marker
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) and text[:1] in "'\"" else text


def _text(key: str, text: str, indent: int) -> list[str]:
    """`key: text` on one line when it fits, else a folded `>-` block wrapped at WIDTH."""
    pad = " " * indent
    line = f"{pad}{key}: {_scalar(text)}"
    if len(line) <= WIDTH:
        return [line]
    body = textwrap.wrap(text, WIDTH - indent - 2, break_long_words=False, break_on_hyphens=False)
    return [f"{pad}{key}: >-"] + [f"{pad}  {chunk}" for chunk in body]


def render_yaml(component: Component) -> str:
    """The Azure ML CLI v2 command component for `component`: deterministic, folded text, one flag a line."""
    import yaml

    data = component.to_dict()
    lines = [f"# Generated from {component.module}.CONTRACT: edit that, then python -m slmops.contract --write components/"]
    lines += [f"{key}: {_scalar(data[key])}" for key in ("$schema", "type", "name", "display_name", "version")]
    lines += _text("description", data["description"], 0)
    lines += [f"is_deterministic: {_scalar(data['is_deterministic'])}"]
    for section in ("inputs", "outputs"):
        lines.append(f"{section}:")
        for name, spec in data[section].items():
            lines.append(f"  {name}:")
            for key, value in spec.items():
                lines += _text(key, value, 4) if key == "description" else [f"    {key}: {_scalar(value)}"]
    lines += [f"code: {_scalar(data['code'])}", f"environment: {_scalar(data['environment'])}", "command: >-"]
    lines += [f"  {part}" for part in component.command()]
    text = "\n".join(lines) + "\n"
    if yaml.safe_load(text) != data:  # the writer above is hand-made: never let it change a value
        raise ValueError(f"render_yaml({component.name}) does not read back as the contract; fix _scalar/_text")
    return text


# ------------------------------------------------------------------------------------------------ the command

def step_contracts() -> list[Component]:
    """Every step's CONTRACT (imports the step modules, which import only their light dependencies)."""
    return [importlib.import_module(f"slmops.steps.{step}").CONTRACT for step in STEPS]


def stale_files(folder: Path, write: bool) -> list[str]:
    """Compare (or with `write`, rewrite) `<folder>/<step>/component.yaml` with the rendered contracts.
    Returns a unified diff per file that differed (for a missing file: all of it)."""
    diffs = []
    for component in step_contracts():
        path = folder / component.name / "component.yaml"
        rendered = render_yaml(component)
        current = path.read_text() if path.is_file() else ""
        if current == rendered:
            continue
        diffs.append("".join(difflib.unified_diff(current.splitlines(keepends=True),
                                                  rendered.splitlines(keepends=True), fromfile=str(path),
                                                  tofile=f"{component.module}.CONTRACT")))
        if write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(rendered)
    return diffs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m slmops.contract", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", metavar="FOLDER", help="exit 1 with a diff when a component.yaml under FOLDER is "
                                                         "not what the step's CONTRACT renders")
    mode.add_argument("--write", metavar="FOLDER", help="(re)write FOLDER/<step>/component.yaml from each CONTRACT")
    args = ap.parse_args(argv)
    folder = Path(args.check or args.write)
    if not folder.is_dir():
        raise UserError(f"{str(folder)!r} is not a folder; pass the repository's components/ folder")
    diffs = stale_files(folder, write=bool(args.write))
    if args.write:
        print(f"rewrote {len(diffs)} of {len(STEPS)} component files under {folder}")
    elif diffs:
        sys.stdout.write("".join(diffs))
        print(f"\n{len(diffs)} component file(s) under {folder} differ from the steps' CONTRACT. "
              f"Fix: python -m slmops.contract --write {folder} (and edit the CONTRACT, not the YAML)",
              file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    run_main(main)
