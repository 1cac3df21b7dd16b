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
from slmnb.opt.telemetry import telemetry_off
from slmnb.paths import temp_sibling
from slmnb.weightfiles import read_header

RANK_DIM = "lora_rank"
# The builder's node and weight names for the projections of a Llama-style decoder layer.
_SECTIONS = {"q_proj": "attn", "k_proj": "attn", "v_proj": "attn", "o_proj": "attn",
             "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
_PEFT_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
RETRAIN = "resume the run or train it again to save a complete adapter, then export"
# Architectures whose decoder layers have the q/k/v/o and gate/up/down projections that `projection_sizes` knows.
_LLAMA_STYLE = ("llama", "mistral", "qwen2", "qwen3")


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

    config = read_adapter_config(adapter_dir)
    if config.get("peft_type") != "LORA" or config.get("use_dora"):
        raise ExportError(f"{adapter_dir} is not a plain LoRA adapter: switchable ONNX adapters need LoRA without "
                          "DoRA; export it with adapters='merged'.")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ExportError(f"{adapter_dir} uses per-layer ranks or alphas: export it with adapters='merged'.")
    r, alpha = lora_rank(adapter_dir, config), config.get("lora_alpha")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise ExportError(f"{adapter_dir / ADAPTER_CONFIG} has no usable lora_alpha: {RETRAIN}.")
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    weights: dict[str, Any] = {}
    for key, tensor in _load_tensors(adapter_dir / ADAPTER_WEIGHTS).items():
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
        raise ExportError(f"{adapter_dir} holds no LoRA weights: {RETRAIN}.")
    return weights


def every_layer(weights: dict[str, Any], layers: int) -> list[str]:
    """The LoRA inputs of a base model built for these weights: their projections on every one of `layers` layers.

    An adapter of some layers only (layers_to_transform) then shares its base with the every-layer adapters of the
    same projections, so one base build (a minute for SmolLM2) serves both. Its file brings zeros for the layers it
    leaves alone (fitted): on SmolLM2 at rank 16 those LoRA MatMuls are about 4% of a layer's FLOPs.
    """
    modules = sorted({name.split(".")[4] for name in weights})  # model.layers.N.<section>.<module>.lora_X...
    return [weight_name(layer, module, ab) for layer in range(layers) for module in modules for ab in "AB"]


def spread_over_every_layer(adapter_dir: Path, layers: int, out_dir: Path) -> Path:
    """A peft adapter folder the builder makes every layer's LoRA MatMuls from: `adapter_dir` itself when it
    adapts every layer, else a copy in `out_dir` with zeros on the other layers and no layers_to_transform.

    The builder loads the adapter through peft, which puts LoRA only on the layers its config names; the values
    do not matter, since make_switchable turns every LoRA weight into an input with an empty default.
    """
    import torch
    from safetensors.torch import save_file

    config = read_adapter_config(adapter_dir)
    tensors = _load_tensors(adapter_dir / ADAPTER_WEIGHTS)
    templates: dict[str, Any] = {}  # each (module, A or B) once: its key with {} for the layer, and a tensor
    for key, tensor in tensors.items():
        match = _PEFT_KEY.search(key)
        if match:
            templates.setdefault(key[:match.start(1)] + "{}" + key[match.end(1):], tensor)
    spread = {key: tensors[key] if key in tensors else torch.zeros_like(like)
              for template, like in templates.items() for key in map(template.format, range(layers))}
    if len(spread) == len(tensors):
        return adapter_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({key: tensor.contiguous() for key, tensor in spread.items()}, str(out_dir / ADAPTER_WEIGHTS))
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps({**config, "layers_to_transform": None, "layers_pattern": None}),
                                          encoding="utf-8")
    return out_dir


def _load_tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    safetensors_shapes(path)  # a cut-short file is one sentence, not the loader's own error
    try:
        return load_file(str(path))
    except Exception as exc:  # the header was fine; the loader still may refuse (an unknown dtype, a race)
        raise ExportError(f"{path} cannot be read as safetensors: {RETRAIN}.") from exc


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """A saved peft adapter's config, with every way it can be missing or broken turned into one sentence."""
    path = adapter_dir / ADAPTER_CONFIG
    if not path.is_file():
        try:
            empty = not any(adapter_dir.iterdir())
        except OSError:
            empty = True
        state = "is empty" if empty else f"has no {ADAPTER_CONFIG}"
        raise ExportError(f"The adapter folder {adapter_dir} {state}, so the run's adapter was never saved "
                          f"completely: {RETRAIN}.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        config = None
    if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
        raise ExportError(f"{path} is damaged (it is not a peft adapter config): {RETRAIN}.")
    return config


def lora_rank(adapter_dir: Path, config: dict[str, Any]) -> int:
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ExportError(f"{adapter_dir / ADAPTER_CONFIG} has no usable rank r: {RETRAIN}.")
    return r


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Each tensor's shape, from a safetensors file's header, checked against the file's length.

    Reads a few kilobytes, not the weights: a missing, cut-short or garbled file is one sentence before any
    minute-long work starts.
    """
    if not path.is_file():
        raise ExportError(f"{path} is missing: {RETRAIN}.")
    found = read_header(path)
    try:
        if found is not None and path.stat().st_size == found[1]:
            return found[0]
    except OSError:
        pass
    raise ExportError(f"{path} is truncated or damaged (its size does not match its header): {RETRAIN}.")


def projection_sizes(base_config: dict[str, Any]) -> dict[str, tuple[int, int]] | None:
    """(in, out) features of each projection of a Llama-style decoder layer, or None for another architecture."""
    if base_config.get("model_type") not in _LLAMA_STYLE:
        return None
    try:
        hidden, heads = int(base_config["hidden_size"]), int(base_config["num_attention_heads"])
        kv_heads = int(base_config.get("num_key_value_heads") or heads)
        head_dim = int(base_config.get("head_dim") or hidden // heads)
        inner = int(base_config["intermediate_size"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    q, kv = heads * head_dim, kv_heads * head_dim
    return {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (q, hidden),
            "gate_proj": (hidden, inner), "up_proj": (hidden, inner), "down_proj": (inner, hidden)}


def check_base_fits(shapes: dict[str, list[int]], base_config: dict[str, Any], adapter_dir: Path,
                    base: str) -> None:
    """The LoRA's layers, modules and sizes are those of the base model, or one sentence saying whose they are.

    Checked on the safetensors header before the builder starts: otherwise an adapter of another model fails
    a minute later inside the builder, in peft's words.
    """
    sizes = projection_sizes(base_config)
    layers = base_config.get("num_hidden_layers")
    fix = f"export it with the model it was trained on (model_name_or_path in the run's config.yaml, now {base})"
    for key, shape in shapes.items():
        match = _PEFT_KEY.search(key)
        if sizes is None or match is None:
            continue
        layer, module, ab = int(match.group(1)), match.group(2), match.group(3)
        if module not in sizes:
            raise ExportError(f"{adapter_dir} adapts {module} modules, which {base} does not have, so the adapter "
                              f"was trained on another base model: {fix}.")
        if isinstance(layers, int) and layer >= layers:
            raise ExportError(f"{adapter_dir} adapts layer {layer} where {base} has {layers} layers, so the adapter "
                              f"was trained on another base model: {fix}.")
        inputs, outputs = sizes[module]
        # peft stores A as [r, in] and B as [out, r].
        side, expected = ("inputs", inputs) if ab == "A" else ("outputs", outputs)
        got = (shape[1] if ab == "A" else shape[0]) if len(shape) == 2 else None
        if got != expected:
            raise ExportError(f"{adapter_dir} does not fit {base}: its layer {layer} {module} has {got} {side} where "
                              f"{base} has {expected}, so the adapter was trained on another base model: {fix}.")


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


def fitted(weights: dict[str, Any], inputs: dict[str, list[int | str]], what: str, base: str) -> dict[str, Any]:
    """The adapter's weights as a base export takes them: each a LoRA input there with the same outer size, plus
    zeros of the adapter's rank for every input it leaves alone (layers or projections it does not adapt).

    onnxruntime plans its buffers as if every input sized by the symbolic rank had one size: an adapter that set
    some inputs at rank 16 and left others at their empty default fails with a shape mismatch. Zeros add nothing.
    """
    import numpy as np

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
    rank = adapter_rank(weights)
    return {**{name: np.zeros([rank if dim == RANK_DIM else dim for dim in shape], dtype=np.float32)
               for name, shape in inputs.items() if name not in weights}, **weights}


def adapter_rank(weights: dict[str, Any]) -> int:
    """The LoRA rank of converted weights: the columns of an A matrix ([in, r])."""
    return int(next(array.shape[1] for name, array in weights.items() if ".lora_A." in name))


def write_adapter(weights: dict[str, Any], path: Path) -> None:
    """Write an `.onnx_adapter` via a temp file, and read it back: a bad write must never be picked up."""
    import numpy as np

    telemetry_off()
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
    telemetry_off()
    import onnxruntime as ort

    try:
        adapter = ort.AdapterFormat.read_adapter(str(path))
    except Exception as exc:  # onnxruntime's own message names C++ internals; the file is what matters
        raise ExportError(f"{path} is not a readable .onnx_adapter file: export the run again.") from exc
    # The arrays view memory the AdapterFormat owns: copy them before it is freed.
    return {name: value.numpy().copy() for name, value in adapter.get_parameters().items()}
