"""`slmnb.compare(runs)`: the base model and each fine-tune answering the same prompts, side by side.

Every column is generated with onnxruntime-genai from the runs' exports (made on first use with the defaults):
the base model is the shared base export with no adapter, each run is that base with its adapter, and the
few-shot column is the base model prompted with solved training rows - fine-tuning against prompt engineering.
With evaluate=True each column also answers the run's test split, and each run's ONNX answers are checked
against its PyTorch fine-tune's.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmnb.errors import ExportError
from slmnb.opt.export import Export, export
from slmnb.opt.inputs import open_run
from slmnb.opt.runtime import Timing
from slmnb.text import text_table

Update = Callable[["Comparison", str], None]
DEFAULT_PROMPTS = 4  # rows of the test split shown when no prompts are given


@dataclass
class Column:
    title: str
    export: Export
    adapter: bool
    run: Any = None  # the fine-tune a column shows, for its PyTorch answers
    examples: list[dict[str, Any]] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    timings: list[Timing] = field(default_factory=list)
    accuracy: float | None = None
    pytorch_accuracy: float | None = None
    agreement: float | None = None

    @property
    def tokens_per_second(self) -> float:
        """Decode speed: tokens after the first, over the time after the first (time to first token is apart)."""
        tokens = sum(t.tokens - 1 for t in self.timings if t.tokens > 1)
        seconds = sum(t.decode_seconds for t in self.timings if t.tokens > 1)
        return tokens / seconds if seconds > 0 else 0.0

    @property
    def first_token(self) -> float:
        times = sorted(t.first_token for t in self.timings if t.first_token is not None)
        return times[len(times) // 2] if times else 0.0


class Comparison:
    """Prompts down the side, models across the top; cells fill as the tokens come."""

    def __init__(self, prompts: list[dict[str, Any] | str], columns: list[Column], test_rows: list[dict[str, Any]],
                 max_new_tokens: int) -> None:
        self.prompts = prompts
        self.columns = columns
        self.test_rows = test_rows
        self.max_new_tokens = max_new_tokens
        self.status = "waiting"
        self.error: BaseException | None = None
        self._stop = threading.Event()

    def stop(self) -> None:
        """End after the current token; what was generated so far stays."""
        self._stop.set()

    def prompt_text(self, i: int) -> str:
        prompt = self.prompts[i]
        return prompt if isinstance(prompt, str) else " | ".join(str(v) for v in prompt.values())

    def fill(self, on_update: Update | None = None, evaluate: bool = False) -> Comparison:
        """Generate every cell (and the evaluation), calling on_update(self, what) as things change."""
        notify = on_update or (lambda comparison, what: None)
        try:
            self.status = "generating"
            for column in self.columns:
                column.answers = [""] * len(self.prompts)
                column.timings = []
            for i, prompt in enumerate(self.prompts):
                for column in self.columns:
                    timing = Timing()
                    column.timings.append(timing)
                    for piece in column.export.stream(prompt, self.max_new_tokens, column.adapter, timing,
                                                      column.examples):
                        column.answers[i] += piece
                        notify(self, "cell")
                        if self._stop.is_set():
                            self.status = "stopped"
                            return self
                    column.answers[i] = column.answers[i].strip()
                    notify(self, "cell")
            if evaluate:
                self._evaluate(notify)
            self.status = "stopped" if self._stop.is_set() else "done"
        except BaseException as exc:
            self.error, self.status = exc, "failed"
            raise
        finally:
            notify(self, "status")
        return self

    def _evaluate(self, notify: Update) -> None:
        from slmnb.training.generate import first_word, score

        template = self.columns[0].export.run.config.response_template
        for column in self.columns:
            self.status = f"evaluating {column.title} on {len(self.test_rows)} test rows"
            notify(self, "status")
            answers = []
            for row in self.test_rows:
                answers.append("".join(column.export.stream(row, 8, column.adapter, None, column.examples)).strip())
                if self._stop.is_set():
                    return
            column.accuracy = score(answers, self.test_rows, template).accuracy
            if column.run is not None or not column.examples:
                # The same rows through PyTorch: what the ONNX export is meant to reproduce.
                run = column.run or self.columns[0].export.run
                reference = run.predict(self.test_rows, max_new_tokens=8, adapter=column.adapter)
                column.pytorch_accuracy = score(reference, self.test_rows, template).accuracy
                column.agreement = sum(first_word(a) == first_word(b) for a, b in zip(answers, reference, strict=True)
                                       ) / max(len(answers), 1)
            notify(self, "eval")

    def summary_rows(self) -> list[list[str]]:
        """Speed per column, and the evaluation once it ran."""
        rows = [["tokens/s, first token", *(f"{_rate(c.tokens_per_second)}, {c.first_token * 1000:.0f} ms"
                                             for c in self.columns)]]
        if any(c.accuracy is not None for c in self.columns):
            rows.append(["test accuracy (ONNX)", *(_pct(c.accuracy) for c in self.columns)])
            rows.append(["test accuracy (PyTorch)", *(_pct(c.pytorch_accuracy) for c in self.columns)])
            rows.append(["ONNX agrees with PyTorch", *(_pct(c.agreement) for c in self.columns)])
        return rows

    def header(self) -> list[str]:
        return ["prompt", *(c.title for c in self.columns)]

    def answer_rows(self) -> list[list[str]]:
        return [[self.prompt_text(i), *(c.answers[i] if i < len(c.answers) else "" for c in self.columns)]
                for i in range(len(self.prompts))]

    def __str__(self) -> str:
        return text_table(self.header(), self.answer_rows() + self.summary_rows(), width=30)

    def __repr__(self) -> str:
        return (f"<Comparison of {len(self.columns)} columns on {len(self.prompts)} prompts: {self.status}; "
                "print() it for the table>")


def _rate(value: float) -> str:
    return f"{value:.0f} tok/s" if value else "- tok/s"  # one-token answers have no decode speed


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def prepare(runs: Sequence[Any], prompts: Sequence[dict[str, Any] | str] | str | Path | None = None,
            max_new_tokens: int = 64, few_shot: int = 0, evaluate: bool = False,
            on_phase: Callable[[str], None] | None = None) -> Comparison:
    """Export what is not exported yet and lay out the columns; nothing is generated here."""
    import slmnb
    from slmnb.datafiles import read_splits

    if isinstance(runs, str | Path | slmnb.TrainingRun | Export):
        runs = [runs]
    runs = list(runs) if isinstance(runs, Iterable) else []
    if not runs:
        raise ExportError("Name at least one run to compare with its base model.")
    # Everything that can be wrong is checked before the first export, which takes most of a minute.
    _check_count("max_new_tokens", max_new_tokens, 1)
    _check_count("few_shot", few_shot, 0)
    trained = [item.run if isinstance(item, Export) else open_run(item) for item in runs]
    if any(run is None for run in trained):
        raise ExportError("compare needs runs (or their exports), whose prompt templates it uses.")
    config = trained[0].config
    splits = read_splits(config)
    test_rows = splits.get("test", [])
    if evaluate and not test_rows:
        raise ExportError(f"Run {trained[0].name!r} has no test split to evaluate on: its data needs a 'test' split.")
    if evaluate and not config.response_template:
        raise ExportError(f"evaluate scores answers against the response_template, and run {trained[0].name!r} has "
                          "none: compare without evaluate.")
    train = list(splits.get("train", []))
    if len(train) < few_shot:
        raise ExportError(f"few_shot={few_shot} needs that many training rows; the run has {len(train)}.")
    rows = _prompts(prompts, test_rows or train)

    exports = [item if isinstance(item, Export) else export(run, on_phase=_named_phase(run.name, on_phase))
               for item, run in zip(runs, trained, strict=True)]
    first = exports[0]
    if first.merged:
        raise ExportError(f"{first.folder} is a merged export with no base model inside: compare runs exported "
                          "with adapters='switchable'.")
    columns = [Column("base model", first, adapter=False)]
    columns += [Column(e.run.name, e, adapter=True, run=e.run) for e in exports]
    if few_shot:
        examples = random.Random(0).sample(train, few_shot)
        columns.append(Column(f"base, {few_shot}-shot", first, adapter=False, examples=examples))
    return Comparison(rows, columns, test_rows, max_new_tokens)


def _named_phase(name: str, on_phase: Callable[[str], None] | None) -> Callable[[str], None] | None:
    """Each export's phases, prefixed with its run's name (several runs export in turn)."""
    if on_phase is None:
        return None
    report = on_phase
    return lambda text: report(f"{name}: {text}")


def _check_count(option: str, value: Any, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ExportError(f"{option} must be a whole number of at least {least}, not {value!r}.")


def _prompts(prompts: Sequence[dict[str, Any] | str] | str | Path | None,
             fallback: list[dict[str, Any]]) -> list[dict[str, Any] | str]:
    from slmnb.datafiles import read_rows

    if prompts is None:
        return list(fallback[:DEFAULT_PROMPTS])
    if isinstance(prompts, str | Path):
        path = Path(prompts).expanduser()
        if path.suffix.lower() == ".txt":
            if not path.is_file():
                raise ExportError(f"Prompts file {str(path)!r} does not exist.")
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            return [line for line in lines if line]
        return list(read_rows(path))
    if not prompts:
        raise ExportError("The prompts list is empty: give at least one prompt.")
    return list(prompts)


def compare(runs: Sequence[Any] | Any, prompts: Sequence[dict[str, Any] | str] | str | Path | None = None,
            evaluate: bool = False, max_new_tokens: int = 64, few_shot: int = 0) -> Comparison:
    """Base model and fine-tunes answering the same prompts (default: a few test rows), filled and returned.

    `prompts` is a list of texts or rows, or a file (.txt: one prompt per line; .json/.jsonl/.csv: rows).
    In a notebook, `%opt compare` shows the same thing streaming into a table.
    """
    comparison = prepare(runs, prompts, max_new_tokens, few_shot, evaluate)
    return comparison.fill(evaluate=evaluate)
