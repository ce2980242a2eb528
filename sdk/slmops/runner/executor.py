"""Run a resolved `Graph` on this machine with Azure ML's step semantics.

The loop, in plain view (`execute`): every pass finishes the steps whose processes ended, then walks the nodes in
topological order and starts each one whose upstream steps are done, up to `max_parallel` at a time. Starting a
step means: resolve its inputs (literals, local paths, upstream outputs), compute its reuse key, and either
reuse a finished step with that key or launch the command. After a failure nothing new starts; the running
steps finish, and the run exits non-zero naming the failed step and showing the tail of its log.

A step whose environment needs building (`slmops.runner.envs`) waits, in state "building", for its environment's
build, which runs in a thread (once per environment, whatever number of steps need it); its reuse key includes
what the environment resolved to.

A step's process: `bash -c <command>` in a fresh working copy of the component's `code:` snapshot
(`slmops.runner.workspace`), with `./outputs` present, its own throw-away Python layer first on PATH (`python`,
`pip`: what it pip-installs stays there), and MLFLOW_TRACKING_URI, MLFLOW_RUN_ID, MLFLOW_EXPERIMENT_ID,
AZUREML_RUN_ID and AZUREML_ROOT_RUN_ID set, and the lineage variables (`slmops.pipeline.lineage`: the project's git
commit and dirty flag read once when the run started, the component versions, the runs that produced its inputs).
Under `distribution: pytorch` it is started `process_count_per_instance` times, each copy with RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, NODE_RANK, MASTER_ADDR and MASTER_PORT set, as Azure ML's launcher does on one node.
When it ends, `./outputs` becomes the artifacts of its MLflow run and the working copy is removed (a failed step's
is kept for a look; `slmops cache prune` removes it later).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from slmops import progress, threads
from slmops.errors import UserError
from slmops.io import write_json
from slmops.pipeline.checks import INPUT_REF, OPTIONAL, format_value
from slmops.pipeline.graph import Graph, Node, toposort
from slmops.pipeline import lineage
from slmops.runner import shell
from slmops.runner.assets import StandIns
from slmops.runner.display import Display
from slmops.runner.envs import BuildError, Environments, Plan, docker_argv
from slmops.runner.store import Store, key_parts, step_key
from slmops.runner.trial import Trial
from slmops.runner.workspace import Workspace

TAIL_LINES = 25
KILL_GRACE_SECONDS = 5.0
POLL_SECONDS = 0.05


def render_command(template: str, values: dict, outputs: dict, where: str = "command") -> str:
    """Fill `${{inputs.x}}`/`${{outputs.y}}`; drop each `$[[ ... ]]` whose inputs are not given. Every value is
    escaped for the shell where it stands (`slmops.runner.shell`): it reaches the step byte for byte."""
    def optional(match):
        inner = match.group(1)
        return "" if any(values.get(name) is None for name in INPUT_REF.findall(inner)) else inner

    def value_of(kind: str, name: str) -> str:
        if kind == "outputs":
            if name not in outputs:
                raise UserError(f"{where}: the command names an unknown output '{name}'. "
                                "Fix: declare it under the component's outputs.")
            return str(outputs[name])
        if values.get(name) is None:
            raise UserError(f"{where}: input '{name}' has no value but the command uses it outside $[[ ]]. "
                            "Fix: give the input a value, or wrap its part of the command in $[[ ... ]].")
        return format_value(values[name])

    return shell.fill(OPTIONAL.sub(optional, template), value_of)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SHELL_SYNTAX = {"&&", "||", "|", ";", "&", ">", ">>", "<", "2>", "2>&1"}


def torchrun_argv(command: str, processes: int, port: int, python: str = sys.executable) -> list[str] | None:
    """`python -m pkg ARGS` / `python script.py ARGS` as a torchrun launch of `processes` workers on this node.

    torchrun gives each worker RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR and
    MASTER_PORT — the variables Azure ML's launcher sets — and ends the others when one fails. A command that
    needs a shell (pipes, `&&`, redirections, variables) returns None: the caller starts the copies itself.
    """
    try:
        tokens = shlex.split(command)
    except ValueError:
        return None
    if len(tokens) < 2 or not re.fullmatch(r"python(3(\.\d+)?)?", os.path.basename(tokens[0])):
        return None
    if any(t in SHELL_SYNTAX or "$" in t or "`" in t for t in tokens):
        return None
    target = tokens[1:]
    if target[0] == "-m" and len(target) >= 2:
        target = ["-m", *target[1:]]
    elif target[0].startswith("-"):
        return None
    return [python, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(processes),
            "--master-addr", "127.0.0.1", "--master-port", str(port), *target]


class StepProcess:
    """The process(es) of one step: output streamed to the display with a prefix and appended to the log."""

    def __init__(self, prefix: str, command: str, cwd: Path, env: dict, log_path: Path, display: Display,
                 processes: int = 1, distributed: bool = False, lock_fds: tuple[int, ...] = (),
                 python: str = sys.executable, wrap=None, watch=None):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log_path, "ab")
        self.log_lock = threading.Lock()
        self.display = display
        self.procs: list[subprocess.Popen] = []
        self.threads: list[threading.Thread] = []
        self.code: int | None = None
        self.watch = watch
        port = _free_port() if distributed else None
        argv = torchrun_argv(command, processes, port, python) if distributed and wrap is None else None
        for rank in range(1 if argv else processes):
            proc_env = dict(env)
            if argv:                 # torchrun sets RANK/LOCAL_RANK/WORLD_SIZE/... for each worker itself
                proc_env.update(NODE_RANK="0")
            elif distributed:        # not a plain `python ...` command: start the copies ourselves, like Azure ML
                proc_env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(processes),
                                LOCAL_WORLD_SIZE=str(processes), NODE_RANK="0", GROUP_RANK="0",
                                MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            launch = argv or (wrap(command, proc_env) if wrap else ["bash", "-c", command])
            proc = subprocess.Popen(launch, cwd=cwd, env=proc_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                    pass_fds=tuple(fd for fd in lock_fds if fd is not None))
            if watch is not None:
                watch.group(proc.pid)           # its own session: the process group id is its pid
            name = f"{prefix}[{rank}]" if processes > 1 and not argv else prefix
            thread = threading.Thread(target=self._pump, args=(proc, name), daemon=True)
            thread.start()
            self.procs.append(proc)
            self.threads.append(thread)

    def _pump(self, proc: subprocess.Popen, name: str) -> None:
        for raw in iter(proc.stdout.readline, b""):
            with self.log_lock:
                self.log.write(raw)
                self.log.flush()
            self.display.line(name, raw.decode("utf-8", "replace").rstrip("\n"))
        proc.stdout.close()

    def poll(self) -> int | None:
        """The step's exit code once every process ended (the first failure ends the others); None before."""
        if self.code is not None:
            return self.code
        codes = [p.poll() for p in self.procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            self.kill()
            self.code = failed[0]
        elif all(c == 0 for c in codes):
            self.code = 0
        else:
            return None
        for thread in self.threads:
            thread.join(timeout=5)
        self.log.close()
        if self.watch is not None:
            for proc in self.procs:
                self.watch.ended(proc.pid)
        return self.code

    def kill(self, grace: float = KILL_GRACE_SECONDS) -> None:
        """SIGTERM each process group of the step (it may save what it can), SIGKILL what is left after `grace`."""
        live = [proc for proc in self.procs if proc.poll() is None]
        for proc in live:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while any(proc.poll() is None for proc in live) and time.monotonic() < deadline:
            time.sleep(0.05)
        for proc in live:
            try:
                os.killpg(proc.pid, signal.SIGKILL)      # the group: children the step left behind too
            except ProcessLookupError:
                pass
        for proc in self.procs:
            proc.wait()


@dataclass
class Active:
    """A step that is running: its handle (StepProcess or SweepHandle), reuse key, MLflow run, working copy."""

    node: Node
    key: str
    run_id: str
    handle: object
    outputs: dict[str, Path]
    lock_fd: int
    env_fd: int | None = None
    work: Workspace | None = None
    started: float = field(default_factory=time.monotonic)
    timed_out: bool = False


class EnvBuild:
    """One environment's build in a thread (`Environments.build`), shared by every step that needs it."""

    def __init__(self, envs: Environments, plan: Plan, say):
        self.plan = plan
        self.result: dict | None = None
        self.error = ""
        self.thread = threading.Thread(target=self._run, args=(envs, say), daemon=True)
        self.thread.start()

    def _run(self, envs: Environments, say) -> None:
        try:
            self.result = envs.build(self.plan, say)
        except BuildError as exc:
            self.error = str(exc)
        except Exception as exc:      # a bug or an OS error: the steps fail with it, the run goes on to its end
            self.error = f"{type(exc).__name__}: {exc}"

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()


class Executor:
    def __init__(self, graph: Graph, run_dir: Path, store: Store, tracker, display: Display, max_parallel: int,
                 force_rerun: bool, pipeline_file: str = "", envs: Environments | None = None,
                 plans: dict[str, Plan] | None = None, stand_ins: StandIns | None = None, watch=None,
                 git: dict | None = None):
        self.graph = graph
        self.git = git              # lineage.git_state() of the project, read before any code was snapshotted
        self.watch = watch          # slmops.runner.watchdog.Client: stops the steps if this process is SIGKILLed
        self.run_dir = Path(run_dir).resolve()
        self.store = store
        self.tracker = tracker
        self.display = display
        self.max_parallel = max(1, int(max_parallel))
        self.sharing = 1            # how many steps share the cores at the moment a step starts
        self._free = (-1.0, 0)      # (monotonic time, free cores) of the last sample: steps starting together share it
        self.force_rerun = force_rerun or graph.force_rerun
        self.pipeline_file = pipeline_file
        if envs is None:
            from slmops.runner.envs import RunnerPython

            envs = Environments(store.root / "envs", RunnerPython.current())
        self.envs = envs
        self.plans = plans if plans is not None else {n: envs.plan(node.environment)
                                                      for n, node in graph.nodes.items()}
        self.stand_ins = stand_ins or StandIns(store.root)
        self.order = toposort({name: node.upstream() for name, node in graph.nodes.items()})
        self.state = {name: "pending" for name in self.order}
        self.outputs: dict[str, dict[str, Path]] = {}
        self.hashes: dict[str, dict[str, str]] = {}
        self.running: dict[str, Active] = {}
        self.failed: list[tuple[str, str]] = []       # (node, reason)
        self.code_hashes: dict[str | None, str] = {}
        self.builds: dict[str, EnvBuild] = {}         # environment hash -> its build
        self.built: dict[str, dict] = {}              # environment hash -> env.json
        self.build_errors: dict[str, str] = {}        # environment hash -> why its build failed
        self.kept_work: dict[str, Path] = {}          # failed node -> its working copy
        self.removals: list[threading.Thread] = []    # working copies being removed
        self.parent_params: dict[str, str] = {}       # <node>.<input> -> value, params of the pipeline's run
        self.parent_run = ""
        self.source_runs: dict[str, str] = {}         # node -> the run that made its outputs (sweep: best trial)
        self.components = {n: node.component_ref for n, node in graph.nodes.items() if node.component_ref}

    @property
    def run_name(self) -> str:
        """The run's name, as Azure ML's ${{name}} of a pipeline job: the run folder's name."""
        return self.run_dir.name

    # ------------------------------------------------------------------------------------------------ the loop
    def execute(self) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        previous_uri = os.environ.get("MLFLOW_TRACKING_URI")
        os.environ["MLFLOW_TRACKING_URI"] = self.tracker.uri          # read by the sweep's metric reader
        self.parent_run = self.tracker.start_run(
            self.graph.name, tags={"slmops.kind": "pipeline", "slmops.pipeline": self.pipeline_file,
                                   "slmops.run_dir": str(self.run_dir),
                                   **({"mlflow.source.git.commit": self.git["commit"],
                                       "slmops.git_dirty": str(self.git["dirty"]).lower()} if self.git else {})})
        from slmops.runner.envs import format_notices

        for text in format_notices(self.plans):
            self.display.notice(text)
        status = "FAILED"
        try:
            while True:
                for name, active in list(self.running.items()):
                    code = active.handle.poll()
                    timeout = active.node.timeout
                    if code is None and timeout and time.monotonic() - active.started > float(timeout):
                        active.handle.kill()
                        code = active.handle.poll()
                        active.timed_out = True
                    if code is not None:
                        del self.running[name]
                        self._finish(name, active, code)
                for env_hash, build in list(self.builds.items()):
                    if build.done:
                        del self.builds[env_hash]
                        if build.result is not None:
                            self.built[env_hash] = build.result
                        else:
                            self._build_failed(build)
                if not self.failed:
                    # How many steps are about to share this machine's cores (see _env).
                    ready = sum(1 for n in self.order if self.state[n] in ("pending", "building") and self._ready(n))
                    self.sharing = max(1, min(self.max_parallel, len(self.running) + ready))
                    for name in self.order:
                        if len(self.running) >= self.max_parallel:
                            break
                        if self.state[name] in ("pending", "building") and self._ready(name):
                            self._start(self.graph.nodes[name])
                if not self.running and not self.builds:
                    break
                time.sleep(POLL_SECONDS)
            if not self.failed:
                status = "FINISHED"
                self._link_pipeline_outputs()
            return 0 if not self.failed else 1
        except BaseException:
            status = "KILLED"
            self.envs.kill_builds()
            for name, active in self.running.items():
                active.handle.kill()
                self._release(active)
                self.tracker.end_run(active.run_id, "KILLED")
                self._record(active.node, active.key, active.run_id, "killed", None, "the runner was stopped")
                self._set(name, "killed")
            raise
        finally:
            if previous_uri is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = previous_uri
            for name in self.order:
                if self.state[name] in ("pending", "building"):
                    self._set(name, "skipped")
            if self.parent_params:
                self.tracker.log_params(self.parent_run, self.parent_params)
            self.tracker.end_run(self.parent_run, status)
            self.store.save_hashes()
            for remover in self.removals:
                remover.join()
            write_json(self.run_dir / "run.json", {
                "pipeline": self.pipeline_file, "status": status, "mlflow_run_id": self.parent_run,
                "tracking_uri": self.tracker.uri, "steps": self.state,
                "failed": [{"node": n, "reason": r} for n, r in self.failed]})

    def _ready(self, name: str) -> bool:
        node = self.graph.nodes[name]
        if any(self.state[up] not in ("done", "reused") for up in node.upstream()):
            return False
        return True

    def _set(self, name: str, state: str, detail: str = "") -> None:
        self.state[name] = state
        self.display.state(name, state, detail)

    # ------------------------------------------------------------------------------------------------ environments
    def _environment(self, node: Node) -> tuple[Plan, dict | None] | None:
        """The node's environment plan and, for a built one, its env.json; None while it is being built."""
        plan = self.plans[node.name]
        if not plan.needs_build:
            return plan, None
        if plan.hash in self.build_errors:
            self.failed.append((node.name, f"its environment could not be built: {self.build_errors[plan.hash]}"))
            self._set(node.name, "failed", self.failed[-1][1])
            return None
        if plan.hash not in self.built:
            ready = self.envs.ready(plan) if plan.hash not in self.builds else None
            if ready is None:
                if plan.hash not in self.builds:
                    self.builds[plan.hash] = EnvBuild(self.envs, plan, self.display.notice)
                if self.state[node.name] != "building":
                    self._set(node.name, "building", f"environment {plan.hash[:12]} ({plan.mode}: "
                                                     f"{' '.join(plan.install)})")
                return None
            self.built[plan.hash] = ready
        return plan, self.built[plan.hash]

    def _build_failed(self, build: EnvBuild) -> None:
        self.build_errors[build.plan.hash] = build.error
        for name in self.order:
            if self.state[name] == "building" and self.plans[name].hash == build.plan.hash:
                reason = f"its environment could not be built: {build.error}"
                self._copy_build_log(name, build.plan)
                self.failed.append((name, reason))
                self._set(name, "failed", reason)

    def _copy_build_log(self, name: str, plan: Plan) -> None:
        """The environment's build log among the step's user_logs (built now or by an earlier run)."""
        log = self.envs.folder(plan) / "build.log"
        if plan.venv and log.exists():
            target = self.run_dir / name / "user_logs" / "env_build.log"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, target)

    # ------------------------------------------------------------------------------------------------ one step
    def _resolve_inputs(self, node: Node) -> tuple[dict, dict]:
        """(values for the command, identity for the reuse key) of the node's inputs."""
        values, identity = {}, {}
        for name, binding in sorted(node.inputs.items()):
            if "value" in binding:
                values[name] = binding["value"]
                identity[name] = {"value": format_value(binding["value"])}
            elif "path" in binding:
                values[name] = binding["path"]
                identity[name] = {"sha": self.store.hash_path(binding["path"]), "type": binding.get("type")}
            elif "node" in binding:
                values[name] = str(self.outputs[binding["node"]][binding["output"]])
                identity[name] = {"sha": self.hashes[binding["node"]][binding["output"]]}
        return values, identity

    def _code_hash(self, code: str | None) -> str:
        if code not in self.code_hashes:
            self.code_hashes[code] = self.store.hash_code(code) if code else "no-code"
        return self.code_hashes[code]

    def _start(self, node: Node) -> None:
        environment = self._environment(node)
        if environment is None:
            return                                    # its environment is being built
        plan, built = environment
        values, identity = self._resolve_inputs(node)
        code_hash = self._code_hash(node.code)
        env_identity = self.envs.identity(plan, built)
        parts = key_parts(node, code_hash, identity, env_identity)
        key = step_key(parts)
        if any(active.key == key for active in self.running.values()):
            return           # an identical step is running in this pipeline: reuse it once it finished
        node_dir = self.run_dir / node.name
        log_path = node_dir / "user_logs" / "std_log.txt"
        if log_path.exists():
            log_path.unlink()
        self._copy_build_log(node.name, plan)
        inputs = {f"slmops.input.{k}": format_value(v) for k, v in values.items()}
        tags = {"slmops.node": node.name, "slmops.cache_key": key, "slmops.kind": node.kind,
                "slmops.environment": plan.mode + (f" {plan.hash[:12]}" if plan.hash else ""), **inputs}
        self.parent_params.update({f"{node.name}.{k}": format_value(v) for k, v in values.items()})
        force = self.force_rerun or not node.is_deterministic
        finished = None if force else self.store.finished(key)
        if finished is not None:
            run_id = self.tracker.start_run(node.name, self.parent_run, dict(tags, **{"slmops.reused": "true",
                                            "slmops.reused_from": finished.get("run_id", "")}))
            self.tracker.end_run(run_id, "FINISHED")
            self.outputs[node.name] = self.store.done_outputs(key, node.outputs)
            self.hashes[node.name] = finished["output_hashes"]
            self.source_runs[node.name] = finished.get("source_run_id") or finished.get("run_id", "")
            log_path.parent.mkdir(parents=True, exist_ok=True)
            cached_log = self.store.step_dir(key) / "std_log.txt"
            log_path.write_text(f"[slmops] reused the outputs of step key {key} (MLflow run "
                                f"{finished.get('run_id')}); its log follows.\n"
                                + (cached_log.read_text(errors="replace") if cached_log.exists() else ""))
            self._link_artifacts(node.name, finished.get("run_id", ""))
            self._publish(node)
            self._record(node, key, finished.get("run_id", run_id), "reused", values, parts=parts,
                         env_identity=env_identity, plan=plan)
            self._remember(node, key, parts, env_identity)
            self._set(node.name, "reused")
            return

        lock_fd = self.store.lock(key)
        if lock_fd is None:
            reason = (f"another process (pid {self.store.lock_holder(key)}) is running this very step: a concurrent "
                      "`slmops run`, or a step left behind by a killed one. Wait for it to end or kill it, then re-run")
            self.failed.append((node.name, reason))
            self._set(node.name, "failed", reason)
            return
        self._why_rerun(node, key, parts, env_identity, force)
        run_id = self.tracker.start_run(node.name, self.parent_run, dict(tags, **{"slmops.reused": "false"}))
        env_fd = self.envs.hold(plan)
        outputs = self.store.attempt_outputs(key, node.outputs)
        snapshot = self.store.snapshot(node.code, code_hash)
        self.store.touch(snapshot)
        if node.kind == "sweep":
            handle = SweepHandle(self, node, key, run_id, values, snapshot, plan, (lock_fd, env_fd))
            work = None
        else:
            work = Workspace.create(self.store.root / "work", snapshot, f"{key[:16]}-{node.name}")
            env = self._env(run_id, node, plan, work)
            command = render_command(node.command, values, outputs, f"jobs.{node.name}.command")
            dist = node.distribution or {}
            processes = int(dist.get("process_count_per_instance") or 1) if dist.get("type") == "pytorch" else 1
            handle = StepProcess(node.name, command, work.cwd, env, log_path, self.display, processes,
                                 distributed=dist.get("type") == "pytorch", lock_fds=(lock_fd, env_fd),
                                 python=str(work.layer / "bin" / "python"), wrap=self._docker(plan, work, values, node),
                                 watch=self.watch)
        self.running[node.name] = Active(node, key, run_id, handle, outputs, lock_fd, env_fd, work)
        self._record(node, key, run_id, "running", values, parts=parts, env_identity=env_identity, plan=plan)
        self._remember(node, key, parts, env_identity)
        self._set(node.name, "running")

    def _env(self, run_id: str, node: Node, plan: Plan, work: Workspace) -> dict:
        env = dict(os.environ)
        input_runs = {name: self.source_runs[b["node"]] for name, b in node.inputs.items()
                      if "node" in b and self.source_runs.get(b["node"])}
        env.update(lineage.step_env(self.git, self.components, input_runs))
        env.update({k: str(v) for k, v in (node.environment_variables or {}).items()})
        env.update(MLFLOW_TRACKING_URI=self.tracker.uri, MLFLOW_RUN_ID=run_id,
                   MLFLOW_EXPERIMENT_ID=str(self.tracker.experiment_id), AZUREML_RUN_ID=run_id,
                   AZUREML_ROOT_RUN_ID=self.parent_run, PYTHONUNBUFFERED="1")
        env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        if self.display.live:  # the live table shows a step's latest progress line: one every 5 s, not 30
            env.setdefault(progress.INTERVAL_ENV, "5")
        # `python`/`pip` of a command are the step's own layer over its environment, whatever PATH holds: what it
        # pip-installs lands in the layer, never in the runner's environment or another step's.
        bin_dir = self.envs.step_layer(plan, work.layer)
        env_bin = self.envs.env_bin(plan)
        env["PATH"] = os.pathsep.join([str(bin_dir), *([str(env_bin)] if env_bin else []),
                                       env.get("PATH") or os.defpath])
        env["VIRTUAL_ENV"] = str(work.layer)
        env.pop("PYTHONHOME", None)
        # On Azure ML each step has its node's cores to itself; here up to max_parallel steps share this machine's,
        # with whatever else runs on it, and thread pools that oversubscribe the cores slow a step tens of times
        # (bench/contention.py). Give each step its share of the cores free now unless the user (or the job's
        # environment_variables) chose; the step reads it (slmops.threads).
        if "OMP_NUM_THREADS" not in env:
            if time.monotonic() - self._free[0] > 1.0:  # a sample takes 0.25 s: one per round of starts
                self._free = (time.monotonic(), threads.choose({})[0])
            env["OMP_NUM_THREADS"] = str(max(1, self._free[1] // self.sharing))
        return env

    def _docker(self, plan: Plan, work: Workspace, values: dict, node: Node):
        """For --env docker: a launcher running the command in the environment's image (None: run it here)."""
        if plan.mode != "docker":
            return None
        image = self.built[plan.hash]["image"]
        mounts = [str(self.store.root), str(work.root)]
        mounts += [str(Path(v)) for v in values.values() if isinstance(v, str) and os.path.isabs(v)
                   and os.path.exists(v)]
        keep = {"MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "AZUREML_RUN_ID",
                "AZUREML_ROOT_RUN_ID", "PYTHONUNBUFFERED", "OMP_NUM_THREADS", "MLFLOW_DISABLE_TELEMETRY", "RANK",
                "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
                lineage.GIT_COMMIT, lineage.GIT_DIRTY, lineage.COMPONENTS, lineage.INPUT_RUNS}
        extra = set(node.environment_variables or {})

        def wrap(command: str, env: dict) -> list[str]:
            return docker_argv(image, command, work.cwd, {k: v for k, v in env.items() if k in keep | extra}, mounts)
        return wrap

    def _why_rerun(self, node: Node, key: str, parts: dict, env_identity: dict, force: bool) -> None:
        """Say which part of the reuse key changed since this node's last run (nothing when it never ran)."""
        last = self.store.last_run(self.pipeline_file, node.name)
        if not last or last.get("cache_key") == key:
            if force and last:
                why = "--force-rerun / force_rerun" if self.force_rerun else "is_deterministic: false"
                self.display.notice(f"{node.name}: runs again although nothing changed ({why})")
            return
        changed = []
        old = last.get("key_parts") or {}
        for part, value in parts.items():
            if part == "inputs":
                for name in sorted(set(value) | set(old.get("inputs") or {})):
                    if value.get(name) != (old.get("inputs") or {}).get(name):
                        changed.append(f"input {name}")
            elif old.get(part) != value:
                if part == "environment":
                    before, now = last.get("environment") or {}, env_identity
                    detail = _diff(before, now)
                    changed.append(f"environment ({detail})" if detail else "environment definition")
                else:
                    changed.append({"code": "code snapshot", "component": "component spec",
                                    "outputs": "output settings", "run_settings": "run settings"}.get(part, part))
        if changed:
            self.display.notice(f"{node.name}: runs again: {', '.join(changed)} changed since its last run "
                                f"({last.get('run_dir', '?')})")

    def _remember(self, node: Node, key: str, parts: dict, env_identity: dict) -> None:
        self.store.save_last_run(self.pipeline_file, node.name, {"cache_key": key, "key_parts": parts,
                                                                 "environment": env_identity,
                                                                 "run_dir": str(self.run_dir)})

    def _release(self, active: Active) -> None:
        os.close(active.lock_fd)
        if active.env_fd is not None:
            os.close(active.env_fd)

    def _finish(self, name: str, active: Active, code: int) -> None:
        try:
            self._conclude(name, active, code)
        finally:
            self._release(active)

    def _close_work(self, name: str, work: Workspace | None, run_id: str, keep: bool) -> None:
        """./outputs -> the run's artifacts; a step that changed a hard-linked snapshot file is named; the working
        copy is removed (kept when `keep`)."""
        if work is None:
            return
        outputs = work.outputs()
        if outputs is not None:
            self.tracker.log_artifacts(run_id, outputs, "outputs")
            self._link_artifacts(name, run_id)
        changed = work.check_links()
        if changed:
            self.display.notice(f"{name}: changed {', '.join(changed[:3])} of its code snapshot in place; the "
                                "snapshot was discarded and is rebuilt from the code folder next time")
        if keep:
            self.kept_work[name] = work.cwd
        else:                 # off the loop's path (tens of ms for a code folder); joined before the run ends
            remover = threading.Thread(target=work.remove, daemon=True)
            remover.start()
            self.removals.append(remover)

    def _link_artifacts(self, name: str, run_id: str) -> None:
        folder = self.tracker.artifact_dir(run_id) if run_id else None
        if folder is not None and folder.is_dir():
            _link(self.run_dir / name / "artifacts", folder)

    def _conclude(self, name: str, active: Active, code: int) -> None:
        node = active.node
        log_path = self.run_dir / name / "user_logs" / "std_log.txt"
        if code == 0 and node.kind == "sweep":
            code = active.handle.adopt_best(active.outputs)
        artifacts = active.outputs.get("artifacts")
        if code == 0 and artifacts is not None and active.work is not None and active.work.outputs() is not None:
            # Azure ML's default `artifacts` output of a job is its artifact folder: `./outputs/...` is readable
            # downstream as `${{parent.jobs.X.outputs.artifacts}}/outputs/...`
            shutil.copytree(active.work.outputs(), Path(artifacts) / "outputs", dirs_exist_ok=True)
        self._close_work(name, active.work, active.run_id, keep=code != 0)
        if code != 0:
            self.tracker.end_run(active.run_id, "FAILED")
            if active.timed_out:
                reason = f"killed after its limits.timeout of {node.timeout} s"
            elif node.kind == "sweep" and active.handle.error:
                reason = active.handle.error
            elif code < 0:
                reason = f"killed by signal {signal.Signals(-code).name}"
            else:
                reason = f"exit code {code}"
            self.failed.append((name, reason))
            self._record(node, active.key, active.run_id, "failed", None, reason)
            self._set(name, "failed", f"{reason}; log: {log_path}")
            return
        if log_path.exists():
            shutil.copyfile(log_path, self.store.step_dir(active.key) / "std_log.txt")
        source = active.handle.result.best_run_id if node.kind == "sweep" else active.run_id
        self.source_runs[name] = source
        self.outputs[name] = self.store.complete(active.key, {"node": name, "run_id": active.run_id,
                                                              "source_run_id": source, "finished": time.time()},
                                                 node.outputs)
        self.hashes[name] = self.store.finished(active.key)["output_hashes"]
        self.tracker.end_run(active.run_id, "FINISHED")
        for out_name, path in self.outputs[name].items():
            if node.outputs[out_name].get("type") == "uri_file" and not path.exists():
                self.display.notice(f"{name}: its uri_file output '{out_name}' was not written ({path})")
        self._publish(node)
        self._record(node, active.key, active.run_id, "done", None)
        self._set(name, "done")

    def _publish(self, node: Node) -> None:
        """Outputs whose settings name an azureml://datastores/... path are copied to that datastore's stand-in."""
        for out_name, spec in node.outputs.items():
            target = self.stand_ins.output_target(spec, self.run_name, out_name)
            source = self.outputs[node.name][out_name]
            if target is not None and source.exists():
                self.stand_ins.publish(source, target)
                self.display.line(node.name, f"[slmops] output {out_name} -> {target}")

    def _record(self, node: Node, key: str, run_id: str, status: str, values: dict | None, reason: str = "",
                parts: dict | None = None, env_identity: dict | None = None, plan: Plan | None = None) -> None:
        """`<run>/<node>/step.json` and `<run>/<node>/outputs/<name>` links to the cached outputs."""
        node_dir = self.run_dir / node.name
        step_file = node_dir / "step.json"
        record = json.loads(step_file.read_text()) if values is None and step_file.exists() else {}
        if values is not None:
            record = {"node": node.name, "cache_key": key, "key_parts": parts, "mlflow_run_id": run_id,
                      "inputs": {k: format_value(v) for k, v in values.items()},
                      "environment": node.environment, "environment_resolved": env_identity,
                      "environment_mode": plan.mode if plan else None,
                      "environment_folder": str(self.envs.folder(plan)) if plan and plan.venv else None,
                      "code": node.code}
        record.update(status=status, reason=reason)
        if node.name in self.kept_work:
            record["working_copy"] = str(self.kept_work[node.name])
        write_json(step_file, record)
        if status in ("done", "reused"):
            for out_name, path in self.outputs[node.name].items():
                _link(node_dir / "outputs" / out_name, path)

    def _link_pipeline_outputs(self) -> None:
        for out_name, binding in self.graph.outputs.items():
            _link(self.run_dir / "outputs" / out_name, self.outputs[binding["node"]][binding["output"]])

    def failure_report(self) -> str:
        lines = []
        for name, reason in self.failed:
            log_path = self.run_dir / name / "user_logs" / "std_log.txt"
            if not log_path.exists() and (self.run_dir / name / "user_logs" / "env_build.log").exists():
                log_path = self.run_dir / name / "user_logs" / "env_build.log"
            tail = log_path.read_text(errors="replace").splitlines()[-TAIL_LINES:] if log_path.exists() else []
            lines.append(f"step '{name}' failed ({reason}). Last lines of {log_path}:")
            lines += [f"  {line}" for line in tail]
            if name in self.kept_work:
                lines.append(f"  its working directory is kept: {self.kept_work[name]}")
        skipped = [n for n, s in self.state.items() if s == "skipped"]
        if skipped:
            lines.append(f"not started: {', '.join(skipped)}")
        return "\n".join(lines)


class SweepHandle:
    """A sweep node in progress: `slmops.runner.sweep.run_sweep` in a thread, its trials as step processes, each
    in its own working copy of the snapshot."""

    def __init__(self, executor: Executor, node: Node, key: str, run_id: str, values: dict, snapshot: Path,
                 plan: Plan, lock_fds: tuple):
        self.ex, self.node, self.key, self.run_id = executor, node, key, run_id
        self.values, self.snapshot, self.plan, self.lock_fds = values, snapshot, plan, lock_fds
        self.result = None
        self.error = ""
        self.trials: list[Trial] = []
        self.finished = threading.Event()
        self.stop = threading.Event()
        spec = dict(node.sweep, name=node.name, trial=node.component, inputs=dict(values),
                    outputs=dict(node.outputs))
        self.thread = threading.Thread(target=self._run, args=(spec,), daemon=True)
        self.thread.start()

    def _run(self, spec: dict) -> None:
        from slmops.runner.sweep import run_sweep

        try:
            self.result = run_sweep(spec, self.start_trial, lambda msg: self.ex.display.line(self.node.name, msg),
                                    stop=self.stop)
        except UserError as exc:
            self.error = str(exc)
        except Exception as exc:       # a bug in a trial launcher or the sweep: report it as the step's failure
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.finished.set()

    def trial_dir(self, index: int) -> Path:
        return self.ex.store.step_dir(self.key) / "trials" / str(index)

    def start_trial(self, index: int, params: dict) -> Trial:
        from slmops.runner.store import output_path

        values = dict(self.values, **params)
        trial_dir = self.trial_dir(index)
        outputs = {}
        for name, spec in self.node.outputs.items():
            (trial_dir / name).mkdir(parents=True, exist_ok=True)
            outputs[name] = output_path(trial_dir, name, spec)
        run_id = self.ex.tracker.start_run(
            f"{self.node.name}/trial-{index}", self.run_id,
            {"slmops.node": self.node.name, "slmops.trial": str(index), "slmops.kind": "trial",
             **{f"slmops.input.{k}": format_value(v) for k, v in values.items()}})
        command = render_command(self.node.command, values, outputs, f"jobs.{self.node.name}.trial")
        log_path = self.ex.run_dir / self.node.name / "trials" / str(index) / "user_logs" / "std_log.txt"
        work = Workspace.create(self.ex.store.root / "work", self.snapshot,
                                f"{self.key[:16]}-{self.node.name}-trial-{index}")
        proc = StepProcess(f"{self.node.name}[{index}]", command, work.cwd,
                           self.ex._env(run_id, self.node, self.plan, work), log_path,
                           self.ex.display, lock_fds=self.lock_fds, python=str(work.layer / "bin" / "python"),
                           wrap=self.ex._docker(self.plan, work, values, self.node), watch=self.ex.watch)
        ended = []

        def end(code: int, status: str) -> None:
            ended.append(code)
            self.ex._close_work(f"{self.node.name}/trials/{index}", work, run_id, keep=False)
            self.ex.tracker.end_run(run_id, status)

        def poll() -> int | None:
            code = proc.poll()
            if code is not None and not ended:
                end(code, "FINISHED" if code == 0 else "FAILED")
            return code

        def kill() -> None:
            proc.kill()
            if not ended:
                end(-9, "KILLED")

        trial = Trial(index, dict(params), run_id, outputs, poll, kill)
        self.trials.append(trial)
        return trial

    def poll(self) -> int | None:
        if not self.finished.is_set():
            return None
        return 0 if self.result is not None else 1

    def kill(self) -> None:
        self.stop.set()
        for trial in list(self.trials):
            trial.kill()
        self.finished.wait(timeout=30)

    def adopt_best(self, outputs: dict[str, Path]) -> int:
        """Make the best trial's outputs the node's outputs; record every trial. Returns 0."""
        result = self.result
        best = self.trial_dir(result.best_index)
        attempt = self.ex.store.step_dir(self.key) / "attempt"
        for name in outputs:
            shutil.rmtree(attempt / name, ignore_errors=True)
            os.replace(best / name, attempt / name)
        write_json(self.ex.run_dir / self.node.name / "sweep.json", {
            "best_index": result.best_index, "best_params": result.best_params, "best_metric": result.best_metric,
            "best_run_id": result.best_run_id, "trials": result.trials,
            "objective": dict((self.node.sweep or {}).get("objective") or {})})
        self.ex.tracker.set_tags(self.run_id, {"slmops.best_trial": result.best_index,
                                               "slmops.best_metric": result.best_metric,
                                               "slmops.best_run_id": result.best_run_id})
        shutil.rmtree(self.ex.store.step_dir(self.key) / "trials", ignore_errors=True)
        return 0


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        else:
            link.unlink()
    link.symlink_to(Path(target).resolve(), target_is_directory=Path(target).is_dir())


def _diff(before: dict, now: dict, prefix: str = "") -> str:
    """`six 1.16.0 -> 1.17.0, python cpython 3.11.7 -> ...` between two environment identities."""
    changes = []
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            inner = _diff(old, new, "")
            if inner:
                changes.append(inner)
        elif old != new:
            shown = ["(none)" if v is None else v for v in (old, new)]
            changes.append(f"{prefix}{key} {shown[0]} -> {shown[1]}")
    return ", ".join(changes)
