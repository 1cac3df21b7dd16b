"""slmnb vs `olive finetune`: seconds per training step on the same job, data and machine, and held-out accuracy.

The job is slmnb's demo job (slmnb.demo.DEMO_CONFIG; --model swaps the model, e.g. tiny-llama for a quick check).

How:
- Olive lives in its own venv (--olive-venv, created on first use: torch first, pinned by constraints.txt as slmnb's
  is, then olive-ai 0.13 and what it needs), never in slmnb's dependencies.
- Olive reads the rows slmnb trains on, written by slmnb's own Olive writer (slmnb.olive.writer, a `messages` column
  rendered as slmnb renders the chat, system prompt included), sliced to the run's train rows. Olive is called as a
  user would call it: `olive finetune` with the job's settings as flags; what the CLI cannot set keeps Olive's
  default, and the result lists those defaults.
- Per step: the gaps between consecutive optimizer steps, inside training only (imports, model load and data
  preparation are not steps). slmnb: its Step events. Olive: a TrainerCallback added to transformers.Trainer by a
  small launcher around Olive's CLI (it reads the clock and what the Trainer got, and changes nothing). The first
  gap of each run is dropped (warm-up); the median of the rest is reported, per step and per token (Olive's CLI
  packs rows into full-length blocks, so its steps hold more tokens). Runs alternate slmnb, Olive, slmnb, Olive, ...
  so drift hits both alike; the load average before the start is recorded, as other work skews both sides.
- --accuracy: one run of each for --eval-steps-total steps, then greedy answers to the test split, scored by slmnb's
  accuracy (first word of the answer against the label). Olive's adapter is answered by slmnb's Predictor on the
  original base weights it trained on, with the same prompts and answer length as run.evaluate().
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from itertools import pairwise
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_memory import machine  # noqa: E402  (one description of the machine for every benchmark)

OLIVE_PACKAGES = ["olive-ai==0.13.0", "requests", "accelerate", "peft", "datasets"]  # olive imports requests undeclared
VERSION_PACKAGES = ["torch", "transformers", "peft", "accelerate", "datasets", "olive-ai"]
TORCH_DTYPES = {"bf16": "bfloat16", "fp32": "float32"}

# Run by the Olive venv's python in place of the `olive` script: the same CLI, plus a callback that stamps the end
# of each optimizer step and writes the stamps and the Trainer's effective arguments to $BENCH_OLIVE_STAMPS.
OLIVE_LAUNCHER = """
import json, os, sys, time
import transformers

stamps, seen = [], {}

class _Stamp(transformers.TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        stamps.append(time.perf_counter())

    def on_train_end(self, args, state, control, **kwargs):
        with open(os.environ["BENCH_OLIVE_STAMPS"], "w") as out:
            json.dump({"stamps": stamps, "log_history": state.log_history, "seen": seen,
                       "training_args": json.loads(args.to_json_string())}, out)

_init = transformers.Trainer.__init__

def _init_with_stamps(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.add_callback(_Stamp())
    # What Olive trains, as the Trainer got it: the LoRA settings, the weights' dtypes, the sequence lengths.
    lora = self.model.peft_config["default"]
    seen.update(lora_r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                target_modules=sorted(lora.target_modules), layers_to_transform=lora.layers_to_transform,
                dtypes=sorted({str(p.dtype) for p in self.model.parameters()}),
                trainable_dtypes=sorted({str(p.dtype) for p in self.model.parameters() if p.requires_grad}),
                train_sequences=len(self.train_dataset),
                sequence_lengths=sorted({len(self.train_dataset[i]["input_ids"])
                                         for i in range(len(self.train_dataset))}))

transformers.Trainer.__init__ = _init_with_stamps
from olive.cli.launcher import main
sys.argv = ["olive", *sys.argv[1:]]
sys.exit(main())
"""


def log(message: str) -> None:
    print(f"[bench_olive] {message}", file=sys.stderr, flush=True)


# --- Olive's venv -------------------------------------------------------------------------------------------------


def ensure_olive_venv(venv: Path) -> Path:
    """Olive's own venv (never slmnb's dependencies); torch first, pinned by constraints.txt like slmnb's."""
    python = venv / "bin" / "python"
    if python.exists():
        return python
    log(f"creating the Olive venv at {venv} (a few minutes)")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "-c", str(ROOT / "constraints.txt")]
    # torch alone first, as `make setup` does: the pinned CPU wheel, so Olive trains on the same torch as slmnb.
    subprocess.run([*pip, "torch"], check=True)
    log(f"torch installed after {time.perf_counter() - start:.0f} s; installing {' '.join(OLIVE_PACKAGES)}")
    subprocess.run([*pip, *OLIVE_PACKAGES], check=True)
    log(f"Olive venv ready in {time.perf_counter() - start:.0f} s")
    return python


def olive_versions(python: Path) -> dict[str, str]:
    code = ("import json, importlib.metadata as m; "
            f"print(json.dumps({{p: m.version(p) for p in {VERSION_PACKAGES!r}}}))")
    return dict(json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                                          check=True).stdout))


def slmnb_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ["slmnb", *VERSION_PACKAGES[:-1]]}


# --- the job and Olive's command ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OliveJob:
    """The job as `olive finetune` takes it: the rows file slmnb's writer made, and the writer's LoRA pass."""

    rows: Path
    train_split: str  # the run's train rows in that file (the rest are its held-out eval rows)
    spec: dict[str, Any]  # the writer's LoRA pass: r, alpha, lora_dropout, target_modules, training_args
    max_seq_len: int
    notes: tuple[str, ...]

    @property
    def tokens_per_step(self) -> int:
        """Olive's CLI packs the rows into max_seq_len-token blocks, so every step trains on the same count."""
        args = self.spec["training_args"]
        return int(args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] * self.max_seq_len)


def job_config(model: str | None) -> dict[str, Any]:
    from slmnb.demo import DEMO_CONFIG

    return {**DEMO_CONFIG, **({"model_name_or_path": model} if model else {})}


def write_olive_job(job: dict[str, Any], precision: str, work: Path) -> OliveJob:
    """The rows through slmnb's Olive writer, so Olive's chat is slmnb's (system prompt included)."""
    from slmnb.config import load_config
    from slmnb.olive.writer import TRAIN_DATA, write_olive_config

    written = write_olive_config(load_config(job), work / "olive-config.json", None, precision=precision)
    values = json.loads(written.path.read_text())
    train = next(d for d in values["data_configs"] if d["name"] == TRAIN_DATA)
    assert written.data_path is not None  # a LoRA job always has its rows written
    spec = next(iter(values["passes"].values()))
    check_system_message(job, written.data_path)
    return OliveJob(rows=written.data_path, train_split=train["load_dataset_config"]["split"], spec=spec,
                    max_seq_len=train["pre_process_data_config"]["max_seq_len"], notes=written.notes)


def check_system_message(job: dict[str, Any], rows: Path) -> None:
    """The writer must carry config.system_prompt into `messages`, or Olive trains on another chat."""
    if job.get("system_prompt") is None:
        return
    first = json.loads(rows.read_text())[0]["messages"][0]
    if first != {"role": "system", "content": job["system_prompt"]}:
        raise SystemExit(f"slmnb's Olive writer left out the system prompt: first message {first}")


def olive_command(model_dir: str, job: OliveJob, steps: int, precision: str, out: Path) -> list[str]:
    """`olive finetune` with every setting of the job its CLI takes; Olive passes the flags it does not know on to
    transformers' TrainingArguments."""
    args = job.spec["training_args"]
    return ["finetune", "-m", model_dir, "-d", "json", "--data_files", str(job.rows),
            "--train_split", job.train_split, "--use_chat_template", "--max_seq_len", str(job.max_seq_len),
            "--method", "lora", "--lora_r", str(job.spec["r"]), "--lora_alpha", str(int(job.spec["alpha"])),
            "--target_modules", ",".join(job.spec["target_modules"]), "--torch_dtype", TORCH_DTYPES[precision],
            "--per_device_train_batch_size", str(args["per_device_train_batch_size"]),
            "--gradient_accumulation_steps", str(args["gradient_accumulation_steps"]),
            "--learning_rate", str(args["learning_rate"]), "--max_steps", str(steps),
            "-o", str(out), "--disable_telemetry"]


# --- running each side --------------------------------------------------------------------------------------------


@dataclass
class Timed:
    gaps: list[float]  # seconds between consecutive optimizer steps
    tokens_per_step: float  # input tokens a step trains on (slmnb: non-padding; Olive: packed blocks, no padding)
    wall_s: float  # the whole run, start-up included
    extra: dict[str, Any]


def run_slmnb(job: dict[str, Any], steps: int, precision: str, runs_dir: Path) -> tuple[Timed, Any]:
    from slmnb.training import events as ev
    from slmnb.training.runs import Runs

    stamps: list[float] = []
    tokens: list[int] = []

    def on_event(event: Any) -> None:
        if isinstance(event, ev.Step):
            stamps.append(time.perf_counter())
            tokens.append(event.tokens_seen)

    log(f"slmnb: {steps} steps ({precision})")
    start = time.perf_counter()
    run = Runs(runs_dir).start(job, max_steps=steps, precision=precision, listeners=[on_event])
    run.wait()
    wall = time.perf_counter() - start
    per_step = (tokens[-1] - tokens[0]) / (len(tokens) - 1) if len(tokens) > 1 else float("nan")
    return Timed(gaps=[b - a for a, b in pairwise(stamps)], tokens_per_step=per_step, wall_s=wall, extra={}), run


def run_olive(python: Path, command: list[str], folder: Path, tokens_per_step: float) -> Timed:
    """One `olive finetune` in its own folder: Olive caches runs in .olive-cache under the working directory, and a
    repeated run would come from that cache instead of training."""
    folder.mkdir(parents=True)
    stamps_file, log_file = folder / "stamps.json", folder / "olive.log"
    log(f"olive: {command[command.index('--max_steps') + 1]} steps ({folder})")
    start = time.perf_counter()
    with log_file.open("w") as out:
        done = subprocess.run([str(python), "-c", OLIVE_LAUNCHER, *command], cwd=folder, stdout=out,
                              stderr=subprocess.STDOUT, env={**os.environ, "BENCH_OLIVE_STAMPS": str(stamps_file)})
    wall = time.perf_counter() - start
    if done.returncode or not stamps_file.exists():
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"olive finetune failed (exit {done.returncode}); the end of {log_file}:\n{tail}")
    record = json.loads(stamps_file.read_text())
    return Timed(gaps=[b - a for a, b in pairwise(record["stamps"])], tokens_per_step=tokens_per_step, wall_s=wall,
                 extra={"training_args": record["training_args"], "log_history": record["log_history"],
                        "seen": record["seen"]})


def trainer_runtime(timed: Timed) -> float:
    return float(next((entry["train_runtime"] for entry in timed.extra["log_history"] if "train_runtime" in entry),
                      float("nan")))


def adapter_folder(output: Path) -> Path:
    found = sorted(path.parent for path in output.rglob("adapter_config.json"))
    if not found:
        raise SystemExit(f"olive finetune wrote no adapter under {output}")
    return found[0]


# --- accuracy -----------------------------------------------------------------------------------------------------


def slmnb_accuracy(run: Any) -> float:
    score = float(run.evaluate("test", metrics="accuracy", progress=False).scores["accuracy"])
    run.release()
    return score


def adapter_accuracy(run_config: Any, adapter: Path) -> float:
    """Olive's adapter answering the test split as run.evaluate() answers it (same prompts, answer length and
    scoring), on the original base weights: Olive trains on those, not on slmnb's int4 base."""
    from slmnb.evaluation import evaluate_answers, split_rows
    from slmnb.training.generate import Predictor
    from slmnb.training.generation_eval import answer_length

    config = run_config.replace(base_weights="original")
    rows = split_rows(config, "test")
    predictor = Predictor(config, adapter)
    answers = predictor.predict(rows, max_new_tokens=answer_length(config, predictor.tokenizer()), progress=False)
    predictor.release()
    evaluation = evaluate_answers(config, rows, answers, split="test", model="olive", metrics="accuracy")
    return float(evaluation.scores["accuracy"])


# --- what differs, the machine, the report --------------------------------------------------------------------------


def olive_choices(job: dict[str, Any], olive_job: OliveJob, olive: dict[str, Any], precision: str) -> list[str]:
    """Olive's own choices in this comparison, which `olive finetune`'s flags do not reach (or a user would not set),
    beside what the slmnb job does; read from what Olive's Trainer got, where it can be."""
    from slmnb.config import load_config

    config = load_config(job)
    args, seen = olive["training_args"], olive["seen"]
    lengths = seen["sequence_lengths"]
    return [
        f"packing: the CLI's data strategy 'join' joins all train rows and cuts them into {olive_job.max_seq_len}-"
        f"token blocks ({seen['train_sequences']} sequences of {min(lengths)}-{max(lengths)} tokens, rows split "
        "across blocks); slmnb trains row by row, each batch padded to its longest row",
        "loss on the whole text (chat markup, prompt and answer); slmnb on the answer only",
        f"gradient_checkpointing {args.get('gradient_checkpointing')} (slmnb: {config.gradient_checkpointing})",
        f"lr schedule {args.get('lr_scheduler_type')}, warmup_steps {args.get('warmup_steps')}, warmup_ratio "
        f"{args.get('warmup_ratio')} (slmnb: {config.lr_scheduler_type}, warmup_ratio {config.warmup_ratio})",
        f"lora_dropout {seen['lora_dropout']} (the CLI has no flag for it; slmnb: {config.lora_dropout})",
        f"layers adapted: {seen.get('layers_to_transform') or 'every layer'} (the CLI has no flag for "
        f"layers_to_transform, which Olive's run config takes; slmnb: {config.layers_to_transform or 'every layer'})",
        f"optimizer {args.get('optim')}, weight_decay {args.get('weight_decay')} (slmnb: weight_decay "
        f"{config.weight_decay})",
        f"--torch_dtype {TORCH_DTYPES[precision]}: weights {', '.join(seen['dtypes'])}, LoRA weights "
        f"{', '.join(seen['trainable_dtypes'])}, Trainer bf16 {args.get('bf16')}"
        + ("; slmnb bf16 keeps the frozen linear weights in bf16 under autocast, the rest fp32"
           if precision == "bf16" else ""),
        "base weights: the original model (slmnb's LoRA trains on its int4 export's weights, base_weights auto)",
        "no evaluation while training (no --eval_split given); slmnb evaluates every eval_steps",
    ]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summary(result: dict[str, Any]) -> str:
    s, o = result["s_per_step"]["slmnb"], result["s_per_step"]["olive"]
    load = result["load_average_1m"]
    lines = [f"machine: {result['machine']}",
             f"load average (1 min) before/after: {load['before']:.1f}/{load['after']:.1f}"
             + (" - something else was running: the timings are skewed" if load["before"] > 0.5 else ""),
             f"job: {result['model']}, {result['precision']}, {result['gaps_per_side']} step gaps per side",
             f"slmnb {s:.3f} s/step ({result['tokens_per_step']['slmnb']:.0f} tokens/step)",
             f"olive {o:.3f} s/step ({result['tokens_per_step']['olive']:.0f} tokens/step)",
             f"olive / slmnb: {result['ratio_olive_over_slmnb']:.1f}x per step, "
             f"{result['ratio_per_token']:.1f}x per token (goal: 4x per step: "
             f"{'met' if result['ratio_olive_over_slmnb'] >= 4 else 'not met'})"]
    if "accuracy" in result:
        acc = result["accuracy"]
        lines.append(f"test accuracy after {acc['steps']} steps: slmnb {acc['slmnb']:.3f}, olive {acc['olive']:.3f}")
    lines.append(f"versions: slmnb venv {result['versions']['slmnb_venv']}; olive venv "
                 f"{result['versions']['olive_venv']}")
    lines += [f"olive's own choice: {choice}" for choice in result["olive_choices"]]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model_name_or_path (default: the demo job's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run (default 20)")
    parser.add_argument("--rounds", type=int, default=2, help="slmnb/Olive pairs of timed runs (default 2)")
    parser.add_argument("--precision", choices=sorted(TORCH_DTYPES), default=None,
                        help="default: what slmnb's precision auto picks on this machine")
    parser.add_argument("--accuracy", action="store_true", help="also train each for --eval-steps-total steps and "
                        "score the test split")
    parser.add_argument("--eval-steps-total", type=int, default=None,
                        help="steps of the accuracy runs (default: the job's max_steps)")
    parser.add_argument("--olive-venv", type=Path, default=ROOT / ".cache" / "olive-venv")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "olive.json")
    return parser.parse_args()


def main() -> None:
    options = parse_args()
    # Another process's work skews both sides (slmnb's short steps most: its OpenMP threads wait on each other), so
    # the load before this process did anything is part of the result.
    load_before = os.getloadavg()[0]
    if options.steps < 3:
        raise SystemExit("--steps must be at least 3: the first gap is warm-up and is dropped")
    python = ensure_olive_venv(options.olive_venv.absolute())  # Olive runs in other folders

    from slmnb.models import model_folder, quiet_libraries
    from slmnb.training.engine import effective_precision

    quiet_libraries()
    job = job_config(options.model)
    precision = options.precision or effective_precision("auto")
    work = Path(tempfile.mkdtemp(prefix="bench-olive-"))
    model_dir = model_folder(job["model_name_or_path"])  # converted once, outside every timing
    olive_job = write_olive_job(job, precision, work)
    log(f"work folder {work}; model {model_dir}; precision {precision}")

    slmnb_runs: list[Timed] = []
    olive_runs: list[Timed] = []
    for i in range(options.rounds):  # A B A B: the machine's drift hits both sides alike
        slmnb_runs.append(run_slmnb(job, options.steps, precision, work / f"runs-{i}")[0])
        command = olive_command(model_dir, olive_job, options.steps, precision, work / f"olive-{i}" / "out")
        olive_runs.append(run_olive(python, command, work / f"olive-{i}", olive_job.tokens_per_step))
    result = timing_result(job, precision, olive_job, slmnb_runs, olive_runs)
    result["olive_command"] = "olive " + shlex.join(olive_command(model_dir, olive_job, options.steps, precision,
                                                                  Path("OUT")))
    result["versions"] = {"slmnb_venv": slmnb_versions(), "olive_venv": olive_versions(python)}
    if options.accuracy:
        steps = options.eval_steps_total or job["max_steps"]
        result["accuracy"] = accuracy_runs(steps, job, precision, python, model_dir, olive_job, work)
    result["load_average_1m"] = {"before": load_before, "after": os.getloadavg()[0]}
    # Last: the matmul peaks run on this (main) thread, and nothing of them should linger into a timed run.
    result["machine"] = machine()
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result, indent=2, default=str))
    print("\n" + summary(result))


def timing_result(job: dict[str, Any], precision: str, olive_job: OliveJob, slmnb_runs: list[Timed],
                  olive_runs: list[Timed]) -> dict[str, Any]:
    """Medians of the step gaps after each run's first (warm-up), per step and per token, with what Olive ran."""
    slmnb_gaps = [gap for timed in slmnb_runs for gap in timed.gaps[1:]]
    olive_gaps = [gap for timed in olive_runs for gap in timed.gaps[1:]]
    s_slmnb, s_olive = median(slmnb_gaps), median(olive_gaps)
    tokens_slmnb = median([timed.tokens_per_step for timed in slmnb_runs])
    olive = olive_runs[-1].extra
    return {
        "model": job["model_name_or_path"],
        "precision": precision,
        "job": job,
        "gaps_per_side": len(slmnb_gaps),
        "s_per_step": {"slmnb": s_slmnb, "olive": s_olive},
        "ratio_olive_over_slmnb": s_olive / s_slmnb,
        "tokens_per_step": {"slmnb": tokens_slmnb, "olive": olive_job.tokens_per_step},
        "ratio_per_token": (s_olive / olive_job.tokens_per_step) / (s_slmnb / tokens_slmnb),
        "step_gaps": {"slmnb": [t.gaps for t in slmnb_runs], "olive": [t.gaps for t in olive_runs]},
        "wall_s_per_run": {"slmnb": [t.wall_s for t in slmnb_runs], "olive": [t.wall_s for t in olive_runs]},
        # A cross-check from Olive's own log: the Trainer's train_runtime over its steps (first step included).
        "olive_train_runtime_s_per_step": [trainer_runtime(t) / (len(t.gaps) + 1) for t in olive_runs],
        "olive_training_args": {key: olive["training_args"].get(key) for key in (
            "learning_rate", "lr_scheduler_type", "warmup_ratio", "warmup_steps", "gradient_checkpointing", "bf16",
            "optim", "weight_decay", "per_device_train_batch_size", "gradient_accumulation_steps", "max_steps",
            "seed", "save_steps", "use_cpu")},
        "olive_saw": olive["seen"],
        "olive_choices": olive_choices(job, olive_job, olive, precision),
        "writer_notes": list(olive_job.notes),
    }


def accuracy_runs(steps: int, job: dict[str, Any], precision: str, python: Path, model_dir: str, olive_job: OliveJob,
                  work: Path) -> dict[str, Any]:
    """One run of each for `steps` steps, then the test split answered and scored."""
    timed, run = run_slmnb(job, steps, precision, work / "runs-accuracy")
    log("slmnb: answering the test split")
    slmnb_score = slmnb_accuracy(run)
    folder = work / "olive-accuracy"
    olive_timed = run_olive(python, olive_command(model_dir, olive_job, steps, precision, folder / "out"), folder,
                            olive_job.tokens_per_step)
    log("olive: answering the test split")
    olive_score = adapter_accuracy(run.config, adapter_folder(folder / "out"))
    return {"steps": steps, "slmnb": slmnb_score, "olive": olive_score,
            "s_per_step": {"slmnb": median(timed.gaps[1:]), "olive": median(olive_timed.gaps[1:])}}


if __name__ == "__main__":
    main()
