"""Export and generation benchmarks on the embedded model (results go to BENCHMARKS.md; `make bench` runs this).

1. Exporting the embedded model: int4 (k_quant, int8 output layer) with switchable LoRA inputs, into an empty
   folder (median of 3); and converting a further adapter for that base (median of 5).
2. Greedy generation, 64 new tokens on the same prompts: PyTorch fp32 (base, and with the LoRA), onnxruntime-genai
   int4 (base, and with the adapter active). Runs alternate PyTorch / ONNX per prompt; medians of tokens/s.
3. Quality on the tones test split: accuracy of PyTorch and ONNX int4 fine-tunes, and how often they agree.

The fine-tune is the demo's config (trained here unless bench/results/runs/demo exists already).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import machine  # one description of the machine for every benchmark

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator keeps food cold.",
    "Give me three tips for learning to play the guitar.",
    "Describe a busy market on a Saturday morning.",
    "Why do leaves change colour in autumn?",
    "Write a polite email asking to move a meeting to Friday.",
]
NEW_TOKENS = 64


def torch_tokens_per_second(model, tokenizer, prompt: str, peft_off: bool) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    import contextlib

    import torch

    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    context = model.disable_adapter() if peft_off else contextlib.nullcontext()
    with torch.inference_mode(), context:
        start = time.perf_counter()
        model.generate(input_ids=ids, max_new_tokens=1, min_new_tokens=1, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id)
        first = time.perf_counter() - start
        start = time.perf_counter()
        out = model.generate(input_ids=ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        seconds = time.perf_counter() - start
    return (out.shape[1] - ids.shape[1]) / seconds, first


def onnx_tokens_per_second(ex, prompt: str, adapter: bool) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    import onnxruntime_genai as og

    from slmnb.opt.runtime import onnx_model

    model = onnx_model(ex.folder)
    ids = ex.prompt_ids(prompt) if ex.run is None else _chat_ids(ex, prompt)
    params = og.GeneratorParams(model.model)
    params.set_search_options(do_sample=False, max_length=len(ids) + NEW_TOKENS, min_length=len(ids) + NEW_TOKENS)
    generator = og.Generator(model.model, params)
    if adapter:
        generator.set_active_adapter(model.adapters, model.adapter_name(ex.adapter))
    start = time.perf_counter()
    generator.append_tokens(ids)
    generator.generate_next_token()
    first = time.perf_counter() - start
    tokens = 1
    while not generator.is_done():
        generator.generate_next_token()
        tokens += 1
    return tokens / (time.perf_counter() - start), first


def _chat_ids(ex, prompt: str) -> list[int]:  # type: ignore[no-untyped-def]
    tokenizer = ex.tokenizer()
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results/export.json")
    parser.add_argument("--work", default="bench/results")
    args = parser.parse_args()

    import slmnb
    from slmnb.demo import DEMO_CONFIG
    from slmnb.opt import store
    from slmnb.opt.adapters import peft_weights, write_adapter
    from slmnb.training.runs import Runs

    work = Path(args.work).resolve()
    runs = Runs(work / "runs")
    if (work / "runs" / "demo" / "adapter").is_dir():
        run = runs.open("demo")
    else:
        shutil.rmtree(work / "runs" / "demo", ignore_errors=True)
        print("training the demo config (a few minutes)...", file=sys.stderr)
        run = runs.start(DEMO_CONFIG, name="demo").wait()

    # 1. export from scratch (3 times, each into an empty folder), then further adapters
    exports = work / "onnx"
    shutil.rmtree(exports, ignore_errors=True)
    export_times = []
    for i in range(3):
        start = time.perf_counter()
        ex = slmnb.export(run, output=exports / str(i))
        export_times.append(time.perf_counter() - start)
    convert = []
    for i in range(5):
        start = time.perf_counter()
        write_adapter(peft_weights(run.output_path), ex.folder / "adapters" / f"again-{i}.onnx_adapter")
        convert.append(time.perf_counter() - start)

    # 2. generation speed
    from slmnb.models import load_tokenizer, quiet_libraries
    from slmnb.training.base import load_base

    quiet_libraries()  # before peft pulls in bitsandbytes, which warns about an optional hub kernel
    from peft import PeftModel

    tokenizer = load_tokenizer(run.config.model_name_or_path)
    # the base the run trained on (int4-deployed weights by default): the PyTorch side is the model that was trained
    model = PeftModel.from_pretrained(load_base(run.config), run.output_path).eval()
    speed: dict[str, list[float]] = {k: [] for k in ("torch_base", "torch_lora", "onnx_base", "onnx_adapter")}
    first: dict[str, list[float]] = {k: [] for k in speed}
    for prompt in PROMPTS:
        for key, measure in (("torch_base", lambda p: torch_tokens_per_second(model, tokenizer, p, True)),
                             ("onnx_base", lambda p: onnx_tokens_per_second(ex, p, False)),
                             ("torch_lora", lambda p: torch_tokens_per_second(model, tokenizer, p, False)),
                             ("onnx_adapter", lambda p: onnx_tokens_per_second(ex, p, True))):
            rate, ttft = measure(prompt)
            speed[key].append(rate)
            first[key].append(ttft)
    med = {k: statistics.median(v) for k, v in speed.items()}

    # 3. quality
    from slmnb.data import select_split
    from slmnb.datafiles import read_splits
    from slmnb.evaluation import evaluate_answers
    from slmnb.metrics import label_of

    rows = select_split(read_splits(run.config), "test", "split")

    def accuracy(answers: list[str]) -> float:
        return evaluate_answers(run.config, rows, answers, split="test", model="", metrics="accuracy").scores[
            "accuracy"]

    pt = run.predict(rows, max_new_tokens=8)
    onnx = ex.predict(rows, max_new_tokens=8)
    results = {
        "machine": machine(),
        "base_weights": run.config.base_weights,
        "export_int4_switchable_s": [round(t, 1) for t in export_times],
        "export_int4_switchable_s_median": round(statistics.median(export_times), 1),
        "export_size_mb": round(ex.size_mb, 1),
        "adapter_size_mb": round(ex.adapter.stat().st_size / 1e6, 2),
        "convert_adapter_s_median": round(statistics.median(convert), 3),
        "tokens_per_s_median": {k: round(v, 1) for k, v in med.items()},
        "first_token_ms_median": {k: round(statistics.median(v) * 1000, 1) for k, v in first.items()},
        "speedup_onnx_base_vs_torch_fp32": round(med["onnx_base"] / med["torch_base"], 2),
        "speedup_onnx_adapter_vs_torch_fp32": round(med["onnx_adapter"] / med["torch_base"], 2),
        "speedup_onnx_adapter_vs_torch_lora": round(med["onnx_adapter"] / med["torch_lora"], 2),
        "test_accuracy_torch": accuracy(pt),
        "test_accuracy_onnx_int4": accuracy(onnx),
        "agreement": sum(label_of(a) == label_of(b) for a, b in zip(onnx, pt, strict=True)) / len(rows),
        "base_folder": store.base_folder_name(run.config.model_name_or_path, "int4", peft_weights(run.output_path)),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
