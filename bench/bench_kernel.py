"""The kernel stays usable while a run trains (results go to BENCHMARKS.md; `make bench` runs this).

A real ipykernel is started with jupyter_client, as JupyterLab would. In it, `%%finetune` trains the embedded
model in the background with its live dashboard while this script sends a trivial cell every half second and
times the execute_reply: p50 / p95 / max latency. Then the training slowdown the dashboard causes: the same run
with the dashboard (`%%finetune`) and without it (`slmnb.finetune()`, no listener), alternating A B A B, compared
on the median seconds per step from each run's metrics.jsonl (the first steps, which warm up, are left out).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import yaml
from jupyter_client.manager import KernelManager

CONFIG = {
    "model_name_or_path": "smollm2-135m-instruct", "data_name": "tones", "use_chat_template": True,
    "target_modules": "all-linear", "lora_r": 16, "lora_alpha": 32, "learning_rate": 3e-3,
    "per_device_train_batch_size": 8, "max_seq_len": 96, "eval_steps": 10, "max_steps": 30,
}
PING_EVERY = 0.5
WARMUP_STEPS = 3


def execute(kc, code: str, timeout: float = 600, **kwargs) -> tuple[dict, float]:
    start = time.perf_counter()
    msg_id = kc.execute(code, **kwargs)
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    elapsed = time.perf_counter() - start
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"{code!r} failed: {reply['content'].get('evalue')}")
    return reply["content"], elapsed


def drain(kc) -> None:
    while True:
        try:
            kc.get_iopub_msg(timeout=0)
        except Exception:
            return


def train(kc, name: str, dashboard: bool, ping: bool) -> tuple[list[float], list[float]]:
    """Start a run in the kernel; ping it until it ends. Returns (latencies, seconds per step)."""
    body = yaml.safe_dump(CONFIG)
    if dashboard:
        execute(kc, f"%%finetune --name {name} -o run\n{body}")
    else:
        execute(kc, f"import slmnb\nrun = slmnb.finetune({CONFIG!r}, name={name!r})")
    latencies = []
    while True:
        time.sleep(PING_EVERY if ping else 2.0)
        content, elapsed = execute(kc, "1 + 1", user_expressions={"status": "str(run.status)"})
        status = content["user_expressions"]["status"]["data"]["text/plain"].strip("'")
        if status in ("running", "starting"):
            latencies.append(elapsed)
        drain(kc)
        if status in ("finished", "stopped", "failed"):
            break
    records = [json.loads(line) for line in (Path("runs") / name / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["event"] == "step"][WARMUP_STEPS:]
    per_step = [b["elapsed"] - a["elapsed"] for a, b in pairwise(steps)
                if not any(e["event"] == "eval" and a["step"] <= e["step"] < b["step"] for e in records)]
    return latencies, per_step


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "SLMNB_HOME": os.environ.get("SLMNB_HOME", str(root / ".cache" / "slmnb")),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        km = KernelManager(kernel_name="python3")
        km.start_kernel(env=env, cwd=folder)
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        try:
            execute(kc, "%load_ext slmnb")
            execute(kc, "import slmnb; slmnb.finetune  # imports nothing heavy yet")
            latencies: list[float] = []
            with_dash: list[float] = []
            without: list[float] = []
            for i in range(2):
                lat, steps = train(kc, f"dash{i}", dashboard=True, ping=True)
                latencies += lat
                with_dash += steps
                _, steps = train(kc, f"plain{i}", dashboard=False, ping=True)
                without += steps
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    a, b = statistics.median(with_dash), statistics.median(without)
    result = {
        "pings": len(latencies), "latency_p50_ms": 1000 * statistics.median(latencies), "latency_p95_ms": 1000 * p95,
        "latency_max_ms": 1000 * latencies[-1], "s_per_step_dashboard": a, "s_per_step_no_dashboard": b,
        "dashboard_slowdown_pct": 100 * (a / b - 1), "steps_compared": [len(with_dash), len(without)],
    }
    print(json.dumps(result, indent=1))
    out = root / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "kernel.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
