"""What a training run reports, as frozen dataclasses kept in `run.history` and sent to listeners.

`elapsed` is seconds of training time since the run first started (a resumed run continues the count).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Event:
    step: int
    elapsed: float

    def record(self) -> dict[str, Any]:
        return {"event": type(self).__name__.lower(), **asdict(self)}


@dataclass(frozen=True)
class Started(Event):
    name: str
    max_steps: int
    precision: str
    output_dir: str
    dropped_rows: int  # rows whose response max_seq_len cut away entirely
    notes: tuple[str, ...] = ()  # what a person should know, such as a damaged checkpoint that was skipped
    base_weights: str = "original"  # int4: the base as the int4 export stores it (slmnb.training.base)


@dataclass(frozen=True)
class Step(Event):
    loss: float
    learning_rate: float
    grad_norm: float | None
    tokens_per_second: float
    epoch: float


@dataclass(frozen=True)
class Eval(Event):
    eval_loss: float
    perplexity: float


@dataclass(frozen=True)
class Checkpoint(Event):
    path: str


@dataclass(frozen=True)
class Paused(Event):
    pass


@dataclass(frozen=True)
class Resumed(Event):
    pass


@dataclass(frozen=True)
class Finished(Event):
    output_path: str
    reason: str  # "completed" or "early stopping"


@dataclass(frozen=True)
class Stopped(Event):
    output_path: str


@dataclass(frozen=True)
class Failed(Event):
    reason: str


ENDED = (Finished, Stopped, Failed)
METRIC_EVENTS = {"step": Step, "eval": Eval}


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def from_metric(record: dict[str, Any]) -> Event:
    """Rebuild a Step or Eval event from a metrics.jsonl line, to replay a run read from disk.

    The line's shape was checked by the reader (event, step, elapsed and the loss); other values that are
    missing or not numbers read as blanks, so an old or hand-edited file still replays.
    """
    cls = METRIC_EVENTS[record["event"]]
    values: dict[str, Any] = {}
    for f in fields(cls):
        name = f.name
        value = record.get(name)
        if name == "step":
            values[name] = int(value) if isinstance(value, int) else 0
        elif isinstance(value, int | float) and not isinstance(value, bool):
            values[name] = float(value)
        else:
            values[name] = None if "None" in str(f.type) else math.nan
    return cls(**values)
