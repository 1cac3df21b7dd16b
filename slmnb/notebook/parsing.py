"""The %%finetune line: every FinetuneConfig field as an `olive finetune` style option, plus the magic's own.

Parsing is kept apart from running, so what a line means can be tested without a kernel or a model.
"""

from __future__ import annotations

import argparse
import keyword
import shlex
from dataclasses import dataclass, field
from typing import Any

from slmnb.checks import short_repr
from slmnb.errors import ConfigError
from slmnb.olive.flags import add_finetune_flags, finetune_overrides, olive_command, olive_tokens, split_training_args
from slmnb.options import FIELD_NAMES, OptionParser, add_config_options, refuse_unknown

SUBCOMMANDS = ("runs", "stop", "pause", "resume", "show", "eval", "olive-config")


@dataclass(frozen=True)
class CellArgs:
    overrides: dict[str, Any] = field(default_factory=dict)  # config fields given on the line, as text
    dry_run: bool = False
    wait: bool = False
    var: str | None = None
    form: bool = False
    help: bool = False
    search: str | None = None  # a YAML/JSON file with search_strategy / search_space / objective
    save_config_file: bool = False  # Olive's --save_config_file: write the config that would run
    notes: tuple[str, ...] = ()  # Olive flags accepted that change nothing here, each with its sentence


def build_parser(olive: bool = False) -> OptionParser:
    """The magic line's options; olive=True: a pasted `olive finetune` line, where -o is Olive's --output_path."""
    parser = OptionParser(prog="%%finetune", add_help=False, argument_default=argparse.SUPPRESS,
                          description="Fine-tune in the background: the cell body is a YAML or JSON FinetuneConfig "
                                      "and these options override it.")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="Show the resolved config and a preview of the rendered rows; train nothing.")
    parser.add_argument("--wait", action="store_true", help="Block until the run ends (for headless execution).")
    if not olive:
        parser.add_argument("-o", dest="var", metavar="VAR", help="Also store the TrainingRun in this variable.")
    parser.add_argument("--form", action="store_true", help="Open the config form, filled with this config.")
    parser.add_argument("--search", metavar="FILE",
                        help="Search hyperparameters with the search_strategy / search_space / objective of this YAML "
                             "or JSON file (the body may hold them too); the body's fields are fixed for every trial.")
    parser.add_argument("-h", "--help", action="store_true", help="Show this help.")
    add_config_options(parser, {"model_name_or_path": "-m", "data_name": "-d"})
    add_finetune_flags(parser, output_short=olive)
    return parser


def split_line(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:  # an unclosed quote
        raise ConfigError(f"The magic line cannot be read ({exc}): close the quotes around values with spaces.") \
            from None


def parse_cell_line(line: str | list[str], olive: bool = False) -> CellArgs:
    """The line's options; a line that starts with `olive finetune` (or `!olive finetune`) is read as Olive's."""
    tokens = split_line(line) if isinstance(line, str) else list(line)
    if tokens[:2] in (["olive", "finetune"], ["!olive", "finetune"]):
        tokens, olive = tokens[2:], True
    parser = build_parser(olive)
    tokens, training_args = split_training_args(tokens, parser, FIELD_NAMES)
    parsed, unknown = parser.parse_known_args(tokens)
    refuse_unknown(unknown)
    values = vars(parsed)
    own = {name: values.pop(name) for name in ("dry_run", "wait", "var", "form", "help", "search",
                                                "save_config_file") if name in values}
    var = own.get("var")
    if var is not None and (not str(var).isidentifier() or keyword.iskeyword(str(var))):
        raise ConfigError(f"-o takes a Python variable name such as run, got {short_repr(var)}.")
    overrides, notes = finetune_overrides(values)
    if training_args:
        overrides["training_args"] = training_args
    return CellArgs(overrides=overrides, notes=tuple(notes), **own)


def parse_cell(tokens: list[str], body: str) -> tuple[CellArgs, str]:
    """The line's options and the body that is left: a body that is a pasted `olive finetune ...` shell line is
    read as its flags (the line's options win), and leaves no YAML body."""
    args = parse_cell_line(tokens)
    if olive_command(body) != "finetune":
        return args, body
    pasted = parse_cell_line(olive_tokens(body), olive=True)
    overrides = {**pasted.overrides, **args.overrides}
    if "training_args" in pasted.overrides and "training_args" in args.overrides:
        overrides["training_args"] = {**pasted.overrides["training_args"], **args.overrides["training_args"]}
    merged = CellArgs(overrides=overrides, dry_run=args.dry_run or pasted.dry_run, wait=args.wait or pasted.wait,
                      var=args.var, form=args.form or pasted.form, help=args.help or pasted.help,
                      search=args.search or pasted.search,
                      save_config_file=args.save_config_file or pasted.save_config_file,
                      notes=tuple(dict.fromkeys(pasted.notes + args.notes)))
    return merged, ""


def help_text() -> str:
    subcommands = ("\nLine magic:\n"
                   "  %finetune runs              the runs in the runs folder\n"
                   "  %finetune stop|pause [NAME] the active run, or the named one\n"
                   "  %finetune resume NAME [--max_steps N ...]  continue a paused or ended run, with its dashboard\n"
                   "  %finetune resume SEARCH [--num_trials N] [--max_time S]  continue a search (after a restart,\n"
                   "                              a stop, or with more trials), with its view\n"
                   "  %finetune show NAME         the dashboard of a running or finished run, or a search's view\n"
                   "  %finetune eval NAME [--split S] [--metrics m1,m2] [--base] [--max_new_tokens N] [--wrong N]\n"
                   "                              a split answered and scored: metrics (beside the base model's\n"
                   "                              with --base), confusion matrix, the rows it gets wrong\n"
                   "  %finetune olive-config NAME [-o FILE] [--precision P] [--adapters A] [--no_export]\n"
                   "                              an Olive run config that reproduces the run and its export\n"
                   "  %finetune --form            the config form\n")
    return build_parser().format_help() + subcommands
