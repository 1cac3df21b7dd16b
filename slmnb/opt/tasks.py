"""One base model, several tasks (Olive's multi-adapter workflow): which runs of a comparison share a task, and a
comparison of several tasks, one block per task.

`olive finetune --task_name classification ...` and `--task_name generation ...` train two adapters on one base,
and `generate-adapter` serves both from one base model. Compared together, a generation adapter answering the
classification prompts says nothing, so each task gets its own block: the base model beside that task's runs, on
that task's prompts (its first run's test rows), scored on its own split, with few-shot examples from its own
training rows.

Two runs are the same task when they name the same task_name. A run without one is its data (data_name, data_files
or inline rows) and the columns its templates use: the same rows asked for the same columns are the same question,
however a run words its prompt, so runs that differ only in prompt wording stay side by side on the same rows,
while the same data asked for another column (tone, then topic) is another task.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from slmnb.errors import ExportError


def task_key(config: Any) -> tuple[Any, ...]:
    """What makes two runs one task (see the module's docstring)."""
    if config.task_name:
        return ("task", config.task_name)
    rows = json.dumps(config.rows, sort_keys=True, default=str) if config.rows else None
    digest = rows and hashlib.sha256(rows.encode()).hexdigest()  # inline rows: one set of rows, one task
    return ("data", _data_of(config), digest, tuple(template_columns(config)))


def task_title(config: Any) -> str:
    """The task's name, or its data and columns when the run names none: "tones (phrase, tone)"."""
    if config.task_name:
        return str(config.task_name)
    return f"{_data_of(config)} ({', '.join(template_columns(config)) or 'no template'})"


def template_columns(config: Any) -> list[str]:
    """The row columns a run's templates use, in order of first use."""
    templates = (config.prompt_template, config.response_template, config.text_template)
    return list(dict.fromkeys(name for template in templates if template for name in _fields(template)))


def by_task(runs: Sequence[Any]) -> list[tuple[str, list[int]]]:
    """The runs' positions grouped by task, tasks in the order their first run was given."""
    groups: dict[tuple[Any, ...], tuple[str, list[int]]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(task_key(run.config), (task_title(run.config), []))[1].append(i)
    return list(groups.values())


def check_one_base(runs: Sequence[Any]) -> None:
    """A comparison shows one base model beside its fine-tunes: runs of another base model are refused."""
    first = runs[0]
    base = first.config.model_name_or_path
    other = next((run for run in runs if run.config.model_name_or_path != base), None)
    if other is not None:
        raise ExportError(f"Runs {first.name!r} and {other.name!r} fine-tune different base models ({base} and "
                          f"{other.config.model_name_or_path}), and a comparison shows one base model beside its "
                          "fine-tunes: compare the runs of each base model apart.")


def check_rows_fit(runs: Sequence[Any], rows: Sequence[Any], whose: str, fix: str, scored: bool) -> None:
    """Every run finds the columns its prompt (and, scored, its answer) needs in the rows it will answer: a
    generation adapter handed classification rows would otherwise answer an empty prompt, or fail in the
    background a minute later."""
    for run in runs:
        config = run.config
        if config.text_template:
            needed = _fields(config.text_template)[:1]  # the rest of a text template is what the model writes
        else:
            needed = _fields(config.prompt_template or "")
            needed += _fields(config.response_template or "") if scored else []
        for row in rows:
            if not isinstance(row, dict):
                continue  # a text fills the prompt's one column
            missing = [name for name in needed if name not in row]
            if missing:
                raise ExportError(f"Run {run.name!r} asks for {{{missing[0]}}}, which {whose} lack (they have "
                                  f"{', '.join(map(str, row)) or 'no columns'}): {fix}.")


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def _data_of(config: Any) -> str:
    if config.data_name:
        return Path(str(config.data_name)).name or str(config.data_name)
    if config.data_files:
        return ", ".join(Path(str(name)).name for name in config.data_files)
    return "inline rows" if config.rows else "no data"


Update = Callable[[Any, str], None]


class Comparisons:
    """Runs of several tasks on one base model: one Comparison per task (`blocks`), each the base model beside that
    task's runs on that task's prompts, filled one after the other. Printed, stopped and shown like a Comparison."""

    def __init__(self, blocks: list[Any]) -> None:
        self.blocks = blocks
        self.error: BaseException | None = None

    def block(self, task: str) -> Any:
        """The Comparison of one task, by its title (its task_name)."""
        found = next((block for block in self.blocks if block.task == task), None)
        if found is None:
            raise ExportError(f"This comparison has no task {task!r}: its tasks are "
                              f"{', '.join(str(b.task) for b in self.blocks)}.")
        return found

    @property
    def status(self) -> str:
        """failed or stopped if a block was; done when all are; else the working block's status, named."""
        statuses = [block.status for block in self.blocks]
        for final in ("failed", "stopped"):
            if final in statuses:
                return final
        working = next((block for block in self.blocks if block.status != "done"), None)
        if working is None:
            return "done"
        if working.status == "waiting":
            return "generating" if "done" in statuses else "waiting"
        return f"{working.task}: {working.status}"

    @status.setter
    def status(self, value: str) -> None:
        for block in self.blocks:
            block.status = value

    def stop(self) -> None:
        """End after the current token; what was generated so far stays, and later tasks are not started."""
        for block in self.blocks:
            block.stop()

    def fill(self, on_update: Update | None = None, evaluate: bool = False) -> Comparisons:
        """Fill each task's block in turn (with its evaluation), calling on_update(self, what) as things change."""
        report = on_update
        notify = None if report is None else (lambda block, what: report(self, what))
        try:
            for block in self.blocks:
                block.fill(notify, evaluate=evaluate)
                if block.status == "stopped":
                    break
        except BaseException as exc:
            self.error = exc
            raise
        return self

    def __str__(self) -> str:
        return "\n\n".join(f"{block.heading()}\n{block}" for block in self.blocks)

    def __repr__(self) -> str:
        tasks = ", ".join(str(block.task) for block in self.blocks)
        return f"<Comparison of {len(self.blocks)} tasks ({tasks}): {self.status}; print() it for the tables>"
