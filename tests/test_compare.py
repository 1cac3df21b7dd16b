"""compare_runs() overlays the curves of several runs, read from their metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

import pytest

import slmnb


def test_compare_runs_overlays_loss_and_perplexity(workdir: Path, tiny: dict) -> None:
    slmnb.finetune(tiny, name="a", max_steps=8).wait()
    slmnb.finetune(tiny, name="b", max_steps=8, learning_rate=1e-2).wait()
    figure = slmnb.compare_runs(["a", "b"])
    named = {t.name: t for t in figure.data}
    assert {"a train", "a eval", "b train", "b eval"} <= set(named)
    assert list(named["a train"].x) == list(range(1, 9)) and list(named["b eval"].x) == [4, 8]
    assert named["a train"].y != named["b train"].y
    assert figure.layout.yaxis2.type == "log"


def test_compare_runs_bad_input(workdir: Path) -> None:
    with pytest.raises(slmnb.RunError, match="list of run names"):
        slmnb.compare_runs("a")
    with pytest.raises(slmnb.RunError, match="No run called 'ghost'"):
        slmnb.compare_runs(["ghost"])
