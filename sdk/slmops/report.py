"""One self-contained HTML report per pipeline run, built from its run folder.

    slmops report runs/finetune-20261130-120000                  # writes <run dir>/report.html
    slmops report runs/finetune-20261130-120000 --out r.html

`slmops run` writes `<run dir>/report.html` when a pipeline succeeds and logs it to the pipeline's MLflow parent
run (artifact `report/report.html`). The file stands alone: CSS inline, charts as inline SVG, no script, no URL;
it opens offline and can be attached to a ticket. evaluate's `report.md` stays: it is the evaluate step's own.

Each section comes from files the steps wrote, found as `<run dir>/<node>/outputs/<output>/<file>` (the run
folder layout of docs/local_runner.md). Every node that wrote the file gets its section (multi_adapter.yaml has
two evaluate nodes), the pipelines' own node name first:

    section                          file                                      written by
    verdict, fine-tune or prompt?    metrics/metrics.json                      evaluate (variants, 95 % CIs)
    loss curves, over-fitting point  metrics/train_history.json                finetune
    confusion matrices               metrics/metrics.json                      evaluate (classification)
    ONNX drift                       report/optimize_report.json               optimize (+ register's gate)
    resource use per step            <node>/step.json -> its MLflow run        the runner (wall time; MLflow's
                                     metrics.json / train_summary.json         system metrics in a sqlite store);
                                     `resources`                               the steps (peak RSS, mean CPU %)

A section whose input the pipeline did not produce is replaced by a one-line note naming the missing file; a
file that cannot be read gets the same note with the error. Every string from a file is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import math
import sqlite3
import tempfile
import time
from pathlib import Path

import click

from slmops.io import write_text
from slmops.metrics import OVERFIT_TOLERANCE, VERDICT_METRIC

REPORT_NAME = "report.html"
# role -> (the pipelines' node name, output name, file name)
SOURCES = {
    "data": ("prep", "output_data", "data_report.json"),
    "history": ("finetune", "metrics", "train_history.json"),
    "train": ("finetune", "metrics", "train_summary.json"),
    "eval": ("evaluate", "metrics", "metrics.json"),
    "optimize": ("optimize", "report", "optimize_report.json"),
    "registration": ("register", "registration", "registration.json"),
}
# files whose `resources` holds a step's own process figures (slmops.resources.summary)
RESOURCE_FILES = ("train_summary.json", "metrics.json")
QUALITY = {"classification": [("accuracy", "accuracy"), ("macro_f1", "macro-F1")],
           "generation": [("perplexity", "perplexity"), ("bleu", "BLEU"), ("rouge_l", "ROUGE-L")]}
VARIANT_ORDER = ("base_zero_shot", "base_k_shot", "finetuned", "onnx")   # metrics.json's keys are sorted
COLORS = {"train": "#2563eb", "validation": "#ea580c", "marker": "#dc2626"}


# ------------------------------------------------------------------------------------------ reading a run folder

def step_output(run_dir: Path, node: str, output: str) -> Path:
    """Where `slmops run` links a step's output in its run folder: `<run dir>/<node>/outputs/<output>`."""
    return Path(run_dir) / node / "outputs" / output


def read_json(path: Path):
    """A JSON file's content, or {} when the file does not exist (a malformed file raises ValueError)."""
    return json.loads(Path(path).read_text()) if Path(path).exists() else {}


def find(run_dir: Path, role: str) -> list[tuple[str, Path]]:
    """(node, file) for every node of the run that wrote the file of `role` (SOURCES), its usual node first."""
    node, output, name = SOURCES[role]
    nodes = sorted((p.name for p in Path(run_dir).iterdir() if p.is_dir()), key=lambda n: (n != node, n))
    return [(n, step_output(run_dir, n, output) / name) for n in nodes
            if (step_output(run_dir, n, output) / name).is_file()]


def expected(role: str) -> str:
    node, output, name = SOURCES[role]
    return f"{node}/outputs/{output}/{name}"


# ---------------------------------------------------------------------------------------------------- formatting

def esc(value) -> str:
    return html.escape(str(value), quote=True)


def number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def fmt(value, spec: str = ".3f") -> str:
    value = number(value)
    return "n/a" if value is None or math.isnan(value) else format(value, spec)


def with_ci(variant: dict, key: str) -> str:
    ci = variant.get(f"{key}_ci")
    text = fmt(variant.get(key))
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(number(c) is not None for c in ci):
        text += f" ({ci[0]:.3f}–{ci[1]:.3f})"
    return text


def duration(seconds) -> str:
    seconds = number(seconds)
    if seconds is None:
        return "n/a"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def note(text: str) -> str:
    return f'<p class="omitted">{esc(text)}</p>'


def table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; header and cells are already-escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# --------------------------------------------------------------------------------------------------- over-fitting

def loss_points(history: list, key: str) -> list[tuple[float, float]]:
    """(step, value) of the records holding `key`, by step; a step logged twice (a repeated final evaluation)
    keeps its last record."""
    by_step = {}
    for record in history if isinstance(history, list) else []:
        if isinstance(record, dict) and number(record.get("step")) is not None and number(record.get(key)) is not None:
            by_step[float(record["step"])] = float(record[key])
    return sorted(by_step.items())


def overfitting_point(history: list) -> dict:
    """The over-fitting point: the step where validation loss is lowest when it then rose (the last evaluation
    more than OVERFIT_TOLERANCE above that lowest; evaluate's check uses the same rule). Returns {"step", "loss",
    "last"} with `step` None when none is seen, and `text`, one sentence saying what was found."""
    evals = loss_points(history, "eval_loss")
    if not evals:
        return {"step": None, "text": "No validation loss recorded (finetune's --eval_steps 0, or no "
                                      "validation.jsonl): over-fitting not judged."}
    if len(evals) == 1:
        return {"step": None, "text": f"One validation loss only ({evals[0][1]:.4f} at step {evals[0][0]:g}): "
                                      "over-fitting cannot be judged from one point."}
    best = min(evals, key=lambda p: p[1])          # the first of equal lows
    last = evals[-1]
    if last[1] > best[1] * (1 + OVERFIT_TOLERANCE):
        return {"step": best[0], "loss": best[1], "last": last,
                "text": f"Over-fitting point: step {best[0]:g}. Validation loss was lowest there ({best[1]:.4f}) "
                        f"and rose to {last[1]:.4f} by step {last[0]:g}, the last evaluation."}
    if best == last:
        return {"step": None, "text": f"No over-fitting seen: validation loss is lowest at the last evaluation "
                                      f"({last[1]:.4f} at step {last[0]:g})."}
    return {"step": None, "text": f"No over-fitting seen: validation loss at the last evaluation ({last[1]:.4f} at "
                                  f"step {last[0]:g}) is within {100 * OVERFIT_TOLERANCE:g} % of its lowest "
                                  f"({best[1]:.4f} at step {best[0]:g})."}


# ----------------------------------------------------------------------------------------------------- SVG charts

def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 x 10^k apart) covering [low, high]."""
    if high <= low:
        high = low + 1
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value < high + step * 0.999:
        ticks.append(round(value, 12))
        value += step
    return ticks


def log_ticks(low: float, high: float) -> list[float]:
    lo, hi = math.floor(math.log10(low)), math.ceil(math.log10(high))
    mults = (1,) if hi - lo > 2 else (1, 2, 5)
    return [m * 10 ** p for p in range(lo, hi + 1) for m in mults if low <= m * 10 ** p * 1.0001
            and m * 10 ** p <= high * 1.0001] or [low, high]


def loss_chart(history: list, point: dict, width: int = 760, height: int = 340) -> str:
    """Training and validation loss against step as inline SVG; a log y axis when the losses span more than 20x;
    the over-fitting point (if any) marked with a dashed line and a ring."""
    series = [("training loss", COLORS["train"], loss_points(history, "loss"), False),
              ("validation loss", COLORS["validation"], loss_points(history, "eval_loss"), True)]
    series = [s for s in series if s[2]]
    values = [v for s in series for _, v in s[2]]
    steps = [x for s in series for x, _ in s[2]]
    left, right, top, bottom = 64, 16, 28, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    log = min(values) > 0 and max(values) / min(values) > 20
    if log:
        y_lo = 10 ** math.floor(math.log10(min(values)))
        y_hi = 10 ** math.ceil(math.log10(max(values)))
        y_ticks = log_ticks(y_lo, y_hi)

        def y_of(v):
            return top + plot_h * (1 - (math.log10(v) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo)))
    else:
        y_ticks = nice_ticks(min(0.0, min(values)), max(values))
        y_lo, y_hi = y_ticks[0], y_ticks[-1]

        def y_of(v):
            return top + plot_h * (1 - (v - y_lo) / ((y_hi - y_lo) or 1))
    x_ticks = nice_ticks(min(0.0, min(steps)), max(steps), 6)
    x_lo, x_hi = x_ticks[0], x_ticks[-1]

    def x_of(s):
        return left + plot_w * (s - x_lo) / ((x_hi - x_lo) or 1)

    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="loss curves">',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#9ca3af"/>']
    for t in y_ticks:
        y = y_of(t)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{t:g}</text>')
    for t in x_ticks:
        x = x_of(t)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" stroke="#f3f4f6"/>'
                     f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" class="tick">{t:g}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle" class="axis">step</text>'
                 f'<text transform="translate(14 {top + plot_h / 2}) rotate(-90)" text-anchor="middle" '
                 f'class="axis">loss{" (log scale)" if log else ""}</text>')
    if point.get("step") is not None:
        x, y = x_of(point["step"]), y_of(point["loss"])
        anchor, dx = ("end", -6) if x > left + plot_w * 0.7 else ("start", 6)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" stroke="{COLORS["marker"]}" '
                     f'stroke-dasharray="5 4"/>'
                     f'<circle cx="{x:.1f}" cy="{y:.1f}" r="8" fill="none" stroke="{COLORS["marker"]}" '
                     f'stroke-width="2"><title>over-fitting point: step {point["step"]:g}, validation loss '
                     f'{point["loss"]:.4f}</title></circle>'
                     f'<text x="{x + dx:.1f}" y="{top + 14}" text-anchor="{anchor}" class="marker">over-fitting '
                     f'point (step {point["step"]:g})</text>')
    for label, color, points, dots in series:
        path = " ".join(f"{x_of(s):.1f},{y_of(v):.1f}" for s, v in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        if dots or len(points) == 1:
            parts += [f'<circle cx="{x_of(s):.1f}" cy="{y_of(v):.1f}" r="3.5" fill="{color}"><title>{esc(label)}: '
                      f'step {s:g}, {v:.4f}</title></circle>' for s, v in points]
    for i, (label, color, _, _) in enumerate(series):     # the legend above the plot, where no line runs
        x = left + 150 * i
        parts.append(f'<line x1="{x}" x2="{x + 22}" y1="10" y2="10" stroke="{color}" stroke-width="2"/>'
                     f'<text x="{x + 28}" y="14" class="tick">{esc(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def interval_chart(variants: dict, metric: str, label: str, width: int = 760) -> str:
    """Each variant's `metric` on a 0-1 axis with its 95 % interval as a whisker (inline SVG)."""
    rows = [(v.get("label", name), number(v.get(metric)), v.get(f"{metric}_ci")) for name, v in variants.items()
            if isinstance(v, dict) and number(v.get(metric)) is not None]
    if not rows:
        return ""
    left, right, top, row_h = 170, 24, 10, 28
    plot_w = width - left - right
    height = top + row_h * len(rows) + 34

    def x_of(v):
        return left + plot_w * min(max(v, 0.0), 1.0)

    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(label)} with 95 % intervals">']
    for t in (0, 0.2, 0.4, 0.6, 0.8, 1.0):
        x = x_of(t)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + row_h * len(rows)}" stroke="#e5e7eb"/>'
                     f'<text x="{x:.1f}" y="{top + row_h * len(rows) + 16}" text-anchor="middle" '
                     f'class="tick">{t:g}</text>')
    for i, (name, value, ci) in enumerate(rows):
        y = top + row_h * i + row_h / 2
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end" class="tick">{esc(name)}</text>')
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(number(c) is not None for c in ci):
            parts.append(f'<line x1="{x_of(ci[0]):.1f}" x2="{x_of(ci[1]):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                         f'stroke="#374151" stroke-width="2"/>'
                         + "".join(f'<line x1="{x_of(c):.1f}" x2="{x_of(c):.1f}" y1="{y - 6:.1f}" y2="{y + 6:.1f}" '
                                   f'stroke="#374151" stroke-width="2"/>' for c in ci))
        parts.append(f'<circle cx="{x_of(value):.1f}" cy="{y:.1f}" r="5" fill="{COLORS["train"]}"><title>'
                     f'{esc(name)}: {esc(label)} {value:.3f}</title></circle>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 2}" text-anchor="middle" class="axis">{esc(label)} '
                 "(dot) and 95 % interval (whisker)</text></svg>")
    return "".join(parts)


def confusion_table(labels: list, matrix: list, caption: str) -> str:
    """A confusion matrix as an HTML table, cells shaded by count (rows: reference, columns: predicted)."""
    if not (isinstance(labels, list) and isinstance(matrix, list) and len(matrix) == len(labels)
            and all(isinstance(row, list) and len(row) == len(labels) for row in matrix)
            and all(number(c) is not None for row in matrix for c in row)):
        raise ValueError(f"confusion matrix does not match its {len(labels) if isinstance(labels, list) else '?'} "
                         "labels")
    darkest = max([c for row in matrix for c in row] + [1])
    head = "".join(f"<th>{esc(label)}</th>" for label in labels)
    body = []
    for i, (label, row) in enumerate(zip(labels, matrix)):
        cells = []
        for j, count in enumerate(row):
            share = count / darkest
            color = "#fff" if share > 0.5 else "#111827"
            cls = ' class="diag"' if i == j else ""
            cells.append(f'<td{cls} style="background:rgba(37,99,235,{0.08 + 0.92 * share:.2f});color:{color}">'
                         f"{count:g}</td>")
        body.append(f"<tr><th>{esc(label)}</th>{''.join(cells)}</tr>")
    return (f'<table class="cm"><caption>{esc(caption)}</caption><thead><tr><th class="corner">reference ↓ '
            f'predicted →</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


# -------------------------------------------------------------------------------------------------------- sections

def parallel_coordinates(trials: list, names: list[str], metric: str, best: int | None, width: int = 760,
                         height: int = 300) -> str:
    """A sweep's trials as inline SVG parallel coordinates: one vertical axis per hyper-parameter and one for the
    objective, one line per trial through its values (numbers on a linear axis, or a log one when they are positive
    and span more than 20x; other values evenly spaced); the best trial bold, trials stopped early dashed grey."""
    axes = [*names, metric]
    left, right, top, bottom = 40, 110, 34, 36
    step = (width - left - right) / max(len(axes) - 1, 1)

    def on_axis(trial, axis):
        return trial["metric"] if axis == metric else trial["params"].get(axis)

    def scale(axis):
        vals = [v for v in (on_axis(t, axis) for t in trials) if v is not None]
        nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if vals and len(nums) == len(vals):
            lo, hi = min(nums), max(nums)
            log = lo > 0 and hi / lo > 20
            f = (lambda v: math.log10(v)) if log else (lambda v: v)
            span = (f(hi) - f(lo)) or 1
            return (lambda v: (f(v) - f(lo)) / span if hi != lo else 0.5), [lo, hi]
        levels = sorted({str(v) for v in vals})
        return (lambda v: (levels.index(str(v)) + 0.5) / len(levels)), levels

    scales = {axis: scale(axis) for axis in axes}
    plot_h = height - top - bottom
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="sweep trials, parallel coordinates">']
    for i, axis in enumerate(axes):
        x = left + step * i
        _, ends = scales[axis]
        shown = ends if len(ends) <= 6 else [ends[0], ends[-1]]
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" stroke="#9ca3af"/>'
                     f'<text x="{x:.1f}" y="{top - 12}" text-anchor="middle" class="axis">{esc(axis)}</text>')
        last = i == len(axes) - 1      # its values to the left: the trial labels sit to its right
        for value in shown:
            y = top + plot_h * (1 - scales[axis][0](value))
            parts.append(f'<text x="{x - 4 if last else x + 4:.1f}" y="{y + 4:.1f}" class="tick" '
                         f'text-anchor="{"end" if last else "start"}">'
                         f'{esc(fmt(value, ".3g") if isinstance(value, float) else value)}</text>')
    for t in sorted(trials, key=lambda t: t["index"] == best):       # the best drawn last, on top
        points = []
        for i, axis in enumerate(axes):
            v = on_axis(t, axis)
            if v is not None:
                points.append(f"{left + step * i:.1f},{top + plot_h * (1 - scales[axis][0](v)):.1f}")
        stopped = t.get("status") != "completed"
        style = ('stroke="#dc2626" stroke-width="3"' if t["index"] == best else
                 'stroke="#9ca3af" stroke-width="1.5" stroke-dasharray="5 4"' if stopped else
                 'stroke="#2563eb" stroke-width="1.5"')
        parts.append(f'<polyline points="{" ".join(points)}" fill="none" {style}><title>trial {t["index"]}: '
                     f'{esc(t.get("status"))}, {esc(metric)} {esc(fmt(t["metric"], ".4g"))}</title></polyline>')
        if points:
            x, y = points[-1].split(",")
            parts.append(f'<text x="{float(x) + 8:.1f}" y="{float(y) + 4:.1f}" class="tick">trial {t["index"]}'
                         f'{" (best)" if t["index"] == best else ""}</text>')
    parts.append("</svg>")
    return "".join(parts)


def section_sweep(node: str, record: dict) -> str:
    """A sweep node's trials (`<run>/<node>/sweep.json`): parallel coordinates and the table of hyper-parameters
    against the objective, the best trial marked."""
    trials = record["trials"]
    objective = record.get("objective") or {}
    metric = objective.get("primary_metric") or "objective"
    names = sorted({name for t in trials for name in t["params"]})
    best = record.get("best_index")
    rows = [[f"{t['index']}{' (best)' if t['index'] == best else ''}",
             *(esc(fmt(t["params"].get(n), ".4g") if isinstance(t["params"].get(n), float) else t["params"].get(n))
               for n in names), esc(fmt(t["metric"], ".4g")), esc(t.get("status")), esc(duration(t.get("seconds")))]
            for t in trials]
    goal = f"{objective.get('goal', '')} {metric}".strip() if objective else "the sweep's objective"
    return (f"<p>{esc(node)}: {len(trials)} trial(s), objective: {esc(goal)}; best trial {esc(best)} "
            f"({esc(metric)} {esc(fmt(record.get('best_metric'), '.4g'))}), its MLflow run "
            f"<code>{esc(record.get('best_run_id'))}</code>. Trials stopped early (the early-termination policy or a "
            f"limit) are dashed.</p>" + parallel_coordinates(trials, names, metric, best)
            + table(["trial", *map(esc, names), esc(metric), "status", "time"], rows))


def section_header(run_dir: Path, run: dict) -> str:
    rows = [("run folder", esc(run_dir)), ("pipeline", esc(run.get("pipeline", "n/a"))),
            ("status", esc(run.get("status", "n/a (no run.json)")))]
    steps = run.get("steps")
    if isinstance(steps, dict) and steps:
        rows.append(("steps", ", ".join(f"{esc(n)} <span class=\"state\">{esc(s)}</span>" for n, s in steps.items())))
    failed = run.get("failed")
    if isinstance(failed, list) and failed:
        rows.append(("failed", "; ".join(esc(f"{f.get('node')}: {f.get('reason')}") for f in failed
                                         if isinstance(f, dict))))
    if run.get("mlflow_run_id"):
        rows.append(("MLflow run", f"{esc(run['mlflow_run_id'])} at {esc(run.get('tracking_uri', '?'))}"))
    for node, path in find(run_dir, "data")[:1]:
        counts = read_json(path).get("rows")
        counts = counts if isinstance(counts, dict) else {}
        splits = [f"{k} {counts[k]}" for k in ("train", "validation", "test") if k in counts]
        if splits:
            rows.append(("data", esc(" / ".join(splits) + " rows")))
    rows.append(("generated", esc(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))))
    return "<dl class=\"meta\">" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def ordered(variants) -> dict:
    """evaluate's variants in reading order: zero-shot, k-shot, fine-tuned, ONNX, then any other."""
    if not isinstance(variants, dict):
        return {}
    rank = {name: i for i, name in enumerate(VARIANT_ORDER)}
    return dict(sorted(variants.items(), key=lambda item: rank.get(item[0], len(rank))))


def section_comparison(node: str, result: dict, registration: dict) -> str:
    task = result.get("task") if result.get("task") in QUALITY else "classification"
    variants = ordered(result.get("variants"))
    if not variants:
        return note(f"Fine-tune or prompt: {node}'s metrics.json has no variants.")
    out = []
    verdict = result.get("verdict") if isinstance(result.get("verdict"), dict) else {}
    if verdict.get("text"):
        cls = "ok" if verdict.get("finetuning_wins") else "warn"
        out.append(f'<p class="verdict {cls}"><strong>Verdict:</strong> {esc(verdict["text"])}</p>')
    gate = registration.get("gate") if isinstance(registration.get("gate"), dict) else None
    if gate is not None:
        failed = [c for c in gate.get("checks") or [] if isinstance(c, dict) and not c.get("passed")]
        text = (f"Registered {registration.get('name', '?')} v{registration.get('version', '?')} "
                f"@{registration.get('alias', '?')}; gate " + ("passed" if gate.get("passed") else "FAILED"))
        text += "".join(f"; {c.get('detail', c.get('name'))}" for c in failed)
        out.append(f'<p class="{"ok" if gate.get("passed") else "warn"}">{esc(text)}</p>')
    metric = VERDICT_METRIC[task]
    quality = QUALITY[task]
    header = ["variant"] + [esc(f"{name} (95 % CI)" if key in ("accuracy", "macro_f1", "rouge_l") else name)
                            for key, name in quality] + ["prompt tokens / request", "latency ms / request",
                                                         "generated tokens/s", "rows"]
    rows = []
    for name, v in variants.items():
        if not isinstance(v, dict):
            continue
        label = esc(v.get("label", name))
        if name == "finetuned":
            label = f"<strong>{label}</strong>"
        rows.append([label] + [esc(with_ci(v, key)) for key, _ in quality]
                    + [esc(fmt(v.get("prompt_tokens_mean"), ",.1f")), esc(fmt(v.get("latency_ms"), ",.1f")),
                       esc(fmt(v.get("generated_tokens_per_s"), ",.0f")),
                       esc(f"{v.get('n', '?')} ({v.get('split') or 'split not stated'})")])
    out.append(table(header, rows, "numbers"))
    out.append(interval_chart(variants, metric, dict(quality)[metric]))
    out.append(f'<p class="small">{esc(task)} task; base = the base model prompted zero-shot and with '
               f'{esc(result.get("k_shot", "k"))} training examples (k-shot); 95 % intervals as evaluate computes them '
               "(accuracy: Wilson score; macro-F1, ROUGE-L: percentile bootstrap). The ONNX row is copied from "
               "optimize's report (its own rows).</p>")
    return "".join(out)


def section_losses(node: str, history: list, evaluated: dict | None) -> str:
    if not loss_points(history, "loss") and not loss_points(history, "eval_loss"):
        return note(f"Loss curves: {node}'s train_history.json holds no training or validation loss.")
    point = overfitting_point(history)
    cls = "warn" if point["step"] is not None else "ok"
    out = [loss_chart(history, point), f'<p class="{cls}">{esc(point["text"])}</p>']
    check = (evaluated or {}).get("overfitting")
    if isinstance(check, dict) and check.get("detail"):
        out.append(f'<p class="small">evaluate\'s check ({"warning" if check.get("warning") else "no warning"}): '
                   f'{esc(check["detail"])}</p>')
    return "".join(out)


def section_confusion(node: str, result: dict) -> str:
    if result.get("task", "classification") != "classification":
        return note(f"Confusion matrices: {node} scored a {result.get('task')} task; confusion matrices are for "
                    "classification only.")
    variants = ordered(result.get("variants"))
    tables = []
    for name, v in variants.items():
        if isinstance(v, dict) and "confusion_matrix" in v:
            caption = f"{v.get('label', name)} (accuracy {fmt(v.get('accuracy'))})"
            try:
                tables.append(confusion_table(v.get("labels"), v["confusion_matrix"], caption))
            except ValueError as exc:
                tables.append(note(f"{caption}: not drawn ({exc})."))
    if not tables:
        return note(f"Confusion matrices: {node}'s metrics.json holds none.")
    return ('<div class="cms">' + "".join(tables) + '</div><p class="small">Rows: the reference label; columns: '
            "the model's answer (\"(other)\": an answer that is none of the labels). The diagonal is outlined.</p>")


def section_onnx(node: str, report: dict, registration: dict) -> str:
    onnx = report.get("onnx") if isinstance(report.get("onnx"), dict) else {}
    torch = report.get("pytorch") if isinstance(report.get("pytorch"), dict) else {}
    metric = report.get("accuracy_metric") or "accuracy"
    drop = number(report.get("accuracy_drop"))
    speed = report.get("speed") if isinstance(report.get("speed"), dict) else {}
    rows = [[esc(f"{metric} on {report.get('n', '?')} {report.get('split', '?')} rows"),
             esc(fmt(torch.get("accuracy"))), esc(fmt(onnx.get("accuracy"))),
             esc(f"{-drop:+.3f} ({-100 * drop:+.1f} points)" if drop is not None else "n/a")],
            [esc(f"decode tokens/s ({speed.get('prompts', '?')} prompts × {speed.get('new_tokens', '?')} tokens, "
                 f"batch {speed.get('batch_size', 1)})"),
             esc(fmt(torch.get("tokens_per_s"), ",.1f")), esc(fmt(onnx.get("tokens_per_s"), ",.1f")),
             esc(f"×{fmt(report.get('speedup'), '.2f')}")],
            ["answers identical to PyTorch's (agreement)", "", esc(fmt(report.get("agreement"), ".1%")), ""],
            ["model size MB", "", esc(fmt(onnx.get("size_mb"), ",.1f")), ""],
            ["build time", "", esc(duration(onnx.get("build_s"))), ""]]
    out = [f"<p>The fine-tuned model in PyTorch against its ONNX Runtime GenAI build "
           f"({esc(report.get('precision', '?'))}, {esc(report.get('execution_provider', '?'))}), same rows, greedy."
           "</p>", table(["", "PyTorch", "ONNX", "change"], rows, "numbers")]
    adapters = report.get("adapters")
    if isinstance(adapters, dict) and adapters:
        out.append("<p>Per adapter (the top-level figures are the adapter that lost the most):</p>")
        out.append(table(["adapter", "rows", "PyTorch", "ONNX", "drop", "agreement"], [
            [esc(name), esc(a.get("n", "?")), esc(fmt((a.get("pytorch") or {}).get("accuracy"))),
             esc(fmt((a.get("onnx") or {}).get("accuracy"))), esc(fmt(a.get("accuracy_drop"), "+.3f")),
             esc(fmt(a.get("agreement"), ".1%"))] for name, a in adapters.items() if isinstance(a, dict)], "numbers"))
    gate = registration.get("gate") if isinstance(registration.get("gate"), dict) else {}
    for check in gate.get("checks") or []:
        if isinstance(check, dict) and check.get("name") == "max_optimized_drop":
            out.append(f'<p class="{"ok" if check.get("passed") else "warn"}">register\'s gate: '
                       f'{esc(check.get("detail", ""))}: {"passed" if check.get("passed") else "FAILED"}</p>')
    return "".join(out)


def mlflow_runs(uri: str, run_ids: list[str]) -> tuple[dict, str]:
    """{run id: {"wall_s", "machine_cpu", "machine_mem"}} from a local sqlite MLflow store (read-only), and a note
    when it could not be read."""
    if not uri.startswith("sqlite:///"):
        return {}, (f"wall time and machine figures come from the MLflow store, read here only when it is a local "
                    f"sqlite file; this run's is {uri or 'not recorded'}")
    db = Path(uri[len("sqlite:///"):])
    if not db.is_file():
        return {}, f"the MLflow store {db} is gone"
    found = {}
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            for run_id in run_ids:
                row = con.execute("SELECT start_time, end_time FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
                if row is None:
                    continue
                info = {"start": row[0], "wall_s": (row[1] - row[0]) / 1000 if None not in row else None}
                for key, sql, name in [("machine_cpu", "AVG", "system/cpu_utilization_percentage"),
                                       ("machine_mem", "MAX", "system/system_memory_usage_megabytes")]:
                    info[key] = con.execute(f"SELECT {sql}(value) FROM metrics WHERE run_uuid = ? AND key = ?",
                                            (run_id, name)).fetchone()[0]
                found[run_id] = info
        finally:
            con.close()
    except sqlite3.Error as exc:
        return {}, f"the MLflow store {db} could not be read ({exc})"
    return found, ""


def step_resources(run_dir: Path, node: str) -> dict:
    """The `resources` a step wrote about its own process (slmops.resources.summary), from any of its outputs."""
    outputs = Path(run_dir) / node / "outputs"
    for folder in sorted(outputs.iterdir()) if outputs.is_dir() else []:
        for name in RESOURCE_FILES:
            try:
                data = read_json(folder / name) if folder.is_dir() else {}
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and isinstance(data.get("resources"), dict):
                return data["resources"]
    return {}


def section_resources(run_dir: Path, run: dict) -> str:
    steps = {}
    for folder in sorted(p for p in Path(run_dir).iterdir() if (p / "step.json").is_file()):
        try:
            steps[folder.name] = read_json(folder / "step.json")
        except (OSError, ValueError):
            steps[folder.name] = {}
    if not steps:
        return note("Resource use: no <node>/step.json in this run folder.")
    ids = [s.get("mlflow_run_id") for s in steps.values() if s.get("mlflow_run_id")]
    runs, why = mlflow_runs(str(run.get("tracking_uri") or ""), ids + [run.get("mlflow_run_id") or ""])
    started = {node: runs.get(step.get("mlflow_run_id"), {}).get("start") for node, step in steps.items()}
    steps = dict(sorted(steps.items(), key=lambda item: (started[item[0]] is None, started[item[0]] or 0, item[0])))
    own = {node: step_resources(run_dir, node) for node in steps}
    gpu = any(r.get("gpu_peak_memory_mb") for r in own.values())
    machine = any(r.get("machine_cpu") is not None for r in runs.values())
    header = ["step", "status", "wall time", "peak RSS MB", "mean CPU %"] + (["peak GPU MB"] if gpu else []) + (
        ["machine CPU % (mean)", "machine memory MB (peak)"] if machine else [])
    rows = []
    for node, step in steps.items():
        r, m = own[node], runs.get(step.get("mlflow_run_id"), {})
        row = [esc(node), esc(step.get("status", "?")), esc(duration(m.get("wall_s", r.get("wall_s")))),
               esc(fmt(r.get("peak_rss_mb"), ",.0f")), esc(fmt(r.get("mean_cpu_percent"), ".0f"))]
        if gpu:
            row.append(esc(", ".join(fmt(g, ",.0f") for g in r.get("gpu_peak_memory_mb") or []) or "n/a"))
        if machine:
            row += [esc(fmt(m.get("machine_cpu"), ".0f")), esc(fmt(m.get("machine_mem"), ",.0f"))]
        rows.append(row)
    total = runs.get(run.get("mlflow_run_id"), {}).get("wall_s")
    cores = next((r.get("cpu_count") for r in own.values() if r.get("cpu_count")), None)
    text = ("Wall time: the step's MLflow run, start to end (a reused step: the run that produced its outputs). Peak "
            "RSS and mean CPU % (100 = one core busy" + (f"; {cores} cores" if cores else "") + "): the step's own "
            "process, as the step recorded it (n/a: the step records none). ")
    if machine:
        text += "Machine CPU and memory: MLflow's system metrics of the step's run (the whole machine). "
    if total is not None:
        text += f"The whole pipeline run: {duration(total)}. "
    if why:
        text += why[0].upper() + why[1:] + "."
    return table(header, rows, "numbers") + f'<p class="small">{esc(text.strip())}</p>'


# ---------------------------------------------------------------------------------------------------------- build

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#111827;margin:0;background:#f9fafb}
main{max-width:1100px;margin:0 auto;padding:24px 32px 48px}
h1{font-size:1.6em;margin:0 0 12px}h2{font-size:1.25em;margin:32px 0 8px;border-bottom:1px solid #d1d5db;
padding-bottom:4px}h3{font-size:1.05em;margin:20px 0 6px;color:#374151}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0;font-size:.92em}
dl.meta dt{color:#6b7280}dl.meta dd{margin:0;word-break:break-all}.state{color:#6b7280}
table{border-collapse:collapse;margin:8px 0;background:#fff;font-size:.92em}
th,td{border:1px solid #d1d5db;padding:4px 10px;text-align:left;vertical-align:top}
thead th{background:#f3f4f6}
table.numbers td:not(:first-child){text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.cms{display:flex;flex-wrap:wrap;gap:20px;align-items:flex-start}
table.cm td{text-align:center;min-width:34px;font-variant-numeric:tabular-nums}
table.cm td.diag{outline:2px solid #111827;outline-offset:-2px}
table.cm caption{font-weight:600;padding-bottom:4px;text-align:left}
table.cm th{font-weight:500;font-size:.9em}table.cm th.corner{color:#6b7280;font-size:.8em}
.chart{display:block;max-width:100%;height:auto;margin:8px 0}.chart .tick{font-size:11px;fill:#374151}
.chart .axis{font-size:12px;fill:#111827}.chart .marker{font-size:12px;fill:#dc2626;font-weight:600}
.omitted{color:#6b7280;font-style:italic}.small{color:#4b5563;font-size:.86em}
.ok{border-left:4px solid #16a34a;padding:4px 10px;background:#f0fdf4}
.warn{border-left:4px solid #dc2626;padding:4px 10px;background:#fef2f2}.verdict{font-size:1.05em}
"""


def _section(title: str, body: str) -> str:
    return f"<section><h2>{esc(title)}</h2>{body}</section>"


def _guard(what: str, path: Path, build) -> str:
    """A section's HTML, or a one-line note when its file cannot be read or holds something unexpected."""
    try:
        return build()
    except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        return note(f"{what}: not shown; {path} could not be read as a step writes it ({type(exc).__name__}: {exc}).")


def build(run_dir: Path) -> str:
    """The report of the run folder `run_dir` as one HTML document (a str). Pure but for reading the folder, its
    MLflow sqlite store and the clock."""
    run_dir = Path(run_dir)
    try:
        run = read_json(run_dir / "run.json")
    except (OSError, ValueError):
        run = {}
    run = run if isinstance(run, dict) else {}

    def load(path: Path, kind=dict):
        data = read_json(path)
        if not isinstance(data, kind):
            raise ValueError(f"not a JSON {'object' if kind is dict else 'list'}")
        return data

    def consumer(role: str, folder: Path, producers: str) -> dict:
        """The `role` file of the node that took `folder` as an input (e.g. the register step that read this
        evaluate's metrics); with no such record, the only one when the run has one node of each role."""
        found = find(run_dir, role)
        chosen = [path for node, path in found if _reads(run_dir, node, folder)]
        if not chosen and len(found) == 1 and len(find(run_dir, producers)) == 1:
            chosen = [found[0][1]]
        try:
            return load(chosen[0]) if chosen else {}
        except (OSError, ValueError):
            return {}

    sections = []

    def each(title: str, role: str, render) -> None:
        found = find(run_dir, role)
        if not found:
            sections.append(_section(title, note(f"{title}: omitted; this pipeline run has no {expected(role)}.")))
            return
        for node, path in found:
            heading = title if len(found) == 1 else f"{title}: {node}"
            sections.append(_section(heading, _guard(title, path, lambda: render(node, path))))

    each("Fine-tune or prompt?", "eval", lambda node, path: section_comparison(
        node, load(path), consumer("registration", path.parent, "eval")))
    each("Loss curves", "history", lambda node, path: section_losses(
        node, load(path, list), consumer("eval", path.parent, "history") or None))   # evaluate's over-fitting check
    each("Confusion matrices", "eval", lambda node, path: section_confusion(node, load(path)))
    for path in sorted(run_dir.glob("*/sweep.json")):       # only a run with a sweep node has one
        sections.append(_section(f"Hyper-parameter sweep: {path.parent.name}", _guard(
            "Sweep", path, lambda path=path: section_sweep(path.parent.name, load(path)))))
    each("ONNX drift", "optimize", lambda node, path: section_onnx(
        node, load(path), consumer("registration", path.parent, "optimize")))
    sections.append(_section("Resource use per step", _guard("Resource use", run_dir,
                                                             lambda: section_resources(run_dir, run))))
    title = f"slmops run report: {run_dir.name}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{esc(title)}</h1>{section_header(run_dir, run)}{''.join(sections)}</main></body></html>\n")


def _reads(run_dir: Path, node: str, folder: Path) -> bool:
    """Whether `node` took `folder` (a step output linked in the run folder) as one of its inputs."""
    try:
        inputs = read_json(Path(run_dir) / node / "step.json").get("inputs") or {}
        target = folder.resolve()
    except (OSError, ValueError, AttributeError):
        return False
    return any(isinstance(v, str) and v and Path(v).resolve() == target for v in inputs.values())


def write(run_dir: Path, out: Path | None = None) -> Path:
    """Build the report of `run_dir` and write it (atomically) to `out`, default `<run_dir>/report.html`."""
    out = Path(out) if out is not None else Path(run_dir) / REPORT_NAME
    write_text(out, build(run_dir))
    return out


def publish(run_dir: Path, tracker, run_id: str, warn=print) -> Path:
    """Write `<run_dir>/report.html` and log it to the MLflow run `run_id` as `report/report.html` (`tracker`: a
    recorder of slmops.runner.tracking). A tracking server that refuses the file is a warning: the run succeeded
    and its report is on disk."""
    path = write(run_dir)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / REPORT_NAME).write_bytes(path.read_bytes())
        try:
            tracker.log_artifacts(run_id, Path(folder), "report")
        except Exception as exc:      # the server's error types vary (mlflow, azureml, requests, OSError)
            warn(f"warning: the report was not logged to MLflow run {run_id} ({type(exc).__name__}: {exc}); it is "
                 f"at {path}")
    return path


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the HTML file (default: RUN_DIR/report.html).")
def report(run_dir: Path, out: Path | None):
    """Write one self-contained HTML report of a pipeline run folder: loss curves with the over-fitting point,
    confusion matrices, baselines vs fine-tuned with 95 % intervals, ONNX drift, resource use per step."""
    from slmops.errors import UserError

    if not (run_dir / "run.json").is_file() and not any(run_dir.glob("*/step.json")):
        raise UserError(f"{run_dir} is not a run folder (no run.json, no <node>/step.json). Fix: pass the folder "
                        "`slmops run` wrote, its --run-dir (e.g. runs/finetune-20261130-120000).")
    click.echo(f"report: {write(run_dir, out)}")
