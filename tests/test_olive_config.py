"""Olive run configs, as they are: every period's shape reads into one FinetuneConfig and its export, what cannot
apply is one sentence each, mistakes are one ConfigError, and `slmnb run` trains and exports one on tiny-llama.

The configs below are written for these tests after the shapes in Olive's documentation and examples of each period
(2023 PyTorchModel + params_config, 2024 {type, params} components under `config`, 2025 flat HfModel configs).
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest

from slmnb.errors import ConfigError
from slmnb.olive.runconfig import describe, is_olive_config, olive_values, read_olive_config

TONE_TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rows = [{"phrase": f"phrase number {i}", "tone": ["joy", "anger"][i % 2], "lang": ["en", "fr"][i % 3 == 0]}
            for i in range(20)]
    path = tmp_path / "tones.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def current(data: Path) -> dict[str, Any]:
    """2025: HfModel, flat data config components, flat passes, engine keys at the top level."""
    return {
        "input_model": {"type": "HfModel", "model_path": "tiny-llama"},
        "systems": {"local_system": {"type": "LocalSystem", "accelerators": [
            {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [{
            "name": "tones", "type": "HuggingfaceContainer",
            "load_dataset_config": {"data_name": "json", "data_files": str(data), "split": "train[:80%]"},
            "pre_process_data_config": {"text_template": TONE_TEMPLATE, "max_seq_len": 64, "max_samples": 12},
        }],
        "passes": {
            "lora": {"type": "LoRA", "r": 4, "alpha": 8, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"],
                     "layers_to_transform": [1], "train_data_config": "tones", "eval_dataset_size": 0.25,
                     "training_args": {"max_steps": 2, "learning_rate": 0.001, "per_device_train_batch_size": 2,
                                       "max_grad_norm": 0.5, "output_dir": "models/checkpoints"}},
            "merge": {"type": "MergeAdapterWeights"},
            "builder": {"type": "ModelBuilder", "precision": "int4"},
        },
        "host": "local_system", "target": "local_system", "output_dir": "models/tones",
    }


def middle(data: Path) -> dict[str, Any]:
    """2024: {type, params} components, pass settings under `config`, engine settings under `engine`."""
    return {
        "input_model": {"type": "HfModel", "config": {"model_path": "tiny-llama"}},
        "data_configs": [{
            "name": "train", "type": "HuggingfaceContainer",
            "load_dataset_config": {"type": "huggingface_dataset", "params": {
                "data_name": "json", "data_files": [str(data)], "split": "train", "col_filters": {"lang": "en"}}},
            "pre_process_data_config": {"type": "text_generation_huggingface_pre_process", "params": {
                "text_cols": ["phrase", "tone"], "source_max_len": 96, "strategy": "line-by-line"}},
        }],
        "passes": {
            "qlora": {"type": "QLoRA", "config": {"lora_r": 16, "lora_alpha": 32, "train_data_config": "train",
                                                  "torch_dtype": "bfloat16",
                                                  "training_args": {"num_train_epochs": 1, "seed": 3,
                                                                    "adam_beta2": 0.99, "fp16": True}}},
            "extract": {"type": "ExtractAdapters", "config": {"make_inputs": True}},
            "builder": {"type": "ModelBuilder", "config": {"precision": "int8"}},
        },
        "engine": {"target": {"type": "LocalSystem", "config": {"accelerators": ["gpu"]}},
                   "execution_providers": ["DmlExecutionProvider"], "cache_dir": "cache"},
    }


def oldest(data: Path) -> dict[str, Any]:
    """2023: PyTorchModel with hf_config, data_configs by name with params_config.component_kwargs."""
    return {
        "input_model": {"type": "PyTorchModel", "config": {
            "model_script": "user_script.py",
            "hf_config": {"model_name": "tiny-llama", "task": "text-generation",
                          "from_pretrained_args": {"trust_remote_code": True}}}},
        "data_configs": {"codes": {
            "name": "codes", "type": "HuggingfaceContainer", "user_script": "user_script.py",
            "components": {"load_dataset": {"type": "load_tiny_code_dataset"}},
            "params_config": {"data_name": "json", "data_files": str(data), "split": "train",
                              "component_kwargs": {"pre_process_data": {
                                  "dataset_type": "corpus", "corpus_strategy": "join",
                                  "text_template": "### Question: {phrase} \n### Answer: {tone}",
                                  "source_max_len": 128}}}}},
        "passes": {
            "lora": {"type": "LoRA", "config": {
                "lora_r": 8, "lora_alpha": 16, "train_data_config": "codes", "eval_dataset_size": 5,
                "training_args": {"per_device_train_batch_size": 4, "max_steps": 10, "logging_steps": 5,
                                  "evaluation_strategy": "steps", "eval_steps": 5, "group_by_length": True,
                                  "load_best_model_at_end": True}}},
            "conversion": {"type": "OnnxConversion", "config": {"target_opset": 17}},
            "bnb": {"type": "OnnxBnb4Quantization", "config": {}},
        },
        "engine": {"search_strategy": False, "evaluate_input_model": False,
                   "target": {"type": "LocalSystem", "config": {"accelerators": ["gpu"]}},
                   "execution_providers": ["CUDAExecutionProvider"], "output_dir": "models/lora"},
    }


def ignored_keys(job: Any) -> dict[str, str]:
    return dict(job.ignored)


# --- every period's shape --------------------------------------------------------------------------------


def test_a_current_config_reads_into_one_config_and_a_merged_int4_export(data) -> None:
    job = read_olive_config(current(data))
    c = job.config
    assert (c.model_name_or_path, c.method, c.lora_r, c.lora_alpha, c.lora_dropout) == ("tiny-llama", "lora", 4, 8,
                                                                                          0.1)
    assert (c.target_modules, c.layers_to_transform) == (["q_proj", "v_proj"], "1")
    assert (c.data_files, c.train_split, c.text_template) == ([str(data)], "train[:80%]", TONE_TEMPLATE)
    assert (c.max_seq_len, c.max_samples, c.eval_size) == (64, 12, 0.25)
    assert (c.max_steps, c.learning_rate, c.per_device_train_batch_size) == (2, 0.001, 2)
    assert c.training_args == {"max_grad_norm": 0.5}
    assert job.export == {"precision": "int4", "adapters": "merged"}
    assert job.search is None
    ignored = ignored_keys(job)
    assert "passes.lora.training_args.output_dir" in ignored
    assert ignored["host"] == ignored["target"] == "slmnb runs locally on this machine's CPU"
    assert {"output_dir", "systems"} <= set(ignored)


def test_a_2024_config_with_params_and_config_wrappers_reads_the_same_way(data) -> None:
    job = read_olive_config(middle(data))
    c = job.config
    assert (c.method, c.lora_r, c.lora_alpha, c.precision, c.num_train_epochs, c.seed) == ("qlora", 16, 32, "bf16",
                                                                                          1.0, 3)
    assert c.text_template == "{phrase} {tone}"  # Olive joins text_cols with a space
    assert c.max_seq_len == 96 and c.training_args == {"adam_beta2": 0.99}
    assert job.export == {"precision": "int8", "adapters": "switchable"}
    ignored = ignored_keys(job)
    assert "filter the file first" in ignored["data_configs.train.col_filters"]
    assert "fp16 is a GPU precision" in ignored["passes.qlora.training_args.fp16"]
    assert "DirectML" in ignored["engine.execution_providers"]
    assert ignored["engine.target"] == "slmnb runs locally on this machine's CPU"
    assert "packed blocks" in ignored["data_configs.train.strategy"]


def test_a_2023_config_with_pytorch_model_and_params_config_reads_too(data) -> None:
    job = read_olive_config(oldest(data))
    c = job.config
    assert (c.model_name_or_path, c.lora_r, c.max_seq_len, c.max_steps, c.eval_steps) == ("tiny-llama", 8, 128, 10, 5)
    assert c.text_template.startswith("### Question: {phrase}")
    assert c.eval_size == pytest.approx(5 / 20)  # a count of rows, as the share of the 20 training rows
    assert c.load_best_model_at_end is True and c.training_args == {"group_by_length": True}
    assert job.export is None  # OnnxConversion + quantization: slmnb's export is asked for by its own passes
    ignored = ignored_keys(job)
    assert "never runs a model's own code" in ignored["input_model.from_pretrained_args.trust_remote_code"]
    assert "user_script" in ignored["data_configs.codes.components"]
    assert "model builder" in ignored["passes.conversion"] and "passes.bnb" in ignored
    assert ignored["passes.lora.training_args.evaluation_strategy"] == "set eval_steps"
    assert "engine.execution_providers" in ignored and "engine.output_dir" in ignored


def test_a_config_wrapper_and_pass_flows_choose_what_runs(data) -> None:
    values = current(data)
    values["passes"]["extract"] = {"type": "ExtractAdapters"}
    values["pass_flows"] = [["lora", "extract", "builder"], ["lora", "merge"]]
    job = read_olive_config({"config": values})
    assert job.export == {"precision": "int4", "adapters": "switchable"}
    ignored = ignored_keys(job)
    assert ignored["pass_flows[1]"] == "slmnb runs one flow: the first"
    assert ignored["passes.merge"] == "not in the first pass flow, so it does not run"


def test_an_eval_data_config_on_the_same_source_is_the_eval_split(data) -> None:
    values = current(data)
    evaluation = copy.deepcopy(values["data_configs"][0])
    evaluation["name"], evaluation["load_dataset_config"]["split"] = "eval", "train[80%:]"
    values["data_configs"].append(evaluation)
    values["passes"]["lora"]["eval_data_config"] = "eval"
    job = read_olive_config(values)
    assert job.config.eval_split == "train[80%:]"
    assert "eval_data_config gives the evaluation rows" in ignored_keys(job)["passes.lora.eval_dataset_size"]


def test_evaluators_become_metrics_and_latency_points_at_compare(data) -> None:
    values = current(data)
    values["evaluators"] = {"common": {"metrics": [
        {"name": "accuracy", "type": "accuracy", "sub_types": [{"name": "accuracy_score", "priority": 1},
                                                                {"name": "f1_score"}, {"name": "auroc"}]},
        {"name": "ppl", "type": "accuracy", "sub_types": [{"name": "perplexity"}]},
        {"name": "latency", "type": "latency", "sub_types": [{"name": "avg"}]}]}}
    job = read_olive_config(values)
    # Olive scores the text after the prompt: the template is split at its answer so the metrics can score it.
    assert job.config.metrics == ["accuracy", "f1"]
    assert (job.config.prompt_template, job.config.response_template) == ("### Text: {phrase}\n### The tone is:\n",
                                                                          "{tone}")
    ignored = ignored_keys(job)
    assert "tokens/s" in ignored["evaluators.common.metrics[2]"]
    assert "not auroc" in ignored["evaluators.common.metrics[0].sub_types"]
    assert "split at its last placeholder {tone}" in ignored["text_template"]


def test_searchable_values_and_the_search_strategy_become_a_search(data) -> None:
    values = current(data)
    values["passes"]["lora"]["r"] = {"olive_parameter_type": "SearchParameter", "type": "Categorical",
                                     "support": [4, 8]}
    values["passes"]["lora"]["training_args"]["learning_rate"] = {
        "olive_parameter_type": "SearchParameter", "type": "Categorical", "support": [0.001, 0.003]}
    values["search_strategy"] = {"execution_order": "joint", "sampler": "tpe", "max_samples": 3, "seed": 0}
    job = read_olive_config(values)
    assert job.config.lora_r == 4 and job.config.learning_rate == 0.001  # the first candidates, as the config holds
    assert job.search == {"search_strategy": {"type": "tpe", "num_trials": 3, "seed": 0},
                          "search_space": {"lora_r": {"type": "choice", "values": [4, 8]},
                                           "learning_rate": {"type": "choice", "values": [0.001, 0.003]}},
                          "objective": "eval_loss"}
    from slmnb.tuning.spec import parse_search

    _, spec = parse_search(job.search_values())
    assert spec is not None and spec.num_trials == 3 and spec.strategy == "tpe"


def test_an_olive_search_trains_its_trials(data, workdir) -> None:
    from slmnb.tuning.api import search

    values = current(data)
    values["passes"]["lora"]["r"] = {"olive_parameter_type": "SearchParameter", "type": "Categorical",
                                     "support": [4, 8]}
    values["search_strategy"] = {"execution_order": "joint", "sampler": "random", "max_samples": 2, "seed": 0}
    found = search(read_olive_config(values).search_values(), name="olive-search")
    found.wait()
    assert found.status == "finished" and [t.state for t in found.trials] == ["complete", "complete"]
    assert {t.params["lora_r"] for t in found.trials} <= {4, 8}
    assert all(t.max_steps == 2 for t in found.trials)  # the config's training_args apply to every trial


# --- one sentence for each mistake --------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    (lambda v: v.update(pases=v.pop("passes")), "Olive config key 'pases' is not one Olive knows: did you mean "
                                                "passes?"),
    (lambda v: v["passes"]["lora"].update(lora_dropuot=0.1), r"passes.lora.lora_dropuot is not a LoRA setting: did "
                                                             "you mean lora_dropout"),
    (lambda v: v["passes"]["lora"].update(type="LoRAA"), "did you mean LoRA"),
    (lambda v: v["passes"].pop("lora"), "has no LoRA or QLoRA pass"),
    (lambda v: v["passes"]["lora"].update(train_data_config="nosuch"), "names the data config 'nosuch', which "
                                                                        "data_configs has not: it has tones"),
    (lambda v: v.update(passes=["lora"]), "passes must be a mapping, not a list"),
    (lambda v: v["data_configs"][0].update(load_dataset_config=5), "load_dataset_config must be a mapping"),
    (lambda v: v.update(input_model={"type": "HfModel", "model_path": "microsoft/Phi-3-mini-4k-instruct"}),
     "point model_path at a local model folder, or use smollm2-135m-instruct"),
    (lambda v: v.update(input_model={"type": "ONNXModel", "model_path": "model.onnx"}), "is not a Hugging Face"),
    (lambda v: v["data_configs"][0]["load_dataset_config"].update(data_name="nampdn-ai/tiny-codes",
                                                                  data_files=None),
     "is a Hugging Face Hub dataset, which slmnb does not download"),
    (lambda v: v["passes"]["lora"].update(r=0), "From the Olive config: lora_r"),
    (lambda v: v["data_configs"][0].update(load_datset_config={}), "data_configs.tones has the key "
                                                                   "'load_datset_config', which Olive does not know: "
                                                                   "did you mean load_dataset_config?"),
    (lambda v: v.update(engine={"serch_strategy": False}), "engine key 'serch_strategy' is not one Olive knows: did "
                                                           "you mean search_strategy?"),
])
def test_mistakes_are_one_sentence_naming_the_key(data, change, message) -> None:
    values = current(data)
    change(values)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_olive_config(values)


def test_a_hub_id_is_fine_when_the_line_names_the_model(data) -> None:
    values = current(data)
    values["input_model"]["model_path"] = "microsoft/Phi-3-mini-4k-instruct"
    job = read_olive_config(values, overrides={"model_name_or_path": "tiny-llama", "max_steps": "3"})
    assert job.config.model_name_or_path == "tiny-llama" and job.config.max_steps == 3
    assert "--model_name_or_path tiny-llama replaces it" in ignored_keys(job)["input_model"]


def test_a_hub_dataset_reads_when_the_line_gives_local_data(data) -> None:
    values = current(data)
    values["data_configs"][0]["load_dataset_config"].update(data_name="nampdn-ai/tiny-codes", data_files=None)
    job = read_olive_config(values, overrides={"data_files": str(data)})
    assert job.config.data_files == [str(data)] and job.config.data_name is None
    assert "replaces nampdn-ai/tiny-codes" in ignored_keys(job)["data_configs"]
    with pytest.raises(ConfigError, match="give local files with --data_files on the line"):
        read_olive_config(values)


def test_settings_of_older_passes_are_named_not_refused(data) -> None:
    values = current(data)
    values["passes"]["lora"].update(type="HFLoRA", user_script="script.py", training_output_dir="out", old_flag=1)
    job = read_olive_config(values)
    assert job.config.method == "lora"
    ignored = ignored_keys(job)
    assert "never runs a config's Python scripts" in ignored["passes.lora.user_script"]
    assert "runs/<name>" in ignored["passes.lora.training_output_dir"]
    assert "Olive drops those with a warning" in ignored["passes.lora.old_flag"]


def test_the_embedded_models_hub_id_offline_trains_its_embedded_copy(data, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    values = current(data)
    values["input_model"]["model_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"  # as Olive's SmolLM2 tutorials
    job = read_olive_config(values)
    assert job.config.model_name_or_path == "smollm2-135m-instruct"
    assert "slmnb trains its embedded copy" in ignored_keys(job)["input_model.model_path"]


def _mutate(value: Any, rng: random.Random) -> Any:
    """One random change somewhere inside: a key deleted, a value of the wrong type, or junk."""
    junk = [None, 5, -1, 0.5, "", "x", [], {}, [1, "a"], {"a": 1}, True, "SEARCHABLE_VALUES", 1e300,
            {"olive_parameter_type": "SearchParameter", "type": "Categorical", "support": []}]
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(list(value))
        roll = rng.random()
        if roll < 0.3:
            return {k: v for k, v in value.items() if k != key}
        if roll < 0.6:
            return {**value, key: rng.choice(junk)}
        return {**value, key: _mutate(value[key], rng)}
    if isinstance(value, list) and value and rng.random() < 0.7:
        i = rng.randrange(len(value))
        return [*value[:i], _mutate(value[i], rng), *value[i + 1:]]
    return rng.choice(junk)


def test_a_probe_of_mutated_configs_reads_or_says_one_sentence(data) -> None:
    rng = random.Random(17)
    read = refused = 0
    for _ in range(400):
        values = rng.choice([current, middle, oldest])(data)
        for _ in range(rng.randint(1, 3)):
            values = _mutate(values, rng)
        try:
            job = read_olive_config(values)
            describe(job)
            read += 1
        except ConfigError as exc:
            text = str(exc)
            assert text.endswith((".", "?", ")")) and "\n" not in text and "Traceback" not in text, text
            refused += 1
    assert read > 40 and refused > 40  # the probe exercised both sides


# --- recognising and showing -------------------------------------------------------------------------------


def test_olive_configs_are_recognised_by_their_keys(data, tmp_path) -> None:
    assert is_olive_config(current(data)) and is_olive_config({"config": oldest(data)})
    assert not is_olive_config({"model_name_or_path": "tiny-llama", "max_steps": 3}) and not is_olive_config([1])
    path = tmp_path / "olive.yaml"
    import yaml

    path.write_text(yaml.safe_dump(current(data)), encoding="utf-8")
    assert olive_values(path) == current(data) and olive_values(str(path)) == current(data)
    assert olive_values(json.dumps(current(data))) == current(data)
    assert olive_values("max_steps: 5") is None and olive_values({"max_steps": 5}) is None


def test_describe_shows_the_config_the_export_and_each_ignored_key(data) -> None:
    text = describe(read_olive_config(current(data)))
    assert "slmnb config (from the Olive config):\n  model_name_or_path: tiny-llama" in text
    assert "export after training: precision int4, adapters merged" in text
    assert "ignored:\n" in text and "  host: slmnb runs locally on this machine's CPU." in text
    none = describe(read_olive_config(oldest(data)))
    assert "export after training: none" in none


def test_slmnb_run_dry_run_prints_what_the_config_became(data, tmp_path, capsys) -> None:
    from slmnb.cli import main

    path = tmp_path / "olive.json"
    path.write_text(json.dumps(current(data)), encoding="utf-8")
    assert main(["run", str(path), "--dry-run"]) == 0
    assert "export after training: precision int4, adapters merged" in capsys.readouterr().out
    plain = tmp_path / "plain.yaml"
    plain.write_text("max_steps: 3\n", encoding="utf-8")
    assert main(["run", str(plain)]) == 2
    assert "is not an Olive run config" in capsys.readouterr().err
    # Olive's own spelling, with the command line's fields over the config's: a hub model and hub data made local.
    values = current(data)
    values["input_model"]["model_path"] = "microsoft/Phi-3-mini-4k-instruct"
    values["data_configs"][0]["load_dataset_config"].update(data_name="nampdn-ai/tiny-codes", data_files=None)
    path.write_text(json.dumps(values), encoding="utf-8")
    assert main(["olive", "run", "--config", str(path), "-m", "tiny-llama", "--data_files", str(data),
                 "--max_steps", "5", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "model_name_or_path: tiny-llama" in out and "max_steps: 5" in out and str(data) in out
    assert "input_model: --model_name_or_path tiny-llama replaces it" in out


def test_the_magic_dry_run_shows_the_olive_config(data, ip, workdir) -> None:
    shown = ip.run_cell_magic("finetune", "--dry-run --max_steps 1", json.dumps(current(data)))
    assert "max_steps: 1" in repr(shown) and "adapters merged" in repr(shown)
    assert "<pre>" in shown._repr_html_()


# --- training and exporting -------------------------------------------------------------------------------


def test_slmnb_run_trains_and_exports_an_olive_config(data, workdir, capsys) -> None:
    from slmnb.cli import main

    values = current(data)
    values["passes"].pop("merge")  # ModelBuilder int4 of the switchable adapter: the quickest export
    (workdir / "olive.json").write_text(json.dumps(values), encoding="utf-8")
    assert main(["run", "olive.json"]) == 0
    out, err = capsys.readouterr()
    assert "note: host is not applied: slmnb runs locally" in err
    assert "exported to onnx/" in out and "adapter" in out
    assert list((workdir / "onnx").glob("tiny-llama-int4-*/adapters/*.onnx_adapter"))


def test_finetune_takes_an_olive_config_and_leaves_the_export_to_slmnb_export(data, workdir) -> None:
    import slmnb
    from slmnb.training import events as ev

    run = slmnb.finetune(current(data), max_steps=1, name="olive-api").wait()
    assert run.config.max_steps == 1 and run.config.lora_r == 4
    started = next(e for e in run.history if isinstance(e, ev.Started))
    assert any("slmnb.export(run, precision='int4', adapters='merged')" in note for note in started.notes)


def test_the_magic_runs_an_olive_config_then_its_export(data, ip, workdir, capsys) -> None:
    values = current(data)
    values["passes"]["builder"]["precision"] = "fp32"
    ip.run_cell_magic("finetune", "--wait --max_steps 1 -o olive_run", json.dumps(values))
    run = ip.user_ns["olive_run"]
    assert run.config.max_steps == 1 and run.status == "finished"
    assert "Olive config: host is not applied: slmnb runs locally" in capsys.readouterr().out
    merged = list((workdir / "onnx").glob("*fp32*/slmnb-export.json"))
    assert merged and json.loads(merged[0].read_text())["kind"] == "merged"


def test_an_export_after_a_run_that_did_not_finish_says_so(data, workdir) -> None:
    from slmnb.errors import ExportError
    from slmnb.notebook.olive_launch import ExportAfterRun

    class Stopped:
        name, alive, status = "r1", False, "stopped"

    job = ExportAfterRun(Stopped(), {"precision": "int4", "adapters": "merged"})
    with pytest.raises(ExportError, match="Run r1 ended stopped before finishing, so it was not exported: export it "
                                          "with %opt export r1"):
        job.wait()
