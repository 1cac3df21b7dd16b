"""%%finetune and %finetune through an IPython test shell, on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import slmnb
from slmnb.errors import ConfigError
from slmnb.notebook.launch import cell_config, shortened
from slmnb.notebook.parsing import parse_cell_line
from slmnb.training.run import TrainingRun


@pytest.fixture
def body(tiny: dict) -> str:
    return json.dumps({**tiny, "max_steps": 4, "eval_steps": 2})


def test_load_ext_is_fast_and_imports_no_heavy_library() -> None:
    code = ("import sys, time\nfrom IPython.testing.globalipapp import start_ipython\nip = start_ipython()\n"
            "t = time.perf_counter()\nip.run_line_magic('load_ext', 'slmnb')\nt = time.perf_counter() - t\n"
            "heavy = [m for m in ('torch', 'transformers', 'onnxruntime_genai', 'peft', 'datasets')\n"
            "         if m in sys.modules]\n"
            "print(t, heavy, 'finetune' in ip.magics_manager.magics['cell'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert float(out[0]) < 0.5
    assert out[1:] == ["[]", "True"]


def test_line_options_parse_like_olive_finetune() -> None:
    args = parse_cell_line("-m tiny-llama --lora_r 4 --use_chat_template --dry-run -o run --name 'my run'")
    assert args.overrides == {"model_name_or_path": "tiny-llama", "lora_r": "4", "use_chat_template": "true",
                              "name": "my run"}
    assert (args.dry_run, args.wait, args.var) == (True, False, "run")
    with pytest.raises(ConfigError, match="did you mean lora_r"):
        parse_cell_line("--lora_rank 4")
    with pytest.raises(ConfigError, match="close the quotes"):
        parse_cell_line("--name 'unclosed")
    with pytest.raises(ConfigError, match="-o takes a Python variable name"):
        parse_cell_line("-o 3x")


def test_line_options_override_the_body_and_the_default_model(body: str) -> None:
    config = cell_config(body, {"lora_r": "4", "max_steps": "9"}, default_model="smollm2-135m-instruct")
    assert (config.lora_r, config.max_steps, config.model_name_or_path) == (4, 9, "tiny-llama")
    assert cell_config("data_name: tones", {}, default_model="tiny-llama").model_name_or_path == "tiny-llama"
    assert cell_config("", {"data_name": "tones"}, default_model="x").data_name == "tones"  # options, no body


def test_environment_switch_shortens_runs_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    config = cell_config("data_name: tones\nmax_steps: 60\nlayers_to_transform: 15-29", {}, "smollm2-135m-instruct")
    assert shortened(config) == (config, None)
    monkeypatch.setenv("SLMNB_MAX_STEPS", "3")
    monkeypatch.setenv("SLMNB_MODEL", "tiny-llama")
    short, note = shortened(config)
    # The layer numbers were the replaced model's: the stand-in adapts all of its layers.
    assert (short.max_steps, short.model_name_or_path, short.layers_to_transform) == (3, "tiny-llama", None)
    assert "max_steps=3" in note and "model_name_or_path=tiny-llama" in note


@pytest.mark.parametrize(
    ("line", "cell", "message"),
    [
        ("--lora_rank 4", "data_name: tones", "Unknown config key 'lora_rank': did you mean lora_r?"),
        ("", "data_name: tones\nlearning_rate: fast", "learning_rate must be a number, got 'fast'."),
        ("", "data_name: [tones", "The config is not valid YAML"),
        ("", "rows: [{a: 1}]\nprompt_template: '{b}'\nresponse_template: '{a}'", "prompt_template uses {b}"),
    ],
)
def test_bad_input_is_a_usage_error_with_one_sentence(ip, workdir: Path, line: str, cell: str, message: str) -> None:
    with pytest.raises(UsageError) as error:
        ip.run_cell_magic("finetune", line, cell)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert not Path("runs").exists()  # nothing started, nothing written


def test_a_cell_with_options_and_no_body_works(ip, workdir: Path) -> None:
    result = ip.run_cell("%%finetune --data_files nowhere.json --prompt_template {a} --response_template {b}\n")
    assert isinstance(result.error_in_exec, UsageError)
    assert str(result.error_in_exec).startswith("Data file 'nowhere.json' does not exist")
    result = ip.run_cell("%%finetune --dry-run -m tiny-llama --data_name tones --max_samples 8")
    assert result.error_in_exec is None and result.result.preview.train_rows == 8


def test_dry_run_shows_config_and_rendered_rows_and_trains_nothing(ip, workdir: Path, body: str) -> None:
    shown = ip.run_cell_magic("finetune", "--dry-run --lora_r 4", body)
    text, html = repr(shown), shown._repr_html_()
    assert "nothing was trained" in text and "lora_r: 4" in text
    assert "sample phrase number" in text and "tokens per example" in text
    assert "<table>" in html and "Joy" in html
    assert not Path("runs").exists()


def test_cell_trains_in_the_background_and_leaves_no_stale_value(ip, workdir: Path, body: str) -> None:
    # The dashboard is the cell's output: a value would print a snapshot repr under it that never changes.
    assert ip.run_cell_magic("finetune", "--name bg -o started", body) is None
    run = ip.user_ns["started"]
    assert isinstance(run, TrainingRun)
    assert run.alive or run.status == "finished"  # the cell returned while training went on
    run.wait()
    assert (run.status, run.step) == ("finished", 4)
    table = ip.run_line_magic("finetune", "runs")
    assert [(r["name"], r["status"], r["step"]) for r in table.rows] == [("bg", "finished", 4)]
    assert "bg" in table._repr_html_() and "finished" in repr(table)


def test_wait_blocks_until_the_run_ends(ip, workdir: Path, body: str) -> None:
    assert ip.run_cell_magic("finetune", "--name blocking --wait -o run", body) is None
    run = ip.user_ns["run"]
    assert not run.alive and run.status == "finished"
    assert (run.dir / "adapter" / "adapter_config.json").is_file()


def test_subcommands(ip, workdir: Path, body: str) -> None:
    with pytest.raises(UsageError, match="No run is training"):
        ip.run_line_magic("finetune", "stop")
    with pytest.raises(UsageError, match="No run called 'ghost'"):
        ip.run_line_magic("finetune", "show ghost")
    with pytest.raises(UsageError, match="takes one run name"):
        ip.run_line_magic("finetune", "resume")
    ip.run_cell_magic("finetune", "--name sub --max_steps 150 --eval_steps 150", body)
    run = slmnb.load_run("sub")
    ip.run_line_magic("finetune", "pause")
    _until(lambda: run.status == "paused")
    with capture_output() as said:
        assert ip.run_line_magic("finetune", "resume sub") is None
    assert "Resumed sub: its dashboard" in said.stdout  # this cell shows no dashboard: it says where it is
    _until(lambda: run.status == "running")
    ip.run_line_magic("finetune", "stop sub")
    run.wait()
    assert run.status == "stopped" and run.step < 150
    assert ip.run_line_magic("finetune", "resume sub --wait") is None
    assert (run.status, run.step) == ("finished", 150)
    with pytest.raises(UsageError, match="to train it longer, resume it with max_steps greater than 150"):
        ip.run_line_magic("finetune", "resume sub")
    assert ip.run_line_magic("finetune", "show sub") is None  # re-opens the dashboard from its history


def test_config_traits_set_runs_folder_and_default_model(ip, workdir: Path, tiny: dict) -> None:
    ip.run_line_magic("config", "FinetuneMagics.runs_dir = 'elsewhere'")
    ip.run_line_magic("config", "FinetuneMagics.default_model = 'tiny-llama'")
    try:
        body = json.dumps({k: v for k, v in tiny.items() if k != "model_name_or_path"} | {"max_steps": 2})
        ip.run_cell_magic("finetune", "--name traits --wait -o run", body)
        run = ip.user_ns["run"]
        assert run.config.model_name_or_path == "tiny-llama"
        assert run.dir == Path("elsewhere/traits")
    finally:
        ip.run_line_magic("config", "FinetuneMagics.runs_dir = 'runs'")
        ip.run_line_magic("config", "FinetuneMagics.default_model = 'smollm2-135m-instruct'")


def _until(condition, timeout: float = 60.0) -> None:
    import time

    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_slmnb_errors_show_as_one_line_in_a_notebook(ip, capsys) -> None:
    ip.run_cell("import slmnb\nraise slmnb.RunError('Run x is still training: stop it first.')")
    out = capsys.readouterr()
    shown = out.out + out.err
    assert "RunError" in shown and "Run x is still training: stop it first." in shown
    assert "Traceback" not in shown and "File " not in shown


@pytest.mark.parametrize("line", ["--help", "-h", "resume --help", "stop --help", "show -h"])
def test_finetune_help_prints_without_a_traceback(ip, line: str) -> None:
    # A help text with train[:90%] once crashed argparse's %-formatting; every `--help` the docs mention must work.
    with capture_output() as shown:
        result = ip.run_cell(f"%finetune {line}")
    assert result.error_in_exec is None, result.error_in_exec
    assert "train[:90%]" in shown.stdout and "%finetune resume NAME" in shown.stdout
    assert "Traceback" not in shown.stdout + shown.stderr


@pytest.mark.parametrize("line", ["--help", "export --help", "compare -h", "adapters --help"])
def test_opt_help_prints_the_usage(ip, line: str) -> None:
    with capture_output() as shown:
        result = ip.run_cell(f"%opt {line}")
    assert result.error_in_exec is None, result.error_in_exec
    assert "%opt export RUN" in shown.stdout and "%opt compare RUN" in shown.stdout


def test_finetune_eval_shows_metrics_confusion_matrix_and_wrong_rows(ip, workdir: Path, body: str) -> None:
    ip.run_cell_magic("finetune", "--name judged --wait", body)
    with capture_output() as shown:
        result = ip.run_cell("view = %finetune eval judged --split eval --base --max_new_tokens 4\nview")
    assert result.error_in_exec is None, result.error_in_exec
    view = ip.user_ns["view"]
    base, tuned = view.evaluations
    assert (base.model, tuned.model) == ("base model", "fine-tuned") and tuned.metrics == base.metrics
    tables, heatmap, wrong = (output.data for output in shown.outputs)
    # The table: a column per model, a row per score.
    assert "<th style='text-align:left'>base model</th><th style='text-align:left'>fine-tuned</th>" in tables[
        "text/html"]
    for key in ("accuracy", "f1", "perplexity", "seconds / answer"):
        assert f">{key}</td>" in tables["text/html"] and key in tables["text/plain"]
    # The confusion matrix: a Plotly heatmap for JupyterLab and the same counts as SVG for a saved notebook.
    labels, matrix = tuned.confusion() or ([], [])
    figure = heatmap["application/vnd.plotly.v1+json"]
    assert figure["data"][0]["type"] == "heatmap" and figure["data"][0]["z"] == matrix
    assert heatmap["image/svg+xml"].startswith("<svg") and ">Joy</text>" in heatmap["image/svg+xml"]
    assert sum(map(sum, matrix)) == len(tuned.rows) and labels[0] == "Joy"
    # The misses, counted and listed; the text form of the whole view says the same.
    missed = len(tuned.wrong_rows())
    said = f"gets {missed} of {len(tuned.rows)} rows wrong" if missed else f"answers all {len(tuned.rows)} rows"
    assert said in wrong["text/html"] and said in repr(view)
    assert wrong["text/html"].count("<tr>") == (min(missed, 10) + 1 if missed else 0)


def test_finetune_eval_errors_are_one_sentence(ip, workdir: Path) -> None:
    with pytest.raises(UsageError, match="No run called 'ghost'"):
        ip.run_line_magic("finetune", "eval ghost")
    with pytest.raises(UsageError, match="%finetune eval has no option --splitt: see %finetune eval --help."):
        ip.run_line_magic("finetune", "eval ghost --splitt test")
    with capture_output() as shown:
        ip.run_line_magic("finetune", "eval --help")
    assert "%finetune eval NAME [--split S] [--metrics m1,m2] [--base]" in shown.stdout
