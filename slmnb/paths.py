"""Where slmnb keeps things, and how a folder is written so that a half-written one is never used."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
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


# A temp name carries its writer's pid, so a later process can tell a dead writer's leftovers from work in progress.
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")


def temp_sibling(target: Path, kind: str = "tmp") -> Path:
    """Where a file or folder is written before it gets its name: hidden, so nothing picks up a half-written one."""
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def sweep_temps(folder: Path) -> list[Path]:
    """Remove the temp files and folders in `folder` left by writers that died (kill -9, power cut).

    Returns what was removed. A temp of a live process (this one included) is left alone: it may be mid-write.
    """
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or process_alive(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (a zombie counts: it is gone for our purposes, but rare)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def replace_folder(tmp: Path, target: Path) -> None:
    """Move a complete folder `tmp` into place at `target`, replacing an older one."""
    old = temp_sibling(target, "old")
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file via a temp file and rename, so readers see the old or the new content, never half."""
    tmp = temp_sibling(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
