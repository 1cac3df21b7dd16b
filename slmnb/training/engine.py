"""One training job on the real transformers Trainer + peft: build the model, tokenize, train, save.

It reports through `EventSink` (implemented by TrainingRun) and never prints: the Trainer's own printer is removed.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Protocol

from slmnb import data as data_mod
from slmnb.config import FinetuneConfig
from slmnb.errors import ConfigError
from slmnb.models import load_model, load_tokenizer, quiet_libraries
from slmnb.training import events as ev


class EventSink(Protocol):
    """What the engine needs from its caller: a place for events and the stop/pause controls."""

    def emit(self, event: ev.Event) -> None: ...
    def elapsed(self) -> float: ...
    def stop_requested(self) -> bool: ...
    def hold_if_paused(self, step: int) -> None: ...
    def set_config(self, config: FinetuneConfig) -> None: ...


def effective_precision(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    # bf16 pays off on CPUs with native bf16 dot products (AVX512-BF16 or AMX): 2.4x faster here.
    return "bf16" if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported() else "fp32"


def default_target_modules(model: Any) -> list[str] | str:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    return list(DEFAULTS.get(model.config.model_type, [])) or "all-linear"


def build_model(config: FinetuneConfig, precision: str) -> tuple[Any, FinetuneConfig]:
    """The model to train, and the config with target_modules resolved for the architecture."""
    import torch
    from transformers import set_seed

    set_seed(config.seed)
    on_cpu = not torch.cuda.is_available()
    # Measured on the embedded model, batch 8 x 48 tokens: eager attention is 12-15% faster than SDPA's CPU kernel
    # at these lengths; its memory grows with the square of the length, so long sequences keep SDPA.
    attention = "eager" if on_cpu and config.max_seq_len <= 128 else None
    model = load_model(config.model_name_or_path, four_bit=config.method == "qlora", attention=attention)
    if config.method == "full":
        return model, config
    if config.method == "lora" and precision == "bf16":
        # Autocast would cast the frozen weights to bf16 again at every step; keep them in bf16 once. The LoRA
        # weights (peft keeps adapters in fp32), embeddings, norms and the residual stream stay fp32.
        head = model.get_output_embeddings()  # tied to the input embeddings here: keep fp32
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                module.to(torch.bfloat16)
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    config = config.replace(target_modules=config.target_modules or default_target_modules(model))
    if config.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.target_modules, task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        if "not found in the base model" not in str(exc) and "Target modules" not in str(exc):
            raise
        names = sorted({n.split(".")[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise ConfigError(f"target_modules {config.target_modules} match no layer of this model: use some of "
                          f"{', '.join(names)}, or all-linear.") from None
    if on_cpu:
        from slmnb.training.dropout import use_fast_dropout

        use_fast_dropout(model)
    return model, config


class Collator:
    """Pads a batch on the left to its longest row; padding takes no loss (label -100) and no attention.

    Left padding puts every response at the end of its row, as at generation time, so the loss only needs the
    last few positions' logits (see trim_to_labelled_tail). Position ids count from each row's first real token.
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, width - n:] = torch.tensor(row["input_ids"])
            labels[i, width - n:] = torch.tensor(row["labels"])
            mask[i, width - n:] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels}


def trim_to_labelled_tail(inputs: dict[str, Any]) -> dict[str, Any]:
    """Ask the model for logits only over the tail of the batch that has labels.

    The 49k-way output layer and its softmax are a third of a step when taken over every position; with
    response-only loss the labels sit in the last few positions, so this halves the step on a CPU. The loss is the
    same: the logit at position t predicts token t + 1, so K trailing labels need K + 1 trailing logits.
    """
    labels = inputs["labels"]
    labelled = (labels != -100).any(dim=0).nonzero()
    if len(labelled) == 0:
        return inputs
    keep = labels.shape[1] - int(labelled[0]) + 1
    if keep >= labels.shape[1]:
        return inputs
    return {**inputs, "labels": labels[:, -keep:], "logits_to_keep": keep}


def _trainer_class() -> Any:
    from transformers import Trainer

    class TailLossTrainer(Trainer):  # type: ignore[misc]
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
            return super().compute_loss(model, trim_to_labelled_tail(inputs), return_outputs, num_items_in_batch)

    return TailLossTrainer


def _callback(sink: EventSink, config: FinetuneConfig, folder: Any, dropped: int) -> Any:
    from transformers import TrainerCallback

    class EventCallback(TrainerCallback):
        """Turns the Trainer's hooks into events, and applies stop and pause between steps."""

        def __init__(self) -> None:
            self.last_log = (time.perf_counter(), 0)

        def on_train_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            sink.emit(ev.Started(step=state.global_step, elapsed=sink.elapsed(), name=config.name or "",
                                 max_steps=state.max_steps, precision="bf16" if args.bf16 else "fp32",
                                 output_dir=str(folder.path), dropped_rows=dropped))
            self.last_log = (time.perf_counter(), state.num_input_tokens_seen)

        def on_step_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            sink.hold_if_paused(state.global_step)

        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            if sink.stop_requested():
                # The supported way to end a Trainer early; the save makes the stop resumable.
                control.should_training_stop = True
                control.should_save = True

        def on_log(self, args, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
            logs = logs or {}
            now = time.perf_counter()
            if "loss" in logs:
                then, tokens_then = self.last_log
                # The Trainer counts non-padding tokens as batches are consumed, summed over all processes.
                rate = (state.num_input_tokens_seen - tokens_then) / max(now - then, 1e-9)
                self.last_log = (now, state.num_input_tokens_seen)
                grad = logs.get("grad_norm")
                sink.emit(ev.Step(step=state.global_step, elapsed=sink.elapsed(), loss=float(logs["loss"]),
                                  learning_rate=float(logs.get("learning_rate", 0.0)),
                                  grad_norm=None if grad is None else float(grad), tokens_per_second=rate,
                                  epoch=float(logs.get("epoch", state.epoch or 0.0))))
            if "eval_loss" in logs:
                loss = float(logs["eval_loss"])
                sink.emit(ev.Eval(step=state.global_step, elapsed=sink.elapsed(), eval_loss=loss,
                                  perplexity=ev.perplexity(loss)))

        def on_save(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            sink.emit(ev.Checkpoint(step=state.global_step, elapsed=sink.elapsed(), path=str(path)))

    return EventCallback()


def train(config: FinetuneConfig, rows: data_mod.Data, folder: Any, sink: EventSink,
          resume_from: Path | None) -> tuple[str, Path, int]:
    """Train and save; returns the outcome (completed | early stopping | stopped), the output path and the step."""
    quiet_libraries()
    from transformers import EarlyStoppingCallback, PrinterCallback, TrainingArguments

    precision = effective_precision(config.precision)
    tokenizer = load_tokenizer(config.model_name_or_path)
    model, config = build_model(config, precision)
    sink.set_config(config)

    train_set, dropped = data_mod.encode_rows(config, tokenizer, rows.train)
    if not train_set:
        raise ConfigError(f"Every training row was cut before its response at max_seq_len {config.max_seq_len}: "
                          "raise max_seq_len.")
    eval_set, _ = data_mod.encode_rows(config, tokenizer, rows.eval)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_epoch = math.ceil(len(train_set) / (config.per_device_train_batch_size * world))
    per_epoch = math.ceil(per_epoch / config.gradient_accumulation_steps)
    total = config.max_steps or max(1, math.ceil(per_epoch * config.num_train_epochs))
    eval_steps = config.eval_steps or max(1, total // 10)
    save_steps = config.save_steps or eval_steps
    early = config.early_stopping_patience is not None and bool(eval_set)
    if early and save_steps % eval_steps:
        raise ConfigError(f"early_stopping_patience needs save_steps to be a multiple of eval_steps ({eval_steps}): "
                          "leave save_steps empty.")

    args = TrainingArguments(
        output_dir=str(folder.checkpoints),
        use_cpu=not _has_cuda(),
        bf16=precision == "bf16",
        max_steps=total,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        logging_steps=config.logging_steps,
        eval_strategy="steps" if eval_set else "no",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        seed=config.seed,
        data_seed=config.seed,
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        ddp_backend="gloo" if world > 1 and not _has_cuda() else None,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        prediction_loss_only=True,  # evaluation needs the loss, not every position's logits
        dataloader_num_workers=0,
    )
    callbacks = [_callback(sink, config, folder, dropped)]
    if early:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = _trainer_class()(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set or None,
                               data_collator=Collator(tokenizer.pad_token_id), callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    step = trainer.state.global_step
    if sink.stop_requested():
        outcome = "stopped"
    elif step < total:
        outcome = "early stopping"
    else:
        outcome = "completed"
    output = folder.output_path(config.method)
    if trainer.is_world_process_zero():
        output = folder.save_output(trainer.model, config, tokenizer if config.method == "full" else None)
    return outcome, output, step


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
