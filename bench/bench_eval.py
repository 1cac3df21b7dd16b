"""What generation-eval costs, and whether the kernel stays responsive while it runs (results go to BENCHMARKS.md;
`make bench` runs this).

In a real ipykernel (as bench_kernel.py starts one), `%%finetune` trains the embedded model with its dashboard while
this script sends a trivial cell every half second and times the reply. Each task trains twice in a row, alternating:
with the default generation-eval (eval_generate_samples empty: 16 eval rows answered greedily at each evaluation and
scored) and without it (eval_generate_samples: 0). Everything else is equal, so from each run's metrics.jsonl:

- an evaluation's wall time is the Eval event's elapsed minus the Step event's just before it (eval loss, plus the
  answers and their scores when generation-eval is on); the difference of the medians is what generation-eval adds;
- its share of a run is that cost times the run's evaluations over the generation-eval run's wall time;
- the ping latencies (p50, p95, max) of the runs with generation-eval against those without.

Tasks: tones (labels of 1-3 tokens; accuracy + f1) and changelog (one-line entries of up to about 30 tokens; bleu,
rouge, chrf), the two bundled datasets. Medians over the evaluations of both repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from jupyter_client.manager import KernelManager

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernel import PING_EVERY, drain, execute  # the same kernel client as the responsiveness benchmark
from bench_memory import machine  # one description of the machine for every benchmark

BASE = {
    "model_name_or_path": "smollm2-135m-instruct", "use_chat_template": True, "target_modules": "all-linear",
    "lora_r": 16, "lora_alpha": 32, "learning_rate": 3e-3, "per_device_train_batch_size": 8, "max_seq_len": 96,
    "eval_steps": 5,
}
TASKS = {"tones": {**BASE, "data_name": "tones"}, "changelog": {**BASE, "data_name": "changelog"}}


def train(kc: Any, name: str, config: dict[str, Any]) -> dict[str, Any]:
    """One %%finetune run in the kernel, pinged until it ends: its ping latencies, evaluation times and wall time."""
    execute(kc, f"%%finetune --name {name} -o run\n{yaml.safe_dump(config)}")
    latencies = []
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        time.sleep(PING_EVERY)
        content, elapsed = execute(kc, "1 + 1", user_expressions={"status": "str(run.status)"})
        status = content["user_expressions"]["status"]["data"]["text/plain"].strip("'")
        if status in ("running", "starting"):
            latencies.append(elapsed)
        drain(kc)
        if status in ("finished", "stopped", "failed"):
            break
    else:
        raise SystemExit(f"run {name} still {status} after an hour")
    if status != "finished":
        raise SystemExit(f"run {name} {status}: see runs/{name}/error.log")
    records = [json.loads(line) for line in (Path("runs") / name / "metrics.jsonl").read_text().splitlines()]
    evaluations, last_step = [], None
    for record in records:
        if record["event"] == "step":
            last_step = record
        elif record["event"] == "eval" and last_step is not None and last_step["step"] == record["step"]:
            evaluations.append({"seconds": record["elapsed"] - last_step["elapsed"],
                                "scores": record.get("metrics") or {}})
    state = json.loads((Path("runs") / name / "run.json").read_text())
    return {"latencies": latencies, "evaluations": evaluations, "wall_s": state["elapsed"], "steps": state["step"]}


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def summary(on: list[dict[str, Any]], off: list[dict[str, Any]]) -> dict[str, Any]:
    eval_on = [e["seconds"] for run in on for e in run["evaluations"]]
    eval_off = [e["seconds"] for run in off for e in run["evaluations"]]
    cost = statistics.median(eval_on) - statistics.median(eval_off)
    shares = [cost * len(run["evaluations"]) / run["wall_s"] for run in on]
    ping_on = [x for run in on for x in run["latencies"]]
    ping_off = [x for run in off for x in run["latencies"]]
    return {
        "evaluation_s_median": {"generation_eval": round(statistics.median(eval_on), 2),
                                "loss_only": round(statistics.median(eval_off), 2)},
        "evaluation_s": {"generation_eval": [round(x, 2) for x in eval_on],
                         "loss_only": [round(x, 2) for x in eval_off]},
        "generation_eval_cost_s_per_evaluation": round(cost, 2),
        "share_of_run_pct": [round(100 * s, 1) for s in shares],
        "wall_s": {"generation_eval": [round(r["wall_s"]) for r in on], "loss_only": [round(r["wall_s"]) for r in off]},
        "evaluations_per_run": len(on[0]["evaluations"]),
        "last_scores": on[-1]["evaluations"][-1]["scores"] if on[-1]["evaluations"] else {},
        "ping_ms": {label: {"n": len(x), "p50": round(1000 * statistics.median(x), 1), "p95": round(1000 * p95(x), 1),
                            "max": round(1000 * max(x), 1)}
                    for label, x in (("generation_eval", ping_on), ("loss_only", ping_off))},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="steps per run (an evaluation every 5)")
    parser.add_argument("--repeats", type=int, default=2, help="pairs of runs per task (with, without)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="bundled datasets to train on, comma-separated")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "eval.json"))
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "SLMNB_HOME": os.environ.get("SLMNB_HOME", str(root / ".cache" / "slmnb")),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results: dict[str, Any] = {"machine": machine(), "steps": args.steps, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        km = KernelManager(kernel_name="python3")
        km.start_kernel(env=env, cwd=folder)
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        try:
            execute(kc, "%load_ext slmnb")
            for task in args.tasks.split(","):
                config = {**TASKS[task], "max_steps": args.steps}
                on, off = [], []
                for i in range(args.repeats):
                    on.append(train(kc, f"{task}-on{i}", config))
                    off.append(train(kc, f"{task}-off{i}", {**config, "eval_generate_samples": 0}))
                    print(f"{task} pair {i + 1}: wall {on[-1]['wall_s']:.0f} s with generation-eval, "
                          f"{off[-1]['wall_s']:.0f} s without", file=sys.stderr, flush=True)
                results[task] = summary(on, off)
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    print(json.dumps(results, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
