"""Memory of the quickstart's training in a real kernel (results go to BENCHMARKS.md and bench/results/memory.json).

A real ipykernel is started with jupyter_client, as JupyterLab would, and the kernel process's resident set size
(RSS, from /proc through psutil) is sampled every 50 ms from this process. Each scenario gets a fresh kernel:

- default: the quickstart notebook's training cell (the demo job, slmnb.demo.DEMO_CONFIG: embedded model, tones,
  LoRA all-linear r=16 on the top 15 layers, 8 rows at a time accumulated to 16 per step, max_seq_len 96) with its
  live dashboard, then
  `run.wait()`; then a second run of the same cell in the same kernel, then a resume of the first run for a few more
  steps. Peak RSS during each, and the RSS once each has ended (the kernel idle, a settled reading): a run that has
  ended should leave nothing behind.
- batch16, quarters: the same cell with the 16 rows of a step taken at once, or as four of 4: its peak.
- low_memory: the same cell with the low-memory setting the README documents (four of 4 rows, and gradient
  checkpointing): its peak.

max_steps is capped (see STEPS), with an evaluation every half of it: the peak comes with the first optimizer step,
and the steps after that repeat the same allocations. Timings are not the point here (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml
from jupyter_client.manager import KernelManager

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from slmnb.demo import DEMO_CONFIG  # the quickstart's training cell is the demo job

QUICKSTART = dict(DEMO_CONFIG)
# Other settings of the same job, each in a fresh kernel (peak only). All keep 16 rows per optimizer step.
SETTINGS = {
    "batch16": {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 1},
    "quarters": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 4},
    # The low-memory setting the README documents: 4 rows at a time, activations recomputed in the backward pass.
    "low_memory": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 4, "gradient_checkpointing": True},
}
STEPS = 4  # with evaluations at steps 2 and 4: the peak comes with the first step, later steps repeat it
RESUME_STEPS = 2  # steps the resume adds
GB = 1e9
# The goals of issue 13 (GB of the kernel's RSS).
GOAL_PEAK, GOAL_LOW_MEMORY, GOAL_GROWTH = 3.0, 2.0, 0.1


class RssSampler:
    """The peak RSS of a process between mark() calls, sampled on a thread every `every` seconds."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.process = psutil.Process(pid)
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def now(self) -> int:
        return int(self.process.memory_info().rss)

    def mark(self) -> int:
        """The peak since the previous mark, and start a new window."""
        peak, self.peak = max(self.peak, self.now()), 0
        return peak

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.peak = max(self.peak, self.now())
            except psutil.Error:
                return


class Kernel:
    """A fresh ipykernel in a folder of its own, and the RSS sampler on its process."""

    def __init__(self, folder: str, env: dict[str, str]) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env, cwd=tempfile.mkdtemp(dir=folder))  # its own runs/ folder
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.sampler = RssSampler(int(self.execute("import os", pid="os.getpid()")["pid"]))

    def execute(self, code: str, timeout: float = 1800, **expressions: str) -> dict[str, Any]:
        """Run a cell and wait for its reply; `expressions` come back as their text/plain values."""
        msg_id = self.kc.execute(code, user_expressions=expressions)
        while True:
            reply = self.kc.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        self._drain()
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"{code!r} failed: {reply['content'].get('evalue')}")
        return {k: v["data"]["text/plain"] for k, v in reply["content"]["user_expressions"].items()}

    def settled_rss(self) -> int:
        """RSS once the kernel is idle and the run's thread has ended: the lasting cost of what ran."""
        time.sleep(2.0)
        return self.sampler.now()

    def close(self) -> None:
        self.sampler.close()
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)

    def _drain(self) -> None:
        while True:
            try:
                self.kc.get_iopub_msg(timeout=0.2)
            except Exception:
                return


def capped(config: dict[str, Any], steps: int) -> dict[str, Any]:
    """The job cut to `steps` steps, evaluating twice (after half of them and at the end)."""
    return {**config, "max_steps": steps, "eval_steps": max(1, steps // 2)}


def train_cell(kernel: Kernel, name: str, config: dict[str, Any]) -> dict[str, float]:
    """The quickstart's %%finetune cell, then run.wait(): (peak GB during it, settled GB after it)."""
    kernel.sampler.mark()
    start = time.perf_counter()
    kernel.execute(f"%%finetune --name {name} -o {name}\n{yaml.safe_dump(config, sort_keys=False)}")
    kernel.execute(f"{name}.wait(); assert {name}.status == 'finished', {name}.status")
    seconds = time.perf_counter() - start
    return {"peak_gb": kernel.sampler.mark() / GB, "after_gb": kernel.settled_rss() / GB, "seconds": seconds}


def resume_cell(kernel: Kernel, name: str, max_steps: int) -> dict[str, float]:
    kernel.sampler.mark()
    kernel.execute(f"{name}.resume(max_steps={max_steps}).wait(); assert {name}.status == 'finished'")
    return {"peak_gb": kernel.sampler.mark() / GB, "after_gb": kernel.settled_rss() / GB}


def default_scenario(folder: str, env: dict[str, str], steps: int, before: bool = False) -> dict[str, Any]:
    kernel = Kernel(folder, env)
    try:
        kernel.execute("%load_ext slmnb")
        if before:  # what a run left behind before the engine released it (issue 13): the same code, minus that
            kernel.execute("import slmnb.training.engine as engine; engine.release_memory = lambda: None")
        loaded = kernel.settled_rss() / GB
        config = capped(QUICKSTART, steps)
        first = train_cell(kernel, "first", config)
        second = train_cell(kernel, "second", config)
        resumed = resume_cell(kernel, "first", steps + RESUME_STEPS)
    finally:
        kernel.close()
    return {"after_load_ext_gb": loaded, "first_run": first, "second_run": second, "resume_first": resumed,
            "lasting_growth_second_run_gb": second["after_gb"] - first["after_gb"],
            "lasting_growth_resume_gb": resumed["after_gb"] - second["after_gb"]}


def peak_scenario(folder: str, env: dict[str, str], steps: int, overrides: dict[str, Any]) -> dict[str, Any]:
    kernel = Kernel(folder, env)
    try:
        kernel.execute("%load_ext slmnb")
        run = train_cell(kernel, "job", capped({**QUICKSTART, **overrides}, steps))
    finally:
        kernel.close()
    return {"run": run}


def machine() -> str:
    """The machine a benchmark ran on, with its matmul peaks measured now, in this process: a number from one kind of
    CPU does not carry to another, nor from a calm machine to a busy one."""
    import torch

    model = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), "?")
    bf16 = "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    peaks = ", ".join(f"{dtype} {matmul_gflops(getattr(torch, dtype)):.0f}" for dtype in ("float32", "bfloat16"))
    return (f"{model} ({platform.machine()}), {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} "
            f"GiB, avx512_bf16 {'yes' if bf16 else 'no'} (precision auto: {'bf16' if bf16 else 'fp32'}), "
            f"matmul GFLOP/s {peaks} ({torch.get_num_threads()} threads), torch {torch.__version__}")


def matmul_gflops(dtype: object, size: int = 1024, repeats: int = 5, budget_s: float = 3.0) -> float:
    """The best of a few square matmuls: the peak this process gets now. Emulated bf16 (no avx512_bf16) runs at
    about 1 GFLOP/s, 2 s a product, so the repeats stop once the budget is spent."""
    import torch

    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)  # type: ignore[arg-type]
    best, spent = float("inf"), 0.0
    for _ in range(repeats + 1):  # the first warms up
        start = time.perf_counter()
        torch.mm(a, b)
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
        if spent > budget_s:
            break
    return 2 * size**3 / best / 1e9


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--rounds", type=int, default=1, help="repeat each scenario; medians are reported")
    parser.add_argument("--only", choices=["default", *SETTINGS])
    parser.add_argument("--before", action="store_true",
                        help="the default scenario without the engine's release of a finished run's memory")
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "SLMNB_HOME": os.environ.get("SLMNB_HOME", str(root / ".cache" / "slmnb")),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(machine(), flush=True)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in ("default", *SETTINGS)}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            # Alternate the scenarios, each in a fresh kernel.
            for name in samples:
                if args.only in (None, name):
                    sample = (default_scenario(folder, env, args.steps, args.before) if name == "default" else
                              peak_scenario(folder, env, args.steps, SETTINGS[name]))
                    samples[name].append(sample)
                    print(name, json.dumps(samples[name][-1]), flush=True)
    result = {"machine": machine(), "steps": args.steps, "before": args.before, "samples": samples,
              **summary(samples)}
    print(json.dumps(result, indent=1))
    out = root / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / ("memory-before.json" if args.before else "memory.json")).write_text(json.dumps(result, indent=1))
    return 0


def summary(samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    out: dict[str, Any] = {}
    if samples["default"]:
        d = samples["default"]
        peak = med([s["first_run"]["peak_gb"] for s in d])
        growth = med([max(s["lasting_growth_second_run_gb"], s["lasting_growth_resume_gb"]) for s in d])
        out["default"] = {"peak_gb": peak, "peak_second_run_gb": med([s["second_run"]["peak_gb"] for s in d]),
                          "after_first_gb": med([s["first_run"]["after_gb"] for s in d]),
                          "after_second_gb": med([s["second_run"]["after_gb"] for s in d]),
                          "after_resume_gb": med([s["resume_first"]["after_gb"] for s in d]),
                          "lasting_growth_gb": growth,  # the larger of the second run's and the resume's
                          f"peak_under_{GOAL_PEAK}_gb": peak < GOAL_PEAK,
                          f"growth_under_{GOAL_GROWTH}_gb": growth < GOAL_GROWTH}
    for name in SETTINGS:
        if samples[name]:
            peak = med([s["run"]["peak_gb"] for s in samples[name]])
            out[name] = {"peak_gb": peak, "seconds": med([s["run"]["seconds"] for s in samples[name]])}
    if samples["low_memory"]:
        out["low_memory"][f"peak_under_{GOAL_LOW_MEMORY}_gb"] = out["low_memory"]["peak_gb"] < GOAL_LOW_MEMORY
    return out


if __name__ == "__main__":
    sys.exit(main())
