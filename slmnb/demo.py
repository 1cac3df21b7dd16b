"""`python -m slmnb.demo` (what `make demo` runs), the main job end to end on the embedded model: fine-tune it on
the bundled tones data, export the result to ONNX int4 with a switchable adapter, and print the base model and the
fine-tune side by side with their held-out accuracies in PyTorch and in ONNX."""

from __future__ import annotations

import sys
import time
from typing import Any

# The reference job: LoRA on the top half of SmolLM2-135M-Instruct (trained on its int4 base, so the export gives the
# same answers), answer-only loss through the chat template with an empty system message, 40 steps of 16 rows taken 8
# at a time (2.2 epochs; about 2 GB), nothing truncated. Tones test split, seeds 42 / 1 / 2: 91.7% / 93.8% / 93.8% in
# fp32; in bf16 93.8% / 93.8% / 91.7% on an Intel Xeon with AMX and 89.6% / 91.7% / 91.7% on an AMD EPYC, whose bf16
# kernels round differently (base model 0%; BENCHMARKS.md, "Speed of the demo fine-tune").
DEMO_CONFIG: dict[str, Any] = {
    "model_name_or_path": "smollm2-135m-instruct",
    "data_name": "tones",
    "use_chat_template": True,
    "system_prompt": "",  # an empty system message: SmolLM2's default one is 16 of a row's 65 tokens
    "method": "lora",
    "target_modules": "all-linear",
    # The top half of SmolLM2's 30 layers: no backward pass through the bottom 15, and from the second epoch on no
    # forward either (their output is kept per row: slmnb.training.prefix).
    "layers_to_transform": "15-29",
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,  # dropout's masks cost 13-15% of a CPU step; accuracy held without them
    "learning_rate": 2e-3,
    "max_steps": 40,
    "per_device_train_batch_size": 8,  # 8 rows in memory at once, 16 per optimizer step
    "gradient_accumulation_steps": 2,
    "max_seq_len": 96,  # the longest row is 56 tokens with the chat template: nothing is cut
    "eval_steps": 10,
}

# The same job on the bundled changelog data (casual developer notes -> one-line changelog entries in a house style),
# where the answers are free text and BLEU / ROUGE / chrF have something to show. Changelog test split (48 notes about
# components no train note names), greedy answers of up to 32 tokens, ROUGE-L F1 (rouge_score): base model 0.18,
# fine-tune 0.81 (exact entries 0 -> 12 of 48); seed 42, 575 s of training on 2 shared cores (2026-12-01).
GENERATION_DEMO_CONFIG: dict[str, Any] = {
    # Measured with the template's default system message, LoRA dropout 0.05 on every layer, 60 steps at 3e-3 and 4
    # rows at a time: the tones job's speed settings have not been measured on this task.
    **{key: value for key, value in DEMO_CONFIG.items()
       if key not in ("system_prompt", "lora_dropout", "layers_to_transform")},
    "data_name": "changelog",
    "learning_rate": 3e-3,
    "max_steps": 60,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 4,
    "max_seq_len": 96,  # the longest row is 93 tokens with the chat template: nothing is cut
}


def main() -> int:
    from slmnb.cli import ProgressBar, follow
    from slmnb.opt.compare import compare
    from slmnb.opt.export import export
    from slmnb.training.runs import finetune

    start = time.perf_counter()
    run = finetune(DEMO_CONFIG, listeners=[ProgressBar()])
    preparing = follow(run)
    run.wait()  # a failed run raises its one-sentence reason here
    if run.status == "stopped":  # Ctrl-C: the run saved a checkpoint and the demo goes no further
        print(f"resume with: slmnb finetune --name {run.name} --resume", file=sys.stderr)
        return 130
    trained = time.perf_counter() - start - preparing
    if preparing:
        print(f"preparing {DEMO_CONFIG['model_name_or_path']} for its first use took {preparing:.0f} s (once)")
    print(f"fine-tuning took {trained:.0f} s for {run.step} steps; adapter in {run.output_path}\n")

    start = time.perf_counter()
    exported = export(run, on_phase=lambda text: print(f"  export: {text}", file=sys.stderr, flush=True))
    adapter = exported.adapter
    assert adapter is not None  # switchable adapters are the default
    print(f"exported to ONNX {exported.precision} in {time.perf_counter() - start:.0f} s: {exported.folder} "
          f"({exported.size_mb:.0f} MB) + {adapter.name} ({adapter.stat().st_size / 1e6:.1f} MB)\n")

    comparison = compare(run, evaluate=True, max_new_tokens=16, few_shot=4)
    print(comparison)
    if comparison.agreement_line():
        print(f"\n{comparison.agreement_line()}")
    print(f"\nTone of {len(comparison.test_rows)} held-out phrases (test split), first word of the greedy answer; "
          "base and fine-tune\nin PyTorch and in ONNX int4, and the base model shown 4 solved examples (few-shot).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
