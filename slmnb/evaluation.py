"""What a model's answers to a split are worth: scores, per-row quality, the rows it gets wrong, a confusion matrix.

`evaluate_answers` scores answers however they were made (PyTorch, an ONNX export, a few-shot prompt), so every
front end compares like with like; `evaluate_run` makes the answers of a run's PyTorch model (run.evaluate()), and
adds the perplexity of the model's own loss on the split. Nothing heavy is imported until work starts.
"""

from __future__ import annotations

import argparse
import math
import os
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slmnb.errors import ConfigError, RunError
from slmnb.metrics import score_text

if TYPE_CHECKING:
    from slmnb.config import FinetuneConfig
    from slmnb.training.run import TrainingRun

RowsDone = Callable[[int, int], None]
OTHER = "(other)"  # the confusion matrix's column for answers that are none of the labels
WRONG_SHOWN = 10  # rows a report lists of those it gets wrong
PERPLEXITY = "perplexity"


@dataclass
class Evaluation:
    """One model's answers to one split, scored."""

    model: str  # column title: "fine-tuned", "base model", "ONNX int4 + adapter", "base, 4-shot"...
    split: str
    metrics: list[str]  # names asked for
    scores: dict[str, float]  # flat keys: accuracy, f1, rougeL, perplexity...
    per_class: dict[str, dict[str, float]] | None
    rows: list[dict[str, Any]]
    prompts: list[str]  # each row's prompt text, as the template renders it
    references: list[str]
    predictions: list[str]
    per_row: list[float]  # 0..1 quality of each answer
    seconds: float  # wall time answering the rows
    prompt_tokens: float | None = None  # mean prompt tokens per request, when known

    def seconds_per_row(self) -> float:
        return self.seconds / max(len(self.predictions), 1)

    @property
    def classification(self) -> bool:
        from slmnb.metrics import is_classification

        return is_classification([m for m in self.metrics if m != PERPLEXITY])

    def wrong_rows(self) -> list[int]:
        """Indexes of the answers that miss, worst first (then in the split's order)."""
        from slmnb.metrics import label_of

        if self.classification:
            missed = [i for i, (p, r) in enumerate(zip(self.predictions, self.references, strict=True))
                      if label_of(p) != label_of(r)]
        else:
            # A free-text answer is wrong unless it says the reference (spacing aside); its quality ranks it.
            missed = [i for i, (p, r) in enumerate(zip(self.predictions, self.references, strict=True))
                      if " ".join(p.split()) != " ".join(r.split())]
        quality = self.per_row if len(self.per_row) == len(self.predictions) else [0.0] * len(self.predictions)
        return sorted(missed, key=lambda i: (quality[i], i))

    def wrong(self, limit: int | None = 20) -> list[tuple[str, str, str]]:
        """(prompt, reference, answer) of the rows it gets wrong, worst first; limit=None gives them all."""
        shown = self.wrong_rows()[:limit] if limit is not None else self.wrong_rows()
        return [(self.prompts[i], self.references[i], self.predictions[i]) for i in shown]

    def confusion(self) -> tuple[list[str], list[list[int]]] | None:
        """Labels and counts[reference][answer] of a classification; None for a text task.

        The labels are the references' (spelled as the first reference that has each), one row each. Answers that
        are none of them are counted in a last column "(other)", present only then, so a model that rambles adds
        one column, not fifty: the rows are the first len(matrix) labels, the columns all of them.
        """
        if not self.classification:
            return None
        from slmnb.metrics import label_of

        shown: dict[str, str] = {}
        for reference in self.references:
            shown.setdefault(label_of(reference), _first_word(reference))
        labels = sorted(shown, key=lambda key: shown[key].lower())
        answered = [label_of(p) if label_of(p) in shown else OTHER for p in self.predictions]
        names = labels + ([OTHER] if OTHER in answered else [])
        index = {name: i for i, name in enumerate(names)}
        matrix = [[0] * len(names) for _ in labels]
        for reference, answer in zip(self.references, answered, strict=True):
            matrix[index[label_of(reference)]][index[answer]] += 1
        return [shown.get(name, name) for name in names], matrix


def _first_word(text: str) -> str:
    words = text.strip().split()
    return words[0].strip(string.punctuation) if words else ""


# --- scoring ---------------------------------------------------------------------------------------------


def references_of(config: FinetuneConfig, rows: Sequence[dict[str, Any]]) -> list[str]:
    """The expected answer of each row: its response_template, rendered."""
    from slmnb.data import render

    if not config.response_template:
        raise RunError(f"Evaluation compares answers with the response_template, and run {config.name!r} has none "
                       "(it trains on a text_template): use predict() and compare the answers yourself.")
    return [render(config.response_template, row, "response_template") for row in rows]


def prompts_of(config: FinetuneConfig, rows: Sequence[dict[str, Any]]) -> list[str]:
    """Each row's prompt text as its template renders it (without the chat template's markup)."""
    from slmnb.data import prompt_of, render

    if config.prompt_template:
        return [render(config.prompt_template, row, "prompt_template") for row in rows]
    return [prompt_of(config.text_template or "", row) for row in rows]


def metric_names(config: FinetuneConfig, references: Sequence[str], metrics: Sequence[str] | str | None) -> list[str]:
    """The metrics asked for (a list, or names separated by commas), else the config's, else chosen from the data."""
    from slmnb.metrics import check_names, choose

    if isinstance(metrics, str):
        metrics = [name.strip() for name in metrics.split(",") if name.strip()]
    if metrics is not None and not metrics:
        raise ConfigError("metrics is empty: give metric names such as accuracy,f1 (or leave it out to let slmnb "
                          "choose from the data).")
    names = list(metrics or getattr(config, "metrics", None) or choose(references)[0])
    return check_names(list(dict.fromkeys(names)))


def evaluate_answers(config: FinetuneConfig, rows: Sequence[dict[str, Any]], predictions: Sequence[str], *,
                     split: str, model: str, metrics: Sequence[str] | str | None = None, seconds: float = 0.0,
                     prompt_tokens: float | None = None, prompts: Sequence[str] | None = None) -> Evaluation:
    """Score answers to rows of a run's data, made by any model.

    metrics=None: the config's metrics, else those slmnb.metrics.choose picks for these references. Perplexity
    needs the model's loss, not answers: it is left to the caller (evaluate_run adds it).
    """
    from slmnb.metrics import compute

    if len(predictions) != len(rows):
        raise RunError(f"There are {len(predictions)} answers for {len(rows)} rows: give one answer per row.")
    references = references_of(config, rows)
    names = metric_names(config, references, metrics)
    scored = compute([n for n in names if n != PERPLEXITY], list(predictions), references)
    return Evaluation(model=model, split=split, metrics=names, scores=dict(scored.values),
                      per_class=scored.per_class, rows=list(rows),
                      prompts=list(prompts) if prompts is not None else prompts_of(config, rows),
                      references=references, predictions=list(predictions), per_row=list(scored.per_row),
                      seconds=seconds, prompt_tokens=prompt_tokens)


# --- a run's PyTorch model -------------------------------------------------------------------------------


def capped(split: str) -> str:
    """The split SLMNB_MAX_EVAL_ROWS shortens to its first N rows (for headless notebook tests and quick classroom
    checks, as SLMNB_MAX_STEPS shortens runs), written as the slice it becomes so every view says so: test becomes
    test[:16]. A slice or a sum of splits is kept as asked, and so is 'eval' (the held-out rows cannot be sliced)."""
    cap = os.environ.get("SLMNB_MAX_EVAL_ROWS", "").strip()
    if not cap:
        return split
    if not cap.isdigit() or int(cap) < 1:
        raise ConfigError(f"SLMNB_MAX_EVAL_ROWS must be a whole number of rows, got {cap!r}.")
    if "[" in split or "+" in split or split.strip() == "eval":
        return split
    return f"{split.strip()}[:{int(cap)}]"


def split_rows(config: FinetuneConfig, split: str) -> list[dict[str, Any]]:
    """Rows of a split of the run's data (slices work); "eval" is the rows the run held out, when no split has
    that name."""
    from slmnb.data import load_data, select_split
    from slmnb.datafiles import read_splits

    splits = read_splits(config)
    base = split.split("[", 1)[0].strip()
    if base == "eval" and "eval" not in splits:
        if "[" in split:
            raise ConfigError(f"split {split!r} slices the rows the run held out, which cannot be sliced: use "
                              "split 'eval', or slice a split of the data.")
        rows = load_data(config).eval
        if not rows:
            raise ConfigError("The run held out no rows for evaluation (eval_size 0 and no eval_split): give a "
                              f"split of the data, one of {', '.join(splits)}.")
        return rows
    if base and "+" not in split and base not in splits:
        raise ConfigError(f"split {split!r} names no split of the run's data: the splits are "
                          f"{', '.join(splits)}, and 'eval' is the rows the run held out for evaluation.")
    rows = select_split(splits, split, "split")
    if not rows:
        raise ConfigError(f"split {split!r} has no rows: pick a larger slice or another split.")
    return rows


def evaluate_run(run: TrainingRun, split: str = "test", metrics: Sequence[str] | str | None = None,
                 adapter: bool = True, max_new_tokens: int | None = None,
                 progress: bool | RowsDone = True) -> Evaluation:
    """The run's model (adapter=False: its base model) answering a split greedily, scored, with its perplexity.

    Everything a user can get wrong is checked before a model loads: the split, the metric names, the saved
    adapter, a run still training. Perplexity is included unless `metrics` lists the metrics without it.
    """
    config = run.config
    if run.alive:
        raise RunError(f"Run {run.name!r} is training: evaluate it once it ends (run.wait()), or stop it first.")
    split = capped(split)
    rows = split_rows(config, split)
    references = references_of(config, rows)
    names = metric_names(config, references, metrics)
    if metrics is None and PERPLEXITY not in names:
        names.append(PERPLEXITY)  # one forward pass over the split: cheap beside generating the answers
    if (adapter or config.method != "full") and not run.output_path.is_dir():
        weights = "model" if config.method == "full" else "adapter"
        raise RunError(f"Run {run.name!r} has no saved {weights} yet at {run.output_path}: wait for it to finish or "
                       "stop it (stopping saves it), then evaluate.")
    from slmnb.training.generation_eval import answer_length

    predictor = run._loaded()
    tokenizer = predictor.tokenizer()
    limit = max_new_tokens or answer_length(config, tokenizer)
    label = f"evaluate {split}"
    predictor.load(adapter)  # loaded first: the time per answer is what a request costs, not the loading
    start = time.perf_counter()
    answers = predictor.predict(rows, max_new_tokens=limit, adapter=adapter, progress=progress, label=label)
    seconds = time.perf_counter() - start
    evaluation = evaluate_answers(config, rows, answers, split=split, model="fine-tuned" if adapter else "base model",
                                  metrics=names, seconds=seconds,
                                  prompt_tokens=mean_prompt_tokens(config, tokenizer, rows))
    if PERPLEXITY in names:
        evaluation.scores[PERPLEXITY] = split_perplexity(predictor, rows, adapter, progress is True,
                                                         label if adapter else f"{label} (base model)")
    return evaluation


def mean_prompt_tokens(config: FinetuneConfig, tokenizer: Any, rows: Sequence[dict[str, Any]]) -> float:
    from slmnb.data import prompt_ids

    return sum(len(prompt_ids(config, tokenizer, row)) for row in rows) / max(len(rows), 1)


def split_perplexity(predictor: Any, rows: Sequence[dict[str, Any]], adapter: bool, show: bool,
                     label: str, batch_size: int = 8) -> float:
    """exp of the mean loss per response token, with the tokens and labels training uses (slmnb.data.encode_rows),
    from the model itself: the same measure as the run's eval perplexity, on this split."""
    import torch

    from slmnb.data import encode_rows
    from slmnb.metrics import perplexity
    from slmnb.progress import progress as progress_bar
    from slmnb.training.generate import inference_threads

    tokenizer = predictor.tokenizer()
    encoded, _ = encode_rows(predictor.config, tokenizer, list(rows))
    order = sorted(encoded, key=lambda e: len(e["input_ids"]))
    nll, tokens = 0.0, 0
    with predictor.forward(adapter) as model, inference_threads(), torch.inference_mode(), \
            progress_bar(len(order), f"{label}: perplexity", show=show and len(order) > batch_size) as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = max(len(e["input_ids"]) for e in batch)
            ids = torch.tensor([e["input_ids"] + [tokenizer.pad_token_id] * (width - len(e["input_ids"]))
                                for e in batch])
            mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch])
            labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in batch])
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            nll += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                     ignore_index=-100, reduction="sum").item()
            tokens += int((target != -100).sum())
            bar.update(len(batch))
    return float(perplexity(nll, tokens)) if tokens else math.nan


# --- showing it ------------------------------------------------------------------------------------------


def metrics_table(evaluations: Sequence[Evaluation]) -> tuple[list[str], list[list[str]]]:
    """One column per evaluation, one row per score (then time and prompt tokens per request)."""
    keys = list(dict.fromkeys(key for e in evaluations for key in e.scores))
    header = ["metric", *(e.model for e in evaluations)]
    rows = [[key, *(score_text(key, e.scores.get(key)) for e in evaluations)] for key in keys]
    if any(e.prompt_tokens is not None for e in evaluations):
        rows.append(["prompt tokens / request",
                     *("—" if e.prompt_tokens is None else f"{e.prompt_tokens:.0f}" for e in evaluations)])
    rows.append(["seconds / answer", *(f"{e.seconds_per_row():.3f}" for e in evaluations)])
    return header, rows


def per_class_table(evaluation: Evaluation) -> tuple[list[str], list[list[str]]] | None:
    if not evaluation.per_class:
        return None
    fields = list(dict.fromkeys(f for values in evaluation.per_class.values() for f in values))
    return (["label", *fields],
            [[label, *(f"{values[f]:.0f}" if f == "support" else score_text(f, values[f]) for f in fields)]
             for label, values in evaluation.per_class.items()])


def report_lines(evaluations: Sequence[Evaluation], wrong_shown: int = WRONG_SHOWN) -> list[str]:
    """The whole evaluation as text (the CLI's output and the notebook's text/plain): the metrics table, the
    confusion matrix of a classification, and the rows the last column's model gets wrong."""
    from slmnb.text import text_table

    main = evaluations[-1]
    lines = [f"{main.split}: {len(main.rows)} rows", text_table(*metrics_table(evaluations))]
    per_class = per_class_table(main)
    if per_class:
        lines += ["", f"per class ({main.model}):", text_table(*per_class)]
    confusion = main.confusion()
    if confusion:
        labels, matrix = confusion
        lines += ["", f"confusion matrix ({main.model}; rows: reference, columns: answer):",
                  confusion_text(labels, matrix)]
    lines += ["", wrong_title(main, wrong_shown)]
    if main.wrong_rows():
        lines.append(wrong_text(main, wrong_shown))
    return lines


def wrong_text(evaluation: Evaluation, shown: int) -> str:
    """The misses as a table cut to a terminal's width, each prompt shown by the part that differs between rows:
    a prompt template's fixed instructions would fill the column and cut off what the row is about."""
    from slmnb.text import text_table

    keep = varying_part(evaluation.prompts)
    rows = [[keep(prompt), reference, answer] for prompt, reference, answer in evaluation.wrong(shown)]
    return text_table(["prompt", "reference", "answer"], rows, width=48)


def _common_start(texts: Sequence[str]) -> str:
    first, last = min(texts), max(texts)  # in sorted order, these two differ soonest
    size = next((i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), min(len(first), len(last)))
    return first[:size]


def varying_part(prompts: Sequence[str]) -> Callable[[str], str]:
    """A function that cuts the text all prompts share at their start and end (whole words), marking it with …"""
    if len(prompts) < 2:
        return lambda prompt: prompt
    head = _common_start(prompts)
    tail = _common_start([p[::-1] for p in prompts])[::-1]
    # Back to word boundaries (a template's lines end in newlines, not spaces).
    head = head[:max(head.rfind(c) for c in string.whitespace) + 1]
    spaces = [i for i in (tail.find(c) for c in string.whitespace) if i >= 0]
    tail = tail[min(spaces):] if spaces else ""
    shortest = min(len(p) for p in prompts)
    if len(head) + len(tail) >= shortest:  # they overlap on a prompt: keep the head cut only
        tail = ""

    def keep(prompt: str) -> str:
        middle = prompt[len(head):len(prompt) - len(tail)]
        return ("…" if head else "") + middle + ("…" if tail.strip() else "")

    return keep


def confusion_text(labels: list[str], matrix: list[list[int]]) -> str:
    from slmnb.text import text_table

    return text_table(["", *labels], [[label, *row] for label, row in zip(labels, matrix, strict=False)])


def wrong_title(evaluation: Evaluation, shown: int) -> str:
    count = len(evaluation.wrong_rows())
    if not count:
        return f"{evaluation.model} answers all {len(evaluation.rows)} rows right."
    worst = f", the {min(shown, count)} worst first" if count > shown else ", worst first"
    return f"{evaluation.model} gets {count} of {len(evaluation.rows)} rows wrong{worst}:"


# --- the command line, shared by `slmnb eval` and `%finetune eval` ---------------------------------------


def add_eval_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="A run's name or folder.")
    parser.add_argument("--split", default="test",
                        help="A split of the run's data, or a slice such as test[:20]; eval is the rows the run "
                             "held out (default: test).")
    parser.add_argument("--metrics", default=None, metavar="M1,M2",
                        help="Metric names or evaluate module paths, separated by commas (default: the run's "
                             "metrics, or chosen from the data, and perplexity).")
    parser.add_argument("--base", action="store_true", help="Also evaluate the base model, in a column beside.")
    parser.add_argument("--max_new_tokens", type=int, default=None, metavar="N",
                        help="Tokens per answer (default: the run's eval_max_new_tokens, or room for the longest "
                             "reference).")
    parser.add_argument("--wrong", type=int, default=WRONG_SHOWN, metavar="N",
                        help=f"How many of the rows it gets wrong to show ({WRONG_SHOWN}).")


def evaluate_options(run: TrainingRun, options: dict[str, Any]) -> list[Evaluation]:
    """The evaluations an eval command asks for: the base model's first (when --base), then the fine-tune's."""
    if options.get("max_new_tokens") is not None and options["max_new_tokens"] < 1:
        raise ConfigError(f"--max_new_tokens must be at least 1, got {options['max_new_tokens']}.")
    if options.get("wrong", 0) < 0:
        raise ConfigError(f"--wrong must be 0 or more, got {options['wrong']}.")
    asked = {"split": options.get("split", "test"), "metrics": options.get("metrics"),
             "max_new_tokens": options.get("max_new_tokens")}
    tuned = run.evaluate(**asked)
    if not options.get("base"):
        return [tuned]
    # The same metric names for both columns, so a chosen default cannot differ between them.
    return [run.evaluate(**{**asked, "metrics": tuned.metrics}, adapter=False), tuned]
