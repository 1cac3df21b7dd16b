"""The dashboard through recording comms (no front end): throttling, decimation, buttons, error state, replay."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

import slmnb
from slmnb.config import FinetuneConfig
from slmnb.notebook.charts import Curves, decimate, log_ticks, render_svg, tick_text
from slmnb.notebook.dashboard import Dashboard
from slmnb.training import events as ev
from slmnb.training.run import TrainingRun, WaitInterrupted
from slmnb.training.runfiles import RunFolder
from slmnb.training.states import RunState


def started(max_steps: int, step: int = 0) -> ev.Started:
    return ev.Started(step=step, elapsed=0.0, name="fake", max_steps=max_steps, precision="fp32",
                      output_dir="runs/fake", dropped_rows=0)


def step(n: int, loss: float = 1.0) -> ev.Step:
    return ev.Step(step=n, elapsed=n * 0.1, loss=loss, learning_rate=1e-3, grad_norm=1.0, tokens_per_second=500.0,
                   epoch=0.0)


@pytest.fixture
def run(workdir: Path) -> TrainingRun:
    """A real TrainingRun fed events by the test, as the training thread would once it starts."""
    folder = RunFolder(workdir / "runs" / "fake")
    folder.path.mkdir(parents=True)
    return TrainingRun(FinetuneConfig(data_name="tones", name="fake"), folder, RunState.STARTING)


def test_updates_are_throttled_and_long_runs_decimated(run: TrainingRun, comms: list) -> None:
    dashboard = Dashboard(run).follow()  # not training yet: drawn once
    run.emit(started(10_000))  # starts the drawing thread
    begin = time.monotonic()
    for n in range(1, 10_001):
        run.emit(step(n, loss=5.0 / n))
        if n % 2000 == 0:
            run.emit(ev.Eval(step=n, elapsed=n * 0.1, eval_loss=1.0 + 1 / n, perplexity=0.0))
        if n % 100 == 0:
            time.sleep(0.01)  # about a second and a half of training
    run.emit(ev.Finished(step=10_000, elapsed=1000.0, output_path="runs/fake/adapter", reason="completed"))
    dashboard._drawer.join(5)
    seconds = time.monotonic() - begin
    assert dashboard.updates <= seconds / 0.25 + 3  # at most 4 a second, plus the first and last draws
    assert dashboard.updates >= 2
    train = dashboard.figure.data[0]
    assert len(train.x) <= 500 and train.x[-1] == 10_000  # decimated, the last point kept
    assert list(dashboard.figure.data[2].x) == [2000, 4000, 6000, 8000, 10_000]
    assert dashboard.progress.value == 10_000 and "Finished at step 10000/10000" in dashboard.status.value


def test_widget_messages_stay_few_and_small(run: TrainingRun, comms: list) -> None:
    dashboard = Dashboard(run).follow()
    before = sum(len(c.messages) for c in comms)
    run.emit(started(2000))
    for n in range(1, 2001):
        run.emit(step(n))
    run.emit(ev.Finished(step=2000, elapsed=200.0, output_path="x", reason="completed"))
    assert dashboard._drawer is not None
    dashboard._drawer.join(5)  # the final redraw is done
    assert not dashboard._drawer.is_alive()
    sent = [m for c in comms for m in c.messages][before:]
    assert len(sent) < 60  # a handful of redraws, not one per step
    assert max(len(str(m)) for m in sent) < 120_000


def test_failure_turns_the_dashboard_red_with_the_reason(run: TrainingRun, comms: list) -> None:
    dashboard = Dashboard(run).follow()
    run.emit(started(10))
    run.emit(step(1))
    run.emit(ev.Failed(step=1, elapsed=0.2, reason="Out of memory: lower per_device_train_batch_size."))
    dashboard._drawer.join(5)
    assert "#c62828" in dashboard.status.value
    assert "Failed at step 1: Out of memory: lower per_device_train_batch_size." in dashboard.status.value
    assert dashboard.progress.bar_style == "danger"
    assert dashboard.stop_button.disabled and not dashboard.resume_button.disabled


def test_overfitting_hint(run: TrainingRun, comms: list) -> None:
    dashboard = Dashboard(run).follow()
    run.emit(started(50))
    for n in range(1, 51):
        run.emit(step(n, loss=3.0 - n * 0.05))
        if n % 10 == 0:
            run.emit(ev.Eval(step=n, elapsed=n, eval_loss=[2.0, 1.5, 1.6, 1.7, 1.8][n // 10 - 1], perplexity=0.0))
    run.emit(ev.Finished(step=50, elapsed=5.0, output_path="x", reason="completed"))
    dashboard._drawer.join(5)
    assert "overfitting" in dashboard.hint.value


def test_replay_draws_the_history_of_a_finished_run_at_once(workdir: Path, tiny: dict, comms: list) -> None:
    slmnb.finetune(tiny, name="done").wait()
    dashboard = Dashboard(slmnb.load_run("runs/done")).follow()
    assert list(dashboard.figure.data[0].x) == list(range(1, 17))
    assert list(dashboard.figure.data[2].x) == [4, 8, 12, 16]
    assert dashboard.status.value.count("Finished at step 16/16") == 1
    assert "Adapter saved to runs/done/adapter" in dashboard.record_bundle()["text/plain"]


def test_buttons_pause_resume_and_stop_a_real_run(workdir: Path, tiny: dict, comms: list) -> None:
    run = slmnb.finetune(tiny, name="buttons", max_steps=2000, eval_steps=2000)
    dashboard = Dashboard(run).follow()
    _until(lambda: run.step >= 2)
    dashboard.pause_button.click()
    _until(lambda: run.status == "paused" and "Paused at step" in dashboard.status.value)
    held = run.step
    time.sleep(0.5)
    assert run.step == held and dashboard.pause_button.disabled and not dashboard.resume_button.disabled
    dashboard.resume_button.click()
    _until(lambda: run.step > held)
    dashboard.stop_button.click()
    run.wait()
    dashboard._drawer.join(5)
    assert run.status == "stopped" and run.step < 2000
    assert (run.dir / "adapter" / "adapter_config.json").is_file()
    assert f"Stopped at step {run.step}/2000" in dashboard.status.value
    # Resume on a stopped run continues it from its checkpoint, and the same dashboard follows again.
    assert dashboard.charts.layout.display == "none"  # ended: the static record shows the charts, once
    dashboard.resume_button.click()
    _until(lambda: run.status == "running")
    _until(lambda: dashboard.charts.layout.display != "none")  # live again
    dashboard.stop_button.click()
    run.wait()
    dashboard._drawer.join(5)
    assert dashboard.figure.data[0].x[-1] == run.step


def test_curves_and_static_record() -> None:
    curves = Curves()
    curves.add(started(4))
    for n, loss in enumerate([4.0, 3.0, 2.0, 1.0], start=1):
        curves.add(step(n, loss))
    assert curves.smoothed[0] == 4.0 and curves.smoothed[-1] < 4.0  # debiased: no pull towards zero
    curves.add(started(4, step=2))  # resumed from the checkpoint of step 2
    assert curves.steps == [1, 2]
    assert decimate(list(range(10)), list(range(10)), 4) == ([0, 3, 6, 9], [0, 3, 6, 9])
    svg = render_svg(curves, "a <run>", ["Finished & saved"])
    assert svg.startswith("<svg") and "a &lt;run&gt;" in svg and "Finished &amp; saved" in svg
    assert svg.count("<polyline") == 3  # train, smoothed train, smoothed perplexity (no evals yet)


def test_widget_state_for_a_reloaded_page_holds_the_current_points(run: TrainingRun, comms: list) -> None:
    # A page reloaded while the kernel runs asks the kernel for each widget's state: the charts must come back
    # with their points, though plotly sends the points as restyle deltas.
    dashboard = Dashboard(run).follow()
    run.emit(started(10))
    for n in range(1, 6):
        run.emit(step(n, loss=3.0 / n))
    _until(lambda: len(dashboard.figure.data[0].x) == 5)
    state = dashboard.figure.get_state()
    assert [list(t.get("x", [])) for t in state["_widget_data"][:2]] == [[1, 2, 3, 4, 5]] * 2
    assert state["_widget_layout"]["xaxis"]["dtick"] == 1  # relayouts too: whole steps while there are few
    run.emit(ev.Finished(step=5, elapsed=1.0, output_path="x", reason="completed"))
    dashboard._drawer.join(5)


def test_charts_are_readable_early_and_on_a_log_axis(run: TrainingRun, comms: list) -> None:
    dashboard = Dashboard(run).follow()
    run.emit(started(100))
    run.emit(step(1, loss=3.0))
    _until(lambda: len(dashboard.figure.data[0].x) == 1)
    train = dashboard.figure.data[1]
    assert "markers" in train.mode  # one point: a line alone would draw nothing
    assert dashboard.figure.layout.xaxis.dtick == 1 and dashboard.figure.layout.xaxis2.dtick == 1  # no step 1.5
    for n in range(2, 41):
        run.emit(step(n, loss=3.0 - n * 0.05))
    _until(lambda: len(dashboard.figure.data[0].x) == 40)
    assert train.mode == "lines" and dashboard.figure.layout.xaxis.dtick is None
    ppl_axis = dashboard.figure.layout.yaxis2
    assert ppl_axis.type == "log" and list(ppl_axis.ticktext) == [tick_text(v) for v in ppl_axis.tickvals]
    run.emit(ev.Finished(step=40, elapsed=4.0, output_path="x", reason="completed"))
    dashboard._drawer.join(5)
    # Labels written in full (20, not a bare "2"), and few of them.
    assert log_ticks(8.0, 30.0) == [10.0, 15.0, 20.0, 30.0] and tick_text(20.0) == "20"
    assert log_ticks(5.0, 22_000.0) == [10.0, 100.0, 1000.0, 10_000.0] and tick_text(10_000.0) == "10,000"
    assert log_ticks(1.2, 1.9) == [1.2, 1.9]


def test_buttons_are_off_with_a_hint_while_a_cell_waits(workdir: Path, tiny: dict, comms: list) -> None:
    # The kernel queues widget clicks while a cell blocks in run.wait(): the buttons say so instead of seeming to
    # work later.
    import os
    import signal
    import threading

    run = slmnb.finetune(tiny, name="waited", max_steps=5000, eval_steps=5000)
    dashboard = Dashboard(run).follow()
    _until(lambda: run.step >= 1)
    assert not dashboard.stop_button.disabled and not dashboard.hint.value
    waiter = threading.Thread(target=run.wait)
    waiter.start()
    _until(lambda: dashboard.stop_button.disabled and "run.wait()" in dashboard.hint.value)
    assert dashboard.pause_button.disabled and dashboard.resume_button.disabled
    # The kernel's interrupt (a SIGINT, which Python turns into KeyboardInterrupt in the main thread, as ipykernel's
    # handler does) ends a wait and training goes on. Python keeps SIGINT ignored when it starts so (a `make test`
    # started in the background of a non-interactive shell): this test puts Python's handler in place for itself.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        with pytest.raises(WaitInterrupted, match="Stopped waiting for run 'waited', which trains on"):
            run.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert run.alive
    run.stop()  # what the runs panel's Stop does, through the run folder
    waiter.join(60)
    # The wait returned: the buttons come back without any new event.
    _until(lambda: not dashboard.resume_button.disabled and not dashboard.hint.value)
    assert run.status == "stopped" and not run.waited_on


def test_tokens_per_second_leave_out_paused_time(workdir: Path, tiny: dict) -> None:
    run = slmnb.finetune(tiny, name="paused-rate", max_steps=40, eval_steps=40, logging_steps=1)
    _until(lambda: run.step >= 4)
    run.pause()
    _until(lambda: run.status == "paused")
    held = run.step
    time.sleep(2.0)  # far longer than a step of the tiny model
    run.resume()
    run.wait()
    rates = {e.step: e.tokens_per_second for e in run.history if isinstance(e, ev.Step)}
    others = sorted(rate for s, rate in rates.items() if s not in (1, held + 1))
    # Counting the 2 s pause would make that step's rate hundreds of times lower than a tiny-model step's (8 vs 75
    # measured); a loaded machine makes single steps a few times slower, so the bound is loose on purpose.
    assert rates[held + 1] > others[len(others) // 2] / 20, (held, rates)


def test_repr_says_when_it_was_taken(run: TrainingRun) -> None:
    assert re.fullmatch(r"<TrainingRun 'fake': starting at step 0/\? as of \d\d:\d\d:\d\d, in .*fake>", repr(run))


def test_static_record_marks_lone_points_and_labels_the_log_axis_in_full() -> None:
    curves = Curves()
    curves.add(started(60))
    curves.add(step(1, loss=3.0))
    svg = render_svg(curves, "one step", ["Training"])
    assert svg.count("<circle") == 3  # train, smoothed, smoothed perplexity: one point each, drawn as dots
    for n in range(2, 61):
        curves.add(step(n, loss=3.0 - n * 0.04))
    svg = render_svg(curves, "sixty steps", ["Finished"])
    assert "<circle" not in svg
    labels = re.findall(r'text-anchor="end" font-size="10">([^<]+)</text>', svg)
    ppl = [f"{v:g}" for v in log_ticks(min(curves.train_perplexity), max(curves.train_perplexity))]
    assert [x.replace(",", "") for x in labels[2:]] == ppl and len(ppl) >= 2


def _until(condition, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_a_slow_start_says_what_it_is_doing(run: TrainingRun, comms: list) -> None:
    run.phase = "Preparing tiny-llama for its first use on this machine (about 30 s, once): converting its weights..."
    dashboard = Dashboard(run).follow()
    assert "Preparing tiny-llama for its first use" in dashboard.status.value


# --- generation metrics: the third chart, the summary, the record, the runs table, compare_runs ---------------------

def scored(n: int, **scores: float) -> ev.Eval:
    return ev.Eval(step=n, elapsed=n * 0.1, eval_loss=1.0 + 1 / n, perplexity=0.0, metrics=scores)


def test_generation_metrics_get_a_third_chart_and_a_summary_line(run: TrainingRun, comms: list) -> None:
    dashboard = Dashboard(run).follow()
    run.emit(ev.Started(step=0, elapsed=0.0, name="fake", max_steps=12, precision="fp32", output_dir="runs/fake",
                        dropped_rows=0, metrics=("accuracy", "f1")))
    for n in range(1, 13):
        run.emit(step(n, loss=3.0 / n))
        if n % 4 == 0:
            run.emit(scored(n, **[{"accuracy": 0.0, "f1": 0.0}, {"accuracy": 0.75, "f1": 0.7},
                                   {"accuracy": 0.625, "f1": 0.6}][n // 4 - 1]))
    run.emit(ev.Finished(step=12, elapsed=1.2, output_path="x", reason="completed"))
    dashboard._drawer.join(5)
    figure = dashboard.metrics_figure
    assert figure is not None and dashboard.charts.children == (dashboard.figure, figure)
    assert [t.name for t in figure.data] == ["accuracy", "f1"]
    assert list(figure.data[0].x) == [4, 8, 12] and list(figure.data[0].y) == [0.0, 0.75, 0.625]  # a 0 is a point
    assert figure.data[0].line.color != figure.data[1].line.color
    assert figure.layout.title.text == "accuracy, f1 per step (%)" and figure.layout.yaxis.tickformat == ".0%"
    summary = dashboard.summary_lines()
    assert "accuracy 62.5% (best 75.0% at step 8) · f1 60.0% (best 70.0% at step 8)" in summary
    record = dashboard.record_bundle()
    assert "accuracy 62.5% (best 75.0% at step 8)" in record["text/plain"]
    svg = record["image/svg+xml"]
    assert "accuracy, f1 per step (%)" in svg and ">100%</text>" in svg
    # Both scores drawn in the third panel, each in its colour (3 loss + 2 perplexity + 2 score lines).
    assert svg.count("<polyline") == 7
    assert all(f'stroke="{t.line.color}"' in svg for t in figure.data)


def test_the_chosen_metrics_are_said_plainly_and_warnings_as_warnings(run: TrainingRun, comms: list) -> None:
    dashboard = Dashboard(run).follow()
    chosen = "metrics: accuracy, f1 (the 300 training responses take 4 distinct values)"
    damaged = "checkpoint 8 is unusable (no trainer_state.json), so it was skipped"
    run.emit(ev.Started(step=0, elapsed=0.0, name="fake", max_steps=4, precision="fp32", output_dir="runs/fake",
                        dropped_rows=0, notes=(chosen, damaged), metrics=("accuracy", "f1")))
    dashboard._drawer.join(5)
    html = dashboard.status.value
    assert f"<div style='color:#666'>{chosen}</div>" in html
    assert f"<div style='color:#8a6d00'>{damaged}</div>" in html


def test_a_run_without_generation_metrics_has_no_third_chart(run: TrainingRun, comms: list) -> None:
    dashboard = Dashboard(run).follow()
    run.emit(started(8))
    for n in range(1, 9):
        run.emit(step(n))
        if n % 4 == 0:
            run.emit(ev.Eval(step=n, elapsed=n * 0.1, eval_loss=1.0, perplexity=0.0))
    run.emit(ev.Finished(step=8, elapsed=0.8, output_path="x", reason="completed"))
    dashboard._drawer.join(5)
    assert dashboard.metrics_figure is None and dashboard.charts.children == (dashboard.figure,)
    assert not dashboard.scores_line()
    assert "per step" not in dashboard.record_bundle()["image/svg+xml"]


def test_scores_arriving_on_a_live_run_reach_the_widget_state(run: TrainingRun, comms: list) -> None:
    # The third chart appears at the first scored evaluation, and a page reloaded then gets its points back.
    dashboard = Dashboard(run).follow()
    run.emit(started(100))
    run.emit(step(1))
    _until(lambda: len(dashboard.figure.data[0].x) == 1)
    assert dashboard.metrics_figure is None
    run.emit(scored(2, bleu=0.2, rouge1=0.5, rouge2=0.3, rougeL=0.45, chrf=0.4))
    _until(lambda: dashboard.metrics_figure is not None and len(dashboard.metrics_figure.data) == 5
           and dashboard.metrics_figure.data[4].y is not None)
    state = dashboard.metrics_figure.get_state()
    assert [(t["name"], list(t["y"])) for t in state["_widget_data"]] == [
        ("bleu", [0.2]), ("rouge1", [0.5]), ("rouge2", [0.3]), ("rougeL", [0.45]), ("chrf", [0.4])]
    run.emit(started(100, step=1))  # resumed from the checkpoint of step 1: the scores of step 2 are redone
    _until(lambda: all(not t.x for t in dashboard.metrics_figure.data))
    run.emit(scored(2, bleu=0.25))
    _until(lambda: dashboard.metrics_figure.data[0].y == (0.25,))
    assert all(not t.x for t in dashboard.metrics_figure.data[1:])
    run.emit(ev.Finished(step=2, elapsed=1.0, output_path="x", reason="completed"))
    dashboard._drawer.join(5)


def test_curves_keep_scores_per_key_and_drop_them_on_resume() -> None:
    curves = Curves()
    curves.add(started(12))
    curves.add(scored(4, accuracy=0.5, perplexity=9.0, my_loss=2.0))
    curves.add(scored(8, accuracy=0.9, my_loss=1.0))
    curves.add(scored(12, accuracy=0.7, my_loss=1.5))
    assert list(curves.metrics) == ["accuracy", "my_loss"]  # perplexity has its own chart
    assert curves.latest() == {"accuracy": 0.7, "my_loss": 1.5}
    assert curves.best() == {"accuracy": (8, 0.9), "my_loss": (8, 1.0)}  # a loss is best when lowest
    assert not curves.metrics_are_fractions() and curves.metrics_title() == "metrics per step"
    curves.add(started(12, step=4))  # resumed from the checkpoint of step 4
    assert curves.metrics["accuracy"].steps == [4] and curves.best()["accuracy"] == (4, 0.5)


def test_runs_table_shows_the_main_metric(run: TrainingRun) -> None:
    from slmnb.notebook.views import RunsTable

    run.emit(started(8))
    run.emit(step(4))
    run.emit(scored(4, rougeL=0.25, bleu=0.1))
    run.emit(ev.Eval(step=8, elapsed=0.8, eval_loss=0.9, perplexity=2.5, metrics={}))  # an eval without answers
    table = RunsTable.of([run])
    assert table.rows[0]["metric"] == ("rougeL", 0.25)
    text = repr(table).splitlines()
    assert "metric" in text[0] and "rougeL 25.0%" in text[-1]
    assert "<td style='text-align:left;white-space:pre-wrap'>rougeL 25.0%</td>" in table._repr_html_()


def test_a_real_run_scores_its_answers_for_every_view(workdir: Path, tiny: dict, comms: list) -> None:
    """The scores a run writes are read back from its folder by the dashboard, its record, %finetune runs and
    compare_runs; a run that generates nothing shows none."""
    from slmnb.notebook.views import RunsTable

    slmnb.finetune(tiny, name="scored", max_steps=8, metrics=["accuracy", "f1"], eval_generate_samples=4).wait()
    slmnb.finetune(tiny, name="plain", max_steps=8, eval_generate_samples=0).wait()
    dashboard = Dashboard(slmnb.load_run("runs/scored")).follow()
    assert [t.name for t in dashboard.metrics_figure.data] == ["accuracy", "f1"]
    assert list(dashboard.metrics_figure.data[0].x) == [4, 8]
    assert "accuracy, f1 per step" in dashboard.record_bundle()["image/svg+xml"]
    assert re.search(r"accuracy \d+\.\d% \(best \d+\.\d% at step [48]\)", dashboard.status.value)
    table = RunsTable.of(slmnb.list_runs())
    metric = {row["name"]: row["metric"] for row in table.rows}
    assert metric["plain"] is None and metric["scored"][0] == "accuracy" and 0 <= metric["scored"][1] <= 1
    # The lab's runs panel reads the same from run.json (metric.ts, checked against main_metric in
    # test_labextension.py), without the run's metrics.jsonl.
    from slmnb.notebook.charts import main_metric

    state = slmnb.load_run("runs/scored").folder.read_state()
    assert main_metric(state["metrics"]["last"]) == metric["scored"]
    figure = slmnb.compare_runs(["scored", "plain"])
    named = {t.name: t for t in figure.data}
    assert {"scored accuracy", "scored f1"} <= set(named) and not any(n.startswith("plain acc") for n in named)
    assert named["scored accuracy"].line.color == named["scored train"].line.color  # the run's colour
    assert named["scored accuracy"].xaxis == "x3" and figure.layout.yaxis3.tickformat == ".0%"
    assert list(named["scored accuracy"].x) == [4, 8]
