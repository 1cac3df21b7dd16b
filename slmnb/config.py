"""FinetuneConfig: the one configuration object that the magic, the form, the CLI and the Olive import all build.

Field names follow `olive finetune` where it has one. Every mistake a user can make here raises a ConfigError whose
message is one sentence naming the fix; nothing from inside transformers ever reaches the user for a bad value.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from slmnb.checks import (
    coerce_field,
    field_default,
    kind_of,
    short_path,
    short_repr,
)
from slmnb.errors import ConfigError

METHODS = ("lora", "qlora", "full")
PRECISIONS = ("auto", "bf16", "fp32")
BASE_WEIGHTS = ("auto", "int4", "original")
SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "cosine_with_min_lr", "polynomial", "constant",
    "constant_with_warmup", "inverse_sqrt", "warmup_stable_decay",
)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # used with fullmatch: `$` would let a final newline in
MAX_NAME_LENGTH = 100
# Whole numbers beyond this mean a typo; it also keeps every count inside what torch and JavaScript hold exactly.
MAX_INT = 2**31 - 1
# Generation-eval answers this many eval rows at each evaluation unless told: measured on the embedded model's demo
# job to cost about 10% of its training time (BENCHMARKS.md, generation-eval).
DEFAULT_EVAL_GENERATE_SAMPLES = 16
MAX_EVAL_NEW_TOKENS = 256
# The learning rate of a config that gives none, by method. LoRA trains small matrices from zero: 3e-3 is what a
# search over the embedded model picks on the bundled task (Olive's 2e-4 leaves it at 0% after an epoch;
# BENCHMARKS.md, "Search and the defaults"). Full fine-tuning moves every pretrained weight: 2e-5, the usual rate
# for it.
DEFAULT_LEARNING_RATES = {"lora": 3e-3, "qlora": 3e-3, "full": 2e-5}
# TrainingArguments that slmnb sets itself, so training_args may not: the run folder, the device and precision
# (precision auto), the events the dashboard and the run folder are built from, and evaluating and saving at the
# steps the run plans. Each names its reason in the refusal.
RESERVED_TRAINING_ARGS = {
    "output_dir": "slmnb trains into the run folder: set output_dir or name",
    "overwrite_output_dir": "slmnb keeps every run in its own folder: set output_dir or name",
    "use_cpu": "slmnb picks the device itself", "no_cuda": "slmnb picks the device itself",
    "bf16": "set precision (auto, bf16 or fp32)", "fp16": "set precision (auto, bf16 or fp32)",
    "half_precision_backend": "set precision (auto, bf16 or fp32)",
    "report_to": "the dashboard and the run folder are slmnb's report",
    "disable_tqdm": "slmnb shows its own progress", "logging_strategy": "set logging_steps",
    "logging_nan_inf_filter": "slmnb stops on a NaN loss and says so",
    "eval_strategy": "set eval_steps", "evaluation_strategy": "set eval_steps", "save_strategy": "set save_steps",
    "prediction_loss_only": "slmnb's evaluation needs the loss only", "remove_unused_columns": "slmnb prepares "
    "the columns itself", "include_num_input_tokens_seen": "the dashboard's tokens/s counts them",
    "ddp_backend": "slmnb picks gloo on CPU under torchrun", "resume_from_checkpoint": "resume the run instead",
    "push_to_hub": "slmnb works offline; export the run instead", "hub_model_id": "slmnb works offline",
    "hub_token": "slmnb works offline",
}


def _opt(default: Any, help: str, kind: str, *, choices: tuple[str, ...] | None = None,
         low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False,
         empty_is_a_value: bool = False) -> Any:
    """A config field: `kind` is str | int | float | bool | strs (a list of strings) | layers (layer numbers, as text
    such as 15-29) | rows (a list of mappings).

    `empty_is_a_value`: "" is kept as "" instead of clearing the field to its default (None).
    """
    if kind == "int" and high is None:
        high = MAX_INT
    meta = {"help": help, "kind": kind, "choices": choices, "low": low, "high": high, "low_open": low_open,
            "high_open": high_open, "empty_is_a_value": empty_is_a_value}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class FinetuneConfig:
    # model and method
    model_name_or_path: str = _opt(
        "smollm2-135m-instruct",
        "smollm2-135m-instruct (embedded), tiny-llama (random, for tests), a local Hugging Face folder or a hub id.",
        "str")
    method: str = _opt("lora", "lora, qlora (4-bit base model) or full fine-tuning.", "str", choices=METHODS)
    lora_r: int = _opt(8, "LoRA rank.", "int", low=1, high=4096)
    lora_alpha: int = _opt(16, "LoRA scaling numerator (the update is scaled by lora_alpha / lora_r).", "int", low=1,
                           high=65536)
    lora_dropout: float = _opt(0.05, "Dropout on the LoRA input.", "float", low=0.0, high=1.0, high_open=True)
    target_modules: list[str] | None = _opt(
        None, "Modules that get LoRA weights: a list such as [q_proj, v_proj], or all-linear (what empty means).",
        "strs")
    layers_to_transform: str | None = _opt(
        None, "The layers that get LoRA weights, counted from 0, such as 15-29 (Olive's and peft's name); empty means "
        "every layer. Adapting only the top layers spares the backward pass through the layers below them.",
        "layers")
    base_weights: str = _opt(
        "auto", "The base weights LoRA trains on: int4 (as the default int4 ONNX export stores them, so the export "
        "answers as the fine-tune does), original, or auto (int4 for lora, original for qlora and full).", "str",
        choices=BASE_WEIGHTS)
    # data
    data_name: str | None = _opt(
        None, "A bundled dataset name (tones, changelog) or the path of a folder saved with datasets' save_to_disk.",
        "str")
    data_files: list[str] | None = _opt(None, "Local JSON, JSONL, CSV or Parquet files (a list or comma-separated).",
                                        "strs")
    rows: list[dict[str, Any]] | None = _opt(None, "Training rows given inline, as a list of mappings.", "rows")
    train_split: str = _opt("train", "Split to train on; slices such as train[:90%] work.", "str")
    eval_split: str | None = _opt(None, "Split to evaluate on; empty holds out eval_size of the train split.", "str")
    eval_size: float = _opt(0.1, "Fraction of the train split held out for evaluation when eval_split is empty.",
                            "float", low=0.0, high=1.0, high_open=True)
    max_samples: int | None = _opt(None, "Use at most this many training rows.", "int", low=1)
    max_seq_len: int = _opt(512, "Longest tokenized example; longer ones are truncated.", "int", low=8)
    # text
    text_template: str | None = _opt(None, "Olive-style template such as '{phrase} -> {tone}'; loss on all text.",
                                     "str")
    prompt_template: str | None = _opt(None, "Template of the prompt, such as '{phrase}'.", "str")
    response_template: str | None = _opt(None, "Template of the answer, such as '{tone}'; loss on it only.", "str")
    use_chat_template: bool = _opt(
        False, "Render prompt and response as user and assistant messages with the tokenizer's chat template.", "bool")
    system_prompt: str | None = _opt(
        None, "The system message before every prompt of a chat-template run, the same in training, evaluation, "
        "comparison and export: \"\" sends an empty one; unset (null) keeps the chat template's own default, "
        "which for SmolLM2 is 16 more tokens on every row.", "str", empty_is_a_value=True)
    # training
    learning_rate: float | None = _opt(
        None, "Peak learning rate; empty means 3e-3 for lora and qlora, 2e-5 for full fine-tuning.", "float", low=0.0)
    max_steps: int | None = _opt(None, "Optimizer steps to train; overrides num_train_epochs.", "int", low=1)
    num_train_epochs: float = _opt(2.0, "Epochs to train when max_steps is empty.", "float", low=0.0, low_open=True,
                                   high=1e6)
    per_device_train_batch_size: int = _opt(8, "Examples per step on each device.", "int", low=1)
    gradient_accumulation_steps: int = _opt(1, "Batches accumulated per optimizer step.", "int", low=1)
    logging_steps: int = _opt(1, "Report the training loss every this many steps.", "int", low=1)
    eval_steps: int | None = _opt(None, "Evaluate every this many steps; empty means about 10 times a run.", "int",
                                  low=1)
    save_steps: int | None = _opt(None, "Checkpoint every this many steps; empty means at every evaluation.", "int",
                                  low=1)
    lr_scheduler_type: str = _opt("linear", "Learning-rate schedule.", "str", choices=SCHEDULERS)
    warmup_ratio: float = _opt(0.0, "Fraction of the steps spent warming the learning rate up.", "float",
                               low=0.0, high=1.0, high_open=True)
    weight_decay: float = _opt(0.0, "AdamW weight decay.", "float", low=0.0)
    seed: int = _opt(42, "Seed for the data split, shuffling and initialisation.", "int", low=0, high=2**32 - 1)
    gradient_checkpointing: bool = _opt(False, "Trade compute for memory by recomputing activations.", "bool")
    precision: str = _opt("auto", "auto (bf16 where the CPU or GPU supports it), bf16 or fp32.", "str",
                          choices=PRECISIONS)
    early_stopping_patience: int | None = _opt(
        None, "Stop after this many evaluations without a better metric_for_best_model (eval loss by default).",
        "int", low=1)
    training_args: dict[str, Any] | None = _opt(
        None, "Other transformers TrainingArguments for the Trainer, as Olive's training_args, such as "
        "{max_grad_norm: 0.5, adam_beta2: 0.99}; the fields above are set as themselves, not here.", "args")
    loss: str | None = _opt(
        None, "A training loss of your own, 'path/to/file.py:function_name' (the Python API also takes the function): "
        "loss(logits, labels) returns a scalar tensor, the mean over the labelled positions, where logits[:, t] "
        "(batch, positions, vocab) predicts labels[:, t] and -100 marks positions without loss; empty means the "
        "model's own cross-entropy, which eval_loss always is.", "str")
    # evaluation
    metrics: list[str] | None = _opt(
        None, "Scores of generated answers at each evaluation: accuracy, f1, exact_match, bleu, rouge, chrf, or the "
        "path of an evaluate module; empty chooses from the training responses (accuracy + f1 when they take a few "
        "distinct values, else bleu + rouge + chrf).", "strs")
    eval_generate_samples: int | None = _opt(
        None, "Eval rows answered by greedy generation at each evaluation for the metrics, the same rows every "
        f"time; empty means {DEFAULT_EVAL_GENERATE_SAMPLES}, 0 turns generation-eval off.", "int", low=0)
    eval_max_new_tokens: int | None = _opt(
        None, "Longest answer generated for the metrics, in tokens; empty means the longest training response plus "
        f"a quarter (at least 2 tokens more), at most {MAX_EVAL_NEW_TOKENS}.", "int", low=1, high=4096)
    metric_for_best_model: str = _opt(
        "eval_loss", "What early stopping and load_best_model_at_end call better: eval_loss, perplexity, or a score "
        "of the metrics such as accuracy, f1 or rougeL (lower is better for losses and perplexity, higher otherwise).",
        "str")
    load_best_model_at_end: bool = _opt(
        False, "Keep the weights of the best evaluation by metric_for_best_model as the run's output instead of the "
        "last step's (early stopping always does).", "bool")
    # where
    task_name: str | None = _opt(
        None, "The task this run's adapter is for, such as classification or generation (Olive's --task_name): "
        "%opt compare gives each task its own prompts, and the adapters list groups them by base model.", "str")
    output_dir: str | None = _opt(None, "The run folder; empty means runs/<name>.", "str")
    name: str | None = _opt(None, "The run's name; empty means one made from the data, method and time.", "str")

    def __post_init__(self) -> None:
        function: Any = self.loss
        if callable(function):  # slmnb.finetune(..., loss=fn): config.yaml keeps the file that defines it
            from slmnb.training.loss import reference

            self.loss = reference(function)
        for f in fields(self):
            setattr(self, f.name, coerce_field(f, getattr(self, f.name)))
        self._check_combinations()

    @property
    def peak_learning_rate(self) -> float:
        """learning_rate, or the method's default when it is empty (a run's config.yaml names the one it used)."""
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATES[self.method]

    def _check_combinations(self) -> None:
        sources = [n for n in ("data_name", "data_files", "rows") if getattr(self, n)]
        if len(sources) > 1:
            raise ConfigError(f"Give one data source, not {' and '.join(sources)}: keep one of them.")
        if self.text_template and (self.prompt_template or self.response_template):
            raise ConfigError("Give either text_template or prompt_template + response_template, not both.")
        if bool(self.prompt_template) != bool(self.response_template):
            missing = "response_template" if self.prompt_template else "prompt_template"
            raise ConfigError(f"prompt_template and response_template go together: add {missing}.")
        if self.use_chat_template and self.text_template:
            raise ConfigError("use_chat_template needs prompt_template and response_template instead of "
                              "text_template, so the prompt becomes the user message and the response the answer.")
        if self.system_prompt is not None and not self.use_chat_template:
            raise ConfigError("system_prompt is the chat template's system message: set use_chat_template: true, or "
                              "write the instruction into prompt_template.")
        if self.layers_to_transform and self.method == "full":
            raise ConfigError("layers_to_transform picks the layers LoRA adapts, and full fine-tuning trains every "
                              "weight: leave it empty, or use method lora.")
        if self.base_weights == "int4" and self.method != "lora":
            raise ConfigError(f"base_weights int4 is for method lora: {self.method} "
                              + ("trains on its own 4-bit base" if self.method == "qlora" else "changes every weight")
                              + "; set base_weights to original or auto.")
        if self.name is not None:
            check_name(self.name)
        if self.loss is not None:
            from slmnb.training.loss import split

            # Its shape only: the file is read when a run starts, since a saved run's config may outlive the file.
            self.loss = ":".join(split(self.loss))
        self._check_evaluation()

    def _check_evaluation(self) -> None:
        from slmnb import metrics

        if self.metrics:
            self.metrics = metrics.check_names(self.metrics)  # built-in names in their spelling, once each
        if self.text_template and self.metrics:
            raise ConfigError("metrics score generated answers against the response_template, and a text_template "
                              "run has none: use prompt_template + response_template, or leave metrics empty.")
        if self.text_template and self.eval_generate_samples:
            raise ConfigError("eval_generate_samples scores generated answers against the response_template, and a "
                              "text_template run has none: use prompt_template + response_template, or set it to 0.")
        check_metric_for_best_model(self, self.metrics)

    # --- building --------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FinetuneConfig:
        if not isinstance(values, dict):
            raise ConfigError("The config must be a mapping of keys to values, such as 'max_steps: 60'.")
        names = [f.name for f in fields(cls)]
        for key in values:
            if key not in names:
                raise ConfigError(unknown_key_message(key, names))
        return cls(**values)

    @classmethod
    def from_text(cls, text: str) -> FinetuneConfig:
        """A YAML or JSON document (JSON is YAML, so one parser reads both)."""
        return cls.from_dict(parse_yaml(text) or {})

    @classmethod
    def from_file(cls, path: str | Path) -> FinetuneConfig:
        return cls.from_dict(read_config_file(path))

    def replace(self, **overrides: Any) -> FinetuneConfig:
        """A copy with some fields changed, checked like any other config."""
        return FinetuneConfig.from_dict({**self.to_dict(), **overrides})

    # --- writing ---------------------------------------------------------------------------------------

    def to_dict(self, include_defaults: bool = True, always: tuple[str, ...] = ()) -> dict[str, Any]:
        """The fields as a mapping; without defaults, only what differs from them (and the `always` fields)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if include_defaults or value != field_default(f) or f.name in always:
                out[f.name] = value
        return out

    def to_yaml(self, include_defaults: bool = True, always: tuple[str, ...] = ()) -> str:
        import yaml

        class Dumper(yaml.SafeDumper):
            pass

        def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
            # Templates span lines: a block scalar reads like the prompt itself, not like an escaped string.
            style = "|" if "\n" in value else None
            return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

        Dumper.add_representer(str, text)
        return yaml.dump(self.to_dict(include_defaults, always), Dumper=Dumper, sort_keys=False, allow_unicode=True,
                         width=120)


def load_config(source: FinetuneConfig | dict[str, Any] | str | Path | None = None,
                **overrides: Any) -> FinetuneConfig:
    """Build a config from a config, a mapping, a config file's path or YAML/JSON text, then apply overrides."""
    if source is None:
        base: dict[str, Any] = {}
    elif isinstance(source, FinetuneConfig):
        if not overrides:
            return copy.copy(source)  # checked when it was built: no need to build it again
        base = source.to_dict()
    elif isinstance(source, dict):
        base = dict(source)
    elif isinstance(source, Path) or (isinstance(source, str) and _is_path(source)):
        base = read_config_file(source)
    elif isinstance(source, str):
        base = parse_yaml(source) or {}
        if not isinstance(base, dict):
            raise ConfigError("The config must be a mapping of keys to values, such as 'max_steps: 60'.")
    else:
        raise ConfigError(f"A config is a mapping, a YAML/JSON path or text, not {type(source).__name__}.")
    return FinetuneConfig.from_dict({**base, **overrides})


def _is_path(text: str) -> bool:
    """One line naming a file, or shaped like a path rather than like YAML ('run.yml', not 'max_steps: 5').

    One line of YAML that is not a mapping is never a config, so a line that does not look like YAML is a path:
    `slmnb finetune job.txt` then says the file is missing or not a mapping, instead of reading 'job.txt' as YAML.
    """
    text = text.strip()
    if not text or "\n" in text:
        return False
    try:
        if Path(os.path.expanduser(text)).is_file():
            return True
    except (OSError, ValueError):  # a name too long for the file system, or with a NUL in it
        pass
    return not (text.startswith(("{", "[", "- ", "#")) or re.search(r":(\s|$)", text))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON file; every way the file can be wrong is one sentence naming it."""
    shown = short_path(path)
    try:
        text = Path(os.path.expanduser(str(path))).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"Config file {shown} does not exist: check the path.") from None
    except IsADirectoryError:
        raise ConfigError(f"Config file {shown} is a folder: give the YAML or JSON file inside it.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Config file {shown} is not UTF-8 text: save it as a UTF-8 YAML or JSON file.") from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "it cannot be opened"
        raise ConfigError(f"Config file {shown} cannot be read ({reason.lower()}): check the path.") from None
    values = parse_yaml(text, f"Config file {shown}") or {}
    if not isinstance(values, dict):
        raise ConfigError(f"Config file {shown} must hold a mapping of keys to values, such as 'max_steps: 60', "
                          f"not {kind_of(values)}.")
    return values


def parse_yaml(text: str, what: str = "The config") -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"{what} is not valid YAML ({problem}{where}): check the indentation and quote "
                          "values that contain ':' or '#'.") from None
    except RecursionError:
        raise ConfigError(f"{what} nests too deeply to read: flatten it into keys and values.") from None
    except (ValueError, TypeError, OverflowError):  # a tagged value such as !!int x, or a number too long to hold
        raise ConfigError(f"{what} holds a value that YAML cannot read, such as a tagged '!!int x' or a number "
                          "with thousands of digits: write it plainly.") from None


def check_name(name: str) -> None:
    """A run's name becomes its folder's name: letters, digits, '.', '_' and '-', and not too long for one."""
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"name is {len(name)} characters long: keep it to {MAX_NAME_LENGTH}, such as 'tones-lora'.")
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"name {short_repr(name)} can only use letters, digits, '.', '_' and '-', starting with a "
                          "letter or digit, such as 'tones-lora'.")


def check_metric_for_best_model(config: FinetuneConfig, names: list[str] | None) -> None:
    """metric_for_best_model must be a score the run produces: eval_loss and perplexity always, a generation score
    only when generation-eval is on and one of `names` (None: not settled yet, so any built-in metric's) gives it."""
    from slmnb import metrics

    key = config.metric_for_best_model.removeprefix("eval_")
    if key in ("loss", "perplexity"):
        return
    listed = list(names) if names is not None else list(metrics.BUILTIN)
    keys = [k for name in listed for k in metrics.keys(name)]
    if names is not None and any(not metrics.keys(name) for name in listed):
        return  # a user's evaluate module tells its keys only when it runs: the run checks them then
    if key not in keys:
        shown = ", ".join(dict.fromkeys(["eval_loss", "perplexity", *keys]))
        close = difflib.get_close_matches(key, keys, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        where = "this run's metrics" if names is not None else "any metric"
        raise ConfigError(f"metric_for_best_model {short_repr(config.metric_for_best_model)} is not a score of "
                          f"{where}{hint}: use one of {shown}.")
    if config.eval_generate_samples == 0:
        raise ConfigError(f"metric_for_best_model {key} comes from generation-eval, which eval_generate_samples 0 "
                          "turns off: raise eval_generate_samples, or use eval_loss.")


def check_field(name: str, value: Any) -> Any:
    """One field's value checked on its own (the form flags each field beside it); returns the typed value."""
    by_name = {f.name: f for f in fields(FinetuneConfig)}
    if name not in by_name:
        raise ConfigError(unknown_key_message(name, list(by_name)))
    return coerce_field(by_name[name], value)


def unknown_key_message(key: Any, names: list[str]) -> str:
    if not isinstance(key, str):
        return f"Config keys are field names such as max_steps, not {kind_of(key)} ({short_repr(key)})."
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    if close:
        return f"Unknown config key {short_repr(key)}: did you mean {close[0]}?"
    return f"Unknown config key {short_repr(key)}: valid keys are {', '.join(names)}."
