"""The live view of a hyperparameter search under its cell: progress with ETA, Stop / Pause / Resume for the whole
search, the trials table, every trial's objective curve overlaid (the best one highlighted), the objective against
each searched parameter, and at the end the best trial as a ready `%%finetune` cell with an Insert button.

It is drawn like the training dashboard: the search's thread only queues events, one drawing thread turns them into
widget changes at most four times a second, and when the search ends a static SVG record (summary, table, charts,
the best cell) goes under the cell for saved notebooks.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import replace
from html import escape
from typing import TYPE_CHECKING, Any

from slmnb.errors import SlmnbError
from slmnb.metrics import score_text
from slmnb.notebook.charts import PAD, PANEL_H, TOP, WIDTH, svg_panel
from slmnb.notebook.dashboard import STATUS_COLOURS, live_figure_class, responsive
from slmnb.notebook.form import CELL_MIME
from slmnb.text import clock, text_table
from slmnb.training import events as ev
from slmnb.training.states import RunState as S
from slmnb.tuning import events as sev
from slmnb.tuning.trial import TrialRow, best_of, objective_value, steps_saved

if TYPE_CHECKING:
    from slmnb.tuning.study import Search

INTERVAL = 0.25  # seconds between redraws
STATE_COLOURS = {"complete": "#1f77b4", "pruned": "#9e9e9e", "failed": "#c62828", "running": "#ff7f0e",
                 "waiting": "#bdbdbd"}
BEST_COLOUR = "#2ca02c"
CELL_LINES_SHOWN = 24  # of the best cell, in the static record's picture


class SearchView:
    def __init__(self, search: Search, *, note: str | None = None, interval: float = INTERVAL) -> None:
        self.search, self.note, self.interval = search, note, interval
        # The objective at each evaluation of each trial, by run name: steps keyed, so an event seen twice (replayed
        # from disk and live) counts once.
        self.curves: dict[str, dict[int, float]] = {}
        self.updates = 0
        self._rows: list[TrialRow] = []
        self._live_step: tuple[str, int, float] | None = None  # the training trial's run, last step, elapsed
        self._pending: list[sev.SearchEvent] = []
        self._queue_lock = threading.Lock()
        self._draw_lock = threading.Lock()
        self._ended = threading.Event()
        self._drawer: threading.Thread | None = None
        self._drawn: tuple[Any, ...] | None = None
        self._sent_curves: dict[str, tuple[int, bool]] = {}
        self._sent_points: tuple[Any, ...] | None = None
        self._end: sev.SearchEnded | None = None
        self._started = time.monotonic()
        self._notice = ""
        self._record: Any = None
        self._unsubscribe: Any = None
        self._build()

    # --- widgets ------------------------------------------------------------------------------------------------

    def _build(self) -> None:
        import ipywidgets as w
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        spec = self.search.spec
        self.title = w.HTML(self._title_html())
        self.progress = w.IntProgress(min=0, max=max(spec.num_trials, 1), layout={"width": "40%"})
        self.progress_text = w.HTML()
        self.status = w.HTML()
        self.stop_button = w.Button(description="Stop", icon="stop",
                                    tooltip="End the search: the trial training now is queued again for a resume")
        self.pause_button = w.Button(description="Pause", icon="pause",
                                     tooltip="Hold the trial training now between steps; start no new one")
        self.resume_button = w.Button(description="Resume", icon="play", tooltip="Go on after Pause")
        self.stop_button.on_click(lambda _: self._click(self.search.stop))
        self.pause_button.on_click(lambda _: self._click(self.search.pause))
        self.resume_button.on_click(lambda _: self._click(self.search.resume))
        self.table = w.HTML()
        curves = go.Figure()
        curves.update_layout(height=300, autosize=True, margin={"l": 50, "r": 20, "t": 40, "b": 40},
                             title={"text": f"{spec.objective} at each evaluation, every trial", "x": 0.5,
                                    "font": {"size": 14}},
                             legend={"orientation": "h", "y": -0.25}, template="plotly_white")
        curves.update_xaxes(title_text="step", rangemode="tozero")
        self.curves_figure = responsive(live_figure_class()(curves))
        names = list(spec.space)
        points = make_subplots(rows=1, cols=max(len(names), 1), subplot_titles=names, horizontal_spacing=0.08)
        for col, name in enumerate(names, start=1):
            points.add_trace(go.Scatter(name=name, mode="markers", showlegend=False, marker={"size": 9}),
                             row=1, col=col)
            param = spec.space[name]
            points.update_xaxes(type="log" if param.log else ("category" if param.type == "choice" else None),
                                row=1, col=col)
        points.update_yaxes(title_text=spec.objective, row=1, col=1)
        points.update_layout(height=260, autosize=True, margin={"l": 50, "r": 20, "t": 40, "b": 40},
                             template="plotly_white")
        self.points_figure = responsive(live_figure_class()(points))
        self.best_cell = w.HTML()
        self.insert_button = w.Button(description="Insert as cell", icon="plus", disabled=True,
                                      tooltip="Put the best trial's %%finetune cell below this one")
        self.insert_button.on_click(lambda _: self.insert_cell())
        self.inserted = w.Output()
        self.charts = w.VBox([self.curves_figure, self.points_figure], layout={"width": "100%"})
        self.widget = w.VBox([
            self.title, w.HBox([self.progress, self.progress_text]), self.status,
            w.HBox([self.stop_button, self.pause_button, self.resume_button]), self.table, self.charts,
            self.best_cell, self.insert_button, self.inserted,
        ])

    def _title_html(self) -> str:
        s, spec = self.search, self.search.spec
        model = s.fixed.get("model_name_or_path", "smollm2-135m-instruct")
        goal = "lower" if spec.direction == "minimize" else "higher"
        return (f"<b>{escape(s.name)}</b> &middot; search of {spec.num_trials} trials on {escape(str(model))} "
                f"&middot; {spec.strategy}, pruner {spec.pruner} &middot; objective {escape(spec.objective)} "
                f"({goal} is better) &middot; <code>{escape(str(s.dir))}</code>")

    def _ipython_display_(self) -> None:
        self.show()

    # --- life cycle ---------------------------------------------------------------------------------------------

    def show(self) -> SearchView:
        """Display the view and the place for its static record under the current cell, then follow the search."""
        from IPython.display import display

        from slmnb.notebook.output import CellOutput

        display({**self.widget._repr_mimebundle_(), "text/plain": ""}, raw=True)
        self._record = CellOutput()
        return self.follow()

    def follow(self) -> SearchView:
        """Draw the trials done so far (their runs' evaluations, read from disk), then each new event."""
        if self._unsubscribe is None:
            self._unsubscribe = self.search.subscribe(self._on_event, replay=True)
        self._rows = self.search.trials
        for row in self._rows:
            self._load_curve(row.run)
        if self.search.alive:
            self._drawer = threading.Thread(target=self._draw_loop, daemon=True,
                                            name=f"slmnb-search-view-{self.search.name}")
            self._drawer.start()
        else:
            self.finish()
        return self

    def _load_curve(self, run_name: str) -> None:
        """A trial's objective at each of its evaluations, from its run's history (on disk, or live here)."""
        if not run_name or run_name in self.curves:
            return
        try:
            history = list(self.search.runs.open(run_name).history)
        except SlmnbError:
            return  # a trial whose run never started, or whose folder was deleted: no curve
        for event in history:
            self._add_eval(run_name, event)

    def _add_eval(self, run_name: str, event: ev.Event) -> None:
        if isinstance(event, ev.Eval):
            value = objective_value(event, self.search.spec.objective)
            if value is not None and math.isfinite(value):
                self.curves.setdefault(run_name, {})[event.step] = value

    def _on_event(self, event: sev.SearchEvent) -> None:
        # On the search's or a trial's training thread: queue and return (a trial's Steps come here too).
        with self._queue_lock:
            self._pending.append(event)
        if isinstance(event, sev.SearchEnded):
            self._ended.set()

    def _draw_loop(self) -> None:
        while not self._ended.wait(self.interval):
            self.redraw()
        self.finish()

    def finish(self) -> None:
        """The last redraw and the static record; safe from any thread and more than once."""
        self.redraw(force=True)
        if self._record is not None:
            self._record.update(self.record_bundle())

    def wait(self) -> Search:
        """Block until the search ends (--wait); the kernel's interrupt stops the search, which a resume continues."""
        try:
            while self.search.alive:
                time.sleep(0.1)
        except KeyboardInterrupt:
            self.search.stop()
            while self.search.alive:
                time.sleep(0.1)
        if self._drawer is not None:
            self._drawer.join()
        return self.search

    def _click(self, action: Any) -> None:
        try:
            self._notice = ""
            action()
        except SlmnbError as exc:
            self._notice = str(exc)
        if self._drawer is None or not self._drawer.is_alive():
            self.redraw(force=True)

    # --- drawing ------------------------------------------------------------------------------------------------

    def redraw(self, force: bool = False) -> bool:
        """Apply the queued events to the widgets; returns whether anything changed."""
        with self._draw_lock:
            with self._queue_lock:
                events, self._pending = self._pending, []
            trials_changed = force
            for event in events:
                if isinstance(event, sev.TrialEvent):
                    self._add_eval(event.run, event.event)
                    if isinstance(event.event, ev.Step | ev.Started):
                        self._live_step = (event.run, event.event.step, event.event.elapsed)
                else:
                    trials_changed = True
                    if isinstance(event, sev.SearchEnded):
                        self._end = event
            if trials_changed:
                self._rows = self.search.trials  # the study's view: read on trial starts and ends, not each step
                for row in self._rows:  # a trial another worker ran: its curve from its run folder
                    if row.state != "running":
                        self._load_curve(row.run)
            view = (str(self.search.status), self._live_step, self._notice, len(self._rows),
                    sum(len(c) for c in self.curves.values()))
            if not trials_changed and view == self._drawn:
                return False
            self._draw_panel()
            self._draw_curves()
            self._draw_points()
            self._drawn = view
            self.updates += 1
            return True

    def rows(self) -> list[TrialRow]:
        """The trials as drawn: the training one with its live step count."""
        live = self._live_step
        return [replace(r, steps=live[1], seconds=live[2]) if live and r.run == live[0] and r.state == "running"
                else r for r in self._rows]

    def _best(self) -> TrialRow | None:
        return best_of(self._rows, self.search.spec.direction)  # from the rows drawn, not a new study read

    def _draw_panel(self) -> None:
        status = self.search.status
        rows = self.rows()
        done = sum(1 for r in rows if r.state in ("complete", "pruned", "failed") and r.counted)
        total = max(self.search.spec.num_trials, done)
        self.progress.max = max(total, 1)
        self.progress.value = min(done, self.progress.max)
        self.progress.bar_style = {S.FAILED: "danger", S.FINISHED: "success"}.get(status, "")
        self.progress_text.value = f"&nbsp;{done}/{total} trials{self._eta(rows, done, total, status)}"
        colour = STATUS_COLOURS.get(status, "inherit")
        html = f"<div style='color:{colour}'>" + "<br>".join(escape(x) for x in self.summary_lines()) + "</div>"
        for note in self.notes():
            html += f"<div style='color:#666'>{escape(note)}</div>"
        if self._notice:
            html += f"<div style='color:#c62828'>{escape(self._notice)}</div>"
        self.status.value = html
        self.stop_button.disabled = not status.live or status == S.STOPPING
        self.pause_button.disabled = status != S.RUNNING
        self.resume_button.disabled = status != S.PAUSED
        self.table.value = self._table_html(rows)
        best = self._best()
        if best is not None and status.ended:
            cell = self.search.best_cell()
            self.best_cell.value = (f"<b>Best trial {best.number}</b> ({escape(best.run)}) as a cell, to train it "
                                    f"again or longer:<pre>{escape(cell)}</pre>")
            self.insert_button.disabled = False
        else:
            self.best_cell.value = ""
            self.insert_button.disabled = True
        # An ended search shows its static record instead of the live charts (a reloaded page keeps the charts).
        ended = status.ended and self._record is not None and not self.curves_figure.restored
        self.charts.layout.display = "none" if ended else None

    def notes(self) -> list[str]:
        """What a person should know besides the numbers: a shortened search, a study that existed already."""
        notes = [self.note] if self.note else []
        if self.search.joined and self.search.started_here:
            notes.append(f"Search {self.search.name!r} existed with this config: its {self.search.joined} trials so "
                         "far are kept and it goes on to num_trials (another --name starts a new search).")
        return notes

    def _eta(self, rows: list[TrialRow], done: int, total: int, status: S) -> str:
        if status != S.RUNNING:
            return ""
        ended = [r.seconds for r in rows if r.state in ("complete", "pruned", "failed") and r.seconds > 0]
        if not ended:
            return ""
        left = sum(ended) / len(ended) * (total - done)
        running = [r for r in rows if r.state == "running"]
        if running:
            left -= min(running[0].seconds, sum(ended) / len(ended))
        max_time = self.search.spec.max_time
        if max_time is not None:
            left = min(left, max(max_time - (time.monotonic() - self._started), 0))
        return f" &middot; ETA {clock(max(left, 0))}"

    def summary_lines(self) -> list[str]:
        s, spec = self.search, self.search.spec
        rows = self.rows()
        status = s.status
        running = [r for r in rows if r.state == "running"]
        if status == S.RUNNING and running:
            r = running[0]
            first = f"Training trial {r.number} ({r.run}): step {r.steps}/{r.max_steps or '?'}"
        elif status == S.RUNNING:
            first = "Starting the next trial..."
        elif status == S.PAUSED:
            first = "Paused: Resume goes on with the trial training now; no new trial starts meanwhile."
        elif status == S.STOPPING:
            first = "Stopping: the trial training now ends at its next step and is queued again for a resume."
        elif status == S.FAILED:
            first = f"Failed: {s.reason}"
        elif status == S.INTERRUPTED:
            first = f"Interrupted (its process ended): %finetune resume {s.name} continues it."
        else:
            word = "Stopped" if status == S.STOPPED else "Finished"
            first = f"{word} ({s.reason or status})" + (f": %finetune resume {s.name} continues it."
                                                        if status == S.STOPPED else ".")
        lines = [first]
        best = self._best()
        if best is not None:
            params = ", ".join(f"{k}={_param_text(v)}" for k, v in best.params.items())
            lines.append(f"Best: trial {best.number}, {spec.objective} {score_text(spec.objective, best.value)} "
                         f"({params})")
        counts = {state: sum(1 for r in rows if r.state == state) for state in ("complete", "pruned", "failed")}
        said = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
        if said:
            lines.append(f"Trials: {said}.")
        trained = sum(r.steps for r in rows)
        saved = steps_saved(rows)
        if saved:
            lines.append(f"Pruning saved {saved} of {trained + saved} steps ({saved / (trained + saved):.0%}).")
        return lines

    def _table_html(self, rows: list[TrialRow]) -> str:
        header, cells = self._table(rows)
        best = self._best()
        head = "".join(f"<th style='text-align:left;padding:0 8px 0 0'>{escape(h)}</th>" for h in header)
        body = []
        for row, cell in zip(rows, cells, strict=True):
            style = "font-weight:bold" if best is not None and row.number == best.number else ""
            colour = STATE_COLOURS.get(row.state, "inherit")
            tds = "".join(f"<td style='padding:0 8px 0 0;{'color:' + colour if i == 1 else ''}'"
                          f"{' title=' + repr(escape(row.reason)) if i == 1 and row.reason else ''}>"
                          f"{escape(str(c))}</td>" for i, c in enumerate(cell))
            body.append(f"<tr style='{style}'>{tds}</tr>")
        return f"<table class='slmnb-trials'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    def _table(self, rows: list[TrialRow]) -> tuple[list[str], list[list[str]]]:
        spec = self.search.spec
        best = self._best()
        header = ["trial", "state", spec.objective, *spec.space, "steps", "duration", "run"]
        cells = []
        for r in rows:
            mark = " ★" if best is not None and r.number == best.number else ""
            value = "" if r.value is None else score_text(spec.objective, r.value)
            cells.append([f"{r.number}{mark}", r.state, value, *(_param_text(r.params.get(k)) for k in spec.space),
                          f"{r.steps}/{r.max_steps or '?'}", clock(r.seconds), r.run])
        return header, cells

    def _curve_series(self) -> list[tuple[str, list[int], list[float], str, float]]:
        """(run, steps, values, colour, width) per trial with a curve: the best one last, so it is drawn on top."""
        best = self._best()
        states = {r.run: r.state for r in self._rows}
        out = []
        for run, points in self.curves.items():
            steps = sorted(points)
            is_best = best is not None and run == best.run
            colour = BEST_COLOUR if is_best else STATE_COLOURS.get(states.get(run, "complete"), "#1f77b4")
            out.append((run, steps, [points[s] for s in steps], colour, 3.0 if is_best else 1.2))
        return sorted(out, key=lambda s: best is not None and s[0] == best.run)

    def _draw_curves(self) -> None:
        import plotly.graph_objects as go

        figure = self.curves_figure
        best = self._best()
        series = self._curve_series()
        signature = {run: (len(xs), best is not None and run == best.run) for run, xs, *_ in series}
        if signature == self._sent_curves:
            return
        numbers = {r.run: r.number for r in self._rows}
        with figure.batch_update():
            for run, xs, ys, colour, width in series:
                label = f"trial {numbers.get(run, run)}" + (" (best)" if best is not None and run == best.run else "")
                trace = next((t for t in figure.data if t.meta == run), None)  # a trace per trial, found by its run
                if trace is None:
                    figure.add_trace(go.Scatter(mode="lines+markers", meta=run))
                    trace = figure.data[-1]
                trace.name, trace.x, trace.y = label, xs, ys
                trace.line = {"color": colour, "width": width}
                trace.marker = {"size": 6 if width > 2 else 4, "color": colour}
        self._sent_curves = signature

    def _draw_points(self) -> None:
        spec = self.search.spec
        rows = [r for r in self._rows if r.value is not None and math.isfinite(r.value)]
        best = self._best()
        key = tuple((r.number, r.value, r.state) for r in rows) + ((best.number,) if best else ())
        if key == self._sent_points:
            return
        colours = [BEST_COLOUR if best is not None and r.number == best.number else STATE_COLOURS.get(r.state)
                   for r in rows]
        with self.points_figure.batch_update():
            for index, name in enumerate(spec.space):
                trace = self.points_figure.data[index]
                trace.x = [_plot_value(r.params.get(name)) for r in rows]
                trace.y = [r.value for r in rows]
                trace.marker = {"size": 9, "color": colours}
                trace.text = [f"trial {r.number} ({r.state})" for r in rows]
        self._sent_points = key

    # --- the best cell --------------------------------------------------------------------------------------------

    def insert_cell(self) -> None:
        """The best trial's cell: the JupyterLab extension inserts it below this cell, other front ends show text."""
        from IPython.display import display

        try:
            bundle = self.insert_bundle()
        except SlmnbError as exc:
            self._notice = str(exc)
            self.redraw(force=True)
            return
        self.inserted.clear_output()
        with self.inserted:
            display(bundle, raw=True)

    def insert_bundle(self) -> dict[str, Any]:
        """What Insert as cell shows: the cell for the extension (found by this view's widget, as the form's is),
        and the same text to copy elsewhere."""
        text = self.search.best_cell()
        return {CELL_MIME: {"source": text, "form": self.widget.model_id},
                "text/plain": "Copy this into a new cell below:\n\n" + text}

    # --- the static record ----------------------------------------------------------------------------------------

    def record_bundle(self) -> dict[str, str]:
        """The record for saved notebooks: one SVG (summary, trials table, curves, objective per parameter, the
        best cell) and the same as text."""
        spec = self.search.spec
        title = f"{self.search.name}: search of {spec.num_trials} trials ({spec.strategy}, pruner {spec.pruner})"
        header, cells = self._table(self.rows())
        table = text_table(header, cells, width=24).splitlines()
        best = self._best()
        cell = self.search.best_cell().splitlines() if best is not None else []
        lines = self.summary_lines()
        text = "\n".join([title, *lines, "", *table, *(["", "Best trial as a cell:", *cell] if cell else [])])
        if len(cell) > CELL_LINES_SHOWN:  # inline rows make a long cell: the picture shows its head
            cell = [*cell[:CELL_LINES_SHOWN], f"... {len(cell) - CELL_LINES_SHOWN} more lines (search.best_cell() "
                    "has the whole cell)"]
        return {"image/svg+xml": self._svg(title, lines, table, cell), "text/plain": text}

    def _svg(self, title: str, lines: list[str], table: list[str], cell: list[str]) -> str:
        spec = self.search.spec
        mono = [*table, *(["", "Best trial as a cell:", *cell] if cell else [])]
        text_h = 18 * (len(lines) + 1) + 15 * (len(mono) + 1)
        names = list(spec.space)
        height = TOP + text_h + 2 * (PANEL_H + PAD) + 10
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
               f'font-family="sans-serif" font-size="12">', f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
               f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>']
        y = TOP
        for line in lines:
            y += 18
            out.append(f'<text x="10" y="{y}">{escape(line)}</text>')
        y += 6
        for line in mono:
            y += 15
            out.append(f'<text x="10" y="{y}" font-family="monospace" font-size="11" xml:space="preserve">'
                       f'{escape(line)}</text>')
        top = y + PAD
        series = [(xs, ys, colour, "best" if width > 2 else "", width)
                  for _, xs, ys, colour, width in reversed(self._curve_series())]
        out += svg_panel(PAD, top, WIDTH - 2 * PAD, f"{spec.objective} at each evaluation, every trial", series,
                         log=False, max_points=400)
        rows = [r for r in self._rows if r.value is not None and math.isfinite(r.value)]
        width = (WIDTH - PAD * (len(names) + 1)) // max(len(names), 1)
        for i, name in enumerate(names):
            param = spec.space[name]
            if param.type == "choice":  # a choice's values are categories: their index along the axis
                index = {_param_text(v): n for n, v in enumerate(param.values)}
                xs = [float(index.get(_param_text(r.params.get(name)), 0)) for r in rows]
                label = f"{name}: " + ", ".join(index)
            else:
                xs = [float(r.params.get(name) or 0) for r in rows]
                label = name + (" (log)" if param.log else "")
            dots = [([x], [r.value], BEST_COLOUR if self._best() is r else STATE_COLOURS.get(r.state, "#1f77b4"), "")
                    for x, r in zip(xs, rows, strict=True)]
            out += svg_panel(PAD + i * (width + PAD), top + PANEL_H + PAD, width, label, dots, log=False,
                             max_points=400, x_name=name if param.type != "choice" else "choice", x_log=param.log,
                             lines=False)
        out.append("</svg>")
        return "\n".join(out)


def _param_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)


def _plot_value(value: Any) -> Any:
    """A choice such as a list of modules is plotted as its text; numbers as they are."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else _param_text(value)
