"""A search from a %%finetune cell: the magic's search paths, the live view and its static record, the runs table's
grouping, and the stop requests of the magic and the runs panel; real tiny-model trials through an IPython shell."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from slmnb.config import FinetuneConfig
from slmnb.notebook.search_view import SearchView
from slmnb.training.states import RunState
from slmnb.tuning.api import open_search

pytestmark = pytest.mark.timeout(300)

SEARCH = {"search_space": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
          "search_strategy": {"num_trials": 3, "seed": 0}}


@pytest.fixture
def fixed(tiny: dict) -> dict:
    """The tiny task, a few steps long, evaluated every other step, without generation-eval (fast trials)."""
    return {**{k: v for k, v in tiny.items() if k != "learning_rate"}, "max_steps": 6, "eval_steps": 2,
            "eval_generate_samples": 0}


def cell(ip, line: str, body: dict | str) -> object:
    with capture_output() as captured:
        result = ip.run_cell_magic("finetune", line, body if isinstance(body, str) else json.dumps(body))
    return result, captured


def test_a_cell_with_search_keys_runs_a_search_with_its_view_and_record(ip, workdir: Path, fixed: dict,
                                                                       comms: list) -> None:
    result, _ = cell(ip, "--name tune --wait -o found", {**fixed, **SEARCH})
    assert result is None  # the view is the cell's output
    found = ip.user_ns["found"]
    assert found.status == RunState.FINISHED and len(found.trials) == 3
    assert all(t.run == f"tune-{t.number}" and (workdir / "runs" / t.run / "run.json").is_file() for t in found.trials)
    # The view, drawn from the finished search: its table, its curves and the best trial's cell.
    view = SearchView(found).follow()
    html = view.table.value
    assert all(f">tune-{n}<" in html for n in range(3)) and "★" in html
    assert len(view.curves) == len({t.run for t in found.trials if t.steps >= 2})  # a curve per evaluated trial
    assert view.curves_figure.data and any("(best)" in t.name for t in view.curves_figure.data)
    assert "%%finetune --name tune-best" in view.best_cell.value and not view.insert_button.disabled
    assert view.stop_button.disabled and view.pause_button.disabled
    record = view.record_bundle()
    assert "Best: trial" in record["text/plain"] and "tune-best" in record["text/plain"]
    assert record["image/svg+xml"].startswith("<svg") and "every trial" in record["image/svg+xml"]
    # The best cell is a cell the magic takes as it is: its body gives the best trial's config.
    header, body = found.best_cell().split("\n", 1)
    assert header == "%%finetune --name tune-best"
    assert FinetuneConfig.from_text(body) == found.best_config()
    # search.json: what the JupyterLab runs panel reads.
    state = json.loads((workdir / "runs" / "tune" / "search.json").read_text())
    assert state["status"] == "finished" and [t["run"] for t in state["trials"]] == ["tune-0", "tune-1", "tune-2"]
    assert state["best"]["run"] == found.best.run


def test_insert_button_offers_the_best_cell_to_the_lab_extension(ip, workdir: Path, fixed: dict,
                                                                 comms: list) -> None:
    from slmnb.notebook.form import CELL_MIME

    cell(ip, "--name ins --wait -o found", {**fixed, **SEARCH, "search_strategy": {"num_trials": 1, "seed": 0}})
    view = SearchView(ip.user_ns["found"]).follow()
    bundle = view.insert_bundle()
    assert bundle[CELL_MIME] == {"source": ip.user_ns["found"].best_cell(), "form": view.widget.model_id}
    assert bundle["text/plain"].endswith(bundle[CELL_MIME]["source"]) and "Copy this" in bundle["text/plain"]



def test_search_file_and_line_options_and_the_environment_shorten_every_trial(
        ip, workdir: Path, fixed: dict, comms: list, monkeypatch: pytest.MonkeyPatch) -> None:
    (workdir / "space.yaml").write_text(yaml.safe_dump({**SEARCH, "search_strategy": {"num_trials": 5, "seed": 1}}))
    monkeypatch.setenv("SLMNB_MAX_STEPS", "4")
    monkeypatch.setenv("SLMNB_MAX_TRIALS", "2")
    cell(ip, "--search space.yaml --name filed --lora_r 2 --wait -o found", fixed)
    found = ip.user_ns["found"]
    assert len(found.trials) == 2 and all(t.max_steps == 4 for t in found.trials)  # capped from 5 trials, 6 steps
    config = json.loads(json.dumps(yaml.safe_load((workdir / "runs" / "filed-0" / "config.yaml").read_text())))
    assert config["lora_r"] == 2 and config["max_steps"] == 4
    assert found.spec.num_trials == 2
    monkeypatch.setenv("SLMNB_MAX_TRIALS", "two")
    with pytest.raises(UsageError, match="SLMNB_MAX_TRIALS must be a whole number of trials, got 'two'"):
        cell(ip, "--search space.yaml --name other", fixed)


def test_dry_run_of_a_search_shows_the_shared_config_and_the_search(ip, workdir: Path, fixed: dict) -> None:
    result, _ = cell(ip, "--dry-run", {**fixed, **SEARCH})
    text = repr(result)
    assert "A random search of 3 trials over learning_rate 0.0001 to 0.1 (log)" in text
    assert "search_space" not in text  # the config shown is the trials' shared one
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize(("line", "body", "message"), [
    ("--form", SEARCH, "The form builds one run's config, not a search"),
    ("--search missing.yaml", {}, "Config file 'missing.yaml' does not exist"),
    ("", {"search_space": {"lora_rank": {"type": "int", "low": 2, "high": 8}}}, "lora_rank"),
    ("", {"search_space": {"learning_rate": {"type": "float", "low": 1e-2, "high": 1e-4}}}, "low"),
    ("", {"search_space": {"lora_r": {"type": "choice", "values": []}}}, "values"),
])
def test_search_mistakes_in_a_cell_are_one_sentence(ip, workdir: Path, fixed: dict, line: str, body: dict,
                                                    message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        cell(ip, line, {**fixed, **body})
    assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value)
    assert not (workdir / "runs").exists()


def test_a_search_file_without_a_search_space_is_one_sentence(ip, workdir: Path, fixed: dict) -> None:
    (workdir / "plain.yaml").write_text("max_steps: 4\n")
    with pytest.raises(UsageError, match="--search names a file without a search_space: add one to it"):
        cell(ip, "--search plain.yaml", fixed)
    assert not (workdir / "runs").exists()


def test_runs_table_groups_trials_under_their_search(ip, workdir: Path, fixed: dict, comms: list) -> None:
    from slmnb.training.runs import DEFAULT

    DEFAULT.start({**fixed, "name": "alone", "max_steps": 2, "learning_rate": 1e-3}).wait()
    cell(ip, "--name grouped --wait", {**fixed, **SEARCH, "search_strategy": {"num_trials": 2, "seed": 0}})
    lines = repr(ip.run_line_magic("finetune", "runs")).splitlines()
    names = [line.split()[0] if not line.startswith("  └") else line.split()[1] for line in lines[1:]]
    assert names == ["alone", "grouped", "grouped-0", "grouped-1"]
    assert "(search)" in lines[2] and "2/2 trials" in lines[2] and "best eval_loss" in lines[2]
    assert lines[3].startswith("  └ grouped-0")


def test_stop_resume_and_show_a_search_from_the_magic(ip, workdir: Path, fixed: dict, comms: list) -> None:
    slow = {**fixed, "max_steps": 400, "eval_steps": 200}
    cell(ip, "--name ctl -o found", {**slow, **SEARCH, "search_strategy": {"num_trials": 2, "seed": 0}})
    found = ip.user_ns["found"]
    deadline = time.monotonic() + 120
    while (found.run is None or found.run.step < 1) and time.monotonic() < deadline:
        time.sleep(0.1)
    with capture_output() as captured:
        ip.run_line_magic("finetune", "pause ctl")
    assert found.status == RunState.PAUSED and "Pausing search ctl" in captured.stdout
    assert json.loads((workdir / "runs" / "ctl" / "search.json").read_text())["status"] == "paused"  # at once
    with capture_output() as captured:
        ip.run_line_magic("finetune", "resume ctl")  # a paused search goes on in place
    assert found.status == RunState.RUNNING and "Resumed search ctl" in captured.stdout
    with capture_output() as captured:
        ip.run_line_magic("finetune", "stop")
    assert "Stopping search ctl" in captured.stdout
    found.wait(120)
    assert found.status == RunState.STOPPED
    assert json.loads((workdir / "runs" / "ctl" / "search.json").read_text())["status"] == "stopped"
    assert open_search("ctl", root="runs") is found  # the one this kernel ran, not a copy
    with pytest.raises(UsageError, match="--num_trials N, --max_time SECONDS and --wait"):
        ip.run_line_magic("finetune", "resume ctl --max_steps 3")
    with pytest.raises(UsageError, match="num_trials"):
        ip.run_line_magic("finetune", "resume ctl --num_trials 0")


def test_resume_continues_a_search_with_more_trials_and_show_draws_it(ip, workdir: Path, fixed: dict,
                                                                       comms: list) -> None:
    cell(ip, "--name more --wait", {**fixed, **SEARCH, "search_strategy": {"num_trials": 1, "seed": 0}})
    with capture_output():
        ip.run_line_magic("finetune", "resume more --num_trials 2 --wait")
    found = open_search("more", root="runs")
    assert len(found.trials) == 2 and all(t.state in ("complete", "pruned") for t in found.trials)
    assert yaml.safe_load((workdir / "runs" / "more" / "search.yaml").read_text())["search_strategy"]["num_trials"] \
        == 2
    # From disk, as a new kernel would: its status, and a view drawn at once with both trials' curves.
    from slmnb.tuning import api

    api._live.clear()
    opened = open_search("more", root="runs")
    assert opened.status == RunState.FINISHED and not opened.alive
    view = SearchView(opened).follow()
    assert set(view.curves) == {"more-0", "more-1"} and "Finished" in view.status.value
    with capture_output() as captured:
        ip.run_line_magic("finetune", "show more")
    assert captured.outputs  # the view and its record


def test_the_runs_panels_stop_request_stops_a_search(workdir: Path, fixed: dict) -> None:
    from slmnb.tuning.api import search

    slow = {**fixed, "max_steps": 400, "eval_steps": 200}
    found = search({**slow, **SEARCH}, name="panel", root="runs")
    deadline = time.monotonic() + 120
    while (found.run is None or found.run.step < 1) and time.monotonic() < deadline:
        time.sleep(0.1)
    (workdir / "runs" / "panel" / "stop-requested").write_text("Stop asked from the JupyterLab runs panel.\n")
    found.wait(120)
    assert found.status == RunState.STOPPED and not (workdir / "runs" / "panel" / "stop-requested").exists()
    assert json.loads((workdir / "runs" / "panel" / "search.json").read_text())["status"] == "stopped"
