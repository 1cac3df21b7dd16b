"""slmnb.form(): form -> config -> %%finetune cell text -> config, and back; flags; placeholders; Start."""

from __future__ import annotations

import json
from pathlib import Path

import slmnb
from slmnb.config import FinetuneConfig, load_config
from slmnb.data import with_default_templates
from slmnb.demo import DEMO_CONFIG
from slmnb.notebook.form import CELL_MIME, ConfigForm
from slmnb.notebook.launch import cell_config
from slmnb.notebook.parsing import parse_cell_line


def from_cell(text: str):
    first, body = text.split("\n", 1)
    assert first.startswith("%%finetune")
    return cell_config(body, parse_cell_line(first.removeprefix("%%finetune")).overrides, "unused-default")


def test_form_config_cell_text_round_trip(comms: list) -> None:
    form = slmnb.form()
    form.fields["lora_r"].value = "4"
    form.fields["learning_rate"].value = "3e-5"
    form.fields["method"].value = "full"
    form.fields["name"].value = "from-form"
    config = form.config
    assert (config.lora_r, config.method, config.name, config.data_name) == (4, "full", "from-form", "tones")
    assert config.learning_rate == 3e-5  # exactly what was typed: a text box, not a slider's quantised steps
    assert from_cell(form.cell_text) == config
    assert "%%finetune" in form.cell.value and "lora_r: 4" in form.cell.value  # shown live
    assert ConfigForm(config).config == config  # and back into a form


def test_fields_the_form_lacks_are_kept(comms: list) -> None:
    config = load_config("data_name: tones\nweight_decay: 0.1\neval_steps: 7\nmax_steps: 20")
    assert slmnb.form(config).config.weight_decay == 0.1
    assert from_cell(slmnb.form(config).cell_text).eval_steps == 7


def test_invalid_values_are_flagged_beside_the_field(comms: list) -> None:
    form = slmnb.form()
    form.fields["lora_r"].value = "0"
    assert "lora_r must be at least 1, got 0." in form.flags["lora_r"].value
    assert form.start_button.disabled and "fix the field flagged in red" in form.cell.value
    form.fields["lora_r"].value = "16"
    assert form.flags["lora_r"].value == "" and not form.start_button.disabled
    form.fields["learning_rate"].value = "fast"
    assert "learning_rate must be a number, got &#x27;fast&#x27;." in form.flags["learning_rate"].value
    form.fields["learning_rate"].value = ""  # empty: the method's default learning rate
    assert form.flags["learning_rate"].value == "" and form.config.learning_rate is None
    form.fields["lora_r"].value = ""
    assert "lora_r needs a value; its default is 8." in form.flags["lora_r"].value
    assert form.start_button.disabled
    form.fields["lora_r"].value = "16"
    form.fields["learning_rate"].value = "3e-3"
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
    form = ip.run_cell_magic("finetune", "--form --lora_r 32", "max_steps: 20")
    assert isinstance(form, ConfigForm) and form.fields["lora_r"].value == "32"
    # The demo job under the cell's own fields, as slmnb.form() opens it.
    assert form.config == slmnb.form({"lora_r": 32, "max_steps": 20}).config
    assert form.config == with_default_templates(FinetuneConfig.from_dict({**DEMO_CONFIG, "lora_r": 32,
                                                                           "max_steps": 20}))


def test_the_magic_and_slmnb_form_open_the_same_demo_job(ip, comms: list) -> None:
    """`%finetune --form` once opened nearly empty (no data, max_steps 0, learning rate 2e-4)."""
    by_magic, by_call = ip.run_line_magic("finetune", "--form"), slmnb.form()
    demo = with_default_templates(FinetuneConfig.from_dict(DEMO_CONFIG))
    assert by_magic.config == by_call.config == demo
    assert {k: w.value for k, w in by_magic.fields.items()} == {k: w.value for k, w in by_call.fields.items()}
    # Values as a person writes them, in the boxes and in the cell text.
    fields = by_magic.fields
    shown = [fields[k].value for k in ("learning_rate", "max_steps", "lora_r", "lora_alpha", "lora_dropout")]
    assert shown == ["0.002", "40", "16", "32", "0"]
    assert "learning_rate: 0.002\n" in by_magic.cell_text and "max_steps: 40\n" in by_magic.cell_text
    assert not any(flag.value for flag in by_magic.flags.values()) and not by_magic.start_button.disabled


def test_own_data_on_the_demo_job_drops_what_suits_only_the_demo_data(workdir: Path, comms: list) -> None:
    Path("mine.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    config = slmnb.form("data_files: mine.jsonl\nprompt_template: '{question}'\nresponse_template: '{answer}'\n"
                        ).config
    assert (config.data_files, config.data_name, config.use_chat_template) == (["mine.jsonl"], None, False)
    assert config.system_prompt is None  # the demo's empty system message goes with its chat template
    assert config.max_seq_len == FinetuneConfig().max_seq_len  # 96 fits the tones phrases, not any data
    assert (config.learning_rate, config.max_steps, config.lora_r) == (2e-3, 40, 16)  # the demo's training
    text = slmnb.form("text_template: '{phrase} -> {tone}'").config
    assert (text.use_chat_template, text.system_prompt) == (False, None)
    chat = slmnb.form("data_files: mine.jsonl\nprompt_template: '{question}'\nresponse_template: '{answer}'\n"
                      "use_chat_template: true\nsystem_prompt: Answer briefly.").config
    assert (chat.use_chat_template, chat.system_prompt) == (True, "Answer briefly.")
    plain = slmnb.form("use_chat_template: false").config  # the demo's data without its chat template
    assert (plain.data_name, plain.use_chat_template, plain.system_prompt) == ("tones", False, None)
    demo = slmnb.form()
    demo.fields["use_chat_template"].value = False  # the demo's empty system message has no box of its own
    assert (demo.config.use_chat_template, demo.config.system_prompt) == (False, None)
    assert not any(flag.value for flag in demo.flags.values())


def test_the_demos_layer_numbers_stay_with_its_model_and_lora(workdir: Path, comms: list) -> None:
    """layers_to_transform names the embedded model's layers and has no box: another model, or full fine-tuning,
    drops it instead of refusing a field the user cannot see."""
    assert slmnb.form().config.layers_to_transform == DEMO_CONFIG["layers_to_transform"]
    for opened in ("model_name_or_path: tiny-llama", "method: full"):
        assert slmnb.form(opened).config.layers_to_transform is None, opened
    form = slmnb.form()
    form.fields["model_name_or_path"].value = "tiny-llama"
    assert form.config.layers_to_transform is None
    form.fields["model_name_or_path"].value = DEMO_CONFIG["model_name_or_path"]
    form.fields["method"].value = "full"
    assert form.config.layers_to_transform is None
    said = form.problem.value + "".join(flag.value for flag in form.flags.values())
    assert "layers_to_transform" not in said and not form.start_button.disabled  # (the rate gets its warning)


def test_typing_a_bundled_dataset_fills_its_templates(workdir: Path, comms: list) -> None:
    """Typed letter by letter, as the browser sends it: the finished name fills the templates, with no error."""
    Path("mine.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    form = slmnb.form({"data_files": "mine.jsonl"})
    assert (form.fields["prompt_template"].value, form.fields["response_template"].value) == ("", "")
    for end in range(1, len("tones") + 1):
        form.fields["data"].value = "tones"[:end]
    tones = with_default_templates(FinetuneConfig(data_name="tones"))
    assert (form.config.prompt_template, form.config.response_template) == (tones.prompt_template,
                                                                            tones.response_template)
    assert not any(flag.value for flag in form.flags.values()) and not form.problem.value
    assert "320 train rows" in form.preview.value and not form.start_button.disabled
    # Templates of the user's own are never replaced by a dataset's.
    form.fields["data"].value = "mine.jsonl"
    form.fields["prompt_template"].value = "Q: {question}"
    form.fields["response_template"].value = "{answer}"
    form.fields["data"].value = "tones"
    assert form.fields["prompt_template"].value == "Q: {question}"


def test_likely_mistakes_are_kept_and_warned_beside_the_field(comms: list) -> None:
    """The form once clamped a learning rate of 5 to 1e-2 and lora_dropout to 0.5 without a word."""
    form = slmnb.form()
    form.fields["learning_rate"].value = "5"
    form.fields["lora_dropout"].value = "0.7"
    assert (form.config.learning_rate, form.config.lora_dropout) == (5.0, 0.7)
    assert "learning_rate: 5.0\n" in form.cell_text and "lora_dropout: 0.7\n" in form.cell_text
    for key, says in (("learning_rate", "learning_rate 5 is far above what LoRA uses"),
                      ("lora_dropout", "lora_dropout 0.7 drops most of the LoRA input")):
        assert "slmnb-form-warning" in form.flags[key].value and says in form.flags[key].value
    assert not form.start_button.disabled  # a warning never blocks Start
    form.fields["lora_alpha"].value = "600"
    assert "slmnb-form-warning" in form.flags["lora_alpha"].value and "scales the update by 37.5" in \
        form.flags["lora_alpha"].value
    # A warning on a valid field shows even while another field is wrong.
    form.fields["lora_r"].value = "zero"
    assert "slmnb-form-error" in form.flags["lora_r"].value and form.start_button.disabled
    assert "far above" in form.flags["learning_rate"].value
    form.fields["lora_r"].value, form.fields["learning_rate"].value = "16", "3e-3"
    form.fields["lora_dropout"].value, form.fields["lora_alpha"].value = "0.05", "32"
    assert not any(flag.value for flag in form.flags.values())
    # A field the form has no box for is warned about under the form.
    assert "eval_size 0.8 holds out most" in slmnb.form({"eval_size": 0.8}).problem.value


def test_insert_as_cell_offers_the_cell_text_to_the_extension_and_to_copy(comms: list) -> None:
    form = slmnb.form({"max_steps": 5})
    bundle = form.insert_bundle()
    assert bundle[CELL_MIME] == {"source": form.cell_text, "form": form.widget.model_id}
    assert bundle["text/plain"].endswith(form.cell_text) and "Copy this" in bundle["text/plain"]
    assert from_cell(bundle[CELL_MIME]["source"]) == form.config
