"""`slmops quickstart`: the real fine-tuning pipeline, CPU-sized, offline, on a model built here.

It builds a tiny model (a BPE tokenizer trained with `tokenizers` + a random-init Llama config), then runs
`pipelines/finetune.yaml` — the same file `slmops submit` sends to Azure ML — through the local runner with
CPU-size overrides, on the phrase -> tone sample data shipped in the package, and prints a summary.

    slmops quickstart --dir ./slmops-quickstart
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click

import slmops

# CPU-size overrides of pipelines/finetune.yaml's inputs (the pipeline's own defaults are sized for a real
# model on Azure ML compute).
QUICKSTART_SETS = {
    "max_steps": "120",
    "batch_size": "16",
    "learning_rate": "0.002",
    "lr_scheduler": "constant",
    "lora_r": "16",
    "eval_steps": "40",
    "save_steps": "40",
    "model_name": "slmops-quickstart",
}


def repo_root() -> Path:
    """The source checkout holding pipelines/ and components/ (quickstart runs from a checkout)."""
    root = Path(slmops.__file__).resolve().parents[2]
    if not (root / "pipelines" / "finetune.yaml").exists():
        raise click.UsageError(
            f"pipelines/finetune.yaml not found beside the installed package ({root}); run the quickstart from a "
            "source checkout installed with `pip install -e .`, or pass --pipeline PATH")
    return root


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def summary(run_dir: Path) -> dict:
    """Collect the figures a person wants from the run's step outputs."""
    out = lambda node, name: run_dir / node / "outputs" / name  # noqa: E731
    return {
        "data": _read(out("prep", "output_data") / "data_report.json"),
        "train": _read(out("finetune", "metrics") / "train_summary.json"),
        "eval": _read(out("evaluate", "metrics") / "metrics.json"),
        "optimize": _read(out("optimize", "report") / "optimize_report.json"),
        "registration": _read(out("register", "registration") / "registration.json"),
    }


def print_summary(s: dict, seconds: float, run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    ev, opt, reg, train = s["eval"], s["optimize"], s["registration"], s["train"]
    table = Table(title="slmops quickstart", show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = s["data"].get("rows", {})
    table.add_row("data rows (train / validation)", f"{rows.get('train', '?')} / {rows.get('validation', '?')}")
    if train:
        table.add_row("fine-tune", f"{train.get('method')} · {train.get('global_step', '?')} steps · "
                      f"{train.get('tokens_per_s', 0):,.0f} real tokens/s")
    if ev:
        b, f = ev.get("base", {}), ev.get("finetuned", {})
        table.add_row("accuracy: base -> fine-tuned", f"{b.get('accuracy', 0):.3f} -> {f.get('accuracy', 0):.3f}")
        table.add_row("macro-F1: base -> fine-tuned", f"{b.get('macro_f1', 0):.3f} -> {f.get('macro_f1', 0):.3f}")
    if opt:
        o, p = opt.get("onnx", {}), opt.get("pytorch", {})
        table.add_row(f"ONNX ({opt.get('precision')}, {opt.get('execution_provider')}) accuracy",
                      f"{o.get('accuracy', 0):.3f} (PyTorch {p.get('accuracy', 0):.3f})")
        table.add_row("decode tokens/s: ONNX vs PyTorch",
                      f"{o.get('tokens_per_s', 0):,.0f} vs {p.get('tokens_per_s', 0):,.0f} "
                      f"({opt.get('speedup', 0):.1f}x)")
    if reg:
        onnx = reg.get("onnx") or {}
        table.add_row("registered", f"{reg.get('name')} v{reg.get('version')} @{reg.get('alias')}"
                      + (f" + {onnx.get('name')} v{onnx.get('version')}" if onnx else ""))
    table.add_row("wall time", f"{seconds:.0f} s")
    console.print(table)
    console.print("[bold]Note:[/] the tiny base model starts from random weights, so its base accuracy is at "
                  "chance or below; the gain shows what fine-tuning taught it, not what a real model would score.")
    console.print(f"Run folder: {run_dir}")


@click.command()
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("slmops-quickstart"),
              show_default=True, help="Folder for the tiny model, the run, the step cache and the MLflow store.")
@click.option("--pipeline", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Pipeline YAML to run (default: pipelines/finetune.yaml of this checkout).")
@click.option("--arch", type=click.Choice(["llama", "qwen2", "phi3"]), default="llama", show_default=True,
              help="Architecture family of the tiny random-init model.")
@click.option("--force-rerun", is_flag=True, help="Run every step even when a cached result exists.")
def quickstart(workdir: Path, pipeline: Path | None, arch: str, force_rerun: bool):
    """Build a tiny model offline and run the real fine-tuning pipeline on it (CPU, a few minutes)."""
    from slmops.tiny import build_tiny_model

    start = time.perf_counter()
    pipeline = pipeline or repo_root() / "pipelines" / "finetune.yaml"
    workdir = workdir.resolve()
    model_dir = workdir / f"tiny-{arch}"
    if not (model_dir / "slmops_tiny.json").exists():
        click.echo(f"building a tiny {arch} model with random weights in {model_dir} (offline) ...")
        build_tiny_model(model_dir, arch=arch, seed=0)
    run_dir = workdir / "run"
    sets = {"base_model": str(model_dir), **QUICKSTART_SETS}
    cmd = [sys.executable, "-m", "slmops", "run", str(pipeline), "--run-dir", str(run_dir)]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    if force_rerun:
        cmd.append("--force-rerun")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    click.echo("$ slmops run " + " ".join(cmd[4:]))
    code = subprocess.call(cmd, env=env)
    if code != 0:
        raise SystemExit(code)
    print_summary(summary(run_dir), time.perf_counter() - start, run_dir)
