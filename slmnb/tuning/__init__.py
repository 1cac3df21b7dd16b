"""Hyperparameter search on Optuna: `slmnb.search(config)` (this package's `search`) returns a running `Search`.

The config holds the fixed fields of every trial plus three search keys, as the SLMOps search file writes them:

    search_strategy:            # all optional
      type: random              # random | tpe | grid (Optuna's RandomSampler, TPESampler, GridSampler)
      num_trials: 20            # default 10; for grid, the number of grid points
      max_time: 3600            # seconds after which no new trial starts
      seed: 42                  # seeds the sampler
      pruner: median            # median (default) | halving | none
      enqueue: [{learning_rate: 3e-3, lora_r: 16}]   # the first trials' parameters (Optuna's enqueue_trial)
    search_space:               # FinetuneConfig fields; batch_size means per_device_train_batch_size
      learning_rate: {type: float, low: 1e-6, high: 1e-3, log: true}
      lora_r: {type: int, low: 8, high: 64, step: 8}
      batch_size: {type: choice, values: [8, 16, 32]}
    objective: eval_loss        # or perplexity, or a metric score (accuracy, f1, rougeL...); its direction follows

The API, for front ends (the magic, the dashboard, the CLI):

- `search(config, name=None, storage=None, root="runs", **overrides) -> Search`, `resume_search(name, root=...)`,
  `load_search(name, root=...)` (a search on disk, running or not),
  `list_searches(root)`, `trial_runs(root)` ({search: [its trial runs]}, for grouping a runs table without
  Optuna), `parse_search(values) -> (fixed, SearchSpec | None)`.
- `Search`: `name`, `dir` (<root>/<name>/, holding study.db and search.yaml), `status` (a RunState: running,
  paused, stopping, finished, stopped, failed), `reason` (why it ended), `trials` (TrialRow: number, params, value,
  state waiting|running|complete|pruned|failed, steps, seconds, run, reason, max_steps; poll it), `best`,
  `best_config()`, `best_cell()`, `run` (the TrainingRun of the trial training now), `study` (the Optuna study),
  `stop()`, `pause()`, `resume()`, `wait()`, `subscribe(listener, replay=False)`.
- Events (slmnb.tuning.events): TrialStarted, TrialEvent (each event of a trial's run, to draw live curves),
  TrialEnded, SearchEnded (best trial, and the steps pruning saved).

Each trial is a normal run named <name>-<n> in the runs folder; every run view opens it. A trial's value is the
objective at its run's last evaluation; pruning never acts at a trial's first or last evaluation. A stopped search
(or a process killed mid-trial: found by its dead pid on this machine, by Optuna's heartbeat elsewhere) queues the
cut trial's parameters again, and `resume_search` trains them; the cut trial stays FAIL and does not count.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slmnb.config import FinetuneConfig
    from slmnb.tuning.spec import SearchSpec
    from slmnb.tuning.study import Search


def search(config: FinetuneConfig | dict[str, Any] | str | Path, *, name: str | None = None,
           storage: str | None = None, root: str | Path = "runs", **overrides: Any) -> Search:
    """Start a hyperparameter search; see slmnb.tuning.api.search."""
    from slmnb.tuning import api

    return api.search(config, name=name, storage=storage, root=root, **overrides)


def resume_search(name: str, *, root: str | Path = "runs", storage: str | None = None,
                  num_trials: int | None = None, max_time: float | None = None) -> Search:
    """Continue a search from its study (num_trials may grow); see slmnb.tuning.api.resume_search."""
    from slmnb.tuning import api

    return api.resume_search(name, root=root, storage=storage, num_trials=num_trials, max_time=max_time)


def load_search(name: str, *, root: str | Path = "runs") -> Search:
    """A search from its folder (its study, trials and best_config()), running or not; see api.open_search."""
    from slmnb.tuning import api

    return api.open_search(name, root=root)


def list_searches(root: str | Path = "runs") -> list[str]:
    from slmnb.tuning import api

    return api.list_searches(root)


def trial_runs(root: str | Path = "runs") -> dict[str, list[str]]:
    """Each search's trial run names, by search (from folder names: no Optuna import)."""
    from slmnb.tuning import api

    return api.trial_runs(root)


def parse_search(values: dict[str, Any]) -> tuple[dict[str, Any], SearchSpec | None]:
    from slmnb.tuning import spec

    return spec.parse_search(values)
