"""Why a run failed, in one sentence, and the one-run-per-process rule."""

from __future__ import annotations

import errno
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from slmnb.errors import RunError, SlmnbError

if TYPE_CHECKING:
    from slmnb.training.run import TrainingRun


def failure_reason(exc: BaseException, folder_path: Path, error_log: Path) -> str:
    """One sentence: ours as is; a full disk as such; anything else by type and first line, and the log."""
    if isinstance(exc, SlmnbError):
        return str(exc)
    if disk_full(exc, folder_path):
        return (f"The disk holding {folder_path} is full: free some space (or set output_dir on a larger disk), "
                "then resume the run.")
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {first} (full traceback in {error_log})."


def disk_full(exc: BaseException, path: Path) -> bool:
    # torch.save reports a full disk as a RuntimeError from its zip writer, so look at the disk as well.
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(path).free < 16 * 1024 * 1024
    except OSError:
        return False


class TrainingSlot:
    """One run trains per process at a time: runs would share the same cores and OpenMP pools."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.holder: TrainingRun | None = None

    def claim(self, run: TrainingRun) -> None:
        with self._lock:
            if self.holder is not None and self.holder is not run:
                raise self._busy()
            self.holder = run

    def release(self, run: TrainingRun) -> None:
        with self._lock:
            if self.holder is run:
                self.holder = None

    def check_free(self) -> None:
        """Refuse early, before a new run's folder is made, when another run trains."""
        with self._lock:
            if self.holder is not None:
                raise self._busy()

    def _busy(self) -> RunError:
        name = self.holder.name if self.holder is not None else "?"
        return RunError(f"Run {name!r} is still training: stop it (slmnb.active_run().stop()) or wait for it "
                        "before starting another.")


# The process's one training slot: a property of the process (its cores), not of any runs folder.
TRAINING = TrainingSlot()
