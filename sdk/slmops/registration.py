"""The quality gate and the tagged registration, shared by the register step and `slmops maas register`.

    checks = gate_checks(metrics, None, min_accuracy=0.8, min_gain_over_prompt=0.05)   # evaluate's metrics.json shape
    failed = [c for c in checks if not c["passed"]]                       # a failed gate registers nothing
    tags = version_tags(lineage, checks, run_id)     # lineage.*, eval.*, optimize.*, gate, gate.checks
    register_folder(uri, run_id, folder, "model", "slmops-tone", tags)

`metrics` has the shape of evaluate's metrics.json: `split`, `n`, `finetuned.accuracy`, `base.accuracy` and the prompt
baselines `variants.base_zero_shot` / `variants.base_k_shot` (a generation task: `rouge_l`, `bleu`, `perplexity`
in the same places; GENERATION_GATES names its thresholds, missing_metric() says what a threshold lacks). Every
function takes its inputs explicitly; the tracking URI and the run are the caller's.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import slmops
from slmops import registry, tracking

NAME_RE = re.compile(r"^[\w.\-]+$")  # a registered model name
ALIAS_RE = re.compile(r"^[\w\-]+$")
GIT_COMMIT_TAG = "mlflow.source.git.commit"
PROMPT_BASELINES = ("base_zero_shot", "base_k_shot")  # evaluate's variants of the base model with a prompt
TEST_SPLIT = "test"  # the only split the gate reads evaluate's figures from
# Set for each step by the local runner (slmops.pipeline.lineage, the same names) and by `slmops submit`:
ENV_GIT_COMMIT = "SLMOPS_GIT_COMMIT"    # the project's commit when the pipeline run started
ENV_GIT_DIRTY = "SLMOPS_GIT_DIRTY"      # "true"/"false": its working tree had changes
ENV_COMPONENTS = "SLMOPS_COMPONENTS"    # JSON {node: "name:version"}
ENV_INPUT_RUNS = "SLMOPS_INPUT_RUNS"    # JSON {input: MLflow run id of the step that produced it}


def run_lineage(environ: dict) -> dict:
    """What the pipeline run passed in its environment: {"git_commit", "git_dirty" (bool|None), "components",
    "input_runs"} (None / {} for what is not set). A malformed JSON value is a bug of the runner: it raises."""
    import json

    dirty = environ.get(ENV_GIT_DIRTY)
    return {"git_commit": environ.get(ENV_GIT_COMMIT) or None,
            "git_dirty": {"true": True, "false": False}.get(dirty) if dirty else None,
            "components": json.loads(environ.get(ENV_COMPONENTS) or "{}"),
            "input_runs": json.loads(environ.get(ENV_INPUT_RUNS) or "{}")}


TRAIN_PARAMS = {"learning_rate", "method"}  # a run that logged these is a finetune run (its contract's inputs)


def find_train_run(tracking_uri: str, pipeline_run_id: str | None) -> str | None:
    """Without SLMOPS_INPUT_RUNS (Azure ML): the one run directly under the pipeline run `pipeline_run_id` that
    logged finetune's parameters; None when there is none, or several (a pipeline with two finetune jobs) that
    cannot be told apart."""
    if not pipeline_run_id:
        return None
    from mlflow.exceptions import MlflowException

    c = registry.client(tracking_uri)
    try:
        root = c.get_run(pipeline_run_id)
    except MlflowException:
        return None
    runs = c.search_runs([root.info.experiment_id], f"tags.mlflow.parentRunId = '{pipeline_run_id}'")
    found = [r.info.run_id for r in runs if TRAIN_PARAMS <= set(r.data.params)]
    return found[0] if len(found) == 1 else None


# The key of the MLflow model's MLmodel `metadata` under which finetune records the parameters it trained with (the
# ones it logs to its run), so they travel with the model to wherever it is registered.
TRAIN_METADATA = "slmops_train_params"


def train_params(tracking_uri: str, run_id: str | None, model: str | Path | None = None) -> dict:
    """The parameters finetune trained the model with (its full hyper-parameters, as text like MLflow params): those
    it logged to its MLflow run `run_id`, overlaid with those recorded in the MLflow model folder `model`
    (recorded_train_params). The model's own record is what holds when no run can be named: on Azure ML the best
    trial of a sweep is a child of the sweep's run, not of the pipeline run, so find_train_run finds none; locally
    the runner names that trial's run (SLMOPS_INPUT_RUNS), and both agree. {} when neither is there."""
    logged = {}
    if run_id:
        from mlflow.exceptions import MlflowException

        try:
            logged = dict(registry.client(tracking_uri).get_run(run_id).data.params)
        except MlflowException:
            logged = {}
    return {**logged, **(recorded_train_params(model) if model is not None else {})}


def recorded_train_params(model: str | Path) -> dict[str, str]:
    """The parameters recorded in an MLflow model folder's MLmodel (`metadata: {slmops_train_params: {...}}`, as
    `mlflow.<flavor>.save_model(..., metadata=...)` writes it), each as text the way MLflow logs a param; {} for a
    folder without MLmodel or without the record (a model not written by finetune, or by an older slmops)."""
    import yaml

    path = Path(model) / "MLmodel"
    try:
        doc = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return {}
    metadata = doc.get("metadata") if isinstance(doc, dict) else None
    recorded = metadata.get(TRAIN_METADATA) if isinstance(metadata, dict) else None
    return {str(k): str(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}


def alias_ok(alias: str) -> bool:
    """Letters, digits, '_' and '-'; not 'latest' or 'v<N>', which MLflow reserves."""
    return bool(ALIAS_RE.match(alias)) and alias != "latest" and not re.fullmatch(r"[vV]\d+", alias)


def number(obj: dict | None, *keys: str):
    """obj[k1][k2]... when it is a number, else None."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj if isinstance(obj, (int, float)) and not isinstance(obj, bool) else None


def check(name: str, what: str, value: float, op: str, threshold: float, scope: str) -> dict:
    """One gate check; `detail` reads as a sentence, with the comparison that actually holds, and says which rows
    the figures come from (`scope`)."""
    eps = 1e-9  # 0.7 - 0.6 is 0.0999..., which must pass min_gain 0.1
    passed = value >= threshold - eps if op == ">=" else value <= threshold + eps
    shown = op if passed else {">=": "<", "<=": ">"}[op]
    return {"name": name, "value": value, "threshold": threshold, "op": op, "passed": passed,
            "detail": f"{what} {shown} {name} {threshold} ({scope})"}


# Generation-task thresholds: name -> (metric in metrics.json, what is compared, op). "value": the fine-tuned figure;
# "gain": fine-tuned - base (zero-shot); "gain_over_prompt": fine-tuned - the best prompt baseline (for ROUGE-L,
# evaluate's verdict metric of a generation task, higher is better).
GENERATION_GATES = {
    "min_rouge_l": ("rouge_l", "value", ">="),
    "min_bleu": ("bleu", "value", ">="),
    "max_perplexity": ("perplexity", "value", "<="),
    "min_rouge_l_gain": ("rouge_l", "gain", ">="),
    "min_rouge_l_gain_over_prompt": ("rouge_l", "gain_over_prompt", ">="),
}
METRIC_NAMES = {"rouge_l": "ROUGE-L", "bleu": "BLEU", "perplexity": "perplexity"}


def missing_metric(metrics: dict, gate: str) -> str | None:
    """What `metrics` lacks for the generation threshold `gate` (a sentence naming both), or None."""
    metric, kind, _ = GENERATION_GATES[gate]
    need = [f"finetuned.{metric}"] if number(metrics, "finetuned", metric) is None else []
    if kind == "gain" and number(metrics, "base", metric) is None:
        need.append(f"base.{metric}")
    if kind == "gain_over_prompt" and best_prompt(metrics, metric) is None:
        need.append(f"variants.{' or variants.'.join(PROMPT_BASELINES)} with {metric}")
    if not need:
        return None
    return (f"--{gate} needs {' and '.join(need)} in metrics.json, which has none (task {metrics.get('task')!r}: "
            f"{METRIC_NAMES[metric]} is a generation metric); drop --{gate} or evaluate a generation task")


def best_prompt(metrics: dict, metric: str = "accuracy") -> tuple[str, float] | None:
    """(variant, figure) of the best prompt baseline in evaluate's metrics.json on `metric` (higher is better; a tie
    keeps zero-shot)."""
    found = [(name, number(metrics, "variants", name, metric)) for name in PROMPT_BASELINES]
    found = [(name, acc) for name, acc in found if acc is not None]
    return max(found, key=lambda f: f[1]) if found else None


def gate_checks(metrics: dict, optimize: dict | None, *, min_accuracy: float | None = None,
                min_gain: float | None = None, min_gain_over_prompt: float | None = None,
                max_optimized_drop: float | None = None, **generation: float | None) -> list[dict]:
    """One check per threshold given (the caller has checked that every number a threshold needs is there).
    `generation`: GENERATION_GATES thresholds by name (min_rouge_l=0.3, max_perplexity=20, ...)."""
    unknown = sorted(set(generation) - set(GENERATION_GATES))
    if unknown:
        raise TypeError(f"gate_checks: unknown thresholds {unknown}; known: {sorted(GENERATION_GATES)}")
    checks = []
    tuned, base = number(metrics, "finetuned", "accuracy"), number(metrics, "base", "accuracy")
    scope = f"{metrics.get('split')} split, n={metrics.get('n')}"
    if min_accuracy is not None:
        checks.append(check("min_accuracy", f"fine-tuned accuracy {tuned:.4f}", tuned, ">=", min_accuracy, scope))
    if min_gain is not None:
        checks.append(check("min_gain", f"gain over base {tuned - base:+.4f} (fine-tuned {tuned:.4f}, base "
                            f"{base:.4f})", tuned - base, ">=", min_gain, scope))
    if min_gain_over_prompt is not None:
        name, prompt = best_prompt(metrics)
        checks.append(check("min_gain_over_prompt", f"gain over the best prompt baseline {tuned - prompt:+.4f} "
                            f"(fine-tuned {tuned:.4f}, {name} {prompt:.4f})", tuned - prompt, ">=",
                            min_gain_over_prompt, scope))
    if max_optimized_drop is not None:
        drop = number(optimize, "accuracy_drop")
        accs = [number(optimize, runtime, "accuracy") for runtime in ("pytorch", "onnx")]
        torch_acc, onnx_acc = [f"{a:.4f}" if a is not None else "n/a" for a in accs]
        metric = optimize.get("accuracy_metric") or "accuracy"  # optimize scores generation with rouge_l
        what = (f"{metric} drop after optimization {drop:.4f} (pytorch {torch_acc}, onnx {onnx_acc}, "
                f"{optimize.get('precision')})")
        scope = f"optimize_report: {optimize.get('split') or 'split not stated'}, n={optimize.get('n')}"
        checks.append(check("max_optimized_drop", what, drop, "<=", max_optimized_drop, scope))
    scope = f"{metrics.get('split')} split, n={metrics.get('n')}"
    for gate, (metric, kind, op) in GENERATION_GATES.items():
        if generation.get(gate) is None:
            continue
        label, tuned = METRIC_NAMES[metric], number(metrics, "finetuned", metric)
        if kind == "value":
            what, value = f"fine-tuned {label} {tuned:.4f}", tuned
        elif kind == "gain":
            base = number(metrics, "base", metric)
            what, value = f"{label} gain over base {tuned - base:+.4f} (fine-tuned {tuned:.4f}, base {base:.4f})", \
                tuned - base
        else:
            name, prompt = best_prompt(metrics, metric)
            what, value = (f"{label} gain over the best prompt baseline {tuned - prompt:+.4f} (fine-tuned "
                           f"{tuned:.4f}, {name} {prompt:.4f})"), tuned - prompt
        checks.append(check(gate, what, value, op, generation[gate], scope))
    return checks


def git_commit(tracking_uri: str, run_id: str) -> str | None:
    """The commit of the code that ran: from git when slmops runs from a checkout; else from the
    `mlflow.source.git.commit` tag on the run or its pipeline run (Azure ML sets it for jobs submitted
    from a git checkout; a code snapshot has no .git of its own)."""
    try:
        out = subprocess.run(["git", "-C", str(Path(slmops.__file__).parent), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    c = registry.client(tracking_uri)
    tags = c.get_run(run_id).data.tags
    parent = tags.get("mlflow.parentRunId")
    return tags.get(GIT_COMMIT_TAG) or (c.get_run(parent).data.tags.get(GIT_COMMIT_TAG) if parent else None)


def code_version(commit: str | None) -> str:
    return f"{slmops.__version__}+g{commit[:12]}" if commit else slmops.__version__


def scalars(obj: dict | None, prefix: str = "") -> dict:
    """The scalar leaves of a report under dotted keys: {"finetuned.accuracy": 0.9, "task": ...}; lists (the
    confusion matrix, labels) stay in the report."""
    out: dict = {}
    for key, value in (obj or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, f"{name}."))
        elif isinstance(value, (str, int, float, bool)):
            out[name] = value
    return out


def version_tags(lin: dict, checks: list[dict], step_run_id: str) -> dict[str, str]:
    """The tags every registered version carries: lineage, metrics, and the gate verdict. `lin` holds the lineage
    scalars and `eval` / `optimize`: the reports' scalars (scalars()); optionally `train` (finetune's parameters,
    tagged train.<name>) and `components` ({node: "name:version"}, tagged lineage.component.<node>)."""
    tags = {f"lineage.{k}": str(v) for k, v in lin.items() if v is not None and not isinstance(v, dict)}
    tags["lineage.step_run_id"] = step_run_id
    tags.update({f"eval.{k}": str(v) for k, v in lin["eval"].items()})
    tags.update({f"optimize.{k}": str(v) for k, v in lin["optimize"].items()})
    tags.update({f"train.{k}": str(v) for k, v in (lin.get("train") or {}).items()})
    tags.update({f"lineage.component.{node}": ref for node, ref in (lin.get("components") or {}).items()})
    tags[registry.GATE_TAG] = registry.gate_verdict(checks)     # "passed", or "none" without thresholds
    tags[registry.GATE_CHECKS_TAG] = registry.tags_json(checks)
    return tags


def register_folder(tracking_uri: str, run_id: str, folder: str, artifact_path: str, name: str,
                    tags: dict[str, str]):
    """Log `folder` unchanged as run artifacts at `artifact_path`, then register that location as a version."""
    tracking.log_artifacts(folder, artifact_path)
    run_root = registry.client(tracking_uri).get_run(run_id).info.artifact_uri.rstrip("/")
    registry.ensure_registered_model(tracking_uri, name)
    return registry.create_version(tracking_uri, name, f"{run_root}/{artifact_path}", run_id, tags)
