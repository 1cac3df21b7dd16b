"""Olive's command-line flags, mapped onto slmnb in one place: `olive finetune` onto FinetuneConfig fields, and
`olive auto-opt` / `olive optimize` onto the export's options.

Most `olive finetune` flags are FinetuneConfig fields of the same name already; this module adds the ones Olive spells
differently (--batch_size, --output_path, --torch_dtype, --text_field), the ones slmnb accepts with a note
(--log_level), and any transformers TrainingArguments flag, which goes to training_args as text. A pasted shell line
(`!olive finetune -m ... \\` with its continuation lines) reads as the same flags.
"""

from __future__ import annotations

import argparse
import difflib
import re
import shlex
from typing import Any

from slmnb.checks import short_repr
from slmnb.config import RESERVED_TRAINING_ARGS, unknown_key_message
from slmnb.errors import ConfigError
from slmnb.training.arguments import training_argument_names

# `olive finetune ...`, `!olive finetune ...`, `$ olive finetune ...` at the start of a pasted line.
_OLIVE_LINE = re.compile(r"^\s*(?:\$\s*|!\s*)?olive\s+(finetune|auto-opt|optimize|generate-adapter|"
                         r"convert-adapters)(?=\s|$)")
_TORCH_DTYPES = {"bfloat16": "bf16", "float32": "fp32"}
_LOG_LEVEL_NOTE = ("--log_level sets how much Olive logs; slmnb has no log levels: the dashboard (a progress line "
                   "on the command line) shows the run as it goes, and a failed run keeps its traceback in "
                   "error.log in its folder.")
# `olive finetune` flags that slmnb cannot honour, each with what slmnb does instead.
FINETUNE_REFUSED = {
    "trust_remote_code": "slmnb never runs a model's own code: use a model whose architecture transformers ships "
                         "(Llama, Qwen2, Phi-3, SmolLM2 ...), saved in a local folder",
    "train_subset": "slmnb reads local data (data_name, data_files): save the subset you want as files",
    "eval_subset": "slmnb reads local data (data_name, data_files): save the subset you want as files",
    "input_cols": "slmnb's templates name the columns (text_template, or prompt_template + response_template)",
    "test": "slmnb's tiny-llama model plays that part: use --model_name_or_path tiny-llama",
    "test_metrics": "slmnb scores runs with --metrics and %opt compare --eval",
}
# Olive flags that change nothing here: accepted, with the sentence saying so.
IGNORED = {
    "log_level": _LOG_LEVEL_NOTE,
    "account_name": "--account_name names Olive's shared cache on Azure storage; slmnb runs locally and caches in "
                    "SLMNB_HOME, so it was ignored.",
    "container_name": "--container_name names Olive's shared cache on Azure storage; slmnb runs locally and caches "
                      "in SLMNB_HOME, so it was ignored.",
    "disable_telemetry": "--disable_telemetry: slmnb sends no telemetry (and turns onnxruntime's off).",
    "add_special_tokens": "--add_special_tokens: slmnb tokenizes every row as the model's tokenizer does by default "
                          "(with its BOS token), so it was ignored.",
}


def olive_command(text: str) -> str | None:
    """The Olive subcommand a pasted line starts with (`olive finetune`, `!olive auto-opt` ...), or None."""
    match = _OLIVE_LINE.match(text)
    return match.group(1) if match else None


def olive_tokens(text: str) -> list[str]:
    """A pasted `olive SUBCOMMAND ...` shell line (backslash-newline continuations and comments too) as its flags."""
    text = re.sub(r"\\\r?\n", " ", text)  # a shell continuation joins the lines
    text = _OLIVE_LINE.sub("", text, count=1)
    try:
        return shlex.split(text, comments=True)
    except ValueError as exc:  # an unclosed quote
        raise ConfigError(f"The olive line cannot be read ({exc}): close the quotes around values with "
                          "spaces.") from None


def add_finetune_flags(parser: argparse.ArgumentParser, output_short: bool) -> None:
    """`olive finetune`'s flags that are not FinetuneConfig fields (those are options already, by name).

    output_short: -o is --output_path (a pasted olive line, the CLI); the magic keeps -o for its variable.
    """
    parser.add_argument("--output_path", *(["-o"] if output_short else []), dest="olive_output_path", metavar="DIR",
                        help="Olive's name for output_dir.")
    parser.add_argument("--batch_size", dest="olive_batch_size", metavar="INT",
                        help="Olive's name for per_device_train_batch_size.")
    parser.add_argument("--text_field", dest="olive_text_field", metavar="COLUMN",
                        help="The column that holds each row's whole text (text_template '{COLUMN}').")
    parser.add_argument("--torch_dtype", dest="olive_torch_dtype", metavar="bfloat16|float32",
                        help="Olive's name for precision: bfloat16 is bf16, float32 is fp32.")
    parser.add_argument("-t", "--task", dest="olive_task", metavar="TASK",
                        help="The model's Hugging Face task: slmnb fine-tunes text-generation models.")
    parser.add_argument("--save_config_file", dest="save_config_file", action="store_true",
                        help="Write the config that would run to finetune_config.yaml (slmnb finetune FILE runs it).")
    for name in IGNORED:
        parser.add_argument(f"--{name}", dest=f"olive_ignored_{name}", nargs="?", const="", metavar="VALUE",
                            help="Accepted from Olive; changes nothing here (the cell or the terminal says why).")
    for name in FINETUNE_REFUSED:
        parser.add_argument(f"--{name}", dest=f"olive_refused_{name}", nargs="?", const="", metavar="VALUE",
                            help=argparse.SUPPRESS)


def finetune_overrides(values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Config overrides from the parsed options, Olive's spellings turned into fields; and the notes to show.

    Pops every flag this module added from `values`; the config fields pass through as text.
    """
    overrides, notes = dict(values), []
    for key in [k for k in overrides if k.startswith("olive_refused_")]:
        name = key.removeprefix("olive_refused_")
        raise ConfigError(f"--{name} cannot apply here: {FINETUNE_REFUSED[name]}.")
    for key in [k for k in overrides if k.startswith("olive_ignored_")]:
        overrides.pop(key)
        notes.append(IGNORED[key.removeprefix("olive_ignored_")])
    _rename(overrides, "olive_output_path", "output_dir", "--output_path")
    _rename(overrides, "olive_batch_size", "per_device_train_batch_size", "--batch_size")
    for name in ("text_template", "prompt_template", "response_template"):
        if isinstance(overrides.get(name), str):
            # Olive unescapes its --text_template: a shell line cannot hold a newline, so it writes \n.
            overrides[name] = overrides[name].replace("\\n", "\n").replace("\\t", "\t")
    if "olive_text_field" in overrides:
        column = str(overrides.pop("olive_text_field"))
        if "text_template" in overrides:
            raise ConfigError("Give --text_field or --text_template, not both: --text_field COLUMN is "
                              "--text_template '{COLUMN}'.")
        if not column.isidentifier():
            raise ConfigError(f"--text_field takes a column name such as text, got {short_repr(column)}.")
        overrides["text_template"] = "{" + column + "}"
    if "olive_torch_dtype" in overrides:
        overrides["precision"] = _precision(str(overrides.pop("olive_torch_dtype")), overrides.get("precision"))
    if "olive_task" in overrides:
        task = str(overrides.pop("olive_task"))
        if not task.startswith("text-generation"):
            raise ConfigError(f"--task {short_repr(task)} cannot apply here: slmnb fine-tunes text-generation "
                              "models; for an adapter that classifies, keep the model and name the adapter's task "
                              "with --task_name classification.")
    return overrides, notes


def _rename(overrides: dict[str, Any], olive: str, field: str, flag: str) -> None:
    if olive not in overrides:
        return
    if field in overrides:
        raise ConfigError(f"Give {flag} or --{field}, not both: {flag} is Olive's name for {field}.")
    overrides[field] = overrides.pop(olive)


def _precision(dtype: str, precision: Any) -> str:
    if precision is not None:
        raise ConfigError("Give --torch_dtype or --precision, not both: --torch_dtype is Olive's name for precision.")
    if dtype == "float16":
        raise ConfigError("--torch_dtype float16 trains on a GPU only (transformers' fp16 mixed precision needs CUDA): "
                          "on a CPU use bfloat16 or float32, or leave it out for precision auto.")
    if dtype not in _TORCH_DTYPES:
        raise ConfigError(f"--torch_dtype {short_repr(dtype)} is not a dtype slmnb trains in: use bfloat16 or "
                          "float32.")
    return _TORCH_DTYPES[dtype]


# --- TrainingArguments flags ----------------------------------------------------------------------------------


def split_training_args(tokens: list[str], parser: argparse.ArgumentParser,
                        names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Take `--name value` flags the parser does not know out of `tokens`: each TrainingArguments flag becomes a
    training_args entry (as text; the config types and checks it); any other is one sentence, with did-you-mean
    among `names` (the config fields) and TrainingArguments.

    Only an unknown flag makes this read TrainingArguments' names (importing transformers takes seconds).
    """
    known = set(parser._option_string_actions)  # argparse keeps no public list of its option strings
    kept: list[str] = []
    found: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name, equals, value = token[2:].partition("=")
        if not token.startswith("--") or not name.isidentifier() or f"--{name}" in known:
            kept.append(token)
            i += 1
            continue
        if not equals:
            following = tokens[i + 1] if i + 1 < len(tokens) else None
            if following is not None and not (following.startswith("-") and not _is_number(following)):
                value = following
                i += 1
            else:
                value = "true"  # a switch such as --gradient_checkpointing
        i += 1
        if name in RESERVED_TRAINING_ARGS:
            raise ConfigError(f"--{name} is set by slmnb itself: {RESERVED_TRAINING_ARGS[name]}.")
        if name not in training_argument_names():
            raise ConfigError(_unknown(name, names))
        found[name] = value
    return kept, found


def _unknown(name: str, names: list[str]) -> str:
    field = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    other = difflib.get_close_matches(name, sorted(training_argument_names()), n=1, cutoff=0.6)
    # The config's own names win unless TrainingArguments has a clearly closer one: --lora_rank means lora_r, not
    # local_rank, while --max_grad_nrom means max_grad_norm, not max_seq_len.
    if field and other and _ratio(name, other[0]) <= _ratio(name, field[0]) + 0.1:
        other = []
    close = other or field
    if close:
        return f"Unknown config key {short_repr(name)}: did you mean {close[0]}?"
    return unknown_key_message(name, names)


def _ratio(first: str, second: str) -> float:
    return difflib.SequenceMatcher(None, first, second).ratio()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- olive auto-opt / olive optimize ---------------------------------------------------------------------------

EXPORT_PRECISIONS = ("int4", "int8", "fp32")
_GPU_PRECISIONS = ("fp16", "bf16", "fp8", "fp4", "nf4")
# auto-opt / optimize flags that tune for other hardware or other exporters: one sentence each.
_NPU = "targets NPUs (QNN, OpenVINO, VitisAI); slmnb exports for the CPU"
_EXPORTER = "picks Olive's exporter; slmnb always uses onnxruntime-genai's model builder"
_EVAL = "is Olive's evaluation data; slmnb evaluates exports with %opt compare --eval"
EXPORT_REFUSED = {
    "use_qdq_encoding": _NPU, "use_qdq_format": _NPU, "enable_aot": _NPU, "qnn_env_path": _NPU,
    "act_precision": _NPU, "dynamic-to-fixed-shape-dim-param": _NPU, "dynamic-to-fixed-shape-dim-value": _NPU,
    "dim_param": _NPU, "dim_value": _NPU, "num-splits": _NPU, "num_split": _NPU, "cost-model": _NPU,
    "memory": _NPU, "providers_list": "chooses among execution providers; slmnb exports for the "
    "CPUExecutionProvider", "use_dynamo_exporter": _EXPORTER, "exporter": _EXPORTER, "surgeries": _EXPORTER,
    "mixed-precision-overrides-config": "sets per-layer precisions; slmnb's int4 is k_quant with an int8 "
    "output layer", "block_size": "sets the quantization block; slmnb's int4 uses blocks of 32",
    "extra_mb_options": "passes options to the model builder; slmnb sets them for the CPU",
    "data_name": _EVAL, "split": _EVAL, "subset": _EVAL, "input_cols": _EVAL, "batch_size": _EVAL,
    "trust_remote_code": FINETUNE_REFUSED["trust_remote_code"], "test": FINETUNE_REFUSED["test"],
    "model_script": "loads a PyTorch model from a script; slmnb exports Hugging Face models and runs",
    "script_dir": "loads a PyTorch model from a script; slmnb exports Hugging Face models and runs",
}


def add_export_flags(parser: argparse.ArgumentParser) -> None:
    """`olive auto-opt` / `olive optimize` flags besides --precision, -o/--output_path, --device and --provider."""
    parser.add_argument("-m", "--model_name_or_path", dest="olive_model", metavar="RUN",
                        help="The run to export (its name or folder), as the RUN argument.")
    parser.add_argument("-a", "--adapter_path", dest="olive_adapter", metavar="DIR",
                        help="A run's adapter folder (runs/NAME/adapter) or the run's folder.")
    parser.add_argument("--use_ort_genai", action="store_true", dest="olive_ort_genai",
                        help="Accepted: exports are onnxruntime-genai models always.")
    parser.add_argument("--use_model_builder", action="store_true", dest="olive_model_builder",
                        help="Accepted: exports always use onnxruntime-genai's model builder.")
    parser.add_argument("--log_level", dest="olive_log_level", metavar="0-4", help="Accepted; the export shows its "
                        "phases as it goes, and a failed build names its log.")
    parser.add_argument("--save_config_file", dest="olive_save_config", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dry_run", dest="olive_dry_run", action="store_true", help=argparse.SUPPRESS)


def refuse_export_flags(unknown: list[str], command: str) -> None:
    """The first flag left over: its sentence when it is an Olive flag that cannot apply, else did-you-mean."""
    if not unknown:
        return
    token = unknown[0]
    name = token.lstrip("-").split("=")[0]
    if name in EXPORT_REFUSED:
        raise ConfigError(f"--{name} {EXPORT_REFUSED[name]}: drop it.")
    close = difflib.get_close_matches(name, [*_EXPORT_FLAGS, *EXPORT_REFUSED], n=1, cutoff=0.6)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    raise ConfigError(f"{command} has no option {token}{hint}: see {command} --help.")


_EXPORT_FLAGS = ("precision", "adapters", "output_path", "device", "provider", "model_name_or_path", "adapter_path",
                 "use_ort_genai", "use_model_builder", "log_level", "wait")


def export_options(values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """export()'s keyword arguments from the parsed options (Olive's names resolved), and the notes to show."""
    options, notes = dict(values), []
    for flag in ("olive_ort_genai", "olive_model_builder"):
        options.pop(flag, None)
    if options.pop("olive_log_level", None) is not None:
        notes.append("--log_level sets how much Olive logs; slmnb has no log levels: the export shows its phases as "
                     "it goes, and a failed build names the builder's log.")
    if options.pop("olive_save_config", False) or options.pop("olive_dry_run", False):
        raise ConfigError("--save_config_file and --dry_run write Olive's config; slmnb exports at once: drop them "
                          "(slmnb olive-config RUN writes an Olive config of a run).")
    options["run"] = _run_of(options.get("run"), options.pop("olive_model", None), options.pop("olive_adapter", None))
    precision = str(options.get("precision", "int4"))
    if precision in _GPU_PRECISIONS:
        raise ConfigError(f"--precision {precision} is for GPU execution providers: slmnb exports for the "
                          "CPUExecutionProvider, which runs int4, int8 or fp32 models; use one of those.")
    if precision not in EXPORT_PRECISIONS:
        raise ConfigError(f"--precision {short_repr(precision)} is not a precision the model builder makes for the "
                          "CPU: use int4 (the default), int8 or fp32.")
    device, provider = options.get("device", "cpu"), options.get("provider", "CPUExecutionProvider")
    if device != "cpu" or provider != "CPUExecutionProvider":
        raise ConfigError(f"--device {device} with --provider {provider} is not a CPU export: slmnb exports for "
                          "--device cpu with the CPUExecutionProvider only; drop those options.")
    return options, notes


def _run_of(run: str | None, model: str | None, adapter: str | None) -> str:
    """The run to export, from RUN, -m RUN, or --adapter_path (a run's folder or its adapter folder)."""
    from pathlib import Path

    given = [value for value in (run, model) if value]
    if adapter:
        path = Path(adapter).expanduser()
        folder = path.parent if (path.parent / "config.yaml").is_file() else path
        if not (folder / "config.yaml").is_file():
            raise ConfigError(f"--adapter_path {short_repr(adapter)} is not a run's adapter folder: export a run "
                              "(runs/NAME/adapter), or convert a peft adapter for an exported base model with "
                              "convert-adapters -a ADAPTER -o OUT.")
        if model:
            # Olive's -m is then the base model: it must be the run's.
            from slmnb.config import read_config_file

            base = read_config_file(folder / "config.yaml").get("model_name_or_path")
            if model not in (base, run):
                raise ConfigError(f"--adapter_path {short_repr(adapter)} was trained on {base}, not {model}: "
                                  "drop -m, or give the adapter of a run of that model.")
        return str(folder)
    if len(set(given)) > 1:
        raise ConfigError(f"Give the run once: RUN {short_repr(run)} and -m {short_repr(model)} differ.")
    if not given:
        raise ConfigError("Name the run to export: RUN, -m RUN or --adapter_path runs/NAME/adapter.")
    return given[0]


# --- olive convert-adapters / olive generate-adapter --------------------------------------------------------------


def add_adapter_options(parser: argparse.ArgumentParser, command: str) -> None:
    """Olive's convert-adapters / generate-adapter options (slmnb's CLI has them too)."""
    if command == "convert-adapters":
        parser.add_argument("-a", "--adapter_path", required=True, metavar="ADAPTER",
                            help="A peft adapter folder, a run's folder or a run's name.")
        parser.add_argument("-o", "--output_path", required=True, metavar="OUT",
                            help="The .onnx_adapter file, or a base model's export folder.")
        parser.add_argument("--dtype", default="float32", help="float32 (what the CPU base models take).")
        parser.add_argument("--quantize_int4", action="store_true", help=argparse.SUPPRESS)
    else:
        parser.add_argument("-m", "--model_name_or_path", required=True, metavar="ONNX_DIR",
                            help="A folder holding model.onnx with the LoRA built in.")
        parser.add_argument("-o", "--output_path", default="optimized-model", metavar="OUT",
                            help="The folder for the switchable model and its adapter (default optimized-model).")
    parser.add_argument("--adapter_format", default="onnx_adapter", help="onnx_adapter.")
    parser.add_argument("--log_level", default=None, help=argparse.SUPPRESS)


def olive_extras(options: dict[str, Any]) -> dict[str, Any]:
    """convert_adapters / generate_adapter keyword arguments: --log_level changes nothing (what is done is printed)."""
    options.pop("log_level", None)
    return options


SAVED_CONFIG = "finetune_config.yaml"


def save_config_file(config: Any) -> str:
    """Olive's --save_config_file: the config that runs, as a YAML file in the working folder; returns the note.

    Not in the run folder, as Olive writes it into its output_path: a run folder is created empty by its run.
    """
    from pathlib import Path

    from slmnb.paths import write_text_atomic

    path = Path(SAVED_CONFIG)
    try:
        write_text_atomic(path, config.to_yaml(include_defaults=False, always=("model_name_or_path",)))
    except OSError as exc:
        raise ConfigError(f"--save_config_file could not write {path} ({(exc.strerror or 'error').lower()}): run "
                          "from a writable folder.") from None
    return f"Saved the config to {path}: slmnb finetune {path} (or its text as a %%finetune body) runs it again."
