"""The live dashboard under a %%finetune cell: loss and perplexity charts, progress, status, and the run's buttons.

The training thread only appends events to a queue (a listener must be quick). One drawing thread per dashboard
turns them into widget changes at most four times a second, so the dashboard is the single writer of its widgets
and a fast run cannot flood the front end. When the run ends, the cell also gets a static SVG record of the charts
and the summary, which is what a saved notebook shows without a kernel or widget state.
"""

from __future__ import annotations

import threading
from html import escape
from typing import Any

from slmnb.errors import SlmnbError
from slmnb.notebook.charts import Curves, decimate, render_svg, rounded
from slmnb.text import clock
from slmnb.training import events as ev
from slmnb.training.run import TrainingRun
from slmnb.training.states import RunState as S

INTERVAL = 0.25  # seconds between redraws: at most 4 updates a second
MAX_POINTS = 500  # per trace; a 10,000-step run is strided down to this
ETA_WINDOW = 20  # steps the ETA's pace is measured over

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
        self._notice = ""
        self._record: Any = None
        self._unsubscribe: Any = None
        self._build()

    # --- widgets ------------------------------------------------------------------------------------

    def _build(self) -> None:
        import ipywidgets as w
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        figure = make_subplots(rows=1, cols=2, subplot_titles=("loss", "perplexity"), horizontal_spacing=0.1)
        line = {"mode": "lines"}
        figure.add_trace(go.Scatter(name="train", line={"color": "#9ecae1", "width": 1}, **line), row=1, col=1)
        figure.add_trace(go.Scatter(name="train (smoothed)", line={"color": "#1f77b4"}, **line), row=1, col=1)
        figure.add_trace(go.Scatter(name="eval", mode="lines+markers", line={"color": "#ff7f0e"}), row=1, col=1)
        figure.add_trace(go.Scatter(name="train ppl (smoothed)", line={"color": "#1f77b4"}, showlegend=False,
                                    **line), row=1, col=2)
        figure.add_trace(go.Scatter(name="eval ppl", mode="lines+markers", line={"color": "#ff7f0e"},
                                    showlegend=False), row=1, col=2)
        figure.update_yaxes(type="log", row=1, col=2)
        figure.update_xaxes(title_text="step")
        figure.update_layout(height=320, margin={"l": 50, "r": 20, "t": 40, "b": 40},
                             legend={"orientation": "h", "y": -0.25}, template="plotly_white")
        self.figure = go.FigureWidget(figure)
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
            self.figure,
        ])

    def _title_html(self) -> str:
        c = self.run.config
        return (f"<b>{escape(self.run.name)}</b> &middot; {escape(c.model_name_or_path)} &middot; {c.method} "
                f"&middot; <code>{escape(str(self.run.dir))}</code>")

    def _ipython_display_(self) -> None:
        self.show()

    # --- life cycle ---------------------------------------------------------------------------------

    def show(self) -> Dashboard:
        """Display the dashboard and the place for its static record under the current cell, then follow the run."""
        from IPython.display import display

        from slmnb.notebook.output import CellOutput

        display(self.widget)
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
        while True:
            ended = self._ended.wait(self.interval)  # wakes early only for the final redraw
            if ended:
                self.finish()
                return
            self.redraw()

    def finish(self) -> None:
        """The last redraw and the static record: safe to call from any thread, and more than once."""
        self.redraw()
        if self._record is not None:
            self._record.update(self.record_bundle())

    def wait(self) -> TrainingRun:
        """Block until the run ends (for --wait); Ctrl-C (or the kernel's interrupt) stops the run and saves it."""
        try:
            while self.run.alive:
                self.run.wait(0.2)
        except KeyboardInterrupt:
            self.run.stop()
            while self.run.alive:
                self.run.wait(0.2)
        except SlmnbError:
            pass  # a failed run: its reason is on the dashboard
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
        elif isinstance(event, ev.Step):
            self._paces.append((event.step, event.elapsed))
            del self._paces[:-ETA_WINDOW]
            self._tokens_per_second = event.tokens_per_second
        elif isinstance(event, ev.ENDED):
            self._end_event = event

    def _view(self) -> tuple[Any, ...]:
        return (self.run.status, self.run.step, self._notice, self.curves.overfitting())

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
        if changed:
            with self.figure.batch_update():
                for index, xs, ys in changed:
                    self.figure.data[index].x = xs
                    self.figure.data[index].y = rounded(ys)

    def _draw_panel(self, view: tuple[Any, ...]) -> None:
        status, step = view[0], view[1]
        max_steps = self._max_steps or self.run.max_steps or max(step, 1)
        self.progress.max = max(max_steps, 1)
        self.progress.value = min(step, self.progress.max)
        self.progress.bar_style = {S.FAILED: "danger", S.FINISHED: "success"}.get(status, "")
        self.progress_text.value = f"&nbsp;{step}/{max_steps}{self._eta(step, max_steps, status)}"
        self.status.value = self._status_html(status, step, max_steps)
        self.stop_button.disabled = not status.live or status == S.STOPPING
        self.pause_button.disabled = status not in (S.STARTING, S.RUNNING)
        # A finished run resumes only with more steps, which a button cannot ask for.
        self.resume_button.disabled = status not in (S.PAUSING, S.PAUSED, S.STOPPED, S.FAILED, S.INTERRUPTED)
        self.hint.value = ("<span style='color:#8a6d00'>Eval loss has risen for the last evaluations while train "
                           "loss keeps falling: the model may be overfitting. Stop now, or set "
                           "early_stopping_patience.</span>" if view[3] else "")

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
        if status == S.STARTING:
            return ["Loading the model and the data..."]
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
            metrics.append(f"train loss {self.curves.smoothed[-1]:.4f} (smoothed)")
        if self.curves.eval_loss:
            metrics.append(f"eval loss {self.curves.eval_loss[-1]:.4f}, perplexity "
                           f"{ev.perplexity(self.curves.eval_loss[-1]):.3g}")
        if metrics:
            lines.append(" · ".join(metrics))
        if status in (S.FINISHED, S.STOPPED) and self.run.output_path.is_dir():
            lines.append(f"{'Adapter' if self.run.config.method != 'full' else 'Model'} saved to "
                         f"{self.run.output_path}")
        return lines

    def _saved(self, key: str) -> Any:
        """A value of the run's run.json (a run read from disk has no end event); None when it cannot be read."""
        try:
            return self.run.folder.read_state().get(key)
        except SlmnbError:
            return None

    def record_bundle(self) -> dict[str, str]:
        """The static record: one SVG with the summary and both charts, and the summary as text."""
        lines = self.summary_lines()
        title = f"{self.run.name} ({self.run.config.model_name_or_path}, {self.run.config.method})"
        return {"image/svg+xml": render_svg(self.curves, title, lines), "text/plain": "\n".join([title, *lines])}


def dashboards_for(run: TrainingRun) -> list[Dashboard]:
    """The dashboards following a run: found through the run's listeners, so nothing keeps a list of them."""
    return [owner for listener in run.listeners
            if isinstance(owner := getattr(listener, "__self__", None), Dashboard)]

