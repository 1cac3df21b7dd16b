"""The states a run goes through, and which moves between them are allowed.

`RunState` is a str enum, so `run.status == "running"` and the `status` in run.json stay plain text for other
processes (the JupyterLab extension reads `labextension/src/states.json`, which a test keeps equal to this file).
"""

from __future__ import annotations

from enum import Enum


class RunState(str, Enum):
    CREATED = "created"  # a folder and a config, never started
    STARTING = "starting"  # the thread is loading the model and tokenizing
    RUNNING = "running"
    PAUSING = "pausing"  # asked to pause; the current step finishes first
    PAUSED = "paused"
    STOPPING = "stopping"  # asked to stop; the current step finishes and a checkpoint is saved
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # read from disk: a live state written by a process that is gone

    def __str__(self) -> str:
        return self.value

    @property
    def live(self) -> bool:
        """A thread is (or should be) training this run."""
        return self in LIVE

    @property
    def ended(self) -> bool:
        return self in ENDED

    def can_become(self, new: RunState) -> bool:
        return new in TRANSITIONS[self]

    @classmethod
    def read(cls, value: object) -> RunState | None:
        """The state named in a run.json, or None when the text is no state at all."""
        try:
            return cls(value)
        except ValueError:
            return None


LIVE = frozenset({RunState.STARTING, RunState.RUNNING, RunState.PAUSING, RunState.PAUSED, RunState.STOPPING})
ENDED = frozenset({RunState.FINISHED, RunState.STOPPED, RunState.FAILED, RunState.INTERRUPTED})

_S = RunState
_START = {_S.STARTING}
TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    _S.CREATED: frozenset(_START),
    _S.STARTING: frozenset({_S.RUNNING, _S.PAUSING, _S.STOPPING, _S.FAILED, _S.STOPPED}),
    _S.RUNNING: frozenset({_S.PAUSING, _S.STOPPING, _S.FINISHED, _S.STOPPED, _S.FAILED}),
    _S.PAUSING: frozenset({_S.PAUSED, _S.RUNNING, _S.STOPPING, _S.FINISHED, _S.STOPPED, _S.FAILED}),
    _S.PAUSED: frozenset({_S.RUNNING, _S.STOPPING, _S.STOPPED, _S.FAILED}),
    _S.STOPPING: frozenset({_S.STOPPED, _S.FINISHED, _S.FAILED}),
    # Ended runs start again from their last checkpoint.
    _S.FINISHED: frozenset(_START),
    _S.STOPPED: frozenset(_START),
    _S.FAILED: frozenset(_START),
    _S.INTERRUPTED: frozenset(_START),
}
