"""Run the Azure ML inference server on this machine, on loopback only, with key authentication.

    slmops serve ./outputs/model --port 8080                       # key generated and printed once
    SLMOPS_ENDPOINT_KEY=s3cret slmops serve models:/tone@production
    curl -H "Authorization: Bearer s3cret" -H "Content-Type: application/json" \
         -d '{"prompt": "Hello", "max_new_tokens": 8}' http://127.0.0.1:8080/score

`azmlinfsrv` binds 0.0.0.0 and checks no key (the Azure gateway does that). So instead of the `azmlinfsrv`
launcher we run the same thing it runs - gunicorn serving `azureml_inference_server_http.server.entry:app` with
our score.py - bound to 127.0.0.1 and wrapped in a key check (slmops.serving.app). Routes: POST /score,
GET /swagger.json (key needed), GET / , /health/live, /health/ready (open, as probes are).

Before anything is printed, the model's files are checked (safetensors headers, configs; for a registered version
the sha256 of every weight file recorded at registration) and the port is bound here and handed to gunicorn
(`--bind fd://N`), so a damaged model or a busy port is an exit 2 naming the file or the port. gunicorn runs as a
child; a model that still fails to load in the worker is an exit 2 with the reason (gunicorn's own code for that,
3, is the gate-failure code of slmops).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from slmops import threads, weights
from slmops.errors import UserError

SCORE_SCRIPT = Path(__file__).with_name("score.py")
HOST = "127.0.0.1"
KEY_ENV = "SLMOPS_ENDPOINT_KEY"
DEFAULT_THREADS = 16  # batcher.plan(): 2 x the default max batch (8) - one batch gathers while the other generates
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".onnx.data", ".pt")
DEFAULT_MAX_BODY_BYTES = 1_048_576
HOSTED_CARD = "hosted_model.json"  # slmops.maas.register's card of a version whose weights a service keeps


def new_key() -> str:
    return secrets.token_urlsafe(32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def bind(port: int) -> socket.socket:
    """A socket bound to 127.0.0.1:port for gunicorn to listen on; UserError when the port is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does: TIME_WAIT is no obstacle
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {HOST} is already in use (another server?); pick a free port with "
                            f"--port, or stop the process listening there (ss -ltnp 'sport = :{port}')") from None
        raise UserError(f"cannot listen on {HOST}:{port}: {exc.strerror}; pick another port with --port") from None
    sock.set_inheritable(True)
    return sock


def server_plan(model_dir: Path, env: dict | None = None) -> dict:
    """Workers, request threads per worker and compute threads per worker for serving `model_dir` on this machine:
    `slmops.serving.batcher.plan` from the cores this process may use, the memory, the model's weight bytes and
    the max batch (SLMOPS_MAX_BATCH; a bad value is left to the worker, which reports it), with the compute threads
    cut to the cores free now (`slmops.threads.choose`: OMP_NUM_THREADS when set)."""
    from slmops.serving import batcher

    env = os.environ if env is None else env
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    model_bytes = sum(f.stat().st_size for f in Path(model_dir).rglob("*")
                      if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    raw = str(env.get("SLMOPS_MAX_BATCH", "")).strip()
    max_batch = int(raw) if raw.isdigit() and 1 <= int(raw) <= 256 else batcher.DEFAULT_MAX_BATCH
    plan = batcher.plan(cores, memory, model_bytes, max_batch=max_batch)
    # On a machine other work keeps busy (a laptop, not an endpoint's node), compute threads beyond the free cores
    # oversubscribe them and a batch slows tens of times (bench/contention.py): take the free share, as steps do.
    free, why = threads.choose(env)
    plan["compute_threads"] = max(1, min(plan["compute_threads"], free // plan["workers"]))
    return {**plan, "max_batch": max_batch, "cores": cores, "model_bytes": model_bytes, "threads_why": why}


def server_command(port: int, threads: int = DEFAULT_THREADS, fd: int | None = None, workers: int = 1) -> list[str]:
    """gunicorn on 127.0.0.1:port (or on the already bound socket `fd`), `workers` workers (each one copy of the
    model) with `threads` request threads each."""
    where = f"fd://{fd}" if fd is not None else f"{HOST}:{port}"
    return [sys.executable, "-m", "gunicorn", "--bind", where, "--workers", str(workers),
            "--worker-class", "gthread", "--threads", str(threads), "--timeout", "300", "--graceful-timeout", "5",
            "--access-logfile", "-", "--error-logfile", "-", "slmops.serving.app:build()"]


def server_env(model_dir: Path, key: str, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               base: dict | None = None, load_error_file: Path | None = None,
               compute_threads: int | None = None) -> dict[str, str]:
    """The environment the inference server reads (as on a managed endpoint) plus our key and body cap, and each
    worker's share of the cores for its compute threads (OMP_NUM_THREADS, unless already set)."""
    env = dict(os.environ if base is None else base)
    if compute_threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(compute_threads))
    env.update({
        "AZUREML_MODEL_DIR": str(Path(model_dir).resolve()),
        "AZUREML_ENTRY_SCRIPT": str(SCORE_SCRIPT),
        "AML_APP_ROOT": str(SCORE_SCRIPT.parent),
        "AML_APP_INSIGHTS_ENABLED": "false",
        KEY_ENV: key,
        "SLMOPS_MAX_BODY_BYTES": str(max_body_bytes),
        "TOKENIZERS_PARALLELISM": "false",
    })
    if load_error_file is not None:
        env["SLMOPS_LOAD_ERROR_FILE"] = str(load_error_file)
    return env


def check_model_dir(model_dir: Path) -> Path:
    """The servable model folder in `model_dir` (ORT GenAI, MLflow or Hugging Face folder), its weight files and
    configs checked whole (slmops.weights.check_files); UserError naming the problem otherwise."""
    from slmops.serving.score import find_model_dir

    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise UserError(f"model folder {str(model_dir)!r} does not exist; pass a model folder or a registry "
                        f"reference such as models:/NAME@ALIAS")
    hosted = next(iter(sorted(model_dir.rglob(HOSTED_CARD))), None)
    if hosted is not None:  # `slmops maas register`: the weights stay with the service
        try:
            card = json.loads(hosted.read_text())
        except (OSError, ValueError):
            card = {}
        where = ", ".join(f"{k} {card[k]}" for k in ("service", "fine_tuned_model", "scored_endpoint") if card.get(k))
        raise UserError(f"{model_dir} is a hosted fine-tune registered by `slmops maas register` ({where or hosted}): "
                        f"its weights stay with the service, so there is nothing to serve here; call the service's "
                        f"deployment (e.g. `slmops maas score`), or serve a model trained by the pipeline")
    try:
        found = find_model_dir(model_dir)
    except RuntimeError as exc:
        raise UserError(str(exc)) from None
    weights.check_files(found)
    return found


def start(model_dir: Path, port: int, key: str, log_path: Path, *, threads: int | None = None,
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> subprocess.Popen:
    """Start the server in the background (its output goes to `log_path`), sized by server_plan() unless `threads`
    is given; see wait_ready()."""
    plan = server_plan(model_dir)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(server_command(port, threads or plan["threads"], workers=plan["workers"]),
                                env=server_env(model_dir, key, max_body_bytes,
                                               compute_threads=plan["compute_threads"]),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def is_ready(base_url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health/ready", timeout=timeout_s) as r:
            return r.status == 200 and json.loads(r.read()).get("status") == "ready"
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_ready(base_url: str, timeout_s: float, proc: subprocess.Popen | None = None,
               log_path: Path | None = None) -> None:
    """Poll /health/ready until it answers; UserError (with the log's tail) if the server exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if is_ready(base_url):
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.25)
    tail = log_path.read_text(errors="replace")[-2000:] if log_path and log_path.exists() else ""
    state = f"exited with code {proc.returncode}" if proc is not None and proc.poll() is not None \
        else f"was not ready within {timeout_s:.0f} s"
    raise UserError(f"the inference server at {base_url} {state}; its log ends with:\n{tail}")


def run(model_dir: Path, sock: socket.socket, key: str, max_body_bytes: int, *, threads: int, workers: int = 1,
        compute_threads: int | None = None) -> int:
    """Run gunicorn on the bound socket `sock` until it exits; returns its exit code. SIGTERM, SIGINT and SIGHUP are
    passed on to it. UserError (exit 2) with the reason when the worker could not load the model."""
    with tempfile.TemporaryDirectory(prefix="slmops-serve-") as tmp:
        error_file = Path(tmp) / "load-error.txt"
        sys.stdout.flush()
        sys.stderr.flush()
        proc = subprocess.Popen(server_command(0, threads, fd=sock.fileno(), workers=workers),
                                pass_fds=(sock.fileno(),),
                                env=server_env(model_dir, key, max_body_bytes, load_error_file=error_file,
                                               compute_threads=compute_threads))
        sock.close()  # gunicorn holds it now

        def forward(signum, _frame):
            proc.send_signal(signum)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, forward)
        code = proc.wait()
        reason = error_file.read_text(errors="replace").strip() if error_file.exists() else ""
    if code in (3, 4) or reason:  # gunicorn: a worker failed to boot (3) or the app failed to load (4)
        raise UserError(f"the model in {Path(model_dir).resolve()} failed to load, so the server stopped: "
                        f"{reason or 'see the log above'}\ncheck that the folder holds a whole model (re-export or "
                        f"re-download it)")
    return code


def resolve_model(ref: str, tracking_uri: str | None, cache_dir: Path) -> Path:
    """A model folder for a folder path or a registry reference (models:/NAME@ALIAS, models:/NAME/VERSION); a
    registered version's weight files are checked against the sha256 recorded at registration."""
    if Path(ref).expanduser().is_dir():
        return check_model_dir(Path(ref))  # no registry (nor mlflow import) needed
    from slmops import registry

    return check_model_dir(registry.resolve(ref, tracking_uri=tracking_uri, cache_dir=cache_dir))
