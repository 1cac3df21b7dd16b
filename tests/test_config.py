from __future__ import annotations

import pytest

from slmnb.checks import config_warnings, field_warnings, written
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
        ({"base_weights": "nf4"}, "base_weights must be one of auto, int4, original"),
        ({"method": "qlora", "base_weights": "int4"},
         "base_weights int4 is for method lora: qlora trains on its own 4-bit base; set base_weights to original"),
        ({"method": "full", "base_weights": "int4"}, "full changes every weight; set base_weights to original"),
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


# --- bad input: each case once, by name (tests/test_bad_input.py generates many more) -----------------------


def refused(values: dict | str) -> str:
    with pytest.raises(ConfigError) as info:
        FinetuneConfig.from_dict(values) if isinstance(values, dict) else load_config(values)
    text = str(info.value)
    assert "\n" not in text and text.endswith((".", "?")), text
    for internal in ("OverflowError", "ValueError", "cannot convert", "Exceeds the limit", "[Errno"):
        assert internal not in text
    return text


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400", "inf", "nan", "'-Infinity'", "1.0e+400"])
@pytest.mark.parametrize("name", ["lora_r", "max_steps", "seed"])
def test_non_finite_numbers_in_whole_number_fields_are_one_sentence(name: str, value: str) -> None:
    assert f"{name} must be a finite number" in refused(f"{name}: {value}")


@pytest.mark.parametrize("name", ["lora_dropout", "learning_rate", "num_train_epochs", "weight_decay", "eval_size",
                                  "warmup_ratio"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), "nan", "inf", 10**400],
                         ids=["nan", "inf", "nan-text", "inf-text", "10**400"])
def test_non_finite_numbers_are_refused_for_every_float_field(name: str, value) -> None:
    message = refused({name: value})
    assert f"{name} must be a finite number" in message or "got a number with about 401 digits" in message


def test_huge_whole_numbers_are_one_sentence() -> None:
    assert "lora_r must be at most 4096, got a number with about 5001 digits." in refused({"lora_r": 10**5000})
    assert "max_steps must be a number of a sensible size" in refused({"max_steps": "9" * 5000})
    assert "must be at most 2147483647" in refused({"per_device_train_batch_size": 2**40})


def test_seed_is_bounded_by_what_numpy_accepts() -> None:
    assert "seed must be at most 4294967295, got 4294967296." in refused({"seed": 2**32})
    assert FinetuneConfig(seed=2**32 - 1).seed == 2**32 - 1


def test_lora_rank_and_alpha_have_sane_upper_bounds() -> None:
    assert "lora_r must be at most 4096, got 1000000000000000." in refused({"lora_r": 10**15})
    assert "lora_alpha must be at most 65536" in refused({"lora_alpha": 10**7})
    assert FinetuneConfig(lora_r=4096, lora_alpha=65536).lora_r == 4096


def test_zero_epochs_is_refused() -> None:
    assert "num_train_epochs must be above 0, got 0." in refused({"num_train_epochs": 0})
    assert FinetuneConfig(num_train_epochs=0.5).num_train_epochs == 0.5


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"text_template": "{{}}"}, "text_template uses no {column}"),
        ({"text_template": "just text"}, "text_template uses no {column}"),
        ({"prompt_template": "{phrase}", "response_template": "Joy"}, "response_template uses no {column}"),
        ({"prompt_template": "{phrase}", "response_template": "{{tone}}"}, "response_template uses no {column}"),
        ({"prompt_template": "{phrase!r}", "response_template": "{tone}"}, "may only use plain {column}"),
        ({"prompt_template": "{}", "response_template": "{tone}"}, "may only use plain {column}"),
    ],
)
def test_templates_that_use_no_column_or_more_than_names_are_refused(values: dict, message: str) -> None:
    assert message in refused(values)


def test_a_prompt_may_use_no_column() -> None:
    config = FinetuneConfig(prompt_template="Write a haiku:", response_template="{haiku}")
    assert config.prompt_template == "Write a haiku:"


@pytest.mark.parametrize("name", ["abc\n", "a" * 101, ".hidden", "-x", "a b", "a/b", "é"])
def test_bad_names_are_refused(name: str) -> None:
    assert refused({"name": name}).startswith("name ")


def test_a_name_of_100_characters_is_fine() -> None:
    assert FinetuneConfig(name="a" * 100).name == "a" * 100


@pytest.mark.parametrize("text", ["a\0b", "\ud800"])
def test_text_with_nul_or_lone_surrogates_is_refused(text: str) -> None:
    assert "data_name contains a" in refused({"data_name": text})
    assert "target_modules contains a" in refused({"target_modules": [text]})


@pytest.mark.parametrize("rows", [[{1: "a"}], [{None: "a"}], [{("a", "b"): 1}]])
def test_rows_with_keys_that_are_not_text_are_one_sentence(rows: list) -> None:
    assert "Row 1 of rows has the key" in refused({"rows": rows})
    assert "Row 1 of rows has the key 1, which is not text" in refused("rows: [{1: a}]")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: " + "[" * 5000 + "]" * 5000, "nests too deeply"),
        ("max_steps: " + "9" * 5000, "holds a value that YAML cannot read"),
        ("lora_r: !!int x", "holds a value that YAML cannot read"),
        ("[1, 2]", "must be a mapping"),
        ("lora_r: [[[[[1]]]]]", "lora_r must be a number, got a list."),
        ("{1: 2}", "Config keys are field names such as max_steps, not a number (1)."),
        ("data_name: !!binary eA==", "data_name must be a text value, got bytes."),
    ],
)
def test_yaml_that_python_cannot_hold_is_one_sentence(text: str, message: str) -> None:
    assert message in refused(text)


def test_a_huge_value_in_a_message_is_shortened() -> None:
    message = refused({"method": "x" * 10_000})
    assert len(message) < 300 and "..." in message


# --- config files and paths ---------------------------------------------------------------------------------


def test_a_config_file_that_is_not_utf8_is_one_sentence(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert "c.yaml' is not UTF-8 text" in refused(str(path))


def test_a_config_file_with_a_byte_order_mark_loads(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: 7\n", encoding="utf-8-sig")
    assert load_config(str(path)).max_steps == 7


def test_a_one_line_string_naming_a_file_is_a_path_whatever_its_extension(workdir) -> None:
    (workdir / "job.cfg").write_text("max_steps: 9\n")
    assert load_config("job.cfg").max_steps == 9
    (workdir / "notes.txt").write_text("these are notes\n")
    assert refused("notes.txt") == ("Config file 'notes.txt' must hold a mapping of keys to values, such as "
                                    "'max_steps: 60', not text.")
    (workdir / "list.yaml").write_text("- a\n- b\n")
    assert "Config file 'list.yaml' must hold a mapping" in refused("list.yaml")
    (workdir / "folder").mkdir()
    assert "Config file 'folder' is a folder" in refused("folder")


@pytest.mark.parametrize("path", ["job.txt", "configs/job", "nowhere.yml", "~/no/such/config"])
def test_a_missing_path_says_it_does_not_exist(workdir, path: str) -> None:
    assert refused(path) == f"Config file {path!r} does not exist: check the path."


def test_one_line_yaml_is_still_yaml() -> None:
    assert load_config("{max_steps: 3}").max_steps == 3
    assert load_config("max_steps: 3").max_steps == 3
    assert load_config("").max_steps is None


@pytest.mark.parametrize("name", ["model_name_or_path", "train_split", "method", "lora_r"])
@pytest.mark.parametrize("value", ["", "  "])
def test_empty_text_for_a_field_with_a_default_needs_a_value(name: str, value: str) -> None:
    assert refused({name: value}).startswith(f"{name} needs a value; its default is ")


def test_empty_text_clears_a_field_whose_default_is_empty() -> None:
    assert FinetuneConfig(max_steps="", eval_split="", name="").max_steps is None


def test_an_empty_learning_rate_is_the_methods_default() -> None:
    assert FinetuneConfig(learning_rate="").learning_rate is None
    assert FinetuneConfig().peak_learning_rate == 3e-3  # LoRA: what a search picks at the default steps
    assert FinetuneConfig(method="qlora").peak_learning_rate == 3e-3
    assert FinetuneConfig(method="full").peak_learning_rate == 2e-5  # not a LoRA rate: that would wreck the model
    assert FinetuneConfig(method="full", learning_rate=1e-5).peak_learning_rate == 1e-5
    assert config_warnings(FinetuneConfig(method="full")) == []


# --- warnings: values that work but are very likely a mistake ---------------------------------------------


def test_the_demo_job_and_the_defaults_have_no_warning() -> None:
    from slmnb.demo import DEMO_CONFIG

    assert config_warnings(FinetuneConfig.from_dict(DEMO_CONFIG)) == []
    assert config_warnings(FinetuneConfig()) == []
    assert config_warnings(FinetuneConfig(method="full", learning_rate=2e-5)) == []


@pytest.mark.parametrize(("values", "field", "message"), [
    ({"learning_rate": 5}, "learning_rate",
     "learning_rate 5 is far above what LoRA uses (at most 0.01) and will likely diverge: try 3e-3."),
    ({"learning_rate": 0}, "learning_rate", "learning_rate 0 is below 1e-6, so the weights barely change: try 3e-3."),
    ({"method": "full", "learning_rate": 3e-3}, "learning_rate",
     "learning_rate 0.003 is far above what full fine-tuning uses (at most 0.001) and will likely erase what the "
     "model knew: try 2e-5."),
    ({"lora_dropout": 0.7}, "lora_dropout",
     "lora_dropout 0.7 drops most of the LoRA input, so it learns slowly: use 0 to 0.1 (the default is 0.05)."),
    ({"lora_r": 256}, "lora_alpha",
     "lora_alpha 16 / lora_r 256 scales the update by 0.0625 (usually 0.25 to 2), like a far slower learning rate: "
     "set lora_alpha to about twice lora_r (512)."),
    ({"lora_r": 1, "lora_alpha": 32}, "lora_alpha",
     "lora_alpha 32 / lora_r 1 scales the update by 32 (usually 0.25 to 2), like a far faster learning rate: set "
     "lora_alpha to about twice lora_r (2)."),
    ({"eval_size": 0.8}, "eval_size",
     "eval_size 0.8 holds out most of the rows for evaluation, leaving few to train on: use 0.1 to 0.2."),
])
def test_each_likely_mistake_is_one_warning_naming_the_fix(values: dict, field: str, message: str) -> None:
    config = FinetuneConfig.from_dict(values)
    assert field_warnings(config) == {field: message}
    assert config_warnings(config) == [message]


@pytest.mark.parametrize(("values", "warned"), [
    ({"learning_rate": 1e-2}, False), ({"learning_rate": 1.01e-2}, True),  # LoRA's limit is inclusive
    ({"learning_rate": 1e-6}, False), ({"learning_rate": 9e-7}, True),
    ({"method": "full", "learning_rate": 1e-3}, False), ({"method": "qlora", "learning_rate": 1e-2}, False),
    ({"lora_dropout": 0.5}, False), ({"lora_dropout": 0.51}, True),
    ({"lora_r": 64, "lora_alpha": 8}, False), ({"lora_r": 64, "lora_alpha": 7}, True),
    ({"lora_r": 2, "lora_alpha": 16}, False), ({"lora_r": 2, "lora_alpha": 17}, True),
    ({"eval_size": 0.5}, False), ({"eval_size": 0.8, "eval_split": "test"}, False),  # no hold-out with a split
    ({"method": "full", "lora_dropout": 0.9, "lora_r": 256, "learning_rate": 1e-5}, False),  # LoRA fields unused
])
def test_warnings_start_where_the_usual_range_ends(values: dict, warned: bool) -> None:
    assert bool(config_warnings(FinetuneConfig.from_dict(values))) is warned


def test_a_value_with_a_warning_is_kept_exactly() -> None:
    config = FinetuneConfig.from_text("learning_rate: 5\nlora_dropout: 0.7")
    assert (config.learning_rate, config.lora_dropout) == (5.0, 0.7)
    assert len(config_warnings(config)) == 2


@pytest.mark.parametrize(("value", "text"), [(3e-3, "0.003"), (1e-6, "1e-6"), (2e-4, "0.0002"), (16, "16"),
                                             (5.0, "5"), (1e20, "1e20"), (1 / 3, "0.3333333333333333")])
def test_numbers_are_written_as_a_person_writes_them(value: float, text: str) -> None:
    assert written(value) == text and float(text) == value


@pytest.mark.parametrize(("method", "given", "settled"), [
    ("lora", "auto", "int4"), ("lora", "original", "original"), ("qlora", "auto", "original"),
    ("full", "auto", "original"), ("lora", "int4", "int4")])
def test_lora_trains_on_the_int4_base_unless_told_otherwise(method: str, given: str, settled: str) -> None:
    from slmnb.training.prepare import settle

    config = settle(FinetuneConfig(model_name_or_path="tiny-llama", method=method, base_weights=given))
    assert config.base_weights == settled


# --- evaluation fields (issue 15) ----------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "message"), [
    ({"metrics": ["acuracy"]}, "Unknown metric 'acuracy' (did you mean accuracy?)"),
    ({"metrics": "bleu, ./nowhere.py"}, "./nowhere.py does not exist"),
    ({"metrics": 3}, "metrics must be a list of names or a comma-separated text, got 3."),
    ({"eval_generate_samples": -1}, "eval_generate_samples must be at least 0, got -1."),
    ({"eval_generate_samples": 2.5}, "eval_generate_samples must be a whole number, got 2.5."),
    ({"eval_max_new_tokens": 0}, "eval_max_new_tokens must be at least 1, got 0."),
    ({"eval_max_new_tokens": 5000}, "eval_max_new_tokens must be at most 4096, got 5000."),
    ({"load_best_model_at_end": "maybe"}, "load_best_model_at_end must be true or false, got 'maybe'."),
    ({"metric_for_best_model": None}, "metric_for_best_model needs a value; its default is 'eval_loss'."),
    ({"metric_for_best_model": "acc"}, "metric_for_best_model 'acc' is not a score of any metric"),
    ({"metric_for_best_model": "rouge", "metrics": ["bleu", "rouge"]},
     "metric_for_best_model 'rouge' is not a score of this run's metrics (did you mean rougeL?): use one of "
     "eval_loss, perplexity, bleu, rouge1, rouge2, rougeL."),
    ({"metric_for_best_model": "accuracy", "eval_generate_samples": 0},
     "metric_for_best_model accuracy comes from generation-eval, which eval_generate_samples 0 turns off"),
    ({"text_template": "{a}", "metrics": ["bleu"]}, "a text_template run has none"),
    ({"text_template": "{a}", "eval_generate_samples": 8}, "a text_template run has none"),
])
def test_each_evaluation_mistake_is_one_sentence(values: dict, message: str) -> None:
    assert message in refused(values)


def test_evaluation_fields_take_their_usual_forms_and_round_trip() -> None:
    config = FinetuneConfig.from_text("metrics: accuracy, f1\neval_generate_samples: '8'\neval_max_new_tokens: 12\n"
                                      "metric_for_best_model: eval_f1\nload_best_model_at_end: yes")
    assert config.metrics == ["accuracy", "f1"] and config.eval_generate_samples == 8
    assert (config.eval_max_new_tokens, config.metric_for_best_model, config.load_best_model_at_end) == \
        (12, "eval_f1", True)
    assert load_config(config.to_yaml()) == config
    # Defaults: metrics chosen from the data, generation-eval's size settled when the run starts, eval_loss.
    default = FinetuneConfig()
    assert (default.metrics, default.eval_generate_samples, default.metric_for_best_model) == (None, None, "eval_loss")
    for key in ("loss", "eval_loss", "perplexity", "eval_perplexity", "rougeL", "eval_accuracy"):
        assert FinetuneConfig(metric_for_best_model=key).metric_for_best_model == key


def test_validating_metrics_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    code = ("import sys; from slmnb.config import FinetuneConfig; FinetuneConfig(metrics=['accuracy', 'rouge'], "
            "metric_for_best_model='rougeL'); print([m for m in ('torch', 'evaluate', 'datasets', 'transformers') "
            "if m in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


@pytest.mark.parametrize(("given", "kept"), [
    ("15-29", "15-29"), (list(range(15, 30)), "15-29"), (3, "3"), ("4-7, 0,2", "0, 2, 4-7"), ([2, 1, 1], "1-2"),
    ("5 - 6", "5-6"), ("", None), ([], None)])
def test_layers_to_transform_is_kept_as_its_shortest_text(given: object, kept: str | None) -> None:
    config = FinetuneConfig.from_dict({"layers_to_transform": given})
    assert config.layers_to_transform == kept
    assert FinetuneConfig.from_text(config.to_yaml()) == config  # what a run folder's config.yaml reads back


@pytest.mark.parametrize("given", ["29-15", "-1", "1-", "a", "1..4", "15 29", "99999", True, 1.5, [1, "2"], [-1],
                                   {"a": 1}])
def test_layers_to_transform_that_are_not_layer_numbers_are_one_sentence(given: object) -> None:
    with pytest.raises(ConfigError, match=r"^layers_to_transform must be layer numbers counted from 0, such as "
                                          r"15-29 or 0, 2, 4-7, got .*\.$"):
        FinetuneConfig.from_dict({"layers_to_transform": given})


def test_layers_to_transform_is_for_lora() -> None:
    with pytest.raises(ConfigError, match="full fine-tuning trains every weight: leave it empty, or use method lora"):
        FinetuneConfig(method="full", layers_to_transform="0-3")
