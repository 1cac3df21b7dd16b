from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slmnb.cli import ProgressBar, main
from slmnb.training import events as ev


@pytest.fixture
def config_file(workdir: Path, tiny: dict) -> Path:
    (workdir / "data.json").write_text(json.dumps(tiny.pop("rows")))
    (workdir / "run.yaml").write_text(json.dumps({**tiny, "data_files": "data.json"}))
    return workdir / "run.yaml"


def test_cli_trains_with_overrides(config_file: Path, capsys) -> None:
    assert main(["finetune", str(config_file), "--max_steps", "4", "--name", "cli", "--lora_r", "4"]) == 0
    state = json.loads(Path("runs/cli/run.json").read_text())
    assert (state["status"], state["step"]) == ("finished", 4)
    assert "lora_r: 4" in Path("runs/cli/config.yaml").read_text()
    err = capsys.readouterr().err
    assert "4/4" in err and "finished (completed) at step 4" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lora_r", "0"], "error: lora_r must be at least 1, got 0.\n"),
        (["--lora_rank", "4"], "error: Unknown config key 'lora_rank': did you mean lora_r?\n"),
        (["--data_files", "nowhere.json"], "error: Data file 'nowhere.json' does not exist"),
        (["--method", "dora"], "error: method must be one of lora, qlora, full"),
    ],
)
def test_cli_bad_input_is_one_sentence_and_nonzero(config_file: Path, capsys, args: list, message: str) -> None:
    assert main(["finetune", str(config_file), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_cli_reports_a_failed_run(config_file: Path, capsys) -> None:
    from slmnb.models import model_folder

    broken = config_file.parent / "broken-model"
    shutil.copytree(model_folder("tiny-llama"), broken)
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:20000])
    assert main(["finetune", str(config_file), "-m", str(broken), "--name", "bad"]) == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("error: ") and "error.log" in last
    assert main(["finetune", str(config_file), "--target_modules", "nothing", "--name", "typo"]) == 2
    assert "matches no layer of this model" in capsys.readouterr().err


def test_progress_bar_on_a_pipe_prints_tenths_and_evals(tmp_path) -> None:
    out = (tmp_path / "log").open("w+")
    bar = ProgressBar(out)
    bar(ev.Started(step=0, elapsed=0, name="x", max_steps=100, precision="bf16", output_dir="runs/x", dropped_rows=0))
    for step in range(1, 101):
        bar(ev.Step(step=step, elapsed=step * 0.5, loss=1.0, learning_rate=1e-3, grad_norm=1.0,
                    tokens_per_second=100.0, epoch=1.0))
    bar(ev.Eval(step=100, elapsed=50, eval_loss=0.5, perplexity=1.65))
    out.seek(0)
    lines = out.read().splitlines()
    assert len(lines) == 1 + 11 + 1
    assert lines[-2].startswith("[########################] 100/100 loss 1.0000")
    assert lines[-1] == "step 100/100: eval loss 0.5000, perplexity 1.65"


def test_progress_bar_eta_leaves_out_the_time_before_the_first_step(tmp_path) -> None:
    # A model's first use spends a minute before step 1: the ETA is the pace of the steps, not of that minute.
    out = (tmp_path / "log").open("w+")
    bar = ProgressBar(out)
    bar(ev.Started(step=0, elapsed=60, name="x", max_steps=40, precision="fp32", output_dir="runs/x", dropped_rows=0))
    for step in range(1, 21):
        bar(ev.Step(step=step, elapsed=70 + (step - 1) * 2.0, loss=1.0, learning_rate=1e-3, grad_norm=1.0,
                    tokens_per_second=100.0, epoch=1.0))
    out.seek(0)
    lines = out.read().splitlines()
    assert "ETA" not in lines[1]  # step 1: no pace yet
    assert lines[-1].startswith("[############............] 20/40") and lines[-1].endswith("ETA 0:00:40"), lines[-1]


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun is not installed")
def test_torchrun_two_processes(config_file: Path) -> None:
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [torchrun, "--nproc_per_node=2", "--master_port=29533", "-m", "slmnb.cli", "finetune", str(config_file),
         "--name", "ddp", "--num_train_epochs", "1", "--eval_size", "0", "--max_steps", ""],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    state = json.loads(Path("runs/ddp/run.json").read_text())
    # 48 rows, batch 8 on each of 2 processes: 3 steps per epoch, where one process would need 6.
    assert (state["status"], state["max_steps"], state["step"]) == ("finished", 3, 3)
    assert Path("runs/ddp/adapter/adapter_model.safetensors").is_file()
    assert result.stderr.count("finished (completed)") == 1  # only rank 0 reports


def test_help_lists_every_field(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["finetune", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--lora_r" in out and "train[:90%]" in out  # a % in a help text once broke argparse's formatting


def test_cli_eval_prints_metrics_confusion_matrix_and_wrong_rows(config_file: Path, capsys) -> None:
    assert main(["finetune", str(config_file), "--max_steps", "2", "--name", "scored"]) == 0
    capsys.readouterr()
    assert main(["eval", "scored", "--split", "eval", "--metrics", "accuracy,f1", "--base"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "eval: 5 rows"  # eval_size 0.1 of the 48 rows
    assert lines[1].split() == ["metric", "base", "model", "fine-tuned"]
    assert lines[2].startswith("accuracy") and lines[3].startswith("f1")
    assert "confusion matrix (fine-tuned; rows: reference, columns: answer):" in out
    assert "rows wrong" in out or "answers all 5 rows right" in out
    assert main(["eval", "scored", "--split", "validation"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: split 'validation' names no split of the run's data: the splits are train") \
        and err.count("\n") == 1
