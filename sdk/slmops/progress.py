"""Progress of a step's long loops: a bar on a terminal, one plain line per event in a log.

    from slmops import progress
    with progress.Progress() as bars:                    # the mode is read from the environment here, once
        rows = bars.tracker(len(prompts), "evaluate fine-tuned", unit="rows")
        generation.torch_complete(model, tok, prompts, max_new_tokens=16, batch_size=16, progress=rows.advance)
        stages = bars.stages(3, "optimize")
        stages.stage("export + quantize (int4, cpu)")    # "optimize stage 1/3: export + quantize (int4, cpu)"

Modes (`SLMOPS_PROGRESS`, default `auto`):
- `bar`: a rich bar per tracker: description, bar, count, %, rate, fields (a loss), elapsed and ETA;
- `lines`: one plain line per event, never a `\\r`, e.g. `train step 10/60 (17%) loss 0.412 eta 2m31s`: a forced
  event (a logged loss, an evaluation, a stage), the last count, and otherwise at most one line every
  `SLMOPS_PROGRESS_INTERVAL` seconds (default 30);
- `off`: nothing;
- `auto`: `bar` when stdout is a terminal, else `lines` (the local runner pipes a step's output; Azure ML and CI
  write it to a file).
Outside `bar` mode the libraries' own tqdm bars (datasets, transformers, huggingface_hub, MLflow) are switched off
when the Progress is made (at the step's entry point, before models and data load), so a step's log holds no
`\\r`-joined bar fragments. Entering the Progress starts the live display of `bar` mode; trackers are made inside it.

ETA: the remaining count at the mean rate since the tracker began (`eta_seconds`); a resumed training run counts
from the step it resumed at.
"""

from __future__ import annotations

import os
import re
import sys
import time

MODES = ("auto", "bar", "lines", "off")
MODE_ENV, INTERVAL_ENV = "SLMOPS_PROGRESS", "SLMOPS_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0  # seconds between two plain lines of the same tracker (forced events aside)
# A plain progress line: "<description> <done>/<total>[ <unit>] (<pct>%) ..." or "<description> stage <i>/<n>[ at
# <elapsed>]: <name>"
LINE = re.compile(r"^\S.*? (\d+/\d+(?: \S+)? \(\d+%\)|stage \d+/\d+(?: at \S+)?:)")


def format_duration(seconds: float) -> str:
    """45s, 2m31s, 1h02m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta_seconds(completed: float, total: float | None, elapsed: float, start: float = 0) -> float | None:
    """Seconds left at the mean rate since the tracker began at `start` (None before any progress or without a
    total)."""
    done = completed - start
    if total is None or done <= 0 or elapsed <= 0:
        return None
    return max(0.0, total - completed) * elapsed / done


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def choose_mode(requested: str, stream) -> str:
    """The mode `requested` (one of MODES) resolves to for output on `stream`."""
    if requested not in MODES:
        from slmops.errors import UserError

        raise UserError(f"{MODE_ENV}={requested!r} is not a progress mode; use one of {', '.join(MODES)}")
    if requested != "auto":
        return requested
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def quiet_libraries() -> None:
    """Switch off the tqdm bars of datasets, transformers, huggingface_hub and MLflow: through the environment for
    what is imported later (and for subprocesses), through their switches for what is imported already."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # read at each download
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "transformers" in sys.modules:
        import transformers.utils.logging

        transformers.utils.logging.disable_progress_bar()


class Tracker:
    """One counted loop (or list of stages) of a Progress. `advance(n)` fits a `progress=` callback."""

    def __init__(self, owner: Progress, total: int | None, description: str, *, unit: str, completed: int,
                 eta: bool):
        self.owner, self.total, self.description, self.unit, self.show_eta = owner, total, description, unit, eta
        self.start = self.completed = completed
        self.fields: dict = {}
        self.status = ""
        self.began = self.last_line = owner.clock()
        self.closed = False
        self._stage = 0
        self._task = None
        if owner._rich is not None:
            self._task = owner._rich.add_task(description, total=total, completed=completed, info="",
                                              unit=unit or "it")

    # ---- counting
    def advance(self, n: int = 1) -> None:
        self.update(self.completed + n)

    def update(self, completed: int | None = None, *, status: str | None = None, force: bool = False,
               emit: bool = True, **fields) -> None:
        """Set the count, the status text and fields (e.g. loss=0.41; they persist); a plain line is printed when
        `force`, at the last count, or once `interval` seconds have passed since the last one (never with
        `emit=False`: an event that prints its own line next)."""
        if completed is not None:
            self.completed = completed
        if status is not None:
            self.status = status
        self.fields.update(fields)
        if self.owner.mode == "bar" and self._task is not None:
            self.owner._rich.update(self._task, completed=self.completed, info=self._info())
        elif self.owner.mode == "lines" and emit:
            now = self.owner.clock()
            at_end = self.total is not None and self.completed >= self.total
            # after the last count's line (closed), forced events only
            if force or not self.closed and (at_end or now - self.last_line >= self.owner.interval):
                self.closed = self.closed or at_end
                self._emit(self.line(now))
                self.last_line = now

    def stage(self, name: str) -> None:
        """Begin the next stage: the previous one is complete. Prints `<description> stage i/n at <elapsed>: <name>`."""
        if self._stage:
            self.completed = self._stage
        self._stage += 1
        self.status = name
        if self.owner.mode == "bar" and self._task is not None:
            self.owner._rich.update(self._task, completed=self.completed, info=self._info())
        elif self.owner.mode == "lines":
            at = f" at {format_duration(self.owner.clock() - self.began)}" if self._stage > 1 else ""
            self._emit(f"{self.description} stage {self._stage}/{self.total}{at}: {name}")

    def close(self) -> None:
        """The loop ended (also early: stopped before its total): a last line in `lines` mode."""
        if self.closed:
            return
        self.closed = True
        if self._stage and self.total is not None:
            self.completed = self.total
        if self.owner.mode == "bar" and self._task is not None:
            self.owner._rich.update(self._task, completed=self.completed, info=self._info())
            self.owner._rich.stop_task(self._task)
        elif self.owner.mode == "lines":
            self._emit(self.line(self.owner.clock()))

    # ---- rendering
    def _info(self, status: bool = True) -> str:
        return " ".join([*(f"{k} {_value(v)}" for k, v in self.fields.items()),
                         *([self.status] if status and self.status else [])])

    def line(self, now: float) -> str:
        """The plain line: `train step 10/60 (17%) loss 0.412 eta 2m31s`; at the end `... took 8m12s`."""
        elapsed = now - self.began
        if self._stage:
            return f"{self.description} done: {self._stage} stages in {format_duration(elapsed)}"
        count = f"{self.completed}/{self.total if self.total is not None else '?'}" + (f" {self.unit}"
                                                                                       if self.unit else "")
        parts = [self.description, count]
        if self.total:
            pct = 100 * self.completed / self.total
            parts.append(f"({min(round(pct), 99) if self.completed < self.total else 100}%)")
        finished = self.total is not None and self.completed >= self.total
        if info := self._info(status=not finished):  # the status says what runs now: nothing, at the end
            parts.append(info)
        if finished or self.closed:
            parts.append(f"took {format_duration(elapsed)}")
        elif self.show_eta and (eta := eta_seconds(self.completed, self.total, elapsed, self.start)) is not None:
            parts.append(f"eta {format_duration(eta)}")
        return " ".join(parts)

    def _emit(self, text: str) -> None:
        stream = self.owner.stream
        stream.write(text + "\n")
        stream.flush()


class Progress:
    """The bars (or lines) of one step; a context manager. Arguments override the environment (tests)."""

    def __init__(self, mode: str | None = None, *, interval: float | None = None, console=None, stream=None,
                 environ=None, clock=time.monotonic, quiet: bool = True):
        environ = os.environ if environ is None else environ
        self.stream = stream or sys.stdout
        self.mode = choose_mode(mode or environ.get(MODE_ENV, "auto"), self.stream)
        if interval is None:
            raw = environ.get(INTERVAL_ENV, str(DEFAULT_INTERVAL))
            try:
                interval = float(raw)
            except ValueError:
                from slmops.errors import UserError

                raise UserError(f"{INTERVAL_ENV}={raw!r} is not a number of seconds; e.g. 30") from None
        self.interval = interval
        self.console = console
        self.clock = clock
        self._rich = None
        self.trackers: list[Tracker] = []
        if quiet and self.mode != "bar":
            quiet_libraries()

    def __enter__(self) -> Progress:
        if self.mode == "bar":
            from rich import progress as rp
            from rich.console import Console
            from rich.text import Text

            class Rate(rp.ProgressColumn):
                def render(self, task):
                    speed = task.finished_speed or task.speed
                    unit = task.fields.get("unit", "it")
                    if not speed:
                        return Text("")
                    return Text(f"{speed:.2f} {unit}/s" if speed >= 1 else f"{1 / speed:.1f} s/{unit}",
                                style="progress.data.speed")

            self._rich = rp.Progress(
                rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                rp.TaskProgressColumn(), Rate(), rp.TimeElapsedColumn(), rp.TextColumn("eta"),
                rp.TimeRemainingColumn(), rp.TextColumn("{task.fields[info]}"),
                console=self.console or Console(file=self.stream), refresh_per_second=4)
            self._rich.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None

    def tracker(self, total: int | None, description: str, *, unit: str = "", completed: int = 0,
                eta: bool = True) -> Tracker:
        """A counted loop of `total` (None: unknown) starting at `completed` (a resumed run)."""
        if self.mode == "bar" and self._rich is None:
            raise RuntimeError("Progress in bar mode: enter it (`with Progress() as bars:`) before making trackers")
        track = Tracker(self, total, description, unit=unit, completed=completed, eta=eta)
        self.trackers.append(track)
        return track

    def stages(self, total: int, description: str) -> Tracker:
        """A list of `total` stages, each begun with `.stage(name)`; no ETA (stages differ in length)."""
        return self.tracker(total, description, eta=False)


OFF = Progress("off", quiet=False)  # for callers given no Progress: trackers that show nothing


def trainer_callback(bars: Progress, description: str = "train step"):
    """A transformers TrainerCallback showing training on `bars` (rank 0 only): the step count against max_steps
    (a resumed run starts at its checkpoint's step), the latest loss and eval_loss, and the ETA. A plain line at
    every logged loss and evaluation, and at the interval between them."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def __init__(self):
            self.track = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.track = bars.tracker(state.max_steps, description, completed=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if self.track is None:
                return
            # a step that logs or evaluates gets its line from on_log / on_evaluate, with the loss
            self.track.update(state.global_step, status="evaluating" if control.should_evaluate else "",
                              emit=not (control.should_log or control.should_evaluate))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.track is not None and logs and "loss" in logs:
                # a step that also evaluates prints one line, from on_evaluate, with both losses (not one line
                # with the previous evaluation's eval_loss and another with this one's)
                self.track.update(state.global_step, status="", force=True, emit=not control.should_evaluate,
                                  loss=float(logs["loss"]))

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if self.track is not None and metrics and "eval_loss" in metrics:
                self.track.update(state.global_step, status="", force=True, eval_loss=float(metrics["eval_loss"]))

        def on_train_end(self, args, state, control, **kwargs):
            if self.track is not None:
                self.track.update(state.global_step, status="")
                self.track.close()
                self.track = None

    return ProgressCallback()
