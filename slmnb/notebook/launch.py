"""From a cell (or the form) to a running TrainingRun with its dashboard, or to a running Search with its view when
the body (or --search FILE) holds search keys: the one way the notebook starts runs and searches.

Two environment variables shorten runs for headless notebook tests and quick classroom checks, and the dashboard
says when they apply: SLMNB_MAX_STEPS caps max_steps, SLMNB_MODEL replaces the model, and for a search
SLMNB_MAX_TRIALS caps num_trials.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from slmnb.config import FinetuneConfig, load_config, parse_yaml, read_config_file
from slmnb.errors import ConfigError

if TYPE_CHECKING:
    from slmnb.training.runs import Runs


def cell_values(body: str, overrides: dict[str, Any], default_model: str,
                search_file: str | None = None) -> dict[str, Any]:
    """The cell body (YAML or JSON) on top of --search FILE's keys, default_model filling a config without a model;
    the line's options are applied when the config is built (load_config, or each trial's config)."""
    values = dict(read_config_file(search_file)) if search_file else {}
    body_values = parse_yaml(body) or {}  # an empty or comment-only body is no config at all
    if not isinstance(body_values, dict):
        raise ConfigError("The cell body must be a YAML or JSON mapping, such as 'max_steps: 60'.")
    values.update(body_values)
    if is_olive(body_values):  # an Olive run config names its model in input_model
        return values
    if "model_name_or_path" not in values and "model_name_or_path" not in overrides:
        values["model_name_or_path"] = default_model
    return values


def is_olive(values: dict[str, Any]) -> bool:
    """An Olive run config (input_model, passes, data_configs): slmnb.olive reads it into a FinetuneConfig."""
    from slmnb.olive.runconfig import is_olive_config

    return is_olive_config(values)


def is_search(values: dict[str, Any]) -> bool:
    from slmnb.tuning.spec import SEARCH_KEYS

    return any(key in values for key in SEARCH_KEYS)


def cell_config(body: str, overrides: dict[str, Any], default_model: str) -> FinetuneConfig:
    """The cell body (YAML or JSON) with the line's options on top; default_model fills a config without one."""
    return load_config(cell_values(body, overrides, default_model), **overrides)


def shortened(config: FinetuneConfig) -> tuple[FinetuneConfig, str | None]:
    """Apply SLMNB_MAX_STEPS / SLMNB_MODEL; returns the config and a sentence saying what changed, if anything."""
    changes, note = environment_changes(config)
    return (config.replace(**changes) if changes else config), note


def environment_changes(config: FinetuneConfig) -> tuple[dict[str, Any], str | None]:
    """What SLMNB_MAX_STEPS / SLMNB_MODEL change in a config, and the sentence that says so."""
    changes: dict[str, Any] = {}
    cap = os.environ.get("SLMNB_MAX_STEPS", "").strip()
    if cap:
        if not cap.isdigit() or int(cap) < 1:
            raise ConfigError(f"SLMNB_MAX_STEPS must be a whole number of steps, got {cap!r}.")
        if config.max_steps is None or config.max_steps > int(cap):
            changes["max_steps"] = int(cap)
    model = os.environ.get("SLMNB_MODEL", "").strip()
    if model and model != config.model_name_or_path:
        changes["model_name_or_path"] = model
        if config.layers_to_transform:
            changes["layers_to_transform"] = None  # the numbers are the replaced model's layers
    if not changes:
        return {}, None
    said = ", ".join(f"{k}={v}" for k, v in changes.items())
    return changes, f"Shortened by the environment (SLMNB_MAX_STEPS / SLMNB_MODEL): {said}."


def start(runs: Runs, config: FinetuneConfig, *, wait: bool = False) -> Any:
    """Start the run, show its dashboard under the current cell, and optionally block until it ends."""
    from slmnb.notebook.dashboard import Dashboard

    config, note = shortened(config)
    run = runs.start(config)
    dashboard = Dashboard(run, note=note).show()
    if wait:
        dashboard.wait()
    return run


def start_search(runs: Runs, values: dict[str, Any], overrides: dict[str, Any], *, wait: bool = False) -> Any:
    """Start a search in the runs folder with its view under the current cell; every trial is shortened alike."""
    from slmnb.notebook.search_view import SearchView
    from slmnb.tuning.api import search
    from slmnb.tuning.spec import parse_search

    values = {**values, **overrides}
    fixed, spec = parse_search(values)  # its mistakes first, in one sentence
    if spec is None:  # --search FILE with neither the file nor the body holding a search_space
        raise ConfigError("--search names a file without a search_space: add one to it, such as 'search_space: "
                          "{learning_rate: {type: float, low: 1e-5, high: 1e-2, log: true}}'.")
    changes, note = environment_changes(load_config({k: v for k, v in fixed.items() if k != "name"}))
    trials = os.environ.get("SLMNB_MAX_TRIALS", "").strip()
    if trials:
        if not trials.isdigit() or int(trials) < 1:
            raise ConfigError(f"SLMNB_MAX_TRIALS must be a whole number of trials, got {trials!r}.")
        if spec.num_trials > int(trials):
            changes["search_strategy"] = {**(values.get("search_strategy") or {}), "num_trials": int(trials)}
            note = f"{note + ' ' if note else ''}Shortened by the environment (SLMNB_MAX_TRIALS): " \
                   f"num_trials={trials}."
    found = search({**values, **changes}, root=runs.root)
    view = SearchView(found, note=note).show()
    if wait:
        view.wait()
    return found


def resume_search(runs: Runs, name: str, *, wait: bool = False, num_trials: int | None = None,
                  max_time: float | None = None) -> Any:
    """Continue a search (after a kernel restart, a stop, or with more trials) with its view under this cell."""
    from slmnb.notebook.search_view import SearchView
    from slmnb.tuning.api import resume_search as resume

    found = resume(name, root=runs.root, num_trials=num_trials, max_time=max_time)
    view = SearchView(found).show()
    if wait:
        view.wait()
    return found


def resume(runs: Runs, name: str, *, wait: bool = False, **overrides: Any) -> Any:
    """Continue a run: a paused one in place; an ended one from its last good checkpoint, with overrides."""
    from slmnb.notebook.dashboard import Dashboard
    from slmnb.training.states import RunState

    run = runs.open(name)
    paused = run.status in (RunState.PAUSING, RunState.PAUSED)
    run.resume(**overrides)  # a finished run says how to train it longer
    if paused:  # its dashboard is still live where it was started: say so, as this cell shows none
        print(f"Resumed {run.name}: its dashboard, under the cell that started it, follows it again.")
        return run
    dashboard = Dashboard(run).show()
    if wait:
        dashboard.wait()
    return run
