"""An Olive run config in a `%%finetune` cell: its run with the dashboard, then its export as `%opt export` shows
one, or its search with the search's view; `--dry-run` shows what the Olive config became."""

from __future__ import annotations

import time
from html import escape
from typing import TYPE_CHECKING, Any

from slmnb.errors import ExportError
from slmnb.notebook.opt_views import ExportJob

if TYPE_CHECKING:
    from slmnb.olive.runconfig import OliveJob
    from slmnb.training.runs import Runs


class OliveDryRun:
    """What `%%finetune --dry-run` shows for an Olive config: describe(job), as text and as a <pre> block."""

    def __init__(self, job: OliveJob) -> None:
        from slmnb.olive.runconfig import describe

        self.job, self.text = job, describe(job)

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return f"<pre>{escape(self.text)}</pre>"


class ExportAfterRun(ExportJob):
    """The export an Olive config asks for, shown under the cell at once and started when its run finishes.

    It polls the run instead of calling run.wait(): a waiting caller makes the dashboard disable its buttons.
    """

    def _work(self) -> Any:
        from slmnb.training.states import RunState

        self.phase = "waiting for the run to finish training"
        while self.run.alive:
            if self._stopped:
                return super()._work()  # raises ExportStopped at its first phase
            time.sleep(0.5)
        if self.run.status != RunState.FINISHED:
            raise ExportError(f"Run {self.name} ended {self.run.status} before finishing, so it was not exported: "
                              f"export it with %opt export {self.name} once it has trained.")
        return super()._work()  # checks the run's adapter and the options first, one sentence each


def start(runs: Runs, job: OliveJob, *, wait: bool = False) -> Any:
    """Say what was ignored, start the run with its dashboard, and its export under it; a search runs instead when
    the Olive config has searchable values."""
    from slmnb.notebook import launch

    for key, reason in job.ignored:
        print(f"Olive config: {key} is not applied: {reason}.")
    if job.search:
        if job.export:
            print(f"Olive config: the export (precision {job.export['precision']}, adapters "
                  f"{job.export['adapters']}) is left to %opt export BEST_TRIAL after the search.")
        return launch.start_search(runs, job.search_values(), {}, wait=wait)
    run = launch.start(runs, job.config, wait=wait)
    if job.export:
        export = ExportAfterRun(run, dict(job.export))
        if wait:
            export.wait()
    return run
