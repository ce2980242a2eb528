"""Register a succeeded hosted fine-tune in our MLflow registry, with the lineage tags and gate of our own models.

    record = from_openai(openai_ft.status(client, "ftjob-abc"), "azure-openai", endpoint)     # or from_foundry(...)
    problems = check_record(record)                                 # not succeeded, no model id, no data hash
    problems += baseline_problems(baseline, thresholds) + gate_problems(variant, baseline, thresholds)
    metrics = gate_metrics(variant, baseline)                       # evaluate's metrics.json shape
    checks = registration.gate_checks(metrics, None, min_accuracy=0.8, min_gain_over_prompt=0.05)
    write_card(folder, record, variant, checks)                     # hosted_model.json + evaluation.json
    version = register(uri, run_id, folder, "tone-hosted", tags, alias="candidate")

The weights stay with the service (a serverless or Azure OpenAI fine-tune cannot be exported), so the registered
version is a small folder describing the hosted model: `hosted_model.json` (service, job id, fine-tuned model id or
model asset id, base model, the training and validation file hashes, where it was scored) and `evaluation.json` (the
held-out variant `slmops maas score` writes, and the gate checks). Its tags are the register step's
(`lineage.*`, `eval.*`, `gate`, `gate.checks`, slmops.registration.version_tags) plus `maas.*` naming the hosted
model. `metrics` for the gate: the deployment scored on the test rows is `finetuned`; the prompt baselines and
`base` come from evaluate's metrics.json on the same test split (`--baseline`), as the register step reads them.
No key or token reaches this module: endpoints are recorded as scheme and host only.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from urllib.parse import urlparse

from slmops import registration, registry
from slmops.errors import UserError
from slmops.io import write_json

CARD = "hosted_model.json"
EVALUATION = "evaluation.json"
ARTIFACT_PATH = "hosted_model"
SUCCEEDED = {"foundry": "Completed", "azure-openai": "succeeded", "openai": "succeeded"}


def public_url(url: str | None) -> str | None:
    """Scheme and host (and port) of a URL: no path, query or user info goes into the registry."""
    if not url:
        return None
    parts = urlparse(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def from_openai(info: dict, service: str, endpoint: str | None) -> dict:
    """The record of an Azure OpenAI/OpenAI job (openai_ft.describe's dict). slmops' submit sends the lineage as
    `metadata` to OpenAI (`slmops_training_file_sha256`, ...); Azure OpenAI keeps none."""
    metadata = info.get("metadata") or {}
    return {"service": service, "service_endpoint": public_url(endpoint), "job_id": info["id"],
            "status": info["status"], "fine_tuned_model": info.get("fine_tuned_model"), "model_asset_id": None,
            "base_model": info.get("model"), "training_file": info.get("training_file"),
            "validation_file": info.get("validation_file"),
            "training_file_sha256": metadata.get("slmops_training_file_sha256"),
            "validation_file_sha256": metadata.get("slmops_validation_file_sha256"),
            "submitted_with": metadata.get("slmops_code_version"), "trained_tokens": info.get("trained_tokens"),
            "hyperparameters": info.get("hyperparameters"), "finished_at": info.get("finished_at")}


def from_foundry(info: dict, model_version: dict | None) -> dict:
    """The record of a Foundry serverless job (foundry.status's dict) and the model version it registered."""
    tags = info.get("tags") or {}
    return {"service": "foundry", "service_endpoint": None, "job_id": info["id"], "status": info["status"],
            "fine_tuned_model": (f"azureml:{model_version['name']}:{model_version['version']}"
                                 if model_version else None),
            "model_asset_id": model_version["id"] if model_version else None,
            "base_model": tags.get("lineage.base_model") or info.get("model"),
            "training_file": info.get("training_data"), "validation_file": info.get("validation_data"),
            "training_file_sha256": tags.get("lineage.training_file_sha256"),
            "validation_file_sha256": tags.get("lineage.validation_file_sha256"),
            "submitted_with": tags.get("lineage.code_version"), "trained_tokens": None, "hyperparameters": None,
            "finished_at": None}


def check_record(record: dict) -> list[str]:
    """Why this job cannot be registered (empty when it can)."""
    job, service = record["job_id"], record["service"]
    if record["status"] != SUCCEEDED[service]:
        return [f"job {job} is {record['status']!r}, not {SUCCEEDED[service]!r}: only a succeeded fine-tune can be "
                f"registered; follow it with `slmops maas status {job}` and register once it has succeeded"]
    problems = []
    if not record["fine_tuned_model"]:
        problems.append(f"job {job} succeeded but names no fine-tuned model"
                        + (" (the model it registered, azureml:<output model>, was not found in the workspace)"
                           if service == "foundry" else "") + "; check the job in the service's portal")
    if not record["training_file_sha256"]:
        where = ("Azure OpenAI keeps no job metadata" if service == "azure-openai"
                 else "the job was not submitted by `slmops maas submit`")
        problems.append(f"job {job} records no hash of its training file ({where}): pass --training-file FILE, the "
                        "exported JSONL it trained on (`slmops maas submit --export-dir DIR` keeps it)")
    return problems


def file_hashes(record: dict, given: dict[str, tuple[str, int]], uploaded_bytes: dict[str, int | None]) -> list[str]:
    """Fill the record's file hashes from files the user gave ({"training": (sha256, bytes)}), checking them
    against what the job recorded (its hash, or the size of the uploaded file). Returns the mismatches."""
    problems = []
    for kind, (sha, size) in given.items():
        recorded = record[f"{kind}_file_sha256"]
        if recorded and recorded != sha:
            problems.append(f"--{kind}-file has sha256 {sha[:16]}..., but job {record['job_id']} trained on "
                            f"{recorded[:16]}...: pass the file the job was submitted with")
        elif uploaded_bytes.get(kind) is not None and uploaded_bytes[kind] != size:
            problems.append(f"--{kind}-file is {size:,} bytes, but the file job {record['job_id']} trained on "
                            f"({record[f'{kind}_file']}) is {uploaded_bytes[kind]:,} bytes: pass the file the job "
                            "was submitted with")
        else:
            record[f"{kind}_file_sha256"] = sha
    return problems


def read_baseline(path: Path) -> dict:
    """evaluate's metrics.json (a file, or evaluate's metrics folder)."""
    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    try:
        value = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--baseline {path}: cannot read evaluate's metrics.json there ({exc}); pass evaluate's "
                        "metrics output folder or its metrics.json") from None
    if not isinstance(value, dict) or "variants" not in value:
        raise UserError(f"--baseline {file}: not evaluate's metrics.json (no 'variants'); pass evaluate's metrics "
                        "output, scored on the same prep output's test split")
    return value


def gate_metrics(variant: dict, baseline: dict | None) -> dict:
    """evaluate's metrics.json shape for the gate: the hosted fine-tune as `finetuned`, the baselines' variants."""
    metrics = {"task": "classification" if "accuracy" in variant else "generation", "split": variant.get("split"),
               "n": variant.get("n"), "finetuned": variant, "variants": {"finetuned": variant}}
    if baseline is not None:
        metrics["base"] = baseline.get("base")
        metrics["variants"].update({name: baseline["variants"][name] for name in registration.PROMPT_BASELINES
                                    if isinstance(baseline["variants"].get(name), dict)})
        metrics["baseline_source"] = baseline.get("source")
    return metrics


def baseline_problems(baseline: dict | None, thresholds: dict) -> list[str]:
    """What the gain thresholds need from evaluate's metrics.json (checked before anything is sent)."""
    problems = []
    needs = [f"--{n.replace('_', '-')}" for n in ("min_gain", "min_gain_over_prompt") if thresholds.get(n) is not None]
    if needs and baseline is None:
        problems.append(f"{', '.join(needs)} compare(s) with the base model: pass --baseline, evaluate's "
                        "metrics.json for the same prep output (its base and prompt-baseline variants)")
    if baseline is None:
        return problems
    if baseline.get("split") != registration.TEST_SPLIT:
        problems.append(f"--baseline: metrics.json was scored on the {baseline.get('split')!r} split; the gate "
                        "reads test-split figures only: re-run evaluate with this version of slmops")
    if thresholds.get("min_gain") is not None and registration.number(baseline, "base", "accuracy") is None:
        problems.append("--min-gain needs base.accuracy in the baseline's metrics.json; evaluate with a base model "
                        "on a classification task, or drop --min-gain")
    if thresholds.get("min_gain_over_prompt") is not None and registration.best_prompt(baseline) is None:
        problems.append("--min-gain-over-prompt needs a prompt baseline's accuracy (variants.base_zero_shot or "
                        "variants.base_k_shot) in the baseline's metrics.json; evaluate a classification task, or "
                        "drop --min-gain-over-prompt")
    return problems


def gate_problems(variant: dict, baseline: dict | None, thresholds: dict) -> list[str]:
    """What the thresholds need from the deployment's scores (checked once it was scored)."""
    problems = []
    given = [f"--{name.replace('_', '-')}" for name, value in thresholds.items() if value is not None]
    if given and registration.number(variant, "accuracy") is None:
        problems.append(f"{', '.join(given)} need(s) the deployment's accuracy, but the test rows carry no labels "
                        "and were scored as generation (rouge_l): score rows with a label column (prep's output "
                        "of a classification task, or --label_column), or drop the thresholds")
    if baseline is not None and baseline.get("n") != variant.get("n"):
        problems.append(f"--baseline: metrics.json has n={baseline.get('n')} test rows, the deployment was scored "
                        f"on {variant.get('n')}: score both on the same prep output's test split")
    return problems


def lineage(record: dict, metrics: dict, *, commit: str | None, dataset_sha256: str | None,
            test_data_sha256: str, pipeline_run_id: str | None) -> dict:
    """The register step's lineage keys, for a model trained by a service."""
    return {"dataset_sha256": dataset_sha256, "base_model": record["base_model"],
            "code_version": registration.code_version(commit), "git_commit": commit,
            "pipeline_run_id": pipeline_run_id, "training_file_sha256": record["training_file_sha256"],
            "validation_file_sha256": record["validation_file_sha256"], "test_data_sha256": test_data_sha256,
            "eval": registration.scalars({k: v for k, v in metrics.items() if k != "baseline_source"}),
            "optimize": {}}


def hosted_tags(record: dict, variant: dict) -> dict[str, str]:
    """`maas.*`: which hosted model this version stands for (no weights are registered)."""
    tags = {"maas.service": record["service"], "maas.job_id": record["job_id"],
            "maas.fine_tuned_model": record["fine_tuned_model"], "maas.model_asset_id": record["model_asset_id"],
            "maas.scored_endpoint": variant.get("endpoint"), "maas.deployment": variant.get("deployment"),
            "maas.weights": "hosted by the service; not downloadable"}
    return {k: str(v) for k, v in tags.items() if v is not None}


def write_card(folder: Path, record: dict, variant: dict, checks: list[dict]) -> Path:
    """The registered folder: hosted_model.json (what the version stands for) and evaluation.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / CARD, {**record, "scored_endpoint": variant.get("endpoint"),
                               "deployment": variant.get("deployment"),
                               "weights": "hosted by the service; this version holds no weights"})
    write_json(folder / EVALUATION, {"variant": variant, "gate": {"checks": checks}})
    return folder


def register(tracking_uri: str, run_id: str, folder: Path, name: str, tags: dict[str, str], alias: str) -> tuple:
    """Register `folder` as a version of `name` and point `alias` at it; undone when the alias cannot be set.
    Returns (version, the version the alias pointed at before or None)."""
    mv = registration.register_folder(tracking_uri, run_id, str(folder), ARTIFACT_PATH, name, tags)
    try:
        previous = registry.set_alias(tracking_uri, name, alias, str(mv.version))
    except BaseException:
        with contextlib.suppress(Exception):
            registry.delete_version(tracking_uri, name, str(mv.version))
        raise
    return str(mv.version), previous
