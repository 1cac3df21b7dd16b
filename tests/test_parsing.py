"""The %%finetune line, parsed without a kernel: options become config overrides, mistakes one sentence."""

from __future__ import annotations

import pytest

from slmnb.errors import ConfigError
from slmnb.notebook.parsing import parse_cell_line


def refused(line: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_cell_line(line)
    text = str(info.value)
    assert "\n" not in text and text.endswith((".", "?")), text
    return text


def test_options_become_overrides_as_text() -> None:
    args = parse_cell_line("-m tiny-llama --max_steps 20 --use_chat_template --dry-run -o run")
    assert args.overrides == {"model_name_or_path": "tiny-llama", "max_steps": "20", "use_chat_template": "true"}
    assert (args.dry_run, args.var) == (True, "run")


@pytest.mark.parametrize("var", ["class", "None", "1run", "run-1", "'a b'"])
def test_o_takes_a_variable_name_that_python_can_assign(var: str) -> None:
    assert refused(f"-o {var}").startswith("-o takes a Python variable name such as run")


def test_an_empty_option_value_clears_a_field_whose_default_is_empty() -> None:
    assert parse_cell_line("--max_steps=").overrides == {"max_steps": ""}
    assert parse_cell_line("--lora_r ''").overrides == {"lora_r": ""}  # FinetuneConfig says it needs a value


def test_options_must_be_spelt_out_not_abbreviated() -> None:
    assert refused("--max_step 5") == "Unknown config key 'max_step': did you mean max_steps?"
    assert refused("--lora_drop 0.1") == "Unknown config key 'lora_drop': did you mean lora_dropout?"


@pytest.mark.parametrize("line", ["stray", "--lora_r 8 extra", "-5", "---", "--=5"])
def test_a_stray_word_says_how_options_are_written(line: str) -> None:
    assert refused(line).startswith("Unexpected '")


@pytest.mark.parametrize("line", ["--lora_r", "-o", "--wait=1", "--name 'unclosed"])
def test_other_mistakes_are_one_sentence(line: str) -> None:
    assert "Traceback" not in refused(line)
