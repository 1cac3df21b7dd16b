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
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size) == (6, 12)  # no backward: 2x
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


# --- evaluation: what decides it, and what the Trainer is told (issue 15) ---------------------------------------


def tones_like(labels: list[str], n: int = 40) -> list[dict]:
    return [{"phrase": f"phrase number {i}", "tone": labels[i % len(labels)]} for i in range(n)]


def test_the_metrics_are_chosen_from_the_training_responses_and_said() -> None:
    from slmnb.training.prepare import settled_metrics

    labelled = FinetuneConfig(rows=tones_like(["Joy", "Sad", "Fear", "Surprise"]), prompt_template="{phrase}",
                              response_template="{tone}")
    fields, notes = settled_metrics(labelled, labelled.rows or [])
    assert fields == {"metrics": ["accuracy", "f1"], "eval_generate_samples": 16}
    assert notes == ["metrics: accuracy, f1 (the responses take 4 distinct values)"]
    free = labelled.replace(rows=[{"phrase": f"p{i}", "tone": f"a sentence that says {i} things"} for i in range(40)])
    fields, notes = settled_metrics(free, free.rows or [])
    assert fields["metrics"] == ["bleu", "rouge", "chrf"] and notes[0].startswith("metrics: bleu, rouge, chrf (")
    # What the user gave stays, without a note; a metric_for_best_model the settled metrics lack is one sentence.
    assert settled_metrics(labelled.replace(metrics=["exact_match"], eval_generate_samples=4), []) == ({}, [])
    with pytest.raises(ConfigError, match="'rougeL' is not a score of this run's metrics"):
        settled_metrics(labelled.replace(metric_for_best_model="rougeL"), labelled.rows or [])


def test_a_text_template_run_has_no_generation_metrics() -> None:
    from slmnb.training.prepare import settled_metrics

    config = FinetuneConfig(rows=tones_like(["Joy"]), text_template="{phrase} -> {tone}")
    fields, notes = settled_metrics(config, config.rows or [])
    assert fields == {"eval_generate_samples": 0} and "no separate answer to score" in notes[0]
    with pytest.raises(ConfigError, match="not a score of this run's metrics: use one of eval_loss, perplexity."):
        settled_metrics(config.replace(metric_for_best_model="accuracy"), config.rows or [])


@pytest.mark.parametrize(("fields", "best", "greater"), [
    ({"early_stopping_patience": 2}, "eval_loss", False),
    ({"early_stopping_patience": 2, "metric_for_best_model": "accuracy"}, "accuracy", True),
    ({"load_best_model_at_end": True, "metric_for_best_model": "eval_rougeL", "metrics": ["rouge"]}, "eval_rougeL",
     True),
    ({"load_best_model_at_end": True, "metric_for_best_model": "perplexity"}, "perplexity", False),
])
def test_the_trainer_is_told_which_metric_is_best_and_its_direction(tmp_path, fields: dict, best: str,
                                                                   greater: bool) -> None:
    config = FinetuneConfig(data_name="tones", prompt_template="{phrase}", response_template="{tone}", max_steps=20,
                            eval_steps=5, **fields)
    plan = plan_steps(config, 100, has_eval=True)
    args = training_arguments(config, plan, precision="fp32", output_dir=str(tmp_path), has_eval=True)
    assert args.load_best_model_at_end and args.metric_for_best_model == best and args.greater_is_better is greater
    plain = plan_steps(config.replace(early_stopping_patience=None, load_best_model_at_end=False), 100, True)
    unasked = training_arguments(config, plain, precision="fp32", output_dir=str(tmp_path), has_eval=True)
    assert not unasked.load_best_model_at_end and unasked.metric_for_best_model is None
    # Without an eval set there is no best evaluation to keep.
    assert not plan_steps(config, 100, has_eval=False).load_best


def test_the_best_model_at_the_end_needs_saves_on_evaluations() -> None:
    config = FinetuneConfig(data_name="tones", text_template="{phrase}", max_steps=20, eval_steps=4, save_steps=6,
                            load_best_model_at_end=True)
    with pytest.raises(ConfigError, match="load_best_model_at_end needs save_steps to be a multiple of eval_steps"):
        plan_steps(config, 100, has_eval=True)


def test_generation_eval_answers_the_same_seeded_sample_at_every_evaluation() -> None:
    from slmnb.models import load_tokenizer
    from slmnb.training.generation_eval import answer_budget, plan_generation_eval

    tokenizer = load_tokenizer("tiny-llama")
    rows = tones_like(["Joy", "Sad", "Fear"], 30)
    config = FinetuneConfig(model_name_or_path="tiny-llama", rows=rows, prompt_template="{phrase}",
                            response_template="{tone}", metrics=["accuracy"], eval_generate_samples=8, seed=3)
    encoded = [{"input_ids": [1] * 9, "labels": [-100] * 5 + [7] * n} for n in (2, 4, 3)]

    def plan(config: FinetuneConfig):  # type: ignore[no-untyped-def]
        return plan_generation_eval(config, tokenizer, rows, rows, encoded, lambda: None)

    first, again = plan(config), plan(config)
    assert first is not None and again is not None
    assert len(first.prompts) == 8 and first.references == again.references and first.prompts == again.prompts
    assert [len(p) for p in first.prompts] == sorted(len(p) for p in first.prompts)  # shortest first: less padding
    other = plan(config.replace(seed=4))
    assert other is not None and other.prompts != first.prompts  # the seed picks the rows
    assert first.max_new_tokens == answer_budget(encoded) == 4 + 2 and first.names == ["accuracy"]
    # No backward pass follows: batches twice a training micro-batch, as the eval loss's (inference_batch_size).
    assert first.batch_size == 2 * config.per_device_train_batch_size
    assert plan(config.replace(eval_max_new_tokens=30)).max_new_tokens == 30  # type: ignore[union-attr]
    # A run made before metrics were settled into config.yaml, resumed: chosen from its data as a new run's are.
    assert plan(config.replace(metrics=None)).names == ["accuracy", "f1"]  # type: ignore[union-attr]
    assert len(plan(config.replace(eval_generate_samples=100)).prompts) == 30  # type: ignore[union-attr]
    # Off: nothing is planned, so nothing is generated.
    assert plan(config.replace(eval_generate_samples=0)) is None
    assert plan(config.replace(metrics=["perplexity"])) is None  # perplexity comes from the eval loss
    assert plan_generation_eval(config, tokenizer, [], rows, encoded, lambda: None) is None
    assert answer_budget([{"labels": [-100] + [5] * 400}]) == 256  # capped
    assert answer_budget([{"labels": [-100] + [5] * 40}]) == 50


def test_answers_after_training_get_the_room_they_got_while_training() -> None:
    """run.evaluate, Export.evaluate and %opt compare --eval allow what generation-eval allowed: one rule."""
    from slmnb.data import encode_rows
    from slmnb.models import load_tokenizer
    from slmnb.training.generation_eval import answer_budget, answer_length

    tokenizer = load_tokenizer("tiny-llama")
    rows = tones_like(["Joy", "Sad", "Surprise me now please"], 30)
    config = FinetuneConfig(model_name_or_path="tiny-llama", rows=rows, prompt_template="{phrase}",
                            response_template="{tone}")
    length = answer_length(config, tokenizer)
    assert length == answer_budget(encode_rows(config, tokenizer, rows)[0])
    longest = max(len(tokenizer(r["tone"], add_special_tokens=False)["input_ids"]) for r in rows)
    assert longest < length <= longest + 8  # the longest response, a margin, not a fixed size
    assert answer_length(config.replace(eval_max_new_tokens=30), tokenizer) == 30


def test_eval_lines_rebuild_their_metrics_and_old_lines_read_as_none() -> None:
    from slmnb.training import events as ev

    record = ev.Eval(step=4, elapsed=1.5, eval_loss=0.5, perplexity=1.6, metrics={"accuracy": 0.75}).record()
    assert record["metrics"] == {"accuracy": 0.75}
    assert ev.from_metric(record) == ev.Eval(step=4, elapsed=1.5, eval_loss=0.5, perplexity=1.6,
                                             metrics={"accuracy": 0.75})
    old = ev.from_metric({"event": "eval", "step": 4, "elapsed": 1.5, "eval_loss": 0.5, "perplexity": 1.6})
    assert isinstance(old, ev.Eval) and old.metrics == {}
    damaged = ev.from_metric({"event": "eval", "step": 4, "elapsed": 1.5, "eval_loss": 0.5,
                              "metrics": {"accuracy": "high", "f1": 0.5, "x": True}})
    assert isinstance(damaged, ev.Eval) and damaged.metrics == {"f1": 0.5}
    step = ev.Step(step=2, elapsed=1.0, loss=1.0, learning_rate=1e-3, grad_norm=None, tokens_per_second=9.0,
                   epoch=0.1, tokens_seen=120)
    assert ev.from_metric(step.record()) == step
    old_step = ev.from_metric({"event": "step", "step": 2, "elapsed": 1.0, "loss": 1.0})
    assert isinstance(old_step, ev.Step) and old_step.tokens_seen == 0


def test_run_json_keeps_the_last_and_best_scores_by_each_direction(tmp_path) -> None:
    import json

    from slmnb.training.runfiles import RunFolder

    folder = RunFolder(tmp_path)
    folder.update_state(status="running")
    lines = [{"event": "eval", "step": s, "elapsed": float(s), "eval_loss": 1.0, "metrics": m} for s, m in
             ((2, {"accuracy": 0.5, "perplexity": 9.0}), (4, {"accuracy": 0.75, "perplexity": 12.0}),
              (6, {"accuracy": 0.25, "perplexity": 7.0}))]
    folder.append_metric({"event": "step", "step": 1, "elapsed": 0.5, "loss": 2.0})
    assert "metrics" not in folder.read_state()  # no scores yet: nothing to summarize
    for line in lines:
        folder.append_metric(line)
    summary = json.loads(folder.state_path.read_text())["metrics"]
    assert summary == {"last": {"accuracy": 0.25, "perplexity": 7.0}, "best": {"accuracy": 0.75, "perplexity": 7.0}}
    folder.keep_metrics_until(4)  # a resume from checkpoint 4 trains step 6 again
    assert folder.read_state()["metrics"] == {"last": {"accuracy": 0.75, "perplexity": 12.0},
                                              "best": {"accuracy": 0.75, "perplexity": 9.0}}
    folder.keep_metrics_until(1)
    assert folder.read_state()["metrics"] is None


def test_generation_eval_stops_between_batches_and_gives_the_model_back_in_training_mode() -> None:
    from slmnb.models import load_model, load_tokenizer
    from slmnb.training.generation_eval import GenerationEval
    from slmnb.training.run import StopNow

    model, tokenizer = load_model("tiny-llama").train(), load_tokenizer("tiny-llama")
    checks: list[bool] = []

    def stop_at_the_second_batch() -> None:
        checks.append(model.training)
        if len(checks) == 2:
            raise StopNow

    prompts = [tokenizer(f"phrase {i}")["input_ids"] for i in range(5)]
    generation = GenerationEval(names=["accuracy"], prompts=prompts, references=["Joy"] * 5, max_new_tokens=3,
                                batch_size=2, tokenizer=tokenizer, check_stop=stop_at_the_second_batch)
    with pytest.raises(StopNow):
        generation.run(model, bf16=False)
    assert checks == [False, False]  # answers come from the model in eval mode (no dropout)
    assert model.training and generation.last == {} and generation.seconds == []
    generation.check_stop = lambda: None
    scores = generation.run(model, bf16=False)
    assert set(scores) == {"accuracy"} and generation.last == scores and len(generation.seconds) == 1
    assert model.training
