"""One config field's value checked and turned into the field's type, values shown inside messages, and the
warnings about valid configs that are very likely a mistake (config_warnings).

Kept apart from slmnb.config so that file reads as the list of fields; the rules for each kind of value live here.
A value is named in a message by a short description (`a list of 3 items`), never printed in full.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmnb.errors import ConfigError

if TYPE_CHECKING:
    from slmnb.config import FinetuneConfig

TEMPLATES = ("text_template", "prompt_template", "response_template")
# A template that names no column teaches the same text for every row; a prompt may (write a poem:), an answer not.
TEMPLATES_NEEDING_A_COLUMN = ("text_template", "response_template")


def field_default(f: dataclasses.Field[Any]) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


# --- showing values in messages -------------------------------------------------------------------------


def kind_of(value: Any) -> str:
    """What a value is, in a user's words: 'a list', 'a mapping', 'bytes'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, str):
        return "text"
    if isinstance(value, bytes | bytearray):
        return "bytes"
    if isinstance(value, numbers.Number):
        return "a number"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple | set):
        return "a list"
    return f"a {type(value).__name__}"


def short_repr(value: Any, limit: int = 60) -> str:
    """A value as a message shows it: one line and short, never the repr of a huge or nested structure."""
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        digits = value.bit_length() * 30103 // 100000 + 1  # str() of a huge int is slow and then refused
        return str(value) if digits <= limit else f"a number with about {digits} digits"
    if isinstance(value, str):
        text = repr(value[:limit])
        return text if len(value) <= limit else text[:-1] + "..." + text[-1]
    return kind_of(value)


def short_path(path: str | Path) -> str:
    """A path as a message shows it: whole unless absurdly long, then its end, which names the file."""
    text = str(path)
    return repr(text) if len(text) <= 160 else repr("..." + text[-120:])


def written(value: float) -> str:
    """A number as a person writes it in a config: 0.003, 1e-6, 16 (not 1e-06 or 16.0), exact when read back."""
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e16):
        return str(int(value))
    text = repr(float(value))  # the shortest text that reads back as the same number
    mantissa, _, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else text


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e16 else f"{value:g}"


# --- checking values ------------------------------------------------------------------------------------


def coerce_field(f: dataclasses.Field[Any], value: Any) -> Any:
    """Check one value against its field, turning the forms YAML and command lines produce into the field's type."""
    meta, name = f.metadata, f.name
    # Empty clears a field whose default is empty (`--max_steps ""`); a field with a default needs a real value.
    empty = isinstance(value, str) and (value == "" if field_default(f) is None else not value.strip()) \
        and not meta.get("empty_is_a_value")
    if value is None or empty:
        if field_default(f) is None:
            return None
        raise ConfigError(f"{name} needs a value; its default is {field_default(f)!r}.")
    kind = meta["kind"]
    if kind == "str":
        return _text(name, value, meta["choices"])
    if kind == "bool":
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
            return value.strip().lower() in ("true", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {short_repr(value)}.")
        return value
    if kind in ("int", "float"):
        return _number(name, value, kind, meta)
    if kind == "strs":
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} must be a list of names or a comma-separated text, got {short_repr(value)}.")
        for entry in value:
            _check_text(name, entry)
        if name == "target_modules" and list(value) == ["all-linear"]:
            return "all-linear"
        return list(value) or None
    if kind == "layers":
        return _layers(name, value)
    if kind == "rows":
        return _rows(name, value)
    if kind == "args":
        return _training_args(name, value)
    raise AssertionError(f"unknown field kind {kind}")


def _check_text(name: str, value: str) -> None:
    # A NUL cannot be part of a path, and a lone surrogate cannot be written to config.yaml or tokenized.
    if "\0" in value:
        raise ConfigError(f"{name} contains a NUL character (\\x00): remove it.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{name} contains a lone surrogate (an invalid \\ud800-\\udfff escape): remove it.") \
            from None


def _text(name: str, value: Any, choices: tuple[str, ...] | None) -> str:
    finite = not isinstance(value, float) or math.isfinite(value)
    if not isinstance(value, str | int | float) or isinstance(value, bool) or not finite:
        raise ConfigError(f"{name} must be a text value, got {short_repr(value)}.")
    if isinstance(value, int) and value.bit_length() > 256:
        raise ConfigError(f"{name} must be a text value, got {short_repr(value)}.")
    value = str(value)
    _check_text(name, value)
    if choices and value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{name} must be one of {', '.join(choices)}{hint}, got {short_repr(value)}.")
    if name in TEMPLATES:
        template_columns(value, name)
    return value


# More layers than any model has: a number past it is a typo (and keeps a range from building a huge list).
MAX_LAYER = 9999
_LAYER_RANGE = re.compile(r"([0-9]{1,4}) *(?:- *([0-9]{1,4}))?")  # 4 digits: at most MAX_LAYER


def _layers(name: str, value: Any) -> str | None:
    """Layer numbers, given as a list, one number or text with ranges (`15-29`, `0, 2, 4-7`), kept as that text in
    its shortest spelling: a config shows `15-29`, not fifteen numbers."""
    wrong = ConfigError(f"{name} must be layer numbers counted from 0, such as 15-29 or 0, 2, 4-7, got "
                        f"{short_repr(value)}.")
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, str):
        try:
            picked = set(layer_numbers(value))
        except ValueError:
            raise wrong from None
    elif isinstance(value, list | tuple):
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_LAYER for v in value):
            raise wrong
        picked = set(value)
    else:
        raise wrong
    return layer_text(sorted(picked)) or None


def layer_text(sorted_numbers: list[int]) -> str:
    """Sorted layer numbers as ranges: [0, 2, 3, 4] -> '0, 2-4'."""
    runs: list[list[int]] = []
    for n in sorted_numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def layer_numbers(text: str) -> list[int]:
    """The layer numbers a layers_to_transform text names, in order; ValueError when a part is no number or range."""
    found: list[int] = []
    for part in text.split(","):
        match = _LAYER_RANGE.fullmatch(part.strip())
        if not match or int(match[2] or match[1]) < int(match[1]):
            raise ValueError(f"not layer numbers: {text!r}")
        found.extend(range(int(match[1]), int(match[2] or match[1]) + 1))
    return found


def _rows(name: str, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list | tuple) or not all(isinstance(r, dict) for r in value):
        raise ConfigError(f"{name} must be a list of mappings such as [{{'phrase': 'hi', 'tone': 'Joy'}}].")
    for number, row in enumerate(value, 1):
        for key, cell in row.items():
            if not isinstance(key, str):
                raise ConfigError(f"Row {number} of {name} has the key {short_repr(key)}, which is not text: quote "
                                  "column names in the YAML, such as '1': instead of 1:.")
            _check_text(f"Row {number} of {name}, column {short_repr(key)},", key)
            if isinstance(cell, str):
                _check_text(f"Row {number} of {name}, column {short_repr(key)},", cell)
    return [dict(r) for r in value]


def _training_args(name: str, value: Any) -> dict[str, Any] | None:
    """Names and plain values only: TrainingArguments itself checks each name and value when the run starts
    (importing transformers here would slow every config)."""
    from dataclasses import fields

    from slmnb.config import RESERVED_TRAINING_ARGS, FinetuneConfig

    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a mapping of TrainingArguments names to values, such as "
                          f"{{max_grad_norm: 0.5}}, got {short_repr(value)}.")
    own = {f.name for f in fields(FinetuneConfig)} | {"batch_size", "per_device_train_batch_size"}
    for key, entry in value.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ConfigError(f"{name} keys are TrainingArguments names such as max_grad_norm, not "
                              f"{short_repr(key)}.")
        if key in own:
            raise ConfigError(f"{name} sets {key}, which is a config field of its own: set {key} instead.")
        if key in RESERVED_TRAINING_ARGS:
            raise ConfigError(f"{name} cannot set {key}: {RESERVED_TRAINING_ARGS[key]}.")
        scalars = (str, int, float, bool, type(None))
        if not isinstance(entry, scalars) and not (isinstance(entry, list | tuple) and all(
                isinstance(e, scalars) for e in entry)):
            raise ConfigError(f"{name}.{key} must be a plain value (text, number, true/false or a list of them), "
                              f"got {short_repr(entry)}.")
        if isinstance(entry, str):
            _check_text(f"{name}.{key}", entry)
    return dict(value) or None


def template_columns(template: str, option: str) -> list[str]:
    """The {column} names a template uses; refuses anything but plain names (no attributes, indexes or formats)."""
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"{option} is malformed ({exc}): write {{column}} for a value and {{{{ }}}} for a "
                          "literal brace.") from None
    for _, column, spec, conversion in parsed:
        if column is None:
            continue
        if not column.isidentifier() or spec or conversion:
            shown = f"{{{column}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
            raise ConfigError(f"{option} may only use plain {{column}} placeholders, not {short_repr(shown)}.")
        names.append(column)
    if not names and option in TEMPLATES_NEEDING_A_COLUMN:
        example = "'{tone}'" if option == "response_template" else "'{phrase} -> {tone}'"
        raise ConfigError(f"{option} uses no {{column}}, so every row would teach the same text: name the columns "
                          f"it shows, such as {example}.")
    return names


def _number(name: str, value: Any, kind: str, meta: Mapping[str, Any]) -> int | float:
    # YAML 1.1 reads 1e-3 as a string and command lines give strings: accept any text that is a number.
    if isinstance(value, str):
        text = value.strip()
        whole = re.fullmatch(r"[+-]?\d+", text) is not None
        if whole and len(text) > 1000:  # int() refuses thousands of digits, and no field wants them
            raise ConfigError(f"{name} must be a number of a sensible size, got one with {len(text)} digits.")
        try:
            value = int(text) if kind == "int" and whole else float(text)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {short_repr(value)}.") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {short_repr(value)}.")
    if isinstance(value, numbers.Integral):
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value}.")
    _check_bounds(name, value, meta)
    if kind == "int":
        if value != int(value):
            raise ConfigError(f"{name} must be a whole number, got {short_repr(value)}.")
        return int(value)
    if isinstance(value, int) and abs(value) > 1e300:  # no bound above, and too large for a float
        raise ConfigError(f"{name} must be a finite number, got {short_repr(value)}.")
    return float(value)


def _check_bounds(name: str, value: float, meta: Mapping[str, Any]) -> None:
    low, high = meta["low"], meta["high"]
    if low is not None and (value <= low if meta["low_open"] else value < low):
        bound = f"above {_number_text(low)}" if meta["low_open"] else f"at least {_number_text(low)}"
        raise ConfigError(f"{name} must be {bound}, got {_shown_number(value)}.")
    if high is not None and (value >= high if meta["high_open"] else value > high):
        bound = f"below {_number_text(high)}" if meta["high_open"] else f"at most {_number_text(high)}"
        raise ConfigError(f"{name} must be {bound}, got {_shown_number(value)}.")


def _shown_number(value: float) -> str:
    return short_repr(value) if isinstance(value, int) else f"{value:g}"


# --- warnings: values that work but are very likely a mistake ---------------------------------------------
# An error is for what cannot work (the bounds above); a warning for what trains but almost surely not as meant.
# Every front end shows the same sentences: the form beside the field, the CLI before training, the dashboard's
# notes. The set is kept small on purpose: a warning that fires on sensible configs teaches users to ignore it.

# LoRA trains a few small matrices from zero and tolerates high rates (the demo uses 3e-3); above 1e-2 the loss
# usually jumps and diverges. Full fine-tuning moves every pretrained weight: above 1e-3 it wrecks what the model
# knew. Below 1e-6 (or 0) the weights barely move within any run a notebook would do.
LEARNING_RATE_RANGES = {"lora": (1e-6, 1e-2, "3e-3"), "qlora": (1e-6, 1e-2, "3e-3"), "full": (1e-6, 1e-3, "2e-5")}
# Dropping most of the LoRA input makes each step learn from noise; the usual values are 0 to 0.1.
MAX_LORA_DROPOUT = 0.5
# The update is scaled by lora_alpha / lora_r; common recipes use 0.25 to 2. Far outside, it acts like a learning
# rate many times too high or too low (typically lora_r raised to 256 while lora_alpha stays 16).
LORA_SCALE_RANGE = (1 / 8, 8)
# Holding out more than half the rows for evaluation leaves too few to learn from.
MAX_EVAL_SIZE = 0.5


def field_warnings(config: FinetuneConfig) -> dict[str, str]:
    """The config's likely mistakes, by the field to change: one sentence each, naming the fix."""
    found: dict[str, str] = {}
    rate = config.peak_learning_rate
    low, high, usual = LEARNING_RATE_RANGES[config.method]
    full = config.method == "full"
    what, harm = ("full fine-tuning", "erase what the model knew") if full else ("LoRA", "diverge")
    if rate > high:
        found["learning_rate"] = (f"learning_rate {written(rate)} is far above what {what} uses (at most "
                                  f"{written(high)}) and will likely {harm}: try {usual}.")
    elif rate < low:
        found["learning_rate"] = (f"learning_rate {written(rate)} is below {written(low)}, so the weights barely "
                                  f"change: try {usual}.")
    if config.method != "full":  # the LoRA fields do nothing in full fine-tuning
        if config.lora_dropout > MAX_LORA_DROPOUT:
            found["lora_dropout"] = (f"lora_dropout {written(config.lora_dropout)} drops most of the LoRA input, so it "
                                     "learns slowly: use 0 to 0.1 (the default is 0.05).")
        scale = config.lora_alpha / config.lora_r
        if not LORA_SCALE_RANGE[0] <= scale <= LORA_SCALE_RANGE[1]:
            pace = "faster" if scale > 1 else "slower"
            found["lora_alpha"] = (f"lora_alpha {config.lora_alpha} / lora_r {config.lora_r} scales the update by "
                                   f"{written(scale)} (usually 0.25 to 2), like a far {pace} learning rate: set "
                                   f"lora_alpha to about twice lora_r ({2 * config.lora_r}).")
    if config.eval_split is None and config.eval_size > MAX_EVAL_SIZE:
        found["eval_size"] = (f"eval_size {written(config.eval_size)} holds out most of the rows for evaluation, "
                              "leaving few to train on: use 0.1 to 0.2.")
    return found


def config_warnings(config: FinetuneConfig) -> list[str]:
    """The config's likely mistakes, one sentence each naming the fix (empty for a sensible config)."""
    return list(field_warnings(config).values())
