"""The embedded model really learns the bundled task, and its default int4 export keeps what it learnt."""

from __future__ import annotations

import pytest

import slmnb
from slmnb.demo import DEMO_CONFIG


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    """The demo's fine-tune, trained once for both tests."""
    folder = tmp_path_factory.mktemp("quality")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        yield slmnb.finetune(DEMO_CONFIG, name="quality").wait()


@pytest.mark.slow
def test_embedded_model_learns_tones_within_60_steps(demo_run) -> None:
    run = demo_run
    assert run.step <= 60
    tuned = run.score("test")
    base = run.score("test", adapter=False)
    print(f"\ntones test accuracy: base {base.accuracy:.1%}, fine-tuned {tuned.accuracy:.1%} "
          f"({len(tuned.rows)} rows, {run.step} steps)")
    assert len(tuned.rows) >= 40
    assert tuned.accuracy >= 0.9
    assert tuned.accuracy > base.accuracy


@pytest.mark.slow
def test_the_default_int4_export_keeps_the_fine_tunes_answers(demo_run, monkeypatch) -> None:
    monkeypatch.chdir(demo_run.dir.parent.parent)
    comparison = slmnb.compare(demo_run, evaluate=True, max_new_tokens=8)
    tuned = comparison.columns[1]
    print(f"\ntones test accuracy: PyTorch {tuned.pytorch_accuracy:.1%}, ONNX int4 {tuned.accuracy:.1%}, "
          f"agreement {tuned.agreement:.1%}")
    assert tuned.accuracy >= 0.92
    assert tuned.agreement >= 0.92
