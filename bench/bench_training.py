"""Training benchmarks on the embedded model (results go to BENCHMARKS.md; `make bench` runs this).

1. s/step of LoRA q/v r=8, batch 8, sequences <= 64 tokens: bf16 vs fp32, and achieved FLOP/s as a share of a bf16
   matmul peak measured in the same process.
2. TrainingRun's overhead per step: the same model, data, arguments and Trainer driven directly, without the run's
   thread, events and files ("bare_same"). Also a plain Trainer script as a user would write it ("bare_plain":
   default attention, fp32 frozen weights, logits at every position), to show what the engine's CPU work buys.
3. From finetune() to the first step event, and the peak RSS of that process (a fresh process, model cached).

Runs alternate (A B A B ...) so that the machine's drift hits both sides alike; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCH_CONFIG = {
    "model_name_or_path": "smollm2-135m-instruct",
    "data_name": "tones",
    "use_chat_template": True,
    "lora_r": 8,
    "lora_alpha": 16,
    "target_modules": ["q_proj", "v_proj"],
    "learning_rate": 1e-3,
    "per_device_train_batch_size": 8,
    "max_seq_len": 64,
    "eval_size": 0,
    "save_steps": 10_000,  # no checkpoint inside the timed steps
}


def matmul_peak(dtype_name: str, n: int = 2048, repeats: int = 5) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def step_times_with_run(precision: str, steps: int, runs_dir: Path) -> list[float]:
    """Seconds between consecutive Step events of a TrainingRun."""
    from slmnb.training import events as ev
    from slmnb.training.runs import Runs

    stamps: list[float] = []
    run = Runs(runs_dir).start(BENCH_CONFIG, max_steps=steps, precision=precision,
                               listeners=[lambda e: isinstance(e, ev.Step) and stamps.append(time.perf_counter())])
    run.wait()
    return [b - a for a, b in pairwise(stamps)]


def step_times_bare(precision: str, steps: int, out: Path, same: bool) -> list[float]:
    """The Trainer driven directly on the same data: with the engine's model set-up (same) or a plain one."""
    from peft import LoraConfig, get_peft_model
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

    from slmnb.config import load_config
    from slmnb.data import encode_rows, load_data, with_default_templates
    from slmnb.models import load_model, load_tokenizer
    from slmnb.training.arguments import StepPlan, training_arguments
    from slmnb.training.engine import Collator, _trainer_class, build_model
    from slmnb.training.prepare import settle

    config = settle(with_default_templates(load_config(BENCH_CONFIG, max_steps=steps)))
    tokenizer = load_tokenizer(config.model_name_or_path)
    rows, _ = encode_rows(config, tokenizer, load_data(config).train)
    set_seed(config.seed)
    if same:
        model = build_model(config, precision)
        trainer_class = _trainer_class()
    else:
        model = get_peft_model(load_model(config.model_name_or_path),
                               LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                                          task_type="CAUSAL_LM"))
        trainer_class = Trainer
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            stamps.append(time.perf_counter())

    if same:  # the engine's own arguments; its one save comes after the last step, outside the timings
        args = training_arguments(config, StepPlan(total=steps, eval_steps=steps, save_steps=steps,
                                                   early_stopping=False),
                                  precision=precision, output_dir=str(out), has_eval=False)
    else:
        args = TrainingArguments(output_dir=str(out), use_cpu=True, bf16=precision == "bf16", max_steps=steps,
                                 per_device_train_batch_size=8, learning_rate=1e-3, logging_steps=1,
                                 save_strategy="no", report_to="none", disable_tqdm=True, remove_unused_columns=False,
                                 seed=config.seed, data_seed=config.seed, include_num_input_tokens_seen="non_padding")
    trainer = trainer_class(model=model, args=args, train_dataset=rows,
                            data_collator=Collator(tokenizer.pad_token_id), callbacks=[Stamp()])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return [b - a for a, b in pairwise(stamps)]


def padded_tokens_per_step() -> tuple[float, int]:
    """Mean padded tokens in a batch of 8 (what the matmuls see), and the longest example."""
    from slmnb.config import load_config
    from slmnb.data import encode_rows, load_data, with_default_templates
    from slmnb.models import load_tokenizer

    config = with_default_templates(load_config(BENCH_CONFIG))
    rows, _ = encode_rows(config, load_tokenizer(config.model_name_or_path), load_data(config).train)
    lengths = [len(r["input_ids"]) for r in rows]
    batches = [lengths[i:i + 8] for i in range(0, len(lengths), 8)]
    return statistics.fmean(max(b) * len(b) for b in batches), max(lengths)


def first_step_child() -> None:
    """In a fresh process: finetune() -> first Step event, then the process's peak RSS."""
    from slmnb.training import events as ev
    from slmnb.training.runs import Runs

    first: list[float] = []
    start = time.perf_counter()
    run = Runs(tempfile.mkdtemp()).start(BENCH_CONFIG, max_steps=8,
                              listeners=[lambda e: isinstance(e, ev.Step) and not first and
                                         first.append(time.perf_counter())])
    run.wait()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"first_step_s": first[0] - start, "peak_rss_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench/results/training.json")
    args = parser.parse_args()
    if args.child:
        first_step_child()
        return

    from slmnb.models import model_folder

    model_folder("smollm2-135m-instruct")  # convert once, outside every timing
    work = Path(tempfile.mkdtemp())
    firsts = [json.loads(subprocess.run([sys.executable, __file__, "--child"], capture_output=True, text=True,
                                        check=True).stdout.splitlines()[-1]) for _ in range(args.rounds)]

    import torch

    from slmnb.training.engine import quiet_libraries

    quiet_libraries()
    samples: dict[str, list[float]] = {"run_bf16": [], "bare_same_bf16": [], "run_fp32": [], "bare_plain_bf16": []}
    for i in range(args.rounds):
        # Alternate the contenders; the first step of each is dropped (it includes warm-up).
        samples["run_bf16"] += step_times_with_run("bf16", args.steps, work / f"runs{i}")[1:]
        samples["bare_same_bf16"] += step_times_bare("bf16", args.steps, work / f"same{i}", same=True)[1:]
        samples["run_fp32"] += step_times_with_run("fp32", args.steps, work / f"runs-fp32-{i}")[1:]
        samples["bare_plain_bf16"] += step_times_bare("bf16", args.steps, work / f"plain{i}", same=False)[1:]
    peak_bf16, peak_fp32 = matmul_peak("bfloat16"), matmul_peak("float32")
    tokens, longest = padded_tokens_per_step()

    from slmnb.models import load_model

    model = load_model("smollm2-135m-instruct")
    # The embedding is a lookup, and with tail-only logits the tied output layer runs on a few positions only:
    # count the decoder's matmul weights. A LoRA step is forward 2*P*T plus backward through the activations
    # 2*P*T (frozen weights take no weight gradient).
    decoder_params = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    med = {k: statistics.median(v) for k, v in samples.items()}
    flops = 4 * decoder_params * tokens
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"cpu capability {torch.backends.cpu.get_cpu_capability()}",
        "steps_per_sample": len(samples["run_bf16"]),
        "median_s_per_step": med,
        "bf16_speedup_vs_fp32": med["run_fp32"] / med["run_bf16"],
        "run_overhead_vs_same_trainer": med["run_bf16"] / med["bare_same_bf16"] - 1,
        "plain_trainer_vs_run": med["bare_plain_bf16"] / med["run_bf16"],
        "matmul_peak_gflops": {"bf16": peak_bf16 / 1e9, "fp32": peak_fp32 / 1e9},
        "padded_tokens_per_step": tokens,
        "decoder_params": decoder_params,
        "longest_example_tokens": longest,
        "achieved_gflops_bf16": flops / med["run_bf16"] / 1e9,
        "share_of_bf16_peak": flops / med["run_bf16"] / peak_bf16,
        "first_step_s": statistics.median(f["first_step_s"] for f in firsts),
        "peak_rss_mb": max(f["peak_rss_mb"] for f in firsts),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
