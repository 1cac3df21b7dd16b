"""Olive's `convert-adapters` and `generate-adapter`, for any peft adapter and any model-builder ONNX model.

convert-adapters turns a peft LoRA folder into an `.onnx_adapter` whose weights are named as the model builder names
its LoRA inputs: the names slmnb's switchable exports (and generate-adapter below) take, so the file loads into
such a base model with onnxruntime-genai. generate-adapter takes an ONNX model with the LoRA built in (the builder
given an adapter_path, as `olive auto-opt --adapter_path` makes it) and splits it into a base whose LoRA weights are
inputs and the adapter file holding them: Olive's ExtractAdapters.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from slmnb.errors import ExportError
from slmnb.opt import store
from slmnb.opt.adapters import ADAPTER_CONFIG, fitted, make_switchable, peft_weights, write_adapter

SUFFIX = ".onnx_adapter"
ADAPTER_WEIGHTS = "adapter_weights" + SUFFIX  # the name Olive's ExtractAdapters gives the extracted weights


def adapter_command(command: str, options: dict[str, Any]) -> tuple[Any, str]:
    """convert-adapters or generate-adapter from the parsed options of `slmnb` or `%opt`: the result, and the line
    that says what was written."""
    from slmnb.olive.flags import olive_extras

    options = olive_extras(dict(options))
    if command == "convert-adapters":
        path = convert_adapters(options.pop("adapter_path"), options.pop("output_path"), **options)
        return path, f"Exported adapter weights to {path}"
    folder, adapter = generate_adapter(options.pop("model_name_or_path"), options.pop("output_path"), **options)
    return (folder, adapter), f"Base model with LoRA inputs in {folder}; its adapter is {adapter}"


def check_format(adapter_format: str, dtype: str = "float32", quantize_int4: bool = False) -> None:
    """Olive's --adapter_format / --dtype / --quantize_int4: what the CPU base models take, or one sentence."""
    if adapter_format != "onnx_adapter":
        raise ExportError(f"--adapter_format {adapter_format} is not written here: slmnb writes onnx_adapter, the "
                          "file onnxruntime-genai loads (the peft folder's adapter_model.safetensors is the "
                          "safetensors form already).")
    if dtype != "float32":
        raise ExportError(f"--dtype {dtype} does not fit: the CPU base models take float32 LoRA weights; drop it.")
    if quantize_int4:
        raise ExportError("--quantize_int4 does not fit: the CPU base models take float32 LoRA weights (the base "
                          "itself is int4); drop it.")


def adapter_folder(path: str | Path) -> Path:
    """A peft adapter folder from what a user gives: the folder itself, a run's folder, or a run's name."""
    folder = Path(path).expanduser()
    for candidate in (folder, folder / "adapter"):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    if (folder / "config.yaml").is_file() or (not folder.exists() and "/" not in str(path)):
        from slmnb.opt.inputs import check_saved_output, open_run

        run = open_run(path)  # a run's name or folder: its saved adapter, checked whole
        if run.config.method == "full":
            raise ExportError(f"Run {run.name!r} fine-tuned the whole model, so it has no adapter to convert.")
        check_saved_output(run)
        return Path(run.output_path)
    raise ExportError(f"--adapter_path {path} holds no peft adapter ({ADAPTER_CONFIG}): give the folder that "
                      "save_pretrained wrote, a run's folder or a run's name.")


def convert_adapters(adapter_path: str | Path, output_path: str | Path, adapter_format: str = "onnx_adapter",
                     dtype: str = "float32", quantize_int4: bool = False) -> Path:
    """Write the `.onnx_adapter` of a peft LoRA folder; returns its path.

    output_path is a file (Olive adds the suffix when missing) or a folder: a base model exported with switchable
    adapters (then the adapter must fit its LoRA inputs, and goes to its adapters/ folder) or any other folder.
    """
    check_format(adapter_format, dtype, quantize_int4)
    folder = adapter_folder(adapter_path)
    weights = peft_weights(folder)
    out = Path(output_path).expanduser()
    name = folder.parent.name if folder.name == "adapter" else folder.name
    if out.is_dir():
        if (out / store.MANIFEST).is_file():  # a base model's folder: the adapter goes with its others
            out = out / "adapters"
        out = out / f"{store.slug(name)}{SUFFIX}"
    elif not out.name.endswith(SUFFIX):
        out = out.with_name(out.name + SUFFIX)
    base = out.parent.parent if out.parent.name == "adapters" else None
    manifest = store.read_json(base / store.MANIFEST) if base is not None else None
    if manifest and isinstance(manifest.get("lora_inputs"), dict):
        weights = fitted(weights, manifest["lora_inputs"], f"The adapter {folder}", base.name if base else "")
    write_adapter(weights, out)
    return out


def generate_adapter(model_path: str | Path, output_path: str | Path = "optimized-model",
                     adapter_format: str = "onnx_adapter") -> tuple[Path, Path]:
    """Split an ONNX model with its LoRA built in into a switchable base and its adapter file, in output_path.

    Returns (the base model's folder, the adapter file).
    """
    check_format(adapter_format)
    model_file = _model_file(Path(model_path).expanduser())
    manifest = store.read_json(model_file.parent / store.MANIFEST) or {}
    if manifest.get("kind") == "base":
        raise ExportError(f"{model_file.parent} is switchable already: its adapters are in its adapters/ folder "
                          "(convert-adapters adds one).")
    if manifest.get("kind") == "merged":
        raise ExportError(f"{model_file.parent} has the LoRA merged into its weights, so there is no adapter to "
                          "extract: export the run with adapters switchable instead.")
    out = Path(output_path).expanduser()
    if (out / model_file.name).exists():
        raise ExportError(f"{out} holds a model already: give an empty or new output folder.")
    weights = lora_weights(model_file)
    make_switchable(model_file, out)  # its sentence when the model has no LoRA weights
    for item in model_file.parent.iterdir():  # genai_config.json, the tokenizer: what makes it a genai model
        if item.is_file() and not item.name.startswith(model_file.name) and item.name != store.MANIFEST:
            shutil.copy2(item, out / item.name)
    adapter = out / ADAPTER_WEIGHTS
    write_adapter(weights, adapter)
    return out, adapter


def _model_file(path: Path) -> Path:
    if path.is_file() and path.suffix == ".onnx":
        return path
    if (path / "model.onnx").is_file():
        return path / "model.onnx"
    raise ExportError(f"-m {path} is not an ONNX model: give a folder holding model.onnx (as the model builder "
                      "writes it) or the .onnx file.")


def lora_weights(model_file: Path) -> dict[str, Any]:
    """The LoRA MatMul weights built into an ONNX model, by name, as float32 arrays."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_file))
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer
            if ".lora_" in init.name and init.name.endswith(".MatMul.weight")}
