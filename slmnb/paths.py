"""Where slmnb keeps things, and how a folder is written so that a half-written one is never used."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path


def slmnb_home() -> Path:
    """The cache for converted and generated models: $SLMNB_HOME, else ~/.cache/slmnb."""
    return Path(os.environ.get("SLMNB_HOME") or "~/.cache/slmnb").expanduser()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (torchrun starts several that all want the same model)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_folder_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Run `build(tmp)` and rename tmp to `target`, unless `target` exists already.

    A folder only gets its final name once complete, so a crash mid-build leaves a hidden temp folder
    that nothing picks up; the lock keeps concurrent processes from building the same thing twice.
    """
    if target.is_dir():
        return target
    with file_lock(target.parent / f".{target.name}.lock"):
        if target.is_dir():
            return target
        tmp = temp_sibling(target)
        try:
            build(tmp)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def temp_sibling(target: Path) -> Path:
    """Where a file or folder is written before it gets its name: hidden, so nothing picks up a half-written one."""
    return target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"


def replace_folder(tmp: Path, target: Path) -> None:
    """Move a complete folder `tmp` into place at `target`, replacing an older one."""
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file via a temp file and rename, so readers see the old or the new content, never half."""
    tmp = temp_sibling(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
