"""search() and resume_search(): what the Python API, the CLI and (next) the %%finetune magic call."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from slmnb.config import FinetuneConfig, _is_path, check_name, parse_yaml, read_config_file
from slmnb.errors import ConfigError, RunError
from slmnb.training.runfiles import RunFolder
from slmnb.training.states import RunState
from slmnb.tuning.spec import SearchSpec, parse_search
from slmnb.tuning.study import Search, default_storage

RECORD = "search.yaml"
# Trials are named <search>-<n>: the search's name leaves room for the number within a run name's 100 characters.
MAX_SEARCH_NAME = 90

_live: dict[Path, Search] = {}  # searches this process runs, by folder: one at a time per name
_live_lock = threading.Lock()


def search(config: FinetuneConfig | dict[str, Any] | str | Path, *, name: str | None = None,
           storage: str | None = None, root: str | Path = "runs", **overrides: Any) -> Search:
    """Start a hyperparameter search and return it at once; its trials train one after another in the background.

    `config` is a mapping, a YAML/JSON path or text, or a FinetuneConfig, holding the fixed fields plus the search
    keys (search_strategy, search_space, objective), which `overrides` may also give. A FinetuneConfig's non-default
    fields are its fixed fields. `name` (else the config's name, else one made from the data and the time) names the
    search's folder <root>/<name>/ and its trials' runs <root>/<name>-<n>. `storage` is any Optuna RDB URL (default
    sqlite in the search folder); a search whose study exists there is joined: that is how a second worker helps.
    Mistakes raise one ConfigError or RunError sentence before anything trains.
    """
    from slmnb.training.failure import TRAINING

    values = {**_values(config), **overrides}
    fixed, spec = parse_search(values)
    if spec is None:
        raise ConfigError("The config has no search_space: add one, such as 'search_space: {learning_rate: {type: "
                          "float, low: 1e-5, high: 1e-2, log: true}}', or start a plain run with slmnb.finetune.")
    if fixed.get("output_dir"):
        raise ConfigError("A search puts each trial's run in <root>/<name>-<n> itself: drop output_dir (give root= "
                          "for another runs folder).")
    label = fixed.pop("name", None)
    name = name or label or _new_name(fixed, Path(root))
    _check_search_name(name)
    if RunFolder(Path(root) / name).is_run():
        raise RunError(f"A run called {name!r} exists in {Path(root).resolve()}: give the search another name.")
    TRAINING.check_free()
    _check_data(fixed)
    return _start(Search(name, root, fixed, spec, storage))


def resume_search(name: str, *, root: str | Path = "runs", storage: str | None = None,
                  num_trials: int | None = None, max_time: float | None = None) -> Search:
    """Continue a search from its study: the trials still to run (a trial cut short by a killed process or a stop
    is run again with the same parameters), reading the config and the storage URL from <root>/<name>/search.yaml.

    num_trials (all trials, those done included) and max_time (for this session) may change: a finished search
    trains more trials when given a larger num_trials."""
    found = _read(name, root, storage, num_trials=num_trials, max_time=max_time)
    return _start(found)


def open_search(name: str, *, root: str | Path = "runs", storage: str | None = None) -> Search:
    """A search as it is on disk, its study joined and nothing started (what `%finetune show` draws); the one this
    process runs, when it runs it."""
    found = _read(name, root, storage)
    with _live_lock:
        running = _live.get(found.dir.resolve())
    if running is not None:
        return running
    found.open_study()
    found.status = RunState.read(_state(found.dir).get("status")) or RunState.INTERRUPTED
    return found


def _read(name: str, root: str | Path, storage: str | None, **budget: float | None) -> Search:
    """The search recorded in <root>/<name>/search.yaml, with num_trials / max_time changed where given."""
    folder = Path(root) / name
    record_path = folder / RECORD
    if not record_path.is_file():
        raise RunError(f"No search called {name!r} in {Path(root).resolve()}: start one with slmnb.search().")
    record = read_config_file(record_path)
    keys = {k: v for k, v in record.items() if k in ("search_strategy", "search_space", "objective")}
    changes = {k: v for k, v in budget.items() if v is not None}
    if changes:  # checked as the search file's own values are
        keys["search_strategy"] = {**(keys.get("search_strategy") or {}), **changes}
    fixed, spec = parse_search({**(record.get("config") or {}), **keys})
    if spec is None:
        raise RunError(f"{record_path} holds no search: delete the folder {folder} and start the search again.")
    return Search(name, root, fixed, spec, storage or record.get("storage"))


def _start(found: Search) -> Search:
    key = found.dir.resolve()
    with _live_lock:
        running = _live.get(key)
        if running is not None and running.alive:
            raise RunError(f"Search {found.name!r} is running in this process already: stop it (search.stop()) or "
                           "wait for it.")
        found.open_study()
        _write_record(found)
        _live[key] = found.start()
    return found


def _write_record(found: Search) -> None:
    import yaml

    from slmnb.paths import write_text_atomic

    record: dict[str, Any] = {"config": found.fixed, **found.spec.to_dict()}
    if found.storage_url != default_storage(found.dir):  # the default follows the folder if it moves
        record["storage"] = found.storage_url
    write_text_atomic(found.dir / RECORD, yaml.safe_dump(record, sort_keys=False, allow_unicode=True, width=120))


def _values(config: FinetuneConfig | dict[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(config, FinetuneConfig):
        return config.to_dict(include_defaults=False)
    if isinstance(config, dict):
        return dict(config)
    if isinstance(config, Path) or (isinstance(config, str) and _is_path(config)):
        return read_config_file(config)
    if isinstance(config, str):
        values = parse_yaml(config) or {}
        if isinstance(values, dict):
            return values
    raise ConfigError("A search config is a mapping, a YAML/JSON path or text, or a FinetuneConfig, such as "
                      "'search_space: {lora_r: {type: choice, values: [8, 16]}}'.")


def _check_search_name(name: Any) -> None:
    if not isinstance(name, str):
        raise ConfigError(f"A search's name is text such as 'tones-search', not {type(name).__name__}.")
    check_name(name)
    if len(name) > MAX_SEARCH_NAME:
        raise ConfigError(f"The search's name is {len(name)} characters long: keep it to {MAX_SEARCH_NAME}, so its "
                          "trials' run names fit.")


def _new_name(fixed: dict[str, Any], root: Path) -> str:
    label = Path(str(fixed.get("data_name") or "rows")).name
    stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in f"{label}-search-{time.strftime('%Y%m%d-%H%M%S')}")
    name, suffix = stem.lstrip("._-")[:80] or "search", 1
    while (root / name).exists():
        suffix += 1
        name = f"{stem}-{suffix}"
    return name


def _check_data(fixed: dict[str, Any]) -> None:
    """The data and its templates, checked once before any trial, so a data mistake is not met by every trial."""
    from slmnb.data import default_templates, load_data

    config = FinetuneConfig.from_dict(fixed)
    filled = default_templates(config)
    load_data(config.replace(**filled) if filled else config)


def list_searches(root: str | Path = "runs") -> list[str]:
    """The names of the searches in a runs folder (folders with a search.yaml; the runs views skip them)."""
    try:
        folders = sorted(p for p in Path(root).iterdir() if p.is_dir())
    except OSError:
        return []
    return [p.name for p in folders if (p / RECORD).is_file() and not RunFolder(p).is_run()]


def search_states(root: str | Path = "runs") -> dict[str, dict[str, Any]]:
    """Each search's search.json (its status, trials and best, as the runs panel reads them), by search name."""
    return {name: _state(Path(root) / name) for name in list_searches(root)}


def _state(folder: Path) -> dict[str, Any]:
    """A search folder's search.json; one that cannot be read has only the name and status "unknown". A live status
    whose process is gone reads as interrupted, as a run's does."""
    import json

    from slmnb.tuning.study import STATE_FILE

    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        if not isinstance(state, dict):
            raise ValueError
    except (OSError, ValueError):
        state = {"name": folder.name, "status": "unknown", "trials": []}
    said = RunState.read(state.get("status"))
    with _live_lock:
        running = _live.get(folder.resolve())
    if said is not None and said.live and (running is None or not running.alive) and not _trains_elsewhere(
            folder.parent, state):
        state["status"] = str(RunState.INTERRUPTED)
    return state


def _trains_elsewhere(root: Path, state: dict[str, Any]) -> bool:
    """Whether another process trains one of the search's trials now (a CLI worker, another kernel)."""
    trials = state.get("trials")
    if not isinstance(trials, list):
        return False
    running = [t["run"] for t in trials if isinstance(t, dict) and t.get("state") == "running"
               and isinstance(t.get("run"), str) and t["run"]]
    return any(RunFolder(root / run).locked_elsewhere() for run in running)


def live_searches() -> list[Search]:
    """The searches training in this process (one at a time in practice: one training per process)."""
    with _live_lock:
        return [found for found in _live.values() if found.alive]


def trial_runs(root: str | Path = "runs") -> dict[str, list[str]]:
    """Each search's trial runs in a runs folder, by search name, in trial order: what a runs table groups.

    Read from the folder names alone (<search>-<n> beside <search>/search.yaml), so it needs neither Optuna nor the
    study's storage."""
    names = list_searches(root)
    try:
        runs = [p.name for p in Path(root).iterdir() if p.is_dir() and RunFolder(p).is_run()]
    except OSError:
        return {}
    grouped: dict[str, list[str]] = {}
    for search_name in names:
        prefix = f"{search_name}-"
        numbers = sorted(int(r[len(prefix):]) for r in runs if r.startswith(prefix) and r[len(prefix):].isdigit())
        grouped[search_name] = [f"{prefix}{n}" for n in numbers]
    return grouped


__all__ = ["SearchSpec", "list_searches", "live_searches", "open_search", "resume_search", "search", "search_states",
           "trial_runs"]
