"""`slmops run`: Azure ML pipeline-job YAML, offline.

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

from slmops.pipeline.cli import SET_HELP, STRICT_HELP, echo_warning


@click.command()
@click.argument("pipeline", type=click.Path(path_type=Path))
@click.option("--set", "set_", multiple=True, metavar="NAME=VALUE", help=SET_HELP)
@click.option("--strict", is_flag=True, help=STRICT_HELP)
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for this run's step logs and output links (default: runs/<pipeline>-<time>). "
                   "Its parent holds the shared .slmops/ store (step cache, MLflow database).")
@click.option("--max-parallel", type=click.IntRange(min=1), default=2, show_default=True,
              help="How many independent steps run at the same time.")
@click.option("--force-rerun", is_flag=True, help="Run every step, reusing nothing.")
def run(pipeline: Path, set_: tuple[str, ...], strict: bool, run_dir: Path | None, max_parallel: int,
        force_rerun: bool):
    """Run an Azure ML pipeline-job YAML on this machine, reusing unchanged steps."""
    from slmops.pipeline.load import cached_graph, report
    from slmops.pipeline.overrides import parse_sets
    from slmops.runner.display import Display
    from slmops.runner.executor import Executor
    from slmops.runner.store import Store
    from slmops.runner.tracking import default_uri, open_tracker

    sets = parse_sets(set_)
    if run_dir is None:
        run_dir = Path("runs") / f"{pipeline.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = run_dir.resolve()
    loaded = cached_graph(pipeline, sets, run_dir.parent / ".slmops")
    report(loaded, strict=strict, echo=echo_warning)          # nothing is written before the pipeline is valid
    graph = loaded.graph
    store = Store(run_dir.parent / ".slmops")
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

