"""One trial: a normal slmnb run started with the trial's parameters, watched for the objective and for pruning.

run_trial is the Optuna objective (Search passes it to study.optimize): it returns the objective at the run's last
evaluation, raises optuna.TrialPruned when the pruner stopped the run, and TrialFailed, with the one sentence the
trial keeps in its user_attrs, when the run failed or gave no value. Per trial, user_attrs hold: run, host, pid,
steps, seconds, max_steps, reason (and retry_of, interrupted, surplus where they apply).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slmnb.errors import SlmnbError
from slmnb.training import events as ev
from slmnb.training.states import RunState
from slmnb.tuning import events as sev

if TYPE_CHECKING:
    import optuna

    from slmnb.training.run import TrainingRun
    from slmnb.tuning.study import Search


class TrialFailed(Exception):
    """Ends a trial as FAIL (Optuna catches it); its sentence is in the trial's user_attrs too."""


@dataclass(frozen=True)
class TrialRow:
    """One trial as a table shows it; `value` is None until the trial completes (or is pruned)."""

    number: int
    params: dict[str, Any]
    value: float | None
    state: str  # waiting | running | complete | pruned | failed
    steps: int
    seconds: float
    run: str
    reason: str = ""
    max_steps: int | None = None
    counted: bool = True  # False for a cut trial whose parameters were queued again: num_trials counts the retry


def best_of(rows: list[TrialRow], direction: str) -> TrialRow | None:
    """The completed trial with the best finite value ("maximize" or "minimize"); None before one completes."""
    done = [r for r in rows if r.state == "complete" and r.value is not None and math.isfinite(r.value)]
    if not done:
        return None
    pick = max if direction == "maximize" else min
    return pick(done, key=lambda r: r.value or 0.0)


def steps_saved(rows: list[TrialRow]) -> int:
    """Steps the pruned trials did not train, against each running to its max_steps."""
    return sum(max((r.max_steps or r.steps) - r.steps, 0) for r in rows if r.state == "pruned")


def row_of(trial: Any) -> TrialRow:
    """A FrozenTrial as a row; a pruned trial's value is the one it was pruned on."""
    attrs = trial.user_attrs
    state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
             "WAITING": "waiting"}.get(trial.state.name, trial.state.name.lower())
    value = trial.value if state == "complete" else (
        trial.intermediate_values[max(trial.intermediate_values)] if state == "pruned" and trial.intermediate_values
        else None)
    return TrialRow(number=trial.number, params=dict(trial.params), value=value, state=state,
                    steps=int(attrs.get("steps", 0)), seconds=float(attrs.get("seconds", 0.0)),
                    run=str(attrs.get("run", "")), reason=str(attrs.get("reason", "")),
                    max_steps=attrs.get("max_steps"))


def objective_value(event: ev.Eval, objective: str) -> float | None:
    if objective == "eval_loss":
        return event.eval_loss
    if objective == "perplexity":
        return event.perplexity
    return event.metrics.get(objective)


@dataclass
class Watcher:
    """Listens to the trial's run (in its training thread): reports each evaluation to Optuna, stops when pruned."""

    trial: optuna.Trial
    objective: str
    prune: bool
    run: TrainingRun | None = None
    last: float | None = None
    evals: int = 0
    pruned_at: int | None = None
    max_steps: int | None = None
    missing: list[str] = field(default_factory=list)

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.Started):
            self.max_steps = event.max_steps
        if not isinstance(event, ev.Eval):
            return
        value = objective_value(event, self.objective)
        if value is None:
            self.missing = sorted(event.metrics)
            return
        self.last, self.evals = value, self.evals + 1
        self.trial.report(value, event.step)
        # Never at the first evaluation (one point says nothing about a curve), nor in the first third of the
        # trial (a high learning rate makes the loss jump early, and on the embedded model the best trial of
        # bench_search.py was pruned at step 6 of 36 when it was allowed), nor at the last (nothing to save).
        last = self.max_steps is not None and event.step >= self.max_steps
        early = self.max_steps is not None and event.step * 3 < self.max_steps
        if self.prune and self.evals >= 2 and not early and not last and self.pruned_at is None \
                and self.trial.should_prune():
            self.pruned_at = event.step
            if self.run is not None:
                self.run.stop()


def run_trial(search: Search, trial: optuna.Trial) -> float:
    import optuna

    from slmnb.tuning import optuna_parts as parts

    trial.set_user_attr("host", parts.HOST)
    trial.set_user_attr("pid", os.getpid())
    if parts.is_surplus(search.study.get_trials(deepcopy=False), trial.number, search.spec.num_trials):
        trial.set_user_attr("surplus", True)
        raise TrialFailed("Another worker took the last trial first.")
    spec = search.spec
    params = {name: parts.suggest(trial, name, param) for name, param in spec.space.items()}
    run_name = f"{search.name}-{trial.number}"
    trial.set_user_attr("run", run_name)
    watcher = Watcher(trial, spec.objective, prune=spec.pruner != "none")

    def forward(event: ev.Event) -> None:
        search.emit(sev.TrialEvent(number=trial.number, run=run_name, event=event))

    began = time.monotonic()
    try:
        run = search.runs.start({**search.fixed, **params, "name": run_name}, listeners=[watcher, forward])
    except SlmnbError as exc:
        return _fail(trial, str(exc), 0, began)
    watcher.run = search.run = run
    search.emit(sev.TrialStarted(number=trial.number, params=params, run=run_name))
    if search.stop_requested:
        run.stop()  # stopped while the run was being started
    elif search.held:
        run.pause()
    try:
        run.wait()
    except SlmnbError:
        pass  # the Failed event holds the sentence
    finally:
        search.run = None
    steps = run.step
    trial.set_user_attr("max_steps", watcher.max_steps)
    failed = [e for e in run.history if isinstance(e, ev.Failed)]
    if failed or run.status == RunState.FAILED:
        return _fail(trial, failed[-1].reason if failed else "The run failed.", steps, began)
    if watcher.pruned_at is not None:
        _record(trial, f"Pruned at step {watcher.pruned_at}: its {spec.objective} was worse than the other trials' "
                "there.", steps, began)
        raise optuna.TrialPruned()
    if search.stop_requested:
        trial.set_user_attr("interrupted", True)
        parts.retry(search.study, search.study._storage.get_trial(trial._trial_id))
        return _fail(trial, "Stopped with the search; its parameters were queued again for a resume.", steps, began)
    if run.status == RunState.STOPPED:
        return _fail(trial, f"Its run was stopped by hand at step {steps}, so it has no final value.", steps, began)
    if watcher.last is None:
        what = f"{spec.objective} is not among its scores ({', '.join(watcher.missing) or 'none'})" \
            if watcher.missing else "it never evaluated"
        return _fail(trial, f"The run gave no {spec.objective}: {what}.", steps, began)
    if not math.isfinite(watcher.last):
        return _fail(trial, f"The run's {spec.objective} was {watcher.last} (the training diverged): narrow the "
                     "learning_rate range.", steps, began)
    _record(trial, "Completed.", steps, began)
    return watcher.last


def _record(trial: optuna.Trial, reason: str, steps: int, began: float) -> None:
    trial.set_user_attr("reason", reason)
    trial.set_user_attr("steps", steps)
    trial.set_user_attr("seconds", round(time.monotonic() - began, 3))


def _fail(trial: optuna.Trial, reason: str, steps: int, began: float) -> float:
    _record(trial, reason, steps, began)
    raise TrialFailed(reason)
