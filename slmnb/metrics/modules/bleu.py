"""Corpus BLEU through sacrebleu, as a fraction in [0, 1]."""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = """
BLEU compares the word n-grams (1 to 4) of generated text with one reference per row: the geometric mean of the
modified n-gram precisions over the whole corpus, times a brevity penalty for output shorter than the references.
Computed by sacrebleu.corpus_bleu with its defaults (13a tokenisation, exponential smoothing, case-sensitive) and
divided by 100, so it is a fraction in [0, 1] like every other slmnb score (sacrebleu reports 0-100).
"""

_CITATION = """
@inproceedings{post-2018-call,
  title={A Call for Clarity in Reporting {BLEU} Scores},
  author={Post, Matt},
  booktitle={Proceedings of the Third Conference on Machine Translation: Research Papers},
  pages={186--191},
  year={2018}
}
@inproceedings{papineni-etal-2002-bleu,
  title={{B}leu: a Method for Automatic Evaluation of Machine Translation},
  author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing},
  booktitle={Proceedings of the 40th Annual Meeting of the Association for Computational Linguistics},
  pages={311--318},
  year={2002}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the generated texts.
    references (`list` of `str`): one reference text per prediction.
Returns:
    bleu (`float`): corpus BLEU / 100, in [0, 1].
Examples:
    >>> bleu = evaluate.load("slmnb/metrics/modules/bleu.py")
    >>> bleu.compute(predictions=["the cat sat on the mat"], references=["the cat sat on the mat"])
    {'bleu': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Bleu(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
            reference_urls=["https://aclanthology.org/W18-6319/"],
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        return {"bleu": sacrebleu.corpus_bleu(predictions, [references]).score / 100}
