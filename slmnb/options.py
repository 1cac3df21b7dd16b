"""Command-line style options for every FinetuneConfig field, shared by the CLI and the %%finetune magic.

Values stay text: FinetuneConfig turns text into each field's type, so `--learning_rate 1e-3` and
`--use_chat_template` mean the same in a shell, a magic line and a YAML body.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from slmnb.checks import short_repr
from slmnb.config import FinetuneConfig, unknown_key_message
from slmnb.errors import ConfigError

FIELD_NAMES = [f.name for f in fields(FinetuneConfig)]


class OptionParser(argparse.ArgumentParser):
    """An ArgumentParser that raises a ConfigError sentence instead of printing usage and exiting.

    Options must be spelt out: `--max_step 5` is refused with "did you mean max_steps?", as the YAML key would be,
    instead of being taken as an abbreviation.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        message = " ".join(message.split())  # argparse's messages may span lines
        raise ConfigError(f"{message[0].upper()}{message[1:]}: see the options with --help.")


def add_config_options(parser: argparse.ArgumentParser, short: dict[str, str]) -> None:
    """Add `--<field>` for every config field (inline rows excepted: they belong in a config body)."""
    for f in fields(FinetuneConfig):
        kind = f.metadata["kind"]
        text = f.metadata["help"].replace("%", "%%")  # argparse formats help with %: train[:90%] would break it
        if kind in ("rows", "args"):  # a list of mappings, a mapping: they belong in a config body
            continue
        flags = [f"--{f.name}"] + ([short[f.name]] if f.name in short else [])
        if kind == "bool":
            parser.add_argument(*flags, nargs="?", const="true", metavar="true|false", help=text)
        else:
            parser.add_argument(*flags, metavar=kind.upper(), help=text)


def refuse_unknown(unknown: list[str]) -> None:
    """Name the closest field for the first option nobody recognised (`--lora_rank` -> did you mean lora_r?)."""
    if not unknown:
        return
    token = unknown[0]
    option = token.lstrip("-").split("=")[0]
    if not token.startswith("-") or not option or option[0].isdigit() or option.startswith("."):
        raise ConfigError(f"Unexpected {short_repr(token)}: options are written --name value, such as "
                          "--max_steps 60, with quotes around values that contain spaces.")
    raise ConfigError(unknown_key_message(option, FIELD_NAMES))


def add_export_options(parser: argparse.ArgumentParser) -> None:
    """`export RUN` with `olive auto-opt`'s flag names."""
    from slmnb.opt.export import ADAPTER_MODES, PRECISIONS

    # RUN may come as Olive's -m / --adapter_path instead, and Olive's other precisions get their own sentence:
    # slmnb.olive.flags.export_options settles both.
    parser.add_argument("run", metavar="RUN", nargs="?", default=None, help="A run's name or folder.")
    parser.add_argument("--precision", default="int4", metavar="|".join(PRECISIONS),
                        help="Weight precision (default int4: k_quant with an int8 output layer).")
    parser.add_argument("--adapters", default="switchable", choices=ADAPTER_MODES,
                        help="switchable: a shared base model plus a small .onnx_adapter per run (default); "
                             "merged: the LoRA merged into one self-contained model.")
    parser.add_argument("-o", "--output_path", dest="output", default=None, metavar="DIR",
                        help="The exports folder (default ./onnx), or a base model's folder to add the adapter to.")
    parser.add_argument("--device", default="cpu", help="Only cpu is supported.")
    parser.add_argument("--provider", default="CPUExecutionProvider", help="Only CPUExecutionProvider is supported.")


def add_compare_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="Runs to put beside their base model.")
    parser.add_argument("--prompts", metavar="FILE", default=None,
                        help="Prompts: .txt (one per line) or rows in .json/.jsonl/.csv; default: test rows.")
    parser.add_argument("--eval", dest="evaluate", action="store_true",
                        help="Also score every column on the test split, and ONNX against PyTorch.")
    parser.add_argument("--split", default="test",
                        help="The split --eval scores (test); a slice such as test[:16] takes less time.")
    parser.add_argument("--metrics", default=None, metavar="M1,M2",
                        help="Metrics for --eval, separated by commas (default: the run's).")
    parser.add_argument("--max_new_tokens", type=int, default=64, metavar="N", help="Tokens per answer (64).")
    parser.add_argument("--few-shot", "--few_shot", dest="few_shot", type=int, default=0, metavar="K",
                        help="Add the base model prompted with K training rows.")
