"""The demo job's fine-tune, timed as a user meets it (issue 18; results go to BENCHMARKS.md).

For each precision (what `precision: auto` picks here, and fp32 too when auto picks bf16, so that a machine with bf16
also shows the path of the many CPUs without it) and each seed, a fresh process runs `slmnb.finetune(DEMO_CONFIG)`
to its end, as `make demo` does, then scores the tones test split. Each sample records:

- the fine-tune's wall time, finetune() to the finished run (the goal: 3 min without native bf16, 1.5 min with it),
  evaluations and the adapter's save included;
- finetune() to the first step (goal: under 15 s), the median seconds per step, the process's peak RSS;
- the test accuracy (goal: at least 90% on each seed).

Then, per precision, the FLOPs of one optimizer step of the demo job, counted by torch's FlopCounterMode over real
micro-batches of the training set (the matmuls the CPU does, padding included), divided by the median step time,
as a share of the matmul peak of that precision measured in the same process. Separately for the first epoch and
the later ones, which skip the frozen bottom layers (slmnb.training.prefix) and so do fewer FLOPs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import machine, matmul_gflops  # one description of the machine for every benchmark

GOAL_S = {"fp32": 180.0, "bf16": 90.0}
SEEDS = (42, 1, 2)
FLOP_BATCHES = 8  # micro-batches counted: two optimizer steps of the demo job


def run_child(precision: str, seed: int) -> dict[str, Any]:
    """In a fresh process: the demo job as `make demo` starts it, to the end, then its test accuracy."""
    import slmnb
    from slmnb.demo import DEMO_CONFIG
    from slmnb.training import events as ev

    stamps: list[float] = []  # the end of each step
    after_eval: set[int] = set()  # steps whose time since the step before holds an evaluation
    evaluating = 0.0  # seconds from a step's end to its evaluation's end

    def listen(event: ev.Event) -> None:
        nonlocal evaluating
        if isinstance(event, ev.Step):
            stamps.append(time.perf_counter())
        elif isinstance(event, ev.Eval):
            evaluating += time.perf_counter() - stamps[-1]
            after_eval.add(len(stamps) + 1)

    os.chdir(tempfile.mkdtemp())  # the run folder goes to ./runs: not into the checkout
    start = time.perf_counter()
    run = slmnb.finetune({**DEMO_CONFIG, "seed": seed, "precision": precision}, listeners=[listen])
    run.wait()
    wall = time.perf_counter() - start
    accuracy = run.evaluate("test", metrics="accuracy", progress=False).scores["accuracy"]
    # Step n's time is stamps[n-1] - stamps[n-2]; the steps that follow an evaluation are left out. The first epoch
    # computes every layer; later epochs take the frozen bottom layers' output kept from it (slmnb.training.prefix).
    epoch = epoch_steps()
    steps = {n: stamps[n - 1] - stamps[n - 2] for n in range(2, len(stamps) + 1) if n not in after_eval}
    return {"precision": precision, "seed": seed, "steps": run.step, "finetune_s": wall,
            "first_step_s": stamps[0] - start, "median_s_per_step": statistics.median(steps.values()),
            "median_s_per_step_first_epoch": statistics.median(t for n, t in steps.items() if n <= epoch),
            "median_s_per_step_later": statistics.median(t for n, t in steps.items() if n > epoch),
            "evaluation_s": evaluating, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "test_accuracy": accuracy}


def epoch_steps() -> int:
    """Optimizer steps in one epoch of the demo job's training rows."""
    from slmnb.config import load_config
    from slmnb.data import load_data, with_default_templates
    from slmnb.demo import DEMO_CONFIG
    from slmnb.training.prepare import settle

    config = settle(with_default_templates(load_config(DEMO_CONFIG)))
    per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps
    return -(-len(load_data(config).train) // per_step)


def flops_child(precision: str) -> dict[str, Any]:
    """FLOPs of one optimizer step of the demo job, in its first epoch and in a later one (the frozen bottom layers'
    output kept), and this process's matmul peak in that precision."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from slmnb.config import load_config
    from slmnb.data import encode_rows, load_data, with_default_templates
    from slmnb.demo import DEMO_CONFIG
    from slmnb.models import load_tokenizer
    from slmnb.training.engine import Collator, build_model, trim_to_labelled_tail
    from slmnb.training.prefix import frozen_prefix
    from slmnb.training.prepare import settle

    config = settle(with_default_templates(load_config(DEMO_CONFIG)))
    tokenizer = load_tokenizer(config.model_name_or_path)
    rows, _ = encode_rows(config, tokenizer, load_data(config).train)
    random.Random(config.seed).shuffle(rows)  # batches as the Trainer draws them: random rows, padded together
    model = build_model(config, precision)
    model.train()
    prefix = frozen_prefix(model)
    assert prefix is not None, "the demo job trains its top layers only"
    collate, size = Collator(tokenizer.pad_token_id), config.per_device_train_batch_size
    per_step = {}
    for epoch in ("first", "later"):  # the same micro-batches twice: the second pass finds every row kept
        counter = FlopCounterMode(display=False)
        with counter:
            for i in range(FLOP_BATCHES):
                inputs = trim_to_labelled_tail(collate(rows[i * size:(i + 1) * size]))
                with prefix.rows(inputs), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = model(**inputs).loss
                loss.backward()
        per_step[epoch] = counter.get_total_flops() / FLOP_BATCHES * config.gradient_accumulation_steps
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return {"precision": precision, "flops_per_step": per_step, "peak_gflops": matmul_gflops(dtype, size=2048)}


def child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=2, metavar=("PRECISION", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--flops-child", metavar="PRECISION", help=argparse.SUPPRESS)
    parser.add_argument("--precisions", default="", help="comma-separated (bf16, fp32); default: auto's pick, and "
                                                          "fp32 too where auto picks bf16")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--out", default="bench/results/speed.json")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child[0], int(args.child[1]))))
        return 0
    if args.flops_child:
        print(json.dumps(flops_child(args.flops_child)))
        return 0

    from slmnb.demo import DEMO_CONFIG
    from slmnb.models import model_folder
    from slmnb.models import needs_building as model_needs_building
    from slmnb.opt.deployed import deployed_weights, needs_building
    from slmnb.training.engine import effective_precision

    # One-time costs, outside every timing (a fresh SLMNB_HOME pays them in its first run's first step): the GGUF
    # converted to an HF folder, and the int4 base the demo trains on, built by the export's own builder.
    one_time: dict[str, float] = {}
    name = DEMO_CONFIG["model_name_or_path"]
    for what, pending, build in (("gguf_conversion_s", model_needs_building, model_folder),
                                 ("int4_base_s", lambda model: needs_building(model, "int4"), deployed_weights)):
        if pending(name):
            started = time.perf_counter()
            build(name)
            one_time[what] = time.perf_counter() - started
    auto = effective_precision("auto")
    precisions = args.precisions.split(",") if args.precisions else list(dict.fromkeys([auto, "fp32"]))
    seeds = [int(s) for s in args.seeds.split(",")]
    described = machine()
    samples: list[dict[str, Any]] = []
    for seed in seeds:  # precisions alternate within each seed: the machine's drift hits both alike
        for precision in precisions:
            print(f"demo fine-tune, {precision}, seed {seed}...", file=sys.stderr, flush=True)
            samples.append(child(["--child", precision, str(seed)]))
            print(f"  {json.dumps(samples[-1])}", file=sys.stderr, flush=True)
    summary = {}
    for precision in precisions:
        mine = [s for s in samples if s["precision"] == precision]
        flops = child(["--flops-child", precision])
        first = statistics.median(s["median_s_per_step_first_epoch"] for s in mine)
        later = statistics.median(s["median_s_per_step_later"] for s in mine)
        achieved = {epoch: flops["flops_per_step"][epoch] / seconds for epoch, seconds in (("first", first),
                                                                                           ("later", later))}
        summary[precision] = {
            "finetune_s_median": statistics.median(s["finetune_s"] for s in mine),
            "finetune_s_max": max(s["finetune_s"] for s in mine),
            "goal_s": GOAL_S[precision] if precision != "fp32" or auto == "fp32" else None,
            "test_accuracy": [s["test_accuracy"] for s in mine],
            "median_s_per_step": statistics.median(s["median_s_per_step"] for s in mine),
            "median_s_per_step_first_epoch": first,
            "median_s_per_step_later": later,
            "first_step_s_median": statistics.median(s["first_step_s"] for s in mine),
            "evaluation_s_median": statistics.median(s["evaluation_s"] for s in mine),
            "peak_rss_gb_max": max(s["peak_rss_gb"] for s in mine),
            "gflops_per_step": {k: v / 1e9 for k, v in flops["flops_per_step"].items()},
            "achieved_gflops": {k: v / 1e9 for k, v in achieved.items()},
            "matmul_peak_gflops": flops["peak_gflops"],
            "share_of_peak": {k: v / 1e9 / flops["peak_gflops"] for k, v in achieved.items()},
        }
    result = {"machine": described, "precision_auto": auto, "one_time": one_time, "summary": summary,
              "samples": samples}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
