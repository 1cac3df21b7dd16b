"""A run handed back to Olive: its config (and the export after it) as an Olive run config in Olive's current
schema (olive-ai 0.13), with the rows it trained and evaluated on written beside it.

Olive and slmnb differ in a few ways; where they do, the Olive config is made to do what the slmnb run did, and
what it cannot do is said in notes the commands print (Olive's RunConfig refuses any key it does not know, so the
notes cannot travel inside the config). Writing a config never imports Olive.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmnb.checks import layer_numbers
from slmnb.config import FinetuneConfig
from slmnb.data import Data, load_data, render, system_message, with_default_templates
from slmnb.errors import ConfigError, SlmnbError
from slmnb.models import HUB_IDS
from slmnb.paths import write_text_atomic

DEFAULT_FILE = "olive-config.json"
EXPORT_KEYS = {"precision": ("int4", "int8", "fp32"), "adapters": ("switchable", "merged")}
SYSTEM = "local_system"
TRAIN_DATA, EVAL_DATA = "train_data", "eval_data"


@dataclass(frozen=True)
class Written:
    """An Olive run config written to disk, with its data file and how to run it."""

    path: Path
    data_path: Path | None  # None for a full fine-tune: Olive starts from its trained model and reads no rows
    notes: tuple[str, ...]

    @property
    def command(self) -> str:
        # data_files are relative to the config's folder, and Olive reads them from the working directory.
        return f"cd {_shell(str(self.path.parent.resolve()))} && olive run --config {_shell(self.path.name)}"

    def __str__(self) -> str:
        data = f" and its data {self.data_path.name}" if self.data_path else ""
        lines = [f"Wrote the Olive run config {self.path}{data}.",
                 f"Run it with Olive: {self.command}"]
        return "\n".join([*lines, *(f"note: {note}" for note in self.notes)])

    def __repr__(self) -> str:
        return f"<Olive run config {self.path}>"


def to_olive_config(config: FinetuneConfig, export: dict[str, Any] | None = None, *, data_file: str = "data.json",
                    precision: str | None = None, trained_model: str | Path | None = None) -> dict[str, Any]:
    """The Olive run config that reproduces `config`'s fine-tune and then `export` (slmnb.export's precision and
    adapters; None: no export), reading its rows from `data_file` (relative to where Olive runs; write_olive_config
    writes it). `precision` is the one the run trained with (auto is resolved here otherwise); `trained_model` is a
    full fine-tune's saved model, which Olive cannot train itself."""
    return olive_config_and_notes(config, export, data_file=data_file, precision=precision,
                                  trained_model=trained_model)[0]


def olive_config_and_notes(config: FinetuneConfig, export: dict[str, Any] | None = None, *,
                           data_file: str = "data.json", precision: str | None = None,
                           trained_model: str | Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """to_olive_config, with the notes on where Olive will do otherwise than slmnb did."""
    return _build(config, export, load_data(with_default_templates(config)), data_file, precision, trained_model)


def write_olive_config(config: FinetuneConfig, path: str | Path, export: dict[str, Any] | None = None, *,
                       precision: str | None = None, trained_model: str | Path | None = None) -> Written:
    """Write the Olive run config to `path` (a .json or .yaml file) and its rows to <stem>-data.json beside it."""
    path = _target(path)
    data_path = path.with_name(f"{path.stem}-data.json")
    config = with_default_templates(config)
    data = load_data(config)
    values, notes = _build(config, export, data, data_path.name, precision, trained_model)
    rows = data.train + data.eval
    if config.use_chat_template:
        rows = [{**row, "messages": _messages(config, row)} for row in rows]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Whole files or none: a config that Olive (or a later run of this) picks up is never half-written.
        if config.method != "full":
            write_text_atomic(data_path, json.dumps(rows, ensure_ascii=False, indent=1, default=str) + "\n")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(values, sort_keys=False, allow_unicode=True, width=120)
        else:
            text = json.dumps(values, ensure_ascii=False, indent=2) + "\n"
        write_text_atomic(path, text)
    except OSError as exc:
        raise ConfigError(f"Cannot write the Olive config to {path} ({(exc.strerror or 'input/output error').lower()}"
                          "): give another file with -o.") from None
    return Written(path=path, data_path=data_path if config.method != "full" else None, notes=tuple(notes))


def _target(path: str | Path) -> Path:
    if not isinstance(path, str | Path) or not str(path).strip() or "\0" in str(path):
        raise ConfigError(f"{path!r} is not a file path: give a file such as {DEFAULT_FILE}.")
    target = Path(path).expanduser()
    if target.is_dir():
        return target / DEFAULT_FILE
    if target.suffix.lower() not in (".json", ".yaml", ".yml"):
        raise ConfigError(f"Olive reads run configs from .json or .yaml files, not {target.name!r}: name the file "
                          f"such as {DEFAULT_FILE}.")
    return target


# --- building ---------------------------------------------------------------------------------------


def _build(config: FinetuneConfig, export: dict[str, Any] | None, data: Data, data_file: str,
           precision: str | None, trained_model: str | Path | None) -> tuple[dict[str, Any], list[str]]:
    config = with_default_templates(config)
    export = _checked_export(export, config)
    notes: list[str] = []
    values: dict[str, Any] = {
        "input_model": {"type": "HfModel", "model_path": _model_path(config, trained_model, notes)},
        "systems": {SYSTEM: {"type": "LocalSystem",
                             "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [],
        "passes": {},
    }
    if config.method == "full":
        # Olive has adapter passes only (LoRA, QLoRA, DoRA, LoHa, LoKr, LoftQ): it starts from the trained model.
        notes.append("Olive has no full fine-tuning pass, so this config starts from the run's fine-tuned model and "
                     "reproduces its export only.")
    else:
        values["data_configs"] = _data_configs(config, data, data_file, notes)
        values["passes"][config.method] = _training_pass(config, data, precision, notes)
    values["passes"].update(_export_passes(config, export, notes))
    values.update({"host": SYSTEM, "target": SYSTEM, "output_dir": "olive-output"})
    return values, notes


def _checked_export(export: dict[str, Any] | None, config: FinetuneConfig) -> dict[str, Any] | None:
    if export is None:
        return None
    if not isinstance(export, dict):
        raise ConfigError(f"export is a mapping such as {{'precision': 'int4', 'adapters': 'switchable'}}, not "
                          f"{type(export).__name__}.")
    checked = {"precision": "int4", "adapters": "merged" if config.method == "full" else "switchable", **export}
    for key, value in checked.items():
        if key not in EXPORT_KEYS:
            raise ConfigError(f"export has no setting {key!r}: it takes precision and adapters.")
        if value not in EXPORT_KEYS[key]:
            raise ConfigError(f"export {key} {value!r} is not one slmnb exports: use {', '.join(EXPORT_KEYS[key])}.")
    if config.method == "full" and checked["adapters"] == "switchable":
        raise ConfigError("A full fine-tune has no adapter to switch: export it with adapters merged.")
    return checked


def _model_path(config: FinetuneConfig, trained_model: str | Path | None, notes: list[str]) -> str:
    from slmnb.models import TINY_MODEL, model_folder

    if config.method == "full":
        if trained_model is None:
            raise ConfigError("Olive cannot fine-tune a whole model (it has adapter passes only): write the config "
                              "from a finished run (run.to_olive_config()), which starts from its trained model.")
        return str(Path(trained_model).resolve())
    name = config.model_name_or_path
    if name in HUB_IDS:
        notes.append(f"{name} is {HUB_IDS[name]} on the Hugging Face Hub; slmnb trains a Q4_1 copy of it "
                     "dequantized, so the weights differ by that rounding.")
        return HUB_IDS[name]
    if name == TINY_MODEL:
        notes.append(f"{TINY_MODEL} is slmnb's random test model, which is on no hub: the config names its folder "
                     "on this machine.")
        return model_folder(TINY_MODEL)
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name  # a hub id stays one


def _data_configs(config: FinetuneConfig, data: Data, data_file: str, notes: list[str]) -> list[dict[str, Any]]:
    """The train rows and then the eval rows, in one file: the two data configs slice it, so Olive trains and
    evaluates on exactly the rows the run did (its held-out split included)."""
    notes.append(f"The rows the run trained and evaluated on are in {data_file}, train first; Olive reads it "
                 "relative to the folder it runs in.")
    count = len(data.train)
    configs = [_data_config(TRAIN_DATA, config, data_file, f"train[:{count}]", config.max_samples)]
    if data.eval:
        configs.append(_data_config(EVAL_DATA, config, data_file, f"train[{count}:]", None))
    if config.use_chat_template:
        notes.append("use_chat_template: each row's prompt and response are in its messages column, rendered with "
                     "the model's chat template; Olive takes the loss on the whole conversation, slmnb on the "
                     "answer only.")
    elif config.prompt_template:
        notes.append("prompt_template + response_template: Olive's text_template joins them, and Olive takes the "
                     "loss on the whole text, where slmnb took it on the response only.")
    if not config.use_chat_template:
        notes.append("Olive writes each example as '<bos> text <eos>' (add_special_tokens), slmnb as the "
                     "tokenizer's own encoding of the text followed by <eos>.")
    return configs


def _data_config(name: str, config: FinetuneConfig, data_file: str, split: str,
                 max_samples: int | None) -> dict[str, Any]:
    pre: dict[str, Any] = {"strategy": "line-by-line", "max_seq_len": config.max_seq_len, "pad_to_max_len": False}
    if config.use_chat_template:
        pre.update(chat_template=True, message_col="messages")
    else:
        pre.update(text_template=config.text_template or f"{config.prompt_template}{config.response_template}",
                   add_special_tokens=True)
    if max_samples:
        pre["max_samples"] = max_samples
    return {"name": name, "type": "HuggingfaceContainer",
            "load_dataset_config": {"data_name": "json", "data_files": [data_file], "split": split},
            "pre_process_data_config": pre}


def _messages(config: FinetuneConfig, row: dict[str, Any]) -> list[dict[str, str]]:
    return [*system_message(config),
            {"role": "user", "content": render(config.prompt_template or "", row, "prompt_template")},
            {"role": "assistant", "content": render(config.response_template or "", row, "response_template")}]


def _training_pass(config: FinetuneConfig, data: Data, precision: str | None, notes: list[str]) -> dict[str, Any]:
    trained = precision or config.precision
    if trained == "auto":
        from slmnb.training.engine import effective_precision

        trained = effective_precision("auto")
    spec: dict[str, Any] = {
        "type": "QLoRA" if config.method == "qlora" else "LoRA",
        "r": config.lora_r, "alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
        # bf16 is autocast over fp32 weights in slmnb, which is fp32 weights plus the Trainer's bf16 in Olive.
        "torch_dtype": "float32",
    }
    targets = _target_modules(config, notes)
    if targets:
        spec["target_modules"] = targets
    if config.layers_to_transform:
        spec["layers_to_transform"] = layer_numbers(config.layers_to_transform)
    if config.method == "qlora":
        # slmnb's 4-bit base: NF4 without double quantization, computing in bf16; only the adapter is kept.
        spec.update(quant_type="nf4", double_quant=False, compute_dtype="bfloat16", save_quant_config=False)
    spec["train_data_config"] = TRAIN_DATA
    if data.eval:
        spec["eval_data_config"] = EVAL_DATA
    spec["training_args"] = _training_args(config, data, trained, notes)
    if config.method == "lora" and config.base_weights in ("int4", "auto"):  # auto is int4 for lora
        notes.append("base_weights int4: slmnb trained the LoRA on the base as its int4 export stores it; Olive "
                     "trains on the original weights, so the int4 export may answer a little differently.")
    return spec


def _target_modules(config: FinetuneConfig, notes: list[str]) -> list[str] | None:
    """target_modules as Olive takes them, a list: all-linear becomes the names of the model's linear layers."""
    targets: Any = config.target_modules  # a list, or the text all-linear (slmnb.checks spells it so)
    if targets and targets != "all-linear":
        return list(targets)
    from slmnb.models import model_folder
    from slmnb.training.prepare import linear_layers

    try:
        names = linear_layers(model_folder(config.model_name_or_path))
    except SlmnbError:
        notes.append("target_modules all-linear could not be listed without the model here: Olive picks its "
                     "default modules for the architecture; list the linear layers to match slmnb.")
        return None
    return sorted({name.split(".")[-1] for name in names})


def _training_args(config: FinetuneConfig, data: Data, precision: str, notes: list[str]) -> dict[str, Any]:
    from slmnb.training.arguments import plan_steps

    # Olive's own defaults differ from slmnb's (learning rate 2e-4, constant schedule, 3% warmup, gradient
    # checkpointing on): every setting is written, with the steps slmnb planned for evaluating and saving.
    plan = plan_steps(config, len(data.train), bool(data.eval))
    args: dict[str, Any] = {
        "learning_rate": config.peak_learning_rate, "lr_scheduler_type": config.lr_scheduler_type,
        "warmup_ratio": config.warmup_ratio, "weight_decay": config.weight_decay, "seed": config.seed,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "num_train_epochs": config.num_train_epochs, "logging_steps": config.logging_steps,
        "save_steps": plan.save_steps, "gradient_checkpointing": config.gradient_checkpointing,
    }
    if config.max_steps:
        args["max_steps"] = config.max_steps
    if data.eval:
        args["eval_steps"] = plan.eval_steps
    if plan.load_best:
        args["load_best_model_at_end"] = True
        args["metric_for_best_model"] = "eval_loss"
        if config.metric_for_best_model.removeprefix("eval_") not in ("loss", "perplexity"):
            notes.append(f"metric_for_best_model {config.metric_for_best_model} comes from slmnb's generation-eval, "
                         "which Olive's trainer has not: the best model is the one with the lowest eval loss.")
    if precision == "bf16":
        # transformers takes bf16 on a CPU only with use_cpu; slmnb trained on this CPU.
        args.update(bf16=True, use_cpu=True)
        notes.append("bf16 autocast on the CPU, as the run trained: on a GPU, drop use_cpu from training_args.")
    args.update(config.training_args or {})
    if config.early_stopping_patience is not None:
        notes.append(f"early_stopping_patience {config.early_stopping_patience}: Olive's LoRA pass has no early "
                     "stopping, so it trains every step.")
    if config.loss:
        notes.append(f"loss {config.loss}: Olive trains with the model's own cross-entropy.")
    if config.text_template is None and config.eval_generate_samples != 0:
        notes.append("slmnb scores generated answers at each evaluation (generation-eval); Olive reports the eval "
                     "loss only.")
    return args


def _export_passes(config: FinetuneConfig, export: dict[str, Any] | None, notes: list[str]) -> dict[str, Any]:
    """MergeAdapterWeights or ExtractAdapters around ModelBuilder, as slmnb's merged or switchable export."""
    if export is None:
        return {}
    precision, merged = export["precision"], export["adapters"] == "merged"
    builder: dict[str, Any] = {"type": "ModelBuilder", "precision": precision}
    if precision == "int4":
        # slmnb's int4: k_quant in blocks of 32 with the output layer in int8 (slmnb.opt.builder.quant_options).
        builder.update(int4_algo_config="k_quant_last", int4_block_size=32)
    passes: dict[str, Any] = {}
    if merged and config.method != "full":
        passes["merge"] = {"type": "MergeAdapterWeights"}
    passes["builder"] = builder
    if not merged:
        if precision != "fp32":
            excluded = _lora_nodes(config, notes)
            if excluded:
                # The LoRA MatMuls stay float, as slmnb keeps them, so ExtractAdapters can make them inputs.
                builder["int4_nodes_to_exclude"] = excluded
        passes["extract"] = {"type": "ExtractAdapters", "make_inputs": True, "dynamic_lora_r": True,
                             "optional_inputs": True, "save_format": "onnx_adapter"}
    return passes


def _lora_nodes(config: FinetuneConfig, notes: list[str]) -> list[str]:
    from slmnb.models import model_folder
    from slmnb.opt.adapters import lora_nodes
    from slmnb.opt.inputs import base_config, model_size

    try:
        folder = model_folder(config.model_name_or_path)
        layers, _ = model_size(base_config(Path(folder), config.model_name_or_path), config.model_name_or_path)
    except SlmnbError:
        notes.append("The model's layers could not be read here, so the LoRA MatMuls are not kept out of "
                     "quantization: list them in int4_nodes_to_exclude to match slmnb's switchable export.")
        return []
    return lora_nodes(layers)


def _shell(text: str) -> str:
    import shlex

    return shlex.quote(os.path.normpath(text))


# --- the commands -----------------------------------------------------------------------------------


def add_options(parser: Any) -> None:
    """`olive-config RUN [-o FILE] [--precision P] [--adapters A] [--no_export]`, for the CLI and the magic."""
    parser.add_argument("run", help="A run's name in the runs folder, or a run folder.")
    parser.add_argument("-o", "--output", help=f"The .json or .yaml file to write; default: {DEFAULT_FILE} in the "
                        "run folder. The run's rows go beside it, as <name>-data.json.")
    parser.add_argument("--precision", choices=EXPORT_KEYS["precision"], default="int4",
                        help="ModelBuilder precision of the export after training (default int4).")
    parser.add_argument("--adapters", choices=EXPORT_KEYS["adapters"],
                        help="ExtractAdapters (switchable, the default) or MergeAdapterWeights (merged).")
    parser.add_argument("--no_export", "--no-export", action="store_true",
                        help="Only the training pass, as `olive finetune` writes it.")


def write_for_run(options: dict[str, Any]) -> Written:
    """The Olive config of the run the parsed options name (a bad name is one sentence, as for export)."""
    from slmnb.opt.inputs import open_run

    run = open_run(options["run"])
    precision = None if options.get("no_export") else options.get("precision", "int4")
    written: Written = run.to_olive_config(options.get("output"), precision=precision,
                                           adapters=options.get("adapters"))
    return written
