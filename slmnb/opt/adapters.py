"""Switchable LoRA adapters for onnxruntime-genai: one base ONNX model, one small `.onnx_adapter` per fine-tune.

The builder writes each LoRA layer as two float MatMuls beside the (quantized) base MatMul. `make_switchable` turns
their weights into graph inputs whose rank is a symbolic dimension, with zero-size defaults: with no adapter
loaded the LoRA path adds zeros and the model is exactly the base model. An adapter file holds the weights for
those inputs, converted straight from peft's safetensors (the same arithmetic as the builder's), so a further
run of the same base converts in milliseconds instead of a new export.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from slmnb.errors import ExportError
from slmnb.paths import temp_sibling

RANK_DIM = "lora_rank"
# The builder's node and weight names for the projections of a Llama-style decoder layer.
_SECTIONS = {"q_proj": "attn", "k_proj": "attn", "v_proj": "attn", "o_proj": "attn",
             "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
_PEFT_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


def lora_nodes(layers: int) -> list[str]:
    """Every LoRA MatMul node the builder can write for `layers` layers: these must stay out of quantization."""
    return [f"/model/layers.{i}/{section}/{module}/lora_{ab}/MatMul"
            for i in range(layers) for module, section in _SECTIONS.items() for ab in "AB"]


def weight_name(layer: int, module: str, ab: str) -> str:
    return f"model.layers.{layer}.{_SECTIONS[module]}.{module}.lora_{ab}.MatMul.weight"


def peft_weights(adapter_dir: Path) -> dict[str, Any]:
    """The LoRA weights of a peft adapter folder as the ONNX inputs want them: [in, r] and [r, out], scaled.

    peft stores A as [r, in] and B as [out, r] and multiplies B's output by alpha / r (alpha / sqrt(r) with
    rsLoRA); ONNX MatMul wants the transposes, and the scale is folded into B.
    """
    import numpy as np
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA" or config.get("use_dora"):
        raise ExportError(f"{adapter_dir} is not a plain LoRA adapter: switchable ONNX adapters need LoRA without "
                          "DoRA; export it with adapters='merged'.")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ExportError(f"{adapter_dir} uses per-layer ranks or alphas: export it with adapters='merged'.")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    weights: dict[str, Any] = {}
    for key, tensor in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        match = _PEFT_KEY.search(key)
        if not match or match.group(2) not in _SECTIONS:
            raise ExportError(f"{adapter_dir} adapts {key!r}, which switchable ONNX adapters do not cover (only the "
                              f"{', '.join(_SECTIONS)} projections): export it with adapters='merged'.")
        layer, module, ab = int(match.group(1)), match.group(2), match.group(3)
        array = tensor.float().numpy().T
        if ab == "B":
            array = array * np.float32(scale)
        weights[weight_name(layer, module, ab)] = np.ascontiguousarray(array, dtype=np.float32)
    if not weights:
        raise ExportError(f"{adapter_dir} holds no LoRA weights.")
    return weights


def make_switchable(model_file: Path, out_dir: Path) -> dict[str, list[int | str]]:
    """Rewrite `model_file` into `out_dir` with every LoRA weight a graph input defaulting to rank 0.

    Returns the inputs made, with their shapes. `out_dir` must not hold a model yet: onnx appends to an
    existing external-data file instead of replacing it.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_file))
    graph = model.graph
    lora = [init for init in graph.initializer if ".lora_" in init.name and init.name.endswith(".MatMul.weight")]
    if not lora:
        raise ExportError(f"{model_file} has no LoRA weights to make switchable.")
    inputs: dict[str, list[int | str]] = {}
    for init in lora:
        if init.data_type != TensorProto.FLOAT:
            raise ExportError(f"The LoRA weight {init.name} was quantized: it must be excluded from quantization.")
        rows, cols = init.dims
        a = ".lora_A." in init.name
        shape: list[int | str] = [rows, RANK_DIM] if a else [RANK_DIM, cols]
        graph.input.append(helper.make_tensor_value_info(init.name, TensorProto.FLOAT, shape))
        graph.initializer.remove(init)
        # An initializer named like an input is that input's default: an empty LoRA, the plain base model.
        graph.initializer.append(helper.make_tensor(init.name, TensorProto.FLOAT, [rows, 0] if a else [0, cols], []))
        inputs[init.name] = shape
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_dir / model_file.name), save_as_external_data=True, all_tensors_to_one_file=True,
              location=model_file.name + ".data", size_threshold=1024)
    return inputs


def check_fits(weights: dict[str, Any], inputs: dict[str, list[int | str]], what: str, base: str) -> None:
    """An adapter fits a base export when each of its weights is a LoRA input there, with the same outer size."""
    missing = sorted(set(weights) - set(inputs))
    if missing:
        raise ExportError(f"{what} adapts layers that {base} has no LoRA input for ({missing[0]} and "
                          f"{len(missing) - 1} more): export it to its own base model with another output folder.")
    for name, array in weights.items():
        want = inputs[name]
        outer = (array.shape[0], want[0]) if want[1] == RANK_DIM else (array.shape[1], want[1])
        if outer[0] != outer[1]:
            raise ExportError(f"{what} does not fit {base}: {name} is {list(array.shape)} where the base model "
                              f"wants {want}, so the adapter was trained on another base model.")


def write_adapter(weights: dict[str, Any], path: Path) -> None:
    """Write an `.onnx_adapter` via a temp file, and read it back: a bad write must never be picked up."""
    import numpy as np
    import onnxruntime as ort

    # OrtValue borrows the numpy buffer: `arrays` keeps every one alive until the file is written.
    arrays = {name: np.ascontiguousarray(array) for name, array in weights.items()}
    values = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in arrays.items()}
    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters(values)
    tmp = temp_sibling(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        adapter.export_adapter(str(tmp))
        back = read_adapter(tmp)
        if set(back) != set(arrays) or any(not np.array_equal(back[n], a) for n, a in arrays.items()):
            raise ExportError(f"The adapter written to {path} did not read back equal: nothing was kept.")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_adapter(path: Path) -> dict[str, Any]:
    import onnxruntime as ort

    try:
        adapter = ort.AdapterFormat.read_adapter(str(path))
    except Exception as exc:
        raise ExportError(f"{path} is not a readable .onnx_adapter file ({exc}): export the run again.") from exc
    # The arrays view memory the AdapterFormat owns: copy them before it is freed.
    return {name: value.numpy().copy() for name, value in adapter.get_parameters().items()}
