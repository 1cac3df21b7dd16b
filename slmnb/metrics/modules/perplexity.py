"""Perplexity from the model's own loss: exp of the mean negative log-likelihood per token."""

import math

import datasets
import evaluate

_DESCRIPTION = """
Perplexity is exp(total negative log-likelihood / number of tokens) of the reference text under the model being
evaluated: how many choices, on average, the model hesitates between at each token. Lower is better; 1 is perfect.

It takes the losses the model already computed (each row's summed token NLL in nats, and how many tokens it scored),
so no second model is ever loaded. Rows are pooled by tokens: long rows weigh more, as the mean token loss does.
"""

_CITATION = """
@article{jelinek-1977-perplexity,
  title={Perplexity: a measure of the difficulty of speech recognition tasks},
  author={Jelinek, F. and Mercer, R. L. and Bahl, L. R. and Baker, J. K.},
  journal={The Journal of the Acoustical Society of America},
  volume={62},
  number={S1},
  pages={S63},
  year={1977}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    nll_sum (`list` of `float`): each row's summed negative log-likelihood of its scored tokens, in nats.
    tokens (`list` of `int`): how many tokens each row's sum covers.
Returns:
    perplexity (`float`): exp(sum(nll_sum) / sum(tokens)), at least 1.
Examples:
    >>> perplexity = evaluate.load("slmnb/metrics/modules/perplexity.py")
    >>> perplexity.compute(nll_sum=[2.0, 4.0], tokens=[2, 4])["perplexity"]
    2.718281828459045
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"nll_sum": datasets.Value("float64"), "tokens": datasets.Value("int64")}),
        )

    def _compute(self, nll_sum: list[float], tokens: list[int]) -> dict[str, float]:
        total = sum(tokens)
        if total <= 0:
            raise ValueError("perplexity needs at least one scored token")
        try:
            return {"perplexity": math.exp(sum(nll_sum) / total)}
        except OverflowError:  # a mean loss above ~709 nats: a model that is certain of the wrong tokens
            return {"perplexity": math.inf}
