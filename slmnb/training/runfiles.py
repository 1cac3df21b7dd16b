"""The run folder: the record of a run that outlives the process.

    config.yaml     the resolved config (loads back to an equal FinetuneConfig)
    run.json        status, step, timings, the effective precision and a failure's reason
    metrics.jsonl   one JSON object per step or evaluation, flushed as it is written
    adapter/        the LoRA adapter in peft format (model/ for full fine-tuning), replaced atomically
    checkpoints/    Trainer checkpoints, for resume
    error.log       the traceback of a failed run
    stop-requested  left by another process (the JupyterLab runs panel) to stop the run at its next step
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from slmnb.config import FinetuneConfig, load_config
from slmnb.paths import replace_folder, write_text_atomic


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.state_path = self.path / "run.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self.error_log = self.path / "error.log"
        self.stop_request = self.path / "stop-requested"

    def exists(self) -> bool:
        return self.state_path.is_file()

    def output_path(self, method: str) -> Path:
        return self.path / ("model" if method == "full" else "adapter")

    # --- config and state ---------------------------------------------------------------------------

    def write_config(self, config: FinetuneConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.config_path, config.to_yaml())

    def read_config(self) -> FinetuneConfig:
        return load_config(self.config_path)

    def read_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def update_state(self, **values: Any) -> dict[str, Any]:
        state = {**self.read_state(), **values, "updated_at": time.time()}
        self.path.mkdir(parents=True, exist_ok=True)
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

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        records = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # the line a crash cut short
                continue
        return records

    def keep_metrics_until(self, step: int) -> list[dict[str, Any]]:
        """On resume from checkpoint `step`, drop the lines of steps that will be trained again."""
        kept = [r for r in self.read_metrics() if r["step"] <= step]
        write_text_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept

    # --- weights ------------------------------------------------------------------------------------

    def save_output(self, model: Any, config: FinetuneConfig, tokenizer: Any = None) -> Path:
        """Write the adapter (or full model) to a temp folder and move it into place when complete."""
        target = self.output_path(config.method)
        tmp = self.path / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
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
        return target

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint; Trainer writes trainer_state.json last, so it marks completeness."""
        if not self.checkpoints.is_dir():
            return None
        complete = [p for p in self.checkpoints.glob("checkpoint-*")
                    if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
        return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
