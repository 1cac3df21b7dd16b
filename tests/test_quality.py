"""The embedded model really learns the bundled task: the demo's job, asserted."""

from __future__ import annotations

import pytest

import slmnb
from slmnb.demo import DEMO_CONFIG


@pytest.mark.slow
def test_embedded_model_learns_tones_within_60_steps(workdir) -> None:
    run = slmnb.finetune(DEMO_CONFIG, name="quality").wait()
    assert run.step <= 60
    tuned = run.score("test")
    base = run.score("test", adapter=False)
    print(f"\ntones test accuracy: base {base.accuracy:.1%}, fine-tuned {tuned.accuracy:.1%} "
          f"({len(tuned.rows)} rows, {run.step} steps)")
    assert len(tuned.rows) >= 40
    assert tuned.accuracy >= 0.9
    assert tuned.accuracy > base.accuracy
