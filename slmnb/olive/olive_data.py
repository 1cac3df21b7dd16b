"""Olive data configs, from every period of Olive's format, as the data fields of a FinetuneConfig.

Three shapes name the same things: the current flat `load_dataset_config` / `pre_process_data_config` (each maybe
`{type, params}`), and the older `params_config` whose `component_kwargs` hold `load_dataset` and
`pre_process_data`. They are merged into one `load` and one `pre` mapping, older first, and read from there.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from slmnb.checks import kind_of, short_repr
from slmnb.errors import ConfigError

# data_name values that mean "the files in data_files, read by the datasets loader of that format".
FILE_LOADERS = ("json", "csv", "parquet")
# What slmnb does instead of each key it cannot apply, by key (load_dataset and pre_process_data alike).
SKIPPED = {
    "subset": "slmnb reads the whole source; save the subset with datasets' save_to_disk and name that folder",
    "data_dir": "slmnb reads data_files or a saved datasets folder; list the files in data_files",
    "col_filters": "slmnb trains on every row; filter the file first (keep the rows you want) and point at it",
    "trust_remote_code": "slmnb never runs a dataset's own code; it reads local files only",
    "token": "slmnb reads local data only, so no hub token is used",
    "streaming": "slmnb reads the rows into memory",
    "strategy": "slmnb trains each row as one example (Olive's line-by-line), not packed blocks",
    "corpus_strategy": "slmnb trains each row as one example (Olive's line-by-line), not packed blocks",
    "dataset_type": "slmnb trains each row as one example (Olive's line-by-line), not packed blocks",
    "chat_template": "slmnb renders chats from prompt_template + response_template with use_chat_template: true",
    "message_col": "slmnb renders chats from prompt_template + response_template with use_chat_template: true",
    "text_formatting_func": "a user_script function does not run here; write a text_template",
    "formatting_func": "a user_script function does not run here; write a text_template",
}
# Tokenizing details that slmnb settles itself (padding, masks, batching), said once with one reason.
SETTLED = ("pad_to_max_len", "padding_side", "drop_short_sequences", "use_attention_mask", "add_special_tokens",
           "processing_batch_size", "random_seed", "random_retries", "joiner", "stride", "batch_size",
           "model_name", "task", "input_cols", "label_cols", "max_length", "padding", "truncation", "trust_remote_code",
           "use_fast", "split_name", "shuffle")
DATA_KEYS = ("name", "type", "user_script", "script_dir", "components", "params_config", "load_dataset_config",
             "pre_process_data_config", "post_process_data_config", "dataloader_config")
APPLIED = ("data_name", "dataset_name", "split", "data_files", "text_template", "text_cols", "max_seq_len",
           "source_max_len", "max_samples", "name", "type", "params")


def data_configs_by_name(raw: Any, path: str) -> dict[str, dict[str, Any]]:
    """data_configs as a list of named configs (current) or a mapping of name to config (older)."""
    if raw is None:
        return {}
    if isinstance(raw, dict):
        items = [(str(name), value) for name, value in raw.items()]
    elif isinstance(raw, list):
        items = [(_name_of(value, f"{path}[{i}]"), value) for i, value in enumerate(raw)]
    else:
        raise ConfigError(f"{path} must be a list of data configs, each a mapping with a name, not {kind_of(raw)}.")
    out = {}
    for name, value in items:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}.{name} must be a mapping (name, type, load_dataset_config, ...), not "
                              f"{kind_of(value)}.")
        for key in value:
            if key not in DATA_KEYS:  # Olive refuses a data config key it does not know
                close = difflib.get_close_matches(str(key), DATA_KEYS, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]}?" if close else f"use {', '.join(DATA_KEYS)}."
                raise ConfigError(f"{path}.{name} has the key {short_repr(key)}, which Olive does not know: {hint}")
        out[name] = value
    return out


def _name_of(value: Any, path: str) -> str:
    if not isinstance(value, dict):
        raise ConfigError(f"{path} must be a mapping (name, type, load_dataset_config, ...), not {kind_of(value)}.")
    name = value.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path} needs a name, such as 'name: train_data', so a pass can refer to it.")
    return name


def _params(raw: Any, path: str) -> dict[str, Any]:
    """A component config as its parameters: `{type, params: {...}}` or the parameters flat."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of parameters, not {kind_of(raw)}.")
    if "params" in raw:
        params = raw["params"] if raw["params"] is not None else {}
        if not isinstance(params, dict):
            raise ConfigError(f"{path}.params must be a mapping of parameters, not {kind_of(params)}.")
        return {**{k: v for k, v in raw.items() if k not in ("type", "params")}, **params}
    return {k: v for k, v in raw.items() if k != "type"}


def merged_components(data: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The load and pre-process parameters of one data config, whatever period its shape is from."""
    old = data.get("params_config") or {}
    if not isinstance(old, dict):
        raise ConfigError(f"{path}.params_config must be a mapping, not {kind_of(old)}.")
    kwargs = old.get("component_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{path}.params_config.component_kwargs must be a mapping, not {kind_of(kwargs)}.")
    load = {k: v for k, v in old.items() if k != "component_kwargs"}
    load.update(_params(kwargs.get("load_dataset"), f"{path}.params_config.component_kwargs.load_dataset"))
    load.update(_params(data.get("load_dataset_config"), f"{path}.load_dataset_config"))
    pre = _params(kwargs.get("pre_process_data"), f"{path}.params_config.component_kwargs.pre_process_data")
    pre.update(_params(data.get("pre_process_data_config"), f"{path}.pre_process_data_config"))
    return load, pre


def read_data_config(data: dict[str, Any], path: str, ignored: list[tuple[str, str]]) -> dict[str, Any]:
    """FinetuneConfig fields (data source, split, text template, lengths) from one Olive data config."""
    load, pre = merged_components(data, path)
    fields: dict[str, Any] = {}
    _source(load, path, fields)
    split = load.get("split")
    if split is not None:
        if not isinstance(split, str) or not split.strip():
            raise ConfigError(f"{path} split must be a split name or slice such as train[:90%], not "
                              f"{short_repr(split)}.")
        fields["train_split"] = split.strip()
    _text(pre, path, fields)
    length = pre.get("max_seq_len", pre.get("source_max_len"))
    if length is not None:
        fields["max_seq_len"] = length
    if pre.get("max_samples") is not None:
        fields["max_samples"] = pre["max_samples"]
    for key in ("components", "user_script", "script_dir"):
        if data.get(key):
            ignored.append((f"{path}.{key}", "user_script components do not run here: slmnb reads the data "
                                             "source and text_template of this data config itself"))
    for key in ("dataloader_config", "post_process_data_config"):
        if data.get(key):
            ignored.append((f"{path}.{key}", "slmnb batches and collates the rows itself (per_device_train_batch_"
                                             "size, max_seq_len)"))
    for key, value in {**load, **pre}.items():
        if key in APPLIED or value in (None, False, "", [], {}):
            continue
        where = f"{path}.{key}"
        if key in SKIPPED:
            ignored.append((where, SKIPPED[key]))
        elif key in SETTLED:
            ignored.append((where, "slmnb tokenizes, pads and batches the rows itself"))
        else:
            ignored.append((where, "not a data option slmnb applies; it reads data_name/data_files, split, "
                                   "text_template or text_cols, max_seq_len and max_samples"))
    return fields


def _source(load: dict[str, Any], path: str, fields: dict[str, Any]) -> None:
    from slmnb.datafiles import bundled_datasets

    name = load.get("data_name", load.get("dataset_name"))
    files = load.get("data_files")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{path} data_name must be text such as json or a dataset folder, not {kind_of(name)}.")
    if files is not None:
        fields["data_files"] = _file_list(files, path)
        if name and name not in FILE_LOADERS and not Path(name).expanduser().exists():
            raise ConfigError(f"{path} gives data_files with data_name {short_repr(name)}: slmnb reads data_files "
                              f"as {', '.join(FILE_LOADERS)} by their ending, so set data_name to json (or csv, "
                              "parquet).")
        return
    if not name:
        raise ConfigError(f"{path} names no data: give load_dataset_config with data_name (json with data_files, "
                          "or a saved datasets folder).")
    if name in FILE_LOADERS:
        raise ConfigError(f"{path} has data_name {name} without data_files: list the {name} files in data_files.")
    if name in bundled_datasets() or Path(name).expanduser().exists():
        fields["data_name"] = name
        return
    # Not downloadable here: read_olive_config refuses it unless the magic line or the command gives the data.
    fields["hub_dataset"] = (name, path)


def _file_list(files: Any, path: str) -> list[str]:
    """data_files as slmnb lists them: a file, a list of files, or (as datasets takes them) a mapping of split to
    files, whose train files are the training data (slmnb reads all of data_files as one train split)."""
    if isinstance(files, dict):
        if "train" not in files:
            raise ConfigError(f"{path} data_files maps splits to files without a train split: name the training "
                              "files under train.")
        files = files["train"]
    if isinstance(files, str):
        files = [files]
    if not isinstance(files, list) or not files or not all(isinstance(f, str) and f for f in files):
        raise ConfigError(f"{path} data_files must be a file path or a list of them, not {short_repr(files)}.")
    return list(files)


def _text(pre: dict[str, Any], path: str, fields: dict[str, Any]) -> None:
    template, cols = pre.get("text_template"), pre.get("text_cols")
    if template is not None:
        if not isinstance(template, str) or not template.strip():
            raise ConfigError(f"{path} text_template must be text such as '### Text: {{phrase}}', not "
                              f"{short_repr(template)}.")
        fields["text_template"] = template
        return
    if cols is None:
        return
    if isinstance(cols, str):
        cols = [cols]
    if not isinstance(cols, list) or not cols or not all(isinstance(c, str) and c.isidentifier() for c in cols):
        raise ConfigError(f"{path} text_cols must be a column name or a list of them, not {short_repr(cols)}.")
    # Olive joins the columns with a space when no template is given.
    fields["text_template"] = " ".join(f"{{{c}}}" for c in cols)


def same_source(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(key) == b.get(key) for key in ("data_name", "data_files", "hub_dataset"))


def count_rows(fields: dict[str, Any]) -> int | None:
    """How many rows the training split of these fields holds, when it can be read now (else None)."""
    from slmnb.config import FinetuneConfig
    from slmnb.data import select_split
    from slmnb.datafiles import read_splits

    try:
        config = FinetuneConfig.from_dict({k: v for k, v in fields.items()
                                           if k in ("data_name", "data_files", "train_split")})
        return len(select_split(read_splits(config), config.train_split, "train_split"))
    except ConfigError:
        return None
