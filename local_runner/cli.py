"""`slmops run` and `slmops validate`: Azure ML pipeline-job YAML, offline.

    slmops validate pipelines/finetune.yaml --set base_model=./tiny-model
    slmops run pipelines/finetune.yaml --set base_model=./tiny-model --run-dir runs/try1 --max-parallel 2

Steps are reused across runs (content-addressed cache in `<run dir parent>/.slmops/`); MLflow records go to
`MLFLOW_TRACKING_URI` or `<run dir parent>/.slmops/mlflow.db`. This module imports nothing heavy: a re-run of an
unchanged pipeline reads its resolved graph from the cache and never imports azure-ai-ml or mlflow.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from slmops.cli import parse_sets

SET_HELP = "Override a pipeline-level input: NAME=VALUE (a path, relative to the current folder, for data inputs)."


@click.command()
@click.argument("pipeline", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "set_", multiple=True, metavar="NAME=VALUE", help=SET_HELP)
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for this run's step logs and output links (default: runs/<pipeline>-<time>). "
                   "Its parent holds the shared .slmops/ store (step cache, MLflow database).")
@click.option("--max-parallel", type=click.IntRange(min=1), default=2, show_default=True,
              help="How many independent steps run at the same time.")
@click.option("--force-rerun", is_flag=True, help="Run every step, reusing nothing.")
def run(pipeline: Path, set_: tuple[str, ...], run_dir: Path | None, max_parallel: int, force_rerun: bool):
    """Run an Azure ML pipeline-job YAML on this machine, reusing unchanged steps."""
    from local_runner.display import Display
    from local_runner.executor import Executor
    from local_runner.load import cached_graph
    from local_runner.store import Store
    from local_runner.tracking import default_uri, open_tracker

    sets = parse_sets(set_)
    if run_dir is None:
        run_dir = Path("runs") / f"{pipeline.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = run_dir.resolve()
    store = Store(run_dir.parent / ".slmops")
    graph = cached_graph(pipeline, sets, store.root)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_uri(store.root)
    tracker = open_tracker(uri, graph.experiment_name, store.root)
    display = Display(list(graph.nodes))
    executor = Executor(graph, run_dir, store, tracker, display, max_parallel, force_rerun, str(pipeline.resolve()))
    try:
        code = executor.execute()
    except KeyboardInterrupt:
        display.close()
        click.echo(f"interrupted: running steps killed; run folder: {run_dir}", err=True)
        sys.exit(130)
    finally:
        display.close()
    states = executor.state
    summary = ", ".join(f"{n} {sum(1 for s in states.values() if s == n)}" for n in ("done", "reused", "failed")
                        if any(s == n for s in states.values()))
    click.echo(f"run {'succeeded' if code == 0 else 'FAILED'} ({summary}); run folder: {run_dir}; "
               f"MLflow run {executor.parent_run} at {uri}")
    if code != 0:
        click.echo(executor.failure_report(), err=True)
        sys.exit(1)


@click.command()
@click.argument("pipeline", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "set_", multiple=True, metavar="NAME=VALUE", help=SET_HELP)
def validate(pipeline: Path, set_: tuple[str, ...]):
    """Check a pipeline-job YAML offline: azure-ai-ml's checks plus bindings, types, cycles, code folders."""
    from local_runner.load import build_graph

    graph, sources = build_graph(pipeline, parse_sets(set_), for_run=False)
    kinds = {}
    for node in graph.nodes.values():
        kinds[node.kind] = kinds.get(node.kind, 0) + 1
    click.echo(f"{pipeline}: valid ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))} job(s), "
               f"{len(sources)} file(s) read)")
