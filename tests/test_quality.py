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
    tuned = run.evaluate("test", metrics="accuracy").scores["accuracy"]
    base = run.evaluate("test", metrics="accuracy", adapter=False).scores["accuracy"]
    print(f"\ntones test accuracy: base {base:.1%}, fine-tuned {tuned:.1%} ({run.step} steps)")
    assert tuned >= 0.9
    assert tuned > base


@pytest.mark.slow
def test_the_default_int4_export_answers_as_the_fine_tune(demo_run, monkeypatch) -> None:
    """Trained on the int4 base (LoRA's default), the int4 export gives PyTorch's answers (issue 14's goal: 98% over
    3 seeds and accuracy within 2 points, in bench/bench_fidelity.py; here one seed, at most one row apart)."""
    monkeypatch.chdir(demo_run.dir.parent.parent)
    assert demo_run.config.base_weights == "int4"
    comparison = slmnb.compare(demo_run, evaluate=True, max_new_tokens=8)
    tuned = comparison.columns[1]
    print(f"\ntones test accuracy: PyTorch {tuned.pytorch_accuracy:.1%}, ONNX int4 {tuned.accuracy:.1%}, "
          f"agreement {tuned.agreement:.1%}")
    assert tuned.agreement >= 0.97
    assert abs(tuned.accuracy - tuned.pytorch_accuracy) <= 0.021
    base = comparison.columns[0]
    assert base.agreement is not None and base.agreement >= 0.97  # the base without an adapter: the base's answers
