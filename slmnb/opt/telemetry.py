"""Keep onnxruntime and the hub libraries from phoning home: an export or a generation sends nothing anywhere.

onnxruntime 1.29+ (and onnxruntime-genai, which loads it) sends usage events to mobile.events.data.microsoft.com
from a background thread about nine seconds after it starts: on an offline machine that shows up as DNS lookups
of that host from every builder child and every kernel that generated with ONNX. Measured here with strace: only
the ORT_DISABLE_TELEMETRY environment variable stops it, and only when set before onnxruntime creates its
environment (python onnxruntime: at import; onnxruntime-genai: at the first og.Model).
`onnxruntime.disable_telemetry_events()` after import does not, and `og.disable_telemetry_events()` covers
onnxruntime-genai's own events but not those of the onnxruntime it loads.
"""

from __future__ import annotations

import os

# The documented opt-outs of onnxruntime, huggingface_hub and the tools that follow the DO_NOT_TRACK convention.
TELEMETRY_OFF = {"ORT_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}


def telemetry_off() -> None:
    """Turn telemetry off in this process; call before importing onnxruntime or onnxruntime_genai.

    A value the user set themselves is kept: this is their process, unlike the builder's child.
    """
    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)


def disable_genai_events(og: object) -> None:
    """onnxruntime-genai's own events (model loads, generations), which the environment variable does not cover."""
    disable = getattr(og, "disable_telemetry_events", None)
    if disable is not None:
        disable()


def child_env() -> dict[str, str]:
    """The environment of a child that converts a local model: offline, quiet, and sending no telemetry."""
    return {**os.environ, **TELEMETRY_OFF, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error", "PYTHONUNBUFFERED": "1"}
