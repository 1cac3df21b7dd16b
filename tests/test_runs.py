"""Runs: the runs folder, and what keeps a user's runs and files safe from mistakes, crashes and full disks."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import slmnb
from slmnb.errors import RunError
from slmnb.training import events as ev
from slmnb.training.runfiles import RunFolder, checkpoint_problem
from slmnb.training.runs import Runs
from slmnb.training.states import RunState

pytestmark = pytest.mark.timeout(300)


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# --- the runs folder ---------------------------------------------------------------------------------------


def test_runs_is_an_object_each_front_end_holds(workdir: Path, tiny: dict) -> None:
    mine = Runs(workdir / "elsewhere")
    run = mine.start(tiny, name="held").wait()
    assert run.dir == workdir / "elsewhere" / "held"
    assert mine.open("held") is run  # the same object, listeners and all
    assert [r.name for r in mine.list()] == ["held"]
    assert Runs(workdir / "elsewhere").open("held").status == RunState.FINISHED
    assert not (workdir / "runs").exists()


def test_an_existing_folder_that_is_not_a_run_is_refused_and_left_alone(workdir: Path, tiny: dict) -> None:
    mine = workdir / "my-project"
    (mine / "adapter").mkdir(parents=True)
    (mine / "adapter" / "notes.txt").write_text("mine")
    (mine / "metrics.jsonl").write_text("my own metrics\n")
    with pytest.raises(RunError, match="exists and is not a slmnb run folder: choose a new folder"):
        slmnb.finetune(tiny, output_dir=str(mine))
    assert (mine / "adapter" / "notes.txt").read_text() == "mine"
    assert (mine / "metrics.jsonl").read_text() == "my own metrics\n"
    assert sorted(p.name for p in mine.iterdir()) == ["adapter", "metrics.jsonl"]

    (workdir / "a-file").write_text("x")
    with pytest.raises(RunError, match="exists and is not a slmnb run folder"):
        slmnb.finetune(tiny, output_dir=str(workdir / "a-file"))
    with pytest.raises(RunError, match="exists and is not a slmnb run folder"):
        slmnb.finetune(tiny, output_dir="/dev/null")
    with pytest.raises(RunError, match="Cannot create the run folder"):
        slmnb.finetune(tiny, output_dir="/proc/slmnb-run")
    with pytest.raises(RunError, match="Cannot create the run folder"):
        slmnb.finetune(tiny, output_dir=str(workdir / ("x" * 300)))

    empty = workdir / "made-for-it"
    empty.mkdir()
    assert slmnb.finetune(tiny, output_dir=str(empty), max_steps=1).wait().dir == empty


def test_output_dir_with_a_tilde_is_the_home_folder(workdir: Path, tiny: dict, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(workdir / "home"))
    run = slmnb.finetune(tiny, output_dir="~/tilde-run", max_steps=1).wait()
    assert run.dir == workdir / "home" / "tilde-run" and (run.dir / "config.yaml").is_file()
    assert not (workdir / "~").exists()


def test_a_run_folder_is_created_once(workdir: Path, tiny: dict) -> None:
    config = slmnb.FinetuneConfig.from_dict({**tiny, "name": "once"})
    folder = RunFolder(workdir / "once")
    folder.create(config)
    with pytest.raises(RunError, match="exists already"):
        RunFolder(workdir / "once").create(config)


def test_a_refused_second_run_leaves_no_folder(workdir: Path, tiny: dict) -> None:
    first = slmnb.finetune(tiny, name="first", max_steps=500)
    try:
        with pytest.raises(RunError, match="Run 'first' is still training"):
            slmnb.finetune(tiny, name="second")
        assert not (workdir / "runs" / "second").exists()
    finally:
        first.stop()
        first.wait(60)


def test_names_are_checked_wherever_a_user_gives_one(workdir: Path, tiny: dict) -> None:
    slmnb.finetune(tiny, name="real", max_steps=1).wait()
    for bad in ("../../x", "a/b", "x\n", ""):
        with pytest.raises(RunError):
            slmnb.load_run(bad)
        with pytest.raises(slmnb.SlmnbError):
            slmnb.finetune(name=bad, resume=True)
    assert slmnb.load_run("runs/real").name == "real"  # a folder path is fine


def test_a_model_first_used_is_built_in_the_thread_and_settles_the_config_there(
        workdir: Path, tiny: dict, monkeypatch) -> None:
    # A fresh SLMNB_HOME: tiny-llama is not built yet, as the embedded model is not on a user's first cell.
    monkeypatch.setenv("SLMNB_HOME", str(workdir / "home"))
    seen: list[str | None] = []
    started = time.perf_counter()
    run = slmnb.finetune(tiny, name="first-use", max_steps=2, target_modules=None)
    returned = time.perf_counter() - started
    seen.append(run.phase)
    run.wait(120)
    assert seen[0] and "first use" in seen[0]  # the thread was still building when start returned
    assert run.status == RunState.FINISHED and run.phase is None
    saved = yaml.safe_load((workdir / "runs" / "first-use" / "config.yaml").read_text(encoding="utf-8"))
    assert saved["target_modules"] == "all-linear" == run.config.target_modules
    assert returned < 5, returned  # not a timed goal: start must not have built the model (it takes longer)

    # On a model built in the thread, a config the model refuses fails the run with the one sentence.
    monkeypatch.setenv("SLMNB_HOME", str(workdir / "home2"))
    bad = slmnb.finetune(tiny, name="bad-modules", target_modules="q_proj,vv_proj")
    with pytest.raises(slmnb.SlmnbError, match="target_modules vv_proj matches no layer"):
        bad.wait(120)
    assert bad.status == RunState.FAILED


# --- resume ------------------------------------------------------------------------------------------------


def test_resuming_a_finished_run_trains_nothing_and_says_how(workdir: Path, tiny: dict) -> None:
    run = slmnb.finetune(tiny, name="done", max_steps=6, eval_steps=3).wait()
    adapter = (run.output_path / "adapter_model.safetensors").read_bytes()
    with pytest.raises(RunError, match="already reached step 6 of max_steps 6: to train it longer, resume it with "
                                       "max_steps greater than 6"):
        slmnb.finetune(name="done", resume=True)
    with pytest.raises(RunError, match="already reached step 6 of max_steps 6"):
        slmnb.finetune(name="done", resume=True, max_steps=6)
    with pytest.raises(RunError, match="lora_r cannot change when resuming"):
        slmnb.finetune(name="done", resume=True, max_steps=9, lora_r=4)
    assert (run.output_path / "adapter_model.safetensors").read_bytes() == adapter
    assert run.status == RunState.FINISHED and run.step == 6

    slmnb.finetune(name="done", resume=True, max_steps=9).wait()
    assert [e.step for e in run.history if isinstance(e, ev.Step)] == list(range(1, 10))
    assert run.max_steps == 9 and run.step == 9
    assert yaml.safe_load((run.dir / "config.yaml").read_text())["max_steps"] == 9


def test_the_magic_and_the_cli_resume_the_same_way(ip, workdir: Path, tiny: dict, capsys) -> None:
    from IPython.core.error import UsageError

    from slmnb.cli import main

    slmnb.finetune(tiny, name="both", max_steps=2).wait()
    with pytest.raises(UsageError, match="already reached step 2 of max_steps 2: to train it longer"):
        ip.run_line_magic("finetune", "resume both")
    assert ip.run_line_magic("finetune", "resume both --max_steps 3 --wait") is None  # the dashboard shows it
    assert slmnb.load_run("both").step == 3
    assert main(["finetune", "--name", "both", "--resume", "--max_steps", "3"]) == 2
    assert "already reached step 3 of max_steps 3" in capsys.readouterr().err
    assert main(["finetune", "--name", "both", "--resume", "--max_steps", "4"]) == 0


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(workdir: Path, tiny: dict) -> None:
    run = slmnb.finetune(tiny, name="fallback", max_steps=8, save_steps=4, eval_steps=4).wait()
    newest = run.dir / "checkpoints" / "checkpoint-8"
    (newest / "trainer_state.json").write_text('{"global_step": 8, "log_hist')  # cut short by a crash
    assert checkpoint_problem(newest) == "its trainer_state.json is damaged"
    run.resume(max_steps=10).wait()
    started = [e for e in run.history if isinstance(e, ev.Started)][-1]
    assert started.step == 4
    assert started.notes == ("checkpoint 8 is unusable (its trainer_state.json is damaged), so it was skipped",)
    assert run.status == RunState.FINISHED and run.step == 10
    assert [e.step for e in run.history if isinstance(e, ev.Step)] == list(range(1, 11))


def test_stop_while_paused_trains_no_further_step(workdir: Path, tiny: dict) -> None:
    run = slmnb.finetune(tiny, name="held", listeners=[lambda e: isinstance(e, ev.Step) and e.step == 3 and
                                                      run.pause()])
    wait_for(lambda: run.status == RunState.PAUSED, what="the pause")
    held = run.step
    run.stop()
    run.wait(60)
    assert run.status == RunState.STOPPED and run.step == held
    assert (run.dir / "checkpoints" / f"checkpoint-{held}" / "trainer_state.json").is_file()


# --- stop acts quickly in the long parts -------------------------------------------------------------------


def test_stop_acts_within_two_seconds_while_tokenizing(workdir: Path, tiny: dict) -> None:
    data = workdir / "many.jsonl"  # a file, as such data comes: inline rows would go into config.yaml
    data.write_text("".join(json.dumps({"phrase": f"a much longer phrase to tokenize, number {i} " * 4,
                                        "tone": "Joy"}) + "\n" for i in range(60000)))
    run = slmnb.finetune(tiny, name="tokenizing", rows=None, data_files=str(data))
    time.sleep(2.0)  # the thread loads the tokenizer, then spends a minute tokenizing
    assert run.status == RunState.STARTING
    asked = time.monotonic()
    run.stop()
    run.wait(30)
    assert time.monotonic() - asked < 2.5 and not run.alive
    assert run.status == RunState.STOPPED and run.step == 0


def test_stop_acts_within_two_seconds_while_evaluating(workdir: Path, tiny: dict) -> None:
    rows = [{"phrase": f"sample phrase {i}", "tone": "Joy"} for i in range(40)]
    held_out = [{"phrase": f"held out phrase number {i} " * 6, "tone": "Sad"} for i in range(8000)]
    asked: list[float] = []

    def stop_before_the_first_eval(event: ev.Event) -> None:
        if isinstance(event, ev.Step) and event.step == 2:
            asked.append(time.monotonic())
            run.stop()  # the Step event comes just before the evaluation of step 2 starts

    data = workdir / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows + held_out))
    run = slmnb.finetune(tiny, name="evaluating", rows=None, data_files=str(data), train_split="train[:40]",
                         eval_split="train[40:]", eval_steps=2, save_steps=100, listeners=[stop_before_the_first_eval])
    run.wait(120)
    assert time.monotonic() - asked[0] < 2.5
    assert run.status == RunState.STOPPED and run.step == 2
    assert not [e for e in run.history if isinstance(e, ev.Eval)]
    assert (run.dir / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    assert (run.output_path / "adapter_model.safetensors").is_file()


# --- divergence ----------------------------------------------------------------------------------------------


def test_a_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint_and_adapter(workdir: Path, tiny: dict) -> None:
    # Warm-up makes step 1's learning rate 0 (a good checkpoint); soon after, 1e38 overflows the weights.
    run = slmnb.finetune(tiny, name="nan", learning_rate=1e38, warmup_ratio=0.5, max_steps=1).wait()
    adapter = (run.output_path / "adapter_model.safetensors").read_bytes()
    run.resume(max_steps=16)
    with pytest.raises(RunError, match=r"Training diverged at step \d+ .*lower learning_rate \(now 1e\+38\)"):
        run.wait(60)
    assert run.status == RunState.FAILED
    state = json.loads((run.dir / "run.json").read_text())
    assert state["status"] == "failed" and state["reason"].startswith("Training diverged")
    assert (run.output_path / "adapter_model.safetensors").read_bytes() == adapter
    checkpoints = sorted(run.dir.glob("checkpoints/checkpoint-*"))
    assert checkpoints and all(checkpoint_problem(p) is None for p in checkpoints)
    import numpy as np
    from safetensors.numpy import load_file

    for path in checkpoints:
        assert all(np.isfinite(w).all() for w in load_file(path / "adapter_model.safetensors").values())
    assert all(e.loss == e.loss for e in run.history if isinstance(e, ev.Step))  # no NaN recorded as a step


# --- corrupt run folders -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("file", "content", "message"), [
    ("run.json", "[1, 2]", "The run.json of run 'hurt' is damaged"),
    ("run.json", "null", "The run.json of run 'hurt' is damaged"),
    ("run.json", b"\xff\xfe\x00binary", "The run.json of run 'hurt' cannot be read"),
    ("run.json", '{"status": "banana"}', "names an unknown status 'banana'"),
    ("config.yaml", "lora_rank: 3", "The config.yaml of run 'hurt' cannot be read"),
    ("config.yaml", b"\xff\xfe", "The config.yaml of run 'hurt' cannot be read"),
])
def test_a_damaged_run_folder_is_one_sentence_and_listings_skip_it(workdir: Path, tiny: dict, ip, file: str,
                                                                  content, message: str) -> None:
    made_elsewhere = Runs("runs")  # as by another kernel: this one's runs would not be read from disk
    made_elsewhere.start(tiny, name="fine", max_steps=1).wait()
    made_elsewhere.start(tiny, name="hurt", max_steps=1).wait()
    path = workdir / "runs" / "hurt" / file
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    fresh = Runs("runs")
    with pytest.raises(RunError, match=message):
        fresh.open("hurt")
    listed = fresh.list()
    assert [r.name for r in listed] == ["fine"] and len(listed.skipped) == 1 and message in listed.skipped[0]
    table = ip.run_line_magic("finetune", "runs")
    assert "fine" in repr(table) and f"Skipped: {listed.skipped[0]}" in repr(table)
    assert "Skipped:" in table._repr_html_()


def test_damaged_metric_lines_are_skipped(workdir: Path, tiny: dict) -> None:
    run = slmnb.finetune(tiny, name="lines", max_steps=3, eval_steps=10).wait()
    with open(run.dir / "metrics.jsonl", "a") as handle:
        handle.write('[1, 2]\n{"event": "step"}\n{"event": "step", "step": "x", "elapsed": 1, "loss": 1}\n'
                     '{"event": "eval", "step": 4, "elapsed": 1.0, "eval_loss": "high"}\n7\nnull\n{"event": "st')
    loaded = Runs("runs").open("lines")
    assert loaded.history == [e for e in run.history if isinstance(e, ev.Step | ev.Eval)]


def test_stale_temp_folders_are_swept_at_the_next_start(workdir: Path, tiny: dict) -> None:
    run = slmnb.finetune(tiny, name="swept", max_steps=2).wait()
    stale = run.dir / f".adapter.tmp-{dead_pid()}-0123abcd"
    stale.mkdir()
    (stale / "adapter_model.safetensors").write_text("half")
    live = run.dir / f".adapter.tmp-{os.getpid()}-0123abcd"
    live.mkdir()
    run.resume(max_steps=3).wait()
    assert not stale.exists() and live.exists()


# --- faults --------------------------------------------------------------------------------------------------


def test_a_raising_listener_is_reported_once_and_dropped(workdir: Path, tiny: dict, caplog) -> None:
    calls: list[ev.Event] = []

    def broken(event: ev.Event) -> None:
        calls.append(event)
        raise ValueError("display went away")

    with caplog.at_level(logging.WARNING, logger="slmnb.training.run"):
        run = slmnb.finetune(tiny, name="noisy", max_steps=4, listeners=[broken]).wait()
    assert run.status == RunState.FINISHED and len(calls) == 1
    lines = [r for r in caplog.records if "listener" in r.getMessage()]
    assert len(lines) == 1 and "display went away" in lines[0].getMessage() and lines[0].exc_info is None


def _cli(workdir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "slmnb.cli", "finetune", *args], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def config_file(workdir: Path, tiny: dict) -> Path:
    path = workdir / "run.yaml"
    path.write_text(yaml.safe_dump({**tiny, "max_steps": 100000, "eval_steps": 100000, "save_steps": 5}))
    return path


def test_one_process_per_run_and_kill_9_leaves_it_resumable(workdir: Path, config_file: Path) -> None:
    child = _cli(workdir, str(config_file), "--name", "shared")
    try:
        folder = RunFolder(workdir / "runs" / "shared")
        wait_for(lambda: (folder.checkpoints / "checkpoint-5" / "trainer_state.json").is_file(), 120,
                 "the child's first checkpoint")
        mine = Runs("runs").open("shared")
        assert mine.status == RunState.RUNNING  # held by a live process, not interrupted
        with pytest.raises(RunError, match="is training already"):
            mine.resume()
        with pytest.raises(RunError, match=rf"is being trained by process {child.pid}"):
            folder.lock()
        with pytest.raises(RunError, match="exists already"):
            slmnb.finetune(str(config_file), name="shared")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    reopened = Runs("runs").open("shared")
    assert reopened.status == RunState.INTERRUPTED
    done = reopened.step
    reopened.resume(max_steps=done + 3).wait(120)
    assert reopened.status == RunState.FINISHED
    steps = [e.step for e in reopened.history if isinstance(e, ev.Step)]
    assert steps == list(range(1, done + 4))


def test_two_processes_starting_the_same_run_one_wins(workdir: Path, config_file: Path) -> None:
    children = [_cli(workdir, str(config_file), "--name", "race", "--max_steps", "3") for _ in range(2)]
    outputs = [c.communicate(timeout=240)[0] for c in children]
    codes = sorted(c.returncode for c in children)
    assert codes == [0, 2], outputs
    loser = outputs[[c.returncode for c in children].index(2)]
    assert "exists already" in loser and "Traceback" not in loser
    lines = (workdir / "runs" / "race" / "metrics.jsonl").read_text().splitlines()
    assert [r["step"] for x in lines if (r := json.loads(x))["event"] == "step"] == [1, 2, 3]


@pytest.mark.parametrize("kill_after", [2.0, 6.0])
def test_kill_9_at_any_moment_never_leaves_a_half_written_file_in_use(workdir: Path, config_file: Path,
                                                                      kill_after: float) -> None:
    child = _cli(workdir, str(config_file), "--name", "killed", "--max_steps", "12", "--save_steps", "1")
    time.sleep(kill_after)
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    folder = workdir / "runs" / "killed"
    if not (folder / "run.json").is_file():
        return  # killed before the folder was made: nothing to recover
    run = Runs("runs").open("killed")
    assert run.status in (RunState.INTERRUPTED, RunState.FINISHED, RunState.CREATED)
    if run.status != RunState.FINISHED:
        run.resume().wait(120)
    assert run.status == RunState.FINISHED and run.step == 12
    assert [e.step for e in run.history if isinstance(e, ev.Step)] == list(range(1, 13))
    assert not [p for p in folder.rglob("*") if ".tmp-" in p.name]


@pytest.fixture
def small_disk(tmp_path: Path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("this machine does not allow mounting a small tmpfs")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_fails_the_run_with_the_reason_everywhere(workdir: Path, config_file: Path,
                                                               small_disk: Path) -> None:
    # Full fine-tuning of the tiny model checkpoints ~40 MB: the 6 MB disk fills at the first save.
    child = _cli(workdir, str(config_file), "-o", str(small_disk / "run"), "--method", "full", "--max_steps", "6",
                 "--save_steps", "3")
    output = child.communicate(timeout=240)[0]
    assert child.returncode == 1, output
    assert "Traceback" not in output
    assert f"error: The disk holding {small_disk / 'run'} is full" in output
    state = json.loads((small_disk / "run" / "run.json").read_text())
    assert state["status"] == "failed" and "is full" in state["reason"]
    assert (small_disk / "run" / "error.log").read_text().startswith("Traceback")
    reopened = Runs("runs").open(small_disk / "run")
    assert reopened.status == RunState.FAILED


# --- generated damage: any bytes in any of a run folder's files -------------------------------------------


@pytest.fixture(scope="module")
def finished_folder(tmp_path_factory) -> Path:
    """One real finished run (without its checkpoints) to copy and damage."""
    root = tmp_path_factory.mktemp("template")
    rows = [{"phrase": f"sample phrase number {i}", "tone": "Joy"} for i in range(16)]
    run = Runs(root).start({"model_name_or_path": "tiny-llama", "rows": rows, "prompt_template": "{phrase}",
                            "response_template": "{tone}", "max_steps": 2, "eval_steps": 1, "precision": "fp32"},
                           name="template").wait(120)
    import shutil

    shutil.rmtree(run.dir / "checkpoints")
    return run.dir


def _json_values():
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                        st.dictionaries(st.sampled_from(["status", "step", "max_steps", "elapsed", "pid", "loss",
                                                         "event", "eval_loss", "started_at", "reason"]) |
                                        st.text(max_size=8), inner, max_size=6), max_leaves=12)


def test_any_damage_to_a_run_folder_is_one_sentence_or_reads_back(finished_folder: Path, tmp_path: Path) -> None:
    import shutil

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from slmnb.notebook.views import RunsTable

    contents = (st.binary(max_size=200) | _json_values().map(lambda v: json.dumps(v).encode()) |
                st.lists(_json_values().map(json.dumps), max_size=5).map(lambda lines: "\n".join(lines).encode()) |
                st.text(max_size=200).map(str.encode))
    counter = iter(range(10**9))

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.sampled_from(["run.json", "config.yaml", "metrics.jsonl"]), contents)
    def damaged(file: str, content: bytes) -> None:
        root = tmp_path / f"root-{next(counter)}"
        shutil.copytree(finished_folder, root / "victim")
        shutil.copytree(finished_folder, root / "healthy")
        (root / "victim" / file).write_bytes(content)
        runs = Runs(root)
        try:
            run = runs.open("victim")
        except RunError as exc:
            message = str(exc)
            assert "\n" not in message and "Traceback" not in message and "Error:" not in message
        else:
            assert isinstance(run.status, RunState)
            repr(run), run.max_steps, run.metrics
        listed = runs.list()
        assert "healthy" in [r.dir.name for r in listed]
        assert len(listed) + len(listed.skipped) == 2
        repr(RunsTable.of(listed))
        shutil.rmtree(root)

    damaged()


@pytest.mark.parametrize(("damage", "message"), [
    (lambda folder: (folder / "config.json").write_text("{not json"), "is not a usable model config"),
    (lambda folder: (folder / "config.json").write_bytes(b"\xff\xfe"), "is not a usable model config"),
    (lambda folder: [p.unlink() for p in folder.glob("tokenizer*")], "has no tokenizer: save one into it"),
    (lambda folder: (folder / "model.safetensors").write_bytes(b"\x01"), "is damaged: save the model again"),
])
def test_a_broken_model_folder_is_one_sentence_before_any_run_folder(workdir: Path, tiny: dict, damage,
                                                                      message: str) -> None:
    import shutil

    from slmnb.errors import ConfigError
    from slmnb.models import model_folder

    folder = workdir / "model"
    shutil.copytree(model_folder("tiny-llama"), folder)
    damage(folder)
    with pytest.raises(ConfigError, match=message):
        slmnb.finetune(tiny, model_name_or_path=str(folder), name="broken")
    assert not (workdir / "runs").exists()


def test_data_mistakes_are_answered_before_the_model_is_read(workdir: Path, tiny: dict) -> None:
    broken = workdir / "model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")  # reading the model would fail with its own sentence
    with pytest.raises(slmnb.ConfigError, match="which is not a column"):
        slmnb.finetune(tiny, model_name_or_path=str(broken), prompt_template="{nothing}")


def test_a_likely_mistake_trains_as_asked_and_every_front_end_says_so(workdir: Path, tiny: dict, ip) -> None:
    from slmnb.notebook.dashboard import Dashboard

    run = slmnb.finetune(tiny, name="warned", learning_rate=5, max_steps=1)
    try:
        run.wait(120)
    except slmnb.SlmnbError:
        pass  # a learning rate of 5 may well diverge: the point is that it was said before
    started = next(e for e in run.history if isinstance(e, ev.Started))
    assert any(note.startswith("learning_rate 5") for note in started.notes), started.notes
    assert run.config.learning_rate == 5
    dashboard = Dashboard(run)
    dashboard.follow()
    dashboard.redraw()
    assert dashboard.status.value.count("learning_rate 5") == 1, dashboard.status.value
