"""Olive run configs, as they are: one becomes slmnb's FinetuneConfig plus the export that follows training.

Olive's format changed over the years, and files from every period are read: passes and engine settings at the top
level or wrapped in `engine` / `config`, each pass's settings flat or under `config`, input_model as HfModel or the
older PyTorchModel with hf_config, and the data config shapes olive_data reads. What cannot apply here (AzureML,
user scripts, GPU-only passes, DirectML) is kept in `OliveJob.ignored`, one sentence each, never dropped silently.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmnb.checks import kind_of, short_repr
from slmnb.config import FinetuneConfig
from slmnb.errors import ConfigError
from slmnb.olive.olive_data import data_configs_by_name
from slmnb.olive.olive_evaluators import answer_templates, read_evaluators, read_search
from slmnb.olive.olive_passes import TRAINING, kind, mapping, training_pass

# Keys of an Olive run config across its periods; the engine's may also sit at the top level.
ENGINE_KEYS = ("search_strategy", "host", "target", "evaluator", "cache_dir", "cache_config", "output_dir",
               "output_name", "packaging_config", "clean_cache", "clean_evaluation_cache", "enable_shared_cache",
               "log_severity_level", "ort_log_severity_level", "ort_py_log_severity_level", "log_to_file",
               "evaluate_input_model", "plot_pareto_frontier", "no_artifacts", "execution_providers",
               "ep_config", "device", "accelerators")
TOP_KEYS = ("input_model", "passes", "data_configs", "data_root", "pass_flows", "systems", "evaluators", "engine",
            "workflow_id", "azureml_client", "workflow_host", "auto_optimizer_config", "builds",
            "max_concurrent_builds", "config", "verbose")
MARKERS = ("input_model", "passes", "data_configs")
EXPORTING = ("modelbuilder", "mergeadapterweights", "extractadapters")
# ONNX passes that slmnb's export does in its own way (ModelBuilder from onnxruntime-genai, int4 or int8 weights).
ONNX_PASSES = {"onnxconversion": "fp32", "onnxmatmul4quantizer": "int4", "onnxbnb4quantization": "int4",
               "onnxblockwisertnquantization": "int4", "onnxquantization": "int8", "onnxdynamicquantization": "int8",
               "onnxstaticquantization": "int8", "orttransformersoptimization": None, "onnxpeepholeoptimizer": None,
               "onnxfloattofloat16": None, "orttransformersoptimization_fp16": None, "ortperftuning": None,
               "sessionparamstuning": None, "ortsessionparamstuning": None}
GPU_PASSES = ("gptqquantizer", "gptq", "autoawqquantizer", "awq", "sparsegpt", "torchtrtconversion", "quarot",
              "spinquant", "slicegpt", "tensorrtconversion", "qairt", "openvinoconversion", "inccuantization")


@dataclass(frozen=True)
class OliveJob:
    """What an Olive run config becomes: the run's config, the export after it, a search, and what was ignored."""

    config: FinetuneConfig
    export: dict[str, Any] | None = None  # kwargs of slmnb.opt.export.export: precision, adapters
    search: dict[str, Any] | None = None  # search_strategy / search_space / objective, as parse_search reads them
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (dotted key path, what slmnb does instead)

    def search_values(self) -> dict[str, Any]:
        """The search as slmnb.search takes it: the fixed fields (not the searched ones) and the search keys."""
        if not self.search:
            return {}
        fixed = self.config.to_dict(include_defaults=False)
        return {**{k: v for k, v in fixed.items() if k not in self.search["search_space"]}, **self.search}


def is_olive_config(values: Any) -> bool:
    """An Olive run config names input_model, passes or data_configs (maybe inside `engine` / `config`)."""
    if not isinstance(values, dict):
        return False
    if any(key in values for key in MARKERS):
        return True
    return any(isinstance(values.get(k), dict) and any(m in values[k] for m in MARKERS) for k in ("config", "engine"))


def olive_values(source: Any) -> dict[str, Any] | None:
    """The mapping of an Olive run config given as a mapping, a YAML/JSON file's path or text; None for anything
    else (a FinetuneConfig, or a file or text that is a slmnb config), which load_config then reads as before."""
    from slmnb.config import parse_yaml, read_config_file

    if isinstance(source, dict):
        return source if is_olive_config(source) else None
    if isinstance(source, Path) or (isinstance(source, str) and _is_file(source)):
        values = read_config_file(source)
    elif isinstance(source, str):
        try:
            values = parse_yaml(source)
        except ConfigError:  # load_config says what is wrong with it, as for any config text
            return None
    else:
        return None
    return values if is_olive_config(values) else None


def _is_file(text: str) -> bool:
    try:
        return "\n" not in text.strip() and Path(os.path.expanduser(text.strip() or ".")).is_file()
    except (OSError, ValueError):  # a name too long for the file system, or with a NUL in it: text, not a path
        return False


def read_olive_config(values: dict[str, Any], *, overrides: dict[str, Any] | None = None) -> OliveJob:
    """The OliveJob of an Olive run config; `overrides` are FinetuneConfig fields that win over the config's (the
    magic line's --model_name_or_path, say). Every mistake is one ConfigError sentence naming the key."""
    if not isinstance(values, dict):
        raise ConfigError(f"An Olive run config is a mapping (input_model, data_configs, passes), not "
                          f"{kind_of(values)}.")
    overrides = dict(overrides or {})
    ignored: list[tuple[str, str]] = []
    top = _unwrap(values)
    engine = {k: top[k] for k in ENGINE_KEYS if k in top}
    if "engine" in top:
        nested = mapping(top["engine"], "engine")
        engine.update(nested)
        for key in nested:
            if key not in ENGINE_KEYS:  # Olive refuses an engine key it does not know
                close = difflib.get_close_matches(str(key), ENGINE_KEYS, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]}?" if close else "Olive itself would refuse it, so remove it."
                raise ConfigError(f"engine key {short_repr(key)} is not one Olive knows: {hint}")
    fields_: dict[str, Any] = {}
    if "model_name_or_path" not in overrides:
        fields_["model_name_or_path"] = _model(top.get("input_model"), ignored)
    elif "input_model" in top:
        ignored.append(("input_model", f"--model_name_or_path {overrides['model_name_or_path']} replaces it"))
    data = data_configs_by_name(top.get("data_configs"), "data_configs")
    passes = _selected_passes(top, ignored)
    training = [(name, p) for name, p in passes if kind(p) in TRAINING]
    if not training:
        raise ConfigError("The Olive config has no LoRA or QLoRA pass: add one to passes (type: LoRA, with "
                          "train_data_config), since slmnb fine-tunes and then exports.")
    for name, _ in training[1:]:
        ignored.append((f"passes.{name}", f"slmnb trains one adapter per run: the first LoRA pass "
                                          f"({training[0][0]}) trains"))
    searchable: dict[str, Any] = {}
    training_pass(training[0], data, fields_, searchable, ignored)
    _data_source(fields_, overrides, ignored)
    export = _export(passes, ignored)
    metrics, objective = read_evaluators(top.get("evaluators"), engine, ignored)
    if metrics and fields_.get("text_template"):
        if not answer_templates(fields_, metrics, ignored):
            objective = None
    elif metrics:
        fields_["metrics"] = metrics
    search = read_search(engine.get("search_strategy"), searchable, objective, ignored)
    _engine(engine, top, ignored)
    try:
        config = FinetuneConfig.from_dict({**fields_, **overrides})
    except ConfigError as exc:
        raise ConfigError(f"From the Olive config: {exc}") from None
    return OliveJob(config=config, export=export, search=search, ignored=ignored)


def _unwrap(values: dict[str, Any]) -> dict[str, Any]:
    """The top level with an older `config` wrapper opened, and every key checked as Olive checks it."""
    top = dict(values)
    if isinstance(top.get("config"), dict) and any(m in top["config"] for m in MARKERS):
        top = {**{k: v for k, v in top.items() if k != "config"}, **top["config"]}
    for key in top:
        if not isinstance(key, str) or (key not in TOP_KEYS and key not in ENGINE_KEYS):
            close = difflib.get_close_matches(str(key), [*TOP_KEYS, *ENGINE_KEYS], n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "Olive itself would refuse it, so remove it."
            raise ConfigError(f"Olive config key {short_repr(key)} is not one Olive knows: {hint}")
    return top


def _model(raw: Any, ignored: list[tuple[str, str]]) -> str:
    """model_name_or_path from HfModel{model_path} or the older PyTorchModel{config: {hf_config: {model_name}}}."""
    if raw is None:
        raise ConfigError("The Olive config has no input_model: add 'input_model: {type: HfModel, model_path: "
                          "smollm2-135m-instruct}', or give --model_name_or_path.")
    model = mapping(raw, "input_model")
    model_type = str(model.get("type", "HfModel"))
    inner = mapping(model.get("config"), "input_model.config")
    settings = {**{k: v for k, v in model.items() if k not in ("type", "config")}, **inner}
    if model_type.lower() not in ("hfmodel", "pytorchmodel", "hf_model"):
        raise ConfigError(f"input_model type {short_repr(model_type)} is not a Hugging Face model: slmnb fine-tunes "
                          "HfModel inputs, so point model_path at a Hugging Face folder.")
    hf = mapping(settings.get("hf_config"), "input_model.config.hf_config")
    path = settings.get("model_path") or hf.get("model_name")
    if not isinstance(path, str) or not path.strip():
        raise ConfigError("input_model needs model_path (or hf_config.model_name) naming the model, such as "
                          f"smollm2-135m-instruct, not {short_repr(path)}.")
    for key, value in {**settings, **hf}.items():
        if key in ("model_path", "model_name", "hf_config", "task") or value in (None, {}, []):
            continue
        if key in ("load_kwargs", "from_pretrained_args") and isinstance(value, dict):
            for arg in value:
                reason = ("slmnb never runs a model's own code; it loads the model with transformers' classes"
                          if arg == "trust_remote_code" else "slmnb loads the model itself, in fp32 on the CPU")
                ignored.append((f"input_model.{key}.{arg}", reason))
        elif key == "adapter_path":
            ignored.append(("input_model.adapter_path", "slmnb trains a new adapter from the base model"))
        else:
            ignored.append((f"input_model.{key}", "a user_script or loading detail slmnb does not use: it loads "
                                                  "model_path with transformers"))
    return _local_model(path.strip(), ignored)


def _local_model(path: str, ignored: list[tuple[str, str]]) -> str:
    """A model slmnb can open here: its own names, a local folder, a hub id already in the local cache, or, offline,
    the hub id of the embedded model (Olive's SmolLM2 tutorials name it so), which becomes its embedded copy."""
    from slmnb.models import EMBEDDED_MODEL, TINY_MODEL, embedded_copy_of

    if path in (EMBEDDED_MODEL, TINY_MODEL) or Path(path).expanduser().is_dir():
        return path
    offline = os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
    if offline and "/" in path:
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(path, local_files_only=True)
            return path
        except Exception:  # not in the local hub cache, so it cannot be opened offline
            pass
    embedded = embedded_copy_of(path)
    if offline and embedded:
        ignored.append(("input_model.model_path", f"{path} is on the Hugging Face Hub, which is offline here: slmnb "
                                                  f"trains its embedded copy, {embedded} (a Q4_1 GGUF dequantized, "
                                                  "so the weights differ by that rounding)"))
        return embedded
    if offline or "/" not in path:
        raise ConfigError(f"input_model {short_repr(path)} is not a local folder, and the Hugging Face Hub is "
                          f"offline here: point model_path at a local model folder, or use {EMBEDDED_MODEL} (the "
                          "embedded model).")
    return path


def _data_source(fields_: dict[str, Any], overrides: dict[str, Any], ignored: list[tuple[str, str]]) -> None:
    """The line's data (--data_files, --data_name) replaces the config's, which a Hub dataset needs here."""
    hub = fields_.pop("hub_dataset", None)
    if any(key in overrides for key in ("data_name", "data_files", "rows")):
        for key in ("data_name", "data_files", "rows"):
            fields_.pop(key, None)
        shown = hub[0] if hub else "the data configs' data"
        ignored.append(("data_configs", f"the given data replaces {shown}; the templates and lengths still apply"))
    elif hub:
        name, path = hub
        raise ConfigError(f"{path} data_name {short_repr(name)} is a Hugging Face Hub dataset, which slmnb does not "
                          "download: give local files with --data_files on the line (or data_name: json with "
                          "data_files in the config), or a folder saved with datasets' save_to_disk.")


def _selected_passes(top: dict[str, Any], ignored: list[tuple[str, str]]) -> list[tuple[str, dict[str, Any]]]:
    """The passes in run order, each as {type, config keys flat}; pass_flows picks them (its first flow)."""
    raw = mapping(top.get("passes"), "passes")
    passes: dict[str, dict[str, Any]] = {}
    for name, spec in raw.items():
        if isinstance(spec, list):  # the current schema allows several configs per pass name: the first runs
            if not spec:
                continue
            for extra in range(1, len(spec)):
                ignored.append((f"passes.{name}[{extra}]", "slmnb runs one config per pass: the first one"))
            spec = spec[0]
        spec = mapping(spec, f"passes.{name}")
        if not isinstance(spec.get("type"), str):
            raise ConfigError(f"passes.{name} needs a type, such as LoRA, ModelBuilder or MergeAdapterWeights.")
        inner = mapping(spec.get("config"), f"passes.{name}.config")
        passes[str(name)] = {**{k: v for k, v in spec.items() if k != "config"}, **inner}
    flows = top.get("pass_flows")
    order = list(passes)
    if flows is not None:
        if not isinstance(flows, list) or not flows or not all(isinstance(f, list) for f in flows):
            raise ConfigError("pass_flows must be a list of pass name lists, such as [[lora, merge, builder]].")
        for number in range(1, len(flows)):
            ignored.append((f"pass_flows[{number}]", "slmnb runs one flow: the first"))
        order = [str(n) for n in flows[0]]
        for name in order:
            if name not in passes:
                raise ConfigError(f"pass_flows names the pass {short_repr(name)}, which passes has not: the passes "
                                  f"are {', '.join(passes) or 'none'}.")
        for name in passes:
            if name not in order:
                ignored.append((f"passes.{name}", "not in the first pass flow, so it does not run"))
    selected = []
    for name in order:
        spec = passes[name]
        type_ = kind(spec)
        if type_ in TRAINING or type_ in EXPORTING:
            selected.append((name, spec))
        elif type_ in ONNX_PASSES:
            ignored.append((f"passes.{name}", f"slmnb's export converts and quantizes with onnxruntime-genai's model "
                                              f"builder instead of {spec['type']}: see the export line"))
        elif type_ in GPU_PASSES or "cuda" in type_:
            ignored.append((f"passes.{name}", f"{spec['type']} needs a GPU: slmnb runs on the CPU, and its export "
                                              "quantizes to int4 there"))
        else:
            close = difflib.get_close_matches(type_, [*TRAINING, *EXPORTING], n=1, cutoff=0.8)
            if close:
                raise ConfigError(f"passes.{name} type {short_repr(spec['type'])} is not an Olive pass: did you "
                                  f"mean {_PASS_NAMES[close[0]]}?")
            ignored.append((f"passes.{name}", f"slmnb has no {spec['type']} pass; it fine-tunes (LoRA, QLoRA) and "
                                              "exports (ModelBuilder, MergeAdapterWeights, ExtractAdapters)"))
    return selected


_PASS_NAMES = {"lora": "LoRA", "qlora": "QLoRA", "loftq": "LoftQ", "dora": "DoRA", "loha": "LoHa", "lokr": "LoKr",
               "modelbuilder": "ModelBuilder", "mergeadapterweights": "MergeAdapterWeights",
               "extractadapters": "ExtractAdapters"}


def _export(passes: list[tuple[str, dict[str, Any]]], ignored: list[tuple[str, str]]) -> dict[str, Any] | None:
    """ModelBuilder (precision), MergeAdapterWeights (merged) and ExtractAdapters (switchable) as one export."""
    kinds = {kind(spec): (name, spec) for name, spec in passes}
    if not any(k in kinds for k in EXPORTING):
        return None
    export: dict[str, Any] = {"precision": "int4", "adapters": "switchable"}
    if "modelbuilder" in kinds:
        name, spec = kinds["modelbuilder"]
        precision = str(spec.get("precision", "fp32")).lower()  # Olive's ModelBuilder defaults to fp32
        if precision in ("int4", "int8", "fp32"):
            export["precision"] = precision
        else:
            ignored.append((f"passes.{name}.precision", f"{precision} is not a CPU export precision: slmnb exports "
                                                        "int4 (the CPU's fastest); int8 and fp32 are the others"))
        for key in spec:
            if key not in ("type", "precision") and spec[key] not in (None, {}, []):
                ignored.append((f"passes.{name}.{key}", "slmnb's export sets the model builder's options itself "
                                                        "(CPU, int4 block size 32)"))
    if "mergeadapterweights" in kinds:
        export["adapters"] = "merged"
        if "extractadapters" in kinds:
            ignored.append((f"passes.{kinds['extractadapters'][0]}", "MergeAdapterWeights merges the adapter into "
                                                                      "the model, so there is none to extract"))
    return export


def _engine(engine: dict[str, Any], top: dict[str, Any], ignored: list[tuple[str, str]]) -> None:
    """Where Olive would run and keep things: slmnb runs here, on the CPU, into runs/ and onnx/."""
    for key, value in engine.items():
        if key in ("search_strategy", "evaluator") or value in (None, False, "", [], {}):
            continue
        where = key if key in top else f"engine.{key}"
        if key in ("host", "target"):
            ignored.append((where, "slmnb runs locally on this machine's CPU"))
        elif key in ("output_dir", "output_name", "cache_dir", "cache_config", "packaging_config"):
            ignored.append((where, "slmnb keeps the run in runs/<name> and the export in onnx/"))
        elif key in ("execution_providers", "ep_config", "device", "accelerators"):
            ignored.append((where, "slmnb exports for the CPUExecutionProvider" +
                            (" (DirectML is Windows-GPU only)" if "dml" in str(value).lower() else "")))
        else:
            ignored.append((where, "an Olive engine setting slmnb has no use for"))
    for key in ("systems", "azureml_client", "workflow_host", "auto_optimizer_config", "builds", "data_root"):
        if top.get(key):
            dml = " (DirectML is Windows-GPU only)" if "dml" in str(top[key]).lower() else ""
            ignored.append((key, "slmnb runs locally on this machine's CPU, with local files" + dml))


def describe(job: OliveJob) -> str:
    """The --dry-run text: the slmnb config, the export that follows, the search, and each ignored key."""
    lines = ["slmnb config (from the Olive config):"]
    lines += ["  " + line for line in job.config.to_yaml(include_defaults=False).rstrip().splitlines()]
    if job.export:
        lines.append(f"export after training: precision {job.export['precision']}, adapters "
                     f"{job.export['adapters']} (as %opt export RUN --precision {job.export['precision']} "
                     f"--adapters {job.export['adapters']})")
    else:
        lines.append("export after training: none (no ModelBuilder, MergeAdapterWeights or ExtractAdapters pass)")
    if job.search:
        from slmnb.tuning.spec import parse_search

        _, spec = parse_search(job.search_values())
        if spec is not None:
            lines.append(f"search: {spec.describe()}")
    if job.ignored:
        lines.append("ignored:")
        lines += [f"  {key}: {reason}." for key, reason in job.ignored]
    return "\n".join(lines)
