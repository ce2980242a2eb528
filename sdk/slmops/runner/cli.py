"""`slmops run`: Azure ML pipeline-job YAML, offline; `slmops env` and `slmops cache`: the runner's store.

    slmops run pipelines/finetune.yaml --set base_model=./tiny-model --run-dir runs/try1 --max-parallel 2
    slmops env list                       # virtual environments built for steps' environment definitions
    slmops env prune --older-than 30      # ... not used for 30 days (never one in use)
    slmops cache prune --keep-last 20     # step cache, working copies, snapshots, downloads

Steps are reused across runs (content-addressed cache in `<run dir parent>/.slmops/`); MLflow records go to
`MLFLOW_TRACKING_URI` or `<run dir parent>/.slmops/mlflow.db`. This module imports nothing heavy: a re-run of an
unchanged pipeline reads its resolved graph from the cache and never imports azure-ai-ml or mlflow.
"""

from __future__ import annotations

import os
import signal
import shutil
import sys
import time
from pathlib import Path

import click

from slmops.pipeline.cli import SET_HELP, STRICT_HELP, echo_warning

ENV_HELP = ("How steps' environments are materialised. auto: pip requirements are installed into a virtual "
            "environment per definition (layered on this Python, built once, cached); what cannot be built here "
            "(conda packages, registered environments, images) is noted once and the step runs on this Python. "
            "strict: that is an error. docker: steps whose environment has an image run in it (needs Docker).")
STORE_HELP = "The runner's store: the .slmops/ folder beside the run folders."


class Stopped(KeyboardInterrupt):
    """SIGTERM/SIGHUP, raised like Ctrl-C's KeyboardInterrupt so the executor stops its steps and records it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop(signum, frame):
    raise Stopped(signum)


_RUN_DIR_LOCK: list[int] = []      # held open for the life of the process


def lock_run_dir(run_dir: Path) -> None:
    """Take `<run_dir>/.runner.lock` (an flock recording our pid), or fail naming the runner that holds it. A lock
    whose holder died is free again: the kernel releases an flock with its process."""
    import fcntl

    from slmops.errors import UserError

    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".runner.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise UserError(f"another `slmops run` (pid {holder}) is using the run folder {run_dir}. Fix: wait for it to "
                        "end, or pass another --run-dir (runs in other folders share the step cache safely).") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _RUN_DIR_LOCK.append(fd)


def _pairs(values: tuple[str, ...], option: str) -> dict[str, Path]:
    from slmops.errors import UserError

    found, bad = {}, []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            bad.append(f"{option} {value!r}: expected NAME=DIR")
        else:
            found[name] = Path(path).resolve()
    if bad:
        raise UserError(f"{len(bad)} malformed {option} value(s):", problems=bad)
    return found


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
@click.option("--env", "env_mode", type=click.Choice(["auto", "strict", "docker"]), default="auto",
              show_default=True, help=ENV_HELP)
@click.option("--assets", "assets_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Local stand-ins of registered assets and datastores (YAML: `assets: {\"name:version\": path}`, "
                   "`datastores: {name: folder}`). Default: .slmops/assets.yaml in the current folder, if any.")
@click.option("--datastore", "datastores", multiple=True, metavar="NAME=DIR",
              help="A local folder standing in for an Azure ML datastore: azureml://datastores/NAME/paths/P inputs "
                   "read DIR/P and outputs with such a path are copied there (default: <store>/datastores/NAME).")
def run(pipeline: Path, set_: tuple[str, ...], strict: bool, run_dir: Path | None, max_parallel: int,
        force_rerun: bool, env_mode: str, assets_file: Path | None, datastores: tuple[str, ...]):
    """Run an Azure ML pipeline YAML on this machine, reusing unchanged steps."""
    from slmops.errors import UserError
    from slmops.pipeline.load import cached_graph, report
    from slmops.pipeline.overrides import parse_sets
    from slmops.runner.assets import StandIns, apply_pipeline_outputs
    from slmops.runner.display import Display
    from slmops.runner.envs import Environments, RunnerPython, docker_available
    from slmops.pipeline import lineage
    from slmops.runner import watchdog
    from slmops.runner.executor import Executor
    from slmops.runner.store import Store
    from slmops.runner.tracking import default_uri, open_tracker

    sets = parse_sets(set_)
    stores = _pairs(datastores, "--datastore")
    if run_dir is None:
        run_dir = Path("runs") / f"{pipeline.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = run_dir.resolve()
    loaded = cached_graph(pipeline, sets, run_dir.parent / ".slmops")
    report(loaded, strict=strict, echo=echo_warning)          # nothing is written before the pipeline is valid
    graph = loaded.graph
    if env_mode == "docker" and not docker_available():
        raise UserError("--env docker: Docker is not available here (`docker info` failed). Fix: start Docker, or "
                        "use --env auto.")
    store_root = (run_dir.parent / ".slmops").resolve()
    if assets_file is None and Path(".slmops/assets.yaml").is_file():
        assets_file = Path(".slmops/assets.yaml")
    stand_ins = StandIns(store_root, assets_file.resolve() if assets_file else None, stores)
    apply_pipeline_outputs(graph, pipeline)
    problems = stand_ins.resolve(graph)
    installer = os.environ.get("SLMOPS_INSTALLER") or ("uv" if shutil.which("uv") else "pip")
    envs = Environments(store_root / "envs", RunnerPython.current(), installer, env_mode)
    plans = {name: envs.plan(node.environment) for name, node in graph.nodes.items()}
    problems += envs.problems({f"jobs.{n}.environment": p for n, p in plans.items()})
    if problems:
        raise UserError(f"{pipeline} cannot run locally; {len(problems)} problem(s):", problems=problems)
    lock_run_dir(run_dir)           # one runner per run folder, before anything in it is touched
    store = Store(store_root)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_uri(store.root)
    watch = watchdog.Client(run_dir, uri)     # stops the steps even if this process is SIGKILLed
    tracker = watchdog.Watched(open_tracker(uri, graph.experiment_name, store.root), watch)
    display = Display(list(graph.nodes))
    git = lineage.git_state(pipeline.resolve().parent)   # once, before any step's code is snapshotted
    executor = Executor(graph, run_dir, store, tracker, display, max_parallel, force_rerun, str(pipeline.resolve()),
                        envs=envs, plans=plans, stand_ins=stand_ins, watch=watch, git=git)
    for signum in (signal.SIGTERM, signal.SIGHUP):   # `timeout`, CI cancels, a closed terminal: stop cleanly
        signal.signal(signum, _stop)
    try:
        code = executor.execute()
    except KeyboardInterrupt as exc:
        display.close()
        signum = getattr(exc, "signum", signal.SIGINT)
        click.echo(f"stopped by {signal.Signals(signum).name}: running steps stopped (SIGTERM, then SIGKILL), "
                   f"their records say killed; run folder: {run_dir}", err=True)
        watch.done()
        sys.exit(128 + signum)
    finally:
        display.close()
    watch.done()
    states = executor.state
    summary = ", ".join(f"{n} {sum(1 for s in states.values() if s == n)}" for n in ("done", "reused", "failed")
                        if any(s == n for s in states.values()))
    from slmops.runner.sweep import write_trials_tables

    for table in write_trials_tables(graph, run_dir):     # hyper-parameters vs objective, per sweep node that ran
        click.echo(table)
    if code == 0:       # <run dir>/report.html, also an artifact of the pipeline's MLflow run (slmops.report)
        from slmops.report import publish

        click.echo(f"report: {publish(run_dir, tracker, executor.parent_run, warn=echo_warning)}")
    click.echo(f"run {'succeeded' if code == 0 else 'FAILED'} ({summary}); run folder: {run_dir}; "
               f"MLflow run {executor.parent_run} at {uri}")
    if code != 0:
        click.echo(executor.failure_report(), err=True)
        sys.exit(1)


# ---------------------------------------------------------------------------------------------- env / cache

def _criteria(older_than: float | None, keep_last: int | None) -> None:
    if older_than is None and keep_last is None:
        raise click.UsageError("say what to prune: --older-than DAYS, --keep-last N, or both "
                               "(--keep-last 0 removes everything not in use).")


def _prune(entries, older_than, keep_last, dry_run: bool) -> None:
    from slmops.runner.prune import human, remove, select

    chosen = select(entries, older_than, keep_last)
    freed, kept = 0, 0
    for entry in chosen:
        size = entry.size()
        if dry_run:
            click.echo(f"would remove {entry.kind} {entry.path} ({human(size)}, {entry.detail})")
            freed += size
        elif remove(entry):
            click.echo(f"removed {entry.kind} {entry.path} ({human(size)}, {entry.detail})")
            freed += size
        else:
            click.echo(f"kept {entry.kind} {entry.path}: in use (a running step or build holds its lock)")
            kept += 1
    verb = "would free" if dry_run else "freed"
    click.echo(f"{len(chosen) - kept} of {len(entries)} entries {'to remove' if dry_run else 'removed'}, "
               f"{verb} {human(freed)}" + (f"; {kept} in use kept" if kept else ""))


PRUNE_OPTIONS = [
    click.option("--store", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/.slmops"),
                 show_default=True, help=STORE_HELP),
    click.option("--older-than", type=click.FloatRange(min=0), default=None, metavar="DAYS",
                 help="Remove entries last used more than DAYS days ago."),
    click.option("--keep-last", type=click.IntRange(min=0), default=None, metavar="N",
                 help="Keep the N most recently used entries of each kind, whatever their age."),
    click.option("--dry-run", is_flag=True, help="Only say what would be removed."),
]


def _with(options):
    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


@click.group()
def env():
    """The virtual environments `slmops run` built for steps' environment definitions."""


@env.command("list")
@click.option("--store", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/.slmops"),
              show_default=True, help=STORE_HELP)
def env_list(store: Path):
    """List built environments: hash, what they hold, size, last use."""
    from slmops.runner.prune import env_entries, human

    entries = env_entries(store)
    if not entries:
        click.echo(f"no environments built under {store / 'envs'}")
        return
    for entry in sorted(entries, key=lambda e: e.last_used, reverse=True):
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used)) if entry.last_used else "never"
        click.echo(f"{entry.path.name[:12]}  {human(entry.size()):>9}  last used {used}  {entry.detail}")


@env.command("prune")
@_with(PRUNE_OPTIONS)
def env_prune(store: Path, older_than: float | None, keep_last: int | None, dry_run: bool):
    """Remove built environments by age or count; never one being built or used by a running step."""
    from slmops.runner.prune import env_entries

    _criteria(older_than, keep_last)
    _prune(env_entries(store), older_than, keep_last, dry_run)


@click.group()
def cache():
    """The step cache of `slmops run` (finished steps, working copies, code snapshots, downloads)."""


@cache.command("prune")
@_with(PRUNE_OPTIONS)
def cache_prune(store: Path, older_than: float | None, keep_last: int | None, dry_run: bool):
    """Remove cached steps, kept working copies, snapshots, downloads and resolved graphs by age or count; never
    a running step's. Old run folders' output links into removed entries break (their run.json stays)."""
    from slmops.runner.prune import cache_entries

    _criteria(older_than, keep_last)
    _prune(cache_entries(store), older_than, keep_last, dry_run)
