"""The Trainer callback: turns the Trainer's hooks into events, applies stop and pause, and guards against NaN.

It talks to its run through `Sink` only, and never prints.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from slmnb.config import FinetuneConfig
from slmnb.errors import RunError
from slmnb.training import events as ev
from slmnb.training.base import on_int4_base

if TYPE_CHECKING:
    from slmnb.training.generation_eval import GenerationEval


class Sink(Protocol):
    """What the engine needs from its run: a place for events, the clock, and the stop/pause controls."""

    def emit(self, event: ev.Event) -> None: ...
    def elapsed(self) -> float: ...
    def should_stop(self) -> bool: ...
    def poll_requests(self) -> None: ...
    def check_stop(self) -> None: ...
    def hold_if_paused(self, step: int) -> None: ...


class Diverged(RunError):
    """The loss or the weights stopped being finite numbers."""


def diverged(step: int, what: str, learning_rate: float) -> Diverged:
    return Diverged(f"Training diverged at step {step} ({what}), so nothing of that step was saved: lower "
                    f"learning_rate (now {learning_rate:g}) and resume from the last good checkpoint, or start "
                    "a new run.")


def weights_finite(model: Any) -> bool:
    """Whether every trainable weight is a finite number (the LoRA weights: a few MB to look at)."""
    import torch

    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


def make_callback(sink: Sink, config: FinetuneConfig, run_dir: Path, dropped: int, notes: tuple[str, ...],
                  generation: GenerationEval | None = None) -> Any:
    """The callback; `generation` is the run's generation-eval, whose scores join each Eval event."""
    from transformers import TrainerCallback

    from slmnb.training.run import StopNow

    class EventCallback(TrainerCallback):
        def __init__(self) -> None:
            # (run time, tokens seen) at the last log. The run's clock leaves out paused time, so a step
            # after Resume is not measured over the pause.
            self.last_log = (sink.elapsed(), 0)

        def on_train_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            sink.emit(ev.Started(step=state.global_step, elapsed=sink.elapsed(), name=config.name or "",
                                 max_steps=state.max_steps, precision="bf16" if args.bf16 else "fp32",
                                 output_dir=str(run_dir), dropped_rows=dropped, notes=notes,
                                 base_weights="int4" if on_int4_base(config) else "original",
                                 metrics=tuple(generation.names) if generation else ()))
            self.last_log = (sink.elapsed(), state.num_input_tokens_seen)

        def on_step_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            sink.hold_if_paused(state.global_step)
            if sink.should_stop():  # stopped while paused: not one more step
                raise StopNow

        def on_step_end(self, args, state, control, model=None, **kw):  # type: ignore[no-untyped-def]
            sink.poll_requests()
            if sink.should_stop():
                # The supported way to end a Trainer early; the save makes the stop resumable.
                control.should_training_stop = True
                control.should_save = True
            if state.global_step >= state.max_steps:
                control.should_save = True  # the last step is always resumable, for a longer run later
                # ...and evaluated, so a run's last scores are those of the weights it ends with (max_steps need not
                # be a multiple of eval_steps: a run shortened to 4 steps still shows where it got to).
                if args.eval_strategy != "no" and not sink.should_stop():
                    control.should_evaluate = True
            if control.should_save and model is not None and not weights_finite(model):
                raise diverged(state.global_step, "the weights are no longer finite numbers", args.learning_rate)

        def on_prediction_step(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            sink.check_stop()  # an evaluation of a large split must not hold a stop for minutes

        def on_log(self, args, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
            logs = logs or {}
            now = sink.elapsed()
            if "loss" in logs:
                loss, grad = float(logs["loss"]), logs.get("grad_norm")
                if not math.isfinite(loss) or (grad is not None and not math.isfinite(float(grad))):
                    what = f"the loss became {loss}" if not math.isfinite(loss) else f"the gradient norm became {grad}"
                    raise diverged(state.global_step, what, args.learning_rate)
                then, tokens_then = self.last_log
                # The Trainer counts non-padding tokens as batches are consumed, summed over all processes.
                rate = (state.num_input_tokens_seen - tokens_then) / max(now - then, 1e-9)
                self.last_log = (now, state.num_input_tokens_seen)
                sink.emit(ev.Step(step=state.global_step, elapsed=sink.elapsed(), loss=loss,
                                  learning_rate=float(logs.get("learning_rate", 0.0)),
                                  grad_norm=None if grad is None else float(grad), tokens_per_second=rate,
                                  epoch=float(logs.get("epoch", state.epoch or 0.0)),
                                  tokens_seen=int(state.num_input_tokens_seen)))
            if "eval_loss" in logs:
                loss = float(logs["eval_loss"])
                if not math.isfinite(loss):
                    raise diverged(state.global_step, f"the eval loss became {loss}", args.learning_rate)
                # The scores are in the logs as eval_<key>, where early stopping and the best model find them.
                scores = {key: float(logs[f"eval_{key}"]) for key in (generation.last if generation else {})
                          if f"eval_{key}" in logs}
                sink.emit(ev.Eval(step=state.global_step, elapsed=sink.elapsed(), eval_loss=loss,
                                  perplexity=ev.perplexity(loss), metrics=scores))

        def on_save(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            sink.emit(ev.Checkpoint(step=state.global_step, elapsed=sink.elapsed(), path=str(path)))

    return EventCallback()
