"""Contract tests over the pipeline's components: one table row per step, the same checks for each.

1. the component YAML is exactly what the step's `CONTRACT` renders (`python -m slmops.contract --write
   components/`), loads with azure-ai-ml and passes its offline `_validate()`;
2. every enum value and min/max bound of every contract: a value on the bound is accepted and the value just
   beyond it is rejected, alike by the step (exit 2, naming flag and value) and by `coerce` (the pipeline
   validator's check) on the YAML as azure-ai-ml loads it;
3. the YAML's command passes every input/output by a flag of the same name (optional ones inside $[[ ]]),
   `python -m slmops.steps.<step> --help` exits 0 and lists those flags, and the step's argparse defaults,
   types and required flags agree with the YAML;
4. bad input (required arguments missing, input paths that do not exist) exits 2 naming the problem and
   writes no output folder;
5. run for real on the tiny model (prep -> finetune -> evaluate -> optimize -> register, each once), every
   step writes every declared output with the files docs/architecture.md promises.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slmops import contract
from slmops.errors import run_main

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["prep", "finetune", "evaluate", "optimize", "register"]

# Files each declared output must hold (docs/architecture.md); None: the folder may be empty.
OUTPUT_FILES = {
    "prep": {"output_data": ["train.jsonl", "validation.jsonl", "data_report.json"]},
    "finetune": {"adapter": ["adapter_config.json"], "model": ["MLmodel"],  # the fixture trains LoRA
                 "metrics": ["train_history.json", "train_summary.json"], "checkpoints": None},
    "evaluate": {"metrics": ["metrics.json", "report.md"]},
    "optimize": {"onnx_model": ["genai_config.json"], "report": ["optimize_report.json"]},
    "register": {"registration": ["registration.json"]},
}
# Keys the JSON reports must carry (docs/architecture.md).
REPORT_KEYS = {
    ("prep", "output_data", "data_report.json"): {"rows", "token_lengths", "truncated", "labels", "sha256",
                                                  "tokenizer"},
    ("evaluate", "metrics", "metrics.json"): {"task", "n", "base", "finetuned", "delta", "overfitting"},
    ("optimize", "report", "optimize_report.json"): {"precision", "execution_provider", "onnx", "pytorch",
                                                     "speedup", "accuracy_drop"},
    ("register", "registration", "registration.json"): {"name", "version", "alias", "onnx", "gate", "lineage"},
}
_PATH_TYPES = {"uri_folder", "uri_file", "mlflow_model", "custom_model"}
# azure-ai-ml's schemas use marshmallow options deprecated in marshmallow 4: noise, not our problem.
pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.RemovedInMarshmallow4Warning")


def spec(step: str) -> dict:
    return yaml.safe_load((ROOT / "components" / step / "component.yaml").read_text())


class _Captured(Exception):
    def __init__(self, parser):
        super().__init__("parser captured")
        self.parser = parser


def step_parser(step: str, monkeypatch) -> argparse.ArgumentParser:
    """The step's own ArgumentParser, taken from its main() at the moment it parses (nothing else runs)."""
    module = importlib.import_module(f"slmops.steps.{step}")

    def capture(self, args=None, namespace=None):
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Captured) as exc:
        module.main([])
    return exc.value.parser


def step_contract(step: str) -> contract.Component:
    return importlib.import_module(f"slmops.steps.{step}").CONTRACT


@functools.cache
def azure_inputs(step: str) -> dict[str, dict]:
    """The component's inputs as azure-ai-ml loads them (defaults and bounds as text), as the pipeline loader
    sees them."""
    from azure.ai.ml import load_component

    return load_component(source=ROOT / "components" / step / "component.yaml")._to_dict()["inputs"]


# ---- 1. the YAML is rendered from the contract, loads and validates with azure-ai-ml ------------------------

@pytest.mark.parametrize("step", STEPS)
def test_component_yaml_is_rendered_from_the_step_contract(step):
    rendered = contract.render_yaml(step_contract(step))
    on_disk = (ROOT / "components" / step / "component.yaml").read_text()
    assert on_disk == rendered, (f"components/{step}/component.yaml is stale or edited by hand; edit "
                                 f"slmops.steps.{step}.CONTRACT and run: python -m slmops.contract --write components/")


@pytest.mark.parametrize("step", STEPS)
def test_component_loads_and_validates_with_azure_ai_ml(step):
    from azure.ai.ml import load_component

    component = load_component(source=ROOT / "components" / step / "component.yaml")
    result = component._validate()
    assert result.passed, result.error_messages
    assert component.name == f"slmops_{step}"
    assert component.command.startswith(f"python -m slmops.steps.{step} ")
    assert (ROOT / "components" / step / component.code).resolve() == ROOT / "sdk"
    assert set(component.inputs) == set(spec(step)["inputs"])
    assert set(component.outputs) == set(spec(step)["outputs"])


# ---- 2. bounds and enums: the step and the pipeline validator accept and reject alike -------------------------

def _bound_cases() -> list[tuple[str, str, object, bool]]:
    """(step, input, value, accepted): every enum value, every min/max on the bound, and just beyond each."""
    cases = []
    for step in STEPS:
        for inp in step_contract(step).inputs:
            if inp.enum is not None:
                cases += [(step, inp.name, value, True) for value in inp.enum]
                cases.append((step, inp.name, inp.enum[0].upper(), False))  # enum values are case-sensitive
            for bound, beyond in (("min", -math.inf), ("max", math.inf)):
                value = getattr(inp, bound)
                if value is None:
                    continue
                if inp.type == "integer":
                    outside = value + (1 if beyond > 0 else -1)
                else:  # the next float past the bound: bounds are inclusive, exactly
                    value, outside = float(value), math.nextafter(float(value), beyond)
                cases += [(step, inp.name, value, True), (step, inp.name, outside, False)]
    return cases


BOUND_CASES = _bound_cases()


def _required_argv(step: str, root: Path) -> list[str]:
    """Every required flag, with paths that do not exist (the step fails, but only after its argument checks)."""
    c = step_contract(step)
    required = [i.name for i in c.inputs if i.default is None and not i.optional] + [o.name for o in c.outputs]
    return [arg for name in required for arg in (f"--{name}", str(root / "out" / name))]


@pytest.mark.parametrize("step,name,value,accepted", BOUND_CASES,
                         ids=[f"{s}.{n}={v!r}-{'ok' if a else 'rejected'}" for s, n, v, a in BOUND_CASES])
def test_bounds_and_enums_are_enforced_alike_by_the_step_and_the_pipeline_validator(step, name, value, accepted,
                                                                                     tmp_path, capsys, monkeypatch):
    module = importlib.import_module(f"slmops.steps.{step}")
    argv = _required_argv(step, tmp_path) + [f"--{name}={value}"]  # '=': argparse takes -5e-324 for a flag
    by_step = contract.check_values(module.CONTRACT, module.build_parser().parse_args(argv))
    by_pipeline: list[str] = []
    assert contract.coerce(azure_inputs(step)[name], str(value), f"--{name}", by_pipeline) == value
    if accepted:
        assert by_step == [] and by_pipeline == []
        return
    assert len(by_step) == 1 and by_step[0].startswith(f"--{name}: {value!r} is "), by_step
    assert by_pipeline == by_step  # the same words from the YAML as azure-ai-ml loads it
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SystemExit) as exc:
        run_main(module.main, argv)
    assert exc.value.code == 2
    assert by_step[0] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---- 3. command line, --help and argparse agree with the YAML ------------------------------------------------

@pytest.mark.parametrize("step", STEPS)
def test_command_passes_every_input_and_output_by_its_own_flag(step):
    s = spec(step)
    command = s["command"]
    optional_blocks = re.findall(r"\$\[\[(.*?)\]\]", command)
    referenced = set(re.findall(r"\$\{\{((?:inputs|outputs)\.\w+)\}\}", command))
    declared = {f"inputs.{n}" for n in s["inputs"]} | {f"outputs.{n}" for n in s["outputs"]}
    assert referenced == declared, f"command references {referenced ^ declared} wrongly"
    problems = []
    for kind in ("inputs", "outputs"):
        for name, decl in s[kind].items():
            flag = rf"--{name} ['\"]?\$\{{\{{{kind}\.{name}\}}\}}['\"]?"
            if len(re.findall(flag, command)) != 1:
                problems.append(f"{kind}.{name}: not passed exactly once as --{name}")
            inside = any(re.fullmatch(rf"\s*{flag}\s*", block) for block in optional_blocks)
            if inside != bool(decl.get("optional")):
                problems.append(f"{kind}.{name}: optional={bool(decl.get('optional'))} but inside $[[ ]]={inside}")
    assert not problems, problems


@pytest.mark.parametrize("step", STEPS)
def test_help_exits_0_and_lists_every_input_and_output(step):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", f"slmops.steps.{step}", "--help"], capture_output=True,
                          text=True, timeout=180, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    s = spec(step)
    missing = (set(s["inputs"]) | set(s["outputs"])) - set(re.findall(r"--(\w+)", proc.stdout))
    assert not missing, f"--help lists no flag for {sorted(missing)}"


def _same(yaml_value, parsed) -> bool:
    if isinstance(yaml_value, bool) or isinstance(parsed, bool):
        return yaml_value is parsed
    return yaml_value == parsed


@pytest.mark.parametrize("step", STEPS)
def test_argparse_defaults_types_and_required_flags_match_the_yaml(step, monkeypatch):
    """Run outside a pipeline (`python -m slmops.steps.x`), a step must behave as the component does."""
    parser = step_parser(step, monkeypatch)
    actions = {a.dest: a for a in parser._actions}
    s = spec(step)
    problems = []
    for name, decl in s["inputs"].items():
        action = actions[name]
        convert = action.type or str
        required = not decl.get("optional") and "default" not in decl
        if action.required != required:
            problems.append(f"--{name}: argparse required={action.required}, YAML says {required}")
        if "default" in decl:
            # Azure ML and the local runner render the YAML default as text; the step must read it back.
            text = str(decl["default"])
            if not _same(decl["default"], convert(text)) or not _same(decl["default"], action.default):
                problems.append(f"--{name}: YAML default {decl['default']!r}, argparse default "
                                f"{action.default!r} (parses {text!r} as {convert(text)!r})")
        if decl["type"] == "boolean":
            if not (convert("True") is True and convert("false") is False):
                problems.append(f"--{name}: boolean input must accept True/False text")
        if decl.get("optional") and action.default is not None:
            problems.append(f"--{name}: optional input (flag omitted) must default to None, not {action.default!r}")
    for name in s["outputs"]:
        if not actions[name].required:
            problems.append(f"--{name}: outputs must be required flags")
    assert not problems, problems


# ---- 4. bad input exits 2 and writes nothing ------------------------------------------------------------------

def _outputs(step, root: Path) -> dict[str, Path]:
    return {name: root / "out" / name for name in spec(step)["outputs"]}


def _missing_inputs(step, root: Path) -> dict[str, Path]:
    """A nonexistent path for every required path input (prep has none required: its data file)."""
    s = spec(step)
    names = [n for n, d in s["inputs"].items() if d["type"] in _PATH_TYPES and not d.get("optional")]
    return {name: root / "nowhere" / name for name in (names or ["data"])}


@pytest.mark.parametrize("case", ["required_missing", "paths_missing"])
@pytest.mark.parametrize("step", STEPS)
def test_bad_input_exits_2_with_a_clear_message_and_writes_nothing(step, case, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    outputs = _outputs(step, tmp_path)
    argv = [arg for name, path in outputs.items() for arg in (f"--{name}", str(path))]
    missing = _missing_inputs(step, tmp_path)
    if case == "paths_missing":
        argv += [arg for name, path in missing.items() for arg in (f"--{name}", str(path))]
        if step in ("prep", "finetune"):
            argv += ["--base_model_id", "org/model"]  # the data must be rejected before any model is looked up
    module = importlib.import_module(f"slmops.steps.{step}")
    with pytest.raises(SystemExit) as exc:
        run_main(module.main, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    if case == "required_missing":
        required = [n for n, d in spec(step)["inputs"].items() if not d.get("optional") and "default" not in d]
        assert all(f"--{n}" in err for n in required) and (required or "data" in err), err
    else:
        assert all(str(path) in err for path in missing.values()), err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---- 5. every step writes every declared output ---------------------------------------------------------------

@pytest.fixture(scope="module")
def chain(tmp_path_factory, prepared_data, finetuned, tiny_model):
    """Each step's outputs on the tiny model: prep and finetune from the shared session fixtures, then
    evaluate, optimize and register run once here (small sample counts; register into a temp sqlite store)."""
    from slmops import registry
    from slmops.steps import evaluate, optimize, register

    root = tmp_path_factory.mktemp("contracts")
    outs = {"prep": {"output_data": prepared_data}, "finetune": finetuned,
            **{step: {name: root / step / name for name in spec(step)["outputs"]}
               for step in ("evaluate", "optimize", "register")}}
    with pytest.MonkeyPatch.context() as mp:
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
            mp.delenv(var, raising=False)
        evaluate.main(["--test_data", str(prepared_data), "--model", str(finetuned["model"]),
                       "--base_model", str(tiny_model), "--train_metrics", str(finetuned["metrics"]),
                       "--max_samples", "20", "--metrics", str(outs["evaluate"]["metrics"])])
        optimize.main(["--model", str(finetuned["model"]), "--test_data", str(prepared_data),
                       "--precision", "int4", "--max_samples", "20", "--speed_prompts", "2", "--speed_tokens", "8",
                       "--onnx_model", str(outs["optimize"]["onnx_model"]),
                       "--report", str(outs["optimize"]["report"])])
        uri = f"sqlite:///{root}/mlflow.db"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_EXPERIMENT_ID",
                  registry.client(uri).create_experiment("contracts", artifact_location=str(root / "mlruns")))
        register.main(["--model", str(finetuned["model"]), "--eval_metrics", str(outs["evaluate"]["metrics"]),
                       "--train_data", str(prepared_data), "--onnx_model", str(outs["optimize"]["onnx_model"]),
                       "--optimize_report", str(outs["optimize"]["report"]), "--base_model", str(tiny_model),
                       "--model_name", "contract-tone", "--min_accuracy", "0.5", "--min_gain", "0.2",
                       "--max_optimized_drop", "0.2", "--registration", str(outs["register"]["registration"])])
    return outs


@pytest.mark.slow
@pytest.mark.parametrize("step", STEPS)
def test_step_writes_every_declared_output(step, chain):
    declared = set(spec(step)["outputs"])
    assert declared == set(OUTPUT_FILES[step]), "update OUTPUT_FILES with the component's outputs"
    for name, files in OUTPUT_FILES[step].items():
        folder = Path(chain[step][name])
        assert folder.is_dir(), f"{step}.{name} not written"
        assert not list(folder.parent.glob(f".tmp-{folder.name}-*")), "a temporary output folder was left"
        for filename in files or []:
            assert (folder / filename).is_file(), f"{step}.{name} has no {filename}"
            expected = REPORT_KEYS.get((step, name, filename), set())
            missing = expected - set(json.loads((folder / filename).read_text())) if expected else set()
            assert not missing, f"{step}.{name}/{filename} lacks {missing}"


@pytest.mark.slow
def test_register_gates_and_registers_the_real_chain(chain):
    """On real evaluate/optimize reports the gate's three checks pass and both models carry the alias."""
    from slmops import registry

    reg = json.loads((chain["register"]["registration"] / "registration.json").read_text())
    data_report = json.loads((chain["prep"]["output_data"] / "data_report.json").read_text())
    assert [(c["name"], c["passed"]) for c in reg["gate"]["checks"]] == \
        [("min_accuracy", True), ("min_gain", True), ("max_optimized_drop", True)]
    assert reg["lineage"]["dataset_sha256"] == data_report["sha256"]
    for name, version in ((reg["name"], reg["version"]), (reg["onnx"]["name"], reg["onnx"]["version"])):
        mv = registry.get_version(reg["tracking_uri"], registry.ModelRef(name, alias="candidate"))
        assert str(mv.version) == version and mv.tags["gate"] == "passed"


def test_atomic_outputs_whose_names_share_a_prefix_land_together(tmp_path):
    """Steps open several outputs at once (finetune: adapter, model, metrics); clearing the stale temp folders
    of `model` must not delete the live one of a sibling output named `model-adapter`."""
    from slmops.io import atomic_dir

    (tmp_path / ".tmp-model-stale_01").mkdir()  # left by a crashed attempt: removed
    with atomic_dir(tmp_path / "model-adapter") as adapter, atomic_dir(tmp_path / "model") as model:
        (adapter / "adapter_config.json").write_text("{}")
        (model / "MLmodel").write_text("flavors: {}\n")
    assert (tmp_path / "model-adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "model" / "MLmodel").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model-adapter"]


def test_step_logging_ends_with_its_run(tmp_path, monkeypatch):
    """A step run inside a caller's MLflow run logs there; once the block ends, `log_*` are no-ops again and
    never start a run of their own."""
    import mlflow

    from slmops import tracking

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    with mlflow.start_run() as outer:
        with tracking.step_run() as run:
            assert run.info.run_id == outer.info.run_id
            tracking.log_metrics({"inside": 1.0})
    tracking.log_metrics({"after": 1.0})
    started = mlflow.active_run()
    if started is not None:
        mlflow.end_run()
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert started is None and [r.data.metrics for r in runs] == [{"inside": 1.0}]
