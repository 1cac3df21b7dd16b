"""One base model, several tasks (Olive's multi-adapter workflow): a comparison gives each task its own prompts, and
the adapters list groups the adapters under the base model they run on."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import slmnb
from slmnb.config import FinetuneConfig
from slmnb.errors import ExportError
from slmnb.opt.tasks import by_task, check_one_base, task_key

TONES = [{"phrase": f"what a day number {i}", "tone": "Joy" if i % 2 else "Sadness"} for i in range(8)]
NOTES = [{"change": f"fix the parser bug {i}", "note": f"Fixed parser bug {i}."} for i in range(8)]
CLASSIFY = {"rows": TONES, "prompt_template": "Text: {phrase}\nTone:", "response_template": " {tone}"}
GENERATE = {"rows": NOTES, "prompt_template": "Change: {change}\nNote:", "response_template": " {note}"}


def fake(name: str, **config: object) -> SimpleNamespace:
    return SimpleNamespace(name=name, config=FinetuneConfig.from_dict({"model_name_or_path": "tiny-llama", **config}))


def test_a_task_is_its_task_name_else_its_data_and_template_columns() -> None:
    named = fake("a", task_name="classification", **GENERATE)
    assert task_key(named.config) == task_key(fake("b", task_name="classification", **CLASSIFY).config)
    assert task_key(named.config) != task_key(fake("c", task_name="generation", **GENERATE).config)
    # Without a task_name: the same rows asked for the same columns are one task, however the prompt is worded.
    plain = fake("d", **CLASSIFY)
    reworded = fake("e", **{**CLASSIFY, "prompt_template": "Say the tone of: {phrase}\n"})
    assert task_key(plain.config) == task_key(reworded.config)
    other_column = fake("f", rows=[{**row, "topic": "work"} for row in TONES], prompt_template="{phrase}",
                        response_template="{topic}")
    other_rows = fake("g", **{**CLASSIFY, "rows": TONES[:4]})
    assert task_key(plain.config) != task_key(other_column.config)
    assert task_key(plain.config) != task_key(other_rows.config)
    groups = by_task([named, plain, fake("h", task_name="generation", **GENERATE), reworded])
    assert [(title, members) for title, members in groups] == [
        ("classification", [0]), ("inline rows (phrase, tone)", [1, 3]), ("generation", [2])]


def test_runs_of_different_base_models_are_refused_in_one_sentence() -> None:
    runs = [fake("a", **CLASSIFY), fake("b", **GENERATE), fake("c", **{**CLASSIFY, "model_name_or_path": "other"})]
    with pytest.raises(ExportError, match=r"Runs 'a' and 'c' fine-tune different base models \(tiny-llama and "
                                          r"other\).*compare the runs of each base model apart\.$") as failure:
        check_one_base(runs)
    assert "\n" not in str(failure.value)
    check_one_base(runs[:2])  # two tasks, one base: fine


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two adapters on the tiny model's one base (a classification and a generation task), exported switchable."""
    folder = tmp_path_factory.mktemp("tasks")
    common = {"model_name_or_path": "tiny-llama", "max_steps": 2, "per_device_train_batch_size": 4,
              "precision": "fp32", "eval_size": 0.25}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        tones = slmnb.finetune({**common, **CLASSIFY}, name="tones", task_name="classification").wait()
        notes = slmnb.finetune({**common, **GENERATE}, name="notes", task_name="generation").wait()
        exports = [slmnb.export(run) for run in (tones, notes)]
        yield {"folder": folder, "tones": tones, "notes": notes, "exports": exports}


@pytest.fixture
def inside(two_tasks: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.chdir(two_tasks["folder"])
    return two_tasks


def test_two_tasks_on_one_base_each_answer_their_own_prompts(inside) -> None:
    from slmnb.opt.tasks import Comparisons

    comparison = slmnb.compare(["tones", "notes"], max_new_tokens=2, few_shot=1)
    assert isinstance(comparison, Comparisons) and comparison.status == "done"
    classify, generate = comparison.blocks
    assert (classify.task, generate.task) == ("classification", "generation")
    assert classify is comparison.block("classification")
    # Each task's prompts are its own rows (no test split here: its first training rows), never the first run's.
    assert classify.prompts == TONES[:4] and generate.prompts == NOTES[:4]
    for block, run in ((classify, inside["tones"]), (generate, inside["notes"])):
        assert [c.title for c in block.columns] == ["base model", run.name, "base, 1-shot"]
        # The base model answers through the task's own export, so its prompts render the task's templates.
        base, tuned, shots = block.columns
        assert base.export.run.name == run.name and not base.adapter and tuned.adapter
        assert base.export.folder == tuned.export.folder  # one base model serves both tasks
        assert shots.examples and all(example in run.config.rows for example in shots.examples)
        assert all(len(c.answers) == 4 for c in block.columns)
    assert classify.columns[0].export.folder == generate.columns[0].export.folder
    tokenizer = classify.columns[0].export.tokenizer()
    assert "Tone:" in tokenizer.decode(classify.columns[0].export.prompt_ids(TONES[0]))
    assert "Note:" in tokenizer.decode(generate.columns[0].export.prompt_ids(NOTES[0]))
    text = str(comparison)
    assert text.index("Task classification: tones") < text.index(TONES[0]["phrase"]) \
        < text.index("Task generation: notes") < text.index(NOTES[0]["change"])
    assert "2 tasks (classification, generation): done" in repr(comparison)


def test_two_tasks_are_scored_each_on_its_own_split(inside) -> None:
    comparison = slmnb.compare(["notes", "tones"], max_new_tokens=2, evaluate=True, split="train[:2]")
    generate, classify = comparison.blocks  # in the order the runs were given
    assert classify.test_rows == TONES[:2] and generate.test_rows == NOTES[:2]
    for block in comparison.blocks:
        assert all(len(c.evaluation.predictions) == 2 for c in block.columns)
    assert "accuracy" in classify.columns[1].evaluation.scores
    assert "accuracy" not in generate.columns[1].evaluation.scores  # free text: chosen from the data, not labels


def test_runs_of_one_task_keep_one_table(inside) -> None:
    from slmnb.opt.compare import Comparison

    comparison = slmnb.compare("tones", prompts=["a fine day"], max_new_tokens=2)
    assert isinstance(comparison, Comparison) and comparison.blocks == [comparison]
    assert not str(comparison).startswith("Task ")


def test_the_view_shows_one_table_per_task(inside, ip) -> None:
    view = ip.run_line_magic("opt", "compare tones notes --max_new_tokens 2 --wait")
    html, text = view._render()
    assert text.split("\n")[0] == "done"
    assert html.count("<h4") == 2 and html.count("<table") == 2
    assert text.index("Task classification: tones") < text.index("Task generation: notes")


def copy_run(source: str, name: str, **changes: str) -> None:
    """A run folder copied under another name, with some config lines changed (no training)."""
    shutil.copytree(f"runs/{source}", f"runs/{name}")
    config = Path(f"runs/{name}/config.yaml")
    text = config.read_text().replace(f"name: {source}", f"name: {name}")
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    config.write_text(text)


def test_rows_that_do_not_fit_a_task_are_one_sentence(inside) -> None:
    copy_run("notes", "notes-mislabelled", **{"task_name: generation": "task_name: classification"})
    try:
        with pytest.raises(ExportError, match=r"Run 'notes-mislabelled' asks for \{change\}, which the rows of run "
                                              r"'tones' lack .*different task_name values") as failure:
            slmnb.compare(["tones", "notes-mislabelled"])  # before any export
        assert "\n" not in str(failure.value)
    finally:
        shutil.rmtree("runs/notes-mislabelled")
    with pytest.raises(ExportError, match=r"Run 'notes' asks for \{change\}, which the prompts given lack"):
        slmnb.compare(["tones", "notes"], prompts=[{"phrase": "a fine day"}])


def test_the_adapters_list_groups_adapters_under_their_base_model(inside, ip) -> None:
    from slmnb.opt.store import by_base

    listed = slmnb.list_exports()
    groups = by_base(listed)
    assert list(groups) == ["tiny-llama"]
    adapters = [(a["run"], a["task_name"]) for e in groups["tiny-llama"] for a in e.adapters]
    assert adapters == [("tones", "classification"), ("notes", "generation")]
    table = ip.run_line_magic("opt", "adapters")
    lines = repr(table).splitlines()
    assert lines[0].split()[:2] == ["base", "model"]
    assert [line.startswith("tiny-llama ") for line in lines[1:]] == [True, False]  # the base once, then its rows
    tones = next(line for line in lines if " tones " in line)
    notes = next(line for line in lines if " notes " in line)
    assert "classification" in tones and "generation" in notes and lines.index(notes) == lines.index(tones) + 1
    assert "<table" in table._repr_html_()
