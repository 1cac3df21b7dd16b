"""`%%finetune` and `%finetune`: parse the line, build the config, hand it to the launcher, show the result.

Every mistake a user can make becomes an IPython UsageError carrying the config's one sentence, which IPython
prints without a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from traitlets import Unicode, observe

from slmnb.errors import SlmnbError
from slmnb.notebook.parsing import SUBCOMMANDS, help_text, parse_cell, split_line

HELP = {"-h", "--help"}


@magics_class
class FinetuneMagics(Magics):
    runs_dir = Unicode("runs", help="Folder of runs whose config names no output_dir, relative to the notebook."
                       ).tag(config=True)
    default_model = Unicode("smollm2-135m-instruct", help="Model of a cell that names none (the embedded model)."
                            ).tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell, **kwargs)
        from slmnb.training.runs import DEFAULT

        # The kernel's Runs: slmnb.finetune() and load_run() in code cells use the same runs folder.
        self.runs = DEFAULT
        self._use_runs_dir()

    @observe("runs_dir")
    def _use_runs_dir(self, _change: Any = None) -> None:
        self.runs.root = Path(self.runs_dir)

    @line_cell_magic
    def finetune(self, line: str, cell: str | None = None) -> Any:
        """Fine-tune in the background with a live dashboard; `%finetune --help` lists the options."""
        try:
            return self._finetune(line, cell)
        except SlmnbError as exc:
            raise UsageError(str(exc)) from None

    def _finetune(self, line: str, cell: str | None) -> Any:
        tokens = split_line(line)
        if cell is None and tokens and tokens[0] in SUBCOMMANDS and HELP.intersection(tokens[1:]):
            print(help_text())  # it lists the subcommands too
            return None
        if cell is None and tokens and tokens[0] in SUBCOMMANDS:
            from slmnb.notebook.commands import ROUTES

            return ROUTES[tokens[0]](self.runs, tokens[1:])
        args, cell = parse_cell(tokens, cell or "")  # a body that is a pasted `olive finetune` line is its flags
        if args.help:
            print(help_text())
            return None
        for note in args.notes:  # Olive flags accepted that change nothing here
            print(f"note: {note}")
        from slmnb.notebook import launch

        values = launch.cell_values(cell or "", args.overrides, self.default_model, args.search)
        if launch.is_olive(values):
            return self._olive(values, args)
        if args.search or launch.is_search(values):
            return self._search(values, args)
        config = launch.cell_config(cell or "", args.overrides, self.default_model)
        if args.save_config_file:
            from slmnb.olive.flags import save_config_file

            print(save_config_file(config))
        if args.form:
            from slmnb.notebook.form import form_for_cell

            # The same form as slmnb.form(): the demo job, with this cell's body and options on top.
            return form_for_cell(cell or "", args.overrides, self.default_model)
        if args.dry_run:
            from slmnb.data import preview
            from slmnb.notebook.views import DryRun

            return DryRun(preview(config))
        run = launch.start(self.runs, config, wait=args.wait)
        if args.var and self.shell is not None:
            self.shell.user_ns[args.var] = run
        # No value: the dashboard is the cell's live output, and a repr under it would be a stale snapshot. The run
        # is in `-o NAME`, slmnb.active_run() and slmnb.load_run(name).
        return None

    def _olive(self, values: dict[str, Any], args: Any) -> Any:
        """A body that is an Olive run config: its run (or search) and then its export; the line's options win."""
        from slmnb.errors import ConfigError
        from slmnb.notebook import olive_launch
        from slmnb.olive.runconfig import read_olive_config

        if args.form:
            raise ConfigError("The form edits slmnb configs: drop --form, or run the Olive config as it is.")
        job = read_olive_config(values, overrides=args.overrides)
        if getattr(args, "save_config_file", False):
            from slmnb.olive.flags import save_config_file

            print(save_config_file(job.config))
        if args.dry_run:
            return olive_launch.OliveDryRun(job)
        started = olive_launch.start(self.runs, job, wait=args.wait)
        if args.var and self.shell is not None:
            self.shell.user_ns[args.var] = started
        return None

    def _search(self, values: dict[str, Any], args: Any) -> Any:
        """A body with search keys (or --search FILE): trials one after another, with the search's view."""
        from slmnb.errors import ConfigError
        from slmnb.notebook import launch

        if args.form:
            raise ConfigError("The form builds one run's config, not a search: drop --form, or drop the search keys "
                              "(search_strategy, search_space, objective) to open the form.")
        if args.dry_run:
            from slmnb.data import preview
            from slmnb.notebook.views import DryRun
            from slmnb.tuning.spec import parse_search

            fixed, spec = parse_search({**values, **args.overrides})
            if spec is None:
                raise ConfigError(f"{args.search} holds no search_space: add one, such as 'search_space: "
                                  "{learning_rate: {type: float, low: 1e-5, high: 1e-2, log: true}}'.")
            return DryRun(preview(launch.load_config({k: v for k, v in fixed.items() if k != "name"})), search=spec)
        found = launch.start_search(self.runs, values, args.overrides, wait=args.wait)
        if args.var and self.shell is not None:
            self.shell.user_ns[args.var] = found
        return None


@magics_class
class OptMagics(Magics):
    @line_magic
    def opt(self, line: str) -> Any:
        """ONNX export, exports on disk, and base vs fine-tuned side by side; `%opt --help` lists them."""
        from slmnb.notebook.opt_commands import ROUTES, USAGE

        tokens = split_line(line)
        if not tokens or tokens[0] == "help" or HELP.intersection(tokens):  # `%opt export --help` too
            print(USAGE)
            return None
        if tokens[0] in ("olive", "!olive") and tokens[1:2]:  # a pasted `olive auto-opt ...` line
            tokens = tokens[1:]
        if tokens[0] not in ROUTES:
            raise UsageError(f"%opt has no subcommand {tokens[0]!r}: use export, adapters, compare, convert-adapters "
                             "or generate-adapter.")
        try:
            return ROUTES[tokens[0]](tokens[1:])
        except SlmnbError as exc:
            raise UsageError(str(exc)) from None


def allow_options_only(lines: list[str]) -> list[str]:
    """IPython refuses a cell magic whose body is empty; here `%%finetune --options` alone is a whole cell."""
    if lines and lines[0].startswith("%%finetune") and not any(line.strip() for line in lines[1:]):
        return [lines[0].rstrip("\n") + "\n", "# the options above are the whole config\n"]
    return lines
