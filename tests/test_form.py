"""slmnb.form(): form -> config -> %%finetune cell text -> config, and back; flags; placeholders; Start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import slmnb
from slmnb.config import load_config
from slmnb.notebook.form import ConfigForm
from slmnb.notebook.launch import cell_config
from slmnb.notebook.parsing import parse_cell_line


def from_cell(text: str):
    first, body = text.split("\n", 1)
    assert first.startswith("%%finetune")
    return cell_config(body, parse_cell_line(first.removeprefix("%%finetune")).overrides, "unused-default")


def test_form_config_cell_text_round_trip(comms: list) -> None:
    form = slmnb.form()
    form.fields["lora_r"].value = 4
    form.fields["learning_rate"].value = 3e-4
    form.fields["method"].value = "full"
    form.fields["name"].value = "from-form"
    config = form.config
    assert (config.lora_r, config.method, config.name, config.data_name) == (4, "full", "from-form", "tones")
    assert config.learning_rate == pytest.approx(3e-4)
    assert from_cell(form.cell_text) == config
    assert "%%finetune" in form.cell.value and "lora_r: 4" in form.cell.value  # shown live
    assert ConfigForm(config).config == config  # and back into a form


def test_fields_the_form_lacks_are_kept(comms: list) -> None:
    config = load_config("data_name: tones\nweight_decay: 0.1\neval_steps: 7\nmax_steps: 20")
    assert slmnb.form(config).config.weight_decay == 0.1
    assert from_cell(slmnb.form(config).cell_text).eval_steps == 7


def test_invalid_values_are_flagged_beside_the_field(comms: list) -> None:
    form = slmnb.form()
    form.fields["lora_r"].value = 0
    assert "lora_r must be at least 1, got 0." in form.flags["lora_r"].value
    assert form.start_button.disabled and "fix the flagged field" in form.cell.value
    form.fields["lora_r"].value = 8
    assert form.flags["lora_r"].value == "" and not form.start_button.disabled
    form.fields["prompt_template"].value = "{sentence}"
    assert "prompt_template uses {sentence}, which is not a column: the columns are phrase, tone." in \
        form.problem.value


def test_data_preview_and_columns_as_placeholders(workdir: Path, comms: list) -> None:
    Path("mine.jsonl").write_text("\n".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) for i in range(5)))
    form = slmnb.form()
    form.fields["data"].value = "mine.jsonl"
    assert "q0" in form.preview.value and "5 train rows" in form.preview.value
    assert [b.description for b in form.columns.children] == ["{question}", "{answer}"]
    form.fields["prompt_template"].value = "Q: "
    form.columns.children[0].click()
    form.insert_into.value = "response_template"
    form.fields["response_template"].value = ""
    form.columns.children[1].click()
    assert (form.config.prompt_template, form.config.response_template) == ("Q: {question}", "{answer}")
    assert form.config.data_files == ["mine.jsonl"] and form.config.data_name is None
    form.fields["data"].value = "missing.json"
    assert "does not exist" in form.flags["data"].value


def test_start_launches_the_run_with_its_dashboard(ip, workdir: Path, tiny: dict, comms: list) -> None:
    form = slmnb.form({**tiny, "name": "formrun", "max_steps": 3})
    assert form.config.rows == tiny["rows"]  # inline rows survive the form
    run = form.start()
    run.wait()
    assert (run.name, run.status, run.step) == ("formrun", "finished", 3)


def test_form_from_the_magic_line(ip, comms: list) -> None:
    form = ip.run_cell_magic("finetune", "--form --lora_r 32", "data_name: tones")
    assert isinstance(form, ConfigForm) and form.fields["lora_r"].value == 32
