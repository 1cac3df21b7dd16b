"""Hyperparameter search: the search keys and their mistakes, and real Optuna studies of tiny-model trials in SQLite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import slmnb
from slmnb.config import FinetuneConfig
from slmnb.errors import ConfigError, RunError
from slmnb.training.states import RunState
from slmnb.tuning import events as sev
from slmnb.tuning.api import list_searches, resume_search, search, trial_runs
from slmnb.tuning.spec import Param, SearchSpec, parse_search

pytestmark = pytest.mark.timeout(300)

SPACE = {"learning_rate": {"type": "float", "low": "1e-4", "high": "1e-2", "log": True},
         "lora_r": {"type": "choice", "values": [2, 4]}}


@pytest.fixture
def short(tiny: dict) -> dict:
    """The tiny task, a few steps long, evaluated every other step; its learning rate is what the tests search."""
    fixed = {k: v for k, v in tiny.items() if k != "learning_rate"}
    return {**fixed, "max_steps": 4, "eval_steps": 2, "eval_generate_samples": 0}


def optuna_trials(name: str, root: Path) -> list:
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{(root / name / 'study.db').resolve()}")
    return study.get_trials()


# --- the search keys -------------------------------------------------------------------------------------------


def test_the_slmops_search_file_parses_as_written() -> None:
    text = textwrap.dedent("""
        data_name: tones
        search_strategy:
          type: random        # also: tpe, grid
          num_trials: 20
        search_space:
          learning_rate: {type: float, low: 1e-6, high: 1e-3, log: true}
          lora_r: {type: int, low: 8, high: 64}
          batch_size: {type: choice, values: [8, 16, 32]}
        """)
    fixed, spec = parse_search(yaml.safe_load(text))
    assert fixed == {"data_name": "tones"}
    assert spec is not None
    assert spec.strategy == "random" and spec.num_trials == 20 and spec.pruner == "median"
    assert spec.space["learning_rate"] == Param(type="float", low=1e-6, high=1e-3, log=True)  # YAML's '1e-6' text
    assert spec.space["lora_r"] == Param(type="int", low=8, high=64)
    assert spec.space["per_device_train_batch_size"] == Param(type="choice", values=(8, 16, 32))
    assert spec.objective == "eval_loss" and spec.direction == "minimize"
    assert parse_search(spec.to_dict()) == ({}, spec)


def test_a_config_without_search_keys_has_no_spec() -> None:
    assert parse_search({"max_steps": 5}) == ({"max_steps": 5}, None)


@pytest.mark.parametrize(("objective", "direction"), [
    ("eval_loss", "minimize"), ("loss", "minimize"), ("perplexity", "minimize"), ("eval_perplexity", "minimize"),
    ("accuracy", "maximize"), ("f1", "maximize"), ("rougeL", "maximize")])
def test_the_objective_sets_the_direction(objective: str, direction: str) -> None:
    _, spec = parse_search({"search_space": SPACE, "objective": objective})
    assert spec is not None and spec.direction == direction


def test_grid_counts_its_points_and_spells_them_out() -> None:
    _, spec = parse_search({"search_strategy": {"type": "grid", "seed": 1},
                            "search_space": {"lora_r": {"type": "int", "low": 2, "high": 8, "step": 2},
                                             "lora_dropout": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
                                             "target_modules": {"type": "choice", "values": [None, "all-linear"]}}})
    assert spec is not None and spec.num_trials == 4 * 3 * 2
    assert spec.space["lora_r"].grid() == [2, 4, 6, 8]
    assert spec.space["lora_dropout"].grid() == [0.0, 0.1, 0.2]


@pytest.mark.parametrize(("values", "message"), [
    ({"search_space": {"learnig_rate": {"type": "float", "low": 1e-5, "high": 1e-3}}},
     "search_space names an unknown field 'learnig_rate': did you mean learning_rate?"),
    ({"search_space": {"lora_r": {"type": "int", "low": 16, "high": 8}}},
     "search_space lora_r has low 16 not below high 8: make low smaller than high."),
    ({"search_space": {"learning_rate": {"type": "float", "low": 0, "high": 1e-3, "log": True}}},
     "a log scale needs low above 0"),
    ({"search_space": {"lora_r": {"type": "choice", "values": []}}},
     "search_space lora_r is a choice without values"),
    ({"search_space": {"lora_r": {"type": "range", "low": 1, "high": 2}}},
     "search_space lora_r has type 'range': use float, int or choice."),
    ({"search_strategy": {"type": "grid"}, "search_space": {"learning_rate": {"type": "float", "low": 1e-5,
                                                                               "high": 1e-3}}},
     "A grid search cannot list every value of the float range learning_rate: give it a step"),
    ({"search_strategy": {"num_trials": 0}, "search_space": SPACE},
     "search_strategy num_trials must be at least 1, got 0."),
    ({"search_strategy": {"type": "bayes"}, "search_space": SPACE},
     "search_strategy type 'bayes' is unknown: use random, tpe, grid."),
    ({"search_strategy": {"pruner": "hyperband"}, "search_space": SPACE},
     "search_strategy pruner 'hyperband' is unknown: use median, halving, none."),
    ({"search_strategy": {"trials": 5}, "search_space": SPACE},
     "search_strategy has an unknown key 'trials'"),
    ({"search_space": {"lora_r": {"type": "choice", "values": [8, "x"]}}}, "lora_r must be a number, got 'x'."),
    ({"search_space": {"lora_r": {"type": "float", "low": 1, "high": 8}}},
     "search_space lora_r takes whole numbers: use type int (or choice)."),
    ({"search_space": {"method": {"type": "int", "low": 1, "high": 8}}},
     "search_space method is not a number field: search it with type choice."),
    ({"learning_rate": 1e-3, "search_space": SPACE},
     "learning_rate is both fixed in the config and searched in search_space: remove one of them."),
    ({"per_device_train_batch_size": 4, "search_space": {"batch_size": {"type": "choice", "values": [4, 8]}}},
     "per_device_train_batch_size is both fixed in the config and searched"),
    ({"search_space": {"name": {"type": "choice", "values": ["a", "b"]}}}, "search_space cannot search name"),
    ({"base_weights": "int4", "search_space": {"method": {"type": "choice", "values": ["lora", "full"]}}},
     "search_space method value 'full' does not make a valid config: base_weights int4 is for method lora"),
    ({"search_strategy": {"type": "grid", "num_trials": 5},
      "search_space": {"lora_r": {"type": "choice", "values": [2, 4]}}},
     "search_strategy num_trials 5 is more than the grid's 2 points: lower it to 2 or leave it out."),
    ({"search_strategy": {"enqueue": [{"lora_r": 16}]}, "search_space": SPACE},
     "search_strategy enqueue gives lora_r 16, which is not among its values"),
    ({"objective": "acuracy", "search_space": SPACE},
     "objective 'acuracy' is not a score of any metric (did you mean accuracy?)"),
    ({"objective": "accuracy", "eval_generate_samples": 0, "search_space": SPACE},
     "objective accuracy comes from generation-eval, which eval_generate_samples 0 turns off"),
    ({"search_strategy": {"type": "random"}}, "A search needs a search_space"),
])
def test_each_bad_search_is_one_sentence_naming_the_fix(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_search(values)
    text = str(caught.value)
    assert message in text
    assert text.endswith((".", "?")) and text.count(". ") == 0, text


def test_search_refuses_a_config_without_a_search_space_or_with_a_run_s_name(workdir: Path, short: dict) -> None:
    with pytest.raises(ConfigError, match="The config has no search_space: add one"):
        search(short)
    assert not (workdir / "runs").exists()
    slmnb.finetune(short, name="taken", max_steps=1).wait()
    with pytest.raises(RunError, match="A run called 'taken' exists in .*: give the search another name."):
        search({**short, "search_space": SPACE}, name="taken")
    with pytest.raises(ConfigError, match="A search puts each trial's run in <root>/<name>-<n> itself: drop "
                                          "output_dir"):
        search({**short, "search_space": SPACE, "output_dir": "elsewhere"})
    assert sorted(p.name for p in (workdir / "runs").iterdir()) == ["taken"]


# --- searching -------------------------------------------------------------------------------------------------


def test_a_random_search_trains_its_trials_as_runs_and_keeps_them_in_sqlite(workdir: Path, short: dict) -> None:
    seen: list = []
    found = slmnb.search({**short, "search_space": SPACE, "search_strategy": {"num_trials": 3, "seed": 7,
                                                                              "pruner": "none"}}, name="lr-rank")
    found.subscribe(seen.append, replay=True)
    assert found.wait().status == RunState.FINISHED and found.reason == "num_trials reached"

    trials = optuna_trials("lr-rank", workdir / "runs")
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert len({(t.params["learning_rate"], t.params["lora_r"]) for t in trials}) == 3
    for trial, row in zip(trials, found.trials, strict=True):
        assert 1e-4 <= trial.params["learning_rate"] <= 1e-2 and trial.params["lora_r"] in (2, 4)
        run = slmnb.load_run(trial.user_attrs["run"])  # a normal run: every run view opens it by name
        assert run.name == f"lr-rank-{trial.number}" and run.status == RunState.FINISHED and run.step == 4
        assert run.config.learning_rate == trial.params["learning_rate"]
        assert run.config.lora_r == trial.params["lora_r"]
        last_eval = [m for m in run.metrics if m["event"] == "eval"][-1]
        assert trial.value == pytest.approx(last_eval["eval_loss"])  # the value at the last evaluation
        assert row.value == trial.value and row.state == "complete" and row.steps == 4 and row.seconds > 0
    assert [r.name for r in slmnb.list_runs()] == ["lr-rank-0", "lr-rank-1", "lr-rank-2"]  # the search folder isn't
    assert list_searches() == ["lr-rank"]
    assert trial_runs() == {"lr-rank": ["lr-rank-0", "lr-rank-1", "lr-rank-2"]}

    assert [type(e).__name__ for e in seen if not isinstance(e, sev.TrialEvent)] == \
        ["TrialStarted", "TrialEnded"] * 3 + ["SearchEnded"]
    assert {e.event.__class__.__name__ for e in seen if isinstance(e, sev.TrialEvent)} >= {"Started", "Eval",
                                                                                            "Finished"}
    ended = seen[-1]
    assert isinstance(ended, sev.SearchEnded) and ended.steps_trained == 12 and ended.steps_saved == 0
    best = min(trials, key=lambda t: t.value)
    assert found.best is not None and ended.best_number == found.best.number == best.number

    cell = found.best_cell()
    head, body = cell.split("\n", 1)
    assert head == "%%finetune --name lr-rank-best"
    assert FinetuneConfig.from_text(body) == found.best_config()
    assert found.best_config().learning_rate == best.params["learning_rate"]
    assert found.best_config().max_steps == 4 and found.best_config().name is None


def test_pruning_stops_a_trial_that_learns_clearly_worse(workdir: Path, short: dict) -> None:
    space = {"learning_rate": {"type": "choice", "values": [1e-2, 1e-9]}}
    found = search({**short, "max_steps": 6, "eval_steps": 1, "search_space": space,
                    "search_strategy": {"num_trials": 2, "enqueue": [{"learning_rate": 1e-2},
                                                                     {"learning_rate": 1e-9}]}}, name="prune")
    found.wait()
    good, bad = optuna_trials("prune", workdir / "runs")
    assert good.params == {"learning_rate": 1e-2} and good.state.name == "COMPLETE"
    assert bad.params == {"learning_rate": 1e-9} and bad.state.name == "PRUNED", bad.user_attrs
    assert bad.user_attrs["steps"] < 6 and bad.user_attrs["reason"].startswith("Pruned at step 2")
    assert slmnb.load_run("prune-1").status == RunState.STOPPED  # stopped at a step, its checkpoint saved
    ended = found.history[-1]
    assert isinstance(ended, sev.SearchEnded) and ended.steps_saved == 6 - bad.user_attrs["steps"]
    assert found.best is not None and found.best.number == 0


_WORKER = """
import os, sys
from slmnb.tuning import events as sev
from slmnb.tuning.api import search
config = {config!r}
found = search(config, name={name!r})
if {die_in_second_trial}:  # as kill -9 would: no stop, no tell, the trial left RUNNING in the study
    found.subscribe(lambda e: os._exit(0) if isinstance(e, sev.TrialEvent) and e.number == 1 and
                    type(e.event).__name__ == "Eval" else None)
found.wait()
"""


def _worker(workdir: Path, config: dict, name: str, die_in_second_trial: bool = False) -> subprocess.Popen:
    code = _WORKER.format(config=config, name=name, die_in_second_trial=die_in_second_trial)
    return subprocess.Popen([sys.executable, "-c", code], cwd=workdir, env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_search_resumes_after_its_process_is_killed(workdir: Path, short: dict) -> None:
    config = {**short, "max_steps": 2, "eval_steps": 1, "search_space": SPACE,
              "search_strategy": {"num_trials": 3, "seed": 3}}
    child = _worker(workdir, config, "killed", die_in_second_trial=True)
    out, _ = child.communicate(timeout=240)
    assert child.returncode == 0, out
    first, cut = optuna_trials("killed", workdir / "runs")
    assert first.state.name == "COMPLETE" and cut.state.name == "RUNNING"
    started_at = json.loads((workdir / "runs" / "killed-0" / "run.json").read_text())["started_at"]

    found = resume_search("killed").wait()
    trials = optuna_trials("killed", workdir / "runs")
    assert [t.state.name for t in trials[:2]] == ["COMPLETE", "FAIL"]
    assert trials[1].user_attrs["reason"] == "Its process ended before the trial did; its parameters were queued again."
    assert trials[2].user_attrs["retry_of"] == 1 and trials[2].params == cut.params  # the cut trial, again
    assert len(trials) == 4 and {t.state.name for t in trials[2:]} <= {"COMPLETE", "PRUNED"}  # the pruner is on
    assert trials[0].params == first.params and trials[0].value == first.value  # the first is not trained again
    assert json.loads((workdir / "runs" / "killed-0" / "run.json").read_text())["started_at"] == started_at
    assert slmnb.load_run("killed-1").status == RunState.INTERRUPTED
    assert [t.run for t in found.trials] == ["killed-0", "killed-1", "killed-2", "killed-3"]
    with pytest.raises(RunError, match="No search called 'nothing'"):
        resume_search("nothing")


def test_two_workers_on_one_sqlite_study_train_exactly_num_trials(workdir: Path, short: dict) -> None:
    # Trials long enough that both workers, started together, are training before the last one is handed out.
    config = {**short, "max_steps": 6, "eval_steps": 3, "search_space": SPACE,
              "search_strategy": {"num_trials": 3, "seed": 5, "pruner": "none"}}
    workers = [_worker(workdir, config, "shared") for _ in range(2)]
    for worker in workers:
        out, _ = worker.communicate(timeout=240)
        assert worker.returncode == 0, out
    trials = [t for t in optuna_trials("shared", workdir / "runs") if not t.user_attrs.get("surplus")]
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both worked
    assert sorted(r.name for r in slmnb.list_runs()) == ["shared-0", "shared-1", "shared-2"]


def test_a_search_is_joined_only_with_its_own_config_and_grows_when_resumed_with_more_trials(
        workdir: Path, short: dict) -> None:
    space = {"lora_r": {"type": "choice", "values": [2, 4]}}
    config = {**short, "max_steps": 2, "search_space": space, "search_strategy": {"num_trials": 1}}
    search(config, name="one").wait()
    with pytest.raises(RunError, match="Search 'one' exists with another config or search: continue it with"):
        search({**config, "max_steps": 3}, name="one")
    assert search(config, name="one").wait().reason == "num_trials reached"  # joined: nothing left to do
    assert len(optuna_trials("one", workdir / "runs")) == 1

    grown = resume_search("one", num_trials=2).wait()
    assert [t.state for t in grown.trials] == ["complete", "complete"]
    assert yaml.safe_load((workdir / "runs" / "one" / "search.yaml").read_text())["search_strategy"]["num_trials"] == 2


def test_the_command_line_searches_in_the_foreground_and_prints_the_best_cell(
        workdir: Path, short: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from slmnb.cli import main

    path = workdir / "search.yaml"
    path.write_text(yaml.safe_dump({**short, "max_steps": 2, "search_strategy": {"type": "grid"},
                                    "search_space": {"lora_r": {"type": "choice", "values": [2, 4]}}}))
    assert main(["search", str(path), "--name", "cli"]) == 0
    out, err = capsys.readouterr()
    assert "trial 0 (cli-0): lora_r=" in err and "trial 1 complete: eval_loss" in err
    assert out.startswith("%%finetune --name cli-best\n")
    assert FinetuneConfig.from_text(out.split("\n", 1)[1]).lora_r in (2, 4)


def test_a_search_spec_round_trips_through_its_dict() -> None:
    spec = SearchSpec(space={"lora_r": Param(type="int", low=2, high=8, step=2)}, strategy="tpe", num_trials=4,
                      max_time=60.0, seed=1, pruner="halving", objective="accuracy",
                      enqueue=({"lora_r": 4},))
    assert parse_search(spec.to_dict()) == ({}, spec)


def test_parsing_a_search_imports_neither_optuna_nor_torch() -> None:
    code = ("import sys, slmnb\n"
            "from slmnb.tuning import parse_search\n"
            "parse_search({'search_space': {'lora_r': {'type': 'choice', 'values': [2, 4]}}})\n"
            "print([m for m in ('optuna', 'torch', 'transformers') if m in sys.modules], callable(slmnb.search))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] True"


def test_a_stopped_search_queues_its_trial_again_and_resumes_with_it(workdir: Path, short: dict) -> None:
    found = search({**short, "max_steps": 3, "eval_steps": 1, "search_space": SPACE,
                    "search_strategy": {"num_trials": 2, "pruner": "none"}}, name="halt")

    def stop_at_first_eval(event: sev.SearchEvent) -> None:
        if isinstance(event, sev.TrialEvent) and event.event.__class__.__name__ == "Eval":
            found.stop()

    found.subscribe(stop_at_first_eval)
    assert found.wait().status == RunState.STOPPED and found.reason == "stopped"
    first, queued = optuna_trials("halt", workdir / "runs")
    assert first.state.name == "FAIL" and first.user_attrs["reason"].startswith("Stopped with the search")
    assert queued.state.name == "WAITING" and queued.user_attrs["retry_of"] == 0 and queued.params == {}
    assert [t.state for t in found.trials] == ["failed", "waiting"]

    resume_search("halt").wait()
    trials = optuna_trials("halt", workdir / "runs")
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]  # the stopped one does not count
    assert trials[1].params == first.params  # trained again with the same parameters
    assert slmnb.load_run("halt-0").status == RunState.STOPPED


def test_num_trials_counts_what_trained_or_waits_but_not_what_was_retried_or_surplus() -> None:
    import optuna
    from optuna.distributions import IntDistribution
    from optuna.trial import TrialState, create_trial

    from slmnb.tuning import optuna_parts as parts

    study = optuna.create_study()
    dist = {"lora_r": IntDistribution(1, 8)}

    def add(state: TrialState, **attrs) -> None:
        value = 1.0 if state == TrialState.COMPLETE else None
        study.add_trial(create_trial(state=state, value=value, params={"lora_r": 2}, distributions=dist,
                                     user_attrs=attrs))

    add(TrialState.COMPLETE)  # 0
    add(TrialState.FAIL)  # 1: interrupted, queued again as 3
    add(TrialState.PRUNED)  # 2
    add(TrialState.WAITING, retry_of=1)  # 3
    trials = study.get_trials()
    assert [t.number for t in parts.counted(trials)] == [0, 2, 3]
    assert parts.more_to_run(trials, 3)  # a queued trial is run even when the count is reached
    assert not parts.is_surplus(trials, 3, 3)
    add(TrialState.RUNNING)  # 4: a second worker claimed a slot beyond num_trials
    trials = study.get_trials()
    assert parts.is_surplus(trials, 4, 3) and not parts.is_surplus(trials, 4, 4)
    add(TrialState.FAIL, surplus=True)  # 5
    assert [t.number for t in parts.counted(study.get_trials())] == [0, 2, 3, 4]


def test_ctrl_c_stops_the_command_line_search_cleanly_and_says_how_to_go_on(workdir: Path, short: dict) -> None:
    path = workdir / "long.yaml"
    path.write_text(yaml.safe_dump({**short, "max_steps": 400, "eval_steps": 100, "search_space": SPACE,
                                    "search_strategy": {"num_trials": 2}}))
    child = subprocess.Popen([sys.executable, "-m", "slmnb.cli", "search", str(path), "--name", "ctrlc"], cwd=workdir,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stderr is not None
    lines = []
    for line in child.stderr:
        lines.append(line)
        if line.startswith("trial 0 (ctrlc-0)"):
            break
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    err = "".join(lines) + err
    assert child.returncode == 0, err
    assert "stopping the search" in err and f"continue with: slmnb search {path} --name ctrlc" in err
    assert "Traceback" not in err and out == ""  # no trial completed, so no best cell
    first, queued = optuna_trials("ctrlc", workdir / "runs")
    assert first.state.name == "FAIL" and first.user_attrs["interrupted"] and first.user_attrs["steps"] < 400
    assert queued.state.name == "WAITING" and queued.user_attrs["retry_of"] == 0


@pytest.mark.parametrize(("strategy", "pruner", "sampler_class", "pruner_class"), [
    ("random", "median", "RandomSampler", "MedianPruner"), ("tpe", "halving", "TPESampler", "SuccessiveHalvingPruner"),
    ("grid", "none", "GridSampler", "NopPruner")])
def test_each_strategy_and_pruner_is_optuna_s_own(workdir: Path, short: dict, strategy: str, pruner: str,
                                                  sampler_class: str, pruner_class: str) -> None:
    space = {"lora_r": {"type": "int", "low": 2, "high": 4, "step": 2}, "batch_size": {"type": "choice",
                                                                                     "values": [4, 8]}}
    fixed = {k: v for k, v in short.items() if k != "per_device_train_batch_size"}
    found = search({**fixed, "max_steps": 2, "search_space": space, "objective": "perplexity",
                    "search_strategy": {"type": strategy, "pruner": pruner, "num_trials": 1, "seed": 0}},
                   name=strategy).wait()
    assert type(found.study.sampler).__name__ == sampler_class and type(found.study.pruner).__name__ == pruner_class
    assert [t.state for t in found.trials] == ["complete"]
    for row in found.trials:
        run = slmnb.load_run(row.run)
        assert run.config.per_device_train_batch_size == row.params["per_device_train_batch_size"]
        assert row.value == pytest.approx([m for m in run.metrics if m["event"] == "eval"][-1]["perplexity"])


def test_the_readmes_search_is_a_valid_search() -> None:
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Search hyperparameters.*?```yaml\n(.*?)```", readme, re.S)
    assert block is not None
    fixed, spec = parse_search(yaml.safe_load(block.group(1)))
    assert spec is not None and spec.objective == "accuracy" and spec.strategy == "tpe"
    assert set(spec.space) == {"learning_rate", "lora_r", "per_device_train_batch_size"}
    FinetuneConfig.from_dict(fixed)  # the fixed fields are a valid config on their own
