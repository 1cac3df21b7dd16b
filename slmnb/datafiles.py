"""Reading the training data a config names: bundled datasets, JSON, JSON Lines, CSV and Parquet files, inline rows
and folders saved with datasets' save_to_disk. Every way a file can be wrong is one ConfigError sentence.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from slmnb.checks import short_path, short_repr
from slmnb.config import FinetuneConfig
from slmnb.errors import ConfigError

BUNDLED_DIR = Path(__file__).parent / "datasets"
Rows = list[dict[str, Any]]


def bundled_datasets() -> list[str]:
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "dataset.json").is_file())


def bundled_defaults(name: str) -> dict[str, Any]:
    """What a bundled dataset says about itself: description and the templates that suit it."""
    return json.loads((BUNDLED_DIR / name / "dataset.json").read_text(encoding="utf-8"))


# --- reading sources ----------------------------------------------------------------------------------


def read_splits(config: FinetuneConfig) -> dict[str, Rows]:
    """Every split of the configured source, as lists of rows."""
    if config.rows:
        return {"train": list(config.rows)}
    if config.data_files:
        rows: Rows = []
        for name in config.data_files:
            rows.extend(read_rows(Path(os.path.expanduser(name))))
        return {"train": rows}
    if config.data_name:
        if config.data_name in bundled_datasets():
            folder = BUNDLED_DIR / config.data_name
            return {p.stem: read_rows(p) for p in sorted(folder.glob("*.jsonl"))}
        return _read_saved_dataset(Path(os.path.expanduser(config.data_name)))
    raise ConfigError("Give the training data: data_name (a bundled dataset such as "
                      f"{', '.join(bundled_datasets())}, or a saved datasets folder), data_files, or rows.")


def read_rows(path: Path) -> Rows:
    """The rows of one data file; every way the file can be unreadable is one sentence naming it."""
    shown = short_path(path)
    _check_is_file(path, shown)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl", ".csv", ".parquet"):
        raise ConfigError(f"Cannot read {short_repr(path.name)}: data files must end in .json, .jsonl, .csv or "
                          ".parquet.")
    try:
        if suffix == ".parquet":
            return _read_parquet(path, shown)
        if suffix == ".csv":
            return _read_csv(path)
        return _read_json(path)
    except UnicodeDecodeError:
        raise ConfigError(f"Data file {shown} is not UTF-8 text: save it as UTF-8.") from None
    except OSError as exc:
        raise ConfigError(f"Data file {shown} cannot be read ({(exc.strerror or 'input/output error').lower()}): "
                          "check the file.") from None


def _check_is_file(path: Path, shown: str) -> None:
    try:
        is_file, is_dir = path.is_file(), path.is_dir()
    except OSError:  # a name too long for the file system
        raise ConfigError(f"Data file {shown} cannot be a file name (too long): check data_files.") from None
    if is_dir:
        raise ConfigError(f"Data file {shown} is a folder: name the files inside it, or give a saved datasets "
                          "folder as data_name.")
    if not is_file:
        raise ConfigError(f"Data file {shown} does not exist: check data_files (paths are relative to "
                          f"{Path.cwd()}).")


def _read_parquet(path: Path, shown: str) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, ValueError, TypeError):  # not Parquet, truncated, or a type Python cannot hold
        raise ConfigError(f"Data file {shown} is not a readable Parquet file: write it again with "
                          "pandas.DataFrame.to_parquet or pyarrow, or use another format.") from None


def _read_csv(path: Path) -> Rows:
    extra = "\0fields beyond the header"  # DictReader files a line's extra fields under this key
    # utf-8-sig: Excel starts CSV files with a byte-order mark, which would otherwise open the first column's name.
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, restkey=extra)
        try:
            rows = list(reader)
            header = reader.fieldnames or []  # read lazily: an empty file gets here with no header read yet
        except csv.Error as exc:
            raise ConfigError(f"{path.name} cannot be read as CSV ({exc}): check its quotes and separators.") \
                from None
    if len(set(header)) != len(header):
        raise ConfigError(f"{path.name} has the same column name twice in its header: give every column its own "
                          "name.")
    for number, row in enumerate(rows, 1):
        if extra in row:
            raise ConfigError(f"{path.name} row {number} has more fields than the header: quote values that "
                              "contain commas.")
    return rows


def _read_json(path: Path) -> Rows:
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text)  # Olive's examples: one list of objects
    except (ValueError, RecursionError):  # not one JSON document, nested too deeply, or a number too long
        data = None
    if data is None or isinstance(data, dict):
        data = []
        for number, line in enumerate(text.splitlines(), 1):  # JSON Lines
            if line.strip():
                data.append(_json_line(path, number, line))
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise ConfigError(f"{path.name} must hold a list of objects or one object per line.")
    return data


def _json_line(path: Path, number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        problem = exc.msg
    except (ValueError, RecursionError):
        problem = "nested too deeply or a number too long"
    raise ConfigError(f"{path.name} line {number} is not valid JSON ({problem}): the file must hold a list of "
                      "objects or one object per line.")


def _read_saved_dataset(path: Path) -> dict[str, Rows]:
    try:
        is_dir = path.is_dir()
    except OSError:
        is_dir = False
    if not is_dir:
        raise ConfigError(f"data_name {short_path(path)} is neither a bundled dataset "
                          f"({', '.join(bundled_datasets())}) nor a folder saved with datasets' save_to_disk.")
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(path))
        if isinstance(loaded, Dataset):
            return {"train": loaded.to_list()}
        assert isinstance(loaded, DatasetDict)
        return {name: split.to_list() for name, split in loaded.items()}
    except Exception:  # datasets raises many kinds for a folder that is missing, truncated or edited by hand
        raise ConfigError(f"{short_path(path)} is not a readable folder saved with datasets' save_to_disk: "
                          "save the dataset again, or give its files as data_files.") from None


