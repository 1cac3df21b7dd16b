"""One training job on the real transformers Trainer + peft: build the model, tokenize, train, save.

The config arrives settled (slmnb.training.prepare) and is never changed here. The job reports through a `Sink`
(implemented by TrainingRun) and never prints: the Trainer's own printer is removed.
"""

from __future__ import annotations

import os
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmnb import data as data_mod
from slmnb.checks import layer_numbers
from slmnb.config import FinetuneConfig
from slmnb.errors import ConfigError
from slmnb.models import keep_freed_memory, load_tokenizer, quiet_libraries, release_memory
from slmnb.training.arguments import StepPlan, plan_steps, training_arguments
from slmnb.training.base import load_base
from slmnb.training.callback import Sink, diverged, make_callback, weights_finite
from slmnb.training.events import perplexity
from slmnb.training.generation_eval import GenerationEval, plan_generation_eval
from slmnb.training.runfiles import RunFolder

if TYPE_CHECKING:
    from slmnb.training.prefix import FrozenPrefix


def effective_precision(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    # bf16 pays off on CPUs with native bf16 dot products (AVX512-BF16 or AMX): 2.4x faster here.
    return "bf16" if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported() else "fp32"


def build_model(config: FinetuneConfig, precision: str) -> Any:
    """The model to train: the base model, with LoRA layers on the settled target_modules unless full."""
    import torch
    from transformers import set_seed

    set_seed(config.seed)
    on_cpu = not torch.cuda.is_available()
    # Measured on the embedded model, batch 8 x 48 tokens: eager attention is 12-15% faster than SDPA's CPU kernel
    # at these lengths; its memory grows with the square of the length, so long sequences keep SDPA.
    attention = "eager" if on_cpu and config.max_seq_len <= 128 else None
    model = load_base(config, attention)
    if config.method == "full":
        return model
    if config.method == "lora" and precision == "bf16":
        # Autocast would cast the frozen weights to bf16 again at every step; keep them in bf16 once. The LoRA
        # weights (peft keeps adapters in fp32), embeddings, norms and the residual stream stay fp32.
        head = model.get_output_embeddings()  # tied to the input embeddings here: keep fp32
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                module.to(torch.bfloat16)
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if config.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    targets: Any = config.target_modules
    layers = layer_numbers(config.layers_to_transform) if config.layers_to_transform else None
    if layers and targets == "all-linear":  # peft takes layer numbers with a list of module names only
        head = model.get_output_embeddings()
        targets = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                          if isinstance(module, torch.nn.Linear) and module is not head})
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, layers_to_transform=layers, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)  # target_modules were checked against the layers before the thread
    if on_cpu:
        from slmnb.training.dropout import use_fast_dropout

        use_fast_dropout(model)
    return model


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

    class TailLossTrainer(Trainer):
        generation: GenerationEval | None = None  # set by train(): the run's generation-eval, if it has one
        prefix: FrozenPrefix | None = None  # set by train(): the frozen bottom layers' kept rows, if any

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
            inputs = trim_to_labelled_tail(inputs)
            with self.prefix.rows(inputs) if self.prefix is not None else nullcontext():
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,  # type: ignore[no-untyped-def]
                            metric_key_prefix="eval"):
            """The eval loss, then perplexity and the generation metrics beside it as eval_<key>: in the metrics
            the Trainer logs, and where early stopping and load_best_model_at_end look for metric_for_best_model."""
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                             metric_key_prefix)
            found: dict[str, float] = output.metrics if output.metrics is not None else {}
            if f"{metric_key_prefix}_loss" in found:
                found[f"{metric_key_prefix}_perplexity"] = perplexity(float(found[f"{metric_key_prefix}_loss"]))
            if self.generation is not None and metric_key_prefix == "eval":
                scores = self.generation.run(self.model, self.args.bf16)
                found.update({f"eval_{key}": value for key, value in scores.items()})
            best = self.args.metric_for_best_model
            if best and metric_key_prefix == "eval" and f"eval_{best.removeprefix('eval_')}" not in found:
                # A user's evaluate module says what it computes only when it runs: its keys are checked here.
                keys = ", ".join(k.removeprefix("eval_") for k in found if k not in _TRAINER_KEYS)
                raise ConfigError(f"metric_for_best_model {best} is not a score this run computes ({keys}): set it "
                                  "to one of those.")
            return output

    return TailLossTrainer


# What the Trainer's evaluation reports besides the scores: not candidates for metric_for_best_model.
_TRAINER_KEYS = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "eval_model_preparation_time",
                 "epoch")


@dataclass(frozen=True)
class Result:
    outcome: str  # completed | early stopping | stopped
    output: Path | None  # the adapter (or model) folder; None when stopped before the first step
    step: int


def train(config: FinetuneConfig, rows: data_mod.Data, folder: RunFolder, sink: Sink,
          resume_from: Path | None, notes: tuple[str, ...] = ()) -> Result:
    """Train and save the adapter (or model). A stop asked for while tokenizing ends at once, with nothing saved.

    Whatever the outcome, nothing of the job outlives it: the model, Trainer and optimizer are freed, and the memory
    they used goes back to the system (a notebook kernel trains again, predicts and compares in the same process).
    """
    try:
        return _train(config, rows, folder, sink, resume_from, notes)
    except BaseException as exc:
        # The run keeps the exception to report it; its traceback's frames would keep the model, the Trainer and
        # the optimizer's state alive with it. The frames' code and line numbers stay, so it still prints.
        _clear_frames(exc)
        raise
    finally:
        release_memory()


def _train(config: FinetuneConfig, rows: data_mod.Data, folder: RunFolder, sink: Sink,
           resume_from: Path | None, notes: tuple[str, ...]) -> Result:
    from slmnb.training.run import StopNow

    quiet_libraries()
    from transformers import EarlyStoppingCallback, PrinterCallback

    start_step = int(resume_from.name.split("-")[-1]) if resume_from else 0
    precision = effective_precision(config.precision)
    loss_func: Any = None
    if config.loss:  # imported before anything heavy, so a broken file fails the run at once
        from slmnb.training.loss import load as load_loss

        loss_func = load_loss(config.loss)
    tokenizer = load_tokenizer(config.model_name_or_path)
    try:
        train_set, dropped = data_mod.encode_rows(config, tokenizer, rows.train, check=sink.check_stop)
        eval_set, _ = data_mod.encode_rows(config, tokenizer, rows.eval, check=sink.check_stop)
    except StopNow:
        return Result("stopped", None, start_step)
    if not train_set:
        raise ConfigError(f"Every training row was cut before its response at max_seq_len {config.max_seq_len}: "
                          "raise max_seq_len.")
    if not _has_cuda():
        keep_freed_memory()
    model = build_model(config, precision)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    plan = plan_steps(config, len(train_set), bool(eval_set), world)
    args = training_arguments(config, plan, precision=precision, output_dir=str(folder.checkpoints),
                              has_eval=bool(eval_set), cuda=_has_cuda(), world=world)
    generation = plan_generation_eval(config, tokenizer, rows.eval, rows.train, train_set,
                                      sink.check_stop) if eval_set else None
    callbacks = [make_callback(sink, config, folder.path, dropped, notes, generation)]
    if plan.early_stopping and config.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = _trainer_class()(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set or None,
                               data_collator=Collator(tokenizer.pad_token_id), callbacks=callbacks,
                               compute_loss_func=loss_func)
    trainer.generation = generation
    trainer.prefix = _frozen_prefix(model, config, plan, len(train_set), bool(eval_set), world)
    trainer.remove_callback(PrinterCallback)
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except StopNow:  # stopped inside an evaluation, or while paused: save where the weights are
        _save_checkpoint(trainer)
    step = trainer.state.global_step
    if sink.should_stop():
        outcome = "stopped"
    elif step < plan.total:
        outcome = "early stopping"
    else:
        outcome = "completed"
    output = folder.output_path(config.method)
    if trainer.is_world_process_zero():
        if not weights_finite(trainer.model):
            raise diverged(step, "the weights are no longer finite numbers", config.peak_learning_rate)
        output = folder.save_output(trainer.model, config, tokenizer if config.method == "full" else None)
    return Result(outcome, output, step)


def _frozen_prefix(model: Any, config: FinetuneConfig, plan: StepPlan, train_rows: int, has_eval: bool,
                   world: int) -> FrozenPrefix | None:
    """Keep the frozen bottom layers' output per row if rows come back: a second epoch, or a second evaluation."""
    from slmnb.training.prefix import frozen_prefix

    rows_trained = plan.total * config.per_device_train_batch_size * config.gradient_accumulation_steps * world
    evaluations = plan.total // plan.eval_steps if has_eval else 0
    if rows_trained <= train_rows and evaluations < 2:
        return None
    return frozen_prefix(model)


def _save_checkpoint(trainer: Any) -> None:
    """A checkpoint at the current step, unless the Trainer saved one there already."""
    step = trainer.state.global_step
    if step == 0 or (Path(trainer.args.output_dir) / f"checkpoint-{step}" / "trainer_state.json").is_file():
        return
    if not weights_finite(trainer.model):
        return
    # Trainer has no public way to checkpoint outside its loop; this is the method its loop calls.
    trainer._save_checkpoint(trainer.model, trial=None)


def _clear_frames(exc: BaseException) -> None:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:  # the exceptions it was raised from or during, too
        seen.add(id(link))
        traceback.clear_frames(link.__traceback__)
        link = link.__cause__ or link.__context__


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
