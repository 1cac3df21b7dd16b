"""Corpus chrF through sacrebleu, as a fraction in [0, 1]."""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = """
chrF is the F-score (beta = 2, recall weighted twice as much as precision) of character n-grams (1 to 6) between the
generated text and its reference, over the whole corpus. Working on characters, it gives partial credit for a word
with the right stem and the wrong ending, and it needs no tokeniser. Computed by sacrebleu.corpus_chrf with its
defaults (chrF, not chrF++: no word n-grams) and divided by 100, so it is a fraction in [0, 1].
"""

_CITATION = """
@inproceedings{popovic-2015-chrf,
  title={chr{F}: character n-gram {F}-score for automatic {MT} evaluation},
  author={Popovi{\'c}, Maja},
  booktitle={Proceedings of the Tenth Workshop on Statistical Machine Translation},
  pages={392--395},
  year={2015}
}
@inproceedings{post-2018-call,
  title={A Call for Clarity in Reporting {BLEU} Scores},
  author={Post, Matt},
  booktitle={Proceedings of the Third Conference on Machine Translation: Research Papers},
  pages={186--191},
  year={2018}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the generated texts.
    references (`list` of `str`): one reference text per prediction.
    use_aggregator (`bool`, default True): the corpus score; False returns each row's sentence chrF / 100 as a list
        (sacrebleu.sentence_chrf), to rank rows from worst to best.
Returns:
    chrf (`float`, or `list` of `float` without aggregation): chrF / 100, in [0, 1].
Examples:
    >>> chrf = evaluate.load("slmnb/metrics/modules/chrf.py")
    >>> chrf.compute(predictions=["the cat sat"], references=["the cat sat"])
    {'chrf': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Chrf(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
            reference_urls=["https://aclanthology.org/W15-3049/"],
        )

    def _compute(self, predictions: list[str], references: list[str],
                 use_aggregator: bool = True) -> dict[str, object]:
        if not use_aggregator:
            return {"chrf": [sacrebleu.sentence_chrf(p, [r]).score / 100
                             for p, r in zip(predictions, references, strict=True)]}
        return {"chrf": sacrebleu.corpus_chrf(predictions, [references]).score / 100}
