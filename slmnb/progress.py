"""Progress of the jobs a user waits for (predict, score, a comparison's evaluation): rows done of total, and ETA.

tqdm counts, times and formats. Where it draws depends on where it runs:
- a terminal, a pipe or a test shell: tqdm's own text bar on stderr;
- a Jupyter kernel: one line in the cell, replaced in place through a display id. tqdm.auto would pick its widget
  bar there, and a notebook run headless (nbclient) or rendered without a kernel (nbconvert, GitHub) shows a widget
  as `HBox(children=...)` or a bar frozen at its first state; a replaced display keeps the last state in the file.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from html import escape
from typing import Any

from tqdm.std import tqdm

# The bar's text in a cell: the <progress> element is the bar, so the text needs no block characters.
CELL_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}]{postfix}"


class CellBar(tqdm):
    """tqdm drawing into the running cell's output (HTML and plain text), from whichever thread updates it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._output: Any = None
        kwargs["file"] = io.StringIO()  # tqdm wants a file; everything goes to the cell instead
        super().__init__(*args, **kwargs)

    def bundle(self) -> dict[str, str]:
        text = self.format_meter(**{**self.format_dict, "bar_format": CELL_FORMAT})
        html = (f"<div style='font-family:monospace;font-size:12px'><progress value='{self.n}' "
                f"max='{self.total or 1}' style='width:12em;vertical-align:middle'></progress> {escape(text)}</div>")
        return {"text/html": html, "text/plain": text}

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:  # tqdm's hook for every redraw
        from slmnb.notebook.output import CellOutput

        if self._output is None:
            self._output = CellOutput(self.bundle())
        else:
            self._output.update(self.bundle())
        return True


def in_kernel() -> bool:
    """True in a Jupyter kernel, where a cell shows rich output (not in a terminal IPython or a test shell)."""
    import sys

    if "IPython" not in sys.modules:  # never import IPython for a script or the CLI
        return False
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


def bar(total: int, desc: str, unit: str = "rows", show: bool = True) -> tqdm:
    """A bar for `total` units: in the cell under a Jupyter kernel, on stderr anywhere else."""
    kind = CellBar if in_kernel() else tqdm
    return kind(total=total, desc=desc, unit=unit, disable=not show, mininterval=0.5, dynamic_ncols=True)


@contextmanager
def progress(total: int, desc: str, unit: str = "rows", show: bool = True) -> Iterator[tqdm]:
    """A bar that ends saying 'interrupted' or 'failed' when the work inside does, so it never reads as running."""
    shown = bar(total, desc, unit, show)
    try:
        yield shown
    except BaseException as exc:
        shown.set_postfix_str("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", refresh=False)
        raise
    finally:
        shown.close()


def status_line(desc: str, done: int, total: int, elapsed: float, unit: str = "rows") -> str:
    """The same words as a cell's bar, for a status line that a view draws itself."""
    return tqdm.format_meter(done, total, elapsed, bar_format=CELL_FORMAT, prefix=desc, unit=unit)
