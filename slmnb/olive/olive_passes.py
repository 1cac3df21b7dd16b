"""The LoRA / QLoRA pass of an Olive run config: its LoRA settings, its data configs and its training_args, as
FinetuneConfig fields. Olive's searchable values are collected on the way, for the search that varies them.
"""

from __future__ import annotations

import difflib
from dataclasses import fields
from typing import Any

from slmnb.checks import kind_of, short_repr
from slmnb.config import RESERVED_TRAINING_ARGS, FinetuneConfig
from slmnb.errors import ConfigError
from slmnb.olive.olive_data import count_rows, read_data_config, same_source

# HFLoRA is the LoRA pass's name in 2023 examples.
TRAINING = {"lora": "lora", "qlora": "qlora", "loftq": "qlora", "dora": "lora", "loha": "lora", "lokr": "lora",
            "hflora": "lora"}
# Keys of a LoRA / QLoRA pass that slmnb reads; the others Olive has are said to be ignored.
LORA_KEYS = {"r": "lora_r", "lora_r": "lora_r", "alpha": "lora_alpha", "lora_alpha": "lora_alpha",
             "lora_dropout": "lora_dropout", "target_modules": "target_modules",
             "layers_to_transform": "layers_to_transform"}
LORA_OTHER = ("modules_to_save", "torch_dtype", "train_data_config", "eval_data_config", "eval_dataset_size",
              "training_args", "bias", "use_ort_trainer", "ortmodule_onnx_opset_version", "device_map", "allow_tf32",
              "ephemeral_gpu_offload", "compute_dtype", "save_quant_config", "double_quant", "quant_type",
              "loftq_iter", "rank_dropout", "module_dropout", "use_effective_conv2d", "exclude_modules",
              "init_weights", "layers_pattern", "rank_pattern", "alpha_pattern",
              "decompose_both", "decompose_factor", "rank_dropout_scale", "use_dora", "merge_adapter_weights")
# Pass settings of older Olive files that slmnb answers in its own way.
OLD_KEYS = {"user_script": "slmnb never runs a config's Python scripts: it reads the data config's files",
            "script_dir": "slmnb never runs a config's Python scripts: it reads the data config's files",
            "training_output_dir": "slmnb trains into runs/<name>: set the run's name instead"}
PASS_KEYS = ("type", "config", "disable_search", "host", "evaluator", "output_name", "clean_run_cache",
             "save_to_disk")
# training_args keys Olive has and slmnb answers differently.
OLIVE_TRAINING = {"extra_args": None, "output_dir": "slmnb trains into runs/<name>: set the run's name instead",
                  "overwrite_output_dir": "slmnb keeps every run in its own folder",
                  "resume_from_checkpoint": "resume the slmnb run instead (%finetune resume NAME)",
                  "fp16": "fp16 is a GPU precision: slmnb trains with precision auto (bf16 where the CPU has it)"}
FIELDS = {f.name for f in fields(FinetuneConfig)}


def training_pass(named: tuple[str, dict[str, Any]], data: dict[str, dict[str, Any]], out: dict[str, Any],
                   searchable: dict[str, Any], ignored: list[tuple[str, str]]) -> None:
    name, spec = named
    path, type_ = f"passes.{name}", kind(named[1])
    out["method"] = TRAINING[type_]
    if type_ not in ("lora", "qlora"):
        ignored.append((f"{path}.type", f"slmnb trains {spec['type']} as plain {TRAINING[type_]}"))
    for key, value in spec.items():
        where = f"{path}.{key}"
        if is_search_parameter(value):
            value = search_values(value, where)
            if key in LORA_KEYS:
                searchable[LORA_KEYS[key]] = value
                value = value[0]  # the config holds the first candidate; each trial sets its own
        if key in LORA_KEYS:
            out[LORA_KEYS[key]] = value
        elif key in ("type", "train_data_config", "eval_data_config", "eval_dataset_size", "training_args"):
            continue
        elif key == "torch_dtype":
            _dtype(value, where, out, ignored)
        elif key in ("merge_adapter_weights",):
            if value:
                ignored.append((where, "add a MergeAdapterWeights pass to export merged; the run keeps its adapter"))
        elif key in OLD_KEYS:
            ignored.append((where, OLD_KEYS[key]))
        elif key in PASS_KEYS or key in LORA_OTHER:
            if value not in (None, False, "none", [], {}):
                ignored.append((where, "slmnb does not apply it: it trains LoRA on the CPU with peft's defaults "
                                       "for it"))
        else:
            # Olive warns about a pass setting it does not know and drops it, and older files hold settings that
            # passes have since lost: only a near-miss of a setting slmnb reads is a typo worth stopping for.
            close = difflib.get_close_matches(key, [*LORA_KEYS, *LORA_OTHER], n=1, cutoff=0.85)
            if close:
                raise ConfigError(f"{where} is not a {spec['type']} setting: did you mean {close[0]}?")
            ignored.append((where, f"not a {spec['type']} setting slmnb knows (Olive drops those with a warning)"))
    _training_data(spec, path, data, out, ignored)
    _training_args(spec.get("training_args"), f"{path}.training_args", out, searchable, ignored)


def _dtype(value: Any, where: str, out: dict[str, Any], ignored: list[tuple[str, str]]) -> None:
    text = str(value).removeprefix("torch.").lower()
    if text in ("bfloat16", "bf16"):
        out["precision"] = "bf16"
    elif text in ("float32", "fp32"):
        out["precision"] = "fp32"
    else:
        ignored.append((where, f"{text} is not a CPU training precision: slmnb trains with precision auto "
                               "(bf16 where the CPU has it, else fp32)"))


def _data(ref: Any, where: str, data: dict[str, dict[str, Any]], ignored: list[tuple[str, str]]) -> dict[str, Any]:
    if isinstance(ref, dict):
        return read_data_config(ref, where, ignored)
    if not isinstance(ref, str):
        raise ConfigError(f"{where} must name a data config (or be one), not {kind_of(ref)}.")
    if ref not in data:
        raise ConfigError(f"{where} names the data config {short_repr(ref)}, which data_configs has not: it has "
                          f"{', '.join(data) or 'none'}.")
    return read_data_config(data[ref], f"data_configs.{ref}", ignored)


def _training_data(spec: dict[str, Any], path: str, data: dict[str, dict[str, Any]], out: dict[str, Any],
                   ignored: list[tuple[str, str]]) -> None:
    if spec.get("train_data_config") is None:
        scripted = " (its user_script trains in Olive, and slmnb never runs a config's scripts)" \
            if spec.get("user_script") or spec.get("training_loop_func") else ""
        raise ConfigError(f"{path} needs train_data_config naming one of data_configs{scripted}: add a data config "
                          "with data_name: json and data_files, and name it there.")
    train = _data(spec["train_data_config"], f"{path}.train_data_config", data, ignored)
    out.update(train)
    if spec.get("eval_data_config") is not None:
        evaluation = _data(spec["eval_data_config"], f"{path}.eval_data_config", data, ignored)
        if same_source(train, evaluation) and "train_split" in evaluation:
            out["eval_split"] = evaluation["train_split"]
        else:
            ignored.append((f"{path}.eval_data_config", "slmnb evaluates on a split of the training source: it "
                                                        "holds out eval_size of the training rows instead"))
    size = spec.get("eval_dataset_size")
    if size is None:
        if spec.get("eval_data_config") is None:
            ignored.append((f"{path}.eval_data_config", "none given, so Olive trains on every row and never "
                                                        "evaluates; slmnb holds out a tenth of the rows for the "
                                                        "dashboard's eval loss (--eval_size 0 trains on every row)"))
        return
    if "eval_split" in out:
        ignored.append((f"{path}.eval_dataset_size", "eval_data_config gives the evaluation rows already"))
    elif isinstance(size, bool) or not isinstance(size, int | float) or size <= 0:
        raise ConfigError(f"{path}.eval_dataset_size must be a fraction below 1 or a count of rows, not "
                          f"{short_repr(size)}.")
    elif size < 1:
        out["eval_size"] = size
    else:
        rows = count_rows(out)
        if rows is None or size >= rows:
            ignored.append((f"{path}.eval_dataset_size", f"{size:g} rows cannot be held out of this data: slmnb "
                                                         "holds out eval_size (a tenth) instead"))
        else:
            out["eval_size"] = size / rows


def _training_args(raw: Any, path: str, out: dict[str, Any], searchable: dict[str, Any],
                   ignored: list[tuple[str, str]]) -> None:
    """Olive's training_args: FinetuneConfig fields by name, the rest passed to the Trainer unless slmnb sets it."""
    args = dict(mapping(raw, path))
    args.update(mapping(args.pop("extra_args", None), f"{path}.extra_args"))
    extra: dict[str, Any] = {}
    for key, value in args.items():
        where = f"{path}.{key}"
        if is_search_parameter(value):
            candidates = search_values(value, where)
            if key in FIELDS:
                searchable[key] = candidates
            value = candidates[0]
        if key in ("max_steps", "eval_steps", "save_steps") and value in (-1, None):
            continue  # transformers' "not set": slmnb's own default applies
        if key == "bf16":
            if value:
                out["precision"] = "bf16"
        elif key in OLIVE_TRAINING:
            if value not in (None, False):
                ignored.append((where, str(OLIVE_TRAINING[key])))
        elif key in RESERVED_TRAINING_ARGS:
            if value not in (None, False):
                ignored.append((where, RESERVED_TRAINING_ARGS[key]))
        elif key in FIELDS and key not in ("training_args", "name", "output_dir"):
            out[key] = value
        else:
            extra[key] = value
    if extra:
        out["training_args"] = extra


def is_search_parameter(value: Any) -> bool:
    return (isinstance(value, dict) and value.get("olive_parameter_type") == "SearchParameter") or \
        value == "SEARCHABLE_VALUES"


def search_values(value: Any, where: str) -> list[Any]:
    if value == "SEARCHABLE_VALUES" or value.get("type") != "Categorical" or not isinstance(value.get("support"),
                                                                                           list):
        raise ConfigError(f"{where} is searched without its candidate values: write them as "
                          "{olive_parameter_type: SearchParameter, type: Categorical, support: [8, 16]}.")
    if not value["support"]:
        raise ConfigError(f"{where} has an empty support: list the values to try.")
    return list(value["support"])


def mapping(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path} must be a mapping, not {kind_of(value)} ({short_repr(value)}).")
    return value


def kind(spec: dict[str, Any]) -> str:
    return str(spec.get("type", "")).lower()
