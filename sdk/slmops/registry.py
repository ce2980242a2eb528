"""The MLflow model registry, as register, serve and promote use it. Every function takes the tracking URI
explicitly (the registry lives at the same URI: a sqlite file offline, the workspace on Azure ML).

References a user may pass for a model:

    ./models/tone            a local folder (returned as is)
    models:/slmops-tone@production    a registered model by alias
    models:/slmops-tone/3             ... by version
    slmops-tone:3                     ... by version, Azure ML style

    from slmops import registry
    folder = registry.resolve("models:/slmops-tone@candidate", tracking_uri=uri, cache_dir=Path("~/.cache/slmops"))
    registry.require_gate_passed(uri, "slmops-tone", "3")      # GateFailed unless tagged gate=passed
    previous = registry.set_alias(uri, "slmops-tone", "production", "3")

What register records and serve/promote check (register calls these):
    registry.gate_verdict(checks)          # "passed", or "none" when no threshold was given (promote refuses it
                                           # unless allow_ungated)
    hashes = weights.verify_weights(folder)   # UserError naming a truncated/damaged file; {file: sha256}
    registry.weights_tags(hashes)          # {"weights.sha256": JSON}; resolve() checks a download against it
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from time import sleep

from slmops import tracking, weights
from slmops.errors import GateFailed, UserError
from slmops.io import atomic_dir

GATE_TAG = "gate"  # "passed" (thresholds given and met) or "none" (no thresholds given); promotion needs "passed"
GATE_PASSED, GATE_NONE = "passed", "none"
GATE_CHECKS_TAG = "gate.checks"  # JSON list of the checks behind it
WEIGHTS_TAG = "weights.sha256"  # JSON {path in the registered folder: sha256} of every weight file
REF_FORMS = "a local model folder, models:/NAME@ALIAS, models:/NAME/VERSION or NAME:VERSION"

_NAME = r"[^/:@\s]+"
_ALIAS = r"[\w\-]+"
_REF_PATTERNS = [
    re.compile(rf"^models:/(?P<name>{_NAME})@(?P<alias>{_ALIAS})$"),
    re.compile(rf"^models:/(?P<name>{_NAME})/(?P<version>\d+)$"),
    re.compile(rf"^(?P<name>{_NAME}):(?P<version>\d+)$"),
]
# The sqlite store gives up on a version number race after 3 tries; sqlite itself reports a held lock.
_BUSY_MESSAGES = ("Giving up after", "database is locked")
# What MLflow answers for an unknown model or version (RESOURCE_...) and an unknown alias (INVALID_...);
# anything else (an unreachable server, bad credentials) is not a naming mistake and propagates as is.
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


@dataclass(frozen=True)
class ModelRef:
    """A registered model version, named by version or by alias (exactly one of them is set)."""

    name: str
    version: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def parse_ref(ref: str) -> ModelRef | None:
    """Parse a registry reference; None when `ref` is not one (then it can only be a local folder)."""
    for pattern in _REF_PATTERNS:
        m = pattern.match(ref.strip())
        if m:
            d = m.groupdict()
            return ModelRef(d["name"], d.get("version"), d.get("alias"))
    return None


def client(tracking_uri: str):
    """An MlflowClient for tracking and registry at `tracking_uri`. A sqlite store is created safely when new, and
    one that cannot be opened is a UserError naming the file and the fix (slmops.tracking.open_store)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    tracking.open_store(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def get_version(tracking_uri: str, ref: ModelRef):
    """The ModelVersion `ref` names. UserError naming what exists when the model, version or alias does not."""
    from mlflow.exceptions import MlflowException

    c = client(tracking_uri)
    try:
        c.get_registered_model(ref.name)
    except MlflowException as exc:
        if exc.error_code not in _NOT_FOUND:
            raise
        names = sorted(m.name for m in c.search_registered_models(max_results=50))
        raise UserError(f"no registered model {ref.name!r} in the registry at {tracking_uri!r} "
                        f"(registered: {names}); register one with the register step or fix the name") from None
    try:
        if ref.alias:
            return c.get_model_version_by_alias(ref.name, ref.alias)
        return c.get_model_version(ref.name, ref.version)
    except MlflowException as exc:
        if exc.error_code not in _NOT_FOUND:
            raise
        versions = list_versions(tracking_uri, ref.name)
        known = [f"{v['version']}{' @' + ','.join(v['aliases']) if v['aliases'] else ''}" for v in versions]
        what = f"alias {ref.alias!r}" if ref.alias else f"version {ref.version!r}"
        raise UserError(f"model {ref.name!r} has no {what} (versions: {known}); "
                        f"pass an existing version or alias") from None


def resolve(ref: str | os.PathLike, *, tracking_uri: str | None, cache_dir: Path) -> Path:
    """Turn a model reference into a local folder; registered versions are downloaded once into `cache_dir`
    (`<cache_dir>/<registry hash>/<name>/<version>`; a version's files never change, so the cache is safe)."""
    from mlflow.artifacts import download_artifacts

    text = str(ref)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"model reference {text!r} is a file; pass {REF_FORMS}")
    parsed = parse_ref(text)
    if parsed is None:
        raise UserError(f"model reference {text!r} is neither an existing folder nor a registry reference; "
                        f"pass {REF_FORMS}")
    if not tracking_uri:
        raise UserError(f"model reference {text!r} needs a model registry: set MLFLOW_TRACKING_URI "
                        f"(e.g. sqlite:///mlflow.db) or pass a local folder")
    mv = get_version(tracking_uri, parsed)
    registry_key = hashlib.sha256(tracking_uri.encode()).hexdigest()[:12]
    dest = Path(cache_dir).expanduser() / registry_key / parsed.name / str(mv.version)
    expected = recorded_hashes(dict(mv.tags))
    if dest.is_dir() and any(dest.iterdir()):
        if expected:
            weights.check_hashes(dest, expected)
        return dest
    # Ask our client where the files are (download_artifacts("models:/...") would consult the global registry URI).
    location = client(tracking_uri).get_model_version_download_uri(parsed.name, str(mv.version))
    with atomic_dir(dest) as tmp:
        got = Path(download_artifacts(artifact_uri=location, dst_path=str(tmp / "download"),
                                      tracking_uri=tracking_uri))
        for child in got.iterdir():  # the download is `<dst>/<source folder name>/...`: keep only the contents
            os.replace(child, tmp / child.name)
        shutil.rmtree(tmp / "download")
        if expected:  # a damaged registered copy never reaches the cache
            weights.check_hashes(tmp, expected)
    return dest


def version_tags(tracking_uri: str, name: str, version: str) -> dict[str, str]:
    """The tags of one version (lineage, metrics, gate status)."""
    return dict(get_version(tracking_uri, ModelRef(name, version=str(version))).tags)


def gate_verdict(checks: list[dict]) -> str:
    """The `gate` tag for a registration with these checks: "passed" when there were checks and all passed, "none"
    when no threshold was given (a failed gate registers nothing, so it never gets here)."""
    if not checks:
        return GATE_NONE
    if not all(c.get("passed") for c in checks):
        raise ValueError("a failed gate registers nothing; gate_verdict() is for registrations only")
    return GATE_PASSED


def require_gate_passed(tracking_uri: str, name: str, version: str, *, allow_ungated: bool = False) -> dict[str, str]:
    """Return the version's tags, or raise GateFailed when it is not tagged gate=passed (gate=none, registered
    without thresholds, is accepted only with `allow_ungated`)."""
    tags = version_tags(tracking_uri, name, version)
    gate = tags.get(GATE_TAG)
    if gate == GATE_NONE and not allow_ungated:
        raise GateFailed(f"model {name!r} version {version} was registered without a quality gate ({GATE_TAG}=none: "
                         f"no --min_accuracy/--min_gain/--max_optimized_drop); register it with thresholds, or "
                         f"pass --allow-ungated to promote it anyway")
    if gate not in (GATE_PASSED, GATE_NONE):
        raise GateFailed(f"model {name!r} version {version} has {GATE_TAG}={gate!r}, not 'passed'; "
                         f"only versions registered by a passing register step can be promoted")
    return tags


def weights_tags(hashes: dict[str, str]) -> dict[str, str]:
    """The version tag recording the sha256 of each weight file (slmops.weights.verify_weights' result)."""
    return {WEIGHTS_TAG: tags_json(hashes)} if hashes else {}


def recorded_hashes(tags: dict[str, str]) -> dict[str, str] | None:
    """{file: sha256} recorded by register on a version, or None (a version registered before hashes were)."""
    raw = tags.get(WEIGHTS_TAG)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise UserError(f"the {WEIGHTS_TAG} tag of this model version is not JSON ({raw[:80]!r}); re-register the "
                        f"model") from None
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None


def set_alias(tracking_uri: str, name: str, alias: str, version: str) -> str | None:
    """Point `alias` at `version` (moving it if it exists). Returns the version it pointed at before, or None."""
    mv = get_version(tracking_uri, ModelRef(name, version=str(version)))
    c = client(tracking_uri)
    previous = dict(c.get_registered_model(name).aliases or {}).get(alias)
    c.set_registered_model_alias(name, alias, str(mv.version))
    return None if previous is None else str(previous)


def list_versions(tracking_uri: str, name: str) -> list[dict]:
    """Every version of `name`, oldest first: version, aliases, tags, source, run id, creation time (ms).
    Empty when no model has that name."""
    from mlflow.exceptions import MlflowException

    c = client(tracking_uri)
    try:
        aliases = dict(c.get_registered_model(name).aliases or {})  # alias -> version; search omits them
    except MlflowException as exc:
        if exc.error_code not in _NOT_FOUND:
            raise
        return []
    found = c.search_model_versions(f"name = '{name}'")
    rows = [{"version": str(mv.version), "aliases": sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
             "tags": dict(mv.tags), "source": mv.source, "run_id": mv.run_id, "created_ms": mv.creation_timestamp}
            for mv in found]
    return sorted(rows, key=lambda r: int(r["version"]))


def ensure_registered_model(tracking_uri: str, name: str) -> None:
    """Create the registered model `name` unless it exists."""
    from mlflow.exceptions import MlflowException

    c = client(tracking_uri)
    try:
        c.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def create_version(tracking_uri: str, name: str, source: str, run_id: str | None, tags: dict[str, str], *,
                   attempts: int = 5, backoff_s: float = 0.5):
    """Create a version of `name` from `source`, retrying with exponential backoff while the registry is busy
    (two steps registering into one sqlite file race for the version number; the store itself gives up after
    3 tries). Raises UserError with the fix after `attempts` tries."""
    from mlflow.exceptions import MlflowException

    c = client(tracking_uri)
    last = None
    for attempt in range(attempts):
        if attempt:
            sleep(backoff_s * 2 ** (attempt - 1))
        try:
            return c.create_model_version(name, source, run_id=run_id, tags=tags)
        except MlflowException as exc:
            if not any(m in str(exc) for m in _BUSY_MESSAGES):
                raise
            last = exc
    raise UserError(
        f"could not register a version of {name!r} at {tracking_uri!r}: the registry stayed busy through "
        f"{attempts} attempts ({last.message}); re-run the step, or for concurrent pipelines use an MLflow "
        f"server or the Azure ML workspace instead of one sqlite file")


def delete_version(tracking_uri: str, name: str, version: str) -> None:
    """Remove a version (register uses it to undo a half-finished registration)."""
    client(tracking_uri).delete_model_version(name, str(version))


def tags_json(obj) -> str:
    """Compact, key-sorted JSON for a tag value."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
