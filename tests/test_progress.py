"""slmops.progress: plain lines (golden) outside a terminal, a rich bar on one, ETA math, the mode from the
environment, the libraries' bars switched off; the trainer callback; generation's progress callback; a piped
finetune step's output holds progress lines and no \\r."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from slmops import progress
from slmops.errors import UserError

REPO = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines_progress(interval: float = 10.0):
    out, clock = io.StringIO(), Clock()
    return progress.Progress("lines", interval=interval, stream=out, clock=clock, quiet=False), out, clock


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (0.4, "0s"), (45, "45s"), (59.6, "1m00s"), (151, "2m31s"),
                                           (3599, "59m59s"), (3600, "1h00m"), (3720, "1h02m"), (-3, "0s")])
def test_format_duration(seconds, text):
    assert progress.format_duration(seconds) == text


@pytest.mark.parametrize("completed, total, elapsed, start, eta", [
    (10, 60, 25.0, 0, 125.0),      # 2.5 s a step, 50 steps left
    (60, 60, 150.0, 0, 0.0),       # done
    (30, 60, 20.0, 20, 60.0),      # resumed at 20: 10 steps in 20 s, 30 left
    (0, 60, 5.0, 0, None),         # nothing done yet
    (20, 60, 5.0, 20, None),       # resumed, nothing done in this attempt
    (5, None, 5.0, 0, None),       # no total
    (5, 10, 0.0, 0, None),         # no time passed
])
def test_eta_seconds(completed, total, elapsed, start, eta):
    assert progress.eta_seconds(completed, total, elapsed, start) == eta


def test_lines_one_per_event_at_the_interval_and_at_the_end():
    """A step every 2.5 s, a logged loss every 10 steps (forced), interval 10 s: a line per log plus one every
    10 s between them; the last count ends with the time taken; no \\r anywhere."""
    bars, out, clock = lines_progress(interval=10)
    with bars:
        track = bars.tracker(60, "train step")
        for step in range(1, 61):
            clock.now += 2.5
            if step == 1 or step % 20 == 0:
                track.update(step, force=True, loss=round(1 / step, 4))
            else:
                track.update(step)
        track.close()  # after the last count's line: nothing more
    lines = out.getvalue().splitlines()
    assert lines == [
        "train step 1/60 (2%) loss 1 eta 2m28s",
        "train step 5/60 (8%) loss 1 eta 2m18s",
        "train step 9/60 (15%) loss 1 eta 2m08s",
        "train step 13/60 (22%) loss 1 eta 1m58s",
        "train step 17/60 (28%) loss 1 eta 1m48s",
        "train step 20/60 (33%) loss 0.05 eta 1m40s",
        "train step 24/60 (40%) loss 0.05 eta 1m30s",
        "train step 28/60 (47%) loss 0.05 eta 1m20s",
        "train step 32/60 (53%) loss 0.05 eta 1m10s",
        "train step 36/60 (60%) loss 0.05 eta 1m00s",
        "train step 40/60 (67%) loss 0.025 eta 50s",
        "train step 44/60 (73%) loss 0.025 eta 40s",
        "train step 48/60 (80%) loss 0.025 eta 30s",
        "train step 52/60 (87%) loss 0.025 eta 20s",
        "train step 56/60 (93%) loss 0.025 eta 10s",
        "train step 60/60 (100%) loss 0.0167 took 2m30s",
    ]
    assert "\r" not in out.getvalue() and all(progress.LINE.match(line) for line in lines)


def test_lines_with_a_unit_a_status_and_an_early_stop():
    bars, out, clock = lines_progress(interval=1000)
    track = bars.tracker(200, "evaluate fine-tuned", unit="rows")
    clock.now += 4
    track.update(16, status="generate", force=True)
    clock.now += 4
    track.advance(16)                              # within the interval: no line
    track.update(status="latency")
    clock.now += 1
    track.close()                                  # stopped short of its total: a last line, with the time taken
    track.close()                                  # once
    assert out.getvalue().splitlines() == ["evaluate fine-tuned 16/200 rows (8%) generate eta 46s",
                                           "evaluate fine-tuned 32/200 rows (16%) latency took 9s"]
    done = bars.tracker(3, "evaluate base", unit="rows")
    done.update(3, status="latency")               # the last count: its status is dropped
    assert out.getvalue().splitlines()[-1] == "evaluate base 3/3 rows (100%) took 0s"


def test_stages_one_line_each_and_a_last_one():
    bars, out, clock = lines_progress()
    stages = bars.stages(3, "optimize")
    stages.stage("export + quantize (int4, cpu)")
    clock.now += 31
    stages.stage("accuracy check (ONNX and PyTorch on 60 test rows)")
    clock.now += 62
    stages.stage("decode speed (5 prompts x 64 tokens, each runtime)")
    clock.now += 4
    stages.close()
    lines = out.getvalue().splitlines()
    assert lines == ["optimize stage 1/3: export + quantize (int4, cpu)",
                     "optimize stage 2/3 at 31s: accuracy check (ONNX and PyTorch on 60 test rows)",
                     "optimize stage 3/3 at 1m33s: decode speed (5 prompts x 64 tokens, each runtime)",
                     "optimize done: 3 stages in 1m37s"]
    assert all(progress.LINE.match(line) for line in lines[:3]) and not progress.LINE.match("{'loss': '6.9'}")


def test_off_prints_nothing():
    out = io.StringIO()
    with progress.Progress("off", stream=out, quiet=False) as bars:
        track = bars.tracker(2, "train step")
        track.update(1, force=True, loss=1.0)
        track.close()
        bars.stages(2, "register").stage("gate")
    progress.OFF.tracker(5, "evaluate").advance(5)  # what a caller without a Progress gets
    assert out.getvalue() == ""


def test_bar_on_a_terminal():
    from rich.console import Console

    screen = io.StringIO()
    with progress.Progress("bar", console=Console(force_terminal=True, file=screen, width=120),
                           quiet=False) as bars:
        track = bars.tracker(10, "evaluate fine-tuned", unit="rows")
        track.advance(3)
        track.update(loss=0.5)
        bars.stages(2, "register").stage("quality gate (4 checks)")
    shown = screen.getvalue()
    assert "evaluate fine-tuned" in shown and "3/10" in shown and "30%" in shown and "loss 0.5" in shown
    assert "━" in shown and "quality gate (4 checks)" in shown
    with pytest.raises(RuntimeError, match="enter it"):
        progress.Progress("bar", console=Console(file=io.StringIO()), quiet=False).tracker(1, "x")


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("environ, stream, mode", [
    ({}, Terminal(), "bar"), ({}, io.StringIO(), "lines"), ({"SLMOPS_PROGRESS": "auto"}, Terminal(), "bar"),
    ({"SLMOPS_PROGRESS": "lines"}, Terminal(), "lines"), ({"SLMOPS_PROGRESS": "bar"}, io.StringIO(), "bar"),
    ({"SLMOPS_PROGRESS": "off"}, Terminal(), "off"),
])
def test_mode_from_the_environment_and_the_stream(environ, stream, mode):
    bars = progress.Progress(environ=environ, stream=stream, quiet=False)
    assert bars.mode == mode and bars.interval == progress.DEFAULT_INTERVAL
    assert progress.Progress(environ={"SLMOPS_PROGRESS_INTERVAL": "5"}, stream=stream, quiet=False).interval == 5


@pytest.mark.parametrize("environ, message", [
    ({"SLMOPS_PROGRESS": "tqdm"}, "SLMOPS_PROGRESS='tqdm' is not a progress mode; use one of auto, bar, lines, off"),
    ({"SLMOPS_PROGRESS_INTERVAL": "10s"}, "SLMOPS_PROGRESS_INTERVAL='10s' is not a number of seconds"),
])
def test_bad_environment_is_a_user_error(environ, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        progress.Progress(environ=environ, stream=io.StringIO(), quiet=False)


def test_outside_a_terminal_the_libraries_bars_are_off(monkeypatch):
    import datasets
    import huggingface_hub
    import transformers.utils.logging

    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS",
                 "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"):
        monkeypatch.delenv(name, raising=False)
    progress.Progress("lines", stream=io.StringIO())
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    assert huggingface_hub.utils.are_progress_bars_disabled()
    assert not datasets.is_progress_bar_enabled()
    assert not transformers.utils.logging.is_progress_bar_enabled()


def _drive(callback, *, max_steps: int, begin: int, logs: dict, evals: dict, clock: Clock, rank0: bool = True):
    """Call the callback as transformers' Trainer does: on_step_end (after DefaultFlowCallback set should_log /
    should_evaluate), then on_log, then on_evaluate; a step every 2 s."""
    state = SimpleNamespace(is_world_process_zero=rank0, max_steps=max_steps, global_step=begin)
    callback.on_train_begin(None, state, None)
    for step in range(begin + 1, max_steps + 1):
        clock.now += 2
        state.global_step = step
        control = SimpleNamespace(should_log=step in logs, should_evaluate=step in evals)
        callback.on_step_end(None, state, control)
        if step in logs:
            callback.on_log(None, state, control, logs={"loss": logs[step], "learning_rate": 1e-3})
        if step in evals:
            callback.on_log(None, state, control, logs={"eval_loss": evals[step]})
            callback.on_evaluate(None, state, control, metrics={"eval_loss": evals[step]})
    callback.on_log(None, state, None, logs={"train_runtime": 8.0, "train_loss": 0.5})  # the closing summary
    callback.on_train_end(None, state, None)


def test_trainer_callback_lines_per_logged_step_and_evaluation():
    bars, out, clock = lines_progress(interval=1000)
    _drive(progress.trainer_callback(bars), max_steps=4, begin=0, logs={1: 6.9461, 2: 6.5, 4: 6.25},
           evals={2: 7.0, 4: 6.9}, clock=clock)
    assert out.getvalue().splitlines() == [
        "train step 1/4 (25%) loss 6.946 eta 6s",
        "train step 2/4 (50%) loss 6.5 eval_loss 7 eta 4s",        # a step that logs and evaluates: one line
        "train step 4/4 (100%) loss 6.25 eval_loss 6.9 took 8s",   # with this step's eval_loss, not the last one
    ]
    # a resumed run counts from its checkpoint's step (ETA from this attempt's rate); other ranks show nothing
    bars, out, clock = lines_progress(interval=1000)
    _drive(progress.trainer_callback(bars), max_steps=10, begin=6, logs={7: 1.0}, evals={}, clock=clock)
    assert out.getvalue().splitlines() == ["train step 7/10 (70%) loss 1 eta 6s", "train step 10/10 (100%) loss 1 "
                                           "took 8s"]
    bars, out, clock = lines_progress()
    _drive(progress.trainer_callback(bars), max_steps=4, begin=0, logs={1: 1.0}, evals={}, clock=clock,
           rank0=False)
    assert out.getvalue() == ""


def test_generation_reports_each_batch(tiny_model):
    from slmops import generation, models

    model, tokenizer = models.load_causal_lm(tiny_model).eval(), models.load_tokenizer(tiny_model)
    calls = []
    texts = generation.torch_complete(model, tokenizer, ["a", "b c", "d", "e f g", "h"], max_new_tokens=2,
                                      batch_size=2, progress=calls.append)
    assert calls == [2, 2, 1] and len(texts) == 5


def test_a_piped_finetune_step_logs_progress_lines_and_no_carriage_return(prepared_data, tiny_model, tmp_path):
    """As the local runner (and Azure ML) runs it: stdout a pipe, stderr into it. 2 steps."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLMOPS_PROGRESS", "HF_HUB_DISABLE_PROGRESS",
                                                                   "HF_DATASETS_DISABLE_PROGRESS"))}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true")
    outs = [arg for name in ("adapter", "model", "metrics", "checkpoints")
            for arg in (f"--{name}", str(tmp_path / name))]
    proc = subprocess.run([sys.executable, "-m", "slmops.steps.finetune", "--train_data", str(prepared_data),
                           "--base_model", str(tiny_model), "--max_steps", "2", "--batch_size", "4",
                           "--eval_steps", "2", "--save_steps", "0", "--logging_steps", "1", *outs],
                          env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=240)
    log = proc.stdout.decode()
    assert proc.returncode == 0, log[-3000:]
    assert "\r" not in log and "{'loss'" not in log and "Loading weights" not in log and "Building labels" not in log
    steps = [line for line in log.splitlines() if line.startswith("train step")]
    # step 2 logs and evaluates: one line, with its own eval_loss
    assert [line.split(" loss ")[0] for line in steps] == ["train step 1/2 (50%)", "train step 2/2 (100%)"]
    assert "eval_loss" in steps[-1] and all(progress.LINE.match(line) for line in steps)


def test_the_runners_live_table_shows_a_steps_latest_progress_line():
    """On a terminal the runner shows the latest progress line beside the running step instead of printing it;
    without a terminal (CI) every line is printed with the step's prefix."""
    from rich.console import Console

    from slmops.runner.display import Display

    display = Display(["finetune", "evaluate"], live=True,
                      console=Console(file=io.StringIO(), force_terminal=True, width=160))
    display.state("finetune", "running")
    display.line("finetune", "train step 1/4 (25%) loss 6.946 eta 6s")
    display.line("finetune", "train step 2/4 (50%) loss 6.5 eta 4s")
    display.line("finetune", "compute threads: 1")
    table = display._table()
    display.close()
    assert str(table.columns[1]._cells[0]) == "running  train step 2/4 (50%) loss 6.5 eta 4s"
    printed = display.console.file.getvalue()
    assert "finetune | compute threads: 1" in printed and "finetune | train step" not in printed

    out = io.StringIO()
    plain = Display(["finetune"], live=False)
    plain._print = lambda text, style=None: out.write(text + "\n")
    plain.line("finetune", "train step 1/4 (25%) loss 6.946 eta 6s")
    assert out.getvalue() == "finetune | train step 1/4 (25%) loss 6.946 eta 6s\n"
