"""Runs: a runs folder and the runs this process started in it; the one way runs are started, resumed and opened.

The notebook magic, the CLI, the Python API and the tests each hold a Runs. `slmnb.finetune()` and friends use
the kernel's default one, whose folder `%config FinetuneMagics.runs_dir` sets.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from slmnb.config import NAME_PATTERN, FinetuneConfig, load_config
from slmnb.data import default_templates, load_data
from slmnb.errors import RunError
from slmnb.training.failure import TRAINING
from slmnb.training.run import Listener, TrainingRun
from slmnb.training.runfiles import CorruptRun, RunFolder
from slmnb.training.states import RunState


class RunList(list[TrainingRun]):
    """Runs, oldest first; `skipped` says which folders could not be read, one sentence each."""

    skipped: list[str]


class Runs:
    def __init__(self, root: str | Path = "runs") -> None:
        self.root = Path(root)
        self._started: dict[Path, TrainingRun] = {}  # by resolved folder: reopening gives the same object

    def __repr__(self) -> str:
        return f"Runs({str(self.root)!r})"

    # --- starting and resuming ------------------------------------------------------------------------

    def start(self, config: FinetuneConfig | dict[str, Any] | str | Path | None = None, *,
              listeners: Iterable[Listener] = (), notes: Iterable[str] = (), **overrides: Any) -> TrainingRun:
        """Check the config and its data, settle what it leaves to the model, make the run folder, and train.

        Every mistake raises a one-sentence SlmnbError before any folder is made or thread started. `notes` are
        sentences the run's front ends show when it starts, beside its own.
        """
        from slmnb.checks import config_warnings
        from slmnb.models import needs_building
        from slmnb.training.prepare import settled_fields, settled_metrics

        TRAINING.check_free()
        config = load_config(config, **overrides)
        # What the config leaves open is filled in here and nothing changes it later: the name and a bundled
        # dataset's templates now, what the model decides (target_modules) once the data is checked, so a data
        # mistake is answered at once, without building or converting a model.
        filled: dict[str, Any] = {**self._name_for(config), **default_templates(config)}
        if config.learning_rate is None:  # the method's default, written down so the run says what it trained with
            filled["learning_rate"] = config.peak_learning_rate
        config = config.replace(**filled) if filled else config
        if config.loss:  # read, not run: the user's file runs in the training thread, where torch is imported
            from slmnb.training.loss import check as check_loss

            check_loss(config.loss)
        if config.training_args:  # their names and types, before any folder (transformers loads once, here)
            from slmnb.training.arguments import check_training_args

            check_training_args(config.training_args)
        folder = RunFolder(self._folder_path(config))
        # Under torchrun every rank trains, but rank 0 alone makes and writes the folder (it has a name already).
        writer = int(os.environ.get("RANK", "0")) == 0
        if writer and folder.is_run():
            raise RunError(f"Run folder {folder.path} exists already: choose another name, or resume that run "
                           "(resume=True, --resume, or %finetune resume NAME).")
        data = load_data(config)
        evaluation, metric_notes = settled_metrics(config, data.train)  # the metrics the responses call for
        config = config.replace(**evaluation) if evaluation else config
        # The embedded model's first use converts its GGUF (about 30 s, once per machine): that belongs under the
        # dashboard, in the training thread, and the checks that read the model's layers follow it there.
        settle_later = needs_building(config.model_name_or_path)
        if not settle_later:
            settled = settled_fields(config)
            config = config.replace(**settled) if settled else config
        if writer:
            folder.create(config)
        run = TrainingRun(config, folder)
        self._started[folder.path.resolve()] = run
        for listener in listeners:
            run.subscribe(listener)
        # Likely mistakes (learning_rate: 5) train as asked, and every front end says so: they are the notes.
        run._launch(data, checkpoint=None, notes=[*notes, *metric_notes, *config_warnings(config)],
                    settle=settle_later)
        return run

    def resume(self, name_or_dir: str | Path, *, listeners: Iterable[Listener] = (), **overrides: Any) -> TrainingRun:
        """Continue a run: a paused one in place, an ended one from its last good checkpoint with overrides."""
        return self.open(name_or_dir).resume(listeners=list(listeners), **overrides)

    # --- opening and listing --------------------------------------------------------------------------

    def open(self, name_or_dir: str | Path) -> TrainingRun:
        """A run by name (in this runs folder) or by folder, with its history replayed from disk."""
        folder = self._find(name_or_dir)
        started = self._started.get(folder.path.resolve())
        if started is not None:
            return started
        holder = TRAINING.holder
        if holder is not None and holder.dir.resolve() == folder.path.resolve():
            return holder
        from slmnb.training import events as ev

        config = folder.read_config()
        state = folder.read_state()
        status = RunState.read(state.get("status", "created"))
        if status is None:
            raise CorruptRun(f"The run.json of run {folder.path.name!r} names an unknown status "
                             f"{str(state.get('status'))[:40]!r}: delete it to reopen the run as interrupted.")
        if status.live and not folder.locked_elsewhere():
            status = RunState.INTERRUPTED  # the process that trained it is gone
        run = TrainingRun(config, folder, status)
        run.history = [ev.from_metric(r) for r in folder.read_metrics()]
        return run

    def list(self) -> RunList:
        """The runs in the folder, oldest first; a damaged folder is skipped with a note, never fatal."""
        runs, skipped = [], []
        try:
            folders = sorted(p for p in self.root.iterdir() if p.is_dir() and RunFolder(p).is_run())
        except OSError:
            folders = []
        for path in folders:
            try:
                runs.append(self.open(path))
            except RunError as exc:
                skipped.append(str(exc))
        result = RunList(sorted(runs, key=_started_at))
        result.skipped = skipped
        return result

    def active(self) -> TrainingRun | None:
        """The run training in this process, if any."""
        holder = TRAINING.holder
        return holder if holder is not None and holder.status.live else None

    # --- names and folders -----------------------------------------------------------------------------

    def _name_for(self, config: FinetuneConfig) -> dict[str, str]:
        """A name for an unnamed config, made of its data, method and the time (or its output_dir's name)."""
        if config.name:
            return {}
        if config.output_dir:
            return {"name": _safe_name(Path(config.output_dir).name)}
        if config.data_name:
            label = Path(config.data_name).name
        elif config.data_files:
            label = Path(config.data_files[0]).stem
        else:
            label = "rows"
        stem = _safe_name(f"{label}-{config.method}-{time.strftime('%Y%m%d-%H%M%S')}")
        name, suffix = stem, 1
        while (self.root / name).exists():
            suffix += 1
            name = f"{stem}-{suffix}"
        return {"name": name}

    def _folder_path(self, config: FinetuneConfig) -> Path:
        if config.output_dir:
            return Path(config.output_dir).expanduser()
        return self.root / str(config.name)

    def _find(self, name_or_dir: str | Path) -> RunFolder:
        text = str(name_or_dir)
        if isinstance(name_or_dir, Path) or os.sep in text or text.startswith(("~", ".")):
            folder = RunFolder(Path(text).expanduser())
            if not folder.is_run():
                raise RunError(f"{text!r} is not a run folder: give the name of a run in {self.root.resolve()} "
                               "or the path of a run folder.")
            return folder
        if not NAME_PATTERN.fullmatch(text):
            raise RunError(f"{text[:60]!r} is not a run name: run names use letters, digits, '.', '_' and '-'.")
        folder = RunFolder(self.root / text)
        if not folder.is_run():
            raise RunError(f"No run called {text!r} in {self.root.resolve()}: see the runs with %finetune runs "
                           "(or slmnb.list_runs()).")
        return folder


def _started_at(run: TrainingRun) -> tuple[float, str]:
    try:
        value = run.folder.read_state().get("started_at")
    except RunError:
        value = None
    return (float(value) if isinstance(value, int | float) else 0.0, run.name)


def _safe_name(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in text).lstrip("._-")
    return cleaned[:80] or "run"


# The kernel's runs folder, for the functions below; the notebook magic points it elsewhere with %config.
DEFAULT = Runs()


def finetune(config: FinetuneConfig | dict[str, Any] | str | Path | None = None, *, resume: bool = False,
             listeners: Iterable[Listener] = (), **overrides: Any) -> TrainingRun:
    """Start a fine-tuning run in a background thread and return it at once.

    The config and its data are checked here, so a mistake raises a ConfigError before any thread starts.
    With resume=True the run named by the config (or by name=/output_dir=) continues from its last good checkpoint,
    with `overrides` applied (max_steps=... trains it longer).
    """
    from slmnb.olive.runconfig import olive_values, read_olive_config

    olive = olive_values(config)
    if olive is not None and not resume:  # an Olive run config: its training part; the keyword arguments win
        job = read_olive_config(olive, overrides=overrides)
        note = (f"The Olive config's export (precision {job.export['precision']}, adapters {job.export['adapters']}) "
                f"is left to you: slmnb.export(run, precision='{job.export['precision']}', "
                f"adapters='{job.export['adapters']}') once the run finishes." if job.export else None)
        return DEFAULT.start(job.config, listeners=listeners, notes=[note] if note else [])
    if not resume:
        return DEFAULT.start(config, listeners=listeners, **overrides)
    base = load_config(config) if config is not None else None
    name = overrides.pop("name", None) or (base.name if base else None)
    output_dir = overrides.pop("output_dir", None) or (base.output_dir if base else None)
    if output_dir:
        return DEFAULT.resume(Path(str(output_dir)).expanduser(), listeners=listeners, **overrides)
    if not name:
        raise RunError("resume=True needs the run to continue: give name= (or a config with a name).")
    return DEFAULT.resume(str(name), listeners=listeners, **overrides)


def load_run(name_or_dir: str | Path) -> TrainingRun:
    """Open a run from its folder (or its name under the runs folder), with its history replayed from disk."""
    return DEFAULT.open(name_or_dir)


def list_runs(runs_dir: str | Path | None = None) -> RunList:
    """The runs in a runs folder (default: the current one), oldest first."""
    return (Runs(runs_dir) if runs_dir is not None else DEFAULT).list()


def active_run() -> TrainingRun | None:
    return DEFAULT.active()
