"""`%opt SUBCOMMAND`: export, adapters and compare, parsed with the same options as `slmnb export|compare`, and
Olive's convert-adapters and generate-adapter (auto-opt and optimize are export by Olive's names)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from slmnb.errors import ConfigError
from slmnb.olive.flags import add_adapter_options, add_export_flags, export_options, refuse_export_flags
from slmnb.options import OptionParser, add_compare_options, add_export_options

USAGE = """%opt export RUN [--precision int4|int8|fp32] [--adapters switchable|merged] [-o DIR] [--wait]
    ONNX for onnxruntime-genai, in the background with its progress; `ex = %opt export RUN` keeps the job
    (ex.wait() gives the Export). Olive's auto-opt / optimize flags work too: -m RUN, --adapter_path
    runs/NAME/adapter, --output_path, --device cpu, --provider CPUExecutionProvider, --use_ort_genai,
    --use_model_builder (`%opt auto-opt ...` is `%opt export ...`).
%opt convert-adapters -a ADAPTER -o OUT
    A peft LoRA folder (any, or a run's) as an .onnx_adapter for a base model exported with switchable adapters;
    OUT is the file, or a base model's folder (the adapter must fit it, and joins its adapters/).
%opt generate-adapter -m ONNX_DIR [-o OUT]
    An ONNX model with the LoRA built in (the model builder given an adapter) split into a base whose LoRA
    weights are inputs and OUT/adapter_weights.onnx_adapter.
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
    if command == "export":
        refuse_export_flags(unknown, "%opt export")  # Olive's flags that cannot apply say why
    if unknown:
        raise ConfigError(f"%opt {command} has no option {unknown[0]}: see %opt --help.")
    return vars(parsed)


def export(args: list[str]) -> Any:
    from slmnb.notebook.opt_views import ExportJob
    from slmnb.opt.export import exportable

    def add(parser: argparse.ArgumentParser) -> None:
        add_export_options(parser)
        add_export_flags(parser)

    options, notes = export_options(_parse("export", add, args))
    for note in notes:
        print(f"note: {note}")
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


def adapter_command(command: str) -> Callable[[list[str]], Any]:
    """Olive's convert-adapters (the .onnx_adapter's path) or generate-adapter (the base's folder and adapter)."""
    def run(args: list[str]) -> Any:
        from slmnb.olive.adapters import adapter_command as olive_command

        options = _parse(command, lambda parser: add_adapter_options(parser, command), args)
        options.pop("wait")
        result, line = olive_command(command, options)
        print(line)
        return result

    return run


ROUTES: dict[str, Callable[[list[str]], Any]] = {
    "export": export, "auto-opt": export, "optimize": export, "adapters": adapters, "compare": compare,
    "convert-adapters": adapter_command("convert-adapters"), "generate-adapter": adapter_command("generate-adapter")}
