"""What a person sees while a pipeline runs: a live table of steps on a terminal, plain lines otherwise (CI).

Every line a step prints is shown with the step's name as prefix; state changes are shown as they happen. On the live
table a step's progress lines (`slmops.progress`, e.g. `train step 10/60 (17%) loss 0.412 eta 2m31s`) are not
printed: the latest one is shown beside its state while it runs (every line stays in the step's std_log.txt).
"""

from __future__ import annotations

import sys
import threading
import time

from slmops.progress import LINE as PROGRESS_LINE

STYLES = {"pending": "dim", "building": "magenta", "running": "cyan", "reused": "green", "done": "bold green",
          "failed": "bold red",
          "skipped": "yellow", "killed": "red"}


class Display:
    def __init__(self, nodes: list[str], live: bool | None = None, console=None):
        self.states = {name: "pending" for name in nodes}
        self.started: dict[str, float] = {}
        self.durations: dict[str, float] = {}
        self.progress: dict[str, str] = {}  # step -> its latest progress line (live table only)
        self.lock = threading.Lock()
        self.live = sys.stdout.isatty() if live is None else live
        self._live = None
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self.console = console or Console()
            self._live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False,
                              get_renderable=self._table)
            self._live.start()

    def _table(self):
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, show_header=True, header_style="bold")
        table.add_column("step")
        table.add_column("state", no_wrap=True, overflow="ellipsis")
        table.add_column("time", justify="right")
        for name, state in self.states.items():
            if name in self.durations:
                seconds = self.durations[name]
            elif name in self.started:
                seconds = time.monotonic() - self.started[name]
            else:
                seconds = None
            # Text, not markup: the table is also redrawn inside console.print(markup=False) of step output lines.
            shown = Text(state, style=STYLES.get(state, ""))
            if state == "running" and name in self.progress:
                shown.append("  " + self.progress[name], style="dim")
            table.add_row(name, shown, "" if seconds is None else f"{seconds:.1f}s")
        return table

    def _print(self, text: str, style: str | None = None) -> None:
        with self.lock:
            if self._live is not None:
                self.console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)
            else:
                print(text, flush=True)

    def state(self, name: str, state: str, detail: str = "") -> None:
        if name not in self.states:
            self.states[name] = state
        now = time.monotonic()
        if state == "running":
            self.started[name] = now
        elif state in ("done", "failed", "killed") and name in self.started:
            self.durations[name] = now - self.started[name]
        elif state in ("reused", "skipped"):
            self.durations[name] = 0.0
        self.states[name] = state
        took = f" ({self.durations[name]:.1f}s)" if state in ("done", "failed", "killed") and name in self.durations else ""
        if self._live is None or state in ("failed", "killed"):
            self._print(f"[{name}] {state}{took}{(': ' + detail) if detail else ''}")
        else:
            with self.lock:
                self._live.refresh()

    def line(self, name: str, text: str) -> None:
        step = name.split("[", 1)[0]  # `node[rank]`, `node[trial]`
        if self._live is not None and step in self.states and PROGRESS_LINE.match(text):
            self.progress[step] = text if step == name else f"{name[len(step):]} {text}"
            return
        self._print(f"{name} | {text}")

    def notice(self, text: str) -> None:
        self._print(text, style="yellow")

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
