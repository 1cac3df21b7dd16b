"""What a search reports to its listeners (a dashboard, the CLI's lines), as frozen dataclasses.

Trial numbers are Optuna's (from 0); each trial is the run named in `run`, which every run view opens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from slmnb.training import events as ev


@dataclass(frozen=True)
class SearchEvent:
    def record(self) -> dict[str, Any]:
        return {"event": type(self).__name__.lower(), **asdict(self)}


@dataclass(frozen=True)
class TrialStarted(SearchEvent):
    number: int
    params: dict[str, Any]
    run: str


@dataclass(frozen=True)
class TrialEvent(SearchEvent):
    """An event of the trial's run (Step, Eval, ...), passed on so one listener can draw every trial's curves."""

    number: int
    run: str
    event: ev.Event


@dataclass(frozen=True)
class TrialEnded(SearchEvent):
    number: int
    state: str  # complete | pruned | failed
    value: float | None  # the objective at the run's last evaluation (a pruned trial: at the one that pruned it)
    steps: int
    seconds: float
    reason: str  # "completed", "pruned at step 8: ...", or a failed run's one sentence
    run: str = ""


@dataclass(frozen=True)
class SearchEnded(SearchEvent):
    best_number: int | None
    best_value: float | None
    reason: str  # "num_trials reached", "max_time reached", "stopped", or a failure's sentence
    steps_trained: int = 0  # optimizer steps of all trials of this study
    steps_saved: int = 0  # steps the pruned trials did not train, against every trial running to its max_steps
    notes: tuple[str, ...] = field(default_factory=tuple)
