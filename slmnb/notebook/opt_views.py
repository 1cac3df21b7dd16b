"""What %opt shows under its cell: an export's progress, the exports on disk, and the side-by-side table.

Each is plain HTML in one display that a worker thread replaces (at most four times a second), so the kernel
stays free while tokens stream in, and a saved notebook keeps the last state without any widget state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from html import escape
from typing import Any

from slmnb.errors import ExportError
from slmnb.notebook.output import CellOutput
from slmnb.notebook.views import html_table
from slmnb.opt.store import Listed, by_base
from slmnb.text import clock, text_table

REDRAW_EVERY = 0.25  # seconds between two redraws of a live view


class LiveHTML:
    """A display that a worker thread redraws, throttled; `draw(final=True)` always goes out."""

    def __init__(self, html: str, text: str) -> None:
        self.output = CellOutput({"text/html": html, "text/plain": text})
        self._last = 0.0
        self._lock = threading.Lock()

    def draw(self, html: str, text: str, final: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            if not final and now - self._last < REDRAW_EVERY:
                return
            self._last = now
            self.output.update({"text/html": html, "text/plain": text})


class Background:
    """Work in a daemon thread, shown by a live view; wait() gives its result or raises its error."""

    def __init__(self, thread_name: str) -> None:
        self.phase = "starting"
        self.result: Any = None
        self.error: BaseException | None = None
        self._started = time.perf_counter()
        self.view = LiveHTML(*self._render())
        self._thread = threading.Thread(target=self._run, daemon=True, name=thread_name)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = self._work()
        except BaseException as exc:  # shown in the view, and raised again by wait()
            self.error = exc
        self.view.draw(*self._render(), final=True)

    def _work(self) -> Any:
        raise NotImplementedError

    def _render(self) -> tuple[str, str]:
        raise NotImplementedError

    def _elapsed(self) -> str:
        return clock(time.perf_counter() - self._started)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the work ends (or timeout seconds pass); returns its result, or raises its error."""
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.result


class ExportStopped(ExportError):
    """An export ended by its job's stop(): the builder was killed and its temp folder removed."""


class ExportJob(Background):
    """An export in a background thread, showing its phase and elapsed time; wait() gives the Export.

    The kernel's interrupt does not reach the thread, so stop() (named in the view while it works) ends the export
    at its next phase: the builder is killed and nothing half-written is kept.
    """

    def __init__(self, run: Any, options: dict[str, Any]) -> None:
        self.run, self.name, self.options = run, run.name, options
        self._stopped = False
        self._stop_hint = _stop_hint()
        super().__init__(f"slmnb-export-{self.name}")
        # A ticker keeps the clock moving during the builder's long quantization phase, which prints nothing.
        threading.Thread(target=self._tick, daemon=True, name=f"slmnb-export-clock-{self.name}").start()

    def _work(self) -> Any:
        from slmnb.opt.export import export

        return export(self.run, on_phase=self._on_phase, **self.options)

    def _on_phase(self, text: str) -> None:
        if self._stopped:  # raised inside the export, which kills the builder and removes its temp folder
            raise ExportStopped(f"The export of {self.name} was stopped before it finished, and nothing of it was "
                                "kept: export again to make it.")
        self.phase = text
        self.view.draw(*self._render())

    def stop(self) -> None:
        """End the export at its next phase (the builder's quantization can take a minute without one)."""
        self._stopped = True

    def _tick(self) -> None:
        while not self.done:
            time.sleep(1.0)
            if not self.done:
                self.view.draw(*self._render())

    def _render(self) -> tuple[str, str]:
        if isinstance(self.error, ExportStopped):
            text = str(self.error)
            return f"<div>{escape(text)}</div>", text
        if self.error is not None:
            text = f"Export of {self.name} failed: {self.error}"
            return f"<div style='color:#b00020'>{escape(text)}</div>", text
        if self.result is not None:
            ex = self.result
            parts = [f"Exported {self.name} as {ex.precision} in {ex.seconds:.1f} s: {ex.folder} "
                     f"({ex.size_mb:.0f} MB)"]
            if ex.adapter is not None:
                parts.append(f"adapter {ex.adapter} ({ex.adapter.stat().st_size / 1e6:.1f} MB)")
            text = "; ".join(parts) + (f". {ex.fidelity}" if ex.fidelity else "")
            return f"<div>{escape(text)}</div>", text
        text = f"Exporting {self.name} ({self.options.get('precision', 'int4')}): {self.phase}, {self._elapsed()}"
        if self._stopped:
            text += " (stopping at the next phase)"
        else:
            text += f" ({self._stop_hint})"
        return f"<div>{escape(text)}</div>", text

    def __repr__(self) -> str:
        return f"<ExportJob {self.name}: {'done' if self.done else self.phase}>"


EXPORT_COLUMNS = ["base model", "model folder", "kind", "precision", "size", "adapter (run)", "task", "rank"]


class ExportsTable:
    """`%opt adapters`: the exports on disk grouped by the base model they run on: each base model's folders (one per
    precision and LoRA layout, and merged models), and under each folder its adapters with their run and task."""

    def __init__(self, listed: list[Listed], root: str) -> None:
        self.listed, self.root = listed, root

    def _cells(self) -> list[list[str]]:
        cells = []
        for base, folders in by_base(self.listed).items():
            for e in folders:
                shown = [e.folder.name, e.manifest.get("kind", "?"), e.manifest.get("precision", "?"),
                         f"{e.size_mb:.0f} MB"]
                adapters = [[a.get("run", "?"), a.get("task_name") or "-", str(a.get("rank", "?"))]
                            for a in e.adapters] or [["-", "-", "-"]]
                for i, adapter in enumerate(adapters):
                    # The base model and the folder once, on their first row: the rows below are theirs.
                    first_of_base = e is folders[0] and i == 0
                    cells.append([base if first_of_base else "", *(shown if i == 0 else [""] * 4), *adapter])
        return cells

    def _repr_html_(self) -> str:
        if not self.listed:
            return f"<div>{escape(repr(self))}</div>"
        return html_table(EXPORT_COLUMNS, self._cells())

    def __repr__(self) -> str:
        if not self.listed:
            return f"No exports yet in {self.root}: %opt export RUN makes one."
        return text_table(EXPORT_COLUMNS, self._cells())


class ComparisonView(Background):
    """The side-by-side table, redrawn as tokens come. A background thread exports what is missing (showing
    the phase), then fills the table; wait() gives the Comparison. Runs of several tasks show one table per task
    under its heading (wait() gives their Comparisons).

    The kernel's interrupt cannot reach that thread (the cell has returned), so the view names its own way to stop:
    stop() on the cell's value, which it shows while it works.
    """

    def __init__(self, prepare: Callable[[Callable[[str], None]], Any], evaluate: bool) -> None:
        self.comparison: Any = None
        self._prepare, self._evaluate = prepare, evaluate
        self._stopped = False
        self._stop_hint = _stop_hint()
        super().__init__("slmnb-compare")

    def _work(self) -> Any:
        comparison = self._prepare(self._on_phase)
        if self._stopped:  # asked for while the exports ran: nothing is generated
            comparison.status = "stopped"
        self.comparison = comparison
        if self._stopped:
            return comparison
        return comparison.fill(self._on_update, evaluate=self._evaluate)

    def _on_phase(self, text: str) -> None:
        self.phase = f"exporting {text}, {self._elapsed()}"
        self.view.draw(*self._render())

    def _on_update(self, comparison: Any, what: str) -> None:
        self.view.draw(*self._render(), final=what in ("status", "eval"))

    def _status(self) -> str:
        c = self.comparison
        if self.error is not None:
            return f"failed: {self.error}"
        status = c.status if c is not None else self.phase
        if self.result is None and status not in ("done", "stopped"):  # still working
            status += f" ({self._stop_hint})"
        return status

    def _render(self) -> tuple[str, str]:
        c, status = self.comparison, self._status()
        colour = "#b00020" if self.error is not None else "#555"
        html, text = f"<div style='color:{colour}'>{escape(status)}</div>", status
        blocks = c.blocks if c is not None else []
        for block in blocks:  # one per task: the base model beside that task's runs, on its own prompts
            if len(blocks) > 1:
                html += f"<h4 style='margin:0.8em 0 0.3em'>{escape(block.heading())}</h4>"
                text += f"\n\n{block.heading()}"
            header, rows = block.header(), block.answer_rows() + block.summary_rows()
            html += html_table(header, rows)
            text += "\n" + text_table(header, rows, width=30)
            # From finished measurements only.
            trade = block.trade_line() if block.status in ("done", "stopped") else None
            if trade:
                html += f"<p style='margin-top:0.5em'><b>Fine-tune or prompt?</b> {escape(trade)}</p>"
                text += f"\n\n{trade}"
        return html, text

    def stop(self) -> None:
        """End the work: after the current token, or, while exporting, before generation starts. The table keeps
        what was written."""
        self._stopped = True
        if self.comparison is not None:
            self.comparison.stop()

    def __repr__(self) -> str:
        if self.error is not None:
            return f"<comparison failed: {self.error}>"
        return repr(self.comparison) if self.comparison is not None else f"<comparison: {self.phase}>"


def _stop_hint() -> str:
    """How to stop the view, naming the cell's output (the kernel's interrupt does not reach its thread)."""
    from IPython import get_ipython

    shell = get_ipython()
    count = getattr(shell, "execution_count", None)
    if isinstance(count, int) and count > 0:
        return f"stop() on this cell's value ends it: Out[{count}].stop()"
    return "its stop() ends it"
