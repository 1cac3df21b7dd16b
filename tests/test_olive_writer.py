"""A run handed back to Olive: the Olive run config slmnb writes follows Olive's schema, reproduces the run's data,
settings and export, reads back into the same slmnb config, and (with an Olive venv) passes Olive's own checks."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from slmnb.config import FinetuneConfig
from slmnb.data import load_data, select_split, with_default_templates
from slmnb.datafiles import read_rows
from slmnb.errors import ConfigError
from slmnb.models import HUB_IDS
from slmnb.olive.writer import olive_config_and_notes, to_olive_config, write_olive_config

# Olive 0.13's schema, as its documentation and config classes define it (olive/workflows/run/config.py RunConfig
# and the engine keys it gathers, olive/data/component/load_dataset.py huggingface_dataset, TextGenParams in
# olive/data/component/text_generation.py, the passes' _default_config).
RUN_CONFIG_KEYS = {"workflow_id", "input_model", "systems", "data_configs", "evaluators", "engine", "passes",
                   "host", "target", "output_dir", "cache_dir", "log_severity_level", "evaluate_input_model",
                   "search_strategy", "no_artifacts", "packaging_config", "evaluator"}
LOAD_DATASET_KEYS = {"data_name", "subset", "data_dir", "split", "data_files", "col_filters"}
TEXT_GEN_KEYS = {"user_script", "script_dir", "max_samples", "max_seq_len", "pad_to_max_len", "padding_side",
                 "drop_short_sequences", "use_attention_mask", "chat_template", "message_col", "add_special_tokens",
                 "text_formatting_func", "text_template", "text_cols", "strategy", "stride", "joiner",
                 "processing_batch_size", "random_seed", "random_retries"}
LORA_KEYS = {"type", "r", "alpha", "lora_dropout", "target_modules", "layers_to_transform", "modules_to_save",
             "torch_dtype", "device_map", "allow_tf32", "ephemeral_gpu_offload", "train_data_config",
             "eval_data_config", "training_args"}
QLORA_KEYS = LORA_KEYS | {"compute_dtype", "save_quant_config", "double_quant", "quant_type"}
BUILDER_KEYS = {"type", "precision", "metadata_only", "search", "int4_accuracy_level", "int4_block_size",
                "int4_is_symmetric", "int4_op_types_to_quantize", "int4_nodes_to_exclude", "int4_algo_config",
                "use_qdq", "exclude_embeds", "exclude_lm_head", "extra_options"}
EXTRACT_KEYS = {"type", "adapter_type", "make_inputs", "dynamic_lora_r", "optional_inputs", "save_format"}
PASS_KEYS = {"LoRA": LORA_KEYS, "QLoRA": QLORA_KEYS, "MergeAdapterWeights": {"type"}, "ModelBuilder": BUILDER_KEYS,
             "ExtractAdapters": EXTRACT_KEYS}
# Olive's HFTrainingArguments fields besides transformers' TrainingArguments (which it takes as extra_args).
OLIVE_TRAINING_KEYS = {"gradient_checkpointing", "report_to", "output_dir", "deepspeed", "extra_args",
                       "learning_rate", "lr_scheduler_type", "warmup_ratio", "eval_strategy", "overwrite_output_dir",
                       "resume_from_checkpoint"}
TINY = {"model_name_or_path": "tiny-llama", "max_steps": 4, "precision": "fp32"}


def tiny_config(**fields: Any) -> FinetuneConfig:
    return FinetuneConfig(**{**TINY, **fields})


@pytest.fixture
def user_files(tmp_path: Path) -> list[str]:
    """A user's data files, as people have them: JSON Lines and CSV, with their own columns."""
    lines = tmp_path / "notes.jsonl"
    lines.write_text("".join(json.dumps({"q": f"question {i}", "a": f"answer {i % 3}"}) + "\n" for i in range(30)),
                     encoding="utf-8")
    table = tmp_path / "more.csv"
    table.write_text("q,a\n" + "".join(f"more {i},answer {i % 3}\n" for i in range(12)), encoding="utf-8")
    return [str(lines), str(table)]


def configs(user_files: list[str]) -> dict[str, FinetuneConfig]:
    """One config per kind of run the writer must hand to Olive."""
    return {
        "tones": tiny_config(data_name="tones"),
        "changelog": tiny_config(data_name="changelog", eval_split="test[:16]", lora_r=16, lora_alpha=32,
                                 target_modules=["q_proj", "v_proj"], layers_to_transform="1", learning_rate=1e-3,
                                 lr_scheduler_type="cosine", warmup_ratio=0.1, weight_decay=0.01),
        "user files": tiny_config(data_files=user_files, prompt_template="Q: {q}\nA: ", response_template="{a}",
                                  eval_size=0.2, max_samples=20, seed=7),
        "text template": tiny_config(data_files=user_files, text_template="### Q: {q}\n### A: {a}", eval_size=0.0,
                                     num_train_epochs=1.5, max_steps=None, max_seq_len=64),
        "chat": tiny_config(data_name="tones", use_chat_template=True, gradient_accumulation_steps=2,
                            per_device_train_batch_size=4, logging_steps=2),
        "qlora": tiny_config(data_name="tones", method="qlora", base_weights="original",
                             training_args={"max_grad_norm": 0.5, "adam_beta2": 0.99}),
        "best model": tiny_config(data_name="tones", load_best_model_at_end=True, eval_steps=2, save_steps=2,
                                  gradient_checkpointing=True, precision="bf16"),
    }


EXPORTS = [None, {"precision": "int4"}, {"precision": "int8", "adapters": "merged"},
           {"precision": "fp32", "adapters": "switchable"}, {"precision": "int4", "adapters": "merged"}]


def check_schema(values: dict[str, Any], folder: Path) -> None:
    """Keys and types as Olive 0.13 takes them, and data configs that select exactly the rows named."""
    assert set(values) <= RUN_CONFIG_KEYS, set(values) - RUN_CONFIG_KEYS
    json.dumps(values)  # plain JSON: nothing Olive would have to guess the type of
    assert values["input_model"]["type"] == "HfModel" and isinstance(values["input_model"]["model_path"], str)
    systems = values["systems"]
    assert values["host"] in systems and values["target"] in systems
    assert systems[values["host"]]["type"] == "LocalSystem"
    names = [data["name"] for data in values["data_configs"]]
    assert len(set(names)) == len(names) and all(re.fullmatch(r"[A-Za-z0-9_]+", n) for n in names)
    for data in values["data_configs"]:
        assert data["type"] == "HuggingfaceContainer"
        assert set(data["load_dataset_config"]) <= LOAD_DATASET_KEYS
        assert set(data["pre_process_data_config"]) <= TEXT_GEN_KEYS
        pre = data["pre_process_data_config"]
        assert pre.get("chat_template") or isinstance(pre["text_template"], str)
        assert isinstance(pre["max_seq_len"], int) and pre["strategy"] == "line-by-line"
        for name in data["load_dataset_config"]["data_files"]:
            assert not Path(name).is_absolute() and (folder / name).is_file()  # portable: beside the config
    for name, spec in values["passes"].items():
        assert isinstance(name, str) and set(spec) <= PASS_KEYS[spec["type"]], (name, spec)
        if spec["type"] in ("LoRA", "QLoRA"):
            assert isinstance(spec["r"], int) and isinstance(spec["alpha"], int | float)
            assert isinstance(spec.get("target_modules", []), list)
            assert all(isinstance(t, str) for t in spec.get("target_modules", []))
            layers = spec.get("layers_to_transform", [])
            assert isinstance(layers, list) and all(isinstance(n, int) for n in layers)
            assert spec["train_data_config"] in names and spec.get("eval_data_config", names[0]) in names
            check_training_args(spec["training_args"])
        if spec["type"] == "ModelBuilder":
            assert spec["precision"] in ("int4", "int8", "fp32")
            assert spec.get("int4_block_size", 32) in (16, 32, 64, 128, 256)
            assert spec.get("int4_algo_config", "default") in ("default", "rtn", "k_quant_mixed", "k_quant_last")


def check_training_args(args: dict[str, Any]) -> None:
    from transformers import TrainingArguments

    known = {f.name for f in dataclasses.fields(TrainingArguments) if f.init} | OLIVE_TRAINING_KEYS
    assert set(args) <= known, set(args) - known


def rows_of_split(folder: Path, data: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows a data config of the written file selects, read as datasets reads a split slice."""
    load = data["load_dataset_config"]
    rows = [row for name in load["data_files"] for row in read_rows(folder / name)]
    return select_split({"train": rows}, load["split"], "split")


def without_messages(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "messages"} for row in rows]


@pytest.mark.parametrize("export", EXPORTS, ids=lambda e: "no export" if e is None else "-".join(e.values()))
def test_written_config_follows_olives_schema_and_selects_the_runs_rows(tmp_path: Path, user_files: list[str],
                                                                        export: dict | None) -> None:
    for kind, config in configs(user_files).items():
        folder = tmp_path / kind.replace(" ", "-")
        written = write_olive_config(config, folder / "olive-config.json", export)
        values = json.loads(written.path.read_text(encoding="utf-8"))
        check_schema(values, folder)
        data = load_data(with_default_templates(config))
        by_name = {d["name"]: d for d in values["data_configs"]}
        assert without_messages(rows_of_split(folder, by_name["train_data"])) == data.train, kind
        if data.eval:
            assert without_messages(rows_of_split(folder, by_name["eval_data"])) == data.eval, kind
        else:
            assert "eval_data" not in by_name and "eval_data_config" not in values["passes"]["lora"], kind


def test_training_pass_writes_what_the_run_trained_with_not_olives_defaults(user_files: list[str]) -> None:
    values = to_olive_config(configs(user_files)["changelog"])
    lora = values["passes"]["lora"]
    assert (lora["type"], lora["r"], lora["alpha"], lora["lora_dropout"]) == ("LoRA", 16, 32, 0.05)
    assert lora["target_modules"] == ["q_proj", "v_proj"]
    args = lora["training_args"]
    # Olive's defaults are 2e-4, constant, 3% warmup and gradient checkpointing on: each is written as the run had it.
    assert args["learning_rate"] == 1e-3 and args["lr_scheduler_type"] == "cosine" and args["warmup_ratio"] == 0.1
    assert args["gradient_checkpointing"] is False and args["weight_decay"] == 0.01 and args["max_steps"] == 4
    assert args["eval_steps"] == 1 and args["save_steps"] == 1  # slmnb's plan: about ten evaluations a run
    assert lora["torch_dtype"] == "float32" and "bf16" not in args
    assert list(values["passes"]) == ["lora"]  # no export asked for: the adapter only, as olive finetune


def test_default_learning_rate_and_all_linear_are_written_as_values() -> None:
    lora = to_olive_config(tiny_config(data_name="tones", learning_rate=None, target_modules=None))["passes"]["lora"]
    assert lora["training_args"]["learning_rate"] == 3e-3  # slmnb's default, not Olive's 2e-4
    assert lora["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_bf16_is_autocast_over_fp32_weights_on_the_cpu() -> None:
    values, notes = olive_config_and_notes(tiny_config(data_name="tones", precision="bf16"))
    lora = values["passes"]["lora"]
    assert lora["torch_dtype"] == "float32"
    assert lora["training_args"]["bf16"] is True and lora["training_args"]["use_cpu"] is True
    assert any("drop use_cpu" in note for note in notes)


def test_qlora_pass_is_slmnbs_nf4_base_and_passes_training_args_through(user_files: list[str]) -> None:
    qlora = to_olive_config(configs(user_files)["qlora"])["passes"]["qlora"]
    assert qlora["type"] == "QLoRA" and qlora["quant_type"] == "nf4" and qlora["double_quant"] is False
    assert qlora["training_args"]["max_grad_norm"] == 0.5 and qlora["training_args"]["adam_beta2"] == 0.99


def test_exports_become_model_builder_with_merge_or_extract_adapters() -> None:
    config = tiny_config(data_name="tones")
    switchable = to_olive_config(config, {"precision": "int4"})["passes"]
    assert [p["type"] for p in switchable.values()] == ["LoRA", "ModelBuilder", "ExtractAdapters"]
    builder = switchable["builder"]
    assert (builder["precision"], builder["int4_algo_config"], builder["int4_block_size"]) == ("int4", "k_quant_last",
                                                                                                32)
    # tiny-llama's 2 layers x 7 modules x A and B: the LoRA MatMuls stay float, as in slmnb's switchable export.
    assert len(builder["int4_nodes_to_exclude"]) == 28
    assert "/model/layers.1/mlp/down_proj/lora_B/MatMul" in builder["int4_nodes_to_exclude"]
    assert switchable["extract"]["save_format"] == "onnx_adapter" and switchable["extract"]["optional_inputs"]
    merged = to_olive_config(config, {"precision": "int8", "adapters": "merged"})["passes"]
    assert [p["type"] for p in merged.values()] == ["LoRA", "MergeAdapterWeights", "ModelBuilder"]
    assert merged["builder"] == {"type": "ModelBuilder", "precision": "int8"}
    fp32 = to_olive_config(config, {"precision": "fp32"})["passes"]["builder"]
    assert fp32 == {"type": "ModelBuilder", "precision": "fp32"}


def test_templates_become_what_olives_pre_processing_expresses(user_files: list[str]) -> None:
    every = configs(user_files)
    values, notes = olive_config_and_notes(every["user files"])
    assert values["data_configs"][0]["pre_process_data_config"]["text_template"] == "Q: {q}\nA: {a}"
    assert any("loss on the whole text" in note for note in notes)
    values, _ = olive_config_and_notes(every["text template"])
    assert values["data_configs"][0]["pre_process_data_config"]["text_template"] == "### Q: {q}\n### A: {a}"
    values, notes = olive_config_and_notes(every["chat"])
    pre = values["data_configs"][0]["pre_process_data_config"]
    assert pre["chat_template"] is True and pre["message_col"] == "messages" and "text_template" not in pre
    assert any("messages column" in note for note in notes)


def test_chat_rows_carry_their_rendered_messages(tmp_path: Path) -> None:
    written = write_olive_config(tiny_config(data_name="tones", use_chat_template=True), tmp_path / "c.json")
    row = json.loads(written.data_path.read_text(encoding="utf-8"))[0]
    assert row["messages"][0] == {"role": "user", "content": "What is the tone of this phrase: Sad, Joy, Fear or "
                                                            f"Surprise?\n{row['phrase']}"}
    assert row["messages"][1] == {"role": "assistant", "content": row["tone"]}


def test_embedded_model_is_its_hub_id_and_differences_are_noted() -> None:
    config = FinetuneConfig(data_name="tones", max_steps=3, early_stopping_patience=2, loss="my_loss.py:loss")
    values, notes = olive_config_and_notes(config)
    assert values["input_model"] == {"type": "HfModel", "model_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    assert HUB_IDS["smollm2-135m-instruct"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    text = " ".join(notes)
    for said in ("Q4_1", "early_stopping_patience 2", "loss my_loss.py:loss", "base_weights int4",
                 "generation-eval"):
        assert said in text, said


def test_full_fine_tune_starts_from_the_trained_model(tmp_path: Path) -> None:
    config = tiny_config(data_name="tones", method="full")
    with pytest.raises(ConfigError, match="adapter passes only"):
        to_olive_config(config, {"precision": "int4"})
    values, notes = olive_config_and_notes(config, {"precision": "int4"}, trained_model=tmp_path)
    assert values["input_model"]["model_path"] == str(tmp_path.resolve())
    assert [p["type"] for p in values["passes"].values()] == ["ModelBuilder"] and values["data_configs"] == []
    assert any("no full fine-tuning pass" in note for note in notes)
    with pytest.raises(ConfigError, match="no adapter to switch"):
        to_olive_config(config, {"adapters": "switchable"}, trained_model=tmp_path)


@pytest.mark.parametrize(("export", "message"), [
    ({"precision": "int3"}, "precision 'int3' is not one slmnb exports"),
    ({"adapter": "merged"}, "no setting 'adapter'"),
    ({"adapters": "both"}, "adapters 'both'"),
    ("int4", "export is a mapping"),
])
def test_bad_export_is_one_sentence(export: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        to_olive_config(tiny_config(data_name="tones"), export)


@pytest.mark.parametrize(("path", "message"), [("config.txt", "json or .yaml"), ("", "not a file path"),
                                               ("a\0b.json", "not a file path")])
def test_bad_output_file_is_one_sentence(tmp_path: Path, path: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        write_olive_config(tiny_config(data_name="tones"), path and tmp_path / path)


def test_yaml_output_and_a_folder_as_output(tmp_path: Path) -> None:
    written = write_olive_config(tiny_config(data_name="tones"), tmp_path / "olive.yaml", {"precision": "int8"})
    values = yaml.safe_load(written.path.read_text(encoding="utf-8"))
    assert values["passes"]["builder"]["precision"] == "int8" and written.data_path.name == "olive-data.json"
    assert write_olive_config(tiny_config(data_name="tones"), tmp_path).path == tmp_path / "olive-config.json"


def test_bad_data_is_the_configs_own_sentence(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        to_olive_config(tiny_config(data_files=[str(tmp_path / "missing.json")], text_template="{x}"))


# --- round trip through slmnb's reader of Olive configs ------------------------------------------------

TRAINING_FIELDS = ("method", "lora_r", "lora_alpha", "lora_dropout", "learning_rate", "lr_scheduler_type",
                   "warmup_ratio", "weight_decay", "seed", "per_device_train_batch_size", "gradient_accumulation_steps",
                   "num_train_epochs", "max_steps", "logging_steps", "gradient_checkpointing", "max_seq_len",
                   "load_best_model_at_end", "training_args", "layers_to_transform")


@pytest.mark.parametrize("export", EXPORTS, ids=lambda e: "no export" if e is None else "-".join(e.values()))
def test_olive_config_reads_back_into_the_same_training(workdir: Path, user_files: list[str],
                                                        export: dict | None) -> None:
    from slmnb.olive.runconfig import read_olive_config
    from slmnb.training.prepare import settle

    for kind, config in configs(user_files).items():
        if kind == "chat":
            continue  # Olive's chat_template reads a messages column; slmnb's prompt/response templates are gone
        settled = settle(config).replace(learning_rate=config.peak_learning_rate)  # as a run writes them
        written = write_olive_config(config, workdir / "olive-config.json", export)
        job = read_olive_config(json.loads(written.path.read_text(encoding="utf-8")))
        for name in TRAINING_FIELDS:
            assert getattr(job.config, name) == getattr(settled, name), (kind, name)
        assert set(job.config.target_modules or []) == set(settled.target_modules if isinstance(
            settled.target_modules, list) else to_olive_config(config)["passes"][config.method]["target_modules"])
        assert job.config.precision == config.precision
        if config.text_template:
            assert job.config.text_template == config.text_template
        expected = None if export is None else {"adapters": "switchable", **export}
        assert job.export == expected, kind
        # The same rows, train and eval, as the run had. Without an eval_data_config the reader holds out
        # eval_size of the rows as any slmnb run does: the same rows, some of them evaluated on.
        back, original = load_data(job.config), load_data(with_default_templates(config))
        if original.eval:
            assert (back.train, back.eval) == (original.train, original.eval), kind
        else:
            key = json.dumps
            assert sorted(map(key, back.train + back.eval)) == sorted(map(key, original.train)), kind


# --- the commands ---------------------------------------------------------------------------------------


def test_run_magic_and_cli_write_the_config_and_say_how_to_run_it(workdir: Path, ip, capsys, tiny: dict) -> None:
    from IPython.core.error import UsageError

    import slmnb
    from slmnb.cli import main

    run = slmnb.finetune({**tiny, "max_steps": 2, "name": "tones-olive"})
    run.wait()
    written = run.to_olive_config()
    assert written.path == run.dir / "olive-config.json" and written.data_path.is_file()
    values = json.loads(written.path.read_text(encoding="utf-8"))
    assert values["passes"]["lora"]["training_args"]["learning_rate"] == tiny["learning_rate"]
    assert "ExtractAdapters" in str(values["passes"])

    capsys.readouterr()
    ip.run_line_magic("finetune", "olive-config tones-olive -o olive/job.yaml --precision fp32 --adapters merged")
    out = capsys.readouterr().out
    assert "olive/job.yaml" in out and "olive run --config job.yaml" in out
    assert yaml.safe_load((workdir / "olive" / "job.yaml").read_text())["passes"]["builder"]["precision"] == "fp32"
    with pytest.raises(UsageError, match="no option --precison"):
        ip.run_line_magic("finetune", "olive-config tones-olive --precison int4")
    with pytest.raises(UsageError, match="No run called 'ghost'"):
        ip.run_line_magic("finetune", "olive-config ghost")

    assert main(["olive-config", "tones-olive", "--no_export", "-o", "cli.json"]) == 0
    out = capsys.readouterr().out
    assert f"cd {workdir}" in out and "olive run --config cli.json" in out
    assert [p["type"] for p in json.loads((workdir / "cli.json").read_text())["passes"].values()] == ["LoRA"]
    for args, said in ((["olive-config", "ghost"], "No run called 'ghost'"),
                       (["olive-config", "../up"], "neither a run folder"),
                       (["olive-config", "tones-olive", "--precision", "int2"], "invalid choice: 'int2'"),
                       (["olive-config", "tones-olive", "-o", "x.txt"], ".json or .yaml")):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err and err.count("\n") == 1, err


# --- Olive's own checks, where an Olive venv is given ---------------------------------------------------

OLIVE_PYTHON = os.environ.get("SLMNB_OLIVE_PYTHON")


@pytest.mark.skipif(not OLIVE_PYTHON, reason="set SLMNB_OLIVE_PYTHON to a Python with olive-ai (make test-olive)")
def test_olive_itself_accepts_every_written_config(tmp_path: Path, user_files: list[str]) -> None:
    written = []
    for kind, config in configs(user_files).items():
        for export in EXPORTS:
            name = f"{kind.replace(' ', '-')}-{'none' if export is None else '-'.join(export.values())}.json"
            written.append(write_olive_config(config, tmp_path / name, export).path.name)
    full = tiny_config(data_name="tones", method="full")
    written.append(write_olive_config(full, tmp_path / "full.json", {"precision": "int4"},
                                      trained_model=tmp_path).path.name)
    # And a config Olive would run without a setting (it warns and drops a key it does not know): that fails.
    mistyped = json.loads((tmp_path / written[0]).read_text(encoding="utf-8"))
    mistyped["passes"]["lora"]["training_args"]["max_grad_nrom"] = 1.0
    (tmp_path / "mistyped.json").write_text(json.dumps(mistyped), encoding="utf-8")
    checker = Path(__file__).with_name("olive_validate.py")
    result = subprocess.run([str(OLIVE_PYTHON), str(checker), *written, "mistyped.json"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": ""})
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("FAIL mistyped.json") and "max_grad_nrom" in lines[-1]
    failures = [line for line in lines[:-1] if not line.startswith("ok ")]
    assert not failures and len(lines) == len(written) + 1, (failures, result.stderr[-2000:])


def test_writing_a_config_never_imports_olive(tmp_path: Path) -> None:
    code = ("import sys, slmnb.olive.writer, slmnb.cli\n"
            "assert 'olive' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
