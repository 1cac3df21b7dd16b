"""Hyperparameter search on the embedded model: what pruning saves, what a trial costs to start, and which defaults a
config that names only the model and the data should get (results go to BENCHMARKS.md; `make bench` runs this).

Two searches of the same trials: Optuna's random sampler with one seed draws the same parameters for trial n in
both, so they differ only by the pruner (median against none). The config is what a newcomer writes (the embedded
model and the bundled tones data, every other field at its default) with max_steps 36 (one epoch, half the default
two, so both searches fit in about 40 minutes), over the learning rate and the LoRA layers. With --enqueue the
first two trials are slmnb's old default (2e-4 on q_proj and v_proj, Olive's learning rate) and the quickstart's
(3e-3 on all linear layers): the defaults' evidence. Without it every trial is drawn, as in a user's search: the
pruning measurement.

Reported, from the searches' own trials and events:
- per search: the best objective (eval_loss) and its parameters, optimizer steps trained, wall time; the steps
  pruning saved (1 - pruned steps / unpruned steps);
- per trial: the time from the search starting it to its run's first step (model load, data, the trainer), and
  the gap between one trial's end and the next one's start;
- for each trial the unpruned search completed: its accuracy on the tones test split (48 phrases never trained
  on), answered greedily (run.evaluate): the evidence for the defaults.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import machine  # one description of the machine for every benchmark

FIXED = {"model_name_or_path": "smollm2-135m-instruct", "data_name": "tones"}
SPACE = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
         "target_modules": {"type": "choice", "values": ["q_proj,v_proj", "all-linear"]}}
ENQUEUE = [{"learning_rate": 2e-4, "target_modules": "q_proj,v_proj"},
           {"learning_rate": 3e-3, "target_modules": "all-linear"}]


def run_search(name: str, pruner: str, trials: int, seed: int, fixed: dict[str, Any],
               enqueue: list[dict[str, Any]]) -> dict[str, Any]:
    import slmnb
    from slmnb.training import events as ev
    from slmnb.tuning import events as sev

    times: dict[int, dict[str, float]] = {}

    def listen(event: Any) -> None:
        now = time.monotonic()
        if isinstance(event, sev.TrialStarted):
            times.setdefault(event.number, {})["started"] = now
        elif isinstance(event, sev.TrialEvent) and isinstance(event.event, ev.Step):
            times.setdefault(event.number, {}).setdefault("first_step", now)
        elif isinstance(event, sev.TrialEnded):
            times.setdefault(event.number, {})["ended"] = now

    began = time.monotonic()
    found = slmnb.search({**fixed, "search_space": SPACE, "objective": "eval_loss",
                          "search_strategy": {"type": "random", "num_trials": trials, "seed": seed,
                                              "pruner": pruner, "enqueue": enqueue}}, name=name)
    found.subscribe(listen)
    found.wait()
    wall = time.monotonic() - began
    rows = found.trials
    numbers = sorted(times)
    starts = [times[n]["first_step"] - times[n]["started"] for n in numbers if "first_step" in times[n]]
    gaps = [times[b]["started"] - times[a]["ended"] for a, b in itertools.pairwise(numbers)
            if "ended" in times[a] and "started" in times[b]]
    best = found.best
    print(f"{name}: {wall:.0f} s, steps {sum(r.steps for r in rows)}, best {best}", file=sys.stderr, flush=True)
    return {
        "pruner": pruner, "wall_s": round(wall, 1), "steps": sum(r.steps for r in rows),
        "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params},
        "trials": [{"number": r.number, "state": r.state, "value": r.value, "steps": r.steps,
                    "max_steps": r.max_steps, "seconds": r.seconds, "params": r.params, "run": r.run,
                    "curve": curve(r.run)} for r in rows],
        "start_to_first_step_s": [round(s, 2) for s in starts],
        "median_start_to_first_step_s": round(statistics.median(starts), 2) if starts else None,
        "gap_between_trials_s": [round(g, 2) for g in gaps],
    }


def curve(run: str) -> dict[int, float]:
    """A trial's eval loss by step: with the unpruned search's curves, another pruner can be judged offline."""
    import slmnb

    return {m["step"]: m["eval_loss"] for m in slmnb.load_run(run).metrics if m["event"] == "eval"}


def test_accuracy(result: dict[str, Any]) -> None:
    """Each completed trial's accuracy on the test split, added to its entry."""
    import slmnb

    for trial in result["trials"]:
        if trial["state"] == "complete":
            evaluation = slmnb.load_run(trial["run"]).evaluate("test", metrics="accuracy", progress=False)
            trial["test_accuracy"] = evaluation.scores["accuracy"]
            print(f"trial {trial['number']} {trial['params']}: test accuracy {trial['test_accuracy']:.3f}",
                  file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="trials per search")
    parser.add_argument("--enqueue", action="store_true",
                        help="make the first two trials the old default and the quickstart's (the defaults' evidence)")
    parser.add_argument("--seed", type=int, default=0, help="the random sampler's seed, the same for both searches")
    parser.add_argument("--max-steps", type=int, default=36, help="steps per trial, 0 for the config's default")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "search.json"))
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    os.environ.setdefault("SLMNB_HOME", str(root / ".cache" / "slmnb"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    fixed = {**FIXED, **({"max_steps": args.max_steps} if args.max_steps else {})}  # 0: the config's own
    results: dict[str, Any] = {"machine": machine(), "trials": args.trials, "seed": args.seed, "fixed": fixed,
                               "space": SPACE, "enqueue": ENQUEUE if args.enqueue else []}
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        enqueue = results["enqueue"]
        results["unpruned"] = run_search("unpruned", "none", args.trials, args.seed, fixed, enqueue)
        results["pruned"] = run_search("pruned", "median", args.trials, args.seed, fixed, enqueue)
        test_accuracy(results["unpruned"])
    unpruned, pruned = results["unpruned"], results["pruned"]
    results["steps_saved"] = round(1 - pruned["steps"] / unpruned["steps"], 3) if unpruned["steps"] else None
    print(json.dumps(results, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
