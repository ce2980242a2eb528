"""Azure ML fidelity of `slmops run` (issue 10), each item reproduced by a pipeline of our own:

- environments are built from their definition (a conda file's pip section; layered on this Python, or fresh when
  a pin conflicts), once, under a lock, atomically; a step's `pip install` never reaches the runner's Python;
- every step and sweep trial gets its own working copy of the code snapshot (trials saving model/ into the cwd);
- uri_file outputs are files; azureml://datastores/... paths map to local stand-ins; ./outputs become artifacts;
- registered assets and URLs get a local stand-in or a message saying how to give one;
- job types that do not run locally are named with their nearest local alternative, without a traceback;
- the runner's records never clash with the params a script logs.

Environment builds run offline from wheels made on the spot (`--no-index --find-links`); the two tests that
install from PyPI skip only when PyPI cannot be reached (checked for real, once).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.runner.conftest import ASSETS, EXPERIMENT, invoke
from tests.runner.wheels import make_wheel

FIDELITY = ASSETS / "fidelity"
REGISTERED = "azureml:AzureML-sklearn-1.5-ubuntu22.04-py39-cpu@latest"


def run(runs: Path, pipeline, name: str, *extra):
    return invoke("run", pipeline, "--run-dir", runs / name, *extra)


def states(runs: Path, name: str) -> dict:
    return json.loads((runs / name / "run.json").read_text())["steps"]


def step(runs: Path, name: str, node: str) -> dict:
    return json.loads((runs / name / node / "step.json").read_text())


def probe(runs: Path, name: str, node: str) -> dict:
    return json.loads((runs / name / node / "outputs" / "out" / "probe.json").read_text())


def runner_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def pypi_unreachable() -> str | None:
    """Why PyPI cannot be used from here (None when it can): a real request to its simple index."""
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/").rstrip("/")
    try:
        with urllib.request.urlopen(f"{index}/pyjokes/", timeout=15) as response:
            response.read(512)
        return None
    except Exception as exc:  # any failure to reach it: DNS, proxy, TLS, HTTP error
        return f"{index} is unreachable ({exc})"


@pytest.fixture
def pypi() -> None:
    """Skip the test when PyPI cannot be reached (asked only when such a test runs)."""
    reason = pypi_unreachable()
    if reason is not None:
        pytest.skip(reason)


def env_project(tmp_path: Path, pip: list[str], commands: dict[str, str], python: str = "3.11") -> Path:
    """A pipeline whose jobs share one inline environment: an image and a conda file with `pip` lines."""
    project = tmp_path / "project"
    shutil.copytree(FIDELITY / "src", project / "src")
    conda = {"name": "step", "channels": ["conda-forge"], "dependencies": [f"python={python}", "pip", {"pip": pip}]}
    (project / "conda.yaml").write_text(yaml.safe_dump(conda))
    jobs = {name: {"type": "command", "code": "src", "command": command,
                   "environment": {"image": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04",
                                   "conda_file": "./conda.yaml"},
                   "outputs": {"out": {"type": "uri_folder"}}} for name, command in commands.items()}
    (project / "pipeline.yaml").write_text(yaml.safe_dump({"type": "pipeline", "experiment_name": EXPERIMENT,
                                                           "jobs": jobs}))
    return project / "pipeline.yaml"


@pytest.fixture
def wheels(tmp_path) -> Path:
    folder = tmp_path / "wheels"
    make_wheel(folder, "slmopstiny", "1.0")
    make_wheel(folder, "six", "1.15.0", code="__version__ = '1.15.0'\n")   # conflicts with the runner's six
    return folder


def offline(wheels: Path) -> list[str]:
    return ["--no-index", f"--find-links {wheels}"]


# ------------------------------------------------------------------------------------------------ environments

def test_a_missing_pip_requirement_is_built_once_layered_and_a_steps_pip_install_stays_in_its_step(
        tmp_path, runs, wheels):
    six_before = runner_version("six")
    probe_cmd = "python probe.py --out ${{outputs.out}} --names slmopstiny six click"
    pipeline = env_project(tmp_path, [*offline(wheels), "slmopstiny==1.0"], {
        "plain": probe_cmd,
        "installs": probe_cmd + f' --pip-install six==1.15.0 --pip-args "--no-index --find-links {wheels}"',
    })
    first = run(runs, pipeline, "r1", "--max-parallel", "2")
    assert first.exit_code == 0, first.output
    # Built once for both steps, layered on this Python: the step sees slmopstiny and the runner's own packages.
    assert first.output.count("installing slmopstiny==1.0 (layered, pip)") == 1
    plain, installs = probe(runs, "r1", "plain"), probe(runs, "r1", "installs")
    assert plain["versions"] == {"slmopstiny": "1.0", "six": six_before, "click": runner_version("click")}
    # The step that pip-installed a conflicting six got it in its own layer; nothing else did.
    assert installs["versions"]["six"] == "1.15.0"
    assert runner_version("six") == six_before and runner_version("slmopstiny") is None
    assert step(runs, "r1", "plain")["environment_mode"] == "layered"
    env_dir = Path(step(runs, "r1", "plain")["environment_folder"])
    assert json.loads((env_dir / "env.json").read_text())["resolved"] == {"slmopstiny": "1.0"}
    assert not list((env_dir / "venv").rglob("six.py")), "a step's pip install reached the shared environment"
    for node in ("plain", "installs"):
        assert "installing" not in (runs / "r1" / node / "user_logs" / "std_log.txt").read_text()
        assert "slmopstiny" in (runs / "r1" / node / "user_logs" / "env_build.log").read_text()
    assert not list((runs / ".slmops" / "work").iterdir()), "working copies are removed after the steps"

    second = run(runs, pipeline, "r2")
    assert second.exit_code == 0, second.output
    assert states(runs, "r2") == {"plain": "reused", "installs": "reused"}
    assert "installing" not in second.output
    listing = invoke("env", "list", "--store", runs / ".slmops")
    assert listing.exit_code == 0 and env_dir.name[:12] in listing.output and "slmopstiny==1.0" in listing.output


def test_a_pin_that_conflicts_with_this_python_builds_a_fresh_environment(tmp_path, runs, wheels):
    pipeline = env_project(tmp_path, [*offline(wheels), "six==1.15.0"],
                           {"fresh": "python probe.py --out ${{outputs.out}} --names six click"})
    result = run(runs, pipeline, "r1")
    assert result.exit_code == 0, result.output
    seen = probe(runs, "r1", "fresh")
    assert seen["versions"] == {"six": "1.15.0", "click": None}       # only what the definition declares
    assert seen["imports"]["click"] is False
    assert step(runs, "r1", "fresh")["environment_mode"] == "fresh"
    assert runner_version("six") != "1.15.0"


BUILD = """
import sys, time
from pathlib import Path
from slmops.runner import envs
store, wheels, delay = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
original = envs.Environments._run
def slow(self, argv, log, what):
    if "install" in what:
        print("slow install starts", flush=True)
        time.sleep(delay)
    return original(self, argv, log, what)
envs.Environments._run = slow
e = envs.Environments(store, envs.RunnerPython.current(), "pip")
plan = e.plan({"conda_file": {"dependencies": [{"pip": ["--no-index", "--find-links " + wheels, "slmopstiny==1.0"]}]}})
info = e.build(plan, lambda text: print(text, flush=True))
print("built", info["hash"], flush=True)
"""


def wait_for(proc: subprocess.Popen, line: str) -> None:
    for text in proc.stdout:
        if text.strip() == line:
            return
    raise AssertionError(f"the build ended (exit code {proc.wait()}) before printing {line!r}")


def test_builds_are_locked_and_atomic(tmp_path, wheels):
    """Two processes needing one environment build it once; a build killed half-way leaves nothing usable."""
    from slmops.runner.envs import Environments, RunnerPython

    store = tmp_path / "envs"
    argv = [sys.executable, "-c", BUILD, str(store), str(wheels)]
    first = subprocess.Popen(argv + ["2"], stdout=subprocess.PIPE, text=True)
    wait_for(first, "slow install starts")                           # it holds the lock now
    second = subprocess.run(argv + ["0"], capture_output=True, text=True, timeout=300)
    first_out = first.communicate(timeout=300)[0]
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert "waiting for another process" in second.stdout and "slow install" not in second.stdout
    (folder,) = [d for d in store.iterdir() if d.is_dir()]
    assert (folder / "build.log").read_text().count("# slmops: building") == 1
    assert first_out.split()[-1] == second.stdout.split()[-1] == folder.name

    shutil.rmtree(store)
    killed = subprocess.Popen(argv + ["60"], stdout=subprocess.PIPE, text=True)
    wait_for(killed, "slow install starts")
    killed.kill()
    killed.wait()
    envs = Environments(store, RunnerPython.current(), "pip")
    plan = envs.plan({"conda_file": {"dependencies": [{"pip": offline(wheels) + ["slmopstiny==1.0"]}]}})
    assert (envs.folder(plan) / "venv").exists() and envs.ready(plan) is None     # half-built: not usable
    info = envs.build(plan)
    assert info["resolved"] == {"slmopstiny": "1.0"} and envs.ready(plan) == info


def test_what_is_not_built_is_said_once_and_strict_makes_it_an_error(tmp_path, runs, wheels):
    """The public sample 5c_env_conda_file declares python=3.7.6 next to its pip packages; conda packages are not
    installed locally; a registered environment is not built here."""
    pipeline = env_project(tmp_path, [*offline(wheels), "slmopstiny==1.0"],
                           {"a": "python probe.py --out ${{outputs.out}} --names slmopstiny"}, python="3.7.6")
    doc = yaml.safe_load(pipeline.read_text())
    doc["jobs"]["a"]["environment"]["conda_file"] = "./conda.yaml"
    conda = yaml.safe_load((pipeline.parent / "conda.yaml").read_text())
    conda["dependencies"].insert(1, "numpy=1.21")
    (pipeline.parent / "conda.yaml").write_text(yaml.safe_dump(conda))
    doc["jobs"]["b"] = {"type": "command", "command": "echo registered", "environment": REGISTERED}
    pipeline.write_text(yaml.safe_dump(doc))

    result = run(runs, pipeline, "r1")
    assert result.exit_code == 0, result.output
    assert result.output.count("declares python=3.7.6") == 1
    assert "conda package(s) numpy=1.21 not installed here" in result.output
    assert "is a registered Azure ML environment" in result.output
    assert probe(runs, "r1", "a")["versions"] == {"slmopstiny": "1.0"}

    strict = run(runs, pipeline, "r2", "--env", "strict")
    assert strict.exit_code == 2
    for words in ("declares python=3.7.6", "numpy=1.21", "registered Azure ML environment"):
        assert any(words in line and "--env strict" in line for line in strict.stderr.splitlines()), words
    assert not (runs / "r2").exists()


def test_requirements_file_built_failed_build_fails_its_steps_missing_file_is_an_error(tmp_path, runs, wheels):
    pipeline = env_project(tmp_path, ["-r requirements.txt"],
                           {"a": "python probe.py --out ${{outputs.out}} --names slmopstiny"})
    (pipeline.parent / "requirements.txt").write_text("\n".join(offline(wheels) + ["slmopstiny==1.0"]) + "\n")
    result = run(runs, pipeline, "r1")
    assert result.exit_code == 0, result.output
    assert probe(runs, "r1", "a")["versions"] == {"slmopstiny": "1.0"}
    (pipeline.parent / "requirements.txt").write_text("\n".join(offline(wheels) + ["slmopsnothere==9.9"]) + "\n")
    failed = run(runs, pipeline, "r2")
    assert failed.exit_code == 1
    assert "step 'a' failed (its environment could not be built: pip install failed" in failed.stderr
    assert "No matching distribution found for slmopsnothere==9.9" in failed.stderr       # the build log's tail
    assert (runs / "r2" / "a" / "user_logs" / "env_build.log").exists()
    (pipeline.parent / "requirements.txt").unlink()
    missing = run(runs, pipeline, "r3")
    assert missing.exit_code == 2 and "`-r requirements.txt`: file not found" in missing.stderr


# ------------------------------------------------------------------------------------------------ working copies

def test_sweep_trials_saving_model_into_the_cwd_each_get_their_own_working_copy(runs):
    result = run(runs, FIDELITY / "sweep_cwd.yaml", "r1")
    assert result.exit_code == 0, result.output
    sweep = json.loads((runs / "r1" / "tune" / "sweep.json").read_text())
    assert [t["status"] for t in sweep["trials"]] == ["completed"] * 5
    assert sweep["best_params"] == {"x": 5}
    assert (runs / "r1" / "tune" / "outputs" / "model" / "model" / "weights.txt").read_text() == "5.0"
    for snapshot in (runs / ".slmops" / "snapshots").iterdir():
        assert not (snapshot / "model").exists(), "a trial wrote into the shared snapshot"
    assert not list((runs / ".slmops" / "work").iterdir())
    # The script logs its own param x: the runner's records of the trial's inputs are tags, so they never clash.
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{runs / '.slmops' / 'mlflow.db'}")
    trial = client.get_run(sweep["best_run_id"])
    assert trial.data.params["x"] == "5.00" and trial.data.tags["slmops.input.x"] == "5"
    assert trial.info.status == "FINISHED"


# ------------------------------------------------------------------------------------------------ outputs

def test_outputs_as_azure_ml_has_them(runs, tmp_path):
    store = tmp_path / "localstore"
    result = run(runs, FIDELITY / "outputs.yaml", "r1", "--datastore", f"localstore={store}")
    assert result.exit_code == 0, result.output
    # A uri_file output is a file (written with `>`), consumed as a file, linked from the run folder.
    assert (runs / "r1" / "outputs" / "greeting").read_text() == "world\n"
    assert "show | world" in result.output
    # Outputs with an azureml://datastores/<name>/paths/... path land in that datastore's stand-in, ${{name}} being
    # the run's name and ${{output_name}} the output's.
    assert (store / "r1" / "hello_world.txt").read_text() == "world\n"
    assert (store / "r1" / "out" / "note.txt").read_text() == "in a folder\n"
    # ./outputs exists in the working directory and becomes the step run's artifacts.
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{runs / '.slmops' / 'mlflow.db'}")
    art = step(runs, "r1", "artifacts")["mlflow_run_id"]
    assert sorted(a.path for a in client.list_artifacts(art, "outputs")) == ["outputs/sub", "outputs/world.txt"]
    assert (runs / "r1" / "artifacts" / "artifacts" / "outputs" / "sub" / "deep.txt").read_text() == "deep\n"
    # The script logged a param named like its input, with another value: no clash with the runner's records.
    params = client.get_run(step(runs, "r1", "params")["mlflow_run_id"])
    assert params.data.params == {"n": "1024.0"} and params.data.tags["slmops.input.n"] == "1024"

    again = run(runs, FIDELITY / "outputs.yaml", "r2", "--datastore", f"localstore={store}")
    assert again.exit_code == 0, again.output
    assert set(states(runs, "r2").values()) == {"reused"}
    assert (store / "r2" / "hello_world.txt").read_text() == "world\n"          # published for this run too
    assert (runs / "r2" / "artifacts" / "artifacts" / "outputs" / "world.txt").exists()


# ------------------------------------------------------------------------------------------------ assets

def test_registered_assets_and_datastore_inputs_need_local_stand_ins(runs, tmp_path, monkeypatch):
    result = run(runs, FIDELITY / "registered_input.yaml", "r1")
    assert result.exit_code == 2
    assert ("inputs.numbers: azureml:numbers:1 is a registered data asset (numbers, version 1) that a local run "
            "cannot fetch. Fix: pass a local stand-in with `--set numbers=./path`") in result.stderr
    assert '`assets: {"numbers:1": ./path}`' in result.stderr
    assert "datastore 'localstore'" in result.stderr and "--datastore localstore=DIR" in result.stderr
    assert "Traceback" not in result.output and not (runs / "r1").exists()

    store = tmp_path / "blob"
    (store / "shared" / "numbers").mkdir(parents=True)
    (store / "shared" / "numbers" / "one.txt").write_text("1")
    mapped = run(runs, FIDELITY / "registered_input.yaml", "r2", "--assets", FIDELITY / "stand_ins.yaml",
                 "--datastore", f"localstore={store}")
    assert mapped.exit_code == 0, mapped.output
    assert "show | 4.5" in mapped.output and "blob | one.txt" in mapped.output

    # The asset file is found as .slmops/assets.yaml in the current folder; it can map datastores too.
    work = tmp_path / "cwd"
    (work / ".slmops").mkdir(parents=True)
    (work / ".slmops" / "assets.yaml").write_text(yaml.safe_dump({
        "assets": {"numbers@latest": str(ASSETS / "data" / "value.txt"), "numbers": str(ASSETS / "data" / "value.txt")},
        "datastores": {"localstore": str(store)}}))
    monkeypatch.chdir(work)
    from click.testing import CliRunner

    from slmops.cli import main

    found = CliRunner(env={"MLFLOW_TRACKING_URI": None, "MLFLOW_RUN_ID": None}).invoke(
        main, ["run", str(FIDELITY / "registered_input.yaml"), "--run-dir", str(runs / "r3")], catch_exceptions=False)
    assert found.exit_code == 0, found.output


def test_public_http_data_is_downloaded_once_and_an_unreachable_url_is_not_called_an_asset(runs, tmp_path):
    import http.server

    served = tmp_path / "served"
    served.mkdir()
    (served / "numbers.csv").write_text("n\n7\n")
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            hits.append(args)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/numbers.csv"
        pipeline = tmp_path / "url.yaml"
        pipeline.write_text(yaml.safe_dump({
            "type": "pipeline", "experiment_name": EXPERIMENT,
            "inputs": {"table": {"type": "uri_file", "path": url}},
            "jobs": {"show": {"type": "command", "command": "cat ${{inputs.table}}", "environment": REGISTERED,
                              "inputs": {"table": "${{parent.inputs.table}}"}}}}))
        first = run(runs, pipeline, "r1")
        assert first.exit_code == 0, first.output
        assert "show | 7" in first.output
        second = run(runs, pipeline, "r2", "--force-rerun")
        assert second.exit_code == 0, second.output
        assert "show | 7" in second.output and len(hits) == 1         # the second run used the download
    finally:
        server.shutdown()
        server.server_close()   # the port refuses connections now (left open, a request would wait out the timeout)
    closed = run(runs, pipeline.parent / "url.yaml", "r3", "--set",
                 f"table=http://127.0.0.1:{server.server_address[1]}/elsewhere.csv")
    assert closed.exit_code == 2
    assert "could not be downloaded" in closed.stderr and "--set table=" in closed.stderr
    assert "Azure ML asset" not in closed.stderr and "registered" not in closed.stderr


# ------------------------------------------------------------------------------------------------ unsupported nodes

def test_job_types_that_do_not_run_locally_are_named_with_their_local_alternative(runs):
    result = run(runs, FIDELITY / "unsupported.yaml", "r1")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for words in ("jobs.auto: job type 'automl' does not run locally", "train with a command job",
                  "Its consumers (use_model)", "jobs.batch: job type 'parallel' does not run locally",
                  "Its consumers (after_batch)", "jobs.mpi.distribution.type: mpi is not supported locally",
                  "use `type: pytorch`"):
        assert words in result.stderr, words
    assert not (runs / "r1").exists()
    validate = invoke("validate", FIDELITY / "unsupported.yaml")
    assert validate.exit_code == 0, validate.output
    assert validate.stderr.count("warning:") == 3 and "Traceback" not in validate.output


# ------------------------------------------------------------------------------------------------ reuse and store

def test_a_rerun_says_which_part_of_its_key_changed(runs):
    assert run(runs, "pipe5.yaml", "r1").exit_code == 0
    second = run(runs, "pipe5.yaml", "r2", "--set", "m=20")
    assert second.exit_code == 0, second.output
    assert "d: runs again: input scale changed since its last run" in second.output
    assert "e: runs again: input a changed" in second.output
    assert "a: runs again" not in second.output


def test_prune_removes_by_age_or_count_but_never_an_entry_in_use(runs, tmp_path, wheels):
    import fcntl

    assert run(runs, "pipe5.yaml", "r1").exit_code == 0
    store = runs / ".slmops"
    keys = sorted(p.name for p in (store / "cache").iterdir())
    assert len(keys) == 5
    held = os.open(store / "cache" / keys[0] / "lock", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)                      # as a running step holds it
    try:
        dry = invoke("cache", "prune", "--store", store, "--keep-last", "0", "--dry-run")
        assert dry.exit_code == 0 and dry.output.count("would remove step") == 5
        assert len(list((store / "cache").iterdir())) == 5
        assert invoke("cache", "prune", "--store", store, "--older-than", "30").output.startswith("0 of")
        pruned = invoke("cache", "prune", "--store", store, "--keep-last", "0")
        assert pruned.exit_code == 0, pruned.output
        assert f"kept step {store / 'cache' / keys[0]}: in use" in pruned.output
        assert sorted(p.name for p in (store / "cache").iterdir()) == [keys[0]]
    finally:
        os.close(held)
    assert invoke("cache", "prune", "--store", store).exit_code == 2          # says what to prune

    pipeline = env_project(tmp_path, [*offline(wheels), "slmopstiny==1.0"], {"a": "echo built"})
    assert run(runs, pipeline, "r2").exit_code == 0
    (env_dir,) = list((store / "envs").iterdir())
    shared = os.open(env_dir / "lock", os.O_RDWR)
    fcntl.flock(shared, fcntl.LOCK_SH)                    # as a step using it holds it
    try:
        kept = invoke("env", "prune", "--store", store, "--keep-last", "0")
        assert "in use" in kept.output and env_dir.exists()
    finally:
        os.close(shared)
    assert invoke("env", "prune", "--store", store, "--keep-last", "0").exit_code == 0
    assert not env_dir.exists()


# ------------------------------------------------------------------------------------------------ docker

def test_docker_argv_mounts_paths_where_they_are():
    from slmops.runner.envs import docker_argv

    argv = docker_argv("python:3.11", "python x.py > /s/out/f", Path("/s/work/cwd"), {"MLFLOW_RUN_ID": "r"},
                       ["/s", "/data", "/s"])
    assert argv[:4] == ["docker", "run", "--rm", "--init"]
    assert argv[argv.index("-w") + 1] == "/s/work/cwd"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-v"] == ["/data:/data", "/s:/s"]
    assert argv[-4:] == ["python:3.11", "bash", "-c", "python x.py > /s/out/f"]


def test_env_docker_runs_a_step_in_its_image(runs, tmp_path):
    """Tested only where Docker runs (not on the CI machine this was written on: no Docker daemon there)."""
    from slmops.runner.envs import docker_available

    if not docker_available():
        pytest.skip("Docker is not available here")
    pipeline = tmp_path / "docker.yaml"
    pipeline.write_text(yaml.safe_dump({
        "type": "pipeline", "experiment_name": EXPERIMENT,
        "jobs": {"a": {"type": "command", "command": "python -c 'import sys; print(sys.version)' > ${{outputs.out}}/v",
                       "environment": {"image": "python:3.12-slim"}, "outputs": {"out": {"type": "uri_folder"}}}}}))
    result = run(runs, pipeline, "r1", "--env", "docker")
    assert result.exit_code == 0, result.output
    assert (runs / "r1" / "a" / "outputs" / "out" / "v").read_text().startswith("3.12")


# ------------------------------------------------------------------------------------------------ from PyPI

def test_pyjokes_from_a_conda_files_pip_section_as_in_5c_env_conda_file(tmp_path, runs, pypi):
    assert runner_version("pyjokes") is None, "pyjokes must not be installed in the runner's Python for this test"
    pipeline = env_project(tmp_path, ["pyjokes"], {
        "joke": "python -c 'import pyjokes; print(pyjokes.get_joke())' && python probe.py --out ${{outputs.out}} "
                "--names pyjokes"}, python="3.7.6")
    result = run(runs, pipeline, "r1")
    assert result.exit_code == 0, result.output
    assert probe(runs, "r1", "joke")["versions"]["pyjokes"]
    assert runner_version("pyjokes") is None


def test_a_steps_pip_install_of_a_conflicting_version_from_pypi_leaves_the_runner_unchanged(runs, tmp_path, pypi):
    before = runner_version("six")
    pipeline = tmp_path / "pip.yaml"
    shutil.copytree(FIDELITY / "src", tmp_path / "src")
    pipeline.write_text(yaml.safe_dump({
        "type": "pipeline", "experiment_name": EXPERIMENT,
        "jobs": {"careless": {"type": "command", "code": "src", "environment": REGISTERED,
                              "command": "python probe.py --out ${{outputs.out}} --names six --pip-install six==1.15.0",
                              "outputs": {"out": {"type": "uri_folder"}}}}}))
    result = run(runs, pipeline, "r1")
    assert result.exit_code == 0, result.output
    assert probe(runs, "r1", "careless")["versions"]["six"] == "1.15.0"
    assert runner_version("six") == before
    check = subprocess.run([sys.executable, "-c", "import six; print(six.__version__)"], capture_output=True,
                           text=True)
    assert check.stdout.strip() == before
