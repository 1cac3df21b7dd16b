"""Plain-text formatting shared by the CLI, the notebook's text fallbacks and printed results."""

from __future__ import annotations

from typing import Any


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def text_table(header: list[str], rows: list[list[Any]], width: int | None = None) -> str:
    """Columns padded to their widest cell; with `width`, every cell is cut to that many characters first."""
    cells = [[" ".join(str(c).split()) if width else str(c) for c in row] for row in [header, *rows]]
    if width:
        cells = [[c if len(c) <= width else c[:width - 1] + "…" for c in row] for row in cells]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)
