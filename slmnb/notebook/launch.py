"""From a cell (or the form) to a running TrainingRun with its dashboard: the one way the notebook starts runs.

Two environment variables shorten runs for headless notebook tests and quick classroom checks, and the dashboard
says when they apply: SLMNB_MAX_STEPS caps max_steps, SLMNB_MODEL replaces the model.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from slmnb.config import FinetuneConfig, load_config, parse_yaml
from slmnb.errors import ConfigError

if TYPE_CHECKING:
    from slmnb.training.runs import Runs


def cell_config(body: str, overrides: dict[str, Any], default_model: str) -> FinetuneConfig:
    """The cell body (YAML or JSON) with the line's options on top; default_model fills a config without one."""
    values = parse_yaml(body) or {}  # an empty or comment-only body is no config at all
    if not isinstance(values, dict):
        raise ConfigError("The cell body must be a YAML or JSON mapping, such as 'max_steps: 60'.")
    if "model_name_or_path" not in values and "model_name_or_path" not in overrides:
        values["model_name_or_path"] = default_model
    return load_config(values, **overrides)


def shortened(config: FinetuneConfig) -> tuple[FinetuneConfig, str | None]:
    """Apply SLMNB_MAX_STEPS / SLMNB_MODEL; returns the config and a sentence saying what changed, if anything."""
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
    if not changes:
        return config, None
    said = ", ".join(f"{k}={v}" for k, v in changes.items())
    return config.replace(**changes), f"Shortened by the environment (SLMNB_MAX_STEPS / SLMNB_MODEL): {said}."


def start(runs: Runs, config: FinetuneConfig, *, wait: bool = False) -> Any:
    """Start the run, show its dashboard under the current cell, and optionally block until it ends."""
    from slmnb.notebook.dashboard import Dashboard

    config, note = shortened(config)
    run = runs.start(config)
    dashboard = Dashboard(run, note=note).show()
    if wait:
        dashboard.wait()
    return run


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
