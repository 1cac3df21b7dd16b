"""slmnb.metrics: its evaluate modules give the reference libraries' numbers offline; its errors are one sentence."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sacrebleu
from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from slmnb import metrics
from slmnb.config import FinetuneConfig
from slmnb.datafiles import read_splits
from slmnb.errors import ConfigError, MetricError

# Generated answers as a model gives them (a sentence after the label, punctuation, another case) against tones-like
# references: two right per class but one, answers that name a wrong class, and two words that are no label at all.
ANSWERS = ["Joy! What a day.", "joy", "Sad", "sad.", "Fear", "Surprise", "Joy", "The phrase is sad", "Surprise",
           "", "fear", "Sad"]
LABELS = ["Joy", "Joy", "Sad", "Sad", "Fear", "Fear", "Fear", "Sad", "Surprise", "Surprise", "Joy", "Sad"]

# Free text with every kind of partial match, one empty answer and one exact (only in case and spacing) answer.
GENERATED = ["The release adds dark mode to the settings page.", "Fixed a crash when the file is empty",
             "", "Improves start-up time by loading plugins lazily on first use.",
             "removed  the old export button", "Support for Python 3.13"]
REFERENCES = ["Adds a dark mode to the settings page.", "Fixes a crash when opening an empty file.",
              "Updates the translations for German and French.", "Start-up is faster: plugins load on first use.",
              "Removed the old export button", "Adds support for Python 3.13 and drops 3.8."]


def _labels(texts: list[str]) -> list[str]:
    return [metrics.label_of(t) for t in texts]


def test_accuracy_and_f1_equal_scikit_learn() -> None:
    scores = metrics.compute(["accuracy", "f1"], ANSWERS, LABELS)
    truth, predicted = _labels(LABELS), _labels(ANSWERS)
    classes = sorted(set(truth))
    assert scores.values["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert scores.values["f1"] == pytest.approx(f1_score(truth, predicted, labels=classes, average="macro",
                                                          zero_division=0))
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=classes,
                                                                     zero_division=0)
    assert scores.per_class is not None and list(scores.per_class) == classes
    for i, label in enumerate(classes):
        assert scores.per_class[label] == pytest.approx({"precision": precision[i], "recall": recall[i],
                                                         "f1": f1[i], "support": support[i]})
    assert scores.per_row == [float(p == t) for p, t in zip(predicted, truth, strict=True)]
    # The case is not trivial: some rows are wrong, and the words that are no label add no class.
    assert 0 < scores.values["accuracy"] < 1 and "the" not in scores.per_class


@pytest.mark.parametrize(("answers", "references"), [
    (["sad", "fear", "joy"], ["joy", "sad", "fear"]),  # all wrong
    (["joy", "joy", "sad"], ["joy", "joy", "joy"]),  # the references take one class
    (["", "", "joy"], ["sad", "joy", "joy"]),  # empty answers
])
def test_label_metrics_on_edge_cases_equal_scikit_learn(answers: list[str], references: list[str]) -> None:
    scores = metrics.compute(["accuracy", "f1"], answers, references)
    classes = sorted(set(references))
    assert scores.values["accuracy"] == pytest.approx(accuracy_score(references, answers))
    assert scores.values["f1"] == pytest.approx(f1_score(references, answers, labels=classes, average="macro",
                                                          zero_division=0))


def test_text_metrics_equal_sacrebleu_and_rouge_score() -> None:
    scores = metrics.compute(["bleu", "rouge", "chrf", "exact_match"], GENERATED, REFERENCES)
    assert scores.values["bleu"] == pytest.approx(sacrebleu.corpus_bleu(GENERATED, [REFERENCES]).score / 100)
    assert scores.values["chrf"] == pytest.approx(sacrebleu.corpus_chrf(GENERATED, [REFERENCES]).score / 100)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    rows = [scorer.score(r, p) for p, r in zip(GENERATED, REFERENCES, strict=True)]
    for kind in ("rouge1", "rouge2", "rougeL"):
        assert scores.values[kind] == pytest.approx(sum(row[kind].fmeasure for row in rows) / len(rows))
    assert scores.values["exact_match"] == pytest.approx(1 / 6)  # whitespace and case are normalised, nothing else
    assert scores.per_row == pytest.approx([row["rougeL"].fmeasure for row in rows])
    assert scores.per_class is None
    assert all(0 < scores.values[k] < 1 for k in ("bleu", "rouge1", "rouge2", "rougeL", "chrf"))


def test_without_rouge_each_row_is_ranked_by_sentence_chrf() -> None:
    scores = metrics.compute(["bleu"], GENERATED, REFERENCES)
    assert list(scores.values) == ["bleu"]
    assert scores.per_row == pytest.approx([sacrebleu.sentence_chrf(p, [r]).score / 100
                                            for p, r in zip(GENERATED, REFERENCES, strict=True)])


def test_text_metrics_on_edge_cases() -> None:
    perfect = metrics.compute(["bleu", "rouge", "chrf", "exact_match"], REFERENCES, REFERENCES)
    assert perfect.values == pytest.approx({"bleu": 1, "rouge1": 1, "rouge2": 1, "rougeL": 1, "chrf": 1,
                                            "exact_match": 1})
    empty = metrics.compute(["bleu", "rouge", "chrf", "exact_match"], [""] * 3, REFERENCES[:3])
    assert empty.values == {"bleu": 0, "rouge1": 0, "rouge2": 0, "rougeL": 0, "chrf": 0, "exact_match": 0}
    assert empty.per_row == [0, 0, 0]
    assert metrics.compute(["accuracy", "bleu"], [], []) == metrics.Scores(values={}, per_class=None, per_row=[])


def test_perplexity_is_exp_of_the_mean_token_loss() -> None:
    assert metrics.perplexity(6.0, 3) == pytest.approx(math.exp(2.0))
    module = metrics.load("perplexity")
    assert module.compute(nll_sum=[1.0, 5.0], tokens=[1, 2])["perplexity"] == pytest.approx(math.exp(2.0))
    with pytest.raises(MetricError, match="at least one scored token"):
        metrics.perplexity(0.0, 0)
    # compute skips it: perplexity needs the model's losses, not answers.
    assert metrics.compute(["perplexity", "accuracy"], ["joy"], ["joy"]).values == {"accuracy": 1.0}


def test_modules_load_with_evaluate_from_their_path_offline() -> None:
    import evaluate

    module = evaluate.load(str(Path(metrics.__file__).parent / "modules" / "f1.py"))
    assert module.compute(predictions=["joy", "joy"], references=["joy", "sad"])["f1"] == pytest.approx(1 / 3)
    for name in metrics.BUILTIN:
        info = metrics.load(name)
        assert info.description.strip() and info.citation.strip() and info.features, name


def _user_module(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(body, encoding="utf-8")
    return folder / f"{name}.py"


LENGTH_RATIO = '''
import datasets
import evaluate


class LengthRatio(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description="answer length over reference length", citation="",
                                   features=datasets.Features({"predictions": datasets.Value("string"),
                                                               "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        return {"length_ratio": sum(map(len, predictions)) / sum(map(len, references)), "note": "not a number"}
'''


def test_a_users_module_loads_from_a_file_or_a_folder(tmp_path: Path) -> None:
    script = _user_module(tmp_path / "length_ratio", "length_ratio", LENGTH_RATIO)
    assert metrics.keys(str(script)) == []  # not known before it runs
    scores = metrics.compute(["rouge", str(script)], ["abcd"], ["ab"])
    assert scores.values["length_ratio"] == 2.0 and "note" not in scores.values and "rougeL" in scores.values
    assert metrics.keys(str(script)) == ["length_ratio"]
    folder = str(tmp_path / "length_ratio")
    assert metrics.check_names([folder]) == [folder]
    assert metrics.load(folder).compute(predictions=["a"], references=["ab"])["length_ratio"] == 0.5


def test_a_users_module_gets_labels_in_a_classification_list(tmp_path: Path) -> None:
    script = _user_module(tmp_path, "length_ratio", LENGTH_RATIO)
    # label_of("Joy, surely!") is "joy": the same length as the reference's label.
    assert metrics.compute(["accuracy", str(script)], ["Joy, surely!"], ["Joy"]).values["length_ratio"] == 1.0


@pytest.mark.parametrize(("body", "reason"), [
    ("import evaluate\n\ndef broken(:\n", "SyntaxError: "),
    ("import evaluate\n\nraise RuntimeError('no model here\\nsecond line')\n", "RuntimeError: no model here."),
    ("import evaluate\n\nANSWER = 42\n", "defines no evaluate.Metric class"),
])
def test_a_users_module_that_fails_to_load_names_its_path_and_why(tmp_path: Path, body: str, reason: str) -> None:
    broken = _user_module(tmp_path, "broken", body)
    with pytest.raises(MetricError) as error:
        metrics.load(str(broken))
    message = str(error.value)
    assert message.startswith(f"The metric module {broken} could not be loaded: ") and _one_sentence(message)
    assert reason in message


def test_a_users_module_that_fails_on_the_answers_names_its_path(tmp_path: Path) -> None:
    script = _user_module(tmp_path, "ratio_or_fail", LENGTH_RATIO.replace("class LengthRatio", "class RatioOrFail"))
    with pytest.raises(MetricError) as error:
        metrics.compute(["bleu", str(script)], ["abc"], [""])  # the references' total length is 0
    assert str(error.value) == (f"The metric module {script} failed on the answers: ZeroDivisionError: division by "
                                "zero.")


@pytest.mark.parametrize(("name", "expected"), [
    ("acuracy", "Unknown metric 'acuracy' (did you mean accuracy?): use accuracy, f1, exact_match, bleu, rouge, "
                "chrf, perplexity or the path of an evaluate module"),
    ("rougeL", "(did you mean rouge?)"),
    ("meteor", "Unknown metric 'meteor': use accuracy"),
    ("./no_such_metric.py", "The metric module ./no_such_metric.py does not exist: use accuracy"),
])
def test_an_unknown_metric_is_one_sentence_listing_the_available_ones(name: str, expected: str) -> None:
    with pytest.raises(MetricError) as error:
        metrics.check_names(["accuracy", name])
    assert expected in str(error.value) and _one_sentence(str(error.value))
    assert isinstance(error.value, ConfigError)


def _one_sentence(message: str) -> bool:
    return message.endswith(".") and "\n" not in message and not re.search(r"[.?!]\s+[A-Z]", message)


def test_a_folder_without_its_script_is_named(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "other.py").write_text("", encoding="utf-8")
    with pytest.raises(MetricError, match=r"folder .*mine holds no mine\.py"):
        metrics.load(str(tmp_path / "mine"))


def test_check_names_spells_built_in_names_canonically_once() -> None:
    assert metrics.check_names(["Accuracy", "f1", "accuracy", " ROUGE "]) == ["accuracy", "f1", "rouge"]
    with pytest.raises(MetricError, match="is not a name"):
        metrics.check_names([""])


def test_importing_slmnb_metrics_loads_neither_evaluate_nor_torch() -> None:
    heavy = ("evaluate", "datasets", "torch", "sacrebleu", "rouge_score")
    code = f"import sys, slmnb.metrics, slmnb.config; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_label_of_is_the_first_word_in_lower_case_without_punctuation() -> None:
    assert [metrics.label_of(t) for t in ["Joy", "  joy! It is.", "\"Sad\"", "", "   ", "Fear,", "SURPRISE\n"]] == [
        "joy", "joy", "sad", "", "", "fear", "surprise"]


def test_choose_picks_label_metrics_for_tones() -> None:
    train = read_splits(FinetuneConfig(data_name="tones"))["train"]
    assert metrics.choose([row["tone"] for row in train]) == (["accuracy", "f1"],
                                                               "the responses take 4 distinct values")


@pytest.mark.parametrize(("responses", "reason"), [
    ([f"The build {i} passes after the fix." for i in range(40)], "the responses are free text: 40 distinct of 40"),
    # 5 values, but only 10 rows: 2 per value is too few to call them labels.
    (["a", "b", "c", "d", "e"] * 2, "the responses are free text: 5 distinct of 10"),
    # Few values, but label_of (the first word) would make "very good" and "very bad" the same answer.
    (["very good", "very bad", "good"] * 10, "the responses take 3 distinct values, but their first words do not "
                                             "tell them apart"),
    (["positive"] * 9 + [f"label {i}" for i in range(21)] * 3, "the responses are free text: 22 distinct of 72"),
])
def test_choose_picks_text_metrics_for_free_text(responses: list[str], reason: str) -> None:
    assert metrics.choose(responses) == (["bleu", "rouge", "chrf"], reason)


def test_choose_ignores_case_and_spacing_and_needs_three_rows_per_value() -> None:
    assert metrics.choose(["Yes", "yes ", "No", "no", "YES", "No"]) == (["accuracy", "f1"],
                                                                      "the responses take 2 distinct values")
    assert metrics.choose(["Yes", "No", "yes", "no", "Maybe"])[0] == ["bleu", "rouge", "chrf"]


def test_keys_directions_and_classification() -> None:
    assert {name: metrics.keys(name) for name in metrics.BUILTIN} == {
        "accuracy": ["accuracy"], "f1": ["f1"], "exact_match": ["exact_match"], "bleu": ["bleu"],
        "rouge": ["rouge1", "rouge2", "rougeL"], "chrf": ["chrf"], "perplexity": ["perplexity"]}
    assert [metrics.greater_is_better(k) for k in ("accuracy", "rougeL", "eval_f1", "perplexity", "eval_loss",
                                                   "loss", "eval_perplexity")] == [True] * 3 + [False] * 4
    assert metrics.is_classification(["accuracy", "f1", "perplexity"])
    assert not metrics.is_classification(["accuracy", "rouge"]) and not metrics.is_classification(["perplexity"])


def test_threads_computing_at_once_each_get_their_own_scores() -> None:
    """Training evaluates in a background thread while the notebook may evaluate too; loaded instances buffer rows."""
    results: dict[int, float] = {}

    def work(i: int) -> None:
        answers = ["joy"] * i + ["sad"] * (10 - i)
        results[i] = metrics.compute(["accuracy"], answers, ["joy"] * 10).values["accuracy"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: i / 10 for i in range(8)}


def test_two_processes_loading_into_an_empty_modules_cache_both_work(tmp_path: Path) -> None:
    """A kernel and `slmnb eval` may load the same modules at once; evaluate copies them into its cache first."""
    code = ("from slmnb import metrics; "
            "print(metrics.compute(['accuracy', 'rouge'], ['joy a', 'sad'], ['joy a', 'fear']).values['accuracy'])")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert [out.strip() for out, _ in outputs] == ["0.5", "0.5"]
    assert (tmp_path / "modules" / "evaluate_modules" / "metrics" / "rouge").is_dir()
