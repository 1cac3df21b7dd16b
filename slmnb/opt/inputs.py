"""What a user hands to export and compare (a run, its options, an output folder), each checked into one sentence.

Everything here is cheap (a few small files and headers read), so `%opt export` can check it in the cell, at
once, before the minute-long builder starts in the background.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slmnb.errors import ExportError
from slmnb.opt.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    RETRAIN,
    check_base_fits,
    lora_rank,
    read_adapter_config,
    safetensors_shapes,
)

_BAD_NAME_CHARACTERS = ("/", "\\", "\0", "\n", "\r")


def open_run(target: Any) -> Any:
    """The TrainingRun of a run object, a run's folder, or the name of a run in ./runs.

    A name is only ever looked up inside the runs folder: '../../x' or 'a/b' that is no run folder is refused
    rather than followed out of it.
    """
    from slmnb.training.run import TrainingRun
    from slmnb.training.runs import load_run

    if isinstance(target, TrainingRun):
        return target
    if not isinstance(target, str | Path):
        raise ExportError(f"Give a run, the name of a run or a run folder, not {type(target).__name__}.")
    text = str(target)
    if not text.strip():
        raise ExportError("The run name is empty: give the name of a run in ./runs or a run folder.")
    if "\0" in text:
        raise ExportError(f"{text!r} is not a run name: names are letters, digits, '.', '_' and '-'.")
    path = Path(text).expanduser()
    if (path / "config.yaml").is_file():
        return load_run(path)  # a run folder, wherever it is
    if any(c in text for c in _BAD_NAME_CHARACTERS) or text.strip(".") == "":
        raise ExportError(f"{text!r} is neither a run folder (no config.yaml there) nor a run name (a name has no "
                          "'/' and is not '..'): give the name of a run in ./runs or the folder of one.")
    return load_run(text)


def open_runs(targets: Sequence[Any]) -> list[Any]:
    return [open_run(target) for target in targets]


def check_choice(option: str, value: Any, choices: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ExportError(f"{option} {value!r} is not supported: use one of {', '.join(choices)}.")


def check_output(output: Any) -> Path:
    """The output folder, if it is a folder or can become one; else one sentence naming the problem."""
    if not isinstance(output, str | Path) or not str(output).strip() or "\0" in str(output):
        raise ExportError(f"output {output!r} is not a folder path: give a folder such as 'onnx'.")
    path = Path(output).expanduser()
    if path.exists() and not path.is_dir():
        raise ExportError(f"The output {path} is a file: give a folder (or a name for a new one) as output.")
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise ExportError(f"The output {path} is inside {existing}, which is a file: give another output folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ExportError(f"The output {path} cannot be written here ({existing} is not writable): give another "
                          "output folder.")
    return path


def check_saved_output(run: Any) -> None:
    """The run's saved adapter (or model) is complete: its config parses and its weights are as long as they say.

    A run stopped before its first save, killed mid-save or copied in part fails here in a sentence.
    """
    folder = run.output_path
    if not folder.is_dir():
        raise ExportError(f"Run {run.name!r} has no saved {'model' if run.config.method == 'full' else 'adapter'} "
                          f"(status {run.status}): resume it (slmnb.finetune(name={run.name!r}, resume=True)) and "
                          "let it finish or stop, then export.")
    if run.config.method == "full":
        _check_full_model(folder)
        return
    config = read_adapter_config(folder)
    lora_rank(folder, config)
    if not safetensors_shapes(folder / ADAPTER_WEIGHTS):
        raise ExportError(f"{folder / ADAPTER_WEIGHTS} holds no weights: {RETRAIN}.")
    named = config.get("base_model_name_or_path")
    model = run.config.model_name_or_path
    if isinstance(named, str) and named and not _same_model(named, model):
        raise ExportError(f"Run {run.name!r}'s adapter was trained on {named} ({folder / ADAPTER_CONFIG}), but the "
                          f"run's config names {model}: export a run of {named}, or set model_name_or_path back "
                          "to it in the run's config.yaml.")


def _same_model(named: str, model: str) -> bool:
    if named == model:
        return True
    first, second = Path(named).expanduser(), Path(model).expanduser()
    try:
        return first.is_dir() and second.is_dir() and first.resolve() == second.resolve()
    except OSError:
        return False


def _check_full_model(folder: Path) -> None:
    weights = sorted(folder.glob("*.safetensors"))
    if not (folder / "config.json").is_file() or not weights:
        raise ExportError(f"The model folder {folder} is incomplete (no config.json or no weights): resume the run or "
                          "train it again to save the whole model, then export.")
    for path in weights:
        safetensors_shapes(path)


def check_base(run: Any, hf_dir: Path) -> dict[str, Any]:
    """The run's adapter fits its base model's layers and sizes; returns the base model's config.json."""
    config = base_config(hf_dir, run.config.model_name_or_path)
    if run.config.method != "full":
        shapes = safetensors_shapes(run.output_path / ADAPTER_WEIGHTS)
        check_base_fits(shapes, config, run.output_path, run.config.model_name_or_path)
    return config


def base_config(hf_dir: Path, name: str) -> dict[str, Any]:
    try:
        config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        config = None
    if not isinstance(config, dict):
        raise ExportError(f"The base model {name} has no readable config.json in {hf_dir}: point "
                          "model_name_or_path at a folder saved with save_pretrained.")
    return config


def model_size(config: dict[str, Any], name: str) -> tuple[int, float]:
    """Layers, and roughly how many parameters the decoder has (for picking generation threads)."""
    try:
        layers, hidden = int(config["num_hidden_layers"]), int(config["hidden_size"])
        inner = int(config.get("intermediate_size") or 4 * hidden)
        vocab = int(config.get("vocab_size") or 0)
    except (KeyError, TypeError, ValueError, OverflowError):
        raise ExportError(f"The config.json of {name} has no usable num_hidden_layers and hidden_size, which the "
                          "ONNX builder needs: export a model saved with save_pretrained.") from None
    return layers, layers * (4 * hidden * hidden + 3 * hidden * inner) + vocab * hidden
