"""`%finetune SUBCOMMAND`: one small function per subcommand, routed by name from the magic."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from slmnb.errors import RunError

if TYPE_CHECKING:
    from slmnb.training.runs import Runs


def _one_name(args: list[str], command: str, required: bool) -> str | None:
    if len(args) > 1 or (required and not args):
        raise RunError(f"%finetune {command} takes {'one run name' if required else 'at most one run name'}, "
                       f"such as: %finetune {command} tones-lora.")
    return args[0] if args else None


def _live_run(runs: Runs, args: list[str], command: str) -> Any:
    name = _one_name(args, command, required=False)
    run = runs.open(name) if name else runs.active()
    if run is None:
        raise RunError(f"No run is training in this kernel, so there is nothing to {command}.")
    if not run.alive:
        raise RunError(f"Run {run.name!r} is not training in this kernel (it is {run.status}).")
    return run


def _search_named(runs: Runs, args: list[str]) -> str | None:
    """The search a subcommand's one argument names in the runs folder (a run of the same name comes first)."""
    from slmnb.training.runfiles import RunFolder
    from slmnb.tuning import list_searches

    if not args or args[0].startswith("-") or RunFolder(runs.root / args[0]).is_run():
        return None
    return args[0] if args[0] in list_searches(runs.root) else None


def _live_search(runs: Runs, args: list[str]) -> Any:
    """The search training here that stop / pause act on: the one named, or the one whose trial trains now."""
    from slmnb.tuning.api import live_searches

    name = _search_named(runs, args)
    active = runs.active()
    for found in live_searches():
        if found.root.resolve() != runs.root.resolve():
            continue
        # Unnamed: the search, unless a run of the user's own trains now while the search waits for its turn.
        if name == found.name or (not args and (active is None or found.run is active)):
            return found
    if name is not None:
        raise RunError(f"Search {name!r} is not running in this kernel: %finetune resume {name} continues it.")
    return None


def runs_table(runs: Runs, args: list[str]) -> Any:
    from slmnb.notebook.views import RunsTable
    from slmnb.tuning.api import search_states

    if args:
        raise RunError("%finetune runs takes no arguments: it lists the runs folder (%config FinetuneMagics.runs_dir).")
    return RunsTable.of(runs.list(), searches=search_states(runs.root))


def stop(runs: Runs, args: list[str]) -> None:
    found = _live_search(runs, args)
    if found is not None:
        found.stop()
        print(f"Stopping search {found.name}: the trial training now is queued again; %finetune resume {found.name} "
              "continues the search.")
        return
    run = _live_run(runs, args, "stop")
    run.stop()
    print(f"Stopping {run.name} at the next step; its adapter will be saved in {run.output_path}.")


def pause(runs: Runs, args: list[str]) -> None:
    found = _live_search(runs, args)
    if found is not None:
        found.pause()
        print(f"Pausing search {found.name}: its view's Resume, or %finetune resume {found.name}, continues it.")
        return
    run = _live_run(runs, args, "pause")
    run.pause()
    print(f"Pausing {run.name} after this step: %finetune resume {run.name} continues it.")


def resume(runs: Runs, args: list[str]) -> None:
    """`%finetune resume NAME [--wait] [--max_steps N ...]`: the resume options are config fields.

    Returns nothing, like %%finetune: the dashboard is the cell's output, not a snapshot of the run.
    """
    from slmnb.notebook import launch
    from slmnb.options import OptionParser, add_config_options, refuse_unknown

    if _search_named(runs, args) is not None:
        return _resume_search(runs, args)
    parser = OptionParser(prog="%finetune resume", add_help=False, argument_default=argparse.SUPPRESS)
    parser.add_argument("name", nargs="?")
    parser.add_argument("--wait", action="store_true")
    add_config_options(parser, {})
    parsed, unknown = parser.parse_known_args(args)
    refuse_unknown(unknown)
    overrides = vars(parsed)
    name, wait = overrides.pop("name", None), overrides.pop("wait", False)
    if not name:
        raise RunError("%finetune resume takes one run name, such as: %finetune resume tones-lora "
                       "--max_steps 120.")
    launch.resume(runs, name, wait=wait, **overrides)


def _resume_search(runs: Runs, args: list[str]) -> None:
    """`%finetune resume SEARCH [--num_trials N] [--max_time S] [--wait]`: its study goes on."""
    from slmnb.notebook import launch
    from slmnb.options import OptionParser

    parser = OptionParser(prog="%finetune resume", add_help=False)
    parser.add_argument("name")
    parser.add_argument("--num_trials", "--num-trials", type=int, default=None)
    parser.add_argument("--max_time", "--max-time", type=float, default=None)
    parser.add_argument("--wait", action="store_true")
    parsed, unknown = parser.parse_known_args(args)
    if unknown:
        raise RunError(f"%finetune resume of a search takes --num_trials N, --max_time SECONDS and --wait, not "
                       f"{unknown[0]}.")
    from slmnb.training.states import RunState
    from slmnb.tuning.api import live_searches

    paused = [f for f in live_searches() if f.name == parsed.name and f.status == RunState.PAUSED
              and f.root.resolve() == runs.root.resolve()]
    if paused:  # held in place: its view, under the cell that started it, follows it again
        paused[0].resume()
        print(f"Resumed search {parsed.name}: its view, under the cell that started it, follows it again.")
        return
    launch.resume_search(runs, parsed.name, wait=parsed.wait, num_trials=parsed.num_trials,
                         max_time=parsed.max_time)


def show(runs: Runs, args: list[str]) -> None:
    from slmnb.notebook.dashboard import Dashboard

    if (name := _search_named(runs, args)) is not None and len(args) == 1:
        from slmnb.notebook.search_view import SearchView
        from slmnb.tuning.api import open_search

        SearchView(open_search(name, root=runs.root)).show()
        return
    Dashboard(runs.open(_one_name(args, "show", required=True) or "")).show()


def evaluate(runs: Runs, args: list[str]) -> Any:
    """`%finetune eval RUN [--split S] [--metrics m1,m2] [--base]`: answers a split with the run's model, shows the
    metrics (beside the base model's with --base), a classification's confusion matrix and the rows it gets wrong.

    It blocks the cell with a progress bar, as predict() does; the kernel's interrupt stops it.
    """
    from slmnb.evaluation import add_eval_options, evaluate_options
    from slmnb.notebook.eval_view import EvalView
    from slmnb.options import OptionParser

    parser = OptionParser(prog="%finetune eval", add_help=False)
    add_eval_options(parser)
    parsed, unknown = parser.parse_known_args(args)
    if unknown:
        raise RunError(f"%finetune eval has no option {unknown[0]}: see %finetune eval --help.")
    options = vars(parsed)
    run = runs.open(options.pop("run"))
    try:
        evaluations = evaluate_options(run, options)
    except KeyboardInterrupt:
        raise RunError(f"Stopped evaluating run {run.name!r}: nothing was kept; run the cell again to "
                       "evaluate.") from None
    return EvalView(run.name, evaluations, options["wrong"])


def olive_config(runs: Runs, args: list[str]) -> None:
    """`%finetune olive-config RUN [-o FILE]`: writes the Olive run config and says how to run it with Olive."""
    from slmnb.olive.writer import add_options, write_for_run
    from slmnb.options import OptionParser

    parser = OptionParser(prog="%finetune olive-config", add_help=False)
    add_options(parser)
    parsed, unknown = parser.parse_known_args(args)
    if unknown:
        raise RunError(f"%finetune olive-config has no option {unknown[0]}: see %finetune olive-config --help.")
    print(write_for_run(vars(parsed)))


ROUTES: dict[str, Callable[[Runs, list[str]], Any]] = {"runs": runs_table, "stop": stop, "pause": pause,
                                                       "resume": resume, "show": show, "eval": evaluate,
                                                       "olive-config": olive_config}
