"""Command-line style options for every FinetuneConfig field, shared by the CLI and the %%finetune magic.

Values stay text: FinetuneConfig turns text into each field's type, so `--learning_rate 1e-3` and
`--use_chat_template` mean the same in a shell, a magic line and a YAML body.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from slmnb.config import FinetuneConfig, unknown_key_message
from slmnb.errors import ConfigError

FIELD_NAMES = [f.name for f in fields(FinetuneConfig)]


class OptionParser(argparse.ArgumentParser):
    """An ArgumentParser that raises a ConfigError sentence instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message[0].upper()}{message[1:]}: see the options with --help.")


def add_config_options(parser: argparse.ArgumentParser, short: dict[str, str]) -> None:
    """Add `--<field>` for every config field (inline rows excepted: they belong in a config body)."""
    for f in fields(FinetuneConfig):
        kind = f.metadata["kind"]
        if kind == "rows":
            continue
        flags = [f"--{f.name}"] + ([short[f.name]] if f.name in short else [])
        if kind == "bool":
            parser.add_argument(*flags, nargs="?", const="true", metavar="true|false", help=f.metadata["help"])
        else:
            parser.add_argument(*flags, metavar=kind.upper(), help=f.metadata["help"])


def refuse_unknown(unknown: list[str]) -> None:
    """Name the closest field for the first option nobody recognised (`--lora_rank` -> did you mean lora_r?)."""
    if unknown:
        option = unknown[0].lstrip("-").split("=")[0]
        raise ConfigError(unknown_key_message(option, FIELD_NAMES))
