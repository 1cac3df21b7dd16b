"""TrainingRun: one fine-tuning job, trained in a background thread of this process.

The thread sends events; the run keeps them in `history`, mirrors them into the run folder and passes them to
listeners. Stop, pause and resume act between optimizer steps (stop also within tokenization and evaluation), so
no state is lost. Runs are started and opened through `slmnb.training.runs.Runs`.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from slmnb.config import FinetuneConfig
from slmnb.data import Data, load_data
from slmnb.errors import ExportError, RunError, SlmnbError
from slmnb.training import events as ev
from slmnb.training.base import int4_base_pending, on_int4_base
from slmnb.training.failure import TRAINING, failure_reason
from slmnb.training.openmp import release_openmp_pool
from slmnb.training.runfiles import RunFolder
from slmnb.training.states import RunState

log = logging.getLogger(__name__)
Listener = Callable[[ev.Event], None]

# Fields a resume may change: how long and how often, not what is trained (that would not fit the checkpoint).
RESUMABLE_FIELDS = ("max_steps", "num_train_epochs", "eval_steps", "save_steps", "logging_steps",
                    "early_stopping_patience", "precision", "gradient_checkpointing")
_ENDING = {ev.Finished: RunState.FINISHED, ev.Stopped: RunState.STOPPED, ev.Failed: RunState.FAILED}


class StopNow(Exception):
    """Raised inside the training thread to leave tokenization or evaluation at once when a stop is asked for."""


class WaitInterrupted(RunError, KeyboardInterrupt):
    """The kernel's interrupt (or Ctrl-C) ended a wait() while the run trains on.

    Still a KeyboardInterrupt, so run-all stops at this cell and scripts stop as for any Ctrl-C; a RunError, so
    IPython shows its one sentence instead of a traceback through threading's frames.
    """


class TrainingRun:
    def __init__(self, config: FinetuneConfig, folder: RunFolder, status: RunState = RunState.CREATED) -> None:
        self.config = config
        self.folder = folder
        self.history: list[ev.Event] = []
        self.status = status
        self.phase: str | None = None  # what a STARTING run is busy with, when it takes long (the dashboard says it)
        self._listeners: list[Listener] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._unpaused = threading.Event()
        self._unpaused.set()
        self._thread: threading.Thread | None = None
        self._folder_lock: IO[str] | None = None
        self._error: BaseException | None = None
        self._predictor: Any = None
        self._clock = (time.perf_counter(), 0.0)  # (origin, elapsed before this session of the run)
        self._paused_for = 0.0
        self._last_state_write = 0.0
        self._last_request_check = 0.0
        self._latest: dict[str, float] = {}  # the last loss, eval loss and perplexity, for run.json
        self._record_failed = False
        self._waiters = 0  # cells blocked in wait() on this run: the kernel hears no widget clicks meanwhile
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
        if started:
            return started[-1].max_steps
        value = self._saved_state().get("max_steps")
        return value if isinstance(value, int) and not isinstance(value, bool) else self.config.max_steps

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
        # A repr is a snapshot that stays in the cell's output: it says when it was taken, not to read as live.
        return (f"<TrainingRun {self.name!r}: {self.status} at step {self.step}/{self.max_steps or '?'} as of "
                f"{time.strftime('%H:%M:%S')}, in {self.dir}>")

    def _saved_state(self) -> dict[str, Any]:
        try:
            return self.folder.read_state()
        except RunError:
            return {}

    # --- listening ----------------------------------------------------------------------------------

    @property
    def listeners(self) -> tuple[Listener, ...]:
        with self._lock:
            return tuple(self._listeners)

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
        """Keep, record and pass on an event. Never raises: a full disk or a broken display must not end training."""
        with self._lock:
            self.history.append(event)
            self._move_to(_state_after(event, self.status))
            if self._writer:
                self._record(event)
            for listener in list(self._listeners):
                try:
                    listener(event)
                except Exception as exc:
                    # One line, once: a listener that fails once would fail on every event.
                    self._listeners.remove(listener)
                    log.warning("slmnb: a listener of run %r failed (%s: %s) and gets no more events.",
                                self.name, type(exc).__name__, exc)

    def _move_to(self, state: RunState) -> None:
        if state != self.status and self.status.can_become(state):
            self.status = state

    def _record(self, event: ev.Event) -> None:
        try:
            self._write_record(event)
        except OSError as exc:
            if not self._record_failed:  # the run goes on; the failure it causes later says why
                self._record_failed = True
                log.warning("slmnb: cannot write to run folder %s (%s); the run goes on.", self.dir,
                            exc.strerror or exc)

    def _write_record(self, event: ev.Event) -> None:
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
        state: dict[str, Any] = {"status": str(self.status), "step": event.step, "elapsed": event.elapsed,
                                 **self._latest}
        if isinstance(event, ev.Started):
            state.update(max_steps=event.max_steps, precision=event.precision, base_weights=event.base_weights,
                         pid=os.getpid())
        elif isinstance(event, ev.Failed):
            state["reason"] = event.reason
        if isinstance(event, ev.ENDED):
            state["ended_at"] = time.time()
        self.folder.update_state(**state)

    # --- what the engine calls from the training thread -----------------------------------------------

    def elapsed(self) -> float:
        origin, before = self._clock
        return before + time.perf_counter() - origin - self._paused_for

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def poll_requests(self) -> None:
        """Act on a stop request left in the run folder by another process (at most one look a second).

        The runs panel cannot reach this kernel while a cell blocks it (run.wait() does), so it leaves a file.
        """
        now = time.monotonic()
        if now - self._last_request_check >= 1.0:
            self._last_request_check = now
            if self._writer and self.folder.take_stop_request():
                self.stop()

    def check_stop(self) -> None:
        """Raise StopNow if a stop was asked for: the long parts (tokenizing, evaluating) call this often."""
        self.poll_requests()
        if self._stop.is_set():
            raise StopNow

    def hold_if_paused(self, step: int) -> None:
        if self._unpaused.is_set():
            return
        self.emit(ev.Paused(step=step, elapsed=self.elapsed()))
        held = time.perf_counter()
        while not self._unpaused.wait(0.5):
            self.poll_requests()
        self._paused_for += time.perf_counter() - held
        if not self._stop.is_set():
            self.emit(ev.Resumed(step=step, elapsed=self.elapsed()))

    # --- controls -----------------------------------------------------------------------------------

    def stop(self) -> None:
        """End at the next step boundary, saving a checkpoint and the adapter. Returns at once."""
        with self._lock:
            if self.status.live:
                self._stop.set()
                self._unpaused.set()
                self._move_to(RunState.STOPPING)

    def pause(self) -> None:
        """Hold the training thread before its next step; nothing is lost, and resume() continues."""
        with self._lock:
            if self.status in (RunState.STARTING, RunState.RUNNING):
                self._unpaused.clear()
                self._move_to(RunState.PAUSING)

    def resume(self, *, listeners: Sequence[Listener] = (), **overrides: Any) -> TrainingRun:
        """Continue: a paused run in place; an ended one from its last good checkpoint, with `overrides` applied.

        Only how long and how often may change on resume (max_steps, num_train_epochs, eval_steps, ...). A
        finished run trains only when given more steps or epochs.
        """
        with self._lock:
            if self.status in (RunState.PAUSING, RunState.PAUSED) and not overrides:
                self._unpaused.set()
                if self.status == RunState.PAUSING:  # not held yet: it simply goes on
                    self._move_to(RunState.RUNNING)
                return self
            if self.status.live or self.alive:
                change = f" with {', '.join(overrides)} changed" if overrides else ""
                raise RunError(f"Run {self.name!r} is training already ({self.status}): stop it first to resume "
                               f"it{change}.")
        config = self._resumed_config(overrides)
        data = load_data(config)
        checkpoint, notes = self.folder.last_checkpoint()
        done = int(checkpoint.name.split("-")[-1]) if checkpoint else 0
        if config.max_steps is not None and config.max_steps <= done:
            raise RunError(f"Run {self.name!r} already reached step {done} of max_steps {config.max_steps}: to "
                           f"train it longer, resume it with max_steps greater than {done}.")
        if self.status == RunState.FINISHED and config.max_steps == self.config.max_steps and \
                config.num_train_epochs <= self.config.num_train_epochs:
            raise RunError(f"Run {self.name!r} has finished: to train it longer, resume it with a larger "
                           "max_steps (or num_train_epochs).")
        for listener in listeners:
            self.subscribe(listener)
        self._launch(data, checkpoint, notes, config)
        return self

    def _resumed_config(self, overrides: dict[str, Any]) -> FinetuneConfig:
        config = self.config.replace(**overrides)  # checked and typed like any config
        fixed = sorted(k for k in overrides if k not in RESUMABLE_FIELDS and getattr(config, k, None) !=
                       getattr(self.config, k, None))
        if fixed:
            raise RunError(f"{', '.join(fixed)} cannot change when resuming run {self.name!r} (only "
                           f"{', '.join(RESUMABLE_FIELDS)} can): start a new run for that.")
        return config

    @property
    def waited_on(self) -> bool:
        """True while a cell blocks in wait() on this run: its kernel handles no widget click until that returns."""
        return self._waiters > 0

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Mark a blocking wait for its whole length: a loop of short wait(timeout) calls stays marked throughout."""
        with self._lock:
            self._waiters += 1
        try:
            yield
        finally:
            with self._lock:
                self._waiters -= 1

    def wait(self, timeout: float | None = None) -> TrainingRun:
        """Block until the run ends (or timeout seconds pass); a failed run raises its one-sentence reason.

        While it blocks, dashboards disable their buttons (the kernel would only act on a click after the wait).
        The kernel's interrupt ends the wait with WaitInterrupted and the run trains on.
        """
        thread = self._thread
        if thread is not None:
            deadline = None if timeout is None else time.monotonic() + timeout
            with self.waiting():
                try:
                    # Short sleeps, not thread.join(): on Python 3.11 an interrupt inside join() marks the thread
                    # as ended while it still trains (threading's _wait_for_tstate_lock releases its lock).
                    while thread.is_alive() and (deadline is None or time.monotonic() < deadline):
                        time.sleep(0.05)
                except KeyboardInterrupt:
                    if not thread.is_alive():
                        raise
                    raise WaitInterrupted(f"Stopped waiting for run {self.name!r}, which trains on: its "
                                          "dashboard's buttons work again, and run.wait() waits again.") from None
        if self._error is not None and not self.alive:
            if isinstance(self._error, SlmnbError):
                raise self._error
            raise RunError(failure_reason(self._error, self.folder.path, self.folder.error_log)) from self._error
        return self

    # --- using the result ---------------------------------------------------------------------------

    def predict(self, rows: Sequence[dict[str, Any] | str], max_new_tokens: int = 32,
                adapter: bool = True, progress: bool | Callable[[int, int], None] = True) -> list[str]:
        """Greedy completions of rows rendered with the run's prompt template (adapter=False: the base model).

        A row may also be a plain string, used as the prompt's text as is. Over more than one batch a bar shows
        rows done of total and the time left (progress=False hides it, a function gets (done, total) instead); the
        kernel's interrupt stops it cleanly.
        The model stays loaded for the next call: release() frees it.
        """
        return self._loaded().predict(rows, max_new_tokens=max_new_tokens, adapter=adapter, progress=progress)

    def _loaded(self) -> Any:
        from slmnb.training.generate import Predictor

        if self._predictor is None:
            self._predictor = Predictor(self.config, self.output_path)
        return self._predictor

    def release(self) -> None:
        """Free the models that predict() and evaluate() keep loaded (the next call loads them again)."""
        from slmnb.models import release_memory

        self._predictor = None
        release_memory()  # collect, and give the freed heap back to the system (glibc keeps it otherwise)

    def evaluate(self, split: str = "test", metrics: Sequence[str] | str | None = None, adapter: bool = True,
                 max_new_tokens: int | None = None, progress: bool | Callable[[int, int], None] = True) -> Any:
        """Greedy answers to a split (slices work: test[:20]; "eval" is the rows the run held out), scored.

        Returns an Evaluation: scores, each row's prompt, reference and answer, the rows it gets wrong, a confusion
        matrix for a classification, timing. metrics=None: the run's metrics (else chosen from the data) and the
        perplexity of the model's own loss on the split. adapter=False evaluates the base model.
        """
        from slmnb.evaluation import evaluate_run

        return evaluate_run(self, split, metrics, adapter=adapter, max_new_tokens=max_new_tokens, progress=progress)

    def to_olive_config(self, output: str | Path | None = None, precision: str | None = "int4",
                        adapters: str | None = None) -> Any:
        """Write an Olive run config that reproduces this run and its export (precision None: no export), with
        the run's rows beside it; `output` defaults to olive-config.json in the run folder. Returns what was
        written (print it for the `olive run` command and the notes)."""
        from slmnb.olive.writer import DEFAULT_FILE, write_olive_config

        export = None if precision is None else {"precision": precision, **({"adapters": adapters} if adapters else {})}
        started = [e for e in self.history if isinstance(e, ev.Started)]
        return write_olive_config(self.config, output or self.dir / DEFAULT_FILE, export,
                                  precision=started[-1].precision if started else None,
                                  trained_model=self.output_path if self.config.method == "full" else None)

    # --- the thread ---------------------------------------------------------------------------------

    def _launch(self, data: Data, checkpoint: Path | None, notes: Sequence[str] = (),
                config: FinetuneConfig | None = None, settle: bool = False) -> None:
        """Claim this process's training slot and the folder's lock, then start the thread (with `config`, a
        resume's changed config, written only once the folder is ours; `settle`: the model is built and the
        config settled against it in the thread, see Runs.start)."""
        if self.alive:
            raise RunError(f"Run {self.name!r} is training already: pause or stop it with its buttons or methods.")
        TRAINING.claim(self)
        try:
            if self._writer:
                self._folder_lock = self.folder.lock()
                self.folder.sweep()
            if config is not None and config != self.config:
                if self._writer:
                    self.folder.write_config(config)
                self.config = config
            step = int(checkpoint.name.split("-")[-1]) if checkpoint else 0
            # The steps after the checkpoint are trained again (all of them without one): drop their lines.
            kept = self.folder.keep_metrics_until(step) if self._writer else []
            self.history = [ev.from_metric(r) for r in kept]
            elapsed = self._saved_state().get("elapsed") if checkpoint else 0.0
            self._clock = (time.perf_counter(), float(elapsed) if isinstance(elapsed, int | float) else 0.0)
            # Training changes the weights: models predict() loaded before would answer from the old ones.
            self._predictor = None
            self._stop.clear()
            self._unpaused.set()
            self._error = None
            self._paused_for = 0.0
            self._record_failed = False
            self.status = RunState.STARTING
            if self._writer:
                self.folder.take_stop_request()  # a request left for an earlier session of this run is stale
                self.folder.update_state(status=str(RunState.STARTING), name=self.name, started_at=time.time(),
                                         pid=os.getpid(), reason=None, ended_at=None)
            # Set before the thread starts, so the dashboard shown next says it at once.
            if settle:
                self.phase = (f"Preparing {self.config.model_name_or_path} for its first use on this machine "
                              "(about 30 s, once): converting its weights...")
            elif int4_base_pending(self.config):
                self.phase = _quantizing(self.config)
            release_openmp_pool()  # this thread's idle pool would slow the training thread's (see openmp.py)
            self._thread = threading.Thread(target=self._work, args=(data, checkpoint, tuple(notes), settle),
                                            daemon=True,
                                            name=f"slmnb-{self.name}")
            self._thread.start()
        except BaseException:
            self._release()
            raise

    def _work(self, data: Data, checkpoint: Path | None, notes: tuple[str, ...], settle: bool) -> None:
        from slmnb.training import engine

        try:
            if settle:
                self._settle()
            notes += self._prepare_int4_base()
            result = engine.train(self.config, data, self.folder, self, checkpoint, notes)
            output = str(result.output or "")
            if result.outcome == "stopped":
                self.emit(ev.Stopped(step=result.step, elapsed=self.elapsed(), output_path=output))
            else:
                self.emit(ev.Finished(step=result.step, elapsed=self.elapsed(), output_path=output,
                                      reason=result.outcome))
        except BaseException as exc:
            self._error = exc
            if self._writer:
                # A checkpoint cut short by the failure is useless, and on a full disk its space is what lets
                # run.json and error.log take the reason.
                self.folder.remove_partial_checkpoints()
            if self._writer and not isinstance(exc, SlmnbError):
                try:
                    self.folder.error_log.write_text(traceback.format_exc(), encoding="utf-8")
                except OSError:
                    pass  # the reason still reaches run.json if anything can
            reason = failure_reason(exc, self.folder.path, self.folder.error_log)
            self.emit(ev.Failed(step=self.step, elapsed=self.elapsed(), reason=reason))
        finally:
            self._release()
            gc.collect()

    def _settle(self) -> None:
        """Build the model on its first use, with a phase the dashboard shows, then settle the config against it."""
        from slmnb.models import quiet_libraries
        from slmnb.training.prepare import settled_fields

        quiet_libraries()  # the conversion's progress bars would land in whichever cell runs at the time
        try:
            settled = settled_fields(self.config)
        finally:
            self.phase = None
        if settled:
            self.config = self.config.replace(**settled)
            if self._writer:
                self.folder.write_config(self.config)

    def _prepare_int4_base(self) -> tuple[str, ...]:
        """Build the int4 base the run trains on, once per model, with a phase the dashboard shows.

        A model the ONNX builder cannot quantize trains on its original weights instead, and the run says so (its
        config.yaml too): it could not be exported to int4 either, and training should not fail for it.
        """
        if not on_int4_base(self.config):
            return ()
        if int4_base_pending(self.config):
            self.phase = _quantizing(self.config)
        try:
            from slmnb.opt.deployed import deployed_base

            deployed_base(self.config.model_name_or_path, "int4")
        except ExportError as exc:
            self.config = self.config.replace(base_weights="original")
            if self._writer:
                self.folder.write_config(self.config)
            return (f"Trained on the original weights: the int4 base could not be built ({exc})",)
        finally:
            self.phase = None
        return ()

    def _release(self) -> None:
        if self._folder_lock is not None:
            self._folder_lock.close()
            self._folder_lock = None
        TRAINING.release(self)


def _quantizing(config: FinetuneConfig) -> str:
    return (f"Quantizing {config.model_name_or_path} as its int4 ONNX export will store it, so the fine-tune learns "
            "on the weights it will run with (once per model, about a minute)...")


def _state_after(event: ev.Event, status: RunState) -> RunState:
    if isinstance(event, ev.Started):
        # A pause or stop asked for while the model loaded still holds once training starts.
        return status if status in (RunState.PAUSING, RunState.STOPPING) else RunState.RUNNING
    if isinstance(event, ev.Paused):
        return RunState.PAUSED
    if isinstance(event, ev.Resumed):
        return RunState.RUNNING
    for kind, ended in _ENDING.items():
        if isinstance(event, kind):
            return ended
    return status
