"""Errors a user can cause. Their message is one sentence that names the fix, so front ends show it as is."""


class SlmnbError(Exception):
    """Base of every error slmnb raises on purpose."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback: the sentence already says what to fix, and a notebook user
        # who calls run.wait() or slmnb.finetune() should not scroll through library frames to find it.
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


class ConfigError(SlmnbError, ValueError):
    """A config value, data file or template is wrong."""


class MetricError(ConfigError):
    """A metric name, or the path of an evaluate module, cannot be used as asked."""


class RunError(SlmnbError, RuntimeError):
    """A run cannot be started, resumed or opened as asked."""


class ExportError(SlmnbError, RuntimeError):
    """An ONNX export, an adapter or a generation cannot be made as asked."""
