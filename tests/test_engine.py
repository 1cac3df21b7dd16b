"""The engine's pure parts: config -> TrainingArguments, the step plan, and the tail-only loss."""

from __future__ import annotations

import pytest

from slmnb.config import FinetuneConfig
from slmnb.errors import ConfigError
from slmnb.training.arguments import StepPlan, plan_steps, training_arguments


def test_every_training_field_reaches_the_trainer(tmp_path) -> None:
    config = FinetuneConfig(data_name="tones", prompt_template="{phrase}", response_template="{tone}",
                            learning_rate=3e-4, lr_scheduler_type="cosine", warmup_ratio=0.25, weight_decay=0.01,
                            gradient_checkpointing=True, gradient_accumulation_steps=4, logging_steps=5,
                            per_device_train_batch_size=6, seed=7, early_stopping_patience=2)
    plan = StepPlan(total=40, eval_steps=10, save_steps=20, early_stopping=True)
    args = training_arguments(config, plan, precision="fp32", output_dir=str(tmp_path), has_eval=True)
    assert (args.learning_rate, str(args.lr_scheduler_type.value), args.weight_decay) == (3e-4, "cosine", 0.01)
    assert args.get_warmup_steps(40) == 10  # a fraction below 1 is a ratio of the run
    assert args.activation_checkpointing and args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert (args.gradient_accumulation_steps, args.logging_steps) == (4, 5)
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size) == (6, 6)
    assert (args.max_steps, args.eval_steps, args.save_steps) == (40, 10, 20)
    assert (args.seed, args.data_seed) == (7, 7)
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_loss"
    assert not args.logging_nan_inf_filter  # a NaN loss must show, not be averaged away
    assert not args.bf16 and args.output_dir == str(tmp_path)

    quiet = training_arguments(FinetuneConfig(data_name="tones", text_template="{phrase}"),
                               StepPlan(total=40, eval_steps=4, save_steps=4, early_stopping=False), precision="bf16",
                               output_dir=str(tmp_path), has_eval=False)
    assert quiet.bf16 and str(quiet.eval_strategy.value) == "no" and not quiet.activation_checkpointing


@pytest.mark.parametrize(("fields", "rows", "expected"), [
    ({"max_steps": 30}, 1000, (30, 3, 3)),
    ({"num_train_epochs": 2.0, "per_device_train_batch_size": 8}, 100, (26, 2, 2)),
    ({"num_train_epochs": 1.0, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 2}, 100, (7, 1, 1)),
    ({"max_steps": 50, "eval_steps": 5, "save_steps": 25}, 10, (50, 5, 25)),
])
def test_step_plan(fields: dict, rows: int, expected: tuple) -> None:
    config = FinetuneConfig(data_name="tones", text_template="{phrase}", **fields)
    plan = plan_steps(config, rows, has_eval=True)
    assert (plan.total, plan.eval_steps, plan.save_steps) == expected


def test_early_stopping_needs_saves_on_evaluations() -> None:
    config = FinetuneConfig(data_name="tones", text_template="{phrase}", max_steps=20, eval_steps=4, save_steps=6,
                            early_stopping_patience=2)
    with pytest.raises(ConfigError, match="save_steps to be a multiple of eval_steps"):
        plan_steps(config, 100, has_eval=True)
    assert not plan_steps(config, 100, has_eval=False).early_stopping


def test_the_tail_only_loss_equals_the_full_loss() -> None:
    import torch

    from slmnb.models import load_model
    from slmnb.training.engine import Collator, trim_to_labelled_tail

    model = load_model("tiny-llama").eval()
    rows = [{"input_ids": list(range(5, 5 + n)), "labels": [-100] * (n - k) + list(range(5 + n - k, 5 + n))}
            for n, k in ((9, 3), (14, 2), (6, 4))]
    batch = Collator(pad_id=0)(rows)
    trimmed = trim_to_labelled_tail(batch)
    assert trimmed["logits_to_keep"] == 5 and trimmed["labels"].shape[1] == 5  # 4 labelled + 1
    with torch.no_grad():
        full = model(**batch).loss
        tail = model(**trimmed).loss
    assert torch.allclose(full, tail, rtol=1e-5, atol=1e-6)
    assert trim_to_labelled_tail({**batch, "labels": torch.full_like(batch["labels"], -100)})["labels"].shape == \
        batch["labels"].shape
