"""What a run leaves in the process once it has ended: nothing of its model, Trainer or optimizer (tiny model).

A notebook kernel trains, predicts and trains again in one process; a run that ended must not keep the memory of
the last one (the embedded model's activations alone take gigabytes, see BENCHMARKS.md). Peak and resident sizes
are measured by bench/bench_memory.py, not here: they depend on the machine.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import pytest

import slmnb
from slmnb.errors import RunError
from slmnb.training import events as ev


@pytest.fixture
def built_models(monkeypatch: pytest.MonkeyPatch) -> list[weakref.ref]:
    """Weak references to every model the engine builds: the real build_model, watched."""
    from slmnb.training import engine

    built: list[weakref.ref] = []
    build = engine.build_model

    def watched(*args: Any, **kwargs: Any) -> Any:
        model = build(*args, **kwargs)
        built.append(weakref.ref(model))
        return model

    monkeypatch.setattr(engine, "build_model", watched)
    return built


def _training_objects() -> set[int]:
    """Every Trainer and optimizer alive in this process."""
    from torch.optim import Optimizer
    from transformers import Trainer

    gc.collect()
    return {id(o) for o in gc.get_objects() if issubclass(type(o), Trainer | Optimizer)}


def test_a_finished_run_keeps_no_model_trainer_or_optimizer(workdir, tiny, built_models) -> None:
    before = _training_objects()
    run = slmnb.finetune(tiny, name="done", max_steps=4, eval_steps=2).wait()
    run = run.resume(max_steps=6).wait()  # a second session of the same run, in the same process
    assert run.status == "finished" and run.step == 6 and len(built_models) == 2
    assert _training_objects() - before == set()
    assert [ref() for ref in built_models] == [None, None]


def test_a_failed_run_keeps_its_error_but_not_what_the_error_was_raised_in(workdir, tiny, built_models) -> None:
    before = _training_objects()

    def block_checkpoints(event: ev.Event) -> None:
        # The first checkpoint then cannot be written: a real failure, raised deep inside the Trainer's loop.
        if isinstance(event, ev.Started):
            checkpoints = Path(event.output_dir) / "checkpoints"
            if checkpoints.is_dir():
                checkpoints.rmdir()
            checkpoints.write_text("in the way")

    run = slmnb.finetune(tiny, name="fails", max_steps=4, eval_steps=2, listeners=[block_checkpoints])
    with pytest.raises(RunError, match="error.log"):
        run.wait()
    assert run.status == "failed" and run.error is not None and len(built_models) == 1
    # The error still tells where it happened, but its frames no longer hold the model, Trainer or optimizer.
    assert "Traceback" in (run.dir / "error.log").read_text()
    assert _training_objects() - before == set()
    assert built_models[0]() is None
