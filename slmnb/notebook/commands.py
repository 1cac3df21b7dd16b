"""`%finetune SUBCOMMAND`: one small function per subcommand, routed by name from the magic."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from slmnb.errors import RunError


def _one_name(args: list[str], command: str, required: bool) -> str | None:
    if len(args) > 1 or (required and not args):
        raise RunError(f"%finetune {command} takes {'one run name' if required else 'at most one run name'}, "
                       f"such as: %finetune {command} tones-lora.")
    return args[0] if args else None


def _live_run(args: list[str], command: str) -> Any:
    from slmnb.training.run import active_run, load_run

    name = _one_name(args, command, required=False)
    run = load_run(name) if name else active_run()
    if run is None:
        raise RunError(f"No run is training in this kernel, so there is nothing to {command}.")
    if not run.alive:
        raise RunError(f"Run {run.name!r} is not training in this kernel (it is {run.status}).")
    return run


def runs(args: list[str]) -> Any:
    from slmnb.notebook.views import RunsTable
    from slmnb.training.run import list_runs

    if args:
        raise RunError("%finetune runs takes no arguments: it lists the runs folder (%config FinetuneMagics.runs_dir).")
    return RunsTable.of(list_runs())


def stop(args: list[str]) -> None:
    run = _live_run(args, "stop")
    run.stop()
    print(f"Stopping {run.name} at the next step; its adapter will be saved in {run.output_path}.")


def pause(args: list[str]) -> None:
    run = _live_run(args, "pause")
    run.pause()
    print(f"Pausing {run.name} after this step: %finetune resume {run.name} continues it.")


def resume(args: list[str]) -> Any:
    from slmnb.notebook import launch

    wait = "--wait" in args
    name = _one_name([a for a in args if a != "--wait"], "resume", required=True)
    return launch.resume(name, wait=wait)


def show(args: list[str]) -> None:
    from slmnb.notebook.dashboard import Dashboard
    from slmnb.training.run import load_run

    Dashboard(load_run(_one_name(args, "show", required=True))).show()


ROUTES: dict[str, Callable[[list[str]], Any]] = {"runs": runs, "stop": stop, "pause": pause, "resume": resume,
                                                 "show": show}
