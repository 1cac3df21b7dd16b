"""Settle what a config leaves to the model, before any thread starts: the training layer never changes it later.

The model's Linear layers are read from the safetensors headers of its folder (JSON at the start of each file: a
few milliseconds, no torch import, so the cell still returns at once), so `target_modules` is resolved and checked,
and lora_r checked against the layers, before anything trains. A folder without safetensors is built on the meta
device instead (a few seconds of imports, no weights).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slmnb.checks import layer_numbers
from slmnb.config import DEFAULT_EVAL_GENERATE_SAMPLES, FinetuneConfig, check_metric_for_best_model
from slmnb.data import render
from slmnb.errors import ConfigError
from slmnb.models import model_folder
from slmnb.weightfiles import read_header

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def settle(config: FinetuneConfig) -> FinetuneConfig:
    """The config with target_modules resolved for the architecture, checked against the model's layers."""
    fields = settled_fields(config)
    return config.replace(**fields) if fields else config


def settled_fields(config: FinetuneConfig) -> dict[str, Any]:
    """The fields the model and method decide (target_modules, base_weights), after checking the model can be read."""
    fields = _model_fields(config)
    if config.base_weights == "auto":
        # LoRA trains on the base as the default export stores it, so the int4 export answers as the fine-tune did
        # (BENCHMARKS.md, int4 fidelity); qlora has its own 4-bit base and full fine-tuning changes every weight.
        fields["base_weights"] = "int4" if config.method == "lora" else "original"
    return fields


# The note that says which metrics a run chose: information, where the other notes are warnings (front ends that
# colour warnings tell the two apart by this start).
METRICS_NOTE = "metrics: "


def settled_metrics(config: FinetuneConfig, train_rows: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """What the data decides about evaluation (the metrics, how many rows generation-eval answers), and a note
    saying which metrics were chosen and why. Cheap: the responses are rendered, not tokenized.

    A text_template run has no response to compare an answer with: it gets no metrics and no generation-eval.
    """
    from slmnb import metrics

    fields: dict[str, Any] = {}
    notes: list[str] = []
    if not config.response_template:
        if config.eval_generate_samples is None:
            fields["eval_generate_samples"] = 0
            notes.append(f"{METRICS_NOTE}none, since a text_template run has no separate answer to score (give "
                         "prompt_template + response_template to score generated answers)")
        check_metric_for_best_model(config, [])
        return fields, notes
    names = config.metrics
    if names is None:
        names, why = metrics.choose([render(config.response_template, row, "response_template")
                                     for row in train_rows])
        fields["metrics"] = names
        notes.append(f"{METRICS_NOTE}{', '.join(names)} ({why})")
    if config.eval_generate_samples is None:
        fields["eval_generate_samples"] = DEFAULT_EVAL_GENERATE_SAMPLES
    check_metric_for_best_model(config, names)
    return fields, notes


def _model_fields(config: FinetuneConfig) -> dict[str, Any]:
    folder = model_folder(config.model_name_or_path)
    if Path(folder).is_dir() and not any((Path(folder) / name).is_file() for name in _TOKENIZER_FILES):
        raise ConfigError(f"The model folder {folder} has no tokenizer: save one into it "
                          "(tokenizer.save_pretrained(folder)).")
    linears = linear_layers(folder)
    if config.method == "full":
        return {}
    if config.layers_to_transform:
        _check_layers(config, linears)
    # Empty means every linear layer of the blocks: QLoRA's finding, and the search behind slmnb's defaults (on the
    # embedded model all-linear beat peft's q_proj + v_proj at equal learning rate; BENCHMARKS.md, "Search and the
    # defaults").
    targets = config.target_modules or "all-linear"
    if targets == "all-linear":
        widths = [min(shape) for shape in linears.values()]
    else:
        unmatched = [t for t in targets if not any(_matches(name, t) for name in linears)]
        if unmatched:
            leaves = sorted({name.split(".")[-1] for name in linears})
            raise ConfigError(f"target_modules {', '.join(unmatched)} match{'es' if len(unmatched) == 1 else ''} no "
                              f"layer of this model: use some of {', '.join(leaves)}, or all-linear.")
        widths = [min(shape) for name, shape in linears.items() if any(_matches(name, t) for t in targets)]
    narrowest = min(widths, default=0)
    if narrowest and config.lora_r > narrowest:
        raise ConfigError(f"lora_r {config.lora_r} is larger than the layers it adapts ({narrowest} wide): use at "
                          f"most {narrowest}; 8 to 64 is usual.")
    return {} if targets == config.target_modules else {"target_modules": targets}


def _check_layers(config: FinetuneConfig, linears: dict[str, tuple[int, int]]) -> None:
    """layers_to_transform names layers the model has (peft would say so only when the run starts, in its words)."""
    have = {int(m.group(1)) for name in linears if (m := re.search(r"(?:^|\.)layers\.(\d+)\.", name))}
    model = config.model_name_or_path
    if not have:
        raise ConfigError(f"layers_to_transform needs blocks named layers.N, and {model} names its blocks otherwise: "
                          "leave layers_to_transform empty.")
    missing = [n for n in layer_numbers(config.layers_to_transform or "") if n not in have]
    if missing:
        raise ConfigError(f"layers_to_transform {config.layers_to_transform} names layer {missing[0]}, and {model} "
                          f"has layers 0-{max(have)}: pick layers it has, or leave it empty to adapt every layer.")


def linear_layers(folder: str) -> dict[str, tuple[int, int]]:
    """The model's Linear layers (but the embeddings and output head) as {dotted name: (in, out)}, without weights."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        config = None
    if not isinstance(config, dict):
        raise ConfigError(f"The config.json of the model at {folder} is not a usable model config: point "
                          "model_name_or_path at a folder saved with save_pretrained.")
    shapes = _safetensors_shapes(Path(folder))
    if shapes is None:
        return _linear_layers_on_meta(folder)
    vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    return {key[: -len(".weight")]: (shape[1], shape[0]) for key, shape in shapes.items()
            if key.endswith(".weight") and len(shape) == 2 and shape[0] != vocab and shape[1] != vocab}


def _safetensors_shapes(folder: Path) -> dict[str, list[int]] | None:
    """{tensor name: shape} from the headers of the folder's safetensors files; None when there are none.

    Only the headers are checked here: weights cut short show when they load, in the training thread.
    """
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    shapes: dict[str, list[int]] = {}
    for path in files:
        found = read_header(path)
        if found is None:
            raise ConfigError(f"The weights file {path.name} of the model at {folder} is damaged: save the model "
                              "again with save_pretrained.")
        shapes.update(found[0])
    return shapes


def _linear_layers_on_meta(folder: str) -> dict[str, tuple[int, int]]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        model_config = AutoConfig.from_pretrained(folder)
        with torch.device("meta"):
            model: Any = AutoModelForCausalLM.from_config(model_config)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError):
        # transformers' own messages here are long and about its internals; the fix is the same for all.
        raise ConfigError(f"The config.json of the model at {folder} is not a usable model config: point "
                          "model_name_or_path at a folder saved with save_pretrained.") from None
    head = model.get_output_embeddings()
    return {name: (module.in_features, module.out_features) for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head}


def _matches(name: str, target: str) -> bool:
    # peft's rule for a list of names: the whole dotted name, or its ending after a dot.
    return name == target or name.endswith("." + target)
