"""Quality metrics through Hugging Face `evaluate`, offline.

The `evaluate` package ships no metric scripts: `evaluate.load("accuracy")` fetches one from the hub, which fails on an
offline machine. slmnb ships its own modules (slmnb/metrics/modules/<name>.py) and loads them, or a user's own module,
with `evaluate.load(<path>)`, which needs no network for a local path.

Every score is a fraction in [0, 1], higher is better (sacrebleu's 0-100 BLEU and chrF are divided by 100), except
perplexity, where lower is better. Config validation imports this package, so it imports neither evaluate nor torch:
only `load`, `compute` and `perplexity` do, when they are called.
"""

from __future__ import annotations

import difflib
import math
import string
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmnb.errors import MetricError

if TYPE_CHECKING:
    import evaluate

BUILTIN: tuple[str, ...] = ("accuracy", "f1", "exact_match", "bleu", "rouge", "chrf", "perplexity")
LABEL_METRICS = ("accuracy", "f1")
TEXT_METRICS = ("exact_match", "bleu", "rouge", "chrf")
CLASSIFICATION_DEFAULT = ["accuracy", "f1"]
TEXT_DEFAULT = ["bleu", "rouge", "chrf"]
_KEYS = {"accuracy": ["accuracy"], "f1": ["f1"], "exact_match": ["exact_match"], "bleu": ["bleu"],
         "rouge": ["rouge1", "rouge2", "rougeL"], "chrf": ["chrf"], "perplexity": ["perplexity"]}
_MODULES = Path(__file__).resolve().parent / "modules"

# "A few distinct values" (choose): at most this many, each taken by this many training rows on average. Tones has 4
# labels over hundreds of rows; free text repeats almost nothing, and a label set this large would be a text task.
MAX_LABELS = 20
MIN_ROWS_PER_LABEL = 3

# evaluate.load imports the module anew (slow: seconds, with evaluate itself) and returns an instance that buffers
# the rows given to it, so two threads must not share one. The lock makes one thread load while the others wait,
# and the cache keeps each module's class, so every load after the first is a cheap new instance.
_lock = threading.Lock()
_classes: dict[Path, tuple[type[evaluate.EvaluationModule], str | None]] = {}
_user_keys: dict[Path, list[str]] = {}


@dataclass(frozen=True)
class Scores:
    """What compute returns: flat scores, F1's per-class table, and each row's quality for showing the worst first."""

    values: dict[str, float]
    per_class: dict[str, dict[str, float]] | None
    per_row: list[float]


def label_of(text: str) -> str:
    """The label a classification answer gives: its first word, without punctuation or case."""
    words = text.strip().split()
    return words[0].strip(string.punctuation).lower() if words else ""


def greater_is_better(key: str) -> bool:
    """Whether a higher value of a score key (or a Trainer metric such as eval_loss) is better."""
    key = key.removeprefix("eval_")
    return not (key == "perplexity" or key.endswith("loss"))


def score_text(key: str, value: float | None) -> str:
    """A score as every view shows it (tables, dashboard, CLI, and the JupyterLab panel's metric.ts): a fraction
    as a percentage to one decimal (91.7%), perplexity, a loss or another scale to 4 significant digits, and a
    missing or non-finite value as a dash."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.1%}" if greater_is_better(key) and 0.0 <= value <= 1.0 else f"{value:.4g}"


def is_classification(names: Sequence[str]) -> bool:
    """Whether the metrics judge labels (accuracy/f1, perhaps with perplexity or a user's module), not free text."""
    return any(n in LABEL_METRICS for n in names) and not any(n in TEXT_METRICS for n in names)


def choose(responses: Sequence[str]) -> tuple[list[str], str]:
    """The default metrics for a training split's responses, and why, in words.

    Classification when the responses take at most MAX_LABELS distinct values (ignoring case and spacing), each used
    by MIN_ROWS_PER_LABEL rows on average, and their first words tell them apart (label_of is what gets compared).
    """
    values = {" ".join(r.split()).casefold() for r in responses}
    n, distinct = len(responses), len(values)
    if not n:
        return list(TEXT_DEFAULT), "there are no responses to look at"
    if distinct <= MAX_LABELS and n >= MIN_ROWS_PER_LABEL * distinct:
        if len({label_of(v) for v in values}) == distinct:
            return list(CLASSIFICATION_DEFAULT), f"the responses take {distinct} distinct value{_s(distinct)}"
        return list(TEXT_DEFAULT), (f"the responses take {distinct} distinct values, but their first words do not "
                                    "tell them apart")
    return list(TEXT_DEFAULT), f"the responses are free text: {distinct} distinct of {n}"


def keys(name: str) -> list[str]:
    """The score keys a metric produces; for a user's module, those its compute returned in this process ([] before)."""
    path = _resolve(name)
    return list(_KEYS[path.stem]) if path.parent == _MODULES else list(_user_keys.get(path, []))


def check_names(names: Sequence[str]) -> list[str]:
    """The names, built-in ones in their canonical spelling, without repeats; MetricError names the first bad one.

    Cheap: it only looks at names and paths, it loads nothing.
    """
    checked: list[str] = []
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise MetricError(f"Metric {name!r} is not a name: {_available()}.")
        path = _resolve(name)
        canonical = path.stem if path.parent == _MODULES else name.strip()
        if canonical not in checked:
            checked.append(canonical)
    return checked


def load(name_or_path: str, **kwargs: Any) -> evaluate.EvaluationModule:
    """A new instance of a built-in metric or of a user's `evaluate` module (a .py file, or a folder holding a script
    of the folder's name), as `evaluate.load` makes it; kwargs go to its constructor (experiment_id, cache_dir...).

    Instances keep their rows in memory by default (evaluate's keep_in_memory): slmnb computes each metric in one call,
    and arrow files under the metrics cache would only add disk writes and cross-process lock files.
    """
    kwargs.setdefault("keep_in_memory", True)
    cls, module_hash = _module_class(_resolve(name_or_path))
    module = cls(hash=module_hash, **kwargs)
    module.download_and_prepare()
    return module


def compute(names: Sequence[str], predictions: Sequence[str], references: Sequence[str]) -> Scores:
    """Scores of generated answers against references for each metric named (perplexity is skipped: it needs losses).

    Label metrics (accuracy, f1) compare label_of(prediction) with label_of(reference); text metrics take the texts.
    A user's module gets labels when the list is a classification one (is_classification), the texts otherwise.
    No rows give no scores.
    """
    names = check_names(names)
    if len(predictions) != len(references):
        raise MetricError(f"There are {len(predictions)} predictions for {len(references)} references: give one "
                          "prediction per reference.")
    if not references:
        return Scores(values={}, per_class=None, per_row=[])
    texts = ([str(p) for p in predictions], [str(r) for r in references])
    labels = ([label_of(p) for p in texts[0]], [label_of(r) for r in texts[1]])
    classification = is_classification(names)
    values: dict[str, float] = {}
    per_class = None
    for name in names:
        if name == "perplexity":
            continue
        if name in TEXT_METRICS:
            preds, refs = texts
        elif name in LABEL_METRICS or classification:
            preds, refs = labels
        else:
            preds, refs = texts
        out = _run(name, preds, refs)
        if name == "f1":
            per_class = out["per_class"]
        values.update(_numbers(name, out))
    return Scores(values=values, per_class=per_class, per_row=_per_row(names, classification, texts, labels))


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp(nll_sum / tokens) through the perplexity module: the model's own summed token loss (nats) on a split."""
    if tokens <= 0:
        raise MetricError("Perplexity needs at least one scored token: the split's rows have no response tokens.")
    out = load("perplexity").compute(nll_sum=[float(nll_sum)], tokens=[int(tokens)])
    return float(out["perplexity"])


def _run(name: str, predictions: list[str], references: list[str]) -> dict[str, Any]:
    module = load(name)
    if name in _KEYS:
        return dict(module.compute(predictions=predictions, references=references))
    try:
        return dict(module.compute(predictions=predictions, references=references) or {})
    except Exception as e:  # a user's code: say whose, so a run's evaluation does not fail with a bare traceback
        reason = (str(e).strip().splitlines() or [""])[0].rstrip(".")
        raise MetricError(f"The metric module {_resolve(name)} failed on the answers: {type(e).__name__}: "
                          f"{reason}.") from e


def _per_row(names: list[str], classification: bool, texts: tuple[list[str], list[str]],
             labels: tuple[list[str], list[str]]) -> list[float]:
    """Each row's quality in [0, 1]: right or wrong label; else ROUGE-L when asked for, else sentence chrF."""
    if classification:
        return [float(p == r) for p, r in zip(*labels, strict=True)]
    predictions, references = texts
    if "rouge" in names:
        out = load("rouge").compute(predictions=predictions, references=references, use_aggregator=False)
        return [float(v) for v in out["rougeL"]]
    out = load("chrf").compute(predictions=predictions, references=references, use_aggregator=False)
    return [float(v) for v in out["chrf"]]


def _numbers(name: str, out: dict[str, Any]) -> dict[str, float]:
    """The scalar scores of a module's result (F1's per-class table and any lists are left out)."""
    numbers = {k: float(v) for k, v in out.items() if _is_number(v)}
    if name not in _KEYS:
        _user_keys[_resolve(name)] = list(numbers)
    return numbers


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, (str, bytes))


def _module_class(path: Path) -> tuple[type[evaluate.EvaluationModule], str | None]:
    """The module's class and code hash, imported the way evaluate.load does it (its own two steps), once."""
    with _lock:
        if path not in _classes:
            from evaluate.loading import evaluation_module_factory, import_main_class

            try:
                found = evaluation_module_factory(str(path))
                cls = import_main_class(found.module_path)
            except Exception as e:  # a user's module can fail in any way: its own imports, its syntax, its code
                reason = (str(e).strip().splitlines() or [""])[0].rstrip(".")
                raise MetricError(f"The metric module {path} could not be loaded: {type(e).__name__}: {reason}.") from e
            if cls is None:  # evaluate.load would fail with "'NoneType' object is not callable"
                raise MetricError(f"The metric module {path} could not be loaded: it defines no evaluate.Metric "
                                  "class.")
            _classes[path] = (cls, found.hash)
        return _classes[path]


def _resolve(name: str) -> Path:
    """The script of a built-in metric or of a user's module; MetricError when there is none."""
    name = name.strip()
    if name.lower() in BUILTIN:
        return _MODULES / f"{name.lower()}.py"
    path = Path(name).expanduser()
    script = path / f"{path.name}.py" if path.is_dir() else path
    if script.is_file() and script.suffix == ".py":
        return script.resolve()
    if path.is_dir():
        raise MetricError(f"The metric module folder {path} holds no {path.name}.py: an evaluate module folder holds "
                          "a script named like the folder.")
    if path.exists():
        raise MetricError(f"The metric module {path} is not a .py file: give the path of an evaluate module script.")
    if any(c in name for c in "/\\~") or name.endswith(".py"):
        raise MetricError(f"The metric module {name} does not exist: {_available()}.")
    close = difflib.get_close_matches(name.lower(), BUILTIN, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise MetricError(f"Unknown metric {name!r}{hint}: {_available()}.")


def _available() -> str:
    return (f"use {', '.join(BUILTIN)} or the path of an evaluate module (a .py file, or a folder holding a script "
            "named like the folder)")


def _s(n: int) -> str:
    return "" if n == 1 else "s"
