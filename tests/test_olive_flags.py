"""Olive's command lines: `olive finetune` flags on the %%finetune line and `slmnb finetune`, pasted olive lines,
`olive auto-opt` flags on export, and convert-adapters from any peft adapter."""

from __future__ import annotations

import random
import re
import shlex
from pathlib import Path

import pytest

from slmnb.cli import build_parser, main, olive_argv
from slmnb.config import FinetuneConfig, load_config
from slmnb.errors import ConfigError, SlmnbError
from slmnb.notebook.parsing import parse_cell, parse_cell_line
from slmnb.olive.flags import FINETUNE_REFUSED, export_options, olive_tokens
from slmnb.options import FIELD_NAMES
from slmnb.training.arguments import training_argument_names

ROOT = Path(__file__).resolve().parent.parent


def refused(line: str) -> str:
    with pytest.raises(SlmnbError) as info:
        parse_cell_line(line)
    text = str(info.value)
    assert "\n" not in text and "Traceback" not in text and text.endswith((".", "?")), text
    return text


def config_of(line: str) -> FinetuneConfig:
    return load_config(None, **parse_cell_line(line).overrides)


@pytest.mark.parametrize(("line", "field", "value"), [
    ("-m tiny-llama", "model_name_or_path", "tiny-llama"),
    ("--model_name_or_path tiny-llama", "model_name_or_path", "tiny-llama"),
    ("--method qlora", "method", "qlora"),
    ("-d tones", "data_name", "tones"),
    ("--data_name tones", "data_name", "tones"),
    ("--data_files a.jsonl,b.jsonl", "data_files", ["a.jsonl", "b.jsonl"]),
    ("--train_split train[:80%]", "train_split", "train[:80%]"),
    ("--eval_split test", "eval_split", "test"),
    (r"--text_template '### Text: {phrase}\n### The tone is:\n{tone}'", "text_template",
     "### Text: {phrase}\n### The tone is:\n{tone}"),
    ("--text_field text", "text_template", "{text}"),
    ("--use_chat_template --prompt_template {p} --response_template {r}", "use_chat_template", True),
    ("--max_seq_len 1024", "max_seq_len", 1024),
    ("--max_samples 256", "max_samples", 256),
    ("--batch_size 4", "per_device_train_batch_size", 4),
    ("--lora_r 64", "lora_r", 64),
    ("--lora_alpha 32", "lora_alpha", 32),
    ("--target_modules q_proj,v_proj", "target_modules", ["q_proj", "v_proj"]),
    ("--torch_dtype bfloat16", "precision", "bf16"),
    ("--torch_dtype float32", "precision", "fp32"),
    ("--output_path out/adapter", "output_dir", "out/adapter"),
    ("--max_steps 100", "max_steps", 100),
    ("--logging_steps 5", "logging_steps", 5),
    ("--task_name classification", "task_name", "classification"),
    ("--max_grad_norm 0.5 --adam_beta2=0.99 --tf32", "training_args",
     {"max_grad_norm": "0.5", "adam_beta2": "0.99", "tf32": "true"}),
])
def test_each_olive_finetune_flag_lands_in_its_field(line: str, field: str, value: object) -> None:
    assert getattr(config_of(line), field) == value


def test_the_magic_keeps_o_for_its_variable_and_a_pasted_olive_line_gives_it_to_output_path() -> None:
    assert parse_cell_line("-o run --output_path out").var == "run"
    assert parse_cell_line("olive finetune -o out").overrides == {"output_dir": "out"}
    assert parse_cell_line("!olive finetune -o out").var is None
    args = parse_cell_line("--dry_run --save_config_file --log_level 1")
    assert args.dry_run and args.save_config_file and args.notes[0].startswith("--log_level sets how much Olive logs")


PASTED = r"""!olive finetune --method lora -m tiny-llama \
    --data_name tones --text_template "### Text: {phrase}\n### The tone is:\n{tone}" \
    --max_steps 2 --batch_size 4 --max_grad_norm 0.5 -o out   # a comment
"""
SAME = ["--method", "lora", "-m", "tiny-llama", "--data_name", "tones", "--text_template",
        r"### Text: {phrase}\n### The tone is:\n{tone}", "--max_steps", "2", "--batch_size", "4",
        "--max_grad_norm", "0.5", "--output_path", "out"]


def test_a_pasted_olive_line_is_the_same_flags_on_the_line_in_the_body_and_on_the_command_line() -> None:
    flags = parse_cell_line(SAME)
    assert olive_tokens(PASTED)[-2:] == ["-o", "out"]
    assert parse_cell_line(" ".join(shlex.quote(t) for t in ["olive", "finetune", *SAME])).overrides == flags.overrides
    from_body, body = parse_cell(["--wait", "-o", "run", "--max_steps", "3"], PASTED)
    assert body == "" and from_body.var == "run" and from_body.wait
    assert from_body.overrides == {**flags.overrides, "max_steps": "3"}  # the magic line wins
    argv, training_args = olive_argv(["olive", "finetune", *SAME])
    parsed = vars(build_parser().parse_args(argv))
    assert training_args == {"max_grad_norm": "0.5"}
    assert (parsed["command"], parsed["olive_batch_size"], parsed["olive_output_path"]) == ("finetune", "4", "out")


def test_trust_remote_code_and_float16_are_one_sentence_each() -> None:
    assert refused("--trust_remote_code") == ("--trust_remote_code cannot apply here: slmnb never runs a model's own "
                                             f"code: {FINETUNE_REFUSED['trust_remote_code'].split(': ', 1)[1]}.")
    assert "GPU only" in refused("--torch_dtype float16") and "on a CPU use bfloat16 or float32" in \
        refused("--torch_dtype float16")
    assert refused("--torch_dtype int8").startswith("--torch_dtype 'int8' is not a dtype")
    assert refused("--batch_size 4 --per_device_train_batch_size 8").startswith("Give --batch_size or")
    assert refused("--text_field text --text_template {text}").startswith("Give --text_field or --text_template")
    assert refused("--bf16").startswith("--bf16 is set by slmnb itself: set precision")
    assert refused("--task text-classification").endswith("--task_name classification.")


def _mistypes(name: str, rng: random.Random) -> list[str]:
    i = rng.randrange(len(name))
    j = rng.randrange(len(name) - 1)
    swapped = name[:j] + name[j + 1] + name[j] + name[j + 2:]
    return [name[:i] + name[i + 1:], name[:i] + "x" + name[i:], swapped]


def test_generated_mistyped_flags_are_one_sentence_each() -> None:
    rng = random.Random(0)
    known = {*FIELD_NAMES, "batch_size", "text_field", "torch_dtype", "output_path", "log_level", "task"}
    names = [n for n in sorted(known) if len(n) > 3]
    for name in names:
        for typo in _mistypes(name, rng):
            if typo in known or typo in training_argument_names() or typo == name:
                continue  # a real flag of slmnb, Olive or TrainingArguments
            text = refused(f"--{typo} 5")
            assert text.startswith(f"Unknown config key {typo!r}"), text


def test_a_pasted_olive_line_trains_with_the_dashboard(workdir, ip) -> None:
    ip.run_cell_magic("finetune", "--wait -o olive_run --name pasted --precision fp32 --eval_steps 2",
                      PASTED.replace("-o out", "--save_config_file"))
    run = ip.user_ns["olive_run"]
    assert run.status == "finished" and run.step == 2
    config = run.config
    assert (config.per_device_train_batch_size, config.text_template.count("\n")) == (4, 2)
    assert config.training_args == {"max_grad_norm": "0.5"} or config.training_args == {"max_grad_norm": 0.5}
    saved = FinetuneConfig.from_file(workdir / "finetune_config.yaml")
    given = saved.to_dict(include_defaults=False)  # the run's config.yaml has the defaults it settled filled in
    assert given["max_steps"] == 2 and {k: getattr(config, k) for k in given} == given


def test_cli_save_config_file_and_dry_run_write_the_config_and_train_nothing(workdir, capsys) -> None:
    assert main(["olive", "finetune", "-m", "tiny-llama", "-d", "tones", "--max_steps", "2", "--dry_run",
                 "--save_config_file", "--log_level", "1"]) == 0
    out, err = capsys.readouterr()
    assert "dry run: nothing was trained." in err and "note: --log_level" in err and "train rows" in out
    assert FinetuneConfig.from_file("finetune_config.yaml").max_steps == 2
    assert not (workdir / "runs").exists()
    assert main(["finetune", "--max_grad_nrom", "1"]) == 2
    assert "did you mean max_grad_norm?" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "expected"), [
    (["tuned"], {"run": "tuned", "precision": "int4"}),
    (["-m", "tuned", "--precision", "fp32", "--use_ort_genai", "--use_model_builder"], {"run": "tuned",
                                                                                        "precision": "fp32"}),
    (["--model_name_or_path", "tuned", "--output_path", "out"], {"run": "tuned", "output": "out"}),
])
def test_olive_auto_opt_flags_become_the_exports_options(flags: list[str], expected: dict) -> None:
    parsed, unknown = build_parser().parse_known_args(["export", *flags])
    assert not unknown
    values = vars(parsed)
    values.pop("command")
    options, notes = export_options(values)
    assert {k: options[k] for k in expected} == expected and notes == []


def test_an_adapter_path_names_its_run_and_misfits_are_one_sentence(workdir, capsys) -> None:
    run_dir = workdir / "runs" / "tuned"
    (run_dir / "adapter").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("model_name_or_path: tiny-llama\n")
    for path in (run_dir / "adapter", run_dir):
        assert export_options({"run": None, "olive_adapter": str(path)})[0]["run"] == str(run_dir)
    cases = {
        ("--adapter_path", str(run_dir / "adapter"), "-m", "other"): "was trained on tiny-llama, not other",
        ("--adapter_path", str(workdir)): "is not a run's adapter folder",
        ("tuned", "--precision", "fp16"): "--precision fp16 is for GPU execution providers",
        ("tuned", "--precision", "uint8"): "is not a precision the model builder makes for the CPU",
        ("tuned", "--device", "gpu"): "slmnb exports for --device cpu",
        ("tuned", "--use_qdq_encoding"): "--use_qdq_encoding targets NPUs",
        ("tuned", "--exporter", "dynamo_exporter"): "--exporter picks Olive's exporter",
        ("tuned", "--precison", "int4"): "has no option --precison (did you mean --precision?)",
        ("tuned", "-m", "other"): "Give the run once",
        ("--log_level", "1"): "Name the run to export",
    }
    for flags, message in cases.items():
        assert main(["export", *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_the_readmes_command_lines_parse() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    commands = [line for line in lines if line.startswith(("slmnb ", "olive "))]
    assert any(line.startswith("olive finetune") or " olive " in line for line in commands)
    for line in commands:
        tokens = shlex.split(line.replace("[", "").replace("]", ""))
        argv, _ = olive_argv(tokens[1:] if tokens[0] == "slmnb" else tokens)
        build_parser().parse_known_args(argv)  # a wrong option is a ConfigError here


def _peft_adapter(folder: Path) -> Path:
    """A LoRA adapter of tiny-llama made with peft itself, not by a slmnb run."""
    import torch
    from peft import LoraConfig, get_peft_model

    from slmnb.models import load_model

    torch.manual_seed(0)
    model = get_peft_model(load_model("tiny-llama"), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj",
                                                                                                   "down_proj"]))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero; a non-zero B shows the scale is applied
            torch.nn.init.normal_(parameter)
    model.save_pretrained(folder)
    return folder


def test_convert_adapters_turns_a_peft_adapter_into_an_onnx_adapter_that_loads(tmp_path, ip, capsys) -> None:
    import numpy as np
    from safetensors.torch import load_file

    from slmnb.opt.adapters import read_adapter, weight_name

    adapter = _peft_adapter(tmp_path / "my-lora")
    path = ip.run_line_magic("opt", f"convert-adapters -a {adapter} -o {tmp_path / 'out' / 'tones'}")
    assert path == tmp_path / "out" / "tones.onnx_adapter" and "Exported adapter weights to" in capsys.readouterr().out
    weights = read_adapter(path)
    assert len(weights) == 2 * 2 * 2  # two layers, two modules, A and B
    peft = load_file(str(adapter / "adapter_model.safetensors"))
    a = peft["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].numpy()
    b = peft["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"].numpy()
    assert np.allclose(weights[weight_name(1, "down_proj", "A")], a.T)
    assert np.allclose(weights[weight_name(1, "down_proj", "B")], b.T * 2.0)  # alpha / r
    assert main(["convert-adapters", "-a", str(adapter), "-o", str(tmp_path / "cli.onnx_adapter")]) == 0
    assert set(read_adapter(tmp_path / "cli.onnx_adapter")) == set(weights)
    for flags, message in {("--dtype", "float16"): "--dtype float16 does not fit",
                           ("--quantize_int4",): "--quantize_int4 does not fit",
                           ("--adapter_format", "numpy"): "--adapter_format numpy is not written here"}.items():
        assert main(["convert-adapters", "-a", str(adapter), "-o", str(tmp_path / "x"), *flags]) == 2
        assert message in capsys.readouterr().err
    assert main(["convert-adapters", "-a", str(tmp_path), "-o", str(tmp_path / "x")]) == 2
    assert "holds no peft adapter" in capsys.readouterr().err


def test_generate_adapter_refuses_what_is_no_model_builder_model_with_lora(tmp_path, capsys) -> None:
    assert main(["generate-adapter", "-m", str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    assert "is not an ONNX model" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="required: -m"):
        build_parser().parse_known_args(["generate-adapter"])


def test_generate_adapter_splits_a_built_lora_model_and_convert_adapters_gives_the_same_adapter(tmp_path) -> None:
    """Olive's two routes to an adapter agree: extracted from a model built with its LoRA, and converted from peft;
    and onnxruntime-genai loads the converted one into the generated base."""
    import numpy as np
    import onnxruntime_genai as og

    from slmnb.models import model_folder
    from slmnb.opt.adapters import lora_nodes, read_adapter
    from slmnb.opt.builder import run_builder

    adapter = _peft_adapter(tmp_path / "peft")
    run_builder(model_folder("tiny-llama"), tmp_path / "built", "fp32", adapter_dir=adapter, keep_float=lora_nodes(2),
                layers=2, log_path=tmp_path / "builder.log")
    assert main(["generate-adapter", "-m", str(tmp_path / "built"), "-o", str(tmp_path / "switch")]) == 0
    extracted = read_adapter(tmp_path / "switch" / "adapter_weights.onnx_adapter")
    assert main(["convert-adapters", "-a", str(adapter), "-o", str(tmp_path / "converted")]) == 0
    converted = read_adapter(tmp_path / "converted.onnx_adapter")
    assert set(extracted) == set(converted)
    assert all(np.allclose(extracted[name], converted[name], atol=1e-6) for name in converted)
    model = og.Model(str(tmp_path / "switch"))
    og.Adapters(model).load(str(tmp_path / "converted.onnx_adapter"), "peft")
    assert main(["generate-adapter", "-m", str(tmp_path / "built"), "-o", str(tmp_path / "switch")]) == 2
