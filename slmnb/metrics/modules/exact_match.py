"""Exact match: the share of generated answers that equal their reference after whitespace and case are normalised."""

import datasets
import evaluate

_DESCRIPTION = """
Exact match is the share of rows whose prediction equals its reference, from 0 to 1, after both are normalised: leading
and trailing whitespace removed, inner runs of whitespace made one space, and case folded (str.casefold). Punctuation
counts: "Paris." does not match "Paris".
"""

_CITATION = """
@inproceedings{rajpurkar-etal-2016-squad,
  title={{SQ}u{AD}: 100,000+ Questions for Machine Comprehension of Text},
  author={Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy},
  booktitle={Proceedings of the 2016 Conference on Empirical Methods in Natural Language Processing},
  pages={2383--2392},
  year={2016}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the generated answers.
    references (`list` of `str`): the expected answers.
Returns:
    exact_match (`float`): share of rows that match after normalisation, in [0, 1].
Examples:
    >>> exact_match = evaluate.load("slmnb/metrics/modules/exact_match.py")
    >>> exact_match.compute(predictions=["  The  cat"], references=["the cat"])
    {'exact_match': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        hits = sum(_normal(p) == _normal(r) for p, r in zip(predictions, references, strict=True))
        return {"exact_match": hits / len(references) if references else 0.0}


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()
