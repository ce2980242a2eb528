"""The custom loss as a pipeline input: every pipeline with a finetune job declares `loss` (an optional uri_file) and
`loss_function` and binds them to its finetune job (the sweep's trials included). Set, the file reaches the step
(`--loss FILE --loss_function NAME`, locally and in the Azure ML payload); unset, neither the pipeline input nor the
job input exists, so the command's `$[[--loss ...]]` part is dropped. `slmops finetune --loss FILE.py[:NAME]` sets
both. No training: the local graph, `submit --dry-run`'s payload and `finetune --dry-run`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from slmops.cli import main

ROOT = Path(__file__).resolve().parents[1]
LOSS = ROOT / "examples" / "losses" / "class_weighted.py"
WITH_FINETUNE = sorted(p.name for p in (ROOT / "pipelines").glob("*.yaml")
                       if "finetune" in (yaml.safe_load(p.read_text()).get("jobs") or {}))
pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.RemovedInMarshmallow4Warning")


def test_every_finetune_pipeline_declares_and_binds_the_loss():
    assert {"finetune.yaml", "finetune_sweep.yaml", "multi_adapter.yaml"} <= set(WITH_FINETUNE)
    for name in WITH_FINETUNE:
        doc = yaml.safe_load((ROOT / "pipelines" / name).read_text())
        assert doc["inputs"]["loss"] == {"type": "uri_file"}, name                 # no default: unset
        assert doc["inputs"]["loss_function"] == "loss", name
        assert doc["jobs"]["finetune"]["inputs"]["loss"] == "${{parent.inputs.loss}}", name
        assert doc["jobs"]["finetune"]["inputs"]["loss_function"] == "${{parent.inputs.loss_function}}", name


@pytest.mark.parametrize("name", ["finetune.yaml", "finetune_sweep.yaml"])
def test_locally_the_loss_file_is_passed_only_when_set(name):
    from slmops.pipeline.load import load

    unset = load(ROOT / "pipelines" / name, {}, target="local")
    node = unset.graph.nodes["finetune"]
    assert unset.errors == [] and "loss" not in node.inputs and node.inputs["loss_function"] == {"value": "loss"}
    assert "$[[--loss ${{inputs.loss}}]]" in node.command          # dropped when the input is not given
    given = load(ROOT / "pipelines" / name, {"loss": str(LOSS.relative_to(ROOT)), "loss_function": "loss"},
                 target="local", cwd=ROOT)
    assert given.errors == []
    assert given.graph.nodes["finetune"].inputs["loss"] == {"path": str(LOSS), "type": "uri_file"}


@pytest.mark.parametrize("name", ["finetune.yaml", "finetune_sweep.yaml"])
def test_the_azure_payload_carries_the_loss_only_when_set(name):
    from slmops.azure import environments, submit

    envs = environments.load_environments(ROOT / "environments")

    def payload(sets):
        job = submit.load_pipeline(ROOT / "pipelines" / name, sets, [], None, ROOT)
        return submit.dry_run_payload(job, submit.pin_environments(job, envs))["job"]["properties"]

    unset = payload({})
    assert "loss" not in unset["inputs"] and "loss" not in unset["jobs"]["finetune"]["inputs"]
    assert unset["jobs"]["finetune"]["inputs"]["loss_function"]["value"] == "${{parent.inputs.loss_function}}"
    given = payload({"loss": str(LOSS), "loss_function": "loss"})
    assert given["inputs"]["loss"]["jobInputType"] == "uri_file" and given["inputs"]["loss"]["uri"].endswith(
        "examples/losses/class_weighted.py")
    assert given["jobs"]["finetune"]["inputs"]["loss"]["value"] == "${{parent.inputs.loss}}"


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / "rows.jsonl").write_text('{"phrase": "hi", "tone": "joyful"}\n')
    (tmp_path / "my_loss.py").write_text(LOSS.read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("flag, expected", [
    ("my_loss.py:loss", {"loss": "my_loss.py", "loss_function": "loss"}),
    ("my_loss.py", {"loss": "my_loss.py", "loss_function": "loss"}),         # the pipeline's default function
])
@pytest.mark.parametrize("sweep", [False, True])
def test_finetune_loss_flag_sets_both_inputs(project, flag, expected, sweep):
    result = CliRunner().invoke(main, ["finetune", "--model", "model", "--data", "rows.jsonl", "--loss", flag,
                                       *(["--sweep"] if sweep else []), "--dry-run"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    inputs = yaml.safe_load(result.stdout)["inputs"]
    assert (inputs["loss"], inputs["loss_function"]) == (str(project / expected["loss"]), expected["loss_function"])
    assert "--set loss=my_loss.py" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--loss", "my_loss.txt"], "--loss 'my_loss.txt': expected FILE.py or FILE.py:FUNCTION"),
    (["--loss", "missing.py:loss"], "--loss: "),
    (["--loss", "my_loss.py:fn", "--set", "loss_function=other"],
     "--loss 'fn' and --set loss_function='other' both set the input loss_function"),
])
def test_bad_loss_flags_are_exit_2(project, args, message):
    result = CliRunner().invoke(main, ["finetune", "--model", "model", "--data", "rows.jsonl", *args, "--dry-run"],
                                catch_exceptions=False)
    assert result.exit_code == 2 and message in result.output, result.output
