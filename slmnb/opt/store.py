"""Where exports live, and what each one is.

    onnx/                                   the exports folder (beside runs/; `output=` picks another)
      smollm2-135m-instruct-int4-1a2b3c4d/  a base model with switchable LoRA inputs, one per
        model.onnx, model.onnx.data, ...    (base model, precision, LoRA projections on every layer)
        slmnb-export.json                   its manifest
        adapters/quickstart.onnx_adapter    one adapter per run, and a .json beside it
      quickstart-int4-merged/               a run's LoRA merged into the weights: one deployable model

Folders appear complete or not at all (built under a temp name and renamed), so a crash never leaves a
half-written export that a later call picks up.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmnb.paths import write_text_atomic

EXPORTS_DIR = "onnx"
MANIFEST = "slmnb-export.json"
# Bumped whenever the layout or the conversion changes, so an older export is rebuilt, not reused.
FORMAT = 1


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(text).name or text).strip("-") or "model"


def base_folder_name(model: str, precision: str, weight_names: Iterable[str]) -> str:
    """A base model's folder: readable, and unique per (model, precision, LoRA layers)."""
    digest = hashlib.sha256(json.dumps([model, precision, sorted(weight_names), FORMAT]).encode()).hexdigest()
    return f"{slug(model)}-{precision}-{digest[:8]}"


def merged_folder_name(run_name: str, precision: str) -> str:
    return f"{slug(run_name)}-{precision}-merged"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file, or None when it is missing or damaged (a damaged manifest means: not built)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1))


@dataclass(frozen=True)
class Listed:
    """One model folder of an exports folder, with its adapters."""

    folder: Path
    manifest: dict[str, Any]
    adapters: list[dict[str, Any]]

    @property
    def size_mb(self) -> float:
        return model_size_mb(self.folder)

    @property
    def base_model(self) -> str:
        return str(self.manifest.get("base_model", "?"))


def by_base(listed: list[Listed]) -> dict[str, list[Listed]]:
    """The exports grouped by the base model they run on (one base serves the adapters of every task, Olive's
    multi-adapter workflow), base models in the order of their first export."""
    groups: dict[str, list[Listed]] = {}
    for entry in listed:
        groups.setdefault(entry.base_model, []).append(entry)
    return groups


def model_size_mb(folder: Path) -> float:
    """The ONNX graph and its weights, in MB."""
    return sum(f.stat().st_size for f in folder.glob("model.onnx*")) / 1e6


def list_exports(root: str | Path | None = None) -> list[Listed]:
    """The complete exports in a folder (default: ./onnx), bases and merged models, oldest first; each adapter
    with its run and the task_name of that run (by_base groups them by base model)."""
    root = Path(root or EXPORTS_DIR)
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        manifest = read_json(folder / MANIFEST)
        if manifest is None:
            continue
        adapters = []
        for meta in sorted((folder / "adapters").glob("*.json")):
            info = read_json(meta)
            if info and meta.with_suffix(".onnx_adapter").is_file():
                adapters.append({**info, "task_name": _task_name(info),
                                 "file": str(meta.with_suffix(".onnx_adapter"))})
        adapters.sort(key=lambda info: info.get("created", 0.0))
        found.append(Listed(folder, manifest, adapters))
    return sorted(found, key=lambda listed: listed.manifest.get("created", 0.0))


def _task_name(info: dict[str, Any]) -> str | None:
    """The task an adapter is for: its own record's, else its run's config.yaml (the run may have moved or gone:
    then none)."""
    from slmnb.config import read_config_file
    from slmnb.errors import SlmnbError

    if isinstance(info.get("task_name"), str):
        return str(info["task_name"])
    run_dir = info.get("run_dir")
    if not isinstance(run_dir, str):
        return None
    try:
        value = read_config_file(Path(run_dir) / "config.yaml").get("task_name")
    except (SlmnbError, OSError):
        return None
    return value if isinstance(value, str) and value else None
