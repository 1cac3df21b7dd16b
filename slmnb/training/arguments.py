"""From a config to the Trainer's TrainingArguments: a pure function, shared by the engine and the benchmarks."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

from slmnb.config import FinetuneConfig
from slmnb.errors import ConfigError


@dataclass(frozen=True)
class StepPlan:
    total: int  # optimizer steps of the whole run
    eval_steps: int
    save_steps: int
    early_stopping: bool
    load_best: bool = False  # keep the best evaluation's weights at the end (asked for, or early stopping)


def plan_steps(config: FinetuneConfig, train_rows: int, has_eval: bool, world: int = 1) -> StepPlan:
    """How many optimizer steps, and when to evaluate and save; about ten evaluations a run unless told."""
    per_epoch = math.ceil(train_rows / (config.per_device_train_batch_size * world))
    per_epoch = math.ceil(per_epoch / config.gradient_accumulation_steps)
    total = config.max_steps or max(1, math.ceil(per_epoch * config.num_train_epochs))
    eval_steps = config.eval_steps or max(1, total // 10)
    save_steps = config.save_steps or eval_steps
    early = config.early_stopping_patience is not None and has_eval
    # Early stopping keeps the best weights too: the last ones are worse by the patience's evaluations.
    best = (config.load_best_model_at_end or early) and has_eval
    if best and save_steps % eval_steps:
        # The best evaluation's weights can only be loaded at the end if a checkpoint was saved at it.
        field = "early_stopping_patience" if early else "load_best_model_at_end"
        raise ConfigError(f"{field} needs save_steps to be a multiple of eval_steps ({eval_steps}): "
                          "leave save_steps empty.")
    return StepPlan(total=total, eval_steps=eval_steps, save_steps=save_steps, early_stopping=early, load_best=best)


def inference_batch_size(config: FinetuneConfig) -> int:
    """Rows per batch where no backward pass follows (the eval loss, generation-eval while training): twice a
    training micro-batch. Such a forward holds one layer's activations at a time (generation adds its KV cache, two
    small vectors per layer and token), where a training micro-batch keeps them (or, with gradient checkpointing,
    their inputs) for every trained layer until its backward pass; and on a CPU the larger matmuls run faster per
    row: the demo's 16 generation-eval answers took 1.78 s at 16 rows against 2.37 s at 8 (fp32; bf16 1.00 against
    1.33 s), its runs' peak RSS unchanged."""
    return 2 * config.per_device_train_batch_size


def training_arguments(config: FinetuneConfig, plan: StepPlan, *, precision: str, output_dir: str, has_eval: bool,
                       cuda: bool = False, world: int = 1) -> Any:
    from transformers import TrainingArguments

    own: dict[str, Any] = dict(
        output_dir=output_dir,
        use_cpu=not cuda,
        bf16=precision == "bf16",
        max_steps=plan.total,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=inference_batch_size(config),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.peak_learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        # transformers 5 takes a fraction below 1 in warmup_steps as a ratio of the run (warmup_ratio is deprecated).
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        logging_steps=config.logging_steps,
        # The Trainer would replace a NaN or infinite loss with the running mean; we want to see it and stop.
        logging_nan_inf_filter=False,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=plan.eval_steps,
        save_strategy="steps",
        save_steps=plan.save_steps,
        save_total_limit=2,
        load_best_model_at_end=plan.load_best or plan.early_stopping,
        **best_model_arguments(config, plan),
        seed=config.seed,
        data_seed=config.seed,
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        ddp_backend="gloo" if world > 1 and not cuda else None,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        prediction_loss_only=True,  # evaluation needs the loss, not every position's logits
        dataloader_num_workers=0,
    )
    extra = typed_training_args(config.training_args or {})
    if not extra:
        return TrainingArguments(**own)
    return _refused_in_a_sentence(lambda: TrainingArguments(**{**own, **extra}), extra)


def check_training_args(extra: dict[str, Any]) -> None:
    """training_args' names, types and values as TrainingArguments checks them, before a run starts."""
    from transformers import TrainingArguments

    typed = typed_training_args(extra)
    _refused_in_a_sentence(lambda: TrainingArguments(output_dir="unused", use_cpu=True, report_to="none", **typed),
                           typed)


def _refused_in_a_sentence(build: Any, extra: dict[str, Any]) -> Any:
    try:
        return build()
    except (ValueError, TypeError) as exc:  # TrainingArguments' own checks of a value or a combination
        reason = " ".join(str(exc).split()).rstrip(".")
        if len(reason) > 300:
            reason = reason[:300] + "..."
        raise ConfigError(f"training_args are refused by transformers ({reason}): fix or remove "
                          f"{', '.join(extra)}.") from None


@functools.cache
def training_argument_names() -> frozenset[str]:
    """transformers.TrainingArguments' field names, read once (the import takes seconds)."""
    from slmnb.models import quiet_libraries

    quiet_libraries()  # transformers pulls in bitsandbytes, which warns about a kernel it cannot fetch offline
    from transformers import TrainingArguments

    return frozenset(f.name for f in dataclasses.fields(TrainingArguments) if f.init)


def typed_training_args(extra: dict[str, Any]) -> dict[str, Any]:
    """training_args checked against TrainingArguments' fields, text turned into each field's type (a command line
    and Olive's JSON give '0.5' and 0.5 alike)."""
    import difflib
    import typing

    from transformers import TrainingArguments

    known = training_argument_names()
    hints = typing.get_type_hints(TrainingArguments)
    out: dict[str, Any] = {}
    for name, value in extra.items():
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"training_args names {name!r}, which is not a transformers TrainingArguments "
                              f"argument{hint}: fix the name or remove it.")
        out[name] = _typed(name, value, hints.get(name))
    return out


def _typed(name: str, value: Any, hint: Any) -> Any:
    import typing

    if not isinstance(value, str):
        return value
    kinds = [k for k in (typing.get_args(hint) or (hint,)) if k is not type(None)]
    text = value.strip()
    if text.lower() in ("none", "null", "") and len(kinds) < len(typing.get_args(hint) or (hint,)):
        return None
    for kind in kinds:
        if kind is bool:
            if text.lower() in ("true", "false", "yes", "no", "1", "0"):
                return text.lower() in ("true", "yes", "1")
        elif kind is int:
            try:
                return int(text)
            except ValueError:
                continue
        elif kind is float:
            try:
                return float(text)
            except ValueError:
                continue
        elif kind is str:
            return value
    if str in kinds or not kinds or any(k not in (bool, int, float) for k in kinds):
        return value  # an enum or a union with text: TrainingArguments checks it
    raise ConfigError(f"training_args {name} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}.")


def best_model_arguments(config: FinetuneConfig, plan: StepPlan) -> dict[str, Any]:
    """metric_for_best_model and its direction, when early stopping or the best model at the end needs them."""
    from slmnb.metrics import greater_is_better

    if not (plan.early_stopping or plan.load_best):
        return {"metric_for_best_model": None}
    key = config.metric_for_best_model
    # The Trainer's own default calls every metric not ending in "loss" better when higher: perplexity is not.
    return {"metric_for_best_model": key, "greater_is_better": greater_is_better(key.removeprefix("eval_"))}
