"""What a training run reports, as frozen dataclasses kept in `run.history` and sent to listeners.

`elapsed` is seconds of training time since the run first started (a resumed run continues the count).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
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
    metrics: tuple[str, ...] = ()  # the metrics generation-eval computes at each evaluation (none when it is off)


@dataclass(frozen=True)
class Step(Event):
    loss: float
    learning_rate: float
    grad_norm: float | None
    tokens_per_second: float
    epoch: float
    tokens_seen: int = 0  # non-padding input tokens trained on so far, over the whole run (all processes)


@dataclass(frozen=True)
class Eval(Event):
    eval_loss: float
    perplexity: float
    # Scores of the generated answers to the sampled eval rows, flat as slmnb.metrics.Scores.values gives them
    # ({"accuracy": 0.9, "f1": 0.88}); empty when generation-eval is off.
    metrics: dict[str, float] = field(default_factory=dict)


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
        if name in ("step", "tokens_seen"):
            values[name] = int(value) if isinstance(value, int) and not isinstance(value, bool) else 0
        elif name == "metrics":
            values[name] = _scores(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            values[name] = float(value)
        else:
            values[name] = None if "None" in str(f.type) else math.nan
    return cls(**values)


def _scores(value: Any) -> dict[str, float]:
    """A line's metrics mapping, keeping the numbers only (a line written before metrics existed has none)."""
    if not isinstance(value, dict):
        return {}
    return {str(k): float(v) for k, v in value.items() if isinstance(v, int | float) and not isinstance(v, bool)}
