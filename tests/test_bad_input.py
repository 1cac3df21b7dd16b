"""Bad input never shows a traceback: generated bad configs, data files, magic lines and CLI argument lists, fed
through slmnb.finetune(), `slmnb finetune` (in process) and a %%finetune cell, must each end in one slmnb sentence
before any thread starts.

Every generated config is the valid `tiny` config with exactly one thing broken, so a case can never train by
accident; if one does start a run, the run is stopped and the case fails. With CI set the examples are derandomized
(the same cases every run, so CI is never flaky); locally each run explores new ones.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import re
import shlex
import shutil
import string
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import slmnb
from slmnb.errors import SlmnbError

settings.register_profile("slmnb-ci", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("slmnb-dev", database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PROFILE = settings.get_profile("slmnb-ci" if os.environ.get("CI") else "slmnb-dev")

# Text that only an exception from inside Python or a library would put in a message.
INTERNAL = ("Traceback", "KeyError", "ValueError", "TypeError", "AttributeError", "IndexError", "OverflowError",
            "RecursionError", "UnicodeDecodeError", "UnicodeEncodeError", "JSONDecodeError", "ArrowInvalid",
            "ArrowException", "ParserError", "ScannerError", "ConstructorError", "[Errno", "object has no attribute",
            "not subscriptable", "unhashable type", "NoneType", "invalid literal for", "could not convert",
            "unexpected keyword", "positional argument", "codec can't", "embedded null", 'File "', ".py\"",
            "exceeds the limit", "Exceeds the limit", "maximum recursion", "cannot convert float")
MAX_MESSAGE = 800  # the longest sentence: an unknown key, followed by every valid key
RUN_TIMEOUT = 120.0

COLUMNS = ("phrase", "tone")
INT_BOUNDS: dict[str, tuple[int, int]] = {  # what each whole-number field accepts (the spec, not the code's table)
    "lora_r": (1, 4096), "lora_alpha": (1, 65536), "max_samples": (1, 2**31 - 1), "max_seq_len": (8, 2**31 - 1),
    "max_steps": (1, 2**31 - 1), "per_device_train_batch_size": (1, 2**31 - 1),
    "gradient_accumulation_steps": (1, 2**31 - 1), "logging_steps": (1, 2**31 - 1), "eval_steps": (1, 2**31 - 1),
    "save_steps": (1, 2**31 - 1), "seed": (0, 2**32 - 1), "early_stopping_patience": (1, 2**31 - 1),
    "eval_generate_samples": (0, 2**31 - 1), "eval_max_new_tokens": (1, 4096),
}
# (low, high, low refused, high refused): lora_dropout must be in [0, 1), num_train_epochs in (0, 1e6].
FLOAT_BOUNDS: dict[str, tuple[float, float, bool, bool]] = {
    "lora_dropout": (0.0, 1.0, False, True), "eval_size": (0.0, 1.0, False, True),
    "warmup_ratio": (0.0, 1.0, False, True), "num_train_epochs": (0.0, 1e6, True, False),
    "learning_rate": (0.0, math.inf, False, False), "weight_decay": (0.0, math.inf, False, False),
}
CHOICES = {"method": ("lora", "qlora", "full"), "precision": ("auto", "bf16", "fp32"),
           "base_weights": ("auto", "int4", "original"),
           "lr_scheduler_type": ("linear", "cosine", "cosine_with_restarts", "cosine_with_min_lr", "polynomial",
                                 "constant", "constant_with_warmup", "inverse_sqrt", "warmup_stable_decay")}
TEXT_FIELDS = ("model_name_or_path", "train_split", "name", "prompt_template", "response_template", "method",
               "precision", "lr_scheduler_type", "base_weights", "metric_for_best_model", "loss", "task_name",
               "system_prompt")
BOOL_FIELDS = ("use_chat_template", "gradient_checkpointing", "load_best_model_at_end")
LIST_FIELDS = ("target_modules", "data_files", "metrics")
FIELD_NAMES = (*INT_BOUNDS, *FLOAT_BOUNDS, *TEXT_FIELDS, *BOOL_FIELDS, *LIST_FIELDS, "data_name", "rows",
               "eval_split", "text_template", "output_dir", "training_args", "layers_to_transform")


# --- the valid base, and one thing broken ---------------------------------------------------------------


@dataclass(frozen=True)
class Deep:
    """A list nested `depth` levels: built without recursion, written as flow YAML by hand."""

    depth: int

    def value(self) -> list[Any]:
        inner: list[Any] = []
        for _ in range(self.depth - 1):
            inner = [inner]
        return inner

    def yaml(self) -> str:
        return "[" * self.depth + "]" * self.depth


@dataclass
class Break:
    """One change to the valid config: set keys, remove keys, or replace the whole config."""

    what: str
    set: dict[Any, Any] = field(default_factory=dict)
    remove: tuple[str, ...] = ()
    whole: Any = None
    as_options: bool = False  # also give the set values as --key value options (text means the same here)

    def apply(self, base: dict[str, Any]) -> Any:
        if self.whole is not None:
            return self.whole
        config = {k: v for k, v in copy.deepcopy(base).items() if k not in self.remove}
        config.update({k: v.value() if isinstance(v, Deep) else v for k, v in self.set.items()})
        return config

    def yaml(self, base: dict[str, Any]) -> str:
        if self.whole is not None:
            return yaml.safe_dump(self.whole)
        config = {k: v for k, v in copy.deepcopy(base).items() if k not in self.remove}
        deep = {f"deep-{i}": v.yaml() for i, v in enumerate(self.set.values()) if isinstance(v, Deep)}
        tokens = iter(deep)
        config.update({k: next(tokens) if isinstance(v, Deep) else v for k, v in self.set.items()})
        text = yaml.safe_dump(config, allow_unicode=False, width=1 << 20)
        for token, flow in deep.items():
            text = text.replace(token, flow)
        return text

    def options(self) -> list[str]:
        return [part for key, value in self.set.items() for part in (f"--{key}", _as_text(value))]


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)


identifiers = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
non_finite = st.sampled_from([math.inf, -math.inf, math.nan, "inf", "-inf", "nan", "NaN", "Infinity", "1e400",
                              "-1e999"])
# Up to 4,000 digits: Python refuses to write out more, and YAML must write these.
huge_ints = st.integers(min_value=20, max_value=4000).map(lambda digits: 10**digits)
wrong_shapes = st.one_of(st.lists(st.integers(), max_size=3), st.dictionaries(identifiers, st.integers(), max_size=2),
                         st.builds(Deep, st.sampled_from([2, 50, 5000])), st.binary(min_size=1, max_size=8))


@st.composite
def bad_numbers(draw: st.DrawFn) -> Break:
    name = draw(st.sampled_from([*INT_BOUNDS, *FLOAT_BOUNDS]))
    whole = name in INT_BOUNDS
    low, high, low_refused, high_refused = (*INT_BOUNDS[name], False, False) if whole else FLOAT_BOUNDS[name]
    digits = len(str(int(high))) if math.isfinite(high) else 309  # 10**309 is beyond every float
    choices = [non_finite, st.integers(min_value=digits, max_value=4000).map(lambda d: 10**d), wrong_shapes,
               st.booleans(), st.text(alphabet="abcxyz ,;", min_size=1, max_size=6),
               (st.integers(max_value=int(low) - 1) if whole else
                st.floats(max_value=low, allow_nan=False, allow_infinity=False).filter(
                    lambda v: v < low or (low_refused and v == low)))]
    if math.isfinite(high):
        choices.append(st.integers(min_value=int(high) + 1, max_value=10**30) if whole else
                       st.floats(min_value=high, allow_nan=False, allow_infinity=False).filter(
                           lambda v: v > high or (high_refused and v == high)))
    if whole:
        choices.append(st.floats(min_value=low + 0.01, max_value=min(high, 1e6) - 0.01).filter(
            lambda v: not v.is_integer()))
    value = draw(st.one_of(*choices))
    text = isinstance(value, str) or (isinstance(value, int | float) and not isinstance(value, bool))
    return Break(f"{name}={value!r:.60}", set={name: value}, as_options=text)


@st.composite
def bad_types(draw: st.DrawFn) -> Break:
    name = draw(st.sampled_from([*TEXT_FIELDS, *BOOL_FIELDS, *LIST_FIELDS, "rows", "data_name", "eval_split",
                                 "layers_to_transform"]))
    if name in BOOL_FIELDS:
        value = draw(st.one_of(st.integers(), st.floats(allow_nan=False), wrong_shapes,
                               st.text(min_size=1, max_size=8).filter(
                                   lambda t: t.strip().lower() not in ("true", "false", "yes", "no"))))
    elif name in LIST_FIELDS:
        value = draw(st.one_of(st.integers(), st.dictionaries(identifiers, st.integers(), min_size=1, max_size=2),
                               st.lists(st.integers(), min_size=1, max_size=3), st.booleans()))
    elif name == "layers_to_transform":  # layer numbers: a list, one number, or text such as 15-29
        value = draw(st.one_of(
            st.integers(max_value=-1), st.integers(min_value=10_000), st.floats(allow_nan=False), st.booleans(),
            st.lists(st.one_of(st.integers(max_value=-1), st.booleans(), st.text(max_size=3), st.floats()),
                     min_size=1, max_size=3),
            st.sampled_from(["29-15", "-3", "1-", "-", "a-b", "1..4", "1,,2", "15 29", "0x10", "1e3", "\u0661", "99999",
                             "0-99999"]),
            st.text(alphabet="0123456789-, ;x", min_size=1, max_size=8).filter(_not_layer_text),
            st.dictionaries(identifiers, st.integers(), min_size=1, max_size=2)))
    elif name == "rows":
        value = draw(st.one_of(st.text(min_size=1, max_size=8), st.integers(),
                               st.lists(st.one_of(st.integers(), st.text(), st.lists(st.integers())),
                                        min_size=1, max_size=3),
                               st.just([{1: "a", "phrase": "x", "tone": "Joy"}]),
                               st.just([{None: "a", "phrase": "x", "tone": "Joy"}])))
    else:
        value = draw(st.one_of(wrong_shapes, st.booleans(), st.just(math.nan), st.just(math.inf)))
    return Break(f"{name}: {type(value).__name__}", set={name: value})


def _not_layer_text(text: str) -> bool:
    """Not layer numbers and ranges (such as '15-29, 31') nor empty (which clears the field)."""
    parts = text.split(",")
    return bool(text.strip()) and not all(re.fullmatch(r"[0-9]{1,4} *(- *[0-9]{1,4})?", p.strip()) and
                                          (len(p.split("-")) == 1 or int(p.split("-")[0]) <= int(p.split("-")[1]))
                                          for p in parts)


@st.composite
def unknown_keys(draw: st.DrawFn) -> Break:
    if draw(st.booleans()):
        key = draw(identifiers.filter(lambda k: k not in FIELD_NAMES))
    else:  # a misspelt field: one character dropped, doubled, swapped or changed
        name = draw(st.sampled_from(FIELD_NAMES))
        i = draw(st.integers(0, len(name) - 1))
        edit = draw(st.sampled_from(["drop", "double", "swap", "change"]))
        letter = draw(st.sampled_from(string.ascii_lowercase))
        key = {"drop": name[:i] + name[i + 1:], "double": name[:i] + name[i] + name[i:],
               "swap": name[:i] + name[i + 1:i + 2] + name[i:i + 1] + name[i + 2:],
               "change": name[:i] + letter + name[i + 1:]}[edit]
        assume(key and key not in FIELD_NAMES)
    return Break(f"unknown key {key!r}", set={key: draw(st.one_of(st.integers(0, 99), identifiers))},
                 as_options=key.isidentifier() and not key.startswith("_"))


@st.composite
def bad_choices(draw: st.DrawFn) -> Break:
    name = draw(st.sampled_from(sorted(CHOICES)))
    value = draw(st.one_of(identifiers, st.sampled_from([c.upper() for c in CHOICES[name]]),
                           st.sampled_from([c + "x" for c in CHOICES[name]]), st.just(" ")))
    assume(value not in CHOICES[name])
    return Break(f"{name}={value!r}", set={name: value}, as_options=bool(value.strip()))


def template_is_bad(template: str, option: str) -> bool:
    """The spec: plain {column} placeholders naming phrase or tone only; an answer or text template names one."""
    if "\0" in template or not template:
        return True
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return True
    names = [name for _, name, _, _ in parsed if name is not None]
    if any(spec or conv for _, name, spec, conv in parsed if name is not None):
        return True
    if any(name not in COLUMNS for name in names):
        return True
    return not names and option in ("response_template", "text_template")


@st.composite
def bad_templates(draw: st.DrawFn) -> Break:
    option = draw(st.sampled_from(["prompt_template", "response_template", "text_template"]))
    value = draw(st.one_of(
        st.sampled_from(["{phrase", "phrase}", "{phrase.upper}", "{phrase[0]}", "{phrase!r}", "{phrase:>9}", "{}",
                         "{0}", "{ phrase }", "{{}}", "{{phrase}}", "}{", "{phrase}}", "{{tone}", "a\0{tone}"]),
        identifiers.filter(lambda n: n not in COLUMNS).map(lambda n: f"Q: {{{n}}}"),
        st.text(alphabet="{}ab :!.[]0phrasetone", min_size=1, max_size=16)))
    assume(template_is_bad(value, option))
    if option == "text_template":
        return Break(f"text_template={value!r}", set={option: value},
                     remove=("prompt_template", "response_template"), as_options=True)
    return Break(f"{option}={value!r}", set={option: value}, as_options="\0" not in value)


@st.composite
def bad_names_and_splits(draw: st.DrawFn) -> Break:
    option = draw(st.sampled_from(["name", "train_split", "eval_split"]))
    if option == "name":
        value = draw(st.one_of(
            st.text(min_size=1, max_size=20).filter(lambda t: not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", t)),
            st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True).map(lambda t: t + "\n"),
            st.integers(101, 300).map(lambda n: "a" * n), st.sampled_from([".hidden", "-x", "_x", "a/b", "..", " "])))
    else:
        value = draw(st.one_of(
            identifiers.filter(lambda n: n != "train"),
            st.sampled_from(["train[", "train[:x]", "train[::2]", "train[1:2]+", "train(1)", "train[:0]",
                             "train[48:]", "train[:0%]", "train[100%:]", "[train]", "train[:200%]", " "])))
    assume(value.strip() != "")  # an empty name or split means its default, which is valid
    return Break(f"{option}={value!r:.60}", set={option: value}, as_options="\0" not in value)


@st.composite
def bad_cells(draw: st.DrawFn) -> Break:
    rows = [{"phrase": f"sample phrase number {i}", "tone": "Joy"} for i in range(48)]
    index = draw(st.integers(0, 47))
    column = draw(st.sampled_from(COLUMNS))
    value = draw(st.sampled_from([None, ["Joy", 1], {"a": 1}, b"x", True, False, math.nan, math.inf, 10**4000,
                                  "J\0y", "\ud800", "missing"]))
    if value == "missing":
        del rows[index][column]
    else:
        rows[index][column] = value
    return Break(f"rows[{index}][{column}]={value!r:.40}", set={"rows": rows})


combinations = st.sampled_from([
    Break("two data sources", set={"data_name": "tones"}),
    Break("text and prompt templates", set={"text_template": "{phrase} -> {tone}"}),
    Break("prompt without response", remove=("response_template",)),
    Break("response without prompt", remove=("prompt_template",)),
    Break("chat template with a text template", set={"use_chat_template": True, "text_template": "{phrase} {tone}"},
          remove=("prompt_template", "response_template")),
    Break("a system prompt without the chat template", set={"system_prompt": "Be brief."}),
    Break("layers for full fine-tuning", set={"method": "full", "layers_to_transform": "0-1"}),
    Break("a layer the model lacks", set={"layers_to_transform": "1-9"}),
    Break("an int4 base for qlora", set={"method": "qlora", "base_weights": "int4"}),
    Break("an int4 base for full fine-tuning", set={"method": "full", "base_weights": "int4"}),
    Break("no data", remove=("rows",)),
    Break("no rows", set={"rows": []}),
    Break("no templates", remove=("prompt_template", "response_template")),
    Break("all rows held out", set={"eval_size": 0.999}),
    Break("a list as the config", whole=[{"max_steps": 5}]),
    Break("a number as the config", whole=42),
    Break("a missing data file", set={"data_files": "nowhere.json"}, remove=("rows",)),
    Break("a missing dataset", set={"data_name": "no-such-dataset"}, remove=("rows",)),
    Break("an unreachable home", set={"data_files": "~nobody-here/x.json"}, remove=("rows",)),
    Break("a file name too long", set={"data_files": "x" * 5000 + ".json"}, remove=("rows",)),
    Break("a NUL in a path", set={"data_files": "a\0b.json"}, remove=("rows",)),
    Break("a NUL in the model", set={"model_name_or_path": "tiny\0llama"}),
    Break("a lone surrogate in a template", set={"prompt_template": "\ud800{phrase}"}),
])

@st.composite
def bad_training_args(draw: st.DrawFn) -> Break:
    """Not a mapping; a field or an argument slmnb sets itself; a name TrainingArguments lacks; a bad value."""
    value = draw(st.one_of(
        st.integers(), st.text(min_size=1, max_size=8), st.lists(st.integers(), min_size=1, max_size=2),
        st.sampled_from(["learning_rate", "max_steps", "output_dir", "report_to", "bf16", "batch_size"]).map(
            lambda k: {k: 1}),
        st.sampled_from(["max_grad_norn", "lr", "epochs", "adam_beta", "warmup"]).map(lambda k: {k: 1}),
        st.sampled_from([{"max_grad_norm": "big"}, {"adam_beta2": {"a": 1}}, {"optim": "adamw_nope"}, {"1x": 2},
                         {"max_grad_norm": [1, {}]}, {"save_total_limit": "a\0b"}])))
    return Break(f"training_args={value!r:.60}", set={"training_args": value})


bad_configs = st.one_of(bad_numbers(), bad_types(), unknown_keys(), bad_choices(), bad_templates(),
                        bad_names_and_splits(), bad_cells(), bad_training_args(), combinations)


# --- feeding the three front ends -----------------------------------------------------------------------


def check_sentence(message: str, where: str) -> None:
    assert message, f"{where}: an empty message"
    assert "\n" not in message, f"{where}: more than one line: {message!r}"
    assert len(message) <= MAX_MESSAGE, f"{where}: longer than a sentence ({len(message)} chars): {message!r}"
    assert message.rstrip().endswith((".", "?")), f"{where}: not a sentence: {message!r}"
    leaked = [marker for marker in INTERNAL if marker in message]
    assert not leaked, f"{where}: internal exception text {leaked} in {message!r}"


class SideEffects:
    """Nothing may start a thread or leave a run folder behind when it refuses the input."""

    def __init__(self) -> None:
        self.threads = set(threading.enumerate())

    def check(self, where: str) -> None:
        started = [t for t in set(threading.enumerate()) - self.threads if t.is_alive()]
        assert not started, f"{where}: a refused input started threads {started}"
        runs = Path("runs")
        left = sorted(runs.iterdir()) if runs.exists() else []
        assert not left, f"{where}: a refused input left {len(left)} run folders, such as {left[:3]}"


def stop_and_fail(run: Any, where: str, what: str) -> None:
    run.stop()
    run.wait(timeout=RUN_TIMEOUT)
    shutil.rmtree("runs", ignore_errors=True)  # so the shrunk cases that follow start clean
    pytest.fail(f"{where} accepted a bad input and started a run: {what}")


def through_api(config: Any, what: str) -> None:
    effects = SideEffects()
    try:
        run = slmnb.finetune(config)
    except SlmnbError as exc:
        check_sentence(str(exc), f"API ({what})")
        effects.check(f"API ({what})")
        return
    stop_and_fail(run, "slmnb.finetune()", what)


def through_cli(argv: list[str], what: str) -> None:
    from slmnb.cli import main

    effects = SideEffects()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: Any = main(argv)
        except SystemExit as exc:
            code = exc.code
    text = err.getvalue() + out.getvalue()
    # A likely mistake is warned about before the checks that refuse the config (eval_size 0.999 holding out
    # every row, say): the warnings come first, then the one error line.
    said = [line for line in err.getvalue().splitlines() if line.strip()]
    warnings = [line for line in said if line.startswith("warning: ")]
    lines = said[len(warnings):]
    assert said[:len(warnings)] == warnings, f"CLI ({what}) printed a warning after other lines:\n{said}"
    for warning in warnings:
        check_sentence(warning.removeprefix("warning: "), f"CLI warning ({what})")
    assert code not in (0, None), f"CLI accepted a bad input ({what}): {argv!r:.300}"
    assert "Traceback" not in text, f"CLI printed a traceback ({what}):\n{text}"
    assert len(lines) == 1 and lines[0].startswith("error: "), \
        f"CLI ({what}) must print one 'error: ...' line, printed:\n{text[-2000:]}"
    check_sentence(lines[0].removeprefix("error: "), f"CLI ({what})")
    effects.check(f"CLI ({what})")


def through_magic(ip: Any, line: str, body: str, what: str) -> None:
    from IPython.core.error import UsageError

    effects = SideEffects()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            run = ip.run_cell_magic("finetune", line, body)
        except UsageError as exc:
            check_sentence(str(exc), f"%%finetune ({what})")
            effects.check(f"%%finetune ({what})")
            return
    if run is not None and hasattr(run, "stop"):
        stop_and_fail(run, "%%finetune", what)
    pytest.fail(f"%%finetune accepted a bad input ({what}) and returned {run!r:.200}; printed {out.getvalue()!r:.500}")


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module", autouse=True)
def tiny_model_built() -> None:
    """The tiny model exists before the first case. A model's first use is built in the training thread (the
    embedded one converts for 30 s), and the checks against its layers (lora_r, target_modules, layers_to_transform)
    follow it there by design; after that they answer before anything starts, which is what the cases test."""
    from slmnb.models import model_folder

    model_folder("tiny-llama")


def body_of(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, allow_unicode=False, width=1 << 20)


# --- the properties -------------------------------------------------------------------------------------


def test_the_spec_here_names_every_config_field() -> None:
    """A new field needs its bad values described here, or this suite would never try them."""
    from dataclasses import fields

    from slmnb.config import FinetuneConfig

    assert sorted(FIELD_NAMES) == sorted(f.name for f in fields(FinetuneConfig))


@settings(PROFILE, max_examples=550)
@given(broken=bad_configs, via_options=st.booleans())
def test_bad_configs_give_one_sentence_everywhere(ip, here: Path, tiny: dict, broken: Break,
                                                  via_options: bool) -> None:
    through_api(broken.apply(tiny), broken.what)
    config_file = here / "job.yaml"
    if via_options and broken.as_options:  # the bad value on the command line, on top of a good config
        config_file.write_text(body_of(tiny))
        through_cli(["finetune", str(config_file), *broken.options()], broken.what)
    else:
        config_file.write_text(broken.yaml(tiny), encoding="utf-8")
        through_cli(["finetune", str(config_file)], broken.what)
    line = shlex.join(broken.options())
    # IPython expands {expression} and $name in a magic's line, so such values go in the body there.
    if via_options and broken.as_options and not re.search(r"[{}$]", line):
        through_magic(ip, line, body_of(tiny), broken.what)
    else:
        through_magic(ip, "", broken.yaml(tiny), broken.what)


def _rows_text(rows: list[dict[str, Any]], suffix: str) -> bytes:
    if suffix == ".json":
        return json.dumps(rows, ensure_ascii=False).encode()
    if suffix == ".jsonl":
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    lines = ["phrase,tone"] + [f"{row.get('phrase', '')},{row.get('tone', '')}" for row in rows]
    return "\n".join(lines).encode()


@st.composite
def bad_data_files(draw: st.DrawFn) -> tuple[str, bytes, str]:
    suffix = draw(st.sampled_from([".json", ".jsonl", ".csv", ".parquet"]))
    good = [{"phrase": f"sample phrase number {i}", "tone": "Joy"} for i in range(12)]
    kind = draw(st.sampled_from(["garbage", "latin-1", "utf-16", "not rows", "bad cell", "truncated", "deep"]))
    if kind == "garbage" or (suffix == ".parquet" and kind not in ("truncated", "bad cell")):
        data = draw(st.binary(min_size=0, max_size=300))
        assume(b"phrase" not in data)
        return suffix, data, "garbage bytes"
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        if kind == "bad cell":
            broken = draw(st.integers(0, 11))
            rows = [{**row, "tone": None} if i == broken else row for i, row in enumerate(good)]
            if draw(st.booleans()):
                rows = [{**row, "tone": [row["tone"]]} for row in good]
            pq.write_table(pa.Table.from_pylist(rows), sink)
            return suffix, sink.getvalue(), "a Parquet file with a null or list cell"
        pq.write_table(pa.Table.from_pylist(good), sink)
        data = sink.getvalue()
        return suffix, data[: draw(st.integers(0, len(data) - 1))], "a truncated Parquet file"
    if kind in ("latin-1", "utf-16"):
        rows = [{**row, "phrase": row["phrase"] + " café"} for row in good]
        return suffix, _rows_text(rows, suffix).decode().encode(kind), f"{kind} text"
    if kind == "not rows" and suffix != ".csv":
        value = draw(st.one_of(st.integers(), st.text(max_size=5), st.lists(st.integers(), min_size=1, max_size=3),
                               st.just([[1, 2]]), st.just({"rows": good}), st.just([good[0], "x"])))
        text = json.dumps(value) if suffix == ".json" else json.dumps(value) + "\n" + json.dumps(value)
        return suffix, text.encode(), "JSON that is not a list of objects"
    if kind == "deep" and suffix != ".csv":
        depth = draw(st.sampled_from([2000, 100_000]))
        return suffix, ("[" * depth + "]" * depth).encode(), "JSON nested too deeply"
    if kind == "truncated" and suffix != ".csv":
        data = _rows_text(good, suffix)
        cut = draw(st.integers(1, len(data) - 3))
        assume(not data[:cut].rstrip().endswith((b"}", b"]")))
        return suffix, data[:cut], "truncated JSON"
    index = draw(st.integers(0, 11))
    column = draw(st.sampled_from(COLUMNS))
    if suffix == ".csv":  # a short line leaves a column without a value, a long one has a field too many
        lines = _rows_text(good, suffix).decode().split("\n")
        lines[index + 1] = draw(st.sampled_from([f"sample {index}", f"sample {index},Joy,extra"]))
        return suffix, "\n".join(lines).encode(), "a CSV row with too few or too many fields"
    value = draw(st.sampled_from([None, ["Joy", 1], {"a": 1}, True, "missing", float("nan"), "J\u0000y"]))
    rows = copy.deepcopy(good)
    if value == "missing":
        del rows[index][column]
    else:
        rows[index][column] = value
    return suffix, _rows_text(rows, suffix), f"a row whose {column} is {value!r}"


@settings(PROFILE, max_examples=200)
@given(case=bad_data_files())
def test_bad_data_files_give_one_sentence_everywhere(ip, here: Path, tiny: dict, case: tuple[str, bytes, str]) -> None:
    suffix, data, what = case
    Path(f"data{suffix}").write_bytes(data)
    config = {k: v for k, v in tiny.items() if k != "rows"} | {"data_files": f"data{suffix}"}
    through_api(config, what)
    Path("job.yaml").write_text(body_of(config))
    through_cli(["finetune", "job.yaml"], what)
    through_magic(ip, "", body_of(config), what)


bad_lines = st.one_of(
    st.sampled_from(["--name 'unclosed", '--prompt_template "{phrase}', "-o", "-o 1run", "-o class", "-o 'a b'",
                     "-o run-1", "--lora_r", "--max_steps", "-m", "--name", "--lora_r=", "--lora_r ''",
                     "--learning_rate ' '", "--lora_rank 8", "--lerning_rate 1e-3", "--dry-run=yes", "--wait=1",
                     "--form=x", "stray", "--lora_r 8 extra", "-5", "--use_chat_template maybe", "--max_steps -3",
                     "--method=lorra", "--seed 4294967296", "--lora_r 1e400", "--num_train_epochs 0",
                     "--max_steps 10 --max_steps", "---", "--=5", "--name a\\ b"]),
    identifiers.filter(lambda n: n not in FIELD_NAMES and n not in ("help", "form", "wait", "dry_run")).map(
        lambda n: f"--{n} 1"),
    st.text(alphabet="'\" ab", min_size=1, max_size=8).filter(lambda t: t.count("'") % 2 or t.count('"') % 2),
)


@settings(PROFILE, max_examples=150)
@given(line=bad_lines)
def test_bad_magic_lines_give_one_sentence(ip, here: Path, tiny: dict, line: str) -> None:
    through_magic(ip, line, body_of(tiny), f"line {line!r}")


def _is_stray(arg: str) -> bool:
    """An argument no finetune option takes (no option starts with a, b or z): a lone `--` is not one."""
    return bool(arg.strip("-")) if arg.startswith("--") else bool(arg.strip())


bad_argv = st.one_of(
    st.sampled_from([
        [], ["bogus"], ["finetune", "--name"], ["finetune", "--lora_r", "x"], ["finetune", "--lora_r="],
        ["finetune", "--lora_rank", "8"], ["finetune", "job.yaml", "job.yaml"], ["finetune", "missing.yaml"],
        ["finetune", "job.txt"], ["finetune", "folder"], ["finetune", "latin.yaml"], ["finetune", "list.yaml"],
        ["finetune", "--resume"], ["finetune", "job.yaml", "--use_chat_template", "maybe"], ["export"],
        ["export", "no-such-run"], ["export", "r", "--precision", "int3"], ["compare"],
        ["compare", "no-such-run"], ["compare", "r", "--max_new_tokens", "x"], ["finetune", "--seed", "-1"],
        ["eval"], ["eval", "no-such-run"], ["eval", "r", "--max_new_tokens", "x"], ["eval", "r", "--split"],
        ["eval", "r", "--metrics", "accuracy", "stray"],
    ]),
    st.lists(st.text(alphabet="-abz=1 ", min_size=1, max_size=6), min_size=1, max_size=4).filter(
        lambda args: any(_is_stray(arg) for arg in args)).map(lambda args: ["finetune", "job.yaml", *args]),
)


@settings(PROFILE, max_examples=150)
@given(argv=bad_argv)
def test_bad_cli_arguments_give_one_error_line(here: Path, tiny: dict, argv: list[str]) -> None:
    Path("job.yaml").write_text(body_of(tiny))
    Path("job.txt").write_text("these are notes, not a config\n")
    Path("folder").mkdir(exist_ok=True)
    Path("latin.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    Path("list.yaml").write_text("- max_steps: 5\n")
    through_cli(argv, f"argv {argv!r}")


# --- likely mistakes: warned, never refused -------------------------------------------------------------


def test_the_cli_warns_about_likely_mistakes_before_anything_else(here: Path, capsys) -> None:
    """YAML once took `learning_rate: 5` without a word; the warning now comes before the data is even read."""
    from slmnb.cli import ProgressBar, main
    from slmnb.training import events as ev

    (here / "job.yaml").write_text("data_files: nowhere.json\nlearning_rate: 5\nlora_dropout: 0.7\n")
    assert main(["finetune", "job.yaml"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" ", 2)[:2] for line in lines] == [["warning:", "learning_rate"], ["warning:", "lora_dropout"],
                                                         ["error:", "Data"]], lines
    # A warning the run repeats among its notes is not said twice.
    bar = ProgressBar(io.StringIO())
    bar.warn("learning_rate 5 is far above what LoRA uses.")
    bar(ev.Started(name="x", step=0, elapsed=0.0, max_steps=1, precision="fp32", output_dir="x", dropped_rows=0,
                   notes=("learning_rate 5 is far above what LoRA uses.", "another note.")))
    assert bar.stream.getvalue().count("far above") == 1 and "note: another note." in bar.stream.getvalue()
