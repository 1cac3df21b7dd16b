"""Evaluating a run after training: scores of fixed answers, run.evaluate on a tiny run, and its errors."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

import slmnb
from slmnb.config import FinetuneConfig
from slmnb.errors import ConfigError, RunError
from slmnb.evaluation import Evaluation, evaluate_answers, metrics_table, report_lines
from slmnb.training import events as ev

LABELS = ["Joy", "Sad", "Fear", "Joy", "Sad", "Joy"]


def config_of(rows: list[dict], **fields) -> FinetuneConfig:
    return FinetuneConfig.from_dict({"model_name_or_path": "tiny-llama", "rows": rows, "prompt_template": "{phrase}",
                                     "response_template": "{tone}", **fields})


@pytest.fixture
def labelled() -> tuple[FinetuneConfig, list[dict]]:
    rows = [{"phrase": f"phrase {i}", "tone": tone} for i, tone in enumerate(LABELS)]
    return config_of(rows), rows


def test_classification_scores_confusion_and_misses_of_fixed_answers(labelled) -> None:
    from sklearn.metrics import accuracy_score, f1_score

    config, rows = labelled
    answers = ["Joy", "joy.", "Fear!", "Sad", "I think sad", "Joy"]  # what a model may say, case and all
    result = evaluate_answers(config, rows, answers, split="test", model="fine-tuned", metrics=["accuracy", "f1"],
                              seconds=3.0, prompt_tokens=4.5)
    # Labels are first words, no case or punctuation: the reference libraries get those.
    truth, said = ["joy", "sad", "fear", "joy", "sad", "joy"], ["joy", "joy", "fear", "sad", "i", "joy"]
    assert result.scores["accuracy"] == pytest.approx(accuracy_score(truth, said)) == pytest.approx(0.5)
    # Macro F1 over the reference labels: an answer that is no label lowers recall, and adds no class.
    assert result.scores["f1"] == pytest.approx(f1_score(truth, said, average="macro", labels=["fear", "joy", "sad"]))
    assert result.references == LABELS and result.prompts == [f"phrase {i}" for i in range(6)]
    assert result.seconds_per_row() == pytest.approx(0.5)
    # The answers that miss, in the split's order (classification misses are all equally bad).
    assert result.wrong() == [("phrase 1", "Sad", "joy."), ("phrase 3", "Joy", "Sad"),
                              ("phrase 4", "Sad", "I think sad")]
    assert result.wrong(limit=1) == [("phrase 1", "Sad", "joy.")]
    labels, matrix = result.confusion() or ([], [])
    # rows: reference Fear, Joy, Sad; columns: those and "(other)" for the answer that names no label
    assert labels == ["Fear", "Joy", "Sad", "(other)"]
    assert matrix == [[1, 0, 0, 0], [0, 2, 1, 0], [0, 1, 0, 1]]
    assert sum(map(sum, matrix)) == len(rows)


def test_text_scores_rank_the_worst_answer_first(labelled) -> None:
    rows = [{"phrase": "q1", "tone": "the cat sat on the mat"}, {"phrase": "q2", "tone": "a dog barked"},
            {"phrase": "q3", "tone": "rain fell all day"}]
    config = config_of(rows)
    answers = ["the cat sat on the mat", "a dog barked loudly at night", "sunshine"]
    result = evaluate_answers(config, rows, answers, split="test", model="fine-tuned",
                              metrics=["exact_match", "rouge"])
    assert result.scores["exact_match"] == pytest.approx(1 / 3)
    assert {"rouge1", "rouge2", "rougeL"} <= set(result.scores)
    assert result.confusion() is None  # a text task has no labels
    # The right answer is not listed; the answer sharing nothing with its reference comes first.
    assert [prompt for prompt, _, _ in result.wrong()] == ["q3", "q2"]


def test_default_metrics_come_from_the_config_or_the_data() -> None:
    rows = [{"phrase": f"phrase {i}", "tone": tone} for i, tone in enumerate(LABELS * 2)]
    chosen = evaluate_answers(config_of(rows), rows, LABELS * 2, split="test", model="m")
    assert chosen.metrics == ["accuracy", "f1"] and chosen.scores["accuracy"] == 1.0  # 3 labels, 12 rows
    assert chosen.wrong() == [] and "answers all 12 rows right" in "\n".join(report_lines([chosen]))
    text = evaluate_answers(config_of(rows), rows, LABELS * 2, split="test", model="m", metrics="exact_match, chrf")
    assert text.metrics == ["exact_match", "chrf"] and text.scores["exact_match"] == 1.0
    configured = config_of(rows, metrics=["exact_match"])
    assert evaluate_answers(configured, rows, LABELS * 2, split="test", model="m").metrics == ["exact_match"]


def test_metrics_table_puts_models_side_by_side(labelled) -> None:
    config, rows = labelled
    base = evaluate_answers(config, rows, ["Sad"] * 6, split="test", model="base model", metrics=["accuracy"],
                            seconds=6.0, prompt_tokens=12)
    tuned = evaluate_answers(config, rows, LABELS, split="test", model="fine-tuned", metrics=["accuracy"],
                             seconds=3.0, prompt_tokens=12)
    tuned.scores["perplexity"] = 1.234
    header, table = metrics_table([base, tuned])
    assert header == ["metric", "base model", "fine-tuned"]
    # Scores read as everywhere else (slmnb.metrics.score_text): a fraction as a percentage, perplexity as a number.
    assert table == [["accuracy", "33.3%", "100.0%"], ["perplexity", "—", "1.234"],
                     ["prompt tokens / request", "12", "12"], ["seconds / answer", "1.000", "0.500"]]


def test_the_text_report_shows_what_differs_between_prompts() -> None:
    from slmnb.evaluation import varying_part

    prompts = ["Tone of this phrase?\nPhrase: I lost my dog.\nAnswer:",
               "Tone of this phrase?\nPhrase: It works!\nAnswer:"]
    assert [varying_part(prompts)(p) for p in prompts] == ["…I lost my dog.…", "…It works!…"]
    assert varying_part(["one prompt"])("one prompt") == "one prompt"


def test_bad_metric_name_is_one_sentence(labelled) -> None:
    config, rows = labelled
    with pytest.raises(ConfigError, match="accurracy") as raised:
        evaluate_answers(config, rows, LABELS, split="test", model="m", metrics=["accurracy"])
    assert "accuracy" in str(raised.value) and str(raised.value).count(". ") == 0


# --- a trained tiny run -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A tiny two-label run with a held-out eval split, trained once for this module."""
    folder = tmp_path_factory.mktemp("evaluation")
    rows = [{"phrase": f"{'happy' if i % 2 else 'gloomy'} sample {i}", "tone": "Joy" if i % 2 else "Sad"}
            for i in range(40)]
    config = {"model_name_or_path": "tiny-llama", "rows": rows, "prompt_template": "{phrase}",
              "response_template": "{tone}", "max_steps": 12, "eval_steps": 12, "learning_rate": 5e-3,
              "per_device_train_batch_size": 8, "precision": "fp32", "name": "judged", "eval_size": 0.2,
              "output_dir": str(folder / "judged")}
    run = slmnb.finetune(config).wait()
    assert run.status == "finished"
    yield run
    run.release()


def test_run_evaluate_scores_the_asked_metrics_and_its_perplexity(trained) -> None:
    result = trained.evaluate("eval")
    assert isinstance(result, Evaluation) and result.model == "fine-tuned" and result.split == "eval"
    assert result.metrics == ["accuracy", "f1", "perplexity"]  # chosen from the two labels, perplexity added
    assert set(result.scores) == {"accuracy", "f1", "perplexity"}
    assert len(result.predictions) == len(result.references) == len(result.rows) == 8  # eval_size 0.2 of 40
    assert result.seconds > 0 and result.prompt_tokens and result.prompt_tokens > 1
    # The same measure as training's last evaluation, on the same rows with the same tokens and labels.
    last_eval = [e for e in trained.history if isinstance(e, ev.Eval)][-1]
    assert last_eval.step == 12
    assert result.scores["perplexity"] == pytest.approx(last_eval.perplexity, rel=0.02)


def test_run_evaluate_the_base_model_with_chosen_metrics(trained) -> None:
    base = trained.evaluate("eval", metrics=["exact_match"], adapter=False, max_new_tokens=3)
    assert base.model == "base model" and set(base.scores) == {"exact_match"}
    assert all(len(answer.split()) <= 3 for answer in base.predictions)
    tuned = trained.evaluate("eval", metrics=["perplexity"])
    # The base model never saw these labels: its loss on them is far higher than the fine-tune's.
    base_ppl = trained.evaluate("eval", metrics=["perplexity"], adapter=False).scores["perplexity"]
    assert math.isfinite(base_ppl) and base_ppl > tuned.scores["perplexity"]


@pytest.mark.parametrize(
    ("split", "message"),
    [("validation", "split 'validation' names no split of the run's data: the splits are train, and 'eval' is"),
     ("train[", "is not a split or slice such as 'train'")],
)
def test_a_split_that_does_not_exist_is_one_sentence(trained, split: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        trained.evaluate(split)


def test_slmnb_max_eval_rows_shortens_a_whole_split_and_says_so(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLMNB_MAX_EVAL_ROWS", "5")
    result = trained.evaluate("train", metrics="accuracy")
    assert result.split == "train[:5]" and len(result.rows) == 5  # the views show the slice it became
    assert len(trained.evaluate("train[:3]", metrics="accuracy").rows) == 3  # a slice is kept as asked
    assert len(trained.evaluate("eval", metrics="accuracy").rows) == 8  # the held-out rows cannot be sliced
    monkeypatch.setenv("SLMNB_MAX_EVAL_ROWS", "few")
    with pytest.raises(ConfigError, match="SLMNB_MAX_EVAL_ROWS must be a whole number of rows, got 'few'"):
        trained.evaluate("train")


def test_a_bad_metric_is_refused_before_any_model_loads(trained) -> None:
    trained.release()
    with pytest.raises(ConfigError, match="bleurt"):
        trained.evaluate("eval", metrics="accuracy,bleurt")
    assert trained._predictor is None


def test_a_run_without_adapter_or_response_template_is_one_sentence(workdir: Path, trained) -> None:
    fresh = workdir / "fresh"
    fresh.mkdir()
    shutil.copy(trained.dir / "config.yaml", fresh / "config.yaml")
    run = slmnb.load_run(fresh)
    with pytest.raises(RunError, match=r"has no saved adapter yet at .*: wait for it to finish or stop it"):
        run.evaluate("eval")
    run.config = run.config.replace(prompt_template=None, response_template=None, text_template="{phrase} {tone}",
                                    metrics=None, eval_generate_samples=0)
    with pytest.raises(RunError, match="compares answers with the response_template, and run 'judged' has none"):
        run.evaluate("eval")
