"""compare_runs(): the loss and perplexity curves of several runs overlaid, read from their metrics.jsonl, and
their generation metrics per step (accuracy, rougeL...) in a third panel when any run has them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slmnb.errors import RunError
from slmnb.notebook.charts import Curves, decimate, rounded

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
# The colour says the run; in the metrics panel the dash says the score key (rouge gives three).
KEY_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def run_curves(names: Sequence[str | Path]) -> dict[str, Curves]:
    from slmnb.training.runs import load_run

    if isinstance(names, str | Path) or not names:
        raise RunError("compare_runs takes a list of run names or folders, such as compare_runs(['a', 'b']).")
    out: dict[str, Curves] = {}
    for name in names:
        run = load_run(name)
        curves = Curves()
        for event in run.history:
            curves.add(event)
        out[run.name] = curves
    return out


def compare_runs(names: Sequence[str | Path], max_points: int = 500) -> Any:
    """A Plotly figure: smoothed train loss (solid) and eval loss (dotted) per run, and their perplexities; and the
    generation metrics of each run per step, in the run's colour, when any run has them."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    curves = run_curves(names)
    scored = any(c.metrics for c in curves.values())
    titles = ("loss", "perplexity", *(["metrics" + (" (%)" if _fractions(curves) else "")] if scored else []))
    figure = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.08)
    for i, (name, c) in enumerate(curves.items()):
        colour = PALETTE[i % len(PALETTE)]
        lines = [(c.steps, c.smoothed, 1, "solid", f"{name} train"),
                 (c.eval_steps, c.eval_loss, 1, "dot", f"{name} eval"),
                 (c.steps, c.train_perplexity, 2, "solid", None), (c.eval_steps, c.eval_perplexity, 2, "dot", None)]
        for xs, ys, col, dash, label in lines:
            if not xs:
                continue
            dx, dy = decimate(xs, ys, max_points)
            figure.add_trace(go.Scatter(x=dx, y=rounded(dy), name=label or name, legendgroup=f"{name}{dash}",
                                        showlegend=label is not None, mode="lines" if dash == "solid" else
                                        "lines+markers", line={"color": colour, "dash": dash}), row=1, col=col)
        for j, (key, series) in enumerate(c.metrics.items()):
            dx, dy = decimate(series.steps, series.values, max_points)
            figure.add_trace(go.Scatter(x=dx, y=rounded(dy), name=f"{name} {key}", mode="lines+markers",
                                        line={"color": colour, "dash": KEY_DASHES[j % len(KEY_DASHES)]}), row=1, col=3)
    figure.update_yaxes(type="log", row=1, col=2)
    if scored and _fractions(curves):
        figure.update_yaxes(tickformat=".0%", range=[-0.02, 1.02], row=1, col=3)
    figure.update_xaxes(title_text="step")
    figure.update_layout(height=340, template="plotly_white", margin={"l": 50, "r": 20, "t": 40, "b": 40})
    return figure


def _fractions(curves: dict[str, Curves]) -> bool:
    return all(c.metrics_are_fractions() for c in curves.values())
