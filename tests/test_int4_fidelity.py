"""A LoRA trained on the int4 base (base_weights: int4) is what its int4 export computes, base and adapter.

The int4 export runs the base as k_quant int4 plus the run's LoRA as float MatMuls. Trained on the original
weights, the adapter meets a base in ONNX it never saw; trained on the int4 base, the ONNX model computes what PyTorch
trained, up to onnxruntime's int8 activations (see tests/test_deployed.py for the base alone).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from test_deployed import onnx_logits, session  # one way to run the ONNX graph for its logits

import slmnb
from slmnb.models import load_tokenizer
from slmnb.opt.adapters import peft_weights

PROMPTS = ["sample phrase number 3", "sample phrase number 41", "I feel so happy today because", "Once upon a time"]


def gap(run: Any) -> float:
    """Max |logit difference| between the run's PyTorch model (as predict loads it) and its int4 ONNX export."""
    import torch
    from peft import PeftModel

    from slmnb.training.base import load_base

    export = slmnb.export(run)
    onnx = session(export.folder)
    weights = peft_weights(run.output_path)
    model = PeftModel.from_pretrained(load_base(run.config), run.output_path).eval()
    tokenizer = load_tokenizer(run.config.model_name_or_path)
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    worst = 0.0
    for prompt in PROMPTS:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            pytorch = model(torch.tensor([ids])).logits[0].numpy()
        worst = max(worst, float(np.abs(pytorch - onnx_logits(onnx, ids, head_dim, weights)).max()))
    return worst


def test_a_lora_trained_on_the_int4_base_is_what_its_int4_export_computes(workdir, tiny) -> None:
    job = {**tiny, "target_modules": "all-linear", "max_steps": 8, "eval_steps": 8}
    on_int4 = slmnb.finetune(job, name="int4").wait()
    on_original = slmnb.finetune({**job, "base_weights": "original"}, name="original").wait()
    assert on_int4.config.base_weights == "int4"  # what auto means for LoRA
    trained_int4, trained_original = gap(on_int4), gap(on_original)
    print(f"\nmax |logit gap| PyTorch vs int4 ONNX: trained on the int4 base {trained_int4:.3f}, "
          f"on the original weights {trained_original:.3f}")
    # Measured: 0.37 against 2.78 (what is left is onnxruntime's int8 activations).
    assert trained_int4 < trained_original / 4


def test_the_run_says_which_base_weights_it_trained_on(workdir, tiny) -> None:
    import json

    run = slmnb.finetune({**tiny, "max_steps": 2}, name="said").wait()
    assert "base_weights: int4" in (run.dir / "config.yaml").read_text()
    assert json.loads((run.dir / "run.json").read_text())["base_weights"] == "int4"
    assert slmnb.export(run).fidelity is None  # the default export runs on what it trained on
    assert "some answers may differ" in slmnb.export(run, precision="int8").fidelity


def test_a_run_trained_on_the_original_weights_is_told_at_export(workdir, tiny) -> None:
    run = slmnb.finetune({**tiny, "max_steps": 2, "base_weights": "original"}, name="plain").wait()
    assert "train with base_weights: int4" in slmnb.export(run).fidelity
