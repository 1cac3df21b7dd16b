"""The run folder: the record of a run that outlives the process.

    config.yaml     the resolved config (loads back to an equal FinetuneConfig)
    run.json        status, step, timings, the effective precision, a failure's reason, and the generation
                    metrics' last and best scores ("metrics": {"last": {...}, "best": {...}})
    metrics.jsonl   one JSON object per step or evaluation, flushed as it is written
    adapter/        the LoRA adapter in peft format (model/ for full fine-tuning), replaced atomically
    checkpoints/    Trainer checkpoints, for resume
    error.log       the traceback of a failed run
    stop-requested  left by another process (the JupyterLab runs panel) to stop the run at its next step
    .lock           held (flock) by the one process training the run; the kernel drops it when that process dies

Everything read here may have been damaged by a crash, a full disk or a person: what cannot be read raises a
RunError sentence (`CorruptRun`), and a cut-short metrics line is skipped.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import time
import zipfile
from pathlib import Path
from typing import IO, Any

from slmnb.config import FinetuneConfig, load_config
from slmnb.errors import ConfigError, RunError
from slmnb.paths import replace_folder, sweep_temps, temp_sibling, write_text_atomic
from slmnb.weightfiles import read_header


class CorruptRun(RunError):
    """A run folder whose config.yaml or run.json cannot be read."""


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.state_path = self.path / "run.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self.error_log = self.path / "error.log"
        self.stop_request = self.path / "stop-requested"
        self.lock_path = self.path / ".lock"

    def is_run(self) -> bool:
        """Whether this folder is a run's (it has a config or a state), even a damaged one."""
        try:
            return self.config_path.is_file() or self.state_path.is_file()
        except OSError:  # a name too long, or a place such as /proc: no run there, and create() says why
            return False

    def output_path(self, method: str) -> Path:
        return self.path / ("model" if method == "full" else "adapter")

    # --- creating and claiming ------------------------------------------------------------------------

    def create(self, config: FinetuneConfig) -> None:
        """Make this folder a new run's, exclusively: two processes creating the same run cannot both succeed.

        A folder that exists is only taken when empty (made by hand for the run); anything else is refused, so
        a user's files are never mixed into a run or deleted by it.
        """
        try:
            self.path.mkdir(parents=True)
        except FileExistsError:
            if self.is_run():
                raise RunError(f"Run folder {self.path} exists already: choose another name, or resume that run "
                               "(resume=True, --resume, or %finetune resume NAME).") from None
            # Hidden entries are a creator's temp files or lock: a race with another creator, not a user's files.
            if not self.path.is_dir() or any(not p.name.startswith(".") for p in self.path.iterdir()):
                raise RunError(f"output_dir {self.path} exists and is not a slmnb run folder: choose a new folder "
                               "name, so nothing in it is overwritten.") from None
        except OSError as exc:
            raise RunError(f"Cannot create the run folder {self.path} ({exc.strerror or exc}): choose another "
                           "output_dir or name.") from None
        # The claim is run.json made with O_EXCL: of two creators of an empty folder, only one gets it.
        tmp = temp_sibling(self.state_path)
        tmp.write_text(json.dumps({"status": "created", "name": config.name, "created_at": time.time()}),
                       encoding="utf-8")
        try:
            os.link(tmp, self.state_path)
        except FileExistsError:
            raise RunError(f"Run folder {self.path} exists already (another process just created it): choose "
                           "another name.") from None
        finally:
            tmp.unlink()
        write_text_atomic(self.config_path, config.to_yaml())

    def lock(self) -> IO[str]:
        """Hold the folder's training lock; returns the open handle, which keeps the lock until it is closed.

        flock belongs to the open file, so the kernel drops it when the process dies, however it dies: a crashed
        run never leaves its folder locked.
        """
        handle = open(self.lock_path, "a")  # kept open (and locked) by the caller while it trains
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            pid = self.read_state().get("pid")
            who = f"process {pid}" if pid and pid != os.getpid() else "another process"
            raise RunError(f"Run {self.path.name!r} is being trained by {who}: stop it there, or wait for it to "
                           "end.") from None
        return handle

    def locked_elsewhere(self) -> bool:
        """Whether some process holds the training lock now (a shared lock cannot be had while it does)."""
        try:
            with open(self.lock_path) as handle:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
        except BlockingIOError:
            return True
        except OSError:
            return False  # no lock file: nothing ever trained here under a lock
        return False

    def sweep(self) -> None:
        """Remove temp folders and files that a killed writer left in the run folder and its checkpoints."""
        sweep_temps(self.path)
        sweep_temps(self.checkpoints)
        self.remove_partial_checkpoints()

    # --- config and state ---------------------------------------------------------------------------

    def write_config(self, config: FinetuneConfig) -> None:
        write_text_atomic(self.config_path, config.to_yaml())

    def read_config(self) -> FinetuneConfig:
        if not self.config_path.is_file():
            raise CorruptRun(f"Run folder {self.path} has no config.yaml: it was not made by slmnb, or was "
                             "damaged; start a new run.")
        try:
            return load_config(self.config_path)
        except ConfigError as exc:
            raise CorruptRun(f"The config.yaml of run {self.path.name!r} cannot be read ({_clause(exc)}): fix or "
                             "delete that file, or start a new run.") from None

    def read_state(self) -> dict[str, Any]:
        """run.json as a mapping; {} when there is none yet. A damaged one raises CorruptRun."""
        try:
            text = self.state_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            raise CorruptRun(f"The run.json of run {self.path.name!r} cannot be read ({_reason(exc)}): delete it "
                             "to reopen the run as interrupted.") from None
        try:
            state = json.loads(text)
        except json.JSONDecodeError:
            state = None
        if not isinstance(state, dict):
            raise CorruptRun(f"The run.json of run {self.path.name!r} is damaged (not a JSON object): delete it "
                             "to reopen the run as interrupted.")
        return state

    def update_state(self, **values: Any) -> dict[str, Any]:
        try:
            state = self.read_state()
        except CorruptRun:
            state = {}  # the writer owns the file: a damaged one is replaced
        state = {**state, **values, "updated_at": time.time()}
        write_text_atomic(self.state_path, json.dumps(state, indent=1))
        return state

    def take_stop_request(self) -> bool:
        """Whether another process asked this run to stop; the request is used up by reading it."""
        try:
            self.stop_request.unlink()
            return True
        except FileNotFoundError:
            return False

    # --- metrics ------------------------------------------------------------------------------------

    def append_metric(self, record: dict[str, Any]) -> None:
        # Opened per line: a crash loses at most the line being written, and readers never see a partial one
        # because a line is written with one call and flushed at once.
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
        if record.get("event") == "eval" and record.get("metrics"):
            self.summarize_metrics()

    def summarize_metrics(self, records: list[dict[str, Any]] | None = None) -> None:
        """Keep run.json's "metrics" ({"last": scores, "best": scores}) in step with the eval lines, so other
        processes (the runs panel, a runs table) show a run's scores without reading its metrics.jsonl."""
        summary = metric_summary(self.read_metrics() if records is None else records)
        if summary or "metrics" in self.read_state():
            self.update_state(metrics=summary or None)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The metric lines that make sense; cut-short or damaged lines are skipped, not fatal."""
        try:
            text = self.metrics_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        except OSError:
            return []
        records = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, RecursionError):  # the line a crash cut short
                continue
            if _metric_shape_ok(record):
                records.append(record)
        return records

    def keep_metrics_until(self, step: int) -> list[dict[str, Any]]:
        """On resume from checkpoint `step`, drop the lines of steps that will be trained again."""
        kept = [r for r in self.read_metrics() if r["step"] <= step]
        write_text_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        self.summarize_metrics(kept)
        return kept

    # --- weights ------------------------------------------------------------------------------------

    def save_output(self, model: Any, config: FinetuneConfig, tokenizer: Any = None) -> Path:
        """Write the adapter (or full model) to a temp folder and move it into place when complete."""
        target = self.output_path(config.method)
        tmp = temp_sibling(target)
        try:
            model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            adapter_config = tmp / "adapter_config.json"
            if adapter_config.is_file():
                # Record the model name the user gave, not this machine's cache path, so the run folder travels.
                values = json.loads(adapter_config.read_text(encoding="utf-8"))
                values["base_model_name_or_path"] = config.model_name_or_path
                adapter_config.write_text(json.dumps(values, indent=2), encoding="utf-8")
            replace_folder(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk must not leave half an adapter behind
        return target

    def remove_partial_checkpoints(self) -> None:
        """Delete checkpoints a failure cut short (no trainer_state.json): useless, and on a full disk in the way."""
        for _, path in self.checkpoints_newest_first():
            if not (path / "trainer_state.json").is_file():
                shutil.rmtree(path, ignore_errors=True)

    def checkpoints_newest_first(self) -> list[tuple[int, Path]]:
        if not self.checkpoints.is_dir():
            return []
        found = [(int(p.name.split("-")[-1]), p) for p in self.checkpoints.glob("checkpoint-*")
                 if p.name.split("-")[-1].isdigit()]
        return sorted(found, reverse=True)

    def last_checkpoint(self) -> tuple[Path | None, list[str]]:
        """The newest checkpoint that can be resumed from, and a note for each newer one that was skipped."""
        notes: list[str] = []
        for step, path in self.checkpoints_newest_first():
            problem = checkpoint_problem(path)
            if problem is None:
                return path, notes
            notes.append(f"checkpoint {step} is unusable ({problem}), so it was skipped")
        return None, notes


def metric_summary(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The generation metrics of a run's eval lines: the last evaluation's, and the best of each key over all of them
    (highest, or lowest for perplexity and losses); {} when no line has any."""
    from slmnb.metrics import greater_is_better

    last: dict[str, float] = {}
    best: dict[str, float] = {}
    for record in records:
        scores = record.get("metrics") if record.get("event") == "eval" else None
        if not isinstance(scores, dict) or not scores:
            continue
        numbers = {k: float(v) for k, v in scores.items()
                   if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
        last = numbers
        for key, value in numbers.items():
            better = max if greater_is_better(key) else min
            best[key] = better(best[key], value) if key in best else value
    return {"last": last, "best": best} if last else {}


def checkpoint_problem(path: Path) -> str | None:
    """What makes a Trainer checkpoint unusable, or None. Trainer writes trainer_state.json last."""
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no trainer_state.json: it was cut short"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "its trainer_state.json is damaged"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return "its trainer_state.json is damaged"
    weights = [p for name in ("adapter_model.safetensors", "model.safetensors") if (p := path / name).is_file()]
    if not weights:
        return "no weights"
    if not all(_safetensors_ok(p) for p in weights):
        return "its weights file is damaged"
    for name in ("optimizer.pt", "scheduler.pt"):
        part = path / name
        if part.exists() and not zipfile.is_zipfile(part):
            return f"its {name} is damaged"
    return None


def _safetensors_ok(path: Path) -> bool:
    """The header parses and the file is as long as the header says: a cut-short file fails."""
    found = read_header(path)
    try:
        return found is not None and path.stat().st_size >= found[1]
    except OSError:
        return False


def _metric_shape_ok(record: Any) -> bool:
    if not isinstance(record, dict) or record.get("event") not in ("step", "eval"):
        return False
    step, elapsed = record.get("step"), record.get("elapsed")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return False
    if not isinstance(elapsed, int | float) or isinstance(elapsed, bool):
        return False
    key = "loss" if record["event"] == "step" else "eval_loss"
    value = record.get(key)
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isinf(elapsed)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__.replace("Error", " error").strip().lower()


def _clause(exc: BaseException) -> str:
    """An error's sentence as a clause inside another sentence."""
    text = str(exc).rstrip(".")
    return text[:1].lower() + text[1:]
