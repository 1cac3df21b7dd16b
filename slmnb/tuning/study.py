"""Search: a hyperparameter search run as Optuna trials, one slmnb run each, in one background thread.

A trial is a normal run (`Runs.start`) in `<root>/<search>-<n>`, n being Optuna's trial number, so `%finetune runs`,
`load_run` and every run view open it by name; the search's own folder `<root>/<search>/` holds `study.db` (the
default SQLite storage) and `search.yaml` (the fixed config, the search keys and the storage URL, what
`resume_search` reads). At each evaluation the trial reports the objective to Optuna and is stopped as pruned when
the pruner says so (slmnb.tuning.trial). A trial's value is the objective at its run's last evaluation (the weights
it ends with), not the best one it passed on the way.
"""

from __future__ import annotations

import fcntl
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmnb.config import FinetuneConfig
from slmnb.errors import RunError, SlmnbError
from slmnb.training.runs import Runs
from slmnb.training.states import RunState
from slmnb.tuning import events as sev
from slmnb.tuning.spec import SearchSpec
from slmnb.tuning.trial import TrialFailed, TrialRow, best_of, row_of, steps_saved

if TYPE_CHECKING:
    import optuna

    from slmnb.training.run import TrainingRun

log = logging.getLogger(__name__)
SearchListener = Callable[[sev.SearchEvent], None]
STATE_FILE = "search.json"  # what the JupyterLab runs panel reads (no Optuna there): status, trials, best
STOP_REQUEST = "stop-requested"  # the runs panel asks a search to stop by writing this file in its folder
POLL = 0.5  # seconds between looks for a stop request
# This many failures in a row with the same sentence end the search: the config is wrong, not the parameters.
SAME_FAILURE_LIMIT = 3


class Search:
    """A search over `spec.space`; `start()` trains its trials in a background thread and returns at once."""

    def __init__(self, name: str, root: str | Path, fixed: dict[str, Any], spec: SearchSpec,
                 storage: str | None = None) -> None:
        self.name, self.root, self.fixed, self.spec = name, Path(root), dict(fixed), spec
        self.dir = self.root / name
        self.storage_url = storage or default_storage(self.dir)
        self.status = RunState.CREATED
        self.history: list[sev.SearchEvent] = []
        self.run: TrainingRun | None = None  # the trial training now
        self.reason = ""  # why the search ended
        self.runs = Runs(self.root)  # where the trials' runs start
        self._listeners: list[SearchListener] = []
        self._lock = threading.RLock()
        self._publish_lock = threading.Lock()
        self._stop = threading.Event()
        self._unpaused = threading.Event()
        self._unpaused.set()
        self._thread: threading.Thread | None = None
        self._study: optuna.Study | None = None
        self._error: BaseException | None = None
        self._last_ended: sev.TrialEnded | None = None
        self.joined = 0  # trials the study held when this Search opened it (a resume, a re-run cell, a worker)

    def __repr__(self) -> str:
        done = sum(1 for t in self.trials if t.state in ("complete", "pruned", "failed") and t.counted)
        return (f"<Search {self.name!r}: {self.status}, {done}/{self.spec.num_trials} trials as of "
                f"{time.strftime('%H:%M:%S')}, in {self.dir}>")

    # --- the study --------------------------------------------------------------------------------------------

    @property
    def study(self) -> optuna.Study:
        """The Optuna study (created or joined by open_study)."""
        if self._study is None:
            raise RunError(f"Search {self.name!r} has no study yet: start it with slmnb.search().")
        return self._study

    def open_study(self) -> Search:
        """Create the study in its storage, or join it when it exists (a resume, or another worker)."""
        from slmnb.tuning import optuna_parts as parts

        self.dir.mkdir(parents=True, exist_ok=True)
        # Workers starting together on a new SQLite file would race to create its tables: one at a time here.
        with open(self.dir / ".study.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._study = parts.create_or_join(self.name, self.fixed, self.spec, self.storage_url)
        self.joined = sum(1 for t in self._study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus"))
        return self

    # --- what it is -------------------------------------------------------------------------------------------

    @property
    def trials(self) -> list[TrialRow]:
        """Every trial of the study (surplus claims left out), by number: what a table or dashboard polls."""
        if self._study is None:
            return []
        trials = self._study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("retry_of") for t in trials}
        rows = [replace(row_of(t), counted=not (t.state.name == "FAIL" and t.number in retried))
                for t in trials if not t.user_attrs.get("surplus")]
        run = self.run
        if run is not None:  # the trial training here: its steps and time so far (the study has them at its end)
            rows = [replace(r, steps=run.step, seconds=run.elapsed(), max_steps=run.max_steps)
                    if r.run == run.name and r.state == "running" else r for r in rows]
        return rows

    @property
    def best(self) -> TrialRow | None:
        return best_of(self.trials, self.spec.direction)

    def best_config(self) -> FinetuneConfig:
        """The best trial's config: the fixed fields with its parameters (no name: a new run gets its own)."""
        best = self.best
        if best is None:
            raise RunError(f"Search {self.name!r} has no completed trial yet: wait for one, or resume the search.")
        return FinetuneConfig.from_dict({**self.fixed, **best.params, "name": None})

    def best_cell(self) -> str:
        """The best config as a `%%finetune` cell: FinetuneConfig.from_text(its body) == best_config()."""
        body = self.best_config().to_yaml(include_defaults=False)
        return f"%%finetune --name {self.name}-best\n{body}"

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def started_here(self) -> bool:
        """Whether this process started (or resumed) the search, rather than only opened it to look."""
        return self._thread is not None

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def held(self) -> bool:
        """Paused: the trial training now holds between steps, and no new one starts."""
        return not self._unpaused.is_set()

    # --- listening --------------------------------------------------------------------------------------------

    def subscribe(self, listener: SearchListener, replay: bool = False) -> Callable[[], None]:
        """Call `listener(event)` for each search event and each trial run's event (as TrialEvent); keep it quick."""
        with self._lock:
            if replay:
                for event in self.history:
                    listener(event)
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def emit(self, event: sev.SearchEvent) -> None:
        # A trial's events arrive on its training thread, which holds its run's lock: the search's lock guards only
        # its own lists here, and the listeners, search.json and the run are reached outside it (the controls below
        # take the same care), so the two locks are never held in opposite orders.
        with self._lock:
            if not isinstance(event, sev.TrialEvent):  # a run keeps its own events; the search keeps its own
                self.history.append(event)
            listeners = list(self._listeners)
        if not isinstance(event, sev.TrialEvent):
            self.publish()
        for listener in listeners:
            try:
                listener(event)
            except Exception as exc:
                with self._lock:
                    if listener in self._listeners:
                        self._listeners.remove(listener)
                log.warning("slmnb: a listener of search %r failed (%s: %s) and gets no more events.",
                            self.name, type(exc).__name__, exc)

    # --- controls ---------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the trial training now (re-queued for a resume) and start no other. Returns at once."""
        with self._lock:
            if not self.status.live:
                return
            self._stop.set()
            self._unpaused.set()
            self.status, run = RunState.STOPPING, self.run
        if run is not None:
            run.stop()
        self.publish()  # the runs panel shows the new status at once, not at the trial's end

    def pause(self) -> None:
        """Hold the trial training now between steps, and start no new one until resume()."""
        with self._lock:
            if self.status != RunState.RUNNING:
                return
            self._unpaused.clear()
            self.status, run = RunState.PAUSED, self.run
        if run is not None:
            run.pause()
        self.publish()

    def resume(self) -> Search:
        """Go on after pause(). (An ended search continues with slmnb.resume_search(name).)"""
        with self._lock:
            if self.status != RunState.PAUSED:
                return self
            self._unpaused.set()
            self.status, run = RunState.RUNNING, self.run
        # Only a held trial needs it: one paused as it was starting may not have reached its hold (resuming a run
        # that trains raises).
        if run is not None and run.status in (RunState.PAUSING, RunState.PAUSED):
            run.resume()
        self.publish()
        return self

    def wait(self, timeout: float | None = None) -> Search:
        """Block until the search ends (or timeout seconds pass); a search that failed raises its sentence."""
        from slmnb.training.run import WaitInterrupted

        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while self.alive and (deadline is None or time.monotonic() < deadline):
                time.sleep(0.05)  # short sleeps keep the kernel's interrupt responsive (see TrainingRun.wait)
        except KeyboardInterrupt:
            if not self.alive:
                raise
            raise WaitInterrupted(f"Stopped waiting for search {self.name!r}, which goes on: search.stop() ends "
                                  "it.") from None
        if self._error is not None and not self.alive:
            raise RunError(self.reason) from self._error
        return self

    def state(self) -> dict[str, Any]:
        """What search.json holds: the search as the runs panel lists it, trials in number order."""
        best = self.best
        rows = self.trials
        return {
            "name": self.name, "status": str(self.status), "reason": self.reason, "objective": self.spec.objective,
            "direction": self.spec.direction, "num_trials": self.spec.num_trials,
            "trials": [{"number": t.number, "run": t.run, "state": t.state, "value": _finite(t.value),
                        "steps": t.steps, "max_steps": t.max_steps, "params": t.params, "counted": t.counted}
                       for t in rows],
            "best": None if best is None else {"number": best.number, "run": best.run, "value": best.value,
                                               "params": best.params},
            "steps_saved": steps_saved(rows), "updated_at": time.time(),
        }

    def publish(self) -> None:
        """Rewrite search.json (atomically: a reader never sees half of it); a failure to write only warns."""
        import json

        from slmnb.paths import write_text_atomic

        if self._study is None:
            return
        try:
            with self._publish_lock:  # one writer at a time, so the last state written is the newest
                write_text_atomic(self.dir / STATE_FILE, json.dumps(self.state(), default=str))
        except OSError as exc:
            log.warning("slmnb: could not write %s (%s); the search goes on.", self.dir / STATE_FILE, exc)

    def _watch_stop_request(self) -> None:
        """The runs panel's Stop: a file in the search folder, honoured while the search's thread lives."""
        request = self.dir / STOP_REQUEST
        while self.alive:
            if request.exists():
                request.unlink(missing_ok=True)
                self.stop()
            time.sleep(POLL)

    # --- the thread -------------------------------------------------------------------------------------------

    def start(self) -> Search:
        from slmnb.training.failure import TRAINING

        TRAINING.check_free()
        if self._study is None:
            self.open_study()
        self._stop.clear()
        self._unpaused.set()
        self.status, self._error, self.reason = RunState.RUNNING, None, ""
        (self.dir / STOP_REQUEST).unlink(missing_ok=True)  # an old request is not meant for this session
        self._thread = threading.Thread(target=self._work, daemon=True, name=f"slmnb-search-{self.name}")
        self._thread.start()
        threading.Thread(target=self._watch_stop_request, daemon=True, name=f"slmnb-search-{self.name}-stop").start()
        self.publish()
        return self

    def _work(self) -> None:
        from slmnb.tuning import optuna_parts as parts

        started, failures = time.monotonic(), list[str]()
        try:
            study = self.study
            while True:
                self._unpaused.wait()
                if self._stop.is_set():
                    self.reason = "stopped"
                    break
                if self.spec.max_time is not None and time.monotonic() - started >= self.spec.max_time:
                    self.reason = "max_time reached"
                    break
                parts.reap_local(study)
                if not parts.more_to_run(study.get_trials(deepcopy=False), self.spec.num_trials):
                    self.reason = "num_trials reached"
                    break
                self._wait_for_training_slot()
                self._last_ended = None
                study.optimize(self._objective, n_trials=1, catch=(TrialFailed,), callbacks=[self._ended])
                ended = self._last_ended
                failures = [*failures, ended.reason] if ended is not None and ended.state == "failed" else []
                if len(failures) >= SAME_FAILURE_LIMIT and len(set(failures[-SAME_FAILURE_LIMIT:])) == 1:
                    raise RunError(f"Search {self.name!r} ended: its last {SAME_FAILURE_LIMIT} trials failed "
                                   f"alike ({failures[-1].rstrip('.')}).")
            self.status = RunState.STOPPED if self._stop.is_set() else RunState.FINISHED
        except BaseException as exc:
            self._error = exc
            self.reason = str(exc) if isinstance(exc, SlmnbError) else f"{type(exc).__name__}: {exc}"
            self.status = RunState.FAILED
        finally:
            self.run = None
            self.emit(self._summary())

    def _wait_for_training_slot(self) -> None:
        """A run the user started meanwhile trains first: one training per process (slmnb.training.failure)."""
        from slmnb.training.failure import TRAINING

        while TRAINING.holder is not None and not self._stop.is_set():
            time.sleep(0.5)

    def _objective(self, trial: optuna.Trial) -> float:
        from slmnb.tuning.trial import run_trial

        return run_trial(self, trial)

    def _ended(self, study: optuna.Study, frozen: Any) -> None:
        """Optuna's callback after each trial: the TrialEnded event (none for a surplus claim)."""
        if frozen.user_attrs.get("surplus"):
            return
        row = row_of(frozen)
        self._last_ended = sev.TrialEnded(number=row.number, state=row.state, value=row.value, steps=row.steps,
                                          seconds=row.seconds, reason=row.reason, run=row.run)
        self.emit(self._last_ended)

    def _summary(self) -> sev.SearchEnded:
        rows = self.trials
        best = self.best
        return sev.SearchEnded(best_number=best.number if best else None, best_value=best.value if best else None,
                               reason=self.reason, steps_trained=sum(t.steps for t in rows),
                               steps_saved=steps_saved(rows))


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None  # JSON has no NaN


def default_storage(folder: Path) -> str:
    return f"sqlite:///{(folder / 'study.db').resolve()}"


