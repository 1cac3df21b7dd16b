"""`slmnb finetune CONFIG.yaml [--field value ...]`: the same engine, headless, with a text progress bar.

Every FinetuneConfig field is an option named as in `olive finetune`. Under `torchrun --nproc_per_node=N` each
process runs this and the Trainer trains data-parallel (gloo on CPU); only rank 0 prints and writes the run folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, TextIO

from slmnb.errors import ConfigError, SlmnbError
from slmnb.evaluation import add_eval_options
from slmnb.olive.flags import (
    add_adapter_options,
    add_export_flags,
    add_finetune_flags,
    export_options,
    finetune_overrides,
    refuse_export_flags,
    split_training_args,
)
from slmnb.olive.writer import add_options as add_olive_config_options
from slmnb.options import (
    FIELD_NAMES,
    OptionParser,
    add_compare_options,
    add_config_options,
    add_export_options,
    refuse_unknown,
)
from slmnb.text import clock
from slmnb.training import events as ev

SHORT_OPTIONS = {"model_name_or_path": "-m", "output_dir": "-o", "data_name": "-d"}


def add_finetune_options(finetune: argparse.ArgumentParser) -> None:
    """`slmnb finetune`: a config file, every field as an option, and `olive finetune`'s own flags."""
    finetune.add_argument("config", nargs="?", help="A YAML or JSON FinetuneConfig; options override it.")
    finetune.add_argument("--resume", action="store_true", help="Continue the named run from its last checkpoint.")
    finetune.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                          help="Print the resolved config and a preview of the rendered rows; train nothing.")
    add_config_options(finetune, SHORT_OPTIONS)
    add_finetune_flags(finetune, output_short=False)  # -o is output_dir already, as Olive's -o is its output_path


def build_parser() -> argparse.ArgumentParser:
    # OptionParser (and its subparsers) turn argparse's usage errors into one ConfigError sentence.
    parser = OptionParser(prog="slmnb", description="Fine-tune small language models.")
    commands = parser.add_subparsers(dest="command", required=True)
    finetune = commands.add_parser("finetune", help="Fine-tune a model (LoRA, QLoRA or full).",
                                   argument_default=argparse.SUPPRESS)
    add_finetune_options(finetune)
    export = commands.add_parser("export", help="Export a run to ONNX for onnxruntime-genai (olive auto-opt's flags).")
    add_export_options(export)
    add_export_flags(export)
    for command, text in (("convert-adapters", "A peft LoRA folder as an .onnx_adapter (olive convert-adapters)."),
                          ("generate-adapter", "An ONNX model with its LoRA built in, split into a switchable base "
                                               "and its adapter (olive generate-adapter).")):
        add_adapter_options(commands.add_parser(command, help=text), command)
    add_compare_options(commands.add_parser("compare", help="Base model and fine-tunes side by side (ONNX)."))
    add_eval_options(commands.add_parser("eval", help="Score a run on a split: metrics, confusion matrix, misses."))
    olive = commands.add_parser("run", help="Run an Olive run config (olive run --config): train, then export.",
                                argument_default=argparse.SUPPRESS)
    olive.add_argument("config", help="An Olive run config, JSON or YAML (input_model, data_configs, passes).")
    olive.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                       help="Print the slmnb config, the export and each ignored key; train nothing.")
    # As on the %%finetune line: any field (or olive finetune flag) overrides the config's, --model_name_or_path
    # and --data_files above all, for a config naming a hub model or dataset.
    add_config_options(olive, SHORT_OPTIONS)
    add_finetune_flags(olive, output_short=False)
    add_olive_config_options(commands.add_parser(
        "olive-config", help="Write an Olive run config that reproduces a run and its export (olive run --config)."))
    search = commands.add_parser("search", help="Search hyperparameters: trials one after another, Optuna-pruned.")
    search.add_argument("config", help="A YAML or JSON config with search_space (and search_strategy, objective).")
    search.add_argument("--name", help="The search's name; a search of that name in the storage is joined.")
    search.add_argument("--storage", help="An Optuna storage URL shared by workers, such as postgresql://...; "
                        "default: sqlite in runs/<name>/study.db.")
    return parser


class ProgressBar:
    """A one-line bar on a terminal; on a pipe or a CI log, a line per evaluation and per tenth of the run."""

    def __init__(self, stream: TextIO | None = None, width: int = 24) -> None:
        self.stream, self.width = stream or sys.stderr, width
        self.tty = self.stream.isatty()
        self.max_steps = 0
        self.last: dict[str, float] = {}
        self.printed_tenth = -1
        self.warned: set[str] = set()
        # (step, elapsed) of the first step seen: the ETA's pace is measured from it, since the time before it
        # (loading, a model's one-time preparation) says nothing about the steps to come.
        self.first: tuple[int, float] | None = None

    def warn(self, warning: str) -> None:
        """A likely mistake in the config, said before training starts (and not again among the run's notes)."""
        self.warned.add(warning)
        self._line(f"warning: {warning}", final=True)

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.Started):
            self.max_steps = event.max_steps
            base = ", on the int4 base" if event.base_weights == "int4" else ""
            self._line(f"training {event.name} ({event.precision}{base}) from step {event.step}", final=True)
            for note in event.notes:
                if note not in self.warned:
                    self._line(f"note: {note}", final=True)
        elif isinstance(event, ev.Step):
            self.last.update(loss=event.loss, tokens_per_second=event.tokens_per_second, elapsed=event.elapsed,
                             step=event.step)
            if self.first is None:
                self.first = (event.step, event.elapsed)
            tenth = event.step * 10 // max(self.max_steps, 1)
            if self.tty or tenth > self.printed_tenth:
                self.printed_tenth = tenth
                self._line(self._bar(), final=not self.tty)
        elif isinstance(event, ev.Eval):
            self._line(f"step {event.step}/{self.max_steps}: eval loss {event.eval_loss:.4f}, perplexity "
                       f"{event.perplexity:.2f}", final=True)
        elif isinstance(event, ev.Finished | ev.Stopped):
            what = "stopped" if isinstance(event, ev.Stopped) else f"finished ({event.reason})"
            saved = f"saved to {event.output_path}" if event.output_path else "nothing trained yet, nothing saved"
            self._line(f"{what} at step {event.step} in {clock(event.elapsed)}; {saved}", final=True)

    def _bar(self) -> str:
        step, total = int(self.last.get("step", 0)), max(self.max_steps, 1)
        filled = self.width * step // total
        elapsed = self.last.get("elapsed", 0.0)
        eta = ""
        if self.first is not None and step > self.first[0]:
            pace = (elapsed - self.first[1]) / (step - self.first[0])
            eta = f" ETA {clock(pace * (total - step))}"
        return (f"[{'#' * filled}{'.' * (self.width - filled)}] {step}/{total} loss {self.last.get('loss', 0):.4f} "
                f"{self.last.get('tokens_per_second', 0):.0f} tok/s{eta}")

    def _line(self, text: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()



def follow(run: Any, show: bool = True) -> float:
    """Wait in the foreground for a run to end: print what it is busy with before its first step (a model's first
    use takes about a minute), and stop it at the next step on Ctrl-C (a second Ctrl-C aborts). Returns the seconds
    spent in those phases, the one-time preparation a first run pays."""
    shown, since, preparing = None, time.perf_counter(), 0.0
    try:
        while run.alive:
            if run.phase != shown:
                now = time.perf_counter()
                if shown:
                    preparing += now - since
                shown, since = run.phase, now
                if shown and show:
                    print(shown, file=sys.stderr, flush=True)
            run.wait(0.2)  # short waits keep Ctrl-C responsive
    except KeyboardInterrupt:
        if show:
            print("\nstopping at the next step (Ctrl-C again to abort)...", file=sys.stderr)
        run.stop()
    except SlmnbError:  # the run failed: its Failed event holds the one-sentence reason
        pass
    if shown:
        preparing += time.perf_counter() - since
    while run.alive:
        run.wait(0.2)
    return preparing


def run_finetune(options: dict[str, Any], started: list[Any] | None = None) -> int:
    """Train in the foreground with the progress bar; `started` receives the run (slmnb run exports it after)."""
    from slmnb.checks import config_warnings
    from slmnb.config import load_config
    from slmnb.training.runs import finetune
    from slmnb.training.states import RunState

    source = options.pop("config", None)
    resume = options.pop("resume", False)
    dry_run, save = options.pop("dry_run", False), options.pop("save_config_file", False)
    if resume and (dry_run or save):
        raise ConfigError("--dry-run and --save_config_file show a new run's config: drop --resume (the run's "
                          "config.yaml is in its folder).")
    rank0 = int(os.environ.get("RANK", "0")) == 0
    bar = ProgressBar()
    listeners = [bar] if rank0 else []
    if not resume:
        # Checked and warned about here, before the minutes of loading a model: a likely mistake is seen at once.
        source, options = load_config(source, **options), {}
        if rank0:
            for warning in config_warnings(source):
                bar.warn(warning)
        if save and rank0:
            from slmnb.olive.flags import save_config_file

            print(save_config_file(source), file=sys.stderr)
        if dry_run:
            from slmnb.data import preview

            print(source.to_yaml(include_defaults=False, always=("model_name_or_path",)))
            print(preview(source))
            print("dry run: nothing was trained.", file=sys.stderr)
            return 0
    run = finetune(source, resume=resume, listeners=listeners, **options)
    if started is not None:
        started.append(run)
    follow(run, show=rank0)
    failed = [e for e in run.history if isinstance(e, ev.Failed)]
    if run.status == RunState.FAILED or failed:
        reason = failed[-1].reason if failed else "the run failed (see error.log in its folder)"
        print(f"error: {reason}", file=sys.stderr)
        return 1
    if run.status == RunState.STOPPED and rank0:
        print(f"resume with: slmnb finetune --name {run.name} --resume", file=sys.stderr)
    return 0


def run_export(options: dict[str, Any]) -> int:
    from slmnb.opt.export import export

    start = time.perf_counter()

    def phase(text: str) -> None:
        print(f"[{clock(time.perf_counter() - start)}] {text}", file=sys.stderr, flush=True)

    options, notes = export_options(options)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    result = export(options.pop("run"), on_phase=phase, **options)
    print(f"exported to {result.folder} ({result.size_mb:.0f} MB)" +
          (f", adapter {result.adapter}" if result.adapter else "") + f" in {result.seconds:.1f} s")
    if result.fidelity:
        print(f"note: {result.fidelity}", file=sys.stderr)
    return 0


def run_adapter_command(command: str, options: dict[str, Any]) -> int:
    """`slmnb convert-adapters -a ADAPTER -o OUT` and `slmnb generate-adapter -m ONNX_DIR -o OUT`, as Olive's."""
    from slmnb.olive.adapters import adapter_command

    print(adapter_command(command, options)[1])
    return 0


def run_compare(options: dict[str, Any]) -> int:
    from slmnb.opt.compare import compare

    print(compare(**options))
    return 0


def run_eval(options: dict[str, Any]) -> int:
    """`slmnb eval RUN`: the metrics table, a classification's confusion matrix and the rows it gets wrong."""
    from slmnb.evaluation import evaluate_options, report_lines
    from slmnb.opt.inputs import open_run

    run = open_run(options.pop("run"))
    try:
        evaluations = evaluate_options(run, options)
    except KeyboardInterrupt:
        print(f"\nstopped evaluating {run.name}", file=sys.stderr)
        return 130
    print("\n".join(report_lines(evaluations, options["wrong"])))
    return 0


def run_search(options: dict[str, Any]) -> int:
    """`slmnb search CONFIG`: the trials in the foreground, a line each, and the best trial's cell at the end."""
    from slmnb.tuning.api import search

    def line(event: Any) -> None:
        from slmnb.metrics import score_text
        from slmnb.tuning import events as sev

        if isinstance(event, sev.TrialStarted):
            params = ", ".join(f"{k}={v}" for k, v in event.params.items())
            print(f"trial {event.number} ({event.run}): {params}", file=sys.stderr, flush=True)
        elif isinstance(event, sev.TrialEnded):
            value = score_text(found.spec.objective, event.value)
            print(f"trial {event.number} {event.state}: {found.spec.objective} {value} after {event.steps} steps in "
                  f"{clock(event.seconds)}" + (f"; {event.reason}" if event.state != "complete" else ""),
                  file=sys.stderr, flush=True)

    found = search(options["config"], name=options.get("name"), storage=options.get("storage"))
    found.subscribe(line)
    print(f"search {found.name}: {found.spec.num_trials} trials ({found.spec.strategy}, pruner {found.spec.pruner}) "
          f"in {found.dir}", file=sys.stderr, flush=True)
    try:
        while found.alive:
            found.wait(0.2)  # short waits keep Ctrl-C responsive
    except KeyboardInterrupt:
        print("\nstopping the search: the trial training now is queued again for a resume...", file=sys.stderr)
        found.stop()
    except SlmnbError:
        pass  # said below
    while found.alive:
        time.sleep(0.2)
    ended = found.history[-1] if found.history else None
    saved = getattr(ended, "steps_saved", 0)
    print(f"search {found.name} {found.status} ({found.reason}); pruning saved {saved} steps", file=sys.stderr)
    if found.best is not None:
        print(found.best_cell())
    elif found.status == "failed":
        print(f"error: {found.reason}", file=sys.stderr)
        return 1
    if found.status == "stopped":
        storage = f" --storage {options['storage']}" if options.get("storage") else ""
        print(f"continue with: slmnb search {options['config']} --name {found.name}{storage}", file=sys.stderr)
    return 0


# `slmnb olive finetune ...`: a pasted Olive command line, run by the slmnb subcommand that does its job.
OLIVE_SUBCOMMANDS = {"finetune": "finetune", "auto-opt": "export", "optimize": "export",
                     "convert-adapters": "convert-adapters", "generate-adapter": "generate-adapter", "run": "run"}


def olive_argv(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """argv with a leading `olive SUBCOMMAND` read as slmnb's, and `finetune`'s TrainingArguments flags taken out."""
    if argv[:1] in (["olive"], ["!olive"]) and argv[1:2] and argv[1] in OLIVE_SUBCOMMANDS:
        argv = [OLIVE_SUBCOMMANDS[argv[1]], *argv[2:]]
    if argv[:1] == ["run"]:  # `olive run --config my.json` names its file with --config
        argv = [part for part in argv if part != "--config"]
        argv = [part.removeprefix("--config=") for part in argv]
    if argv[:1] != ["finetune"]:
        return argv, {}
    probe = OptionParser(argument_default=argparse.SUPPRESS)
    add_finetune_options(probe)
    rest, training_args = split_training_args(argv[1:], probe, FIELD_NAMES)
    return ["finetune", *rest], training_args


def run_olive(options: dict[str, Any]) -> int:
    """`slmnb run CONFIG`: an Olive run config trained with the progress bar, then exported as it asks."""
    from slmnb.config import read_config_file
    from slmnb.olive.runconfig import describe, is_olive_config, read_olive_config
    from slmnb.training.states import RunState

    source, dry_run = options.pop("config"), options.pop("dry_run", False)
    options.pop("save_config_file", None)
    values = read_config_file(source)
    if not is_olive_config(values):
        raise ConfigError(f"{source} is not an Olive run config (it has no input_model, data_configs or passes): "
                          f"train a slmnb config with slmnb finetune {source}.")
    job = read_olive_config(values, overrides=options)  # the command line's fields win
    if dry_run:
        print(describe(job))
        return 0
    for key, reason in job.ignored:
        print(f"note: {key} is not applied: {reason}.", file=sys.stderr)
    if job.search:
        if job.export:
            print("note: the export is left to slmnb export BEST_TRIAL after the search.", file=sys.stderr)
        return run_search({"config": job.search_values(), "name": None, "storage": None})
    started: list[Any] = []
    code = run_finetune({"config": job.config}, started)
    if code or not job.export or not started or started[0].status != RunState.FINISHED:
        return code
    return run_export({"run": started[0], **job.export})


def run_olive_config(options: dict[str, Any]) -> int:
    """`slmnb olive-config RUN [-o FILE]`: where it wrote, the `olive run` command, and where Olive differs."""
    from slmnb.olive.writer import write_for_run

    print(write_for_run(options))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        argv, training_args = olive_argv(list(sys.argv[1:] if argv is None else argv))
        parsed, unknown = parser.parse_known_args(argv)
        args = vars(parsed)
        command = args.pop("command")
        if command == "export":
            refuse_export_flags(unknown, "slmnb export")
        if unknown and command not in ("finetune", "run"):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        refuse_unknown(unknown)
        if command in ("finetune", "run"):
            args, notes = finetune_overrides(args)
            for note in notes:
                print(f"note: {note}", file=sys.stderr)
            if training_args:
                args["training_args"] = training_args
            return run_finetune(args) if command == "finetune" else run_olive(args)
        if command == "export":
            return run_export(args)
        if command in ("convert-adapters", "generate-adapter"):
            return run_adapter_command(command, args)
        if command == "compare":
            return run_compare(args)
        if command == "eval":
            return run_eval(args)
        if command == "search":
            return run_search(args)
        if command == "olive-config":
            return run_olive_config(args)
    except SlmnbError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
