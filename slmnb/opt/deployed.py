"""The base weights exactly as the default ONNX export stores them, dequantized, so a LoRA can train on them.

The export quantizes the base with the onnxruntime-genai builder (k_quant int4 in blocks of 32, the output layer in
int8). A LoRA trained on the original weights then meets, in ONNX, a base it never saw. Here the builder quantizes a
plain base once per model, and its MatMulNBits / GatherBlockQuantized initializers are read back as fp32 matrices
under the Hugging Face names: PyTorch with these weights computes what the ONNX base computes, up to the int8
activations of the runtime's fast kernels (accuracy_level 4).

Layout (onnxruntime's MatMulNBits and GatherBlockQuantized contrib ops): B is uint8 [N, K/block, block*bits/8], the
codes of a row packed along K, low bits first; scales [N, K/block]; zero points uint8 packed the same way, each row
padded to whole bytes, 2^(bits-1) when absent; W[n, k] = (code - zero point) * scale.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slmnb.errors import ExportError
from slmnb.opt import store
from slmnb.opt.builder import quant_options, run_builder
from slmnb.opt.inputs import base_config, check_choice, model_size
from slmnb.paths import build_folder_once, slmnb_home, sweep_temps, temp_sibling

Phase = Callable[[str], None]
PRECISIONS = ("int4", "int8", "fp32")
MANIFEST = "deployed.json"
# The weights read back from model.onnx, under their Hugging Face names: reading and dequantizing them again (onnx's
# import included) took about 3 s of every LoRA run's start on the embedded model; loading this file takes a fraction.
WEIGHTS = "hf_weights.safetensors"
# Bumped whenever the folder's layout or the way it is built changes, so an older folder is not reused.
_FORMAT = "v1"
_LAYER_NODE = re.compile(r"^/model/layers\.(\d+)/[^/]+/(\w+)/MatMul")
# The builder packs these projections into one MatMul when they share an input; the HF model keeps them apart.
_PACKED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def deployed_folder(model_name_or_path: str, precision: str = "int4", hf_dir: str | Path | None = None) -> Path:
    """Where the quantized base of a model is kept: one folder per model, precision, builder and weights.

    The name carries a digest of the model folder's weight files (size and mtime) and of the builder's version and
    options, so a model saved again, or a new builder, gets a new base instead of a stale one.
    """
    hf_dir = Path(hf_dir if hf_dir is not None else _model_folder(model_name_or_path))
    files = sorted(p for p in hf_dir.iterdir() if p.suffix in (".safetensors", ".bin", ".json") and p.is_file())
    source = [str(hf_dir.resolve()), precision, quant_options(precision), _builder_version(),
              [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]]
    digest = hashlib.sha256(json.dumps(source).encode()).hexdigest()[:8]
    return slmnb_home() / "models" / f"{store.slug(model_name_or_path)}-{precision}-deployed-{_FORMAT}-{digest}"


def needs_building(model_name_or_path: str, precision: str = "int4") -> bool:
    """Whether deployed_weights would first run the builder (tens of seconds, once per model). Cheap: no build."""
    from slmnb.models import model_folder
    from slmnb.models import needs_building as model_needs_building

    if precision == "fp32":
        return False
    if model_needs_building(model_name_or_path):
        return True
    hf_dir = Path(model_folder(model_name_or_path))
    # A hub model not downloaded yet is fetched by the training's own load first, then built.
    return not hf_dir.is_dir() or not deployed_folder(model_name_or_path, precision, hf_dir).is_dir()


def deployed_base(model_name_or_path: str, precision: str = "int4", on_phase: Phase | None = None) -> Path:
    """A plain (adapter-free) ONNX build of the model with the export's quantization, made once and kept.

    Only model.onnx, its weights and a manifest stay: enough to read the quantized weights back, not to generate.
    """
    check_choice("precision", precision, ("int4", "int8"))
    hf_dir = Path(_model_folder(model_name_or_path))
    folder = deployed_folder(model_name_or_path, precision, hf_dir)
    if folder.is_dir():
        return folder
    sweep_temps(folder.parent)  # leftovers of builds killed mid-way (their writer's pid is dead)
    layers = model_size(base_config(hf_dir, model_name_or_path), model_name_or_path)[0]
    log = folder.parent / f"{folder.name}.builder.log"  # outside the temp folder: a failure's message names it

    def build(tmp: Path) -> None:
        started = time.perf_counter()
        raw = tmp / ".builder-output"
        run_builder(hf_dir, raw, precision, layers=layers, on_phase=on_phase, log_path=log)
        for item in raw.iterdir():
            if item.is_file() and item.name.startswith("model.onnx"):
                os.replace(item, tmp / item.name)
        shutil.rmtree(raw)  # the genai config, tokenizer and builder cache: nothing here generates
        store.write_json(tmp / MANIFEST, {
            "base_model": model_name_or_path, "source": str(hf_dir), "precision": precision,
            "quant_options": quant_options(precision), "builder": _builder_version(),
            "seconds": round(time.perf_counter() - started, 1), "created": time.time()})
        log.unlink(missing_ok=True)

    return build_folder_once(folder, build)


def deployed_weights(model_name_or_path: str, precision: str = "int4",
                     on_phase: Phase | None = None) -> dict[str, Any]:
    """{Hugging Face state-dict name: fp32 tensor} of every weight the export of this precision quantizes.

    Load it with `model.load_state_dict(weights, strict=False)`. With tied embeddings that the export keeps tied
    (int4: the int8 output layer is also the embedding table) both names hold the same tensor. When the export
    unties them (int8: a float embedding, an int8 output layer) both names come with different tensors, and the
    model must be untied before loading, or the second one loaded wins. fp32 quantizes nothing: {}.
    """
    check_choice("precision", precision, PRECISIONS)
    if precision == "fp32":
        return {}
    folder = deployed_base(model_name_or_path, precision, on_phase)
    cached = _read_weights(folder / WEIGHTS)
    if cached is not None:
        return cached
    if on_phase is not None:
        on_phase("reading the quantized weights")
    model = _meta_model(_model_folder(model_name_or_path))
    weights = hf_weights(onnx_matrices(folder / "model.onnx", float_embedding=_tied(model)), model)
    _write_weights(folder / WEIGHTS, weights)
    return weights


def _read_weights(path: Path) -> dict[str, Any] | None:
    """The weights deployed_weights kept, or None when there are none (or they cannot be read: then they are read
    from the ONNX build again and written anew)."""
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            aliases = json.loads((handle.metadata() or {}).get("aliases", "{}"))
            weights = {name: handle.get_tensor(name) for name in handle.keys()}
        for name, same in aliases.items():
            weights[name] = weights[same]  # one tensor under both names, as hf_weights gave it: loading keeps the tie
    except (OSError, ValueError, KeyError, SafetensorError):  # unreadable, or metadata not ours: read again
        return None
    return weights


def _write_weights(path: Path, weights: dict[str, Any]) -> None:
    """Keep the weights beside the build they came from, through a temp file: a half-written file is never read.

    A folder that cannot be written to only costs the next run the reading again."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    sweep_temps(path.parent)  # a write killed mid-way left its temp file
    first: dict[int, str] = {}  # safetensors stores each tensor once: a tied one's second name is an alias
    aliases = {name: first.setdefault(id(tensor), name) for name, tensor in weights.items()}
    aliases = {name: same for name, same in aliases.items() if name != same}
    tmp = temp_sibling(path)
    try:
        save_file({name: tensor for name, tensor in weights.items() if name not in aliases}, str(tmp),
                  metadata={"aliases": json.dumps(aliases)})
        os.replace(tmp, path)
    except (OSError, SafetensorError):  # safetensors reports a failed write as its own error
        pass
    finally:
        tmp.unlink(missing_ok=True)


def onnx_matrices(path: Path, float_embedding: bool = False) -> dict[str, Any]:
    """{node name: fp32 numpy matrix [out, in]} for every block-quantized weight of an ONNX model.

    A MatMulNBits node gives [N, K]; a GatherBlockQuantized node its table [rows, columns] (with the padding of
    the last block, which hf_weights cuts off). `float_embedding` adds the embedding's table when the graph keeps
    it in float: a model that ties it to a quantized output layer needs it to be untied as the graph is.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}

    def array(name: str) -> Any:
        tensor = initializers.get(name)
        if tensor is None:
            raise ExportError(f"{path} has no initializer {name!r} where a quantized weight was expected: delete "
                              f"{path.parent} and try again.")
        return onnx.numpy_helper.to_array(tensor, base_dir=str(path.parent))

    matrices: dict[str, Any] = {}
    done: dict[tuple[str, ...], Any] = {}  # a tied output layer and embedding table share one set of codes
    for node in graph.node:
        if float_embedding and node.op_type == "Gather" and node.name.startswith("/model/embed_tokens/"):
            table = array(node.input[0])
            if table.ndim == 2 and table.dtype.kind == "f":
                matrices[node.name] = table.astype("float32")
        if node.domain != "com.microsoft" or node.op_type not in ("MatMulNBits", "GatherBlockQuantized"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        bits, block = int(attrs.get("bits", 4)), int(attrs["block_size"])
        inputs = list(node.input) + [""] * 4
        if node.op_type == "MatMulNBits":
            if inputs[4]:
                raise ExportError(f"{node.name} reorders its input channels (g_idx), which slmnb cannot read back.")
            source, rows, columns = inputs[1], int(attrs["N"]), int(attrs["K"])
        else:
            if int(attrs.get("gather_axis", 0)) != 0 or int(attrs.get("quantize_axis", 1)) != 1:
                raise ExportError(f"{node.name} is quantized along an axis slmnb cannot read back.")
            source, rows, columns = _through_reshape(inputs[0], producers, initializers, node.name), 0, 0
        key = (source, inputs[2], inputs[3], str(bits), str(block))
        if key not in done:
            packed, scales = array(source), array(inputs[2])
            zero_points = array(inputs[3]) if inputs[3] else None
            rows = rows or packed.shape[0]  # B is [N, blocks, bytes], a gathered table [rows, bytes]
            if packed.size % rows or scales.size % rows:
                raise ExportError(f"{node.name}'s weights do not split into its {rows} rows: delete {path.parent} "
                                  "and try again.")
            done[key] = dequantize(packed.reshape(rows, -1), scales.reshape(rows, -1), zero_points, bits, block,
                                   node.name)
        matrices[node.name] = done[key][:, :columns] if columns else done[key]
    return matrices


def _through_reshape(name: str, producers: dict[str, Any], initializers: dict[str, Any], node: str) -> str:
    """The initializer behind a GatherBlockQuantized's data: the builder reshapes the output layer's B to a table."""
    if name in initializers:
        return name
    producer = producers.get(name)
    if producer is not None and producer.op_type == "Reshape" and producer.input[0] in initializers:
        return str(producer.input[0])
    raise ExportError(f"The quantized table of {node} is computed in the graph, not stored, so slmnb cannot read it.")


def dequantize(packed: Any, scales: Any, zero_points: Any, bits: int, block: int, node: str = "a node") -> Any:
    """(code - zero point) * scale for rows of packed codes: uint8 [rows, bytes] -> fp32 [rows, blocks * block]."""
    import numpy as np

    rows, blocks = scales.shape
    if bits not in (2, 4, 8) or packed.dtype != np.uint8 or packed.shape[1] * 8 < blocks * block * bits:
        raise ExportError(f"{node} stores {bits}-bit weights in a layout slmnb cannot read back.")
    codes = _unpack(packed, bits)[:, : blocks * block].reshape(rows, blocks, block)
    if zero_points is None:
        zero = np.full((rows, blocks), 2 ** (bits - 1), dtype=np.float32)
    elif zero_points.dtype == np.uint8:
        if zero_points.size != rows * -(-blocks * bits // 8):
            raise ExportError(f"{node} has {zero_points.size} zero-point bytes where {rows} rows of {blocks} "
                              f"blocks need {rows * -(-blocks * bits // 8)}: its layout is not one slmnb reads.")
        zero = _unpack(zero_points.reshape(rows, -1), bits)[:, :blocks].astype(np.float32)
    else:  # zero points of the scales' float type are stored one per block, unpacked
        zero = zero_points.reshape(rows, blocks).astype(np.float32)
    weights = (codes.astype(np.float32) - zero[:, :, None]) * scales.astype(np.float32)[:, :, None]
    return weights.reshape(rows, blocks * block)


def _unpack(packed: Any, bits: int) -> Any:
    """uint8 [rows, bytes] -> codes [rows, bytes * 8 / bits], the low bits of each byte first."""
    import numpy as np

    if bits == 8:
        return packed
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    return ((packed[:, :, None] >> shifts) & ((1 << bits) - 1)).reshape(packed.shape[0], -1)


def hf_weights(matrices: dict[str, Any], model: Any) -> dict[str, Any]:
    """The ONNX matrices under the state-dict names of a Hugging Face model (or its folder), as fp32 tensors.

    Layers are matched by index and projection name and every shape is checked against the model's, so a graph
    this cannot place raises an ExportError rather than loading a weight into the wrong layer.
    """
    import numpy as np
    import torch

    if isinstance(model, str | Path):
        model = _meta_model(model)
    linears = {name: tuple(module.weight.shape) for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear)}
    head = _module_name(model, model.get_output_embeddings())
    embedding = _module_name(model, model.get_input_embeddings())
    found: dict[str, Any] = {}
    for node, matrix in matrices.items():
        if node.startswith("/lm_head/"):
            found.update(_fit([head], matrix, linears, node))
        elif node.startswith("/model/embed_tokens/"):
            rows, columns = tuple(model.get_input_embeddings().weight.shape)
            if matrix.shape[0] != rows or matrix.shape[1] < columns:
                raise ExportError(f"{node}'s table is {list(matrix.shape)}, not the model's {[rows, columns]}: the "
                                  "ONNX build is not of this model.")
            found[embedding] = matrix[:, :columns]
        else:
            found.update(_fit(_layer_linears(node, linears), matrix, linears, node))
    if any(n.startswith("/model/embed_tokens/") and n.endswith("/Gather") for n in matrices) and not (
            _tied(model) and head in found):
        del found[embedding]  # a float table that no quantized output layer unties: the original weights
    weights = {f"{name}.weight": torch.from_numpy(np.ascontiguousarray(array)) for name, array in found.items()}
    head_name, embedding_name = f"{head}.weight", f"{embedding}.weight"
    if _tied(model) and head_name in weights and embedding_name in weights and torch.equal(weights[head_name],
                                                                                          weights[embedding_name]):
        weights[embedding_name] = weights[head_name]  # one tensor, as in the model: loading keeps them tied
    return weights


def _tied(model: Any) -> bool:
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


def _layer_linears(node: str, linears: dict[str, tuple[int, ...]]) -> list[str]:
    """The HF Linear(s) a layer's MatMul node holds, in the order their rows are stacked in the node."""
    match = _LAYER_NODE.match(node)
    if match is None:
        raise ExportError(f"The ONNX node {node} is quantized but slmnb cannot tell which layer of the model it is.")
    layer, leaf = match.groups()

    def named(leaf: str) -> list[str]:
        return [name for name in linears if re.search(rf"(^|\.)layers\.{layer}\.(.+\.)?{leaf}$", name)]

    names = named(leaf)
    if not names and leaf in _PACKED:
        names = [found for part in _PACKED[leaf] for found in named(part)]
        if len(names) != len(_PACKED[leaf]):
            names = []
    if not names or len(names) != len(set(names)) or (leaf not in _PACKED and len(names) != 1):
        raise ExportError(f"The ONNX node {node} matches no single {leaf} of layer {layer} in the model: the "
                          "model's layers are named in a way slmnb does not map.")
    return names


def _fit(names: list[str], matrix: Any, linears: dict[str, tuple[int, ...]], node: str) -> dict[str, Any]:
    """The node's [N, K] matrix split along N into the named Linears, each checked against its shape."""
    shapes = [linears.get(name) for name in names]
    if any(shape is None for shape in shapes):
        raise ExportError(f"The ONNX node {node} has no Linear layer to go to in the model.")
    rows = [shape[0] for shape in shapes if shape]
    if sum(rows) != matrix.shape[0] or any(shape and shape[1] != matrix.shape[1] for shape in shapes):
        raise ExportError(f"The ONNX node {node} is {list(matrix.shape)}, but {', '.join(names)} of the model "
                          f"are {[list(s) for s in shapes if s]}: the ONNX build is not of this model.")
    starts = [sum(rows[:i]) for i in range(len(rows))]
    return {name: matrix[start:start + size] for name, start, size in zip(names, starts, rows, strict=True)}


def _module_name(model: Any, module: Any) -> str:
    return next(name for name, candidate in model.named_modules() if candidate is module)


def _meta_model(hf_dir: str | Path) -> Any:
    """The model's modules without its weights (the meta device): names and shapes as from_pretrained makes them."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from slmnb.models import quiet_libraries

    quiet_libraries()
    try:
        config = AutoConfig.from_pretrained(str(hf_dir))
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError):
        raise ExportError(f"The config.json of the model at {hf_dir} is not a usable model config: point "
                          "model_name_or_path at a folder saved with save_pretrained.") from None


def _model_folder(model_name_or_path: str) -> str:
    from slmnb.models import model_folder

    folder = model_folder(model_name_or_path)
    if not Path(folder).is_dir():  # a hub id that is not downloaded yet: the builder needs the files
        raise ExportError(f"The model {model_name_or_path} is not on this machine: train or load it once (which "
                          "downloads it), then try again.")
    return folder


def _builder_version() -> str:
    from importlib.metadata import version

    return f"onnxruntime-genai {version('onnxruntime-genai')}"
