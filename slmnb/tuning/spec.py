"""The search keys of a config: what to search (search_space), how (search_strategy) and for what (objective).

They sit beside the FinetuneConfig fields in a `%%finetune` body or a YAML file, in the shape of the SLMOps search
file; `parse_search` takes them out and checks them, so every mistake is one ConfigError sentence before anything
trains. The fixed fields left over apply to every trial. Nothing here imports Optuna.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Literal

from slmnb.checks import short_repr
from slmnb.config import FinetuneConfig
from slmnb.errors import ConfigError
from slmnb.tuning.space import Param, grid_size, mapping, parse_enqueue, parse_space, positive, whole

SEARCH_KEYS = ("search_strategy", "search_space", "objective")
STRATEGIES = ("random", "tpe", "grid")
PRUNERS = ("median", "halving", "none")
_STRATEGY_KEYS = ("type", "num_trials", "max_time", "seed", "pruner", "enqueue")


@dataclass(frozen=True)
class SearchSpec:
    """A checked search: `space` maps FinetuneConfig field names (aliases resolved) to their Param."""

    space: dict[str, Param]
    strategy: str = "random"
    num_trials: int = 10
    max_time: float | None = None  # seconds after which no new trial starts
    seed: int | None = None
    pruner: str = "median"
    objective: str = "eval_loss"
    enqueue: tuple[dict[str, Any], ...] = ()  # parameters of the first trials, in order (Optuna's enqueue_trial)

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        from slmnb.metrics import greater_is_better

        return "maximize" if greater_is_better(self.objective) else "minimize"

    def describe(self) -> str:
        """One sentence: what is searched, how, and for what."""
        def range_text(name: str, p: Param) -> str:
            if p.type == "choice":
                return f"{name} in {list(p.values)}"
            step = f" step {p.step:g}" if p.step else ""
            return f"{name} {p.low:g} to {p.high:g}{' (log)' if p.log else ''}{step}"

        goal = "lower" if self.direction == "minimize" else "higher"
        return (f"A {self.strategy} search of {self.num_trials} trials over "
                f"{', '.join(range_text(k, p) for k, p in self.space.items())}, pruner {self.pruner}, objective "
                f"{self.objective} ({goal} is better): each trial trains this config with its own values.")

    def to_dict(self) -> dict[str, Any]:
        """The search keys as a config file writes them: parse_search(to_dict()) gives this spec back."""
        strategy: dict[str, Any] = {"type": self.strategy, "num_trials": self.num_trials, "pruner": self.pruner}
        if self.max_time is not None:
            strategy["max_time"] = self.max_time
        if self.seed is not None:
            strategy["seed"] = self.seed
        if self.enqueue:
            strategy["enqueue"] = [dict(e) for e in self.enqueue]
        return {"search_strategy": strategy, "search_space": {k: p.to_dict() for k, p in self.space.items()},
                "objective": self.objective}


def parse_search(values: dict[str, Any]) -> tuple[dict[str, Any], SearchSpec | None]:
    """Split a config mapping into its fixed fields and its search (None when it has no search keys).

    Raises ConfigError, one sentence, for any mistake in the search keys; the fixed fields are checked later, when a
    FinetuneConfig is built from them (with each trial's values, here already for every candidate value).
    """
    if not isinstance(values, dict):
        raise ConfigError("The config must be a mapping of keys to values, such as 'max_steps: 60'.")
    fixed = {k: v for k, v in values.items() if k not in SEARCH_KEYS}
    if not any(k in values for k in SEARCH_KEYS):
        return fixed, None
    if "search_space" not in values:
        raise ConfigError("A search needs a search_space, such as 'search_space: {learning_rate: {type: float, "
                          "low: 1e-5, high: 1e-2, log: true}}'.")
    space = parse_space(values["search_space"], fixed)
    strategy = mapping(values.get("search_strategy") or {}, "search_strategy", _STRATEGY_KEYS)
    kind = _choice(strategy.get("type", "random"), "search_strategy type", STRATEGIES)
    pruner = _choice(strategy.get("pruner", "median"), "search_strategy pruner", PRUNERS)
    points = grid_size(space) if kind == "grid" else None
    num_trials = whole(strategy.get("num_trials", points or 10), "search_strategy num_trials", low=1)
    if points is not None and num_trials > points:
        raise ConfigError(f"search_strategy num_trials {num_trials} is more than the grid's {points} points: "
                          f"lower it to {points} or leave it out.")
    max_time = strategy.get("max_time")
    if max_time is not None:
        max_time = positive(max_time, "search_strategy max_time")
    seed = strategy.get("seed")
    if seed is not None:
        seed = whole(seed, "search_strategy seed", low=0)
    objective = _objective(values.get("objective", "eval_loss"), fixed)
    enqueue = parse_enqueue(strategy.get("enqueue") or [], space)
    return fixed, SearchSpec(space=space, strategy=kind, num_trials=num_trials, max_time=max_time, seed=seed,
                             pruner=pruner, objective=objective, enqueue=enqueue)


def _objective(value: Any, fixed: dict[str, Any]) -> str:
    """eval_loss, perplexity, or a score the trials' metrics give (checked as metric_for_best_model is)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"objective must be a score name such as eval_loss or accuracy, not {short_repr(value)}.")
    key = value.strip()
    key = "eval_loss" if key in ("loss", "eval_loss") else key.removeprefix("eval_")
    try:
        FinetuneConfig.from_dict({**fixed, "metric_for_best_model": key})
    except ConfigError as exc:
        if "metric_for_best_model" not in str(exc):
            raise
        raise ConfigError(str(exc).replace("metric_for_best_model", "objective", 1)) from None
    return key


def _choice(value: Any, what: str, allowed: tuple[str, ...]) -> str:
    text = str(value).strip().lower() if isinstance(value, str) else value
    if text not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{what} {short_repr(value)} is unknown{hint}: use {', '.join(allowed)}.")
    return str(text)
