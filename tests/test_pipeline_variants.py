"""The pipeline variants (QLoRA on GPU, full fine-tune, distributed, sweep) are copies of pipelines/finetune.yaml with
a few settings changed. Azure ML pipeline YAML has no include, so this test keeps them from drifting: every variant has
the same jobs, components and bindings as finetune.yaml, and may only add to them or change values. One exception, the
sweep rule: a job may become a `type: sweep` node over the same component (its `trial:`), and an input it searches
over is then set by its search_space instead of bound; a pipeline input bound only there is dropped with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
BASE = yaml.safe_load((PIPELINES / "finetune.yaml").read_text())
# Not variants: pipelines that train nothing and so have no finetune job (optimize.yaml optimizes a given model);
# tests/test_verbs_optimize.py keeps their shared inputs and jobs in step with finetune.yaml.
NOT_VARIANTS = {"optimize.yaml"}
VARIANTS = sorted(p.name for p in PIPELINES.glob("*.yaml") if p.name not in {"finetune.yaml", *NOT_VARIANTS})


def test_there_are_variants():
    assert {"finetune_qlora_gpu.yaml", "finetune_full.yaml", "finetune_distributed.yaml",
            "finetune_sweep.yaml", "multi_adapter.yaml"} <= set(VARIANTS)


def searched(job: dict) -> set[str]:
    """The inputs a sweep node sets from its search space (none for a command node)."""
    return set(job.get("search_space") or {}) if job.get("type") == "sweep" else set()


def variant_problems(variant: dict) -> list[str]:
    problems = []
    swept = {key: binding for job, spec in BASE["jobs"].items()
             for key, binding in spec.get("inputs", {}).items() if key in searched(variant["jobs"].get(job, {}))}
    still_bound = {binding for spec in variant["jobs"].values() for binding in (spec.get("inputs") or {}).values()}
    droppable = {b[len("${{parent.inputs."):-2] for b in swept.values() if b.startswith("${{parent.inputs.")}
    missing_inputs = set(BASE["inputs"]) - set(variant["inputs"]) - {
        name for name in droppable if f"${{{{parent.inputs.{name}}}}}" not in still_bound}
    if missing_inputs:
        problems.append(f"pipeline inputs missing: {sorted(missing_inputs)}")
    if missing_jobs := set(BASE["jobs"]) - set(variant["jobs"]):   # added jobs (multi_adapter.yaml's) are fine
        problems.append(f"jobs missing: {sorted(missing_jobs)}")
    for job, spec in BASE["jobs"].items():
        other = variant["jobs"].get(job, {})
        component = other.get("trial") if other.get("type") == "sweep" else other.get("component")
        if component != spec["component"]:
            problems.append(f"jobs.{job}.component {component!r} != {spec['component']!r}")
        for key, binding in spec.get("inputs", {}).items():
            if key in searched(other):
                if key in (other.get("inputs") or {}):
                    problems.append(f"jobs.{job}.inputs.{key}: bound and also in the search_space")
            elif other.get("inputs", {}).get(key) != binding:
                problems.append(f"jobs.{job}.inputs.{key} {other.get('inputs', {}).get(key)!r} != {binding!r}")
        for key, binding in spec.get("outputs", {}).items():
            if other.get("outputs", {}).get(key) != binding:
                problems.append(f"jobs.{job}.outputs.{key} differs")
    return problems


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_keeps_every_job_component_input_and_binding_of_finetune_yaml(name):
    problems = variant_problems(yaml.safe_load((PIPELINES / name).read_text()))
    assert not problems, f"{name} drifted from finetune.yaml:\n" + "\n".join(problems)


def test_the_sweep_rule_still_catches_drift():
    """The sweep rule lets only searched inputs go: a sweep node that also drops a bound input, binds a searched
    one, or runs another component is reported."""
    sweep = yaml.safe_load((PIPELINES / "finetune_sweep.yaml").read_text())
    assert variant_problems(sweep) == [] and searched(sweep["jobs"]["finetune"]) == {"learning_rate", "lora_r",
                                                                                     "batch_size"}
    sweep["jobs"]["finetune"]["inputs"].pop("eval_steps")
    sweep["jobs"]["finetune"]["inputs"]["lora_r"] = "${{parent.inputs.lora_r}}"
    sweep["jobs"]["finetune"]["trial"] = "../components/evaluate/component.yaml"
    del sweep["inputs"]["max_seq_len"]
    assert variant_problems(sweep) == [
        "pipeline inputs missing: ['lora_r', 'max_seq_len']",  # lora_r: bound again, so needed again
        "jobs.finetune.component '../components/evaluate/component.yaml' != '../components/finetune/component.yaml'",
        "jobs.finetune.inputs.lora_r: bound and also in the search_space",
        "jobs.finetune.inputs.eval_steps None != '${{parent.inputs.eval_steps}}'",
    ]


def test_a_variant_may_add_jobs_but_not_drop_or_rebind_one():
    """multi_adapter.yaml adds a second task's jobs and the shared ONNX build; dropping or rebinding one of
    finetune.yaml's jobs is still reported."""
    multi = yaml.safe_load((PIPELINES / "multi_adapter.yaml").read_text())
    assert variant_problems(multi) == [] and set(multi["jobs"]) - set(BASE["jobs"]) == {
        "prep_topic", "finetune_topic", "evaluate_topic", "optimize_adapters", "register_topic"}
    del multi["jobs"]["optimize"]
    multi["jobs"]["register"]["inputs"]["model"] = "${{parent.jobs.finetune_topic.outputs.model}}"
    assert variant_problems(multi) == [
        "jobs missing: ['optimize']",
        "jobs.optimize.component None != '../components/optimize/component.yaml'",
        "jobs.optimize.inputs.model None != '${{parent.jobs.finetune.outputs.model}}'",
        "jobs.optimize.inputs.test_data None != '${{parent.jobs.prep.outputs.output_data}}'",
        "jobs.optimize.inputs.precision None != '${{parent.inputs.onnx_precision}}'",
        "jobs.optimize.inputs.execution_provider None != '${{parent.inputs.execution_provider}}'",
        "jobs.optimize.inputs.task None != '${{parent.inputs.task}}'",
        "jobs.register.inputs.model '${{parent.jobs.finetune_topic.outputs.model}}' != "
        "'${{parent.jobs.finetune.outputs.model}}'",
    ]
