"""search_space: which FinetuneConfig fields a search varies, and over what (a float or int range, or a choice).

Every candidate value is checked as the field checks it, and with the fixed fields, before anything trains.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields
from typing import Any

from slmnb.checks import kind_of, short_repr
from slmnb.config import FinetuneConfig, check_field
from slmnb.errors import ConfigError

TYPES = ("float", "int", "choice")
# Names a search file may use for a field: the SLMOps material says batch_size for Olive's per-device batch size.
ALIASES = {"batch_size": "per_device_train_batch_size"}
_PARAM_KEYS = {"float": ("type", "low", "high", "step", "log"), "int": ("type", "low", "high", "step", "log"),
               "choice": ("type", "values")}
_FIELDS = {f.name: f for f in fields(FinetuneConfig)}
# Fields a trial cannot take from the search: each trial is its own run, named and placed by the search.
_NOT_SEARCHED = ("name", "output_dir", "rows", "data_files", "training_args")


@dataclass(frozen=True)
class Param:
    """One searched field: a float or int range (step, log as Optuna takes them) or a choice among values."""

    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    values: tuple[Any, ...] = ()

    def grid(self) -> list[Any]:
        """Every value a grid search tries (a float range needs a step, which parse_search makes sure of)."""
        if self.type == "choice":
            return list(self.values)
        assert self.low is not None and self.high is not None
        step = self.step or 1
        count = math.floor((self.high - self.low) / step + 1e-9) + 1
        points = [self.low + i * step for i in range(count)]
        return [int(p) for p in points] if self.type == "int" else [round(p, 12) for p in points]

    def to_dict(self) -> dict[str, Any]:
        if self.type == "choice":
            return {"type": "choice", "values": list(self.values)}
        out: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.step is not None:
            out["step"] = self.step
        if self.log:
            out["log"] = True
        return out


def field_name(key: Any) -> str:
    """The FinetuneConfig field a search_space key names (batch_size is per_device_train_batch_size)."""
    names = list(_FIELDS) + list(ALIASES)
    if not isinstance(key, str):
        raise ConfigError(f"search_space keys are field names such as learning_rate, not {kind_of(key)}.")
    if key in ALIASES:
        return ALIASES[key]
    if key not in _FIELDS:
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]}?" if close else "search_space keys are FinetuneConfig fields such as " \
                                                         "learning_rate, lora_r or batch_size."
        raise ConfigError(f"search_space names an unknown field {short_repr(key)}: {hint}")
    return key




def parse_space(raw: Any, fixed: dict[str, Any]) -> dict[str, Param]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("search_space must map fields to ranges, such as 'learning_rate: {type: float, low: 1e-5, "
                          "high: 1e-2, log: true}'.")
    fixed_names = {ALIASES.get(k, k) for k in fixed}
    space: dict[str, Param] = {}
    for key, entry in raw.items():
        name = field_name(key)
        if name in space:
            raise ConfigError(f"search_space names {name} twice (batch_size is per_device_train_batch_size): keep "
                              "one.")
        if name in _NOT_SEARCHED:
            raise ConfigError(f"search_space cannot search {name}: the search names each trial's run itself; search "
                              "other fields.")
        if name in fixed_names:
            raise ConfigError(f"{name} is both fixed in the config and searched in search_space: remove one of them.")
        space[name] = _param(name, key, entry)
        for value in _candidates(space[name]):
            _check_in_config(name, value, fixed)
    return space


def _param(name: str, key: str, entry: Any) -> Param:
    if not isinstance(entry, dict):
        raise ConfigError(f"search_space {key} must be a mapping such as '{{type: choice, values: [8, 16]}}', not "
                          f"{kind_of(entry)}.")
    kind = entry.get("type")
    if kind not in TYPES:
        raise ConfigError(f"search_space {key} has type {short_repr(kind)}: use float, int or choice.")
    mapping(entry, f"search_space {key}", _PARAM_KEYS[kind])
    field_kind = _FIELDS[name].metadata["kind"]
    if kind == "choice":
        values = entry.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"search_space {key} is a choice without values: give a list such as 'values: [8, 16]'.")
        bad = [v for v in values if not isinstance(v, str | int | float | bool | type(None))]
        if bad:
            raise ConfigError(f"search_space {key} values must be numbers, text, true/false or null, not "
                              f"{kind_of(bad[0])}: write a list of names as one comma-separated text.")
        typed = tuple(check_field(name, v) for v in values)
        # A field's own spelling of each value (1e-3 text -> 0.001, 'all-linear' list -> text) keeps Optuna's
        # categorical values plain and equal to what the trial's config holds.
        typed = tuple(",".join(v) if isinstance(v, list) else v for v in typed)
        if len(set(map(repr, typed))) != len(typed):
            raise ConfigError(f"search_space {key} lists a value twice: keep each value once.")
        return Param(type="choice", values=typed)
    if field_kind not in ("int", "float"):
        raise ConfigError(f"search_space {key} is not a number field: search it with type choice.")
    if kind == "float" and field_kind == "int":
        raise ConfigError(f"search_space {key} takes whole numbers: use type int (or choice).")
    for end in ("low", "high"):
        if end not in entry:
            raise ConfigError(f"search_space {key} needs {end}, such as '{{type: {kind}, low: 1, high: 8}}'.")
    low, high = check_field(name, entry["low"]), check_field(name, entry["high"])
    if kind == "int":
        low, high = whole(low, f"search_space {key} low"), whole(high, f"search_space {key} high")
    if low >= high:
        raise ConfigError(f"search_space {key} has low {low} not below high {high}: make low smaller than high.")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"search_space {key} log must be true or false, got {short_repr(log)}.")
    if log and low <= 0:
        raise ConfigError(f"search_space {key} searches on a log scale from low {low}: a log scale needs low above "
                          "0, such as 1e-6.")
    step = entry.get("step")
    if step is not None:
        step = whole(step, f"search_space {key} step", low=1) if kind == "int" else \
            positive(step, f"search_space {key} step")
        if log and step != 1:
            raise ConfigError(f"search_space {key} has both log and a step: Optuna takes one of them, drop one.")
    return Param(type=kind, low=low, high=high, step=step, log=log)


def _candidates(param: Param) -> list[Any]:
    return list(param.values) if param.type == "choice" else [param.low, param.high]


def _check_in_config(name: str, value: Any, fixed: dict[str, Any]) -> None:
    """A candidate value must make a valid config with the fixed fields (a rank of 'x', a template clash...)."""
    try:
        FinetuneConfig.from_dict({**fixed, name: value})
    except ConfigError as exc:
        if name in str(exc):
            raise ConfigError(f"search_space {name} value {short_repr(value)} does not make a valid config: "
                              f"{lower_first(str(exc))}") from None
        raise  # the fixed fields are wrong on their own: their sentence as is


def grid_size(space: dict[str, Param]) -> int:
    size = 1
    for name, param in space.items():
        if param.type == "float" and param.step is None:
            raise ConfigError(f"A grid search cannot list every value of the float range {name}: give it a step, or "
                              "make it a choice.")
        size *= len(param.grid())
    return size


def parse_enqueue(raw: Any, space: dict[str, Param]) -> tuple[dict[str, Any], ...]:
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise ConfigError("search_strategy enqueue must be a list of mappings such as '[{learning_rate: 1e-3}]'.")
    out = []
    for entry in raw:
        params = {}
        for key, value in entry.items():
            name = field_name(key)
            if name not in space:
                raise ConfigError(f"search_strategy enqueue sets {name}, which search_space does not search: add it "
                                  "to search_space or drop it.")
            params[name] = _in_param(name, space[name], check_field(name, value))
        out.append(params)
    return tuple(out)


def _in_param(name: str, param: Param, value: Any) -> Any:
    if param.type == "choice":
        value = ",".join(value) if isinstance(value, list) else value
        if value not in param.values:
            raise ConfigError(f"search_strategy enqueue gives {name} {short_repr(value)}, which is not among its "
                              "values: use one of them.")
    elif not (param.low is not None and param.high is not None and param.low <= value <= param.high):
        raise ConfigError(f"search_strategy enqueue gives {name} {value}, outside its range {param.low} to "
                          f"{param.high}: use a value inside it.")
    return value


# --- small checks ----------------------------------------------------------------------------------------------


# --- small checks, shared with spec.py ---------------------------------------------------------------------


def mapping(value: Any, what: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a mapping of keys to values, not {kind_of(value)}.")
    for key in value:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]}?" if close else f"use {', '.join(allowed)}."
            raise ConfigError(f"{what} has an unknown key {short_repr(key)}: {hint}")
    return value


def whole(value: Any, what: str, low: int | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be a whole number, got {short_repr(value)}.")
    if low is not None and value < low:
        raise ConfigError(f"{what} must be at least {low}, got {value}.")
    return value


def positive(value: Any, what: str) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{what} must be a number above 0, got {short_repr(value)}.")
    return number


def lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text
