"""Accuracy: the share of predictions that equal their reference."""

import datasets
import evaluate

_DESCRIPTION = """
Accuracy is the share of rows whose prediction equals its reference: (correct rows) / (all rows), from 0 to 1.
Labels are compared as strings exactly; `slmnb.metrics.compute` first reduces a generated answer and its reference to
their labels (first word, lower case, no punctuation).
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
Returns:
    accuracy (`float`): share of rows predicted right, in [0, 1]; equals sklearn.metrics.accuracy_score.
Examples:
    >>> accuracy = evaluate.load("slmnb/metrics/modules/accuracy.py")
    >>> accuracy.compute(predictions=["joy", "sad"], references=["joy", "fear"])
    {'accuracy': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        hits = sum(p == r for p, r in zip(predictions, references, strict=True))
        return {"accuracy": hits / len(references) if references else 0.0}
