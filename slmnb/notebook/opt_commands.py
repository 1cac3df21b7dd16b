"""`%opt SUBCOMMAND`: export, adapters and compare, parsed with the same options as `slmnb export|compare`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from slmnb.errors import ConfigError
from slmnb.options import OptionParser, add_compare_options, add_export_options

USAGE = """%opt export RUN [--precision int4|int8|fp32] [--adapters switchable|merged] [-o DIR] [--wait]
    ONNX for onnxruntime-genai, in the background with its progress; `ex = %opt export RUN` keeps the job
    (ex.wait() gives the Export).
%opt adapters [-o DIR]
    The base models, merged models and adapters in the exports folder (default ./onnx).
%opt compare RUN [RUN ...] [--prompts FILE] [--eval] [--max_new_tokens N] [--few-shot K] [--wait]
    The base model and each run answering the same prompts side by side, streaming; --eval scores every column
    on the test split with the run's metrics (ONNX beside PyTorch) and says how often the ONNX answers agree with
    PyTorch's; --few-shot adds the cost per request and each fine-tune's training, weighed in one
    sentence. `view = %opt compare ...` keeps it (view.wait() gives the Comparison, view.stop() ends the
    generation)."""


def _parser(command: str, add: Callable[[argparse.ArgumentParser], None]) -> OptionParser:
    parser = OptionParser(prog=f"%opt {command}", add_help=False)
    add(parser)
    parser.add_argument("--wait", action="store_true", help="Block until done (for headless execution).")
    return parser


def _parse(command: str, add: Callable[[argparse.ArgumentParser], None], args: list[str]) -> dict[str, Any]:
    parsed, unknown = _parser(command, add).parse_known_args(args)
    if unknown:
        raise ConfigError(f"%opt {command} has no option {unknown[0]}: see %opt --help.")
    return vars(parsed)


def export(args: list[str]) -> Any:
    from slmnb.notebook.opt_views import ExportJob
    from slmnb.opt.export import exportable

    options = _parse("export", add_export_options, args)
    wait = options.pop("wait")
    run = exportable(options.pop("run"), options["precision"], options["adapters"], options["device"],
                     options["provider"], output=options["output"])  # a mistake is an error of this cell, at once
    job = ExportJob(run, options)
    if wait:
        job.wait()
    return job


def adapters(args: list[str]) -> Any:
    from slmnb.notebook.opt_views import ExportsTable
    from slmnb.opt.store import EXPORTS_DIR, list_exports

    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-o", "--output_path", dest="output", default=EXPORTS_DIR, metavar="DIR")

    options = _parse("adapters", add, args)
    return ExportsTable(list_exports(options["output"]), options["output"])


def compare(args: list[str]) -> Any:
    from slmnb.notebook.opt_views import ComparisonView
    from slmnb.opt.compare import check, prepare
    from slmnb.opt.inputs import open_runs

    options = _parse("compare", add_compare_options, args)
    wait, evaluate = options.pop("wait"), options.pop("evaluate")
    # A wrong name, a run still training, a missing test split: an error of this cell at once, and no view.
    plan = check(open_runs(options.pop("runs")), evaluate=evaluate, **options)
    view = ComparisonView(lambda phase: prepare(plan, on_phase=phase), evaluate)
    if wait:
        view.wait()
    return view


ROUTES: dict[str, Callable[[list[str]], Any]] = {"export": export, "adapters": adapters, "compare": compare}
