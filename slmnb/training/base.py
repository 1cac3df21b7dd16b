"""The base model a LoRA run trains on, which every later PyTorch use of the run (predict, score, compare) loads too.

`base_weights: int4` (what `auto` means for LoRA): the base's linear layers take the values the default int4 ONNX
export stores (k_quant int4, the output layer and the tied embeddings in int8), dequantized. The export's base plus
the run's adapter then computes what PyTorch trained; trained on the original weights instead, the adapter meets a
base it never saw, and a few answers in fifty changed (BENCHMARKS.md, int4 fidelity). The quantized base is built
once per model by the export's own builder (slmnb.opt.deployed) and kept in SLMNB_HOME.
"""

from __future__ import annotations

from typing import Any

from slmnb.config import FinetuneConfig
from slmnb.models import load_model


def on_int4_base(config: FinetuneConfig) -> bool:
    # A run from before base_weights existed reads as auto: it trained on the original weights.
    return config.base_weights == "int4"


def load_base(config: FinetuneConfig, attention: str | None = None) -> Any:
    """The run's base model in fp32 (4-bit NF4 for qlora), with the int4 export's weights where the run trained on
    them."""
    model = load_model(config.model_name_or_path, four_bit=config.method == "qlora", attention=attention)
    if on_int4_base(config):
        from slmnb.opt.deployed import deployed_weights

        weights = deployed_weights(config.model_name_or_path, "int4")
        unexpected = model.load_state_dict(weights, strict=False).unexpected_keys
        if unexpected:  # deployed_weights maps names by the model's own layers, so this is a bug, not a user error
            raise RuntimeError(f"int4 base weights with no place in {config.model_name_or_path}: {unexpected[:3]}")
    return model


def int4_base_pending(config: FinetuneConfig) -> bool:
    """Whether the run's first step waits for the int4 base to be built (once per model, tens of seconds)."""
    if not on_int4_base(config):
        return False
    from slmnb.opt.deployed import needs_building

    return needs_building(config.model_name_or_path, "int4")


def describe(config: FinetuneConfig) -> str:
    """The method and what it trained on, for titles: 'lora on the int4 base'."""
    return f"{config.method} on the int4 base" if on_int4_base(config) else config.method
