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
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmnb.errors import ExportError
from slmnb.opt.export import Export, export
from slmnb.opt.inputs import open_run
from slmnb.opt.runtime import Timing
from slmnb.progress import progress, status_line
from slmnb.text import text_table

Update = Callable[["Comparison", str], None]
DEFAULT_PROMPTS = 4  # rows of the test split shown when no prompts are given


class _Stopped(Exception):
    """A stop asked for while PyTorch answers the test split: raised from its progress callback."""


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
                self._evaluate(notify, bars=on_update is None)
            self.status = "stopped" if self._stop.is_set() else "done"
        except BaseException as exc:
            self.error, self.status = exc, "failed"
            raise
        finally:
            notify(self, "status")
        return self

    def _evaluate(self, notify: Update, bars: bool) -> None:
        """Each column on the test split, counting rows: in the status line of a view (notify), or with a bar."""
        from slmnb.training.generate import first_word, score

        template = self.columns[0].export.run.config.response_template
        total = len(self.test_rows)
        for column in self.columns:
            what = f"evaluating {column.title} on the test split"
            answers: list[str] = []
            with progress(total, what, show=bars) as bar:
                started = time.perf_counter()
                for row in self.test_rows:
                    answers.append("".join(column.export.stream(row, 8, column.adapter, None, column.examples)
                                           ).strip())
                    bar.update()
                    self._count(notify, what, len(answers), total, started)
                    if self._stop.is_set():
                        return
            column.accuracy = score(answers, self.test_rows, template).accuracy
            if column.run is not None or not column.examples:
                # The same rows through PyTorch: what the ONNX export is meant to reproduce.
                reference = self._pytorch_answers(column, notify, bars)
                if reference is None:
                    return
                column.pytorch_accuracy = score(reference, self.test_rows, template).accuracy
                column.agreement = sum(first_word(a) == first_word(b) for a, b in zip(answers, reference, strict=True)
                                       ) / max(len(answers), 1)
            notify(self, "eval")

    def _pytorch_answers(self, column: Column, notify: Update, bars: bool) -> list[str] | None:
        """The test split through the run's PyTorch model (None when stopped midway)."""
        run = column.run or self.columns[0].export.run
        what, total, started = f"checking {column.title} against PyTorch", len(self.test_rows), time.perf_counter()

        def counted(done: int, total: int) -> None:
            self._count(notify, what, done, total, started, stoppable=True)

        counted(0, total)
        try:
            answers: list[str] = run.predict(self.test_rows, max_new_tokens=8, adapter=column.adapter,
                                             progress=True if bars else counted)
        except _Stopped:
            return None
        return answers

    def _count(self, notify: Update, what: str, done: int, total: int, started: float,
               stoppable: bool = False) -> None:
        """Rows done of total and the time left, in the status line (a view redraws it at most 4 times a second)."""
        self.status = status_line(what, done, total, time.perf_counter() - started)
        notify(self, "progress")
        if stoppable and self._stop.is_set():
            raise _Stopped  # leaves PyTorch's predict between two batches

    def summary_rows(self) -> list[list[str]]:
        """Speed per column, and the evaluation once it ran."""
        rows = [["tokens/s, first token", *(f"{_rate(c.tokens_per_second)}, {c.first_token * 1000:.0f} ms"
                                             for c in self.columns)]]
        if any(c.accuracy is not None for c in self.columns):
            # First: whether the ONNX model can stand for the fine-tune at all.
            rows.append(["ONNX answers = PyTorch's", *(_agreed(c, len(self.test_rows)) for c in self.columns)])
            rows.append(["test accuracy (ONNX)", *(_pct(c.accuracy) for c in self.columns)])
            rows.append(["test accuracy (PyTorch)", *(_pct(c.pytorch_accuracy) for c in self.columns)])
        return rows

    def agreement_line(self) -> str | None:
        """One sentence per fine-tune: how many test answers the ONNX model shares with PyTorch."""
        parts = [f"{c.title}: ONNX gives PyTorch's answer on {_agreed(c, len(self.test_rows))} test rows"
                 for c in self.columns if c.agreement is not None]
        return "; ".join(parts) + "." if parts else None

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


def _agreed(column: Column, rows: int) -> str:
    if column.agreement is None or not rows:
        return _pct(column.agreement)
    return f"{round(column.agreement * rows)} of {rows} ({column.agreement:.1%})"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


@dataclass
class Plan:
    """A comparison checked and ready to build: every mistake was found before the first export."""

    items: list[Any]  # what was handed over: runs, or Exports
    runs: list[Any]
    prompts: list[dict[str, Any] | str]
    test_rows: list[dict[str, Any]]
    examples: list[dict[str, Any]]
    max_new_tokens: int


def check(runs: Sequence[Any] | Any, prompts: Sequence[dict[str, Any] | str] | str | Path | None = None,
          max_new_tokens: int = 64, few_shot: int = 0, evaluate: bool = False) -> Plan:
    """Everything that can be wrong, in one sentence, before the exports (most of a minute) and generation.

    Cheap (configs, data files, adapter headers), so `%opt compare` calls it in the cell: a refusal known up
    front is the cell's error, never a view that starts and then says failed.
    """
    import slmnb
    from slmnb.datafiles import read_splits
    from slmnb.opt.export import exportable

    if isinstance(runs, str | Path | slmnb.TrainingRun | Export):
        runs = [runs]
    items = list(runs) if isinstance(runs, Iterable) else []
    if not items:
        raise ExportError("Name at least one run to compare with its base model.")
    _check_count("max_new_tokens", max_new_tokens, 1)
    _check_count("few_shot", few_shot, 0)
    trained = [item.run if isinstance(item, Export) else open_run(item) for item in items]
    if any(run is None for run in trained):
        raise ExportError("compare needs runs (or their exports), whose prompt templates it uses.")
    for item, run in zip(items, trained, strict=True):
        if run.status.live:
            raise ExportError(f"Run {run.name!r} is still training: wait for it (run.wait()) or stop it, then compare.")
        if not isinstance(item, Export):
            exportable(run)  # no saved adapter, say: said now, not after a minute in the background
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
    examples = random.Random(0).sample(train, few_shot) if few_shot else []
    return Plan(items, trained, _prompts(prompts, test_rows or train), test_rows, examples, max_new_tokens)


def prepare(runs: Sequence[Any] | Any | Plan, prompts: Sequence[dict[str, Any] | str] | str | Path | None = None,
            max_new_tokens: int = 64, few_shot: int = 0, evaluate: bool = False,
            on_phase: Callable[[str], None] | None = None) -> Comparison:
    """Export what is not exported yet and lay out the columns (of a checked Plan); nothing is generated here."""
    plan = runs if isinstance(runs, Plan) else check(runs, prompts, max_new_tokens, few_shot, evaluate)
    exports = [item if isinstance(item, Export) else export(run, on_phase=_named_phase(run.name, on_phase))
               for item, run in zip(plan.items, plan.runs, strict=True)]
    first = exports[0]
    if first.merged:
        raise ExportError(f"{first.folder} is a merged export with no base model inside: compare runs exported "
                          "with adapters='switchable'.")
    columns = [Column("base model", first, adapter=False)]
    columns += [Column(e.run.name, e, adapter=True, run=e.run) for e in exports]
    if plan.examples:
        columns.append(Column(f"base, {len(plan.examples)}-shot", first, adapter=False, examples=plan.examples))
    return Comparison(plan.prompts, columns, plan.test_rows, plan.max_new_tokens)


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
