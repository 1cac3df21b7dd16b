"""A safetensors file's header, read without its weights: tensor shapes, and how long the file should be.

The header is JSON after an 8-byte length, a few kilobytes however large the weights: reading it checks a model or
an adapter in milliseconds, before anything loads them. Callers decide what a mismatch means to them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_HEADER = 100_000_000  # safetensors' own limit


def read_header(path: Path) -> tuple[dict[str, list[int]], int] | None:
    """{tensor name: shape} and the file length the header implies; None when unreadable or not a valid header."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size)) if 2 <= size <= MAX_HEADER else None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    found = _tensors(header)
    return None if found is None else (found[0], 8 + size + found[1])


def _tensors(header: Any) -> tuple[dict[str, list[int]], int] | None:
    """The shapes in a parsed header and where its data ends, or None when it is not a valid header."""
    if not isinstance(header, dict):
        return None
    shapes: dict[str, list[int]] = {}
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = _ints(entry.get("shape")) if isinstance(entry, dict) else None
        offsets = _ints(entry.get("data_offsets")) if isinstance(entry, dict) else None
        if shape is None or offsets is None or len(offsets) != 2 or offsets[0] > offsets[1]:
            return None
        shapes[str(name)], end = shape, max(end, offsets[1])
    return shapes, end


def _ints(value: Any) -> list[int] | None:
    """A list of non-negative whole numbers, or None."""
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return value
    return None
