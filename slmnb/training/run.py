"""TrainingRun: a fine-tuning job in a background thread of this process, and the functions that start and open runs.

The thread sends events; the run keeps them in `history`, mirrors them into the run folder and passes them to
listeners. Stop, pause and resume act between optimizer steps, so no state is ever lost.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from slmnb.config import FinetuneConfig, load_config
from slmnb.data import Data, load_data, with_default_templates
from slmnb.errors import RunError, SlmnbError
from slmnb.training import events as ev
from slmnb.training.openmp import release_openmp_pool
from slmnb.training.runfiles import RunFolder, process_alive

log = logging.getLogger(__name__)
Listener = Callable[[ev.Event], None]

# Where runs go when a config names no output_dir; the notebook front end makes this a %config trait.
RUNS_DIR = "runs"

_active: TrainingRun | None = None
_active_lock = threading.Lock()
# Every run this process started, by folder: resuming one gives back the same object, listeners and all.
_runs: dict[Path, TrainingRun] = {}

ENDED_STATUS = {ev.Finished: "finished", ev.Stopped: "stopped", ev.Failed: "failed"}
LIVE_STATUSES = ("starting", "running", "pausing", "paused", "stopping")


class TrainingRun:
    def __init__(self, config: FinetuneConfig, folder: RunFolder) -> None:
        self.config = config
        self.folder = folder
        self.history: list[ev.Event] = []
        self.status = "created"
        self._listeners: list[Listener] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._unpaused = threading.Event()
        self._unpaused.set()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._predictor: Any = None
        self._clock = (time.perf_counter(), 0.0)  # (origin, elapsed before this session of the run)
        self._paused_for = 0.0
        self._last_state_write = 0.0
        self._last_request_check = 0.0
        self._latest: dict[str, float] = {}  # the last loss, eval loss and perplexity, for run.json
        # Under torchrun every rank trains, but only rank 0 writes the run folder.
        self._writer = int(os.environ.get("RANK", "0")) == 0

    # --- what it is ---------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name or self.folder.path.name

    @property
    def dir(self) -> Path:
        return self.folder.path

    @property
    def output_path(self) -> Path:
        """The adapter folder (the full model's folder for method: full)."""
        return self.folder.output_path(self.config.method)

    @property
    def step(self) -> int:
        return self.history[-1].step if self.history else 0

    @property
    def max_steps(self) -> int | None:
        started = [e for e in self.history if isinstance(e, ev.Started)]
        return started[-1].max_steps if started else self.folder.read_state().get("max_steps")

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return [e.record() for e in self.history if isinstance(e, ev.Step | ev.Eval)]

    @property
    def alive(self) -> bool:
        """True while the training thread runs (including while paused)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def error(self) -> BaseException | None:
        return self._error

    def __repr__(self) -> str:
        return f"<TrainingRun {self.name!r} {self.status} step {self.step}/{self.max_steps or '?'} in {self.dir}>"

    # --- listening ----------------------------------------------------------------------------------

    def subscribe(self, listener: Listener, replay: bool = False) -> Callable[[], None]:
        """Call `listener(event)` for each new event (from the training thread; keep it quick).

        With replay, the history is delivered first, under the same lock, so no event is missed or doubled.
        Returns a function that unsubscribes.
        """
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

    def emit(self, event: ev.Event) -> None:
        with self._lock:
            self.history.append(event)
            self.status = _status_after(event, self.status)
            if self._writer:
                self._record(event)
            for listener in list(self._listeners):
                try:
                    listener(event)
                except Exception:  # a broken display must never stop training
                    log.exception("slmnb: a run listener failed on %s", type(event).__name__)

    def _record(self, event: ev.Event) -> None:
        if isinstance(event, ev.Step | ev.Eval):
            self.folder.append_metric(event.record())
        if isinstance(event, ev.Step):
            self._latest["loss"] = event.loss
        elif isinstance(event, ev.Eval):
            self._latest.update(eval_loss=event.eval_loss, perplexity=event.perplexity)
        now = time.monotonic()
        if isinstance(event, ev.Step | ev.Eval) and now - self._last_state_write < 1.0:
            return  # run.json is for other processes' eyes (the lab side panel): once a second is plenty
        self._last_state_write = now
        # The latest metrics go into every write, since a throttled event's values come with the next one.
        state: dict[str, Any] = {"status": self.status, "step": event.step, "elapsed": event.elapsed, **self._latest}
        if isinstance(event, ev.Started):
            state.update(max_steps=event.max_steps, precision=event.precision, pid=os.getpid())
        elif isinstance(event, ev.Failed):
            state["reason"] = event.reason
        if isinstance(event, ev.ENDED):
            state["ended_at"] = time.time()
        self.folder.update_state(**state)

    # --- the EventSink the engine uses ----------------------------------------------------------------

    def elapsed(self) -> float:
        origin, before = self._clock
        return before + time.perf_counter() - origin - self._paused_for

    def stop_requested(self) -> bool:
        self._read_stop_request()
        return self._stop.is_set()

    def _read_stop_request(self) -> None:
        # The runs panel cannot reach this kernel while a cell blocks it (run.wait() does), so it leaves a file
        # in the run folder; looking for it once a second costs nothing next to a step.
        now = time.monotonic()
        if now - self._last_request_check >= 1.0:
            self._last_request_check = now
            if self._writer and self.folder.take_stop_request():
                self.stop()

    def hold_if_paused(self, step: int) -> None:
        if self._unpaused.is_set():
            return
        self.emit(ev.Paused(step=step, elapsed=self.elapsed()))
        held = time.perf_counter()
        while not self._unpaused.wait(1.0):
            self._read_stop_request()
        self._paused_for += time.perf_counter() - held
        if not self._stop.is_set():
            self.emit(ev.Resumed(step=step, elapsed=self.elapsed()))

    def set_config(self, config: FinetuneConfig) -> None:
        self.config = config
        if self._writer:
            self.folder.write_config(config)

    # --- controls -----------------------------------------------------------------------------------

    def stop(self) -> None:
        """End at the next step boundary, saving a checkpoint and the adapter. Returns at once."""
        if self.status in LIVE_STATUSES:
            self._stop.set()
            self._unpaused.set()
            with self._lock:
                self.status = "stopping"

    def pause(self) -> None:
        """Hold the training thread before its next step; nothing is lost, and resume() continues."""
        if self.status in ("starting", "running"):
            self._unpaused.clear()
            with self._lock:
                self.status = "pausing"

    def resume(self) -> TrainingRun:
        """Continue a paused run, or restart a stopped, failed or interrupted one from its last checkpoint."""
        if self.status in ("pausing", "paused"):
            self._unpaused.set()
            return self
        if self.status == "finished":
            raise RunError(f"Run {self.name!r} has finished: to train it longer, call "
                           f"slmnb.finetune(name={self.name!r}, resume=True, max_steps=MORE).")
        if self.status in LIVE_STATUSES:
            return self
        self._start(resume=True)
        return self

    def wait(self, timeout: float | None = None) -> TrainingRun:
        """Block until the run ends (or timeout seconds pass); re-raises the exception of a failed run."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        if self._error is not None and not self.alive:
            raise self._error
        return self

    # --- using the result ---------------------------------------------------------------------------

    def predict(self, rows: Sequence[dict[str, Any] | str], max_new_tokens: int = 32,
                adapter: bool = True) -> list[str]:
        """Greedy completions of rows rendered with the run's prompt template (adapter=False: the base model).

        A row may also be a plain string, used as the prompt's text as is.
        """
        from slmnb.training.generate import Predictor

        if self._predictor is None:
            self._predictor = Predictor(self.config, self.output_path)
        return self._predictor.predict(rows, max_new_tokens=max_new_tokens, adapter=adapter)

    def score(self, split: str = "test", adapter: bool = True, max_new_tokens: int = 8) -> Any:
        """Greedy answers to a split of the run's data (slices work: test[:20]), scored by their first word.

        This is the accuracy of a classification-style task, such as the bundled tones.
        """
        from slmnb.data import read_splits, select_split
        from slmnb.training.generate import score

        rows = select_split(read_splits(self.config), split, "split")
        if not self.config.response_template:
            raise RunError("score() compares answers with the response_template, and this run has none: use "
                           "predict() and compare the answers yourself.")
        answers = self.predict(rows, max_new_tokens=max_new_tokens, adapter=adapter)
        return score(answers, rows, self.config.response_template)

    # --- the thread ---------------------------------------------------------------------------------

    def _start(self, resume: bool, data: Data | None = None) -> None:
        global _active
        if self.alive:
            raise RunError(f"Run {self.name!r} is training already: pause or stop it with its buttons or methods.")
        with _active_lock:
            if _active is not None and _active is not self and _active.status in LIVE_STATUSES:
                raise RunError(f"Run {_active.name!r} is still training: stop it (slmnb.active_run().stop()) or "
                               "wait for it before starting another.")
            _active = self
        _runs[self.dir.resolve()] = self
        data = data or load_data(self.config)
        resume_from = None
        if resume:
            resume_from = self.folder.last_checkpoint()
            step = int(resume_from.name.split("-")[-1]) if resume_from else 0
            kept = self.folder.keep_metrics_until(step) if self._writer else []
            self.history = [ev.from_metric(r) for r in kept]
        self._stop.clear()
        self._unpaused.set()
        self._error = None
        self._paused_for = 0.0
        self._clock = (time.perf_counter(), float(self.folder.read_state().get("elapsed", 0.0)) if resume else 0.0)
        self.status = "starting"
        if self._writer:
            self.folder.take_stop_request()  # a request left for an earlier session of this run is stale
            self.folder.update_state(status="starting", name=self.name, started_at=time.time(), pid=os.getpid(),
                                     reason=None, ended_at=None)
        release_openmp_pool()  # this thread's idle pool would slow the training thread's (see openmp.py)
        self._thread = threading.Thread(target=self._work, args=(data, resume_from), daemon=True,
                                        name=f"slmnb-{self.name}")
        self._thread.start()

    def _work(self, data: Data, resume_from: Path | None) -> None:
        global _active
        from slmnb.training import engine

        try:
            outcome, output, step = engine.train(self.config, data, self.folder, self, resume_from)
            if outcome == "stopped":
                self.emit(ev.Stopped(step=step, elapsed=self.elapsed(), output_path=str(output)))
            else:
                self.emit(ev.Finished(step=step, elapsed=self.elapsed(), output_path=str(output), reason=outcome))
        except BaseException as exc:
            self._error = exc
            if self._writer:
                self.folder.error_log.write_text(traceback.format_exc(), encoding="utf-8")
            self.emit(ev.Failed(step=self.step, elapsed=self.elapsed(), reason=failure_reason(exc, self.folder)))
        finally:
            with _active_lock:
                if _active is self:
                    _active = None
            gc.collect()


def _status_after(event: ev.Event, status: str) -> str:
    if isinstance(event, ev.Started):
        return "stopping" if status == "stopping" else "running"
    if isinstance(event, ev.Paused):
        return "paused"
    if isinstance(event, ev.Resumed):
        return "running"
    for kind, ended in ENDED_STATUS.items():
        if isinstance(event, kind):
            return ended
    return status


def failure_reason(exc: BaseException, folder: RunFolder) -> str:
    """One sentence: ours as is; anything else by type and first line, with where the traceback went."""
    if isinstance(exc, SlmnbError):
        return str(exc)
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {first} (full traceback in {folder.error_log})."


# --- starting and opening runs ---------------------------------------------------------------------


def finetune(config: FinetuneConfig | dict[str, Any] | str | Path | None = None, *, resume: bool = False,
             listeners: Iterable[Listener] = (), **overrides: Any) -> TrainingRun:
    """Start a fine-tuning run in a background thread and return it at once.

    The config and its data are checked here, so a mistake raises a ConfigError before any thread starts.
    With resume=True the run named by the config continues from its last checkpoint; its saved config is used,
    with `overrides` applied (max_steps=... trains it longer).
    """
    if resume:
        base = load_config(config) if config is not None else None
        name = overrides.pop("name", None) or (base.name if base else None)
        output_dir = overrides.pop("output_dir", None) or (base.output_dir if base else None)
        folder = RunFolder(output_dir or Path(RUNS_DIR) / (name or ""))
        if (not name and not output_dir) or not folder.config_path.is_file():
            raise RunError(f"There is no run to resume at {folder.path}: give the name of an existing run, or "
                           "start a new one without resume=True.")
        config = folder.read_config().replace(**overrides)
        run = existing_run(folder.path) or TrainingRun(config, folder)
        if not run.alive:  # a live run keeps its config; _start refuses it below
            run.config = config
    else:
        config = with_default_templates(named(load_config(config, **overrides)))
        folder = RunFolder(config.output_dir or Path(RUNS_DIR) / (config.name or ""))
        if folder.exists():
            raise RunError(f"Run folder {folder.path} exists already: choose another name, or pass resume=True to "
                           "continue that run.")
        data = load_data(config)
        run = TrainingRun(config, folder)
        folder.write_config(config)
    for listener in listeners:
        run.subscribe(listener)
    run._start(resume=resume, data=None if resume else data)
    return run


def named(config: FinetuneConfig) -> FinetuneConfig:
    """Give an unnamed config a name made of its data, method and the time; output_dir follows the name."""
    if config.name:
        return config
    if config.data_name:
        label = Path(config.data_name).name
    elif config.data_files:
        label = Path(config.data_files[0]).stem
    else:
        label = "rows"
    name = f"{label}-{config.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 1
    while (Path(RUNS_DIR) / name).exists():
        suffix += 1
        name = f"{label}-{config.method}-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
    return config.replace(name=name)


def active_run() -> TrainingRun | None:
    return _active if _active is not None and _active.status in LIVE_STATUSES else None


def existing_run(path: Path) -> TrainingRun | None:
    """The TrainingRun object of a folder, if this process started it."""
    return _runs.get(path.resolve())


def list_runs(runs_dir: str | Path | None = None) -> list[TrainingRun]:
    """The runs in a runs folder (default: the current one), oldest first."""
    root = Path(runs_dir or RUNS_DIR)
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if (p / "config.yaml").is_file()]
    runs = [load_run(p) for p in folders]
    return sorted(runs, key=lambda r: (r.folder.read_state().get("started_at") or 0.0, r.name))


def load_run(name_or_dir: str | Path) -> TrainingRun:
    """Open a run from its folder (or its name under the runs folder), with its history replayed from disk."""
    path = Path(name_or_dir)
    if not (path / "config.yaml").is_file():
        path = Path(RUNS_DIR) / str(name_or_dir)
    folder = RunFolder(path)
    if not folder.config_path.is_file():
        raise RunError(f"No run called {str(name_or_dir)!r}: give a run folder or the name of a run in "
                       f"{Path(RUNS_DIR).resolve()}.")
    live = existing_run(path)
    if live is not None:
        return live
    run = TrainingRun(folder.read_config(), folder)
    run.history = [ev.from_metric(r) for r in folder.read_metrics()]
    state = folder.read_state()
    status = state.get("status", "created")
    if status in LIVE_STATUSES:
        pid = state.get("pid")
        # A live status written by a process that is gone (or by this one, which has no such run) was cut short.
        if not pid or pid == os.getpid() or not process_alive(int(pid)):
            status = "interrupted"
    run.status = status
    return run
