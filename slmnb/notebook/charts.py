"""The numbers behind a run's charts, and the static SVG copy of them that a saved notebook keeps.

Three kinds of curve: the loss, its perplexity, and the scores of the answers the run generates at each evaluation
(accuracy, f1, rougeL...: fractions shown as percentages; present only when the run computes them).

Pure Python, no widgets: the dashboard and compare_runs draw these curves with Plotly, and the SVG is what GitHub
or nbviewer show when the notebook is opened without a kernel or widget state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from itertools import pairwise

from slmnb.metrics import greater_is_better
from slmnb.training import events as ev

SMOOTHING = 0.9  # exponential moving average of the train loss: the raw per-step loss is too noisy to read
OVERFIT_EVALS = 3  # eval loss rising this many evaluations in a row while train loss falls -> a hint


@dataclass
class Series:
    """One score over the evaluations: the steps it was measured at and its values."""

    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def truncate(self, step: int) -> None:
        keep = sum(1 for s in self.steps if s <= step)
        del self.steps[keep:], self.values[keep:]


@dataclass
class Curves:
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    metric_names: tuple[str, ...] = ()  # the run's settled metric names (accuracy, rouge...), from its Started event
    metrics: dict[str, Series] = field(default_factory=dict)  # per score key (accuracy, rougeL...), first seen first

    def add(self, event: ev.Event) -> None:
        if isinstance(event, ev.Started):
            self.truncate(event.step)  # a resumed run re-trains from its checkpoint: drop what it will redo
            self.metric_names = tuple(event.metrics) or self.metric_names
        elif isinstance(event, ev.Step) and math.isfinite(event.loss):
            self.steps.append(event.step)
            self.loss.append(event.loss)
            self.smoothed.append(self._smooth(event.loss))
        elif isinstance(event, ev.Eval):
            if math.isfinite(event.eval_loss):
                self.eval_steps.append(event.step)
                self.eval_loss.append(event.eval_loss)
            self._add_scores(event.step, event.metrics)

    def _add_scores(self, step: int, scores: dict[str, float]) -> None:
        for key, value in scores.items():
            # Perplexity has its own chart (from the eval loss); a score on another scale would squash the rest.
            if key != "perplexity" and isinstance(value, int | float) and math.isfinite(value):
                series = self.metrics.setdefault(key, Series())
                series.steps.append(step)
                series.values.append(float(value))

    def _smooth(self, loss: float) -> float:
        # Debiased EMA (as in Adam), so the first points are not pulled towards zero.
        n = len(self.loss)
        previous = self.smoothed[-1] * (1 - SMOOTHING ** (n - 1)) if n > 1 else 0.0
        raw = SMOOTHING * previous + (1 - SMOOTHING) * loss
        return raw / (1 - SMOOTHING**n)

    def truncate(self, step: int) -> None:
        keep = sum(1 for s in self.steps if s <= step)
        del self.steps[keep:], self.loss[keep:], self.smoothed[keep:]
        keep = sum(1 for s in self.eval_steps if s <= step)
        del self.eval_steps[keep:], self.eval_loss[keep:]
        for series in self.metrics.values():
            series.truncate(step)
        self.metrics = {key: series for key, series in self.metrics.items() if series.steps}

    def latest(self) -> dict[str, float]:
        """Each score's value at its last evaluation."""
        return {key: series.values[-1] for key, series in self.metrics.items()}

    def best(self) -> dict[str, tuple[int, float]]:
        """Each score's best value and its step (the first step it was reached), by the score's direction."""
        out = {}
        for key, series in self.metrics.items():
            pick = max if greater_is_better(key) else min
            value = pick(series.values)
            out[key] = (series.steps[series.values.index(value)], value)
        return out

    def metrics_are_fractions(self) -> bool:
        """Whether every score is a fraction (the built-in metrics' scale), so the chart's axis is 0 to 100%."""
        return all(0.0 <= v <= 1.0 for series in self.metrics.values() for v in series.values)

    def metrics_title(self) -> str:
        names = ", ".join(self.metric_names) if self.metric_names else "metrics"
        return f"{names} per step" + (" (%)" if self.metrics_are_fractions() else "")

    @property
    def train_perplexity(self) -> list[float]:
        return [ev.perplexity(x) for x in self.smoothed]

    @property
    def eval_perplexity(self) -> list[float]:
        return [ev.perplexity(x) for x in self.eval_loss]

    def overfitting(self) -> bool:
        """Eval loss rose for the last few evaluations while the smoothed train loss kept falling."""
        if len(self.eval_loss) <= OVERFIT_EVALS:
            return False
        recent = self.eval_loss[-OVERFIT_EVALS - 1:]
        rising = all(a < b for a, b in pairwise(recent))
        first = self._smoothed_at(self.eval_steps[-OVERFIT_EVALS - 1])
        last = self._smoothed_at(self.eval_steps[-1])
        return rising and first is not None and last is not None and last < first

    def _smoothed_at(self, step: int) -> float | None:
        before = [v for s, v in zip(self.steps, self.smoothed, strict=True) if s <= step]
        return before[-1] if before else None


def main_metric(scores: dict[str, float]) -> tuple[str, float] | None:
    """The score a run is summed up by in a table: its first metric's first key (accuracy, bleu...), not a loss."""
    return next(((k, float(v)) for k, v in scores.items()
                 if greater_is_better(k) and isinstance(v, int | float) and math.isfinite(v)), None)


def decimate(xs: list[int], ys: list[float], max_points: int) -> tuple[list[int], list[float]]:
    """At most max_points points, evenly strided, always keeping the last one (the value people look at)."""
    if len(xs) <= max_points:
        return list(xs), list(ys)
    stride = math.ceil((len(xs) - 1) / (max_points - 1))
    keep = [*range(0, len(xs) - 1, stride), len(xs) - 1]
    return [xs[i] for i in keep], [ys[i] for i in keep]


# Tick mantissas per decade, sparsest first: log_ticks takes the first set that gives enough ticks.
LOG_MANTISSAS = ((1,), (1, 3), (1, 2, 5), (1, 1.5, 2, 3, 5, 7))


def log_ticks(lo: float, hi: float, least: int = 3) -> list[float]:
    """Readable ticks for a log axis from lo to hi: whole decades when they are enough, 1-2-5 steps when not.

    plotly's own log ticks label 20 as "2" between decades and crowd them when the range is short.
    """
    if not (0 < lo <= hi < math.inf):
        return []
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks: list[float] = []
    for mantissas in LOG_MANTISSAS:
        ticks = [m * 10.0**e for e in range(first, last + 1) for m in mantissas if lo <= m * 10.0**e <= hi]
        if len(ticks) >= least:
            break
    if len(ticks) < 2:  # a range within one small gap: its ends are the ticks
        ticks = sorted({lo, hi})
    return ticks


def tick_text(value: float) -> str:
    """A tick label written in full (20, 1,500, 0.5), never a bare mantissa."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.3g}"


def rounded(values: list[float], digits: int = 5) -> list[float]:
    """Fewer digits for the widget: a loss shown to 5 significant digits keeps the messages small."""
    return [float(f"{v:.{digits}g}") if math.isfinite(v) else v for v in values]


# --- the static record -------------------------------------------------------------------------------

WIDTH, PANEL_H, TOP, PAD = 760, 220, 30, 44
MARKERS_UP_TO = 30  # points of a series drawn as dots too
TRAIN_COLOUR, SMOOTH_COLOUR, EVAL_COLOUR = "#9ecae1", "#1f77b4", "#ff7f0e"
# One per score key, none of them the loss charts' blues and orange (so a score never reads as a loss).
METRIC_COLOURS = ("#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
PERCENT_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)


def metric_colour(index: int) -> str:
    return METRIC_COLOURS[index % len(METRIC_COLOURS)]


def render_svg(curves: Curves, title: str, lines: list[str], max_points: int = 400) -> str:
    """Loss and perplexity panels with the run's summary lines above them, as one self-contained SVG; below them a
    panel of the generation metrics per step when the run has any."""
    text_h = 18 * (len(lines) + 1)
    rows = 2 if curves.metrics else 1
    height = TOP + text_h + rows * (PANEL_H + PAD)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
           f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>']
    for i, line in enumerate(lines):
        out.append(f'<text x="10" y="{TOP + 18 * (i + 1)}">{escape(line)}</text>')
    panel_w = (WIDTH - 3 * PAD) // 2
    top = TOP + text_h
    loss_series = [(curves.steps, curves.loss, TRAIN_COLOUR, "train"),
                   (curves.steps, curves.smoothed, SMOOTH_COLOUR, "train (smoothed)"),
                   (curves.eval_steps, curves.eval_loss, EVAL_COLOUR, "eval")]
    ppl_series = [(curves.steps, curves.train_perplexity, SMOOTH_COLOUR, "train (smoothed)"),
                  (curves.eval_steps, curves.eval_perplexity, EVAL_COLOUR, "eval")]
    out += svg_panel(PAD, top, panel_w, "loss", loss_series, log=False, max_points=max_points)
    out += svg_panel(2 * PAD + panel_w, top, panel_w, "perplexity (log scale)", ppl_series, log=True,
                  max_points=max_points)
    if curves.metrics:
        metric_series = [(series.steps, series.values, metric_colour(i), key)
                         for i, (key, series) in enumerate(curves.metrics.items())]
        out += svg_panel(PAD, top + PANEL_H + PAD, WIDTH - 2 * PAD, curves.metrics_title(), metric_series, log=False,
                      max_points=max_points, percent=curves.metrics_are_fractions())
    out.append("</svg>")
    return "\n".join(out)


def svg_panel(x0: int, y0: int, w: int, label: str, series: list, log: bool, max_points: int,
              percent: bool = False, x_name: str = "step", x_log: bool = False, lines: bool = True) -> list[str]:
    """One chart of series (xs, ys, colour, name[, stroke width]). A log panel leaves out values <= 0 (x_log: x
    values <= 0); a percent panel spans 0 to 100% whatever its values; without lines, the points are dots."""
    h = PANEL_H
    out = [f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>',
           f'<text x="{x0}" y="{y0 - 6}" font-weight="bold">{escape(label)}</text>']

    def shown(x: float, y: float) -> bool:
        return math.isfinite(y) and (y > 0 or not log) and (x > 0 or not x_log)

    points = [(x, y) for xs, ys, *_ in series for x, y in zip(xs, ys, strict=True) if shown(x, y)]
    if not points:
        out.append(f'<text x="{x0 + 10}" y="{y0 + h // 2}" fill="#666">no data yet</text>')
        return out
    scale = math.log10 if log else (lambda v: v)
    x_scale = math.log10 if x_log else (lambda v: v)
    x_lo, x_hi = min(x_scale(p[0]) for p in points), max(x_scale(p[0]) for p in points)
    y_lo, y_hi = min(scale(p[1]) for p in points), max(scale(p[1]) for p in points)
    if percent:
        y_lo, y_hi = 0.0, 1.0
    x_span, y_span = max(x_hi - x_lo, 1 if x_name == "step" else 1e-9), max(y_hi - y_lo, 1e-9)

    def at(x: float, y: float) -> str:
        return f"{x0 + (x_scale(x) - x_lo) / x_span * w:.1f},{y0 + h - (scale(y) - y_lo) / y_span * h:.1f}"

    if log:
        labels = [(math.log10(t), tick_text(t)) for t in log_ticks(10**y_lo, 10**y_hi)]
    elif percent:
        labels = [(t, f"{t:.0%}") for t in PERCENT_TICKS]
    else:
        labels = [(value, f"{value:.3g}") for value in (y_lo, y_hi)]
    for value, text in labels:
        y = y0 + h - (value - y_lo) / y_span * h
        out.append(f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{text}</text>')
        if log or percent:
            out.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
    ends = [10**v if x_log else v for v in (x_lo, x_hi)]
    out.append(f'<text x="{x0}" y="{y0 + h + 14}" font-size="10">{escape(x_name)} {ends[0]:.4g}</text>')
    out.append(f'<text x="{x0 + w}" y="{y0 + h + 14}" font-size="10" text-anchor="end">{escape(x_name)} '
               f'{ends[1]:.4g}</text>')
    for i, (xs, ys, colour, name, *width) in enumerate(series):
        kept = [(x, y) for x, y in zip(xs, ys, strict=True) if shown(x, y)]
        if not kept:
            continue
        dx, dy = decimate([p[0] for p in kept], [p[1] for p in kept], max_points) if lines else \
            ([p[0] for p in kept], [p[1] for p in kept])
        if lines:
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="{width[0] if width else 1.5}" '
                       f'points="{" ".join(at(x, y) for x, y in zip(dx, dy, strict=True))}"/>')
        if len(dx) <= MARKERS_UP_TO or not lines:  # a line of one point draws nothing: its markers show it
            for x, y in zip(dx, dy, strict=True):
                cx, cy = at(x, y).split(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{colour}"/>')
        if name:  # an unnamed series has no label (many trials' curves would crowd the panel)
            out.append(f'<text x="{x0 + w - 6}" y="{y0 + 14 + 14 * i}" text-anchor="end" fill="{colour}">'
                       f'{escape(name)}</text>')
    return out
