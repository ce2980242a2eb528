"""Kaito manifests: a tuning `Workspace` (preset model, LoRA/QLoRA, input data, output image or volume) and an
inference `Workspace` serving the preset with the resulting adapter, from the same inputs as our pipeline.

    spec = Spec(name="tone", preset="phi-3.5-mini-instruct", method="lora", input_urls=["https://.../train.jsonl"],
                output_image="myacr.azurecr.io/tone-adapter:1", output_secret="acr-push")
    docs = manifests(spec)                 # [ConfigMap (training_config.yaml), tuning Workspace, inference Workspace]
    problems, notes = validate(docs)       # Kaito's CRD schema (kaito_workspace_crd.json) + its webhook's rules
    print(render(docs))

The CRD schema is copied as data into kaito_workspace_crd.json (source repository, path and commit recorded there):
workspaces.kaito.sh `v1beta1`. Validation uses `jsonschema` when it is installed (otherwise the notes say it was
skipped) and is stricter than the API server in one way: a field the CRD does not declare is reported, where the API
server would silently drop it. Rules Kaito enforces in its admission webhook rather than the schema are checked too:
method lora or qlora, exactly one input source, an output image (with its push secret) or volume, DNS-1123 names.

Training data: Kaito's tuning reads the chat `messages` format, i.e. what `slmops maas export` writes; put the file
where the cluster can read it (a URL, the `data/` folder of an image, or a volume).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from slmops.errors import UserError

HERE = Path(__file__).parent
CRD = HERE / "kaito_workspace_crd.json"
PRESETS = HERE / "kaito_presets.json"
API_VERSION = "kaito.sh/v1beta1"
METHODS = ("lora", "qlora")
DEFAULT_INSTANCE = "Standard_NC24ads_A100_v4"  # the CRD's default in v1alpha1
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# finetune's defaults (slmops.steps.finetune CONTRACT; tests/maas check they agree) for the inputs Kaito takes.
FINETUNE_DEFAULTS = {"method": "lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "learning_rate": 2e-4,
                     "num_epochs": 1, "max_steps": -1, "batch_size": 8}
PIPELINE_INPUTS = ("base_model_id", *FINETUNE_DEFAULTS)


@dataclasses.dataclass
class Spec:
    name: str
    preset: str
    method: str = "lora"
    input_urls: list[str] = dataclasses.field(default_factory=list)
    input_image: str | None = None
    input_pvc: str | None = None
    output_image: str | None = None
    output_secret: str | None = None
    output_pvc: str | None = None
    instance_type: str = DEFAULT_INSTANCE
    namespace: str | None = None
    lora_r: int = 16
    lora_alpha: float = 32
    lora_dropout: float = 0.05
    learning_rate: float = 2e-4
    num_epochs: float = 1
    max_steps: int = -1
    batch_size: int = 8
    adapter_strength: str = "1.0"
    ttl_seconds: int | None = None


def presets() -> dict[str, str]:
    """Kaito preset name -> Hugging Face repository id."""
    return json.loads(PRESETS.read_text())["presets"]


def preset_for(base_model_id: str) -> str | None:
    """The Kaito preset of a Hugging Face model id (case-insensitive), or None."""
    wanted = base_model_id.strip().lower()
    for name, repo in presets().items():
        if repo.lower() == wanted or name == wanted:
            return name
    return None


def pipeline_inputs(path: Path) -> dict:
    """The literal values of the inputs Kaito takes from a pipeline YAML (`inputs:`), e.g. pipelines/finetune.yaml."""
    import yaml

    try:
        job = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read the pipeline {path}: {exc}") from None
    found = {}
    for key, value in ((job or {}).get("inputs") or {}).items():
        if key not in PIPELINE_INPUTS:
            continue
        if isinstance(value, dict):
            value = value.get("default", value.get("value"))
        if value in (None, "") or (isinstance(value, str) and "${{" in value):
            continue
        found[key] = value
    return found


# --------------------------------------------------------------------------------------------------------------
# Manifests


def _labels(spec: Spec, role: str) -> dict:
    return {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/component": role,
            "app.kubernetes.io/managed-by": "slmops"}


def _metadata(spec: Spec, name: str, role: str) -> dict:
    meta = {"name": name, "labels": _labels(spec, role)}
    if spec.namespace:
        meta["namespace"] = spec.namespace
    return meta


def _resource(spec: Spec, role: str) -> dict:
    return {"instanceType": spec.instance_type, "labelSelector": {"matchLabels": {"apps": f"{spec.name}-{role}"}}}


def config_map(spec: Spec) -> dict:
    """The tuning arguments (Kaito's training_config.yaml layout) carrying our LoRA and training settings."""
    import yaml

    training = {"output_dir": "/mnt/results", "per_device_train_batch_size": spec.batch_size,
                "learning_rate": spec.learning_rate, "save_strategy": "epoch", "ddp_find_unused_parameters": False}
    if spec.max_steps and spec.max_steps > 0:
        training["max_steps"] = spec.max_steps
    else:
        training["num_train_epochs"] = spec.num_epochs
    config = {"ModelConfig": {"torch_dtype": "bfloat16", "local_files_only": True, "device_map": "auto"}}
    if spec.method == "qlora":
        config["QuantizationConfig"] = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                        "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_use_double_quant": True}
    config["LoraConfig"] = {"r": spec.lora_r, "lora_alpha": spec.lora_alpha, "lora_dropout": spec.lora_dropout}
    config["TrainingArguments"] = training
    config["DatasetConfig"] = {"shuffle_dataset": True, "train_test_split": 1}
    text = yaml.safe_dump({"training_config": config}, sort_keys=False)
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _metadata(spec, f"{spec.name}-tuning-params", "tuning"),
            "data": {"training_config.yaml": text}}


def _volume(claim: str) -> dict:
    return {"persistentVolumeClaim": {"claimName": claim}}


def tuning_workspace(spec: Spec) -> dict:
    source = {}
    if spec.input_urls:
        source["urls"] = list(spec.input_urls)
    if spec.input_image:
        source["image"] = spec.input_image
    if spec.input_pvc:
        source["volumeSource"] = _volume(spec.input_pvc)
    output = {}
    if spec.output_image:
        output["image"] = spec.output_image
        if spec.output_secret:
            output["imagePushSecret"] = spec.output_secret
    if spec.output_pvc:
        output["volumeSource"] = _volume(spec.output_pvc)
    tuning = {"preset": {"name": spec.preset}, "method": spec.method, "config": f"{spec.name}-tuning-params",
              "input": source, "output": output}
    if spec.ttl_seconds is not None:
        tuning["ttlSecondsAfterFinished"] = spec.ttl_seconds
    return {"apiVersion": API_VERSION, "kind": "Workspace",
            "metadata": _metadata(spec, f"{spec.name}-tuning", "tuning"),
            "resource": _resource(spec, "tuning"), "tuning": tuning}


def inference_workspace(spec: Spec) -> dict:
    """The preset served with the tuning output as an adapter (image, or the output volume)."""
    source = {"name": f"{spec.name}-adapter"}
    if spec.output_image:
        source["image"] = spec.output_image
    elif spec.output_pvc:
        source["volumeSource"] = _volume(spec.output_pvc)
    return {"apiVersion": API_VERSION, "kind": "Workspace",
            "metadata": _metadata(spec, f"{spec.name}-inference", "inference"),
            "resource": _resource(spec, "inference"),
            "inference": {"preset": {"name": spec.preset},
                          "adapters": [{"source": source, "strength": spec.adapter_strength}]}}


def manifests(spec: Spec, only: str = "all") -> list[dict]:
    docs = []
    if only in ("all", "tuning"):
        docs += [config_map(spec), tuning_workspace(spec)]
    if only in ("all", "inference"):
        docs.append(inference_workspace(spec))
    return docs


def render(docs: list[dict]) -> str:
    """Multi-document YAML; multi-line strings (the ConfigMap's training_config.yaml) as literal blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return "---\n".join(yaml.dump(doc, Dumper=Dumper, sort_keys=False) for doc in docs)


# --------------------------------------------------------------------------------------------------------------
# Validation


def crd_schema(strict: bool = True) -> dict:
    """The Workspace schema; `strict` adds additionalProperties: false wherever the CRD lists the properties (the
    API server prunes such unknown fields silently; here they are reported)."""
    schema = json.loads(CRD.read_text())["openAPIV3Schema"]
    if strict:
        def close(node):
            if isinstance(node, dict):
                if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                    node.setdefault("additionalProperties", False)
                for value in node.values():
                    close(value)
        close(schema)
    return schema


def _schema_problems(doc: dict, where: str) -> tuple[list[str], list[str]]:
    try:
        import jsonschema
    except ImportError:
        return [], ["jsonschema is not installed: the manifests were NOT checked against Kaito's CRD schema "
                    "(pip install jsonschema); only the webhook rules were checked"]
    validator = jsonschema.Draft7Validator(crd_schema())
    problems = []
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        problems.append(f"{where}: {path}: {error.message} (Kaito CRD workspaces.kaito.sh v1beta1)")
    return problems, []


def _webhook_problems(doc: dict, where: str) -> list[str]:
    problems = []
    name = (doc.get("metadata") or {}).get("name", "")
    if not DNS_SUBDOMAIN.match(name) or len(name) > 253:
        problems.append(f"{where}: metadata.name {name!r} is not a DNS-1123 subdomain (lowercase letters, digits, "
                        "'-', '.'); pass --name in that form")
    tuning, inference = doc.get("tuning"), doc.get("inference")
    if bool(tuning) == bool(inference):
        problems.append(f"{where}: a Workspace has either tuning or inference, not {'both' if tuning else 'neither'}")
    if tuning:
        if tuning.get("method") not in METHODS:
            problems.append(f"{where}: tuning.method {tuning.get('method')!r}: Kaito tunes with {list(METHODS)} "
                            "(full fine-tuning and DoRA run in our own pipeline, not on Kaito)")
        sources = [k for k in ("urls", "image", "volumeSource") if (tuning.get("input") or {}).get(k)]
        if len(sources) != 1:
            problems.append(f"{where}: tuning.input needs exactly one of urls, image, volumeSource, got "
                            f"{sources or 'none'}; pass one of --input-url, --input-image, --input-pvc")
        output = tuning.get("output") or {}
        if bool(output.get("image")) == bool(output.get("volumeSource")):
            problems.append(f"{where}: tuning.output needs exactly one of image (with --output-secret) or "
                            "volumeSource; pass --output-image or --output-pvc")
        if output.get("image") and not output.get("imagePushSecret"):
            problems.append(f"{where}: tuning.output.image needs imagePushSecret (the registry's push secret); "
                            "pass --output-secret")
    for i, adapter in enumerate((inference or {}).get("adapters") or []):
        source = adapter.get("source") or {}
        if not DNS_SUBDOMAIN.match(source.get("name", "")):
            problems.append(f"{where}: inference.adapters[{i}].source.name {source.get('name')!r} is not a DNS-1123 "
                            "subdomain")
        if not (source.get("image") or source.get("volumeSource")):
            problems.append(f"{where}: inference.adapters[{i}].source needs an image or a volumeSource")
        try:
            if not 0 <= float(adapter.get("strength", "1")) <= 1:
                raise ValueError
        except ValueError:
            problems.append(f"{where}: inference.adapters[{i}].strength {adapter.get('strength')!r} must be a "
                            "number between 0 and 1 (as a string)")
    preset = ((tuning or inference or {}).get("preset") or {}).get("name")
    if preset and preset not in presets():
        problems.append(f"{where}: preset {preset!r} is not a Kaito preset ({', '.join(sorted(presets()))}); pass "
                        "--preset or a --base-model-id Kaito has")
    return problems


def validate(docs: list[dict]) -> tuple[list[str], list[str]]:
    """(problems, notes) for every Workspace in `docs`: the CRD schema and Kaito's webhook rules."""
    problems, notes = [], []
    for i, doc in enumerate(docs):
        if doc.get("kind") != "Workspace":
            continue
        where = f"document {i + 1} (Workspace {(doc.get('metadata') or {}).get('name')})"
        if doc.get("apiVersion") != API_VERSION:
            problems.append(f"{where}: apiVersion {doc.get('apiVersion')!r}; the packaged schema is {API_VERSION}")
        found, skipped = _schema_problems(doc, where)
        problems += found
        notes = notes or skipped
        problems += _webhook_problems(doc, where)
    return problems, notes
