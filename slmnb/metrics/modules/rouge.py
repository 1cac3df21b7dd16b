"""ROUGE-1, ROUGE-2 and ROUGE-L through Google's rouge_score: mean F-measure over the rows."""

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = """
ROUGE compares the words of generated text with a reference: ROUGE-1 by single words, ROUGE-2 by word pairs, ROUGE-L
by their longest common subsequence (words in the same order, not necessarily next to each other). Each row gets the
F-measure of its precision and recall, and a score is the plain mean over the rows.

Computed by rouge_score.rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False), the defaults of
the `rouge` module on the Hugging Face hub; its tokeniser lower-cases and keeps only ASCII letters and digits. Unlike
the hub module, the mean is exact instead of the middle of a bootstrap estimate, so the same answers always give the
same score.
"""

_CITATION = """
@inproceedings{lin-2004-rouge,
  title={{ROUGE}: A Package for Automatic Evaluation of Summaries},
  author={Lin, Chin-Yew},
  booktitle={Text Summarization Branches Out},
  pages={74--81},
  year={2004}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the generated texts.
    references (`list` of `str`): one reference text per prediction.
    use_stemmer (`bool`, default False): strip English word endings with the Porter stemmer before matching.
    use_aggregator (`bool`, default True): return the means; False returns each row's F-measures as lists.
Returns:
    rouge1, rouge2, rougeL (`float`, or `list` of `float` without aggregation): F-measures in [0, 1].
Examples:
    >>> rouge = evaluate.load("slmnb/metrics/modules/rouge.py")
    >>> rouge.compute(predictions=["the cat sat"], references=["the cat sat"])
    {'rouge1': 1.0, 'rouge2': 1.0, 'rougeL': 1.0}
"""

TYPES = ("rouge1", "rouge2", "rougeL")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
            codebase_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
            reference_urls=["https://aclanthology.org/W04-1013/"],
        )

    def _compute(self, predictions: list[str], references: list[str], use_stemmer: bool = False,
                 use_aggregator: bool = True) -> dict[str, object]:
        scorer = rouge_scorer.RougeScorer(list(TYPES), use_stemmer=use_stemmer)
        rows = [scorer.score(r, p) for p, r in zip(predictions, references, strict=True)]
        per_row = {kind: [row[kind].fmeasure for row in rows] for kind in TYPES}
        if not use_aggregator:
            return dict(per_row)
        return {kind: sum(values) / len(values) if values else 0.0 for kind, values in per_row.items()}
