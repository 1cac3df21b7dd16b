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
from slmnb.options import OptionParser, add_config_options, refuse_unknown

SUBCOMMANDS = ("runs", "stop", "pause", "resume", "show", "eval")


@dataclass(frozen=True)
class CellArgs:
    overrides: dict[str, Any] = field(default_factory=dict)  # config fields given on the line, as text
    dry_run: bool = False
    wait: bool = False
    var: str | None = None
    form: bool = False
    help: bool = False
    search: str | None = None  # a YAML/JSON file with search_strategy / search_space / objective


def build_parser() -> OptionParser:
    parser = OptionParser(prog="%%finetune", add_help=False, argument_default=argparse.SUPPRESS,
                          description="Fine-tune in the background: the cell body is a YAML or JSON FinetuneConfig "
                                      "and these options override it.")
    parser.add_argument("--dry-run", dest="dry_run", action="store_true",
                        help="Show the resolved config and a preview of the rendered rows; train nothing.")
    parser.add_argument("--wait", action="store_true", help="Block until the run ends (for headless execution).")
    parser.add_argument("-o", dest="var", metavar="VAR", help="Also store the TrainingRun in this variable.")
    parser.add_argument("--form", action="store_true", help="Open the config form, filled with this config.")
    parser.add_argument("--search", metavar="FILE",
                        help="Search hyperparameters with the search_strategy / search_space / objective of this YAML "
                             "or JSON file (the body may hold them too); the body's fields are fixed for every trial.")
    parser.add_argument("-h", "--help", action="store_true", help="Show this help.")
    add_config_options(parser, {"model_name_or_path": "-m"})
    return parser


def split_line(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:  # an unclosed quote
        raise ConfigError(f"The magic line cannot be read ({exc}): close the quotes around values with spaces.") \
            from None


def parse_cell_line(line: str | list[str]) -> CellArgs:
    tokens = split_line(line) if isinstance(line, str) else line
    parsed, unknown = build_parser().parse_known_args(tokens)
    refuse_unknown(unknown)
    values = vars(parsed)
    own = {name: values.pop(name) for name in ("dry_run", "wait", "var", "form", "help", "search")
           if name in values}
    var = own.get("var")
    if var is not None and (not str(var).isidentifier() or keyword.iskeyword(str(var))):
        raise ConfigError(f"-o takes a Python variable name such as run, got {short_repr(var)}.")
    return CellArgs(overrides=values, **own)


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
                   "  %finetune --form            the config form\n")
    return build_parser().format_help() + subcommands
