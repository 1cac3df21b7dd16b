"""The live dashboard under a %%finetune cell: loss and perplexity charts, progress, status, and the run's buttons;
and a third chart, the generation metrics per step (accuracy, rougeL...), once the run's evaluations bring them.

The training thread only appends events to a queue (a listener must be quick). One drawing thread per dashboard
turns them into widget changes at most four times a second, so the dashboard is the single writer of its widgets
and a fast run cannot flood the front end. When the run ends, the cell also gets a static SVG record of the charts
and the summary, which is what a saved notebook shows without a kernel or widget state; the live charts are
hidden then, so the cell shows the charts once (Resume shows them again and clears the record).

While a cell blocks in a wait on the run, the kernel handles widget clicks only after the wait returns, so the
buttons are disabled then and a hint says what acts at once: the runs panel's Stop, and the kernel's interrupt.
"""

from __future__ import annotations

import threading
import time
from functools import cache
from html import escape
from typing import Any

from slmnb.errors import SlmnbError
from slmnb.metrics import score_text
from slmnb.notebook.charts import (
    MARKERS_UP_TO,
    Curves,
    decimate,
    log_ticks,
    metric_colour,
    render_svg,
    rounded,
    tick_text,
)
from slmnb.text import clock
from slmnb.training import events as ev
from slmnb.training.base import describe
from slmnb.training.prepare import METRICS_NOTE
from slmnb.training.run import TrainingRun
from slmnb.training.states import RunState as S

INTERVAL = 0.25  # seconds between redraws: at most 4 updates a second
MAX_POINTS = 500  # per trace; a 10,000-step run is strided down to this
ETA_WINDOW = 20  # steps the ETA's pace is measured over
WHOLE_STEPS_UP_TO = 10  # last step up to which the step axis has a tick per step (plotly would show 1.5 or 2.5)

STATUS_COLOURS = {S.FAILED: "#c62828", S.INTERRUPTED: "#c62828", S.STOPPED: "#8a6d00", S.PAUSED: "#8a6d00",
                  S.FINISHED: "#2e7d32"}


class Dashboard:
    def __init__(self, run: TrainingRun, *, note: str | None = None, interval: float = INTERVAL,
                 max_points: int = MAX_POINTS) -> None:
        self.run, self.note = run, note
        self.interval, self.max_points = interval, max_points
        self.curves = Curves()
        self.updates = 0  # redraws that changed something: what the throttle limits
        self._pending: list[ev.Event] = []
        self._queue_lock = threading.Lock()
        self._draw_lock = threading.Lock()
        self._drawer_lock = threading.Lock()
        self._ended = threading.Event()
        self._drawer: threading.Thread | None = None
        self._drawn_view: tuple[Any, ...] | None = None
        self._max_steps: int | None = None
        self._paces: list[tuple[int, float]] = []  # (step, elapsed) of the last ETA_WINDOW steps
        self._tokens_per_second: float | None = None
        self._end_event: ev.Event | None = None  # the Finished, Stopped or Failed event drawn
        self._sent: dict[int, tuple[int, float | None]] = {}
        self._sent_metrics: dict[str, tuple[int, float | None]] = {}
        self._metrics_axis: tuple[Any, ...] | None = None  # the metrics chart's title and scale sent last
        self.metrics_figure: Any = None  # made when the first score arrives: a run without them has no third chart
        self._notice = ""
        # What a person should know about this run: the config's likely mistakes at once, then the Started
        # event's notes (a skipped damaged checkpoint, say), each said once.
        from slmnb.checks import config_warnings

        self._warnings: list[str] = config_warnings(run.config)
        self._info: list[str] = []  # what the run decided for itself, such as the metrics it chose and why
        self._waiting_here = False  # this dashboard's wait() (--wait) blocks the cell: the interrupt stops the run
        self._axes: tuple[Any, ...] | None = None  # the x dtick and the perplexity ticks sent last
        self._record: Any = None
        self._record_shown = False
        self._unsubscribe: Any = None
        self._build()

    # --- widgets ------------------------------------------------------------------------------------

    def _build(self) -> None:
        import ipywidgets as w
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        figure = make_subplots(rows=1, cols=2, subplot_titles=("loss", "perplexity (log scale)"),
                               horizontal_spacing=0.1)
        line = {"mode": "lines+markers", "marker": {"size": 4}}  # lines only once a trace has many points
        figure.add_trace(go.Scatter(name="train", line={"color": "#9ecae1", "width": 1}, **line), row=1, col=1)
        figure.add_trace(go.Scatter(name="train (smoothed)", line={"color": "#1f77b4"}, **line), row=1, col=1)
        figure.add_trace(go.Scatter(name="eval", mode="lines+markers", line={"color": "#ff7f0e"}), row=1, col=1)
        figure.add_trace(go.Scatter(name="train ppl (smoothed)", line={"color": "#1f77b4"}, showlegend=False,
                                    **line), row=1, col=2)
        figure.add_trace(go.Scatter(name="eval ppl", mode="lines+markers", line={"color": "#ff7f0e"},
                                    showlegend=False), row=1, col=2)
        figure.update_yaxes(type="log", row=1, col=2)
        figure.update_xaxes(title_text="step", rangemode="tozero")
        # No width: plotly sizes the charts to the cell's width, which a narrow pane must not overflow.
        figure.update_layout(height=320, autosize=True, margin={"l": 50, "r": 20, "t": 40, "b": 40},
                             legend={"orientation": "h", "y": -0.25}, template="plotly_white")
        self.figure = responsive(live_figure_class()(figure))
        # A column: its child takes the full width (a row would size it to the chart's first 700px).
        self.charts = w.VBox([self.figure], layout={"width": "100%"})
        self.title = w.HTML(self._title_html())
        self.progress = w.IntProgress(min=0, max=max(self.run.max_steps or 1, 1), layout={"width": "40%"})
        self.progress_text = w.HTML()
        self.status = w.HTML()
        self.hint = w.HTML()
        self.stop_button = w.Button(description="Stop", icon="stop", tooltip="End at the next step, saving the adapter")
        self.pause_button = w.Button(description="Pause", icon="pause", tooltip="Hold training between steps")
        self.resume_button = w.Button(description="Resume", icon="play",
                                      tooltip="Continue a paused run, or a stopped one from its last checkpoint")
        self.stop_button.on_click(lambda _: self._click(self.run.stop))
        self.pause_button.on_click(lambda _: self._click(self.run.pause))
        self.resume_button.on_click(lambda _: self._click(self.run.resume))
        self.widget = w.VBox([
            self.title,
            w.HBox([self.progress, self.progress_text]),
            self.status,
            w.HBox([self.stop_button, self.pause_button, self.resume_button]),
            self.hint,
            self.charts,
        ])

    def _title_html(self) -> str:
        c = self.run.config
        return (f"<b>{escape(self.run.name)}</b> &middot; {escape(c.model_name_or_path)} &middot; {describe(c)} "
                f"&middot; <code>{escape(str(self.run.dir))}</code>")

    def _ipython_display_(self) -> None:
        self.show()

    # --- life cycle ---------------------------------------------------------------------------------

    def show(self) -> Dashboard:
        """Display the dashboard and the place for its static record under the current cell, then follow the run."""
        from IPython.display import display

        from slmnb.notebook.output import CellOutput

        # Our own text/plain: a notebook rendered without a kernel (nbconvert, GitHub) shows it instead of the
        # widget's repr, and the static record below it has the charts.
        display({**self.widget._repr_mimebundle_(), "text/plain": ""}, raw=True)
        self._record = CellOutput()
        return self.follow()

    def follow(self) -> Dashboard:
        """Replay the run's history, then draw each new event; a run that is not training is drawn once."""
        if self._unsubscribe is None:
            self._unsubscribe = self.run.subscribe(self._on_event, replay=True)
        if self.run.alive:
            self._start_drawing()
        else:
            self.finish()
        return self

    def _on_event(self, event: ev.Event) -> None:
        # Called on the training thread, under the run's lock: queue and return.
        with self._queue_lock:
            self._pending.append(event)
        if isinstance(event, ev.Started):
            self._start_drawing()  # again, when the Resume button restarts a stopped run
        elif isinstance(event, ev.ENDED):
            self._ended.set()

    def _start_drawing(self) -> None:
        with self._drawer_lock:
            if self._drawer is not None and self._drawer.is_alive():
                return
            self._ended.clear()
            self._drawer = threading.Thread(target=self._draw_loop, daemon=True,
                                            name=f"slmnb-dashboard-{self.run.name}")
            self._drawer.start()

    def _draw_loop(self) -> None:
        while not self._ended.wait(self.interval):  # wakes early only for the final redraw
            self.redraw()
        self.finish()
        # A cell blocked in run.wait() returns just after the training thread ends: draw once more then, so the
        # buttons it disabled come back.
        while self.run.waited_on:
            time.sleep(self.interval / 5)
        self.redraw()

    def finish(self) -> None:
        """The last redraw and the static record: safe to call from any thread, and more than once."""
        self.redraw()
        if self._record is not None:
            self._record.update(self.record_bundle())
            self._record_shown = True

    def wait(self) -> TrainingRun:
        """Block until the run ends (for --wait, headless runs); the kernel's interrupt stops the run and saves it."""
        self._waiting_here = True
        try:
            with self.run.waiting():  # one mark for the whole loop: the buttons stay disabled between short waits
                try:
                    while self.run.alive:
                        self.run.wait(0.2)
                except KeyboardInterrupt:
                    self.run.stop()
                    while self.run.alive:
                        self.run.wait(0.2)
                except SlmnbError:
                    pass  # a failed run: its reason is on the dashboard
        finally:
            self._waiting_here = False
        if self._drawer is not None:
            self._drawer.join()
        else:
            self.finish()
        return self.run

    def _click(self, action: Any) -> None:
        try:
            self._notice = ""
            action()
        except SlmnbError as exc:  # Resume with another run training, for instance: say so beside the buttons
            self._notice = str(exc)
        if self._drawer is None or not self._drawer.is_alive():
            self.redraw()

    # --- drawing ------------------------------------------------------------------------------------

    def redraw(self) -> bool:
        """Apply queued events to the widgets; returns whether anything changed."""
        with self._draw_lock:
            with self._queue_lock:
                events, self._pending = self._pending, []
            for event in events:
                self.curves.add(event)
                self._note_event(event)
            view = self._view()
            if not events and view == self._drawn_view:
                return False
            self._draw_charts()
            self._draw_panel(view)
            self._drawn_view = view
            self.updates += 1
            return True

    def _note_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.Started):
            self._max_steps = event.max_steps
            self._paces = []
            for note in event.notes:
                said = self._info if note.startswith(METRICS_NOTE) else self._warnings
                if note not in said:
                    said.append(note)
        elif isinstance(event, ev.Step):
            self._paces.append((event.step, event.elapsed))
            del self._paces[:-ETA_WINDOW]
            self._tokens_per_second = event.tokens_per_second
        elif isinstance(event, ev.ENDED):
            self._end_event = event

    def _view(self) -> tuple[Any, ...]:
        return (self.run.status, self.run.step, self._notice, self.curves.overfitting(), self.run.waited_on,
                self.run.phase)

    def _draw_charts(self) -> None:
        c = self.curves
        series = [(c.steps, c.loss), (c.steps, c.smoothed), (c.eval_steps, c.eval_loss),
                  (c.steps, c.train_perplexity), (c.eval_steps, c.eval_perplexity)]
        changed = []
        for index, (xs, ys) in enumerate(series):
            signature = (len(xs), ys[-1] if ys else None)
            if self._sent.get(index) != signature:  # unchanged traces are not sent again
                self._sent[index] = signature
                changed.append((index, *decimate(xs, ys, self.max_points)))
        axes = self._axes_view()
        if changed or axes != self._axes:
            with self.figure.batch_update():
                for index, xs, ys in changed:
                    trace = self.figure.data[index]
                    trace.x, trace.y = xs, rounded(ys)
                    # Markers while a train trace has few points (a line of one point draws nothing); eval
                    # traces keep theirs.
                    if index in (0, 1, 3):
                        trace.mode = "lines+markers" if len(xs) <= MARKERS_UP_TO else "lines"
                if axes != self._axes:
                    self._draw_axes(axes)
        self._draw_metrics()

    def _draw_metrics(self) -> None:
        """The third chart: one line per score key, on a 0-100% axis when every score is a fraction."""
        metrics = self.curves.metrics
        if self.metrics_figure is None:
            if not metrics:
                return
            self._build_metrics_figure()
        figure = self.metrics_figure
        changed = []
        for index, (key, series) in enumerate(metrics.items()):
            signature = (len(series.steps), series.values[-1])
            if self._sent_metrics.get(key) != signature:
                self._sent_metrics[key] = signature
                changed.append((index, key, *decimate(series.steps, series.values, self.max_points)))
        axis = (self.curves.metrics_title(), self.curves.metrics_are_fractions(), self._axes and self._axes[0])
        # A resumed run re-trains past its checkpoint: a key first seen after it (always among the last) is gone.
        stale = [trace for trace in figure.data[len(metrics):] if trace.x]
        if not changed and not stale and axis == self._metrics_axis:
            return
        import plotly.graph_objects as go

        for index, key, _, _ in changed:
            if index >= len(figure.data):  # a key first seen now (a user's metric says its keys when it runs)
                figure.add_trace(go.Scatter(name=key, mode="lines+markers", line={"color": metric_colour(index)}))
        with figure.batch_update():
            for index, _, xs, ys in changed:
                figure.data[index].x, figure.data[index].y = xs, rounded(ys)
            for trace in stale:
                trace.x, trace.y = [], []
                self._sent_metrics.pop(trace.name, None)
            if axis != self._metrics_axis:
                title, fractions, dtick = axis
                figure.update_layout(title_text=title)
                figure.update_yaxes(tickformat=".0%" if fractions else None,
                                    range=[-0.02, 1.02] if fractions else None, autorange=not fractions)
                figure.update_xaxes(dtick=dtick, tick0=0 if dtick else None)
                self._metrics_axis = axis

    def _build_metrics_figure(self) -> None:
        import plotly.graph_objects as go

        figure = go.Figure()
        figure.update_xaxes(title_text="step", rangemode="tozero")
        figure.update_layout(height=280, autosize=True, margin={"l": 50, "r": 20, "t": 40, "b": 40},
                             title={"font": {"size": 14}, "x": 0.5}, legend={"orientation": "h", "y": -0.3},
                             template="plotly_white")
        self.metrics_figure = responsive(live_figure_class()(figure))
        self.charts.children = (*self.charts.children, self.metrics_figure)

    def _axes_view(self) -> tuple[Any, ...]:
        c = self.curves
        last_step = max(c.steps[-1:] + c.eval_steps[-1:], default=0)
        ppl = [v for v in c.train_perplexity + c.eval_perplexity if v == v and 0 < v < float("inf")]
        ticks = tuple(log_ticks(min(ppl), max(ppl))) if ppl else ()
        return (1 if last_step <= WHOLE_STEPS_UP_TO else None, ticks)

    def _draw_axes(self, axes: tuple[Any, ...]) -> None:
        dtick, ticks = axes
        # Steps are whole numbers: one tick per step while there are few, plotly's own (whole) ticks after that.
        self.figure.update_xaxes(dtick=dtick, tick0=0 if dtick else None)
        # Our own log ticks: plotly's label 20 as "2" between decades, and crowd them.
        self.figure.update_yaxes(tickvals=list(ticks) or None, ticktext=[tick_text(t) for t in ticks] or None,
                                 row=1, col=2)
        self._axes = axes

    def _draw_panel(self, view: tuple[Any, ...]) -> None:
        status, step = view[0], view[1]
        max_steps = self._max_steps or self.run.max_steps or max(step, 1)
        self.progress.max = max(max_steps, 1)
        self.progress.value = min(step, self.progress.max)
        self.progress.bar_style = {S.FAILED: "danger", S.FINISHED: "success"}.get(status, "")
        self.progress_text.value = f"&nbsp;{step}/{max_steps}{self._eta(step, max_steps, status)}"
        self.status.value = self._status_html(status, step, max_steps)
        # An ended run shows its static record instead of the live charts (the same charts twice otherwise); Resume
        # brings them back and clears the record. A reloaded page never gets the record: it keeps the charts.
        self.charts.layout.display = "none" if status.ended and not self.figure.restored else None
        if status.live and self._record_shown:
            self._record_shown = False
            self._record.update({"text/plain": ""})
        waited_on = view[4]  # the kernel would act on a click only once the wait returns: no button then
        self.stop_button.disabled = waited_on or not status.live or status == S.STOPPING
        self.pause_button.disabled = waited_on or status not in (S.STARTING, S.RUNNING)
        # A finished run resumes only with more steps, which a button cannot ask for.
        self.resume_button.disabled = waited_on or status not in (S.PAUSING, S.PAUSED, S.STOPPED, S.FAILED,
                                                                  S.INTERRUPTED)
        hints = [self._waiting_hint()] if waited_on and status.live else []
        if view[3]:
            hints.append("Eval loss has risen for the last evaluations while train loss keeps falling: the model "
                         "may be overfitting. Stop now, or set early_stopping_patience.")
        self.hint.value = "".join(f"<div class='slmnb-hint' style='color:#8a6d00'>{escape(h)}</div>" for h in hints)

    def _waiting_hint(self) -> str:
        if self._waiting_here:
            return ("The cell waits for the run (--wait), so these buttons are off until it ends: the kernel's "
                    "interrupt (■) stops and saves the run; the Fine-tuning runs panel's Stop acts at once.")
        return ("A cell waits in run.wait(), so these buttons are off until it returns: the Fine-tuning runs "
                "panel's Stop acts at once; the kernel's interrupt (■) ends the wait and training goes on.")

    def _eta(self, step: int, max_steps: int, status: str) -> str:
        paces = self._paces
        parts = []
        if status == S.RUNNING and len(paces) >= 2 and paces[-1][0] > paces[0][0]:
            per_step = (paces[-1][1] - paces[0][1]) / (paces[-1][0] - paces[0][0])
            parts.append(f"ETA {clock(per_step * max(max_steps - step, 0))}")
        if self._tokens_per_second:
            parts.append(f"{self._tokens_per_second:.0f} tokens/s")
        return " &middot; " + " &middot; ".join(parts) if parts else ""

    def _status_html(self, status: S, step: int, max_steps: int) -> str:
        lines = self.summary_lines(status, step, max_steps)
        colour = STATUS_COLOURS.get(status, "inherit")
        html = f"<div style='color:{colour}'>" + "<br>".join(escape(x) for x in lines) + "</div>"
        if self.note:
            html += f"<div style='color:#666'>{escape(self.note)}</div>"
        html += "".join(f"<div style='color:#666'>{escape(i)}</div>" for i in self._info)
        html += "".join(f"<div style='color:#8a6d00'>{escape(w)}</div>" for w in self._warnings)
        if self._notice:
            html += f"<div style='color:#c62828'>{escape(self._notice)}</div>"
        return html

    def summary_lines(self, status: S | None = None, step: int | None = None,
                      max_steps: int | None = None) -> list[str]:
        status = status or self.run.status
        step = self.run.step if step is None else step
        max_steps = max_steps or self._max_steps or self.run.max_steps or step
        ended = self._end_event
        elapsed = None
        if status in (S.FINISHED, S.STOPPED):
            # A run read from disk has no end event: its run.json has the time.
            seconds = ended.elapsed if ended else self._saved("elapsed")
            elapsed = clock(seconds) if isinstance(seconds, int | float) and seconds else None
        if status == S.STARTING:  # the run says what takes long (a model's first use on this machine)
            return [self.run.phase or "Loading the model and the data..."]
        if status == S.FAILED:
            reason = ended.reason if isinstance(ended, ev.Failed) else self._saved("reason")
            return [f"Failed at step {step}: {reason or 'see error.log in the run folder'}"]
        first = {
            S.RUNNING: f"Training: step {step}/{max_steps}",
            S.PAUSING: f"Pausing after step {step}...",
            S.PAUSED: f"Paused at step {step}: Resume continues from here, nothing is lost.",
            S.STOPPING: f"Stopping at step {step} and saving...",
            S.STOPPED: f"Stopped at step {step}/{max_steps}" + (f" after {elapsed}" if elapsed else ""),
            S.FINISHED: f"Finished at step {step}/{max_steps}" + (f" in {elapsed}" if elapsed else "")
            + (f" ({ended.reason})" if isinstance(ended, ev.Finished) and ended.reason != "completed" else ""),
            S.INTERRUPTED: f"Interrupted at step {step} (its process ended): %finetune resume {self.run.name} "
                           "continues from the last checkpoint.",
        }.get(status, f"{status} at step {step}")
        lines = [first]
        metrics = []
        if self.curves.loss:
            # Both, labelled: the status bar and the runs panel show the last step's loss.
            metrics.append(f"train loss {self.curves.smoothed[-1]:.4f} smoothed, {self.curves.loss[-1]:.4f} at "
                           "the last step")
        if self.curves.eval_loss:
            metrics.append(f"eval loss {self.curves.eval_loss[-1]:.4f}, perplexity "
                           f"{ev.perplexity(self.curves.eval_loss[-1]):.3g}")
        if metrics:
            lines.append(" · ".join(metrics))
        if scores := self.scores_line():
            lines.append(scores)
        if status in (S.FINISHED, S.STOPPED) and self.run.output_path.is_dir():
            lines.append(f"{'Adapter' if self.run.config.method != 'full' else 'Model'} saved to "
                         f"{self.run.output_path}")
        return lines

    def scores_line(self) -> str:
        """The generation metrics at the last evaluation, each with its best so far: what the third chart shows."""
        best = self.curves.best()
        parts = []
        for key, value in self.curves.latest().items():
            best_step, best_value = best[key]
            parts.append(f"{key} {score_text(key, value)} (best {score_text(key, best_value)} at step {best_step})")
        return " · ".join(parts)

    def _saved(self, key: str) -> Any:
        """A value of the run's run.json (a run read from disk has no end event); None when it cannot be read."""
        try:
            return self.run.folder.read_state().get(key)
        except SlmnbError:
            return None

    def record_bundle(self) -> dict[str, str]:
        """The static record: one SVG with the summary and both charts, and the summary as text."""
        lines = self.summary_lines()
        title = f"{self.run.name} ({self.run.config.model_name_or_path}, {describe(self.run.config)})"
        return {"image/svg+xml": render_svg(self.curves, title, lines), "text/plain": "\n".join([title, *lines])}


def responsive(figure: Any) -> Any:
    """plotly redraws a responsive chart at its element's width on a window resize, which the extension sends when
    a cell's width changes (plotly's widget alone keeps the width of its first draw)."""
    figure._config = {**figure._config, "responsive": True}
    return figure


@cache
def live_figure_class() -> type:
    """plotly's FigureWidget, whose state for a front end that (re)connects holds the traces as they are now.

    FigureWidget sends each change as a restyle that only the front end applies to its copy; the kernel's
    _widget_data keeps the first draw. A page reloaded while the kernel runs asks the kernel for the state, and
    without this would draw empty charts.
    """
    import plotly.graph_objects as go

    class LiveFigure(go.FigureWidget):
        # Whether a front end asked for the whole state after the first display: a page reloaded while the kernel
        # runs. That page cannot receive updates of the cell's other outputs (their display ids are gone).
        restored = False

        def get_state(self, key: Any = None, drop_defaults: bool = False) -> dict[str, Any]:
            state = super().get_state(key=key, drop_defaults=drop_defaults)
            # The first state goes out while plotly's __init__ still builds the figure: that one is as it is.
            now = {"_widget_data": getattr(self, "_data", None), "_widget_layout": getattr(self, "_layout", None)}
            if key is None and now["_widget_data"] is not None:
                self.restored = True
            for name, value in now.items():
                if name in state and value is not None:
                    state[name] = self.trait_metadata(name, "to_json")(value, self)
            return state

    return LiveFigure


def dashboards_for(run: TrainingRun) -> list[Dashboard]:
    """The dashboards following a run: found through the run's listeners, so nothing keeps a list of them."""
    return [owner for listener in run.listeners
            if isinstance(owner := getattr(listener, "__self__", None), Dashboard)]

