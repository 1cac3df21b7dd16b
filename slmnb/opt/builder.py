"""Run the onnxruntime-genai model builder in a child process, reporting its phases as it goes.

A child process rather than an import: the builder holds the GIL for most of a minute and loads a second copy
of the model, and a notebook kernel must stay responsive and keep its memory. Its console output is the only
progress it gives, so the phases are read from the lines it prints.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from slmnb.errors import ExportError
from slmnb.opt.telemetry import child_env

Phase = Callable[[str], None]

# What each builder line means for a person waiting on it.
_PHASES = [
    (re.compile(r"^Reading embedding layer"), "reading the embeddings"),
    (re.compile(r"^Reading layer (\d+)"), "reading layer {n}/{layers}"),
    (re.compile(r"^Reading (final norm|LM head)"), "reading the output layer"),
    (re.compile(r"^Saving ONNX model"), "quantizing and saving"),
    (re.compile(r"^Saving GenAI config"), "writing the genai config"),
]
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_ERROR_LINE = re.compile(r"(Error|Exception|error:|not supported|Killed)")
# Lines of a traceback that show code, not what went wrong.
_CODE_LINE = re.compile(r"^(Traceback|File \"|raise\b|During handling|The above exception|[~^ ]+$)")


def quant_options(precision: str) -> list[str]:
    """The builder's extra options for a precision.

    int4 is k_quant (blocks of 32) with the last MatMul, the output layer, in int8: plain round-to-nearest int4
    halved a fine-tune's accuracy in RECIPES' measurements. Blocks of 16 kept two more of 48 test answers on the
    demo's fine-tune but generated at 0.73x the speed and took 9 s longer to export (BENCHMARKS.md).
    """
    if precision == "int4":
        return ["algo_config=k_quant", "matmul_mixed_precision=last_matmul:int8"]
    return []


def use_one_thread_if_small(folder: Path, parameters: float) -> None:
    """Decode a small model on one core.

    Generating with a 135M model is bound by latency, not arithmetic: on the 2-core machines one thread gave 94
    tokens/s against 85 with two, and the same time on prompt-heavy evaluation, while leaving a core to the notebook
    kernel or a training run. Larger models keep onnxruntime's default of every core.
    """
    if parameters > 1e9:
        return
    path = folder / "genai_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = 1
    path.write_text(json.dumps(config, indent=4), encoding="utf-8")


def run_builder(hf_dir: str | Path, out: Path, precision: str, *, adapter_dir: Path | None = None,
                keep_float: Sequence[str] = (), layers: int = 0, on_phase: Phase | None = None,
                log_path: Path) -> None:
    """Write an ONNX model of `hf_dir` (with the LoRA of `adapter_dir` as separate MatMuls) into `out`.

    `keep_float` names MatMul nodes left out of weight quantization. The builder's whole output goes to
    `log_path`, which must lie outside any folder that is removed on failure: a failure raises an ExportError
    naming the relevant lines and that log. The child dies with this process (see `spawn`).
    """
    options = quant_options(precision)
    if adapter_dir is not None:
        options.append(f"adapter_path={adapter_dir}")
    if keep_float:
        options.append("nodes_to_exclude=" + ",".join(keep_float))
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
               "-p", precision, "-e", "cpu", "-c", str(out / ".builder-cache")]
    if options:
        command += ["--extra_options", *options]
    lines: list[str] = []
    shown = None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # The input is always a local folder: the builder must never try the hub, nor send telemetry.
    with open(log_path, "w", encoding="utf-8") as log, spawn(command, child_env()) as child:
        assert child.stdout is not None
        try:
            for raw in child.stdout:
                log.write(raw)
                # tqdm redraws with carriage returns: only the last state of a line is worth reading.
                line = raw.rstrip("\n").split("\r")[-1].strip()
                lines.append(line)
                phase = _phase(line, layers)
                if phase and phase != shown and on_phase is not None:
                    shown = phase
                    on_phase(phase)
        except BaseException:
            child.kill()  # Ctrl-C, or a failing listener: the builder must not go on alone
            raise
        code = child.wait()
    if code != 0:
        raise ExportError(f"The ONNX model builder failed (exit code {code}): {relevant(lines)} "
                          f"(its whole output is in {log_path}; fix that, then export again).")


def spawn(command: Sequence[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """Start a child whose lines are read from its stdout, and which is killed when this process dies.

    On Linux the child asks for SIGKILL on its parent's death (prctl PR_SET_PDEATHSIG) before it execs. The
    signal follows the THREAD that forked, so call this from the thread that then waits for the child, as
    `run_builder` does. A parent that died between the fork and the prctl is caught by comparing getppid().
    """
    return subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            bufsize=1, preexec_fn=_die_with_parent())


def _die_with_parent() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal

    # Resolved here, before the fork: between fork and exec the child only makes two system calls, which is
    # what keeps a preexec_fn safe in a process with threads.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent, kill = os.getpid(), int(signal.SIGKILL)

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, kill)
        if os.getppid() != parent:
            os._exit(1)  # the parent is already gone: nobody would read this child

    return in_child


def _phase(line: str, layers: int) -> str | None:
    for pattern, text in _PHASES:
        match = pattern.match(line)
        if match:
            n = int(match.group(1)) + 1 if match.groups() and match.group(1).isdigit() else 0
            return text.format(n=n, layers=layers or "?")
    return None


def relevant(lines: Sequence[str], most: int = 3) -> str:
    """The lines of a failed build worth showing: the last error-looking ones, else the last line."""
    errors = [line for line in lines if _ERROR_LINE.search(line) and not _CODE_LINE.match(line)]
    picked = errors[-most:] or [line for line in lines if line][-1:] or ["no output"]
    return " / ".join(line[:300] for line in picked)
