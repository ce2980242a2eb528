"""Step `register`: check the quality gate, then register the fine-tuned model and its ONNX model in MLflow.

The gate is checked first, from evaluate's metrics.json and optimize's optimize_report.json:
  --min_accuracy          fine-tuned accuracy                              >= min_accuracy
  --min_gain              fine-tuned - base (zero-shot) accuracy            >= min_gain
  --min_gain_over_prompt  fine-tuned - best prompt baseline accuracy        >= min_gain_over_prompt
                          (the better of evaluate's base_zero_shot and base_k_shot variants)
  --max_optimized_drop    accuracy lost in ONNX                             <= max_optimized_drop
and, for a generation task (evaluate's ROUGE-L, BLEU, perplexity):
  --min_rouge_l           fine-tuned ROUGE-L (0-1)                          >= min_rouge_l
  --min_bleu              fine-tuned BLEU (0-100)                           >= min_bleu
  --max_perplexity        fine-tuned perplexity                             <= max_perplexity
  --min_rouge_l_gain      fine-tuned - base (zero-shot) ROUGE-L             >= min_rouge_l_gain
  --min_rouge_l_gain_over_prompt  fine-tuned - best prompt baseline ROUGE-L >= min_rouge_l_gain_over_prompt
A threshold whose metric metrics.json lacks (--min_rouge_l on a classification report, --min_accuracy on a
generation one) is an input error naming both (exit 2).
The evaluate checks read test-split figures only: a metrics.json not scored on prep's test split is an input error
(exit 2); each check's detail names the split and row count. A failed check fails the step (exit 3) naming every
failed check with its numbers; nothing is registered.

When it passes, both folders are logged unchanged as artifacts of the step's MLflow run and registered from
there: the fine-tuned MLflow model as `<model_name>`, the ONNX Runtime GenAI folder as a plain artifact model
`<model_name>-onnx`. Each version gets lineage tags, `gate=passed` (`gate=none` without thresholds), the weight files' sha256, the gate checks (JSON) and `--alias`
(default `candidate`). registration.json is written to --registration. The registry is MLFLOW_TRACKING_URI.

Several adapters on one base (docs/multi_adapter.md): `--adapter` (finetune's adapter output) is registered too, as
its own model `<model_name>-adapter` that names its base (tags `lineage.base_model`, `lineage.base_model_sha256`:
one sha256 over the base folder's weight files, given `--base_model`) with the same lineage, metrics and gate tags;
`--adapter_name NAME` makes the gate and the `optimize.*` tags read that adapter's figures in a multi-adapter
optimize_report.json (`adapters.NAME`) instead of its top level. `--adapters_onnx_model` (a multi-adapter optimize's
onnx_model output: one ORT GenAI base + `adapters/<name>.onnx_adapter`) is registered unchanged as one more version,
`--adapters_model_name` (default `<model_name>-adapters-onnx`), tagged `adapters` (the names) and every adapter's
figures (`optimize.adapters.<name>.*`); `--max_optimized_drop` is then checked for each adapter of
`--optimize_report` (check `max_optimized_drop.<name>`), so one adapter over the bound registers nothing (exit 3).

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db python -m slmops.steps.register \\
        --model out/finetune/model --eval_metrics out/evaluate/metrics --train_data out/prep/output_data \\
        --onnx_model out/optimize/onnx_model --optimize_report out/optimize/report \\
        --model_name slmops-tone --min_accuracy 0.5 --min_gain 0 --min_gain_over_prompt 0 \\
        --max_optimized_drop 0.05 \\
        --registration out/register/registration
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess  # noqa: F401  (tests patch register.subprocess.run; git runs in slmops.registration)
from pathlib import Path

from slmops import adapters as multi
from slmops import contract, progress, registration, registry, tracking, weights
from slmops.contract import Component, Input, Output
from slmops.errors import GateFailed, UserError, run_main
from slmops.io import atomic_dir, write_json

GIT_COMMIT_TAG = registration.GIT_COMMIT_TAG
PROMPT_BASELINES = registration.PROMPT_BASELINES  # evaluate's variants of the base model with a prompt
TEST_SPLIT = registration.TEST_SPLIT  # the only split the gate reads evaluate's figures from


CONTRACT = Component(
    name="register", display_name="slmops: gate and register",
    description="Check the quality gate on test-split figures (minimum accuracy, minimum gain over the base model "
                "and over the best prompt baseline, maximum accuracy drop after optimization; for generation tasks "
                "minimum ROUGE-L/BLEU, maximum perplexity, minimum ROUGE-L gain); when it passes, "
                "register the fine-tuned model (and the ONNX model) in the MLflow registry with lineage tags and the "
                "alias `candidate`. A failed gate fails the step and registers nothing.",
    inputs=[
        Input("model", "mlflow_model", "finetune's model output (MLflow model folder); registered unchanged as "
              "<model_name>."),
        Input("eval_metrics", "uri_folder", "evaluate's metrics output (metrics.json is read by the gate and "
              "recorded as tags)."),
        Input("train_data", "uri_folder", "prep's output_data (the dataset content hash in data_report.json is "
              "recorded)."),
        Input("onnx_model", "uri_folder", "optimize's onnx_model output; registered unchanged as <model_name>-onnx.",
              optional=True),
        Input("optimize_report", "uri_folder", "optimize's report output (optimize_report.json; needed by "
              "max_optimized_drop).", optional=True),
        Input("base_model", "custom_model", "The base model folder (recorded as lineage).", optional=True),
        Input("base_model_id", "string", "The base model hub id (recorded as lineage; wins over base_model).",
              optional=True),
        Input("model_name", "string", "Registered model name (letters, digits, '.', '_' and '-').",
              default="slmops-model"),
        Input("min_accuracy", "number", "Gate: fine-tuned accuracy must be at least this.", optional=True,
              min=0.0, max=1.0),
        Input("min_gain", "number", "Gate: fine-tuned minus base accuracy must be at least this.", optional=True,
              min=-1.0, max=1.0),
        Input("min_gain_over_prompt", "number", "Gate: fine-tuned accuracy minus the best prompt baseline's (the "
              "base model zero-shot or k-shot, from evaluate) must be at least this.", optional=True, min=-1.0,
              max=1.0),
        Input("max_optimized_drop", "number", "Gate: accuracy lost by the ONNX model (optimize_report "
              "accuracy_drop) must be at most this.", optional=True, min=0.0, max=1.0),
        Input("min_rouge_l", "number", "Gate (generation task): fine-tuned ROUGE-L (0-1) must be at least this.",
              optional=True, min=0.0, max=1.0),
        Input("min_bleu", "number", "Gate (generation task): fine-tuned BLEU (0-100, sacrebleu) must be at least "
              "this.", optional=True, min=0.0, max=100.0),
        Input("max_perplexity", "number", "Gate (generation task): fine-tuned perplexity on the test completions "
              "must be at most this.", optional=True, min=1.0),
        Input("min_rouge_l_gain", "number", "Gate (generation task): fine-tuned minus base (zero-shot) ROUGE-L must "
              "be at least this.", optional=True, min=-1.0, max=1.0),
        Input("min_rouge_l_gain_over_prompt", "number", "Gate (generation task): fine-tuned ROUGE-L minus the best "
              "prompt baseline's (base zero-shot or k-shot) must be at least this.", optional=True, min=-1.0,
              max=1.0),
        Input("alias", "string", "Alias set on the new versions (moved there if it exists).", default="candidate"),
        Input("adapter", "uri_folder", "finetune's adapter output (LoRA); also registered, as <model_name>-adapter, "
              "naming its base model (id and weights sha256).", optional=True),
        Input("adapter_name", "string", "This model's adapter in a multi-adapter optimize_report.json: the gate "
              "and the optimize tags read adapters.<adapter_name>.", optional=True),
        Input("adapters_onnx_model", "uri_folder", "A multi-adapter optimize's onnx_model output (ORT GenAI base + "
              "adapters/<name>.onnx_adapter); registered unchanged as adapters_model_name, gated on "
              "max_optimized_drop for every adapter of optimize_report.", optional=True),
        Input("adapters_model_name", "string", "Registered name of adapters_onnx_model (default "
              "<model_name>-adapters-onnx).", optional=True),
        Input("after_registration", "uri_folder", "Another register step's registration output: its gate becomes "
              "a check of this one (and on Azure ML the binding makes this step wait for it), e.g. the shared "
              "adapter set registered only once every task's gate passed.", optional=True),
    ],
    outputs=[Output("registration", "registration.json (names, versions, gate checks, lineage)")],
)


def build_parser() -> argparse.ArgumentParser:
    return contract.parser(CONTRACT, doc=__doc__)


def _read_json(folder: str | None, filename: str, flag: str, problems: list[str]) -> dict | None:
    """Load `<folder>/<filename>`, or add a problem naming the flag and return None."""
    if folder is None:
        return None
    path = Path(folder) / filename
    if not path.is_file():
        problems.append(f"--{flag} {folder!r}: no {filename} in it; pass the folder the producing step wrote")
        return None
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        problems.append(f"--{flag}: {path} is not valid JSON ({exc}); re-run the step that wrote it")
        return None
    if not isinstance(value, dict):
        problems.append(f"--{flag}: {path} holds a JSON {type(value).__name__}, not the object the producing step "
                        "writes; pass that step's output folder")
        return None
    return value


def validate(args: argparse.Namespace, tracking_uri: str | None) -> dict:
    """Check every argument and input file; raise one UserError listing all problems. Returns the loaded
    reports: {"metrics", "data_report", "optimize"} (optimize is None without --optimize_report)."""
    problems = contract.check_values(CONTRACT, args)  # min/max
    if not tracking_uri:
        problems.append("MLFLOW_TRACKING_URI is not set: register needs a model registry; set it, e.g. "
                        "MLFLOW_TRACKING_URI=sqlite:///mlflow.db (the local runner and Azure ML set it)")
    model = Path(args.model)
    if not (model / "MLmodel").is_file():
        problems.append(f"--model {args.model!r} is not an MLflow model folder (no MLmodel file); "
                        f"pass finetune's model output")
    if args.onnx_model is not None:
        onnx = Path(args.onnx_model)
        if not onnx.is_dir() or not any(onnx.rglob("*.onnx")):
            problems.append(f"--onnx_model {args.onnx_model!r} is not a folder with an .onnx file; "
                            f"pass optimize's onnx_model output")
    if not registration.NAME_RE.match(args.model_name):
        problems.append(f"--model_name {args.model_name!r}: use letters, digits, '.', '_' and '-' only")
    if not registration.alias_ok(args.alias):
        problems.append(f"--alias {args.alias!r}: use letters, digits, '_' and '-' only; 'latest' and 'v<N>' "
                        f"are reserved by MLflow")

    if args.adapter is not None and not (Path(args.adapter) / "adapter_config.json").is_file():
        problems.append(f"--adapter {args.adapter!r} has no adapter_config.json; pass finetune's adapter output of "
                        "a LoRA run (a --method full run has none)")
    full_report = None  # the whole optimize_report.json (before --adapter_name narrows it)
    in_set = []  # the adapters of --adapters_onnx_model
    if args.adapters_onnx_model is not None:
        folder = Path(args.adapters_onnx_model)
        in_set = multi.onnx_names(folder) if (folder / "genai_config.json").is_file() else []
        if not in_set:
            problems.append(f"--adapters_onnx_model {args.adapters_onnx_model!r} is not an ORT GenAI folder with "
                            f"adapters/<name>{multi.ONNX_SUFFIX} files; pass the onnx_model output of optimize run "
                            "with --adapter_1 ... (optimize_adapters in pipelines/multi_adapter.yaml)")
        name = args.adapters_model_name or f"{args.model_name}-adapters-onnx"
        if not registration.NAME_RE.match(name):
            problems.append(f"--adapters_model_name {name!r}: use letters, digits, '.', '_' and '-' only")
    elif args.adapters_model_name is not None:
        problems.append(f"--adapters_model_name {args.adapters_model_name!r} names --adapters_onnx_model's version; "
                        "pass --adapters_onnx_model too, or drop --adapters_model_name")
    hashes = {}  # {flag: {weight file: sha256}}: the weights are read whole before anything is registered
    with_base = args.adapter is not None or args.adapters_onnx_model is not None
    flags = ["model", "onnx_model"] + (["adapter"] if args.adapter is not None else [])
    flags += (["adapters_onnx_model"] if args.adapters_onnx_model is not None else [])
    flags += (["base_model"] if with_base else [])
    for flag in flags:
        folder = getattr(args, flag)
        if folder is not None and not any(p.startswith(f"--{flag} ") for p in problems):
            try:
                hashes[flag] = weights.verify_weights(folder)
            except UserError as exc:
                problems.append(f"--{flag}: {exc}")
    metrics = _read_json(args.eval_metrics, "metrics.json", "eval_metrics", problems)
    data_report = _read_json(args.train_data, "data_report.json", "train_data", problems)
    optimize = _read_json(args.optimize_report, "optimize_report.json", "optimize_report", problems)
    full_report = optimize
    if data_report is not None and not isinstance(data_report.get("sha256"), str):
        problems.append(f"--train_data {args.train_data!r}: data_report.json has no sha256 (content hash); "
                        f"re-run prep with this version of slmops")
    if metrics is not None:
        eval_gates = [f"--{n}" for n in ("min_accuracy", "min_gain", "min_gain_over_prompt",
                                         *registration.GENERATION_GATES) if getattr(args, n) is not None]
        split = metrics.get("split")
        if eval_gates and split != TEST_SPLIT:
            scored = "names no split" if split is None else f"was scored on the {split!r} split"
            problems.append(f"{', '.join(eval_gates)}: metrics.json {scored}; the gate reads test-split figures "
                            "only: re-run evaluate with this version of slmops (it scores prep's test.jsonl)")
        if args.min_gain_over_prompt is not None and (registration.number(metrics, "finetuned", "accuracy") is None
                                                      or registration.best_prompt(metrics) is None):
            problems.append("--min_gain_over_prompt needs finetuned.accuracy and a prompt baseline's accuracy "
                            f"(variants.{' or variants.'.join(PROMPT_BASELINES)}) in metrics.json; evaluate a "
                            "classification task with this version of slmops, or drop --min_gain_over_prompt")
        if args.min_accuracy is not None and registration.number(metrics, "finetuned", "accuracy") is None:
            problems.append(f"--min_accuracy needs finetuned.accuracy in metrics.json, which has none "
                            f"(task {metrics.get('task')!r}); drop --min_accuracy or evaluate a classification task")
        if args.min_gain is not None and (registration.number(metrics, "finetuned", "accuracy") is None
                                          or registration.number(metrics, "base", "accuracy") is None):
            problems.append("--min_gain needs base.accuracy and finetuned.accuracy in metrics.json; "
                            "evaluate with a base model on a classification task, or drop --min_gain")
        for gate in registration.GENERATION_GATES:
            missing = registration.missing_metric(metrics, gate) if getattr(args, gate) is not None else None
            if missing:
                problems.append(missing)
    if args.adapter_name is not None:
        if args.optimize_report is None:
            problems.append(f"--adapter_name {args.adapter_name!r} needs --optimize_report (a multi-adapter "
                            "optimize's report output)")
        elif optimize is not None:
            served = sorted(optimize.get("adapters") or {})
            if args.adapter_name not in served:
                problems.append(f"--adapter_name {args.adapter_name!r}: optimize_report.json has "
                                f"{'the adapters ' + str(served) if served else 'no adapters (a single-model build)'}"
                                "; pass one of them, or drop --adapter_name")
            else:  # that adapter's figures, under the report's precision, split and metric
                optimize = {**{k: v for k, v in optimize.items() if k != "adapters"},
                            **optimize["adapters"][args.adapter_name], "adapter": args.adapter_name}
    if in_set:
        reported = sorted((full_report or {}).get("adapters") or {})
        if args.optimize_report is None:
            problems.append("--adapters_onnx_model needs --optimize_report: the report of the optimize run that "
                            "wrote it (its adapters' figures are the version's tags and gate)")
        elif full_report is not None and reported != in_set:
            problems.append(f"--adapters_onnx_model has the adapters {in_set} but optimize_report.json reports "
                            f"{reported or 'none'}; pass the report output of the same optimize run")
        elif full_report is not None and args.max_optimized_drop is not None:
            lacking = [n for n in in_set if registration.number(full_report["adapters"][n], "accuracy_drop") is None]
            if lacking:
                problems.append(f"--max_optimized_drop needs adapters.<name>.accuracy_drop in optimize_report.json "
                                f"for every adapter; {lacking} have none: optimize a classification task, or drop "
                                "--max_optimized_drop")
    if args.max_optimized_drop is not None:
        if args.optimize_report is None:
            problems.append("--max_optimized_drop needs --optimize_report (optimize's report output)")
        elif optimize is not None and registration.number(optimize, "accuracy_drop") is None:
            problems.append("--max_optimized_drop needs accuracy_drop in optimize_report.json, which has none; "
                            "optimize a classification task, or drop --max_optimized_drop")
        elif optimize is not None and optimize.get("split", TEST_SPLIT) != TEST_SPLIT:
            problems.append(f"--max_optimized_drop: optimize_report.json was scored on the {optimize['split']!r} "
                            "split; the gate reads test-split figures only: re-run optimize on prep's test split")
    after = _read_json(args.after_registration, "registration.json", "after_registration", problems)
    if after is not None and not (isinstance(after.get("gate"), dict) and isinstance(after.get("name"), str)):
        problems.append(f"--after_registration {args.after_registration!r}: registration.json has no gate or name; "
                        "pass a register step's registration output")
        after = None
    if problems:
        raise UserError(f"register: {len(problems)} problem(s) with the inputs; nothing was registered",
                        problems=problems)
    return {"metrics": metrics, "data_report": data_report, "optimize": optimize, "weights": hashes,
            "optimize_report": full_report, "adapters": in_set, "after": after}


def after_checks(after: dict | None) -> list[dict]:
    """--after_registration's gate as one check of this step's: `after.<name>` passes when that registration's own
    gate passed (1 = passed), so this step registers nothing when it did not."""
    if after is None:
        return []
    passed = bool(after["gate"].get("passed"))
    what = f"{after['name']} version {after.get('version')}'s gate {'passed' if passed else 'failed'}"
    return [registration.check(f"after.{after['name']}", what, 1.0 if passed else 0.0, ">=", 1.0,
                               "after_registration: registration.json")]


def gate_checks(args: argparse.Namespace, metrics: dict, optimize: dict | None) -> list[dict]:
    """One check per threshold given (inputs were validated, so every number needed is there)."""
    return registration.gate_checks(metrics, optimize, min_accuracy=args.min_accuracy, min_gain=args.min_gain,
                                    min_gain_over_prompt=args.min_gain_over_prompt,
                                    max_optimized_drop=args.max_optimized_drop,
                                    **{gate: getattr(args, gate) for gate in registration.GENERATION_GATES})


def adapter_checks(report: dict, served: list[str], max_optimized_drop: float | None) -> list[dict]:
    """--adapters_onnx_model's gate: `max_optimized_drop.<name>` for every adapter of the multi-adapter
    optimize_report.json `report` (none without a threshold)."""
    if max_optimized_drop is None:
        return []
    checks = []
    for name in served:
        figures = report["adapters"][name]
        torch_acc, onnx_acc = [registration.number(figures, runtime, "accuracy") for runtime in ("pytorch", "onnx")]
        shown = [f"{a:.4f}" if a is not None else "n/a" for a in (torch_acc, onnx_acc)]
        metric = report.get("accuracy_metric") or "accuracy"
        what = (f"adapter {name}: {metric} drop after optimization {figures['accuracy_drop']:.4f} (pytorch "
                f"{shown[0]}, onnx {shown[1]}, {report.get('precision')})")
        scope = f"optimize_report: adapters.{name}, {report.get('split') or 'split not stated'}, n={figures.get('n')}"
        checks.append(registration.check(f"max_optimized_drop.{name}", what, figures["accuracy_drop"], "<=",
                                         max_optimized_drop, scope))
    return checks


def _base_model(args: argparse.Namespace) -> str:
    """Base model for lineage: the hub id, else the folder given, else what the MLflow model records."""
    if args.base_model_id:
        return args.base_model_id
    if args.base_model:
        return str(args.base_model)
    import yaml

    flavor = (yaml.safe_load((Path(args.model) / "MLmodel").read_text()) or {}).get("flavors", {})
    return str(flavor.get("transformers", {}).get("source_model_name") or "unknown")


def weights_digest(hashes: dict[str, str]) -> str:
    """One sha256 for a folder's weights: over its sorted `file sha256` lines (verify_weights' output)."""
    import hashlib

    return hashlib.sha256("".join(f"{f} {h}\n" for f, h in sorted(hashes.items())).encode()).hexdigest()


def lineage(args: argparse.Namespace, reports: dict, commit: str | None, run: dict, train_run: str | None,
            train: dict) -> dict:
    """`run`: registration.run_lineage() of the step's environment; `train`: the parameters finetune logged to its
    run `train_run`."""
    base = {}
    if args.adapter is not None or args.adapters_onnx_model is not None:  # adapters name their base (id, content)
        base_hashes = reports["weights"].get("base_model")
        base["base_model_sha256"] = weights_digest(base_hashes) if base_hashes else None
    return {
        "dataset_sha256": reports["data_report"]["sha256"],
        "base_model": _base_model(args),
        **base,
        "code_version": registration.code_version(commit),
        "git_commit": commit,
        "git_dirty": run["git_dirty"],
        "pipeline_run_id": os.environ.get("AZUREML_ROOT_RUN_ID"),
        "train_run_id": train_run,
        "train": train,
        "components": run["components"],
        "eval": registration.scalars(reports["metrics"]),
        "optimize": registration.scalars(reports["optimize"]),
        "weights_sha256": reports["weights"],
    }


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
    run_env = registration.run_lineage(dict(os.environ))  # the pipeline run's commit, components, input runs
    reports = validate(args, tracking_uri)
    checks = gate_checks(args, reports["metrics"], reports["optimize"]) + adapter_checks(
        reports["optimize_report"], reports["adapters"], args.max_optimized_drop) + after_checks(reports["after"])
    failed = [c for c in checks if not c["passed"]]
    bars = progress.Progress()
    # stages: the gate, each version registered, the aliases
    registered = 1 + sum(bool(x) for x in (args.onnx_model, args.adapter, args.adapters_onnx_model))

    with bars, tracking.step_run() as run:
        stages = bars.stages(registered + 2, "register")
        stages.stage(f"quality gate ({len(checks)} checks)")
        tracking.set_tags({"gate": "failed" if failed else "passed",
                           "gate.checks": registry.tags_json(checks)})
        tracking.log_metrics({f"gate.{c['name']}": c["value"] for c in checks})
        if failed:
            raise GateFailed(f"quality gate failed ({len(failed)} of {len(checks)} checks); nothing registered",
                             problems=[c["detail"] for c in failed])
        if not checks:
            print("register: no gate thresholds given (--min_accuracy/--min_gain/--min_gain_over_prompt/"
                  "--max_optimized_drop, or for generation --min_rouge_l/--min_bleu/--max_perplexity/"
                  "--min_rouge_l_gain/--min_rouge_l_gain_over_prompt); registering without a quality gate")

        commit = run_env["git_commit"] or registration.git_commit(tracking_uri, run.info.run_id)
        train_run = run_env["input_runs"].get("model") or registration.find_train_run(
            tracking_uri, os.environ.get("AZUREML_ROOT_RUN_ID"))
        train = registration.train_params(tracking_uri, train_run, args.model)
        lin = lineage(args, reports, commit, run_env, train_run, train)
        tags = registration.version_tags(lin, checks, run.info.run_id)
        onnx_name = f"{args.model_name}-onnx"
        created: list[tuple[str, str]] = []
        moved: list[tuple[str, str]] = []  # (name, version the alias pointed at before) for aliases moved
        with atomic_dir(args.registration) as out:
            try:
                stages.stage(f"register {args.model_name}")
                mv = registration.register_folder(
                    tracking_uri, run.info.run_id, args.model, "model", args.model_name,
                    {**tags, **registry.weights_tags(reports["weights"]["model"])})
                created.append((args.model_name, str(mv.version)))
                def companion(folder: str, artifact: str, name: str, link: str, version_tags: dict) -> str:
                    """Register a folder that goes with the fine-tuned version (its ONNX build, its adapter, the
                    shared ONNX base + adapters), linked both ways; returns its version."""
                    stages.stage(f"register {name}")
                    cmv = registration.register_folder(
                        tracking_uri, run.info.run_id, folder, artifact, name,
                        {**version_tags, "finetuned_model": f"{args.model_name}/{mv.version}",
                         **registry.weights_tags(reports["weights"][artifact])})
                    created.append((name, str(cmv.version)))
                    registry.client(tracking_uri).set_model_version_tag(
                        args.model_name, str(mv.version), link, f"{name}/{cmv.version}")
                    return str(cmv.version)

                onnx = None
                if args.onnx_model:
                    onnx = {"name": onnx_name,
                            "version": companion(args.onnx_model, "onnx_model", onnx_name, "onnx_model", tags)}
                adapter = None
                if args.adapter:
                    adapter_name = f"{args.model_name}-adapter"
                    adapter = {"name": adapter_name,
                               "version": companion(args.adapter, "adapter", adapter_name, "adapter_model", tags),
                               "base_model": lin["base_model"], "base_model_sha256": lin["base_model_sha256"]}
                adapters_onnx = None
                if args.adapters_onnx_model:  # the shared base + every adapter file, one version
                    set_name = args.adapters_model_name or f"{args.model_name}-adapters-onnx"
                    optimize_tags = {f"optimize.{k}": str(v)
                                     for k, v in registration.scalars(reports["optimize_report"]).items()}
                    set_tags = {k: v for k, v in tags.items() if not k.startswith("optimize.")}
                    version = companion(args.adapters_onnx_model, "adapters_onnx_model", set_name,
                                        "adapters_onnx_model",
                                        {**set_tags, **optimize_tags, "adapters": ",".join(reports["adapters"])})
                    adapters_onnx = {"name": set_name, "version": version, "adapters": reports["adapters"]}
                stages.stage(f"alias @{args.alias} on {len(created)} versions")
                for name, version in created:
                    previous = registry.set_alias(tracking_uri, name, args.alias, version)
                    if previous is not None:
                        moved.append((name, previous))
                result = {"name": args.model_name, "version": str(mv.version), "alias": args.alias, "onnx": onnx,
                          **({"adapter": adapter} if args.adapter else {}),
                          **({"adapters_onnx": adapters_onnx} if args.adapters_onnx_model else {}),
                          "gate": {"passed": True, "checks": checks, "verdict": registry.gate_verdict(checks)},
                          "lineage": {**lin, "step_run_id": run.info.run_id}, "tracking_uri": tracking_uri}
                write_json(out / "registration.json", result)
                stages.close()
            except BaseException:
                # Undo: a half-registered pair must not look like a candidate, and the previous one stays.
                for name, version in created:
                    with contextlib.suppress(Exception):
                        registry.delete_version(tracking_uri, name, version)
                for name, previous in moved:
                    with contextlib.suppress(Exception):
                        registry.set_alias(tracking_uri, name, args.alias, previous)
                raise
        tracking.set_tags({"registered_model": f"{args.model_name}/{mv.version}"})

    onnx_text = f"; ONNX: {onnx['name']} version {onnx['version']}" if onnx else ""
    if args.adapter:
        onnx_text += f"; adapter: {adapter['name']} version {adapter['version']} (base {adapter['base_model']})"
    if args.adapters_onnx_model:
        onnx_text += (f"; base + adapters {adapters_onnx['adapters']}: {adapters_onnx['name']} version "
                      f"{adapters_onnx['version']}")
    print(f"register: {args.model_name} version {mv.version} @{args.alias}{onnx_text}; gate passed "
          f"({len(checks)} checks)")
    return result


if __name__ == "__main__":
    run_main(main)
