"""Submit a pipeline YAML to Azure ML, show what would be sent, and follow the run.

    job = load_pipeline(Path("pipelines/finetune.yaml"), {"max_steps": "200"}, ["finetune=nc24"], None, cwd)
    set_lineage_env(job, lineage.git_state(Path("pipelines")))   # commit, dirty flag, component versions
    envs = pin_environments(job, load_environments(root / "environments"))
    print(json.dumps(dry_run_payload(job, envs)))        # offline: no credential, no network
    created = submit(ml_client, job, envs)                # ensures environments, then jobs.create_or_update

The pipeline is read by the same front-end as `slmops run` and `slmops validate` (`slmops.pipeline.load`: azure-ai-ml's
`load_job` plus our checks), so the YAML and `--set` values that run locally are the ones submitted, with the same
problems reported.
"""

from __future__ import annotations

from pathlib import Path

from slmops.azure.environments import ProjectEnvironment, ensure_environment, pin_components

REMOTE_PREFIXES = ("azureml:", "https:", "http:", "wasbs:", "abfss:", "adl:", "hf:")
TERMINAL = {"Completed", "Failed", "Canceled", "NotResponding", "Paused"}


def load_pipeline(path: Path, sets: dict[str, str], compute: list[str], experiment: str | None, cwd: Path,
                  *, strict: bool = False, echo=print):
    """The pipeline as `slmops run` and `slmops validate` read it (`slmops.pipeline.load`), for Azure ML:
    overrides applied, warnings printed with `echo`, every error raised together. Returns the azure-ai-ml job.

    `compute`: `NAME` sets the pipeline's default compute, `NODE=NAME` one node's compute.
    """
    from slmops.pipeline.load import load, report

    loaded = load(Path(path), sets, target="azure", cwd=cwd, compute=compute, experiment=experiment)
    report(loaded, strict=strict, echo=echo)
    return loaded.job


def components_of(job) -> dict:
    """node name -> the node's component entity (a sweep node's: its trial; components given by reference are
    skipped)."""
    found = {}
    for name, node in job.jobs.items():
        component = node.trial if node.type == "sweep" else node.component
        if not isinstance(component, str):
            found[name] = component
    return found


def set_lineage_env(job, git: dict | None) -> None:
    """Give every step the lineage variables the local runner sets (slmops.pipeline.lineage: the project's git
    commit and dirty flag, read once before azure-ai-ml snapshots the code, and each node's component name:version),
    under the job's own environment_variables, which win. A sweep node's trials get them through the sweep node."""
    from slmops.pipeline.checks import component_ref
    from slmops.pipeline.lineage import step_env

    refs = {name: ref for name, component in components_of(job).items() if (ref := component_ref(component))}
    env = step_env(git, refs, {})
    for node in job.jobs.values():
        if hasattr(node, "environment_variables"):
            node.environment_variables = {**env, **(node.environment_variables or {})}


def pin_environments(job, envs: dict[str, ProjectEnvironment]) -> list[ProjectEnvironment]:
    """Pin the pipeline's components onto the project environments; return the environments they use."""
    return pin_components(components_of(job).values(), envs)


def dry_run_payload(job, envs_used: list[ProjectEnvironment]) -> dict:
    """What `submit` would send, built offline from the same azure-ai-ml objects.

    - `environments`: the environment versions submit ensures exist (body of the PUT when they do not);
    - `components`: per node, the component version body azure-ai-ml registers anonymously (its `code` is the
      local folder that is snapshotted and uploaded; the service then names it azureml_anonymous/<hash>);
    - `job`: the pipeline job body of the PUT .../jobs/<name>, each node's componentId standing for the
      component above. Compute names are resolved to ARM ids by the SDK at submit time.
    Consumes `job` (its nodes then refer to their components by placeholder id).
    """
    components = {}
    for name, component in components_of(job).items():
        body = component._to_rest_object().as_dict()
        spec = body["properties"]["componentSpec"]
        if isinstance(spec.get("code"), str) and not spec["code"].startswith(REMOTE_PREFIXES):
            spec["code"] = str((Path(component.base_path) / spec["code"]).resolve())
        components[name] = body
        job.jobs[name]._component = f"anonymous:{name}"
    return {
        "environments": {env.name: {"version": env.version, "body": env.entity()._to_rest_object().as_dict()}
                         for env in envs_used},
        "components": components,
        "job": job._to_rest_object().as_dict(),
    }


def submit(ml_client, job, envs_used: list[ProjectEnvironment], echo=print):
    """Ensure the environments, then submit with `ml_client.jobs.create_or_update`; return the created job."""
    for env in envs_used:
        echo(f"environment {env.name}:{env.version}: {ensure_environment(ml_client, env)}")
    return ml_client.jobs.create_or_update(job)


def _text(value) -> str:
    """Job statuses come back as str-enums; show their value."""
    return str(getattr(value, "value", value))


def status(ml_client, name: str) -> dict:
    """Status of a run and of its child steps (for a pipeline)."""
    job = ml_client.jobs.get(name)
    children = []
    if job.type == "pipeline":
        children = [{"name": child.name, "step": child.display_name, "status": _text(child.status)}
                    for child in ml_client.jobs.list(parent_job_name=name)]
    return {"name": job.name, "display_name": job.display_name, "status": _text(job.status),
            "experiment": job.experiment_name, "studio_url": job.studio_url, "steps": children}


def logs(ml_client, name: str, follow: bool, echo=print) -> str:
    """Print a run's logs: `follow` streams until the run ends (azure-ai-ml's `jobs.stream`); otherwise the log
    files of a finished run and of each of its steps are printed once, and a run still going is only reported
    (streaming would block). Log files are fetched from the SAS URLs run history hands out; the URLs (which
    carry a signature) are never printed, only the file names."""
    from azure.ai.ml._utils.utils import download_text_from_url

    job = ml_client.jobs.get(name)
    if follow:
        ml_client.jobs.stream(name)
        return _text(ml_client.jobs.get(name).status)
    if _text(job.status) not in TERMINAL:
        echo(f"{name} is {_text(job.status)}; run `slmops logs {name} --follow` to stream its logs until it ends.")
        echo(f"Studio: {job.studio_url}")
        return _text(job.status)
    runs = [(name, job.display_name)]
    if job.type == "pipeline":
        runs += [(child.name, child.display_name) for child in ml_client.jobs.list(parent_job_name=name)]
    for run_name, display_name in runs:
        # azure-ai-ml has no public call for a finished run's log files; jobs.stream uses these same two.
        details = ml_client.jobs._runs_operations.get_run_details(run_name)
        for log_name, url in sorted((details.log_files or {}).items()):
            echo(f"===== {display_name or run_name}: {log_name}")
            echo(download_text_from_url(url, ml_client.jobs._requests_pipeline).rstrip("\n"))
    echo(f"{name}: {_text(job.status)}  Studio: {job.studio_url}")
    return _text(job.status)


def download(ml_client, name: str, output: str | None, to: Path) -> Path:
    """Download one named output (or all outputs and logs) of a run into `to`; return where it landed.

    azure-ai-ml's layout: named outputs under `to/named-outputs/<output>`, logs under `to/artifacts`.
    """
    ml_client.jobs.download(name, download_path=str(to), output_name=output, all=output is None)
    return Path(to) / "named-outputs" / output if output else Path(to)


def cancel(ml_client, name: str) -> None:
    """Cancel a run and wait until the service has accepted it."""
    ml_client.jobs.begin_cancel(name).result()
