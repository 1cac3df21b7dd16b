"""Training data: pick the splits of what slmnb.datafiles reads, check the cells, render templates and tokenize.

Rows are plain dicts from start to end: they are small, and a list of dicts is what people can inspect.
Templates only substitute `{column}`; attribute and index access are refused, so a template cannot run code.
"""

from __future__ import annotations

import decimal
import math
import numbers
import random
import statistics
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from slmnb.checks import TEMPLATES, kind_of, short_repr, template_columns
from slmnb.config import FinetuneConfig
from slmnb.datafiles import Rows, bundled_datasets, bundled_defaults, read_splits
from slmnb.errors import ConfigError


def with_default_templates(config: FinetuneConfig) -> FinetuneConfig:
    """A bundled dataset brings its own templates, so `data_name: tones` alone is a working config."""
    fields = default_templates(config)
    return config.replace(**fields) if fields else config


def default_templates(config: FinetuneConfig) -> dict[str, str]:
    """The templates a bundled dataset fills in when the config gives none (else nothing)."""
    if config.text_template or config.prompt_template or config.data_name not in bundled_datasets():
        return {}
    defaults = bundled_defaults(config.data_name)
    return {"prompt_template": defaults["prompt_template"], "response_template": defaults["response_template"]}


# --- splits -------------------------------------------------------------------------------------------


@dataclass
class Data:
    train: Rows
    eval: Rows
    columns: list[str]


def load_data(config: FinetuneConfig) -> Data:
    """The train and eval rows of a config, checked: non-empty, every template placeholder is a column, and every
    value a template uses is text or a number in every row, so training never sees 'None' or "['Joy', 1]"."""
    splits = read_splits(config)
    train = select_split(splits, config.train_split, "train_split")
    if not train:
        raise ConfigError(f"The training data has no rows (train_split {short_repr(config.train_split)}): check the "
                          "data source and the split.")
    columns = list(dict.fromkeys(key for row in train for key in row))
    templated = with_default_templates(config)
    check_templates(templated, columns)
    used = used_columns(templated)
    check_cells(train, used, f"train_split {short_repr(config.train_split)}")
    if config.eval_split:
        eval_rows = select_split(splits, config.eval_split, "eval_split")
        if not eval_rows:
            raise ConfigError(f"eval_split {short_repr(config.eval_split)} has no rows: pick a larger slice or "
                              "another split.")
        check_cells(eval_rows, used, f"eval_split {short_repr(config.eval_split)}")
    elif config.eval_size > 0 and len(train) >= 2:
        order = list(range(len(train)))
        random.Random(config.seed).shuffle(order)
        held = set(order[: max(1, round(len(train) * config.eval_size))])
        eval_rows = [row for i, row in enumerate(train) if i in held]
        train = [row for i, row in enumerate(train) if i not in held]
    else:
        eval_rows = []
    if config.max_samples:
        train = train[: config.max_samples]
    if not train:
        raise ConfigError(f"The training data has no rows left after holding out eval_size {config.eval_size:g} "
                          "for evaluation: lower eval_size or add rows.")
    return Data(train=train, eval=eval_rows, columns=columns)


def select_split(splits: dict[str, Rows], spec: str, option: str) -> Rows:
    """Rows of a split in datasets' slice syntax: train, train[:90%], train[10:20]+test."""
    from datasets import ReadInstruction

    try:
        parts = ReadInstruction.from_spec(spec).to_absolute({name: len(rows) for name, rows in splits.items()})
    except (ValueError, AssertionError, KeyError, TypeError, IndexError, OverflowError) as exc:
        if "Unknown split" in str(exc):
            raise ConfigError(f"{option} {short_repr(spec)} names no split of the data: the splits are "
                              f"{', '.join(splits)}.") from None
        raise ConfigError(f"{option} {short_repr(spec)} is not a split or slice such as 'train' or "
                          "'train[:90%]'.") from None
    return [row for part in parts for row in splits[part.splitname][part.from_:part.to]]


# --- templates ----------------------------------------------------------------------------------------


def used_columns(config: FinetuneConfig) -> list[str]:
    """Every column some template of the config shows."""
    names = [name for option in TEMPLATES if getattr(config, option)
             for name in template_columns(getattr(config, option), option)]
    return list(dict.fromkeys(names))


def check_templates(config: FinetuneConfig, columns: list[str]) -> None:
    if not any(getattr(config, option) for option in TEMPLATES):
        raise ConfigError("Give a text_template, or a prompt_template and response_template, using the columns: "
                          f"{', '.join(columns)}.")
    for option in TEMPLATES:
        template = getattr(config, option)
        for name in template_columns(template, option) if template else []:
            if name not in columns and not columns:
                raise ConfigError(f"{option} uses {{{name}}}, and the rows have no columns at all: give rows such "
                                  "as {'phrase': 'hi', 'tone': 'Joy'}.")
            if name not in columns:
                raise ConfigError(f"{option} uses {{{name}}}, which is not a column: the columns are "
                                  f"{', '.join(columns)}.")


def cell_problem(value: Any) -> str | None:
    """Why a value cannot stand in a template, in a user's words; None when it renders as text."""
    if isinstance(value, str):
        if "\0" in value:  # binary data read as text, not something to train on
            return "text with a NUL character (\\x00)"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "text with a lone surrogate (an invalid \\ud800-\\udfff escape)"
        return None
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "no value"  # pandas and Parquet write a missing value as NaN or null
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, numbers.Integral):
        return None if int(value).bit_length() < 10000 else "a number with thousands of digits"
    if isinstance(value, decimal.Decimal):
        return None if value.is_finite() else "no value"
    if isinstance(value, numbers.Real):
        return None
    return kind_of(value)


def cell_text(value: Any) -> str:
    """A value as a template shows it: text as is, a number written out (cell_problem has refused the rest)."""
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return str(int(value))
    return str(value)


def check_cells(rows: Rows, columns: list[str], where: str) -> None:
    """Refuse, naming the row, a row that lacks a value a template shows, or holds one that is not text or a number."""
    for number, row in enumerate(rows, 1):
        for column in columns:
            problem = cell_problem(row[column]) if column in row else "no value"
            if problem == "no value":
                raise ConfigError(f"Row {number} of {where} has no value in column {short_repr(column)}: fill it in "
                                  "or remove the row.")
            if problem:
                raise ConfigError(f"Row {number} of {where} has {problem} in column {short_repr(column)}, which a "
                                  "template needs as text: write it as text or remove the row.")


def _value(row: dict[str, Any], name: str, option: str) -> str:
    problem = cell_problem(row[name])
    if problem:
        raise ConfigError(f"{option} uses {{{name}}}, which holds {problem} in this row: give it text or a number.")
    return cell_text(row[name])


def render(template: str, row: dict[str, Any], option: str = "template") -> str:
    """Substitute {column} values; only names are looked up, never attributes or indexes."""
    out = []
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is not None:
            if name not in row:
                raise ConfigError(f"{option} uses {{{name}}}, which this row lacks: the row has "
                                  f"{', '.join(map(str, row))}.")
            out.append(_value(row, name, option))
    return "".join(out)


def prompt_of(template: str, row: dict[str, Any]) -> str:
    """The text template up to its first placeholder the row lacks: the prompt to complete at prediction time."""
    out = []
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is None:
            continue
        if name not in row:
            break
        out.append(_value(row, name, "text_template"))
    return "".join(out)


# --- tokens -------------------------------------------------------------------------------------------


def prompt_ids(config: FinetuneConfig, tokenizer: Any, row: dict[str, Any] | str,
               examples: Sequence[dict[str, Any]] = ()) -> list[int]:
    """Token ids of the prompt for one row, exactly as training saw them before the response.

    A plain string fills the prompt's one column (with several columns it is the whole prompt, as is).
    `examples` are solved rows put before it, as earlier turns of the chat: a few-shot prompt.
    """
    if isinstance(row, str):
        template = config.prompt_template or config.text_template or ""
        names = list(dict.fromkeys(n for _, n, _, _ in string.Formatter().parse(template) if n))
        if config.text_template:
            names = names[:1]  # the rest of a text template is what the model should write
        if len(names) != 1:
            return tokenizer(row)["input_ids"]
        row = {names[0]: row}
    if config.text_template:
        shots = "".join(render(config.text_template, example, "text_template") + "\n\n" for example in examples)
        return tokenizer(shots + prompt_of(config.text_template, row))["input_ids"]
    turns = [(render(config.prompt_template or "", example, "prompt_template"),
              render(config.response_template or "", example, "response_template")) for example in examples]
    prompt = render(config.prompt_template or "", row, "prompt_template")
    if config.use_chat_template:
        messages = [*system_message(config), *({"role": role, "content": text} for turn in turns
                                               for role, text in zip(("user", "assistant"), turn, strict=True))]
        text = chat_text(tokenizer, [*messages, {"role": "user", "content": prompt}], add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer("".join(p + r + "\n\n" for p, r in turns) + prompt)["input_ids"]


def system_message(config: FinetuneConfig) -> list[dict[str, str]]:
    """The chat's system turn: none when system_prompt is empty, so the template's own default (if any) applies."""
    return [] if config.system_prompt is None else [{"role": "system", "content": config.system_prompt}]


def chat_text(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The chat template's text for these messages; a template that refuses them (some take no system turn) is one
    sentence."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as exc:
        if messages[0]["role"] == "system":
            raise ConfigError(f"This tokenizer's chat template refuses a system message ({exc}): leave "
                              "system_prompt empty, or put the instruction into prompt_template.") from None
        raise ConfigError(f"This tokenizer's chat template cannot render a prompt and its answer ({exc}): set "
                          "use_chat_template: false and write the format into the templates.") from None


def encode(config: FinetuneConfig, tokenizer: Any, row: dict[str, Any]) -> dict[str, list[int]]:
    """input_ids and labels of one row; labels are -100 where no loss is taken (the prompt)."""
    if config.text_template:
        ids = tokenizer(render(config.text_template, row, "text_template"))["input_ids"] + [tokenizer.eos_token_id]
        labels = list(ids)
    else:
        prompt = prompt_ids(config, tokenizer, row)
        response = render(config.response_template or "", row, "response_template")
        if config.use_chat_template:
            user = render(config.prompt_template or "", row, "prompt_template")
            messages = [*system_message(config), {"role": "user", "content": user}]
            full = chat_text(tokenizer, [*messages, {"role": "assistant", "content": response}])
            head = chat_text(tokenizer, messages, add_generation_prompt=True)
            if not full.startswith(head):
                raise ConfigError("This tokenizer's chat template does not start the conversation with the "
                                  "prompt alone: set use_chat_template: false and write the format into the templates.")
            answer = tokenizer(full[len(head):], add_special_tokens=False)["input_ids"]
        else:
            answer = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = prompt + answer
        labels = [-100] * len(prompt) + answer
    ids, labels = ids[: config.max_seq_len], labels[: config.max_seq_len]
    return {"input_ids": ids, "labels": labels}


def encode_rows(config: FinetuneConfig, tokenizer: Any, rows: Rows,
                check: Callable[[], None] | None = None) -> tuple[list[dict[str, list[int]]], int]:
    """Encoded rows, and how many were dropped because truncation left them no response tokens.

    `check` is called every 64 rows and aborts by raising: a stop request then acts within a fraction of a second
    even while tens of thousands of rows are tokenized.
    """
    if config.use_chat_template and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"The tokenizer of {config.model_name_or_path} has no chat template: set "
                          "use_chat_template: false.")
    encoded = []
    for index, row in enumerate(rows):
        if check is not None and index % 64 == 0:
            check()
        encoded.append(encode(config, tokenizer, row))
    kept = [e for e in encoded if any(label != -100 for label in e["labels"])]
    return kept, len(encoded) - len(kept)


# --- preview ------------------------------------------------------------------------------------------


@dataclass
class Preview:
    """What a config would train on: a few rendered rows and the token lengths of all of them."""

    config: FinetuneConfig
    columns: list[str]
    rows: list[dict[str, Any]]
    train_rows: int
    eval_rows: int
    token_stats: dict[str, float]
    truncated: int
    dropped: int

    def __str__(self) -> str:
        s = self.token_stats
        lines = [f"{self.train_rows} train rows, {self.eval_rows} eval rows; columns: {', '.join(self.columns)}",
                 f"tokens per example: min {s['min']:.0f}, median {s['median']:.0f}, mean {s['mean']:.1f}, "
                 f"max {s['max']:.0f}; truncated at {self.config.max_seq_len}: {self.truncated}; "
                 f"dropped (no response left): {self.dropped}"]
        for row in self.rows:
            lines.append(f"--- {row['tokens']} tokens\n{row['prompt']}{row['response']}")
        return "\n".join(lines)


def preview(config: FinetuneConfig | dict[str, Any] | str, n: int = 5) -> Preview:
    from slmnb.config import load_config
    from slmnb.models import load_tokenizer

    config = with_default_templates(load_config(config))
    if config.loss:  # a missing loss file is said by the dry run too, not only when training starts
        from slmnb.training.loss import check

        check(config.loss)
    data = load_data(config)
    tokenizer = load_tokenizer(config.model_name_or_path)
    if config.use_chat_template and not getattr(tokenizer, "chat_template", None):
        encode_rows(config, tokenizer, [])  # raises the one-sentence error
    untruncated = config.replace(max_seq_len=1 << 30)
    full = [encode(untruncated, tokenizer, row) for row in data.train]
    lengths = [min(len(e["input_ids"]), config.max_seq_len) for e in full]
    prompt_lengths = [e["labels"].count(-100) for e in full]
    shown = []
    for row, enc, n_prompt in zip(data.train[:n], full, prompt_lengths, strict=False):
        ids = enc["input_ids"][: config.max_seq_len]
        shown.append({**row, "prompt": tokenizer.decode(ids[:n_prompt]), "response": tokenizer.decode(ids[n_prompt:]),
                      "tokens": len(ids)})
    return Preview(
        config=config, columns=data.columns, rows=shown, train_rows=len(data.train), eval_rows=len(data.eval),
        token_stats={"min": min(lengths), "median": statistics.median(lengths),
                     "mean": statistics.fmean(lengths), "max": max(lengths)},
        truncated=sum(1 for e in full if len(e["input_ids"]) > config.max_seq_len),
        dropped=sum(1 for n_prompt in prompt_lengths if n_prompt >= config.max_seq_len),
    )
