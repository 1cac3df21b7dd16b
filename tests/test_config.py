from __future__ import annotations

import pytest

from slmnb.config import FinetuneConfig, load_config
from slmnb.errors import ConfigError


def test_defaults_follow_olive_names() -> None:
    config = FinetuneConfig()
    assert config.model_name_or_path == "smollm2-135m-instruct"
    assert (config.method, config.lora_r, config.lora_alpha) == ("lora", 8, 16)
    assert config.precision == "auto"


def test_yaml_round_trip_gives_an_equal_config() -> None:
    config = FinetuneConfig(data_name="tones", max_steps=60, learning_rate=1e-3, target_modules=["q_proj", "v_proj"],
                            use_chat_template=True, prompt_template="{phrase}", response_template="{tone}",
                            rows=None, name="a-run")
    assert load_config(config.to_yaml()) == config
    assert load_config(config.to_yaml(include_defaults=False)) == config


def test_yaml_and_json_text_and_files(tmp_path) -> None:
    (tmp_path / "c.yaml").write_text("data_name: tones\nmax_steps: 5\n")
    (tmp_path / "c.json").write_text('{"data_name": "tones", "max_steps": 5}')
    assert load_config(str(tmp_path / "c.yaml")) == load_config(tmp_path / "c.json")
    assert load_config('{"data_name": "tones", "max_steps": 5}').max_steps == 5


def test_overrides_win_over_the_source() -> None:
    assert load_config({"max_steps": 5}, max_steps=9).max_steps == 9


def test_numbers_written_as_text_are_accepted() -> None:
    # YAML 1.1 reads 1e-3 as a string, and command lines give strings.
    config = load_config("learning_rate: 1e-3\nmax_steps: '12'\nuse_chat_template: 'true'")
    assert config.learning_rate == pytest.approx(1e-3)
    assert config.max_steps == 12
    assert config.use_chat_template is True


def test_comma_separated_lists() -> None:
    config = FinetuneConfig(target_modules="q_proj, v_proj", data_files="a.json,b.json")
    assert config.target_modules == ["q_proj", "v_proj"]
    assert config.data_files == ["a.json", "b.json"]
    assert FinetuneConfig(target_modules="all-linear").target_modules == "all-linear"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lora_rank": 8}, "Unknown config key 'lora_rank': did you mean lora_r?"),
        ({"learning_rat": 1e-3}, "did you mean learning_rate?"),
        ({"zzz": 1}, "Unknown config key 'zzz': valid keys are model_name_or_path"),
        ({"lora_r": "eight"}, "lora_r must be a number, got 'eight'."),
        ({"lora_r": 0}, "lora_r must be at least 1, got 0."),
        ({"lora_r": 2.5}, "lora_r must be a whole number, got 2.5."),
        ({"lora_dropout": 1.0}, "lora_dropout must be below 1, got 1."),
        ({"eval_size": -0.1}, "eval_size must be at least 0, got -0.1."),
        ({"method": "lorra"}, "method must be one of lora, qlora, full (did you mean lora?), got 'lorra'."),
        ({"precision": "fp16"}, "precision must be one of auto, bf16, fp32"),
        ({"use_chat_template": "maybe"}, "use_chat_template must be true or false, got 'maybe'."),
        ({"max_steps": True}, "max_steps must be a number, got True."),
        ({"rows": ["a"]}, "rows must be a list of mappings"),
        ({"method": None}, "method needs a value; its default is 'lora'."),
        ({"data_name": "tones", "rows": [{"a": 1}]}, "Give one data source, not data_name and rows"),
        ({"text_template": "{a}", "prompt_template": "{a}", "response_template": "{b}"},
         "Give either text_template or prompt_template + response_template, not both."),
        ({"prompt_template": "{a}"}, "prompt_template and response_template go together: add response_template."),
        ({"use_chat_template": True, "text_template": "{a}"}, "use_chat_template needs prompt_template"),
        ({"name": "my run/1"}, "name 'my run/1' can only use letters, digits"),
    ],
)
def test_each_mistake_is_one_sentence(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        FinetuneConfig.from_dict(values)
    text = str(info.value)
    assert message in text
    assert "\n" not in text and text.endswith((".", "?"))


def test_invalid_yaml_names_the_line() -> None:
    with pytest.raises(ConfigError, match=r"not valid YAML .*line 2"):
        load_config("max_steps: 5\n  lora_r: [8\n")


def test_a_config_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config("- just\n- a list\n")


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nowhere.yaml")


def test_replace_checks_the_new_values() -> None:
    with pytest.raises(ConfigError, match="lora_r must be at least 1"):
        FinetuneConfig().replace(lora_r=0)
