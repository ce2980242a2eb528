"""The pipeline variants (QLoRA on GPU, full fine-tune, distributed) are copies of pipelines/finetune.yaml with a few
settings changed. Azure ML pipeline YAML has no include, so this test keeps them from drifting: every variant has
the same jobs, components and bindings as finetune.yaml, and may only add to them or change values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
BASE = yaml.safe_load((PIPELINES / "finetune.yaml").read_text())
VARIANTS = sorted(p.name for p in PIPELINES.glob("*.yaml") if p.name != "finetune.yaml")


def test_there_are_variants():
    assert {"finetune_qlora_gpu.yaml", "finetune_full.yaml", "finetune_distributed.yaml"} <= set(VARIANTS)


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_keeps_every_job_component_input_and_binding_of_finetune_yaml(name):
    variant = yaml.safe_load((PIPELINES / name).read_text())
    problems = []
    missing_inputs = set(BASE["inputs"]) - set(variant["inputs"])
    if missing_inputs:
        problems.append(f"pipeline inputs missing: {sorted(missing_inputs)}")
    if set(variant["jobs"]) != set(BASE["jobs"]):
        problems.append(f"jobs differ: {sorted(variant['jobs'])} vs {sorted(BASE['jobs'])}")
    for job, spec in BASE["jobs"].items():
        other = variant["jobs"].get(job, {})
        if other.get("component") != spec["component"]:
            problems.append(f"jobs.{job}.component {other.get('component')!r} != {spec['component']!r}")
        for key, binding in spec.get("inputs", {}).items():
            if other.get("inputs", {}).get(key) != binding:
                problems.append(f"jobs.{job}.inputs.{key} {other.get('inputs', {}).get(key)!r} != {binding!r}")
        for key, binding in spec.get("outputs", {}).items():
            if other.get("outputs", {}).get(key) != binding:
                problems.append(f"jobs.{job}.outputs.{key} differs")
    assert not problems, f"{name} drifted from finetune.yaml:\n" + "\n".join(problems)
