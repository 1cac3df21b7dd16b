"""Errors a user can cause. Their message is one sentence that names the fix, so front ends show it as is."""


class SlmnbError(Exception):
    """Base of every error slmnb raises on purpose."""


class ConfigError(SlmnbError, ValueError):
    """A config value, data file or template is wrong."""


class RunError(SlmnbError, RuntimeError):
    """A run cannot be started, resumed or opened as asked."""


class ExportError(SlmnbError, RuntimeError):
    """An ONNX export, an adapter or a generation cannot be made as asked."""
