"""`slmops run` end to end on small self-written components (assets/): reuse, resume after SIGKILL, MLflow
records, distribution, nested pipelines, sweeps, data inputs, and what a person sees."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.runner.conftest import ASSETS, EXPERIMENT, invoke, slmops


def run(runs: Path, pipeline, name: str, *extra):
    return invoke("run", pipeline, "--run-dir", runs / name, *extra)


def states(runs: Path, name: str) -> dict:
    return json.loads((runs / name / "run.json").read_text())["steps"]


def value(folder: Path) -> float:
    return float((folder / "value.txt").read_text())


def step(runs: Path, name: str, node: str) -> dict:
    return json.loads((runs / name / node / "step.json").read_text())


def test_second_run_reuses_everything_and_one_changed_parameter_reruns_its_dependants(runs):
    first = run(runs, "pipe5.yaml", "r1")
    assert first.exit_code == 0, first.output
    assert set(states(runs, "r1").values()) == {"done"}
    assert value(runs / "r1" / "outputs" / "final") == 100.0            # e = 1 * ((2 + 3) * 10) * 2
    # Plain lines (not a TTY): each step's output prefixed with its name, and its log saved.
    assert "a | total=2.0 flag=False cwd_has_step=True" in first.output   # runs inside the code snapshot
    assert "[e] done" in first.output
    assert first.output.count("is a registered Azure ML environment") == 1     # one notice for the five steps
    assert "total=2.0" in (runs / "r1" / "a" / "user_logs" / "std_log.txt").read_text()

    second = run(runs, "pipe5.yaml", "r2")
    assert second.exit_code == 0, second.output
    assert states(runs, "r2") == {n: "reused" for n in "abcde"}
    assert value(runs / "r2" / "outputs" / "final") == 100.0
    assert all(step(runs, "r1", n)["cache_key"] == step(runs, "r2", n)["cache_key"] for n in "abcde")
    assert "reused the outputs" in (runs / "r2" / "a" / "user_logs" / "std_log.txt").read_text()

    third = run(runs, "pipe5.yaml", "r3", "--set", "m=20")
    assert third.exit_code == 0, third.output
    assert states(runs, "r3") == {"a": "reused", "b": "reused", "c": "reused", "d": "done", "e": "done"}
    assert value(runs / "r3" / "outputs" / "final") == 200.0


def test_each_step_gets_the_commit_read_once_the_component_versions_and_its_input_runs(runs):
    """SLMOPS_GIT_COMMIT/DIRTY: the git state of the work tree holding the pipeline, read before the snapshot;
    SLMOPS_COMPONENTS: every node's name:version; SLMOPS_INPUT_RUNS: the run that produced each input — after a
    re-run with one changed parameter, the run a reused upstream step came from."""
    import subprocess

    assert run(runs, "pipe5.yaml", "l1").exit_code == 0
    assert run(runs, "pipe5.yaml", "l2", "--set", "m=11").exit_code == 0      # d and e re-run, a/b/c reused
    log = lambda name, node: (runs / name / node / "user_logs" / "std_log.txt").read_text()  # noqa: E731
    first = {n: step(runs, "l1", n)["mlflow_run_id"] for n in "abcde"}
    assert f"input_runs={json.dumps({'a': first['a'], 'b': first['b']})}" in log("l1", "c")
    assert "input_runs=None" in log("l1", "a")                                  # literal inputs only
    assert states(runs, "l2")["c"] == "reused" and states(runs, "l2")["d"] == "done"
    assert f"input_runs={json.dumps({'a': first['c']})}" in log("l2", "d")      # c's run of l1, not its stub
    second_d = step(runs, "l2", "d")["mlflow_run_id"]
    assert f"input_runs={json.dumps({'a': second_d, 'b': first['a']})}" in log("l2", "e")
    assert f"components={json.dumps({n: 'add:1' for n in 'abcde'})}" in log("l1", "a")
    head = subprocess.run(["git", "-C", str(ASSETS), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:      # the assets are in a git checkout (CI, a clone)
        commit = head.stdout.strip()
        assert f"lineage SLMOPS_GIT_COMMIT={commit} SLMOPS_GIT_DIRTY=" in log("l1", "a")
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{runs / '.slmops' / 'mlflow.db'}")
        parent = client.get_run(json.loads((runs / "l1" / "run.json").read_text())["mlflow_run_id"])
        assert parent.data.tags["mlflow.source.git.commit"] == commit
        assert parent.data.tags["slmops.git_dirty"] in ("true", "false")
    else:
        assert "lineage SLMOPS_GIT_COMMIT=None SLMOPS_GIT_DIRTY=None" in log("l1", "a")


@pytest.mark.parametrize("parallel, b_starts_before_a_ends", [("1", False), ("2", True)])
def test_max_parallel_bounds_the_steps_running_at_once(runs, parallel, b_starts_before_a_ends):
    result = run(runs, "pipe5.yaml", "r1", "--max-parallel", parallel)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert (lines.index("[b] running") < lines.index(next(l for l in lines if l.startswith("[a] done")))) \
        == b_starts_before_a_ends


def test_mlflow_parent_and_child_runs(runs):
    from mlflow import MlflowClient

    assert run(runs, "pipe5.yaml", "r1").exit_code == 0
    assert run(runs, "pipe5.yaml", "r2").exit_code == 0
    client = MlflowClient(f"sqlite:///{runs / '.slmops' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    for name, reused in (("r1", "false"), ("r2", "true")):
        parent_id = json.loads((runs / name / "run.json").read_text())["mlflow_run_id"]
        parent = client.get_run(parent_id)
        assert parent.info.status == "FINISHED"
        children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
        by_name = {c.info.run_name: c for c in children}
        assert sorted(by_name) == list("abcde")
        a = by_name["a"]
        assert a.info.status == "FINISHED"
        # Inputs are tags of the step's run (its script owns the params) and params of the pipeline's run.
        assert a.data.params == {}
        assert a.data.tags["slmops.input.value"] == "2" and a.data.tags["slmops.input.flag"] == "False"
        assert parent.data.params["a.value"] == "2" and parent.data.params["e.mode"] == "mul"
        assert a.data.tags["slmops.cache_key"] == step(runs, name, "a")["cache_key"]
        assert a.data.tags["slmops.reused"] == reused
        assert a.data.tags["slmops.node"] == "a"
    # The step process gets its own run's ids in MLFLOW_RUN_ID / AZUREML_ROOT_RUN_ID ...
    first_parent = json.loads((runs / "r1" / "run.json").read_text())["mlflow_run_id"]
    log = (runs / "r1" / "a" / "user_logs" / "std_log.txt").read_text()
    assert f"run={step(runs, 'r1', 'a')['mlflow_run_id']} root={first_parent}" in log
    # ... so `mlflow.log_metric` inside a component lands in its step's child run.
    assert run(runs, "metric.yaml", "m1").exit_code == 0
    logged = client.get_run(step(runs, "m1", "log")["mlflow_run_id"])
    assert logged.data.metrics["total"] == 6.0
    assert logged.info.status == "FINISHED"


def test_sigkilled_step_leaves_nothing_reusable_and_the_next_run_resumes_there(runs):
    first = run(runs, "resume.yaml", "r1")
    assert first.exit_code == 1
    assert "step 'count' failed (killed by signal SIGKILL)" in first.output
    assert "killing myself at step 2" in first.output                      # the tail of its log
    assert states(runs, "r1") == {"start": "done", "count": "failed", "after": "skipped"}
    key = step(runs, "r1", "count")["cache_key"]
    cached = runs / ".slmops" / "cache" / key
    assert not (cached / "done").exists() and not (cached / "done.json").exists()
    assert sorted(p.name for p in (cached / "attempt" / "checkpoints").iterdir()) == ["step-0", "step-1"]
    assert not (runs / "r1" / "count" / "outputs").exists()

    second = run(runs, "resume.yaml", "r2")
    assert second.exit_code == 0, second.output
    assert states(runs, "r2") == {"start": "reused", "count": "done", "after": "done"}
    assert "resuming at step 2" in (runs / "r2" / "count" / "user_logs" / "std_log.txt").read_text()
    assert sorted(p.name for p in (runs / "r2" / "count" / "outputs" / "checkpoints").iterdir()) == [
        "step-0", "step-1", "step-2", "step-3"]
    assert value(runs / "r2" / "after" / "outputs" / "out") == 11.0


def test_a_step_orphaned_by_a_killed_runner_keeps_its_key_locked(runs):
    """SIGKILL the runner and its watchdog (which otherwise stops the steps: tests/reliability/test_lifecycle.py):
    the running step lives on; a new run must not write into the same folders."""
    import fcntl
    import os
    import signal
    import subprocess

    from tests.runner.conftest import cli_env

    args = ["resume.yaml", "--set", "sleep=0.6", "--set", "die_at=99"]
    exe = shutil.which("slmops")
    runner = subprocess.Popen([exe, "run", *args, "--run-dir", str(runs / "r1")], cwd=ASSETS, env=cli_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = runs / "r1" / "count" / "user_logs" / "std_log.txt"
    deadline = time.monotonic() + 120
    while not (log.exists() and "step 0" in log.read_text()):
        assert time.monotonic() < deadline and runner.poll() is None
        time.sleep(0.1)
    for entry in Path("/proc").iterdir():          # the watchdog of this runner: `... watchdog <run dir> <uri>`
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"slmops.runner.watchdog" in cmdline and str(runs / "r1").encode() in cmdline:
            os.kill(int(entry.name), signal.SIGKILL)
    runner.send_signal(signal.SIGKILL)
    runner.wait()

    second = run(runs, *args[:1], "r2", *args[1:])
    assert second.exit_code == 1
    assert "is running this very step" in second.stderr

    key = step(runs, "r1", "count")["cache_key"]
    with open(runs / ".slmops" / "cache" / key / "lock") as fh:           # wait for the orphan to end
        fcntl.flock(fh, fcntl.LOCK_EX)
        fcntl.flock(fh, fcntl.LOCK_UN)
    third = run(runs, *args[:1], "r3", *args[1:])
    assert third.exit_code == 0, third.output
    assert states(runs, "r3") == {"start": "reused", "count": "done", "after": "done"}
    assert os.listdir(runs / "r3" / "count" / "outputs" / "checkpoints")


def test_failed_step_exits_nonzero_naming_it_and_dependants_do_not_start(runs):
    result = run(runs, "resume.yaml", "r1", "--set", "fail=true", "--set", "die_at=99")
    assert result.exit_code == 1
    assert "step 'count' failed (exit code 3)" in result.stderr
    assert "failing on purpose" in result.stderr
    assert "not started: after" in result.stderr
    assert not (runs / "r1" / "after").exists()


def test_distribution_pytorch_starts_one_process_per_rank(runs):
    result = run(runs, "distributed.yaml", "r1")
    assert result.exit_code == 0, result.output
    ranks = runs / "r1" / "ddp" / "outputs" / "ranks"
    lines = sorted(p.read_text() for p in ranks.iterdir())
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        assert f"RANK={rank} WORLD_SIZE=2 LOCAL_RANK={rank} LOCAL_WORLD_SIZE=2 NODE_RANK=0 MASTER_ADDR=127.0.0.1" in line
    # torch.distributed (gloo) rendezvous through those variables: all_reduce of rank+1 over 2 ranks = 3.
    assert (runs / "r1" / "allreduce" / "outputs" / "out" / "sum.txt").read_text() == "3.0 2"
    # `python ...` commands go through torchrun (its workers carry TORCHELASTIC_* variables); a command that needs a
    # shell gets its copies started by the runner, each prefixed with its rank, with the same variables.
    assert all("TORCHELASTIC_RUN_ID" in line for line in lines)
    shell = sorted(p.read_text() for p in (runs / "r1" / "shell_ranks" / "outputs" / "ranks").iterdir())
    for rank, line in enumerate(shell):
        assert f"RANK={rank} WORLD_SIZE=2 LOCAL_RANK={rank} LOCAL_WORLD_SIZE=2 NODE_RANK=0 MASTER_ADDR=127.0.0.1" in line
        assert "TORCHELASTIC_RUN_ID" not in line
    assert "shell_ranks[1] | shell launch" in result.output


@pytest.mark.parametrize("command, expected", [
    ("python step.py --out /o", ["step.py", "--out", "/o"]),
    ("python -m slmops.steps.finetune --template '<|user|>\n{x}'", ["-m", "slmops.steps.finetune", "--template", "<|user|>\n{x}"]),
    ("python3 train.py", ["train.py"]),
    ("echo hi && python step.py", None),
    ("python step.py > log.txt", None),
    ("python step.py --seed $SEED", None),
    ("python -c 'print(1)'", None),
    ("bash run.sh", None),
])
def test_torchrun_argv_wraps_plain_python_commands_only(command, expected):
    from slmops.runner.executor import torchrun_argv

    argv = torchrun_argv(command, 2, 29500)
    if expected is None:
        assert argv is None
    else:
        assert argv[1:3] == ["-m", "torch.distributed.run"] and "--nproc-per-node" in argv
        assert argv[argv.index("--master-port") + 2:] == expected


def test_nested_pipeline_component_and_inline_command(runs):
    result = run(runs, "nested.yaml", "r1")
    assert result.exit_code == 0, result.output
    assert value(runs / "r1" / "inner.first" / "outputs" / "out") == 5.0
    assert value(runs / "r1" / "inner.second" / "outputs" / "out") == 20.0     # (5) * factor 4
    assert value(runs / "r1" / "after" / "outputs" / "out") == 21.0            # 1 + inner's result
    assert value(runs / "r1" / "inline" / "outputs" / "out") == 7.0
    assert "inline | hello from the YAML" in result.output                     # environment_variables
    assert "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04" in result.output
    assert value(runs / "r1" / "outputs" / "nested_result") == 20.0            # pipeline node output -> pipeline


def test_limits_timeout_kills_the_step(runs):
    started = time.monotonic()
    result = run(runs, "timeout.yaml", "r1")
    assert result.exit_code == 1
    assert "step 'slow' failed (killed after its limits.timeout of 1 s)" in result.stderr
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("pipeline, extra, expected", [
    ("nondet.yaml", (), {"fixed": "reused", "random": "done"}),    # is_deterministic: false always runs
    ("nondet.yaml", ("--force-rerun",), {"fixed": "done", "random": "done"}),
    ("forced.yaml", (), {"fixed": "done", "random": "done"}),      # settings: force_rerun: true
])
def test_reuse_is_disabled_by_nondeterminism_and_force_rerun(runs, pipeline, extra, expected):
    assert run(runs, pipeline, "r1").exit_code == 0
    assert run(runs, pipeline, "r2", *extra).exit_code == 0
    assert states(runs, "r2") == expected


def test_local_data_input_and_set_path(runs, tmp_path):
    assert run(runs, "local_input.yaml", "r1").exit_code == 0
    assert value(runs / "r1" / "use" / "outputs" / "out") == 9.0               # 4.5 from assets/data * 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "value.txt").write_text("1.5")
    assert run(runs, "local_input.yaml", "r2", "--set", f"data={other}", "--set", "scale=3").exit_code == 0
    assert value(runs / "r2" / "use" / "outputs" / "out") == 4.5
    (other / "value.txt").write_text("2.5")                                     # input content is in the key
    assert run(runs, "local_input.yaml", "r3", "--set", f"data={other}", "--set", "scale=3").exit_code == 0
    assert states(runs, "r3") == {"use": "done"}
    assert value(runs / "r3" / "use" / "outputs" / "out") == 7.5


def test_a_datastore_input_without_a_local_stand_in_says_how_to_give_one(runs):
    result = run(runs, "cloud_input.yaml", "r1")
    assert result.exit_code == 2
    assert "inputs.data: azureml://datastores/workspaceblobstore/paths/numbers/ is a path in datastore " \
           "'workspaceblobstore'" in result.stderr
    assert "--datastore workspaceblobstore=DIR" in result.stderr and "--set data=./path" in result.stderr
    assert "Traceback" not in result.output and not (runs / "r1").exists()


def test_edits_to_code_and_component_files_are_seen(runs, tmp_path):
    work = tmp_path / "work"
    for name in ("components", "src"):
        shutil.copytree(ASSETS / name, work / name)
    shutil.copyfile(ASSETS / "pipe5.yaml", work / "pipe5.yaml")
    assert run(runs, work / "pipe5.yaml", "r1").exit_code == 0
    pipeline = work / "pipe5.yaml"
    pipeline.write_text(pipeline.read_text().replace("  y: 3\n", "  y: 4\n"))
    assert run(runs, pipeline, "r2").exit_code == 0
    assert states(runs, "r2") == {"a": "reused", "b": "done", "c": "done", "d": "done", "e": "done"}
    parts = step(runs, "r2", "b")["key_parts"]
    assert parts["inputs"]["value"] != step(runs, "r1", "b")["key_parts"]["inputs"]["value"]
    with open(work / "src" / "step.py", "a") as fh:
        fh.write("# an edit to the code snapshot\n")
    assert run(runs, pipeline, "r3").exit_code == 0
    assert set(states(runs, "r3").values()) == {"done"}
    changed = {k for k, v in step(runs, "r3", "b")["key_parts"].items() if v != parts[k]}
    assert changed == {"code"}                     # step.json says why the step re-ran
    component = work / "components" / "add.yaml"
    component.write_text(component.read_text().replace("max: 1000", "max: 999"))
    assert run(runs, pipeline, "r4").exit_code == 0
    assert set(states(runs, "r4").values()) == {"done"}


def test_a_pipeline_in_the_azureml_examples_layout_runs_unmodified(runs):
    result = run(runs, "azureml_layout/pipeline.yml", "r1")
    assert result.exit_code == 0, result.output
    listing = (runs / "r1" / "outputs" / "report" / "listing.txt").read_text()
    assert listing == "hello\nsample.csv: 3 lines\n"


def test_sweep_trials_are_child_runs_of_the_sweep_step_and_no_metric_fails_it(runs):
    """The success path (best trial adopted, reuse) is tested end to end in test_sweep.py; here: every trial is an
    MLflow child run of the sweep step's run, with the sampled value as a param, and a sweep whose trials never
    log the primary metric fails that step with the sweep's message."""
    from mlflow import MlflowClient

    result = run(runs, "sweep_nometric.yaml", "r1")
    assert result.exit_code == 1
    assert "step 'tune' failed (sweep: no completed trial logged the primary metric 'total'" in result.stderr
    client = MlflowClient(f"sqlite:///{runs / '.slmops' / 'mlflow.db'}")
    sweep_run = step(runs, "r1", "tune")["mlflow_run_id"]
    assert client.get_run(sweep_run).info.status == "FAILED"
    trials = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                                f"tags.mlflow.parentRunId = '{sweep_run}'")
    assert sorted((t.data.tags["slmops.input.value"], t.info.status) for t in trials) == [
        ("1", "FINISHED"), ("3", "FINISHED"), ("5", "FINISHED")]
    assert all(t.data.tags["slmops.kind"] == "trial" for t in trials)
    assert (runs / "r1" / "tune" / "trials" / "2" / "user_logs" / "std_log.txt").exists()


def test_cached_rerun_of_five_steps_takes_under_3s(runs):
    """The acceptance figure, through the installed console script (a fresh process, as a user runs it)."""
    assert slmops("run", "pipe5.yaml", "--run-dir", runs / "warm").returncode == 0
    timings = []
    for attempt in range(2):
        started = time.perf_counter()
        result = slmops("run", "pipe5.yaml", "--run-dir", runs / f"cached{attempt}")
        timings.append(time.perf_counter() - started)
        assert result.returncode == 0, result.stderr
        assert states(runs, f"cached{attempt}") == {n: "reused" for n in "abcde"}
    assert min(timings) < 3.0, timings
    # How: the cached path imports neither azure-ai-ml nor mlflow (nor rich: stdout is not a terminal here).
    import subprocess
    import sys

    from tests.runner.conftest import cli_env

    traced = subprocess.run([sys.executable, "-X", "importtime", "-c", "from slmops.cli import main; main()", "run",
                             "pipe5.yaml", "--run-dir", str(runs / "traced")], cwd=ASSETS, env=cli_env(),
                            capture_output=True, text=True, timeout=120)
    assert traced.returncode == 0, traced.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in traced.stderr.splitlines() if "|" in line}
    assert imported.isdisjoint({"azure", "mlflow", "rich", "torch", "transformers"}), imported


def test_live_display_renders_states_and_lines():
    import io

    from rich.console import Console

    from slmops.runner.display import Display

    display = Display(["a", "b"], live=True, console=Console(file=io.StringIO(), force_terminal=True, width=100))
    display.state("a", "running")
    display.line("a", "hello")
    display.state("a", "done")
    display.state("b", "failed", "exit code 1")
    table = display._table()
    display.close()
    states = [(str(cell), str(cell.style)) for cell in table.columns[1]._cells]
    assert [c._cells for c in table.columns][0] == ["a", "b"]
    assert states == [("done", "bold green"), ("failed", "bold red")]
    shown = display.console.file.getvalue()
    assert "a | hello" in shown
    assert "[/]" not in shown and "[dim]" not in shown   # the table is redrawn inside print(markup=False) calls


def test_an_edit_to_an_environments_conda_file_reruns_the_step(runs, tmp_path):
    work = tmp_path / "envwork"
    shutil.copytree(ASSETS / "src", work / "src")
    (work / "conda.yaml").write_text("name: step\ndependencies:\n  - python=3.11\n")
    (work / "pipeline.yaml").write_text(
        "type: pipeline\nexperiment_name: runner-tests\njobs:\n  a:\n    type: command\n    code: src\n"
        "    command: python step.py --out ${{outputs.out}} --value 1\n"
        "    environment:\n      image: python\n      conda_file: ./conda.yaml\n"
        "    outputs:\n      out:\n        type: uri_folder\n")
    assert run(runs, work / "pipeline.yaml", "r1").exit_code == 0
    assert run(runs, work / "pipeline.yaml", "r2").exit_code == 0
    assert states(runs, "r2") == {"a": "reused"}
    (work / "conda.yaml").write_text("name: step\ndependencies:\n  - python=3.12\n")
    assert run(runs, work / "pipeline.yaml", "r3").exit_code == 0
    assert states(runs, "r3") == {"a": "done"}
    assert step(runs, "r3", "a")["environment"]["conda_file"]["dependencies"] == ["python=3.12"]


def test_steps_running_together_share_the_cores_unless_the_user_set_omp_num_threads(runs, monkeypatch):
    """On Azure ML each step has its node to itself; locally, steps started together split the cores that are free
    (slmops.threads) when they start."""
    from click.testing import CliRunner

    from slmops import threads as compute
    from slmops.cli import main

    busy = {"cores": 0.0}
    monkeypatch.setattr(compute, "available_cores", lambda: 8)
    monkeypatch.setattr(compute, "busy_cores", lambda: busy["cores"])
    monkeypatch.chdir(ASSETS)

    def threads(run_name: str, env: dict, *extra: str) -> dict:
        base = {"MLFLOW_TRACKING_URI": None, "MLFLOW_RUN_ID": None, "MLFLOW_DISABLE_TELEMETRY": "true"}
        result = CliRunner(env={**base, **env}).invoke(
            main, ["run", "threads.yaml", "--run-dir", str(runs / run_name), "--max-parallel", "2", *extra],
            catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return {n: (runs / run_name / n / "outputs" / "out" / "threads.txt").read_text().split()[1] for n in "abc"}

    assert threads("r1", {"OMP_NUM_THREADS": None}) == {"a": "4", "b": "4", "c": "8"}
    assert threads("r2", {"OMP_NUM_THREADS": "3"}, "--force-rerun") == {"a": "3", "b": "3", "c": "3"}
    busy["cores"] = 5.6   # other work holds most of the machine: 2 cores free
    assert threads("r3", {"OMP_NUM_THREADS": None}, "--force-rerun") == {"a": "1", "b": "1", "c": "2"}


def test_a_step_without_outputs_completes_and_is_reused(runs):
    first = run(runs, "no_outputs.yaml", "r1")
    assert first.exit_code == 0, first.output
    assert "hello | hello from a step without outputs" in first.output
    second = run(runs, "no_outputs.yaml", "r2")
    assert second.exit_code == 0, second.output
    assert states(runs, "r2") == {"hello": "reused"}
