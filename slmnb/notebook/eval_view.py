"""What `%finetune eval` shows: the metrics table (base and fine-tuned side by side), a classification's confusion
matrix, and the rows the fine-tune gets wrong.

The confusion matrix is a Plotly heatmap with an SVG of the same matrix in its output: JupyterLab draws the
heatmap, and a saved notebook read without a kernel or plotly (nbconvert, GitHub) shows the SVG, as the
dashboard's static record does. Each part is a separate output so the front end can pick the best form of each.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import Any

from slmnb.evaluation import (
    WRONG_SHOWN,
    Evaluation,
    confusion_text,
    metrics_table,
    per_class_table,
    report_lines,
    wrong_text,
    wrong_title,
)
from slmnb.notebook.views import html_table
from slmnb.text import text_table

PLOTLY = "application/vnd.plotly.v1+json"
CELL, LABEL_W, HEAD_H = 56, 110, 70  # the SVG's cell side, row-label width and space above the matrix (px)


class EvalView:
    """A run's evaluations, shown as table, confusion matrix and wrong rows; `.evaluations` keeps them."""

    def __init__(self, run_name: str, evaluations: Sequence[Evaluation], wrong_shown: int = WRONG_SHOWN) -> None:
        self.run_name = run_name
        self.evaluations = list(evaluations)
        self.wrong_shown = wrong_shown

    @property
    def evaluation(self) -> Evaluation:
        """The fine-tune's evaluation (the last column)."""
        return self.evaluations[-1]

    def bundles(self) -> list[dict[str, Any]]:
        """The outputs, in order: the tables, the confusion matrix (classification only), the wrong rows."""
        out = [self._tables_bundle()]
        confusion = self.evaluation.confusion()
        if confusion:
            out.append(confusion_bundle(*confusion, title=f"{self.run_name}, {self.evaluation.model}: "
                                                          f"{self.evaluation.split}"))
        out.append(self._wrong_bundle())
        return out

    def _ipython_display_(self) -> None:
        from IPython.display import display

        for bundle in self.bundles():
            display(bundle, raw=True)

    def __repr__(self) -> str:
        return "\n".join([f"{self.run_name} evaluated", *report_lines(self.evaluations, self.wrong_shown)])

    def _tables_bundle(self) -> dict[str, str]:
        main = self.evaluation
        timing = ", ".join(f"{e.model} {e.seconds:.1f} s" for e in self.evaluations)
        title = (f"<b>{escape(self.run_name)}</b> on <code>{escape(main.split)}</code>: {len(main.rows)} rows "
                 f"(answering took {escape(timing)})")
        html = [f"<div>{title}</div>", html_table(*metrics_table(self.evaluations))]
        text = [f"{self.run_name} on {main.split}: {len(main.rows)} rows", text_table(*metrics_table(self.evaluations))]
        per_class = per_class_table(main)
        if per_class:
            html += [f"<div style='margin-top:8px'>Per class ({escape(main.model)})</div>", html_table(*per_class)]
            text += ["", f"per class ({main.model}):", text_table(*per_class)]
        return {"text/html": "\n".join(html), "text/plain": "\n".join(text)}

    def _wrong_bundle(self) -> dict[str, str]:
        main = self.evaluation
        title = wrong_title(main, self.wrong_shown)
        wrong = [list(row) for row in main.wrong(self.wrong_shown)]
        header = ["prompt", "reference", "answer"]
        html = f"<div style='margin-top:8px'>{escape(title)}</div>" + (html_table(header, wrong) if wrong else "")
        text = title + ("\n" + wrong_text(main, self.wrong_shown) if wrong else "")
        return {"text/html": html, "text/plain": text}


def confusion_bundle(labels: list[str], matrix: list[list[int]], title: str) -> dict[str, Any]:
    """The matrix as a Plotly heatmap, an SVG and text: each front end shows the best one it can."""
    return {PLOTLY: heatmap_json(labels, matrix, title), "image/svg+xml": confusion_svg(labels, matrix, title),
            "text/plain": f"confusion matrix (rows: reference, columns: answer)\n{confusion_text(labels, matrix)}"}


def heatmap_json(labels: list[str], matrix: list[list[int]], title: str) -> dict[str, Any]:
    import plotly.graph_objects as go

    side = max(260, 60 * len(labels) + 140)
    figure = go.Figure(go.Heatmap(z=matrix, x=labels, y=labels[:len(matrix)], colorscale="Blues", text=matrix,
                                  texttemplate="%{text}", showscale=False,
                                  hovertemplate="reference %{y}, answer %{x}: %{z}<extra></extra>"))
    figure.update_layout(title={"text": f"confusion matrix: {title}", "font": {"size": 13}}, width=side + 40,
                         height=side, template="plotly_white", margin={"l": 90, "r": 20, "t": 60, "b": 70})
    figure.update_xaxes(title_text="answer", side="bottom", type="category")
    figure.update_yaxes(title_text="reference", autorange="reversed", type="category")
    return dict(json.loads(figure.to_json()))


def confusion_svg(labels: list[str], matrix: list[list[int]], title: str) -> str:
    """The matrix drawn as in the heatmap: a blue as deep as the count, the count written in each cell."""
    n = len(labels)
    width, height = LABEL_W + CELL * n + 20, HEAD_H + CELL * len(matrix) + 40
    top = max((max(row) for row in matrix), default=0) or 1
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           'font-size="12">', f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="10" y="18" font-size="13" font-weight="bold">confusion matrix: {escape(title)}</text>',
           f'<text x="{LABEL_W + CELL * n / 2:.0f}" y="{HEAD_H - 26}" text-anchor="middle" fill="#555">answer</text>',
           f'<text x="10" y="{HEAD_H - 26}" fill="#555">reference</text>']
    for j, label in enumerate(labels):
        out.append(f'<text x="{LABEL_W + CELL * j + CELL / 2:.0f}" y="{HEAD_H - 6}" text-anchor="middle">'
                   f'{escape(_short(label))}</text>')
    for i, (label, row) in enumerate(zip(labels, matrix, strict=False)):  # (other) is a column, not a row
        y = HEAD_H + CELL * i
        out.append(f'<text x="{LABEL_W - 8}" y="{y + CELL / 2 + 4:.0f}" text-anchor="end">'
                   f'{escape(_short(label))}</text>')
        for j, count in enumerate(row):
            share = count / top
            fill = _blue(share)
            ink = "white" if share > 0.55 else "#222"
            x = LABEL_W + CELL * j
            out.append(f'<rect x="{x}" y="{y}" width="{CELL}" height="{CELL}" fill="{fill}" stroke="#ddd"/>')
            out.append(f'<text x="{x + CELL / 2:.0f}" y="{y + CELL / 2 + 4:.0f}" text-anchor="middle" '
                       f'fill="{ink}">{count}</text>')
    out.append("</svg>")
    return "\n".join(out)


BLUES = ((247, 251, 255), (107, 174, 214), (8, 48, 107))  # plotly's Blues at 0, 0.5 and 1


def _blue(share: float) -> str:
    """The heatmap's colour for a count that is `share` of the largest: plotly's Blues, in two straight pieces."""
    low, high = (BLUES[0], BLUES[1]) if share <= 0.5 else (BLUES[1], BLUES[2])
    t = share * 2 if share <= 0.5 else share * 2 - 1
    r, g, b = (round(a + (z - a) * t) for a, z in zip(low, high, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def _short(label: str, most: int = 12) -> str:
    return label if len(label) <= most else label[:most - 1] + "…"
