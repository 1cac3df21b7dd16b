"""`slmnb.compare(runs)`: the base model and each fine-tune answering the same prompts, side by side.

Every column is generated with onnxruntime-genai from the runs' exports (made on first use with the defaults):
the base model is the shared base export with no adapter, each run is that base with its adapter, and the
few-shot column is the base model prompted with solved training rows - fine-tuning against prompt engineering.
With evaluate=True each column also answers the run's test split and is scored with every metric of the run
(slmnb.metrics), and the base model's and each run's ONNX answers are checked against PyTorch's. With a few-shot
column the table also says what each way costs per request (prompt tokens, time) and what each fine-tune cost once
(training time, tokens), and one sentence per fine-tune weighs the two from those measured numbers.
Runs of several tasks on one base (Olive's --task_name) get one such table each, on their own prompts
(slmnb.opt.tasks).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from slmnb.errors import ExportError, SlmnbError
from slmnb.metrics import score_text
from slmnb.opt.export import Export, export
from slmnb.opt.inputs import open_run
from slmnb.opt.runtime import Timing
from slmnb.opt.tasks import Comparisons
from slmnb.progress import progress, status_line
from slmnb.text import text_table

if TYPE_CHECKING:
    from slmnb.training.run import TrainingRun

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
    prompt_lengths: list[int] = field(default_factory=list)  # tokens of each prompt shown, few-shot examples included
    evaluation: Any = None  # the ONNX answers to the test split, scored (an Evaluation)
    pytorch: Any = None  # the same rows through the PyTorch model, scored (an Evaluation)
    agreement: float | None = None  # share of test rows where ONNX answers as PyTorch does

    @property
    def accuracy(self) -> float | None:
        return _score_of(self.evaluation, "accuracy")

    @property
    def pytorch_accuracy(self) -> float | None:
        return _score_of(self.pytorch, "accuracy")

    def prompt_tokens(self) -> float | None:
        """Mean prompt tokens per request: over the test split when evaluated, else over the prompts shown."""
        if self.evaluation is not None and self.evaluation.prompt_tokens is not None:
            return float(self.evaluation.prompt_tokens)
        return sum(self.prompt_lengths) / len(self.prompt_lengths) if self.prompt_lengths else None

    def seconds_per_request(self) -> float | None:
        """Mean wall time of one answer: over the test split when evaluated, else over the prompts shown."""
        if self.evaluation is not None and self.evaluation.predictions:
            return float(self.evaluation.seconds_per_row())
        done = [t.seconds for t in self.timings if t.tokens]
        return sum(done) / len(done) if done else None

    def training(self) -> tuple[float | None, int | None]:
        """The fine-tune's one-off cost: its training wall time in seconds and the tokens it trained on (None:
        not a fine-tune's column, or a run from before slmnb recorded them)."""
        return training_cost(self.run) if self.run is not None else (None, None)

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
                 max_new_tokens: int, metrics: Sequence[str] | None = None, split: str = "test",
                 task: str | None = None) -> None:
        self.prompts = prompts
        self.task = task  # the task these runs share (slmnb.opt.tasks): a block of a several-task comparison
        self.split = split  # what test_rows are: the test split, or the slice or split asked for
        self.metrics = list(metrics) if metrics else None  # None: the run's, or chosen from its data
        self.columns = columns
        self.test_rows = test_rows
        self.max_new_tokens = max_new_tokens
        self.status = "waiting"
        self.error: BaseException | None = None
        self._stop = threading.Event()

    def stop(self) -> None:
        """End after the current token; what was generated so far stays."""
        self._stop.set()

    @property
    def blocks(self) -> list[Comparison]:
        """One task, one block: views draw a Comparison and a several-task Comparisons alike."""
        return [self]

    def heading(self) -> str:
        """The line above this block when a comparison has several tasks: the task and its runs."""
        return f"Task {self.task}: {', '.join(c.title for c in self.columns if c.run is not None)}"

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
                column.prompt_lengths = []
            for i, prompt in enumerate(self.prompts):
                for column in self.columns:
                    timing = Timing()
                    column.timings.append(timing)
                    column.prompt_lengths.append(len(column.export.prompt_ids(prompt, column.examples)))
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
        """Each column scored on the test split with every metric, counting rows: in the status line of a view
        (notify), or with a bar. The base model and each fine-tune also answer through PyTorch: what the ONNX
        export is meant to reproduce."""
        from slmnb.training.generation_eval import answer_length

        first = self.columns[0].export
        tokens = answer_length(first.run.config, first.tokenizer())  # one length for every column
        metrics = self.metrics  # None: settled by the first column (the run's, or chosen from the data)
        for column in self.columns:
            what = f"evaluating {column.title} on {'the test split' if self.split == 'test' else self.split}"
            try:
                with self._rows_counter(notify, what, bars) as counted:
                    column.evaluation = column.export.evaluate(
                        self.split, metrics, column.adapter, tokens, column.examples, progress=counted,
                        model=column.title, rows=self.test_rows)
            except _Stopped:
                return
            metrics = list(column.evaluation.metrics)
            if column.run is not None or not column.examples:
                reference = self._pytorch_answers(column, notify, bars, tokens)
                if reference is None:
                    return
                column.pytorch = reference
                column.agreement = _agreement(column.evaluation, reference)
            notify(self, "eval")

    @contextmanager
    def _rows_counter(self, notify: Update, what: str, bars: bool) -> Iterator[Callable[[int, int], None]]:
        """A progress function for one column's rows: a bar (bars) or the view's status line, and a stop between
        two rows."""
        with progress(len(self.test_rows), what, show=bars) as bar:
            started = time.perf_counter()

            def counted(done: int, total: int) -> None:
                bar.update(done - bar.n)
                self._count(notify, what, done, total, started, stoppable=True)

            yield counted

    def _pytorch_answers(self, column: Column, notify: Update, bars: bool, tokens: int) -> Any:
        """The test split through the run's PyTorch model, scored with the ONNX column's metrics (None when stopped
        midway). Batched, so its time is not a request's: the cost rows use the ONNX timings."""
        from slmnb.evaluation import PERPLEXITY, evaluate_answers, split_perplexity

        run = column.run or self.columns[0].export.run
        what, total, started = f"checking {column.title} against PyTorch", len(self.test_rows), time.perf_counter()

        def counted(done: int, total: int) -> None:
            self._count(notify, what, done, total, started, stoppable=True)

        counted(0, total)
        try:
            answers: list[str] = run.predict(self.test_rows, max_new_tokens=tokens, adapter=column.adapter,
                                             progress=True if bars else counted)
        except _Stopped:
            return None
        onnx = column.evaluation
        scored = evaluate_answers(run.config, self.test_rows, answers, split=self.split,
                                  model=f"{column.title} (PyTorch)", metrics=onnx.metrics,
                                  seconds=time.perf_counter() - started, prompt_tokens=onnx.prompt_tokens)
        if PERPLEXITY in onnx.metrics:  # PyTorch has the loss that ONNX generation does not
            scored.scores[PERPLEXITY] = split_perplexity(run._loaded(), self.test_rows, column.adapter, bars,
                                                         f"{column.title} (PyTorch)")
        return scored

    def _count(self, notify: Update, what: str, done: int, total: int, started: float,
               stoppable: bool = False) -> None:
        """Rows done of total and the time left, in the status line (a view redraws it at most 4 times a second)."""
        self.status = status_line(what, done, total, time.perf_counter() - started)
        notify(self, "progress")
        if stoppable and self._stop.is_set():
            raise _Stopped  # leaves PyTorch's predict between two batches

    def summary_rows(self) -> list[list[str]]:
        """Speed per column; the evaluation once it ran (every metric, ONNX beside PyTorch); and with a few-shot
        column, what each way costs per request and the fine-tune's one-off training."""
        rows = [["tokens/s, first token", *(f"{_rate(c.tokens_per_second)}, {c.first_token * 1000:.0f} ms"
                                             for c in self.columns)]]
        if any(c.evaluation is not None for c in self.columns):
            # First: whether the ONNX model can stand for the fine-tune at all.
            rows.append(["ONNX answers = PyTorch's", *(_agreed(c, len(self.test_rows)) for c in self.columns)])
            for key in self.score_keys():
                for title, of in (("ONNX", "evaluation"), ("PyTorch", "pytorch")):
                    rows.append([f"{self.split} {key} ({title})",
                                 *(score_text(key, _score_of(getattr(c, of), key)) for c in self.columns)])
        if self.few_shot_column() is not None:
            rows += self.cost_rows()
        return rows

    def score_keys(self) -> list[str]:
        """Every score any column has, in the order the metrics give them (perplexity: PyTorch's only)."""
        keys = [key for c in self.columns for e in (c.evaluation, c.pytorch) if e is not None for key in e.scores]
        return list(dict.fromkeys(keys))

    def few_shot_column(self) -> Column | None:
        return next((c for c in self.columns if c.examples), None)

    def cost_rows(self) -> list[list[str]]:
        """Prompt tokens and time per request (the test split's when evaluated), and each fine-tune's training."""
        # Labels fit the text table's 30 characters: the split scored, or "shown" for the prompts above.
        where = self.split if any(c.evaluation is not None for c in self.columns) else "shown"
        trainings = [c.training() for c in self.columns]
        return [[f"prompt tokens/request ({where})", *(_number(c.prompt_tokens()) for c in self.columns)],
                [f"time/request ({where})", *(_seconds(c.seconds_per_request()) for c in self.columns)],
                ["training once: time, tokens",
                 *("—" if c.run is None else f"{_duration(t)}, {_count_of(n)} tokens"
                   for c, (t, n) in zip(self.columns, trainings, strict=True))]]

    def trade_line(self) -> str | None:
        """One sentence per fine-tune against few-shot prompting, from the numbers this comparison measured."""
        shots = self.few_shot_column()
        if shots is None:
            return None
        lines = [_trade(c, shots) for c in self.columns if c.run is not None]
        return " ".join(line for line in lines if line) or None

    def agreement_line(self) -> str | None:
        """One sentence per fine-tune: how many test answers the ONNX model shares with PyTorch."""
        parts = [f"{c.title}: ONNX gives PyTorch's answer on {_agreed(c, len(self.test_rows))} rows of {self.split}"
                 for c in self.columns if c.agreement is not None]
        return "; ".join(parts) + "." if parts else None

    def header(self) -> list[str]:
        return ["prompt", *(c.title for c in self.columns)]

    def answer_rows(self) -> list[list[str]]:
        return [[self.prompt_text(i), *(c.answers[i] if i < len(c.answers) else "" for c in self.columns)]
                for i in range(len(self.prompts))]

    def __str__(self) -> str:
        table = text_table(self.header(), self.answer_rows() + self.summary_rows(), width=30)
        trade = self.trade_line()
        return f"{table}\n\n{trade}" if trade else table

    def __repr__(self) -> str:
        return (f"<Comparison of {len(self.columns)} columns on {len(self.prompts)} prompts: {self.status}; "
                "print() it for the table>")


def _rate(value: float) -> str:
    return f"{value:.0f} tok/s" if value else "— tok/s"  # one-token answers have no decode speed


def _agreed(column: Column, rows: int) -> str:
    if column.agreement is None or not rows:
        return score_text("agreement", column.agreement)
    return f"{round(column.agreement * rows)} of {rows} ({column.agreement:.1%})"


def _score_of(evaluation: Any, key: str) -> float | None:
    value = evaluation.scores.get(key) if evaluation is not None else None
    return None if value is None else float(value)


def _agreement(onnx: Any, pytorch: Any) -> float:
    """Share of rows where both give the same answer: the same label for a classification task, else the same
    text up to case and spacing (a text task's answer is all of its text)."""
    from slmnb.metrics import label_of

    same = label_of if onnx.classification else _normalised
    pairs = list(zip(onnx.predictions, pytorch.predictions, strict=True))
    return sum(same(a) == same(b) for a, b in pairs) / max(len(pairs), 1)


def _normalised(text: str) -> str:
    return " ".join(text.split()).lower()


def training_cost(run: Any) -> tuple[float | None, int | None]:
    """A run's training wall time (the last event's elapsed, in memory or in run.json) and the tokens it trained
    on (the last Step's tokens_seen); None for what an older run did not record."""
    from slmnb.training import events as ev

    events = list(getattr(run, "history", []))
    times = [events[-1].elapsed] if events else []
    try:
        saved = run.folder.read_state().get("elapsed")
    except (SlmnbError, OSError, AttributeError):
        saved = None
    if isinstance(saved, int | float) and not isinstance(saved, bool):
        times.append(float(saved))  # a run read from disk replays its steps only; run.json has its end
    steps = [e.tokens_seen for e in events if isinstance(e, ev.Step)]
    tokens = steps[-1] if steps else 0  # 0: a run from before slmnb counted them
    finite = [t for t in times if isinstance(t, int | float) and math.isfinite(t) and t > 0]
    return (max(finite) if finite else None), (tokens or None)


def _trade(column: Column, shots: Column) -> str | None:
    """The fine-tune against few-shot prompting in one sentence: quality, prompt tokens, and when its training
    pays back in request time. Every number is one this comparison measured or the run recorded."""
    prompting = f"{len(shots.examples)}-shot prompting"
    tokens = _tokens(column, shots)
    parts = [part for part in (_quality(column, shots), tokens and tokens[0]) if part]
    if not parts:
        return None
    detail = f" ({tokens[1]} prompt tokens)" if tokens else ""
    return f"{column.title}: the fine-tune {' and '.join(parts)} than {prompting}{detail}; {_payback(column, shots)}."


def _headline(column: Column) -> str | None:
    """The score the sentence speaks of: accuracy for labels, ROUGE-L for text, else the first one."""
    scores = column.evaluation.scores if column.evaluation is not None else {}
    keys = [k for k in scores if k != "perplexity"]
    return next((k for k in ("accuracy", "rougeL") if k in keys), keys[0] if keys else None)


def _quality(column: Column, shots: Column) -> str | None:
    key = _headline(column)
    ours, theirs = _score_of(column.evaluation, key or ""), _score_of(shots.evaluation, key or "")
    if key is None or ours is None or theirs is None:
        return None
    points = round((ours - theirs) * 100)
    if points == 0:
        return "is as accurate" if key == "accuracy" else f"scores the same {key}"
    if key == "accuracy":
        return f"is {abs(points)} points {'more' if points > 0 else 'less'} accurate"
    return f"scores {abs(points)} points {'higher' if points > 0 else 'lower'} {key}"


def _tokens(column: Column, shots: Column) -> tuple[str, str] | None:
    """The phrase comparing prompt tokens per request, and the two numbers behind it."""
    ours, theirs = column.prompt_tokens(), shots.prompt_tokens()
    if not ours or not theirs:
        return None
    ratio = theirs / ours
    fewer = f"{_times(ratio)} fewer" if ratio >= 1 else f"{_times(1 / ratio)} more"
    return f"uses {fewer} prompt tokens per request", f"{ours:.0f} against {theirs:.0f}"


def _payback(column: Column, shots: Column) -> str:
    seconds, _ = column.training()
    ours, theirs = column.seconds_per_request(), shots.seconds_per_request()
    if ours is None or theirs is None:
        return "no request was timed, so when its training pays back is not known"
    pace = f"{_seconds(ours)} against {_seconds(theirs)} per request"
    if ours >= theirs:
        return f"it is not faster per request ({pace}), so its training does not pay back in request time"
    if seconds is None:
        return f"it is faster per request ({pace}), but the run did not record its training time"
    requests = math.ceil(seconds / (theirs - ours))
    return (f"its {_duration(seconds, adjective=True)} training pays back after {requests:,} requests of prompt "
            f"time ({pace})")


def _times(ratio: float) -> str:
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.1f}x"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def _count_of(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _duration(seconds: float | None, adjective: bool = False) -> str:
    """6 min 12 s in a table; '6-minute' inside a sentence."""
    if seconds is None:
        return "—"
    if adjective:
        if seconds < 90:
            return f"{seconds:.0f}-second"
        return f"{seconds / 60:.0f}-minute" if seconds < 5400 else f"{seconds / 3600:.1f}-hour"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{seconds:.1f} s"


@dataclass
class TaskPlan:
    """One task's runs and what they answer: its prompts, its test rows, its few-shot examples."""

    title: str
    items: list[Any]  # what was handed over: runs, or Exports
    runs: list[Any]
    prompts: list[dict[str, Any] | str]
    test_rows: list[dict[str, Any]]
    examples: list[dict[str, Any]]


@dataclass
class Plan:
    """A comparison checked and ready to build: every mistake was found before the first export."""

    tasks: list[TaskPlan]  # one block per task (slmnb.opt.tasks); runs of one task make one
    max_new_tokens: int
    metrics: list[str] | None = None
    split: str = "test"


def check(runs: Sequence[Any] | Any, prompts: Sequence[dict[str, Any] | str] | str | Path | None = None,
          max_new_tokens: int = 64, few_shot: int = 0, evaluate: bool = False,
          metrics: Sequence[str] | str | None = None, split: str = "test") -> Plan:
    """Everything that can be wrong, in one sentence, before the exports (most of a minute) and generation.

    Cheap (configs, data files, adapter headers), so `%opt compare` calls it in the cell: a refusal known up
    front is the cell's error, never a view that starts and then says failed.
    """
    import slmnb
    from slmnb.opt.export import exportable
    from slmnb.opt.tasks import by_task, check_one_base

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
    check_one_base(trained)
    given = _given_prompts(prompts)
    tasks = [_task_plan(title, [items[i] for i in group], [trained[i] for i in group], given, few_shot, evaluate,
                        split) for title, group in by_task(trained)]
    if evaluate:
        from slmnb.evaluation import capped

        split = capped(split)
    return Plan(tasks, max_new_tokens, _metric_names(metrics), split)


def _task_plan(title: str, items: list[Any], runs: list[Any], given: list[dict[str, Any] | str] | None,
               few_shot: int, evaluate: bool, split: str) -> TaskPlan:
    """One task's prompts, test rows and few-shot examples, all from its first run's data."""
    from slmnb.datafiles import read_splits
    from slmnb.opt.tasks import check_rows_fit

    first = runs[0]
    config = first.config
    splits = read_splits(config)
    test_rows = splits.get("test", [])
    if evaluate and split == "test" and not test_rows:
        raise ExportError(f"Run {first.name!r} has no test split to evaluate on: its data needs a 'test' split.")
    if evaluate:
        from slmnb.evaluation import capped, split_rows

        test_rows = split_rows(config, capped(split))  # a slice (test[:16]) or another split, checked
    if evaluate and not config.response_template:
        raise ExportError(f"evaluate scores answers against the response_template, and run {first.name!r} has "
                          "none: compare without evaluate.")
    train = list(splits.get("train", []))
    if len(train) < few_shot:
        raise ExportError(f"few_shot={few_shot} needs that many training rows; the run has {len(train)}.")
    examples = random.Random(0).sample(train, few_shot) if few_shot else []
    prompts: list[dict[str, Any] | str] = list((test_rows or train)[:DEFAULT_PROMPTS]) if given is None else given
    if given is not None:
        check_rows_fit(runs, given, "the prompts given", "give prompts with that column, or compare the runs of "
                       "each task apart", scored=False)
    else:
        check_rows_fit(runs[1:], prompts, f"the rows of run {first.name!r}",
                       "runs of different tasks need different task_name values, so each task answers its own rows",
                       scored=False)
    if evaluate:
        check_rows_fit(runs[1:], test_rows[:1], f"the {split} rows of run {first.name!r}",
                       "runs of different tasks need different task_name values, so each task answers its own rows",
                       scored=True)
    return TaskPlan(title, items, runs, prompts, test_rows, examples)


def prepare(runs: Sequence[Any] | Any | Plan, prompts: Sequence[dict[str, Any] | str] | str | Path | None = None,
            max_new_tokens: int = 64, few_shot: int = 0, evaluate: bool = False,
            metrics: Sequence[str] | str | None = None, on_phase: Callable[[str], None] | None = None,
            split: str = "test") -> Comparison | Comparisons:
    """Export what is not exported yet and lay out the columns (of a checked Plan); nothing is generated here.

    Runs of one task give a Comparison; runs of several tasks a Comparisons, one Comparison per task."""
    plan = runs if isinstance(runs, Plan) else check(runs, prompts, max_new_tokens, few_shot, evaluate, metrics,
                                                     split)
    exported = [[item if isinstance(item, Export) else export(run, on_phase=_named_phase(run.name, on_phase))
                 for item, run in zip(task.items, task.runs, strict=True)] for task in plan.tasks]
    blocks = [_block(task, exports, plan) for task, exports in zip(plan.tasks, exported, strict=True)]
    return blocks[0] if len(blocks) == 1 else Comparisons(blocks)


def _block(task: TaskPlan, exports: list[Export], plan: Plan) -> Comparison:
    """The base model (through the task's first export, so it renders the task's templates), the task's runs,
    and the base model shown the task's own solved rows."""
    first = exports[0]
    if first.merged:
        raise ExportError(f"{first.folder} is a merged export with no base model inside: compare runs exported "
                          "with adapters='switchable'.")
    columns = [Column("base model", first, adapter=False)]
    columns += [Column(e.run.name, e, adapter=True, run=e.run) for e in exports]
    if task.examples:
        columns.append(Column(f"base, {len(task.examples)}-shot", first, adapter=False, examples=task.examples))
    return Comparison(task.prompts, columns, task.test_rows, plan.max_new_tokens, plan.metrics, plan.split,
                      task=task.title)


def _metric_names(metrics: Sequence[str] | str | None) -> list[str] | None:
    """The metric names asked for (a list, or one comma-separated text as the command line gives), checked."""
    from slmnb import metrics as metric_modules

    if metrics is None:
        return None
    names = [name.strip() for name in metrics.split(",")] if isinstance(metrics, str) else list(metrics)
    return metric_modules.check_names([name for name in names if name]) or None


def _named_phase(name: str, on_phase: Callable[[str], None] | None) -> Callable[[str], None] | None:
    """Each export's phases, prefixed with its run's name (several runs export in turn)."""
    if on_phase is None:
        return None
    report = on_phase
    return lambda text: report(f"{name}: {text}")


def _check_count(option: str, value: Any, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ExportError(f"{option} must be a whole number of at least {least}, not {value!r}.")


def _given_prompts(prompts: Sequence[dict[str, Any] | str] | str | Path | None) -> list[dict[str, Any] | str] | None:
    """The prompts asked for (a list, or a file read once for every task); None: each task's own test rows."""
    from slmnb.datafiles import read_rows

    if prompts is None:
        return None
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


Prompts = Sequence[dict[str, Any] | str] | str | Path | None


@overload
def compare(runs: str | Path | TrainingRun | Export, prompts: Prompts = None, evaluate: bool = False,
            max_new_tokens: int = 64, few_shot: int = 0, metrics: Sequence[str] | str | None = None,
            split: str = "test") -> Comparison: ...  # one run is one task


@overload
def compare(runs: Sequence[Any] | Any, prompts: Prompts = None, evaluate: bool = False, max_new_tokens: int = 64,
            few_shot: int = 0, metrics: Sequence[str] | str | None = None,
            split: str = "test") -> Comparison | Comparisons: ...


def compare(runs: Sequence[Any] | Any, prompts: Prompts = None, evaluate: bool = False, max_new_tokens: int = 64,
            few_shot: int = 0, metrics: Sequence[str] | str | None = None,
            split: str = "test") -> Comparison | Comparisons:
    """Base model and fine-tunes answering the same prompts (default: a few test rows), filled and returned.

    `prompts` is a list of texts or rows, or a file (.txt: one prompt per line; .json/.jsonl/.csv: rows).
    evaluate=True scores every column on `split` (the test split; a slice such as "test[:16]" is quicker) with
    `metrics` (default: the run's); with few_shot, print()
    ends with what the fine-tune bought over prompting (trade_line()).
    Runs of several tasks on one base model (task_name; without one, their data and template columns) give a
    Comparisons: one block per task, the base model beside that task's runs on that task's own prompts.
    In a notebook, `%opt compare` shows the same thing streaming into a table.
    """
    comparison = prepare(runs, prompts, max_new_tokens, few_shot, evaluate, metrics, split=split)
    return comparison.fill(evaluate=evaluate)
