"""The Optuna side of a search: storage, sampler, pruner, and which trials count toward num_trials.

Imported only when a search starts (Optuna is heavy, and `import slmnb` must stay light).

Counting: num_trials counts every trial that trained or trains (complete, pruned, failed, running) and those
waiting to run. Two kinds of failed trial do not count, because another trial takes their place: one whose process
died (or whose search was stopped) under it, re-enqueued with the same parameters (user_attr `retry_of` on the new
one), and a `surplus` one, which a worker claimed in a race for the last slot and gave up before training.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from slmnb.tuning.spec import Param, SearchSpec

HOST = socket.gethostname()
# A worker that dies mid-trial stops beating; after the grace period any other worker's next trial fails the stale
# one and re-enqueues its parameters (Optuna's own heartbeat, for workers on other machines). Trials of this machine
# whose process is gone are found at once by their pid (reap_local), so a restarted kernel need not wait.
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120


def storage(url: str) -> optuna.storages.RDBStorage:
    engine: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Workers share one SQLite file: wait for each other's writes instead of failing with "database is locked".
        engine = {"connect_args": {"timeout": 60}}
    with warnings.catch_warnings():
        # Optuna calls its heartbeat experimental: slmnb pins Optuna's version, and a notebook user would only see
        # a warning about an argument they never gave.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS,
                                          grace_period=GRACE_SECONDS, heartbeat_stale_trial_callback=retry)


def create_or_join(name: str, fixed: dict[str, Any], spec: SearchSpec, url: str) -> optuna.Study:
    """The study called `name` in the storage at `url`: created (with the enqueued trials), or joined when it exists
    with the same config and search (num_trials and max_time may differ: a resume may lengthen the search)."""
    from slmnb.config import FinetuneConfig
    from slmnb.errors import RunError

    # Optuna logs each trial, and a failed one with its traceback: slmnb's lines and views say what each trial did
    # in one sentence, so only Optuna's errors are let through (this is Optuna's process-wide setting).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    store = storage(url)
    # What makes it the same search, compared when joining: the config as typed values, so '3e-3' in a YAML file
    # and 0.003 from Python agree.
    typed = FinetuneConfig.from_dict(fixed).to_dict(include_defaults=False)
    record = json.loads(json.dumps({"config": typed, **spec.to_dict()}))
    try:
        study = optuna.create_study(storage=store, study_name=name, direction=spec.direction,
                                    sampler=sampler(spec, spec.seed), pruner=pruner(spec))
        study.set_user_attr("slmnb", record)
        for params in spec.enqueue:
            study.enqueue_trial(params)
        return study
    except optuna.exceptions.DuplicatedStudyError:
        pass
    study = optuna.load_study(study_name=name, storage=store)
    saved = study.user_attrs.get("slmnb")
    if saved is not None and _without_budget(saved) != _without_budget(record):
        raise RunError(f"Search {name!r} exists with another config or search: continue it with "
                       f"resume_search({name!r}), or choose another name.")
    if saved != record:
        study.set_user_attr("slmnb", record)
    # Reseeded by how far the study got and by process, so a resume or a second worker does not draw the first
    # trials' parameters again.
    seed = None if spec.seed is None else spec.seed + len(study.trials) + os.getpid()
    study.sampler = sampler(spec, seed)
    study.pruner = pruner(spec)
    return study


def _without_budget(record: dict[str, Any]) -> dict[str, Any]:
    """A search's record without what may change when it is continued: how many trials, and for how long."""
    strategy = {k: v for k, v in record.get("search_strategy", {}).items() if k not in ("num_trials", "max_time")}
    return {**record, "search_strategy": strategy}


def sampler(spec: SearchSpec, seed: int | None) -> optuna.samplers.BaseSampler:
    if spec.strategy == "grid":
        return optuna.samplers.GridSampler({k: p.grid() for k, p in spec.space.items()}, seed=seed)
    if spec.strategy == "tpe":
        # TPE samples at random until it has this many trials to model: Optuna's 10 would make a 10-trial search
        # purely random, so small searches start modelling after a third of their trials.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, spec.num_trials // 3)))
    return optuna.samplers.RandomSampler(seed=seed)


def pruner(spec: SearchSpec) -> optuna.pruners.BasePruner:
    """Median or successive halving; the search never asks before a trial's second evaluation and a third of its
    steps (slmnb.tuning.trial.Watcher)."""
    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    if spec.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    # Compared against the median of finished trials once a few exist: 5 (Optuna's default) for a large search,
    # fewer for a small one, which would otherwise never prune.
    return optuna.pruners.MedianPruner(n_startup_trials=max(1, min(5, spec.num_trials // 4)), n_warmup_steps=0)


def suggest(trial: optuna.Trial, name: str, param: Param) -> Any:
    if param.type == "choice":
        return trial.suggest_categorical(name, list(param.values))
    assert param.low is not None and param.high is not None
    if param.type == "int":
        return trial.suggest_int(name, int(param.low), int(param.high), step=int(param.step or 1), log=param.log)
    return trial.suggest_float(name, float(param.low), float(param.high), step=param.step, log=param.log)


# --- counting and re-trying -------------------------------------------------------------------------------------


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials num_trials counts (see the module's docstring), by number."""
    retried = {t.user_attrs.get("retry_of") for t in trials}
    return [t for t in trials
            if not t.user_attrs.get("surplus") and not (t.state == TrialState.FAIL and t.number in retried)]


def more_to_run(trials: list[FrozenTrial], num_trials: int) -> bool:
    return any(t.state == TrialState.WAITING for t in trials) or len(counted(trials)) < num_trials


def is_surplus(trials: list[FrozenTrial], number: int, num_trials: int) -> bool:
    """Whether trial `number` came after num_trials others that count: two workers claimed the last slot at once."""
    return sum(1 for t in counted(trials) if t.number < number) >= num_trials


def retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a dead or interrupted trial's parameters again, so its place is trained after all."""
    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})


def reap_local(study: optuna.Study) -> list[int]:
    """Fail and re-queue the running trials of this machine whose process is gone; their numbers."""
    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if trial.user_attrs.get("host") != HOST or not isinstance(pid, int) or pid == os.getpid() or _alive(pid):
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "reason", "Its process ended before the trial did; "
                                               "its parameters were queued again.")
            if not study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker reaped it first
        retry(study, trial)
        reaped.append(trial.number)
    return reaped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process holds that pid
    return True
