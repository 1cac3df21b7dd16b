"""slmnb: fine-tune small language models from a notebook.

`import slmnb` stays light: torch, transformers and peft load only when work starts, so every name below is
imported on first use.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

__version__ = importlib.metadata.version(__name__)  # from labextension/package.json, the one version source

_EXPORTS = {
    "FinetuneConfig": "slmnb.config",
    "load_config": "slmnb.config",
    "ConfigError": "slmnb.errors",
    "RunError": "slmnb.errors",
    "SlmnbError": "slmnb.errors",
    "preview": "slmnb.data",
    "finetune": "slmnb.training.runs",
    "load_run": "slmnb.training.runs",
    "active_run": "slmnb.training.runs",
    "list_runs": "slmnb.training.runs",
    "Runs": "slmnb.training.runs",
    "TrainingRun": "slmnb.training.run",
    "RunState": "slmnb.training.states",
    "events": "slmnb.training.events",
    "form": "slmnb.notebook.form",
    "compare_runs": "slmnb.notebook.compare",
    "export": "slmnb.opt.export",
    "Export": "slmnb.opt.export",
    "generate": "slmnb.opt.export",
    "list_exports": "slmnb.opt.store",
    "compare": "slmnb.opt.compare",
    "Evaluation": "slmnb.evaluation",
    "ExportError": "slmnb.errors",
    "search": "slmnb.tuning",
    "resume_search": "slmnb.tuning",
    "list_searches": "slmnb.tuning",
    "load_search": "slmnb.tuning",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'slmnb' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    value = module if name == "events" else getattr(module, name)
    globals()[name] = value
    return value


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext slmnb`: registers %%finetune without importing torch or transformers."""
    from slmnb.notebook import load_ipython_extension as load

    load(ipython)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where JupyterLab finds the prebuilt extension (for `jupyter labextension develop`)."""
    return [{"src": "labextension", "dest": "slmnb"}]
