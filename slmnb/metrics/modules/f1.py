"""Macro F1, with each class's precision, recall, F1 and support."""

import datasets
import evaluate

_DESCRIPTION = """
F1 is the harmonic mean of precision and recall: F1 = 2 * precision * recall / (precision + recall). Macro F1 is the
unweighted mean of each class's F1, so a rare class counts as much as a frequent one. A class's precision (recall) is
0 when nothing was predicted as (is truly) that class, as scikit-learn does with zero_division=0.

The classes are the labels the references take (or `labels=` when given): a generated answer outside them (a word that
is no label) counts as a miss for its row's true class instead of adding a class of its own. This equals
sklearn.metrics.f1_score(references, predictions, labels=sorted(set(references)), average="macro").
"""

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and Varoquaux, G. and Gramfort, A. and others},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the predicted labels.
    references (`list` of `str`): the true labels.
    labels (`list` of `str`, optional): the classes to average over; default: the labels the references take.
Returns:
    f1 (`float`): macro F1 in [0, 1].
    per_class (`dict`): for each class, its `precision`, `recall`, `f1` and `support` (rows truly of that class).
Examples:
    >>> f1 = evaluate.load("slmnb/metrics/modules/f1.py")
    >>> f1.compute(predictions=["joy", "joy"], references=["joy", "sad"])["f1"]
    0.3333333333333333
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"],
        )

    def _compute(self, predictions: list[str], references: list[str],
                 labels: list[str] | None = None) -> dict[str, object]:
        classes = sorted(set(references)) if labels is None else list(labels)
        per_class = {label: _class_scores(label, predictions, references) for label in classes}
        macro = sum(s["f1"] for s in per_class.values()) / len(classes) if classes else 0.0
        return {"f1": macro, "per_class": per_class}


def _class_scores(label: str, predictions: list[str], references: list[str]) -> dict[str, float]:
    true_pos = sum(p == label and r == label for p, r in zip(predictions, references, strict=True))
    predicted = sum(p == label for p in predictions)
    support = sum(r == label for r in references)
    precision = true_pos / predicted if predicted else 0.0
    recall = true_pos / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": float(support)}
