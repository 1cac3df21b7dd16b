"""Run states: one enum with its allowed moves, mirrored once for the JupyterLab extension."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmnb.training.states import ENDED, LIVE, TRANSITIONS, RunState

STATES_JSON = Path(__file__).resolve().parent.parent / "labextension" / "src" / "states.json"


def test_the_extension_reads_the_same_states() -> None:
    mirror = json.loads(STATES_JSON.read_text(encoding="utf-8"))
    assert mirror["all"] == [s.value for s in RunState]
    assert set(mirror["live"]) == {s.value for s in LIVE}
    assert set(mirror["ended"]) == {s.value for s in ENDED}


def test_states_are_text_where_text_is_expected() -> None:
    assert RunState.RUNNING == "running" and str(RunState.RUNNING) == "running"
    assert f"{RunState.PAUSED}" == "paused"
    assert json.dumps({"status": str(RunState.FAILED)}) == '{"status": "failed"}'
    assert RunState.read("stopped") is RunState.STOPPED and RunState.read("banana") is None
    assert RunState.read(["running"]) is None


def test_every_state_is_live_or_ended_but_created() -> None:
    assert LIVE.isdisjoint(ENDED)
    assert set(RunState) == LIVE | ENDED | {RunState.CREATED}


@pytest.mark.parametrize(("old", "new", "allowed"), [
    (RunState.RUNNING, RunState.PAUSING, True),
    (RunState.PAUSED, RunState.RUNNING, True),
    (RunState.STOPPING, RunState.RUNNING, False),  # a Started event after stop() must not hide the stop
    (RunState.FINISHED, RunState.RUNNING, False),  # an ended run trains again only through a new start
    (RunState.FINISHED, RunState.STARTING, True),
    (RunState.CREATED, RunState.FINISHED, False),
])
def test_allowed_moves(old: RunState, new: RunState, allowed: bool) -> None:
    assert old.can_become(new) is allowed


def test_every_ended_state_can_start_again() -> None:
    for state in ENDED:
        assert TRANSITIONS[state] == {RunState.STARTING}
