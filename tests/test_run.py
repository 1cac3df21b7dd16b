from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

import slmnb
from slmnb.config import load_config
from slmnb.errors import ConfigError, RunError
from slmnb.training import events as ev
from slmnb.training.runs import Runs


def steps_of(run) -> list[ev.Step]:
    return [e for e in run.history if isinstance(e, ev.Step)]


def test_finetune_returns_at_once_and_loss_falls(workdir, tiny) -> None:
    start = time.perf_counter()
    run = slmnb.finetune(tiny, name="learn", learning_rate=3e-2)
    assert time.perf_counter() - start < 5 and run.alive
    run.wait()
    losses = [e.loss for e in steps_of(run)]
    assert len(losses) == 16
    assert sum(losses[-3:]) / 3 < 0.75 * losses[0]
    assert run.status == "finished"


def test_events_come_in_order(workdir, tiny) -> None:
    seen: list[ev.Event] = []
    run = slmnb.finetune(tiny, name="order", listeners=[seen.append]).wait()
    assert seen == run.history
    kinds = [type(e) for e in seen]
    assert kinds[0] is ev.Started and kinds[-1] is ev.Finished
    assert seen[0].max_steps == 16 and seen[0].precision == "fp32"
    assert [e.step for e in steps_of(run)] == list(range(1, 17))
    assert [e.step for e in seen if isinstance(e, ev.Eval)] == [4, 8, 12, 16]
    assert [e.step for e in seen] == sorted(e.step for e in seen)
    for event in seen:
        if isinstance(event, ev.Eval):
            assert event.perplexity == pytest.approx(2.718281828 ** event.eval_loss, rel=1e-6)
    step = steps_of(run)[3]
    assert step.tokens_per_second > 0 and step.grad_norm is not None and step.learning_rate > 0 and step.epoch > 0


def test_the_run_folder(workdir, tiny) -> None:
    run = slmnb.finetune(tiny, name="folder").wait()
    folder = workdir / "runs" / "folder"
    assert run.dir == Path("runs/folder")
    assert load_config(folder / "config.yaml") == run.config
    assert run.config.target_modules == "all-linear"  # what empty means, written down in the run
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == list(range(1, 17))
    assert [r["step"] for r in lines if "eval_loss" in r] == [4, 8, 12, 16]
    adapter = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "tiny-llama" and adapter["r"] == 8
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()
    state = json.loads((folder / "run.json").read_text())
    assert (state["status"], state["step"], state["max_steps"]) == ("finished", 16, 16)
    assert state["loss"] > 0 and state["perplexity"] > 1  # what the lab's runs panel and status bar show
    assert (folder / "checkpoints").is_dir()
    assert not [p for p in folder.rglob("*") if ".tmp-" in p.name]


def test_a_run_folder_is_never_overwritten(workdir, tiny) -> None:
    slmnb.finetune(tiny, name="once", max_steps=2).wait()
    with pytest.raises(RunError, match="exists already: choose another name, or resume that run"):
        slmnb.finetune(tiny, name="once")


def test_unnamed_runs_get_a_name_from_data_method_and_time(workdir, tiny) -> None:
    run = slmnb.finetune(tiny, max_steps=1).wait()
    assert run.name.startswith("rows-lora-") and run.dir == Path("runs") / run.name


def test_stop_leaves_a_checkpoint_and_resume_continues_the_count(workdir, tiny) -> None:
    def stop_at_5(event: ev.Event) -> None:
        if isinstance(event, ev.Step) and event.step == 5:
            run.stop()

    run = slmnb.finetune(tiny, name="resumable", eval_steps=100, save_steps=100, listeners=[stop_at_5])
    run.wait()
    assert run.status == "stopped" and isinstance(run.history[-1], ev.Stopped)
    stopped_at = run.history[-1].step
    assert stopped_at in (5, 6)
    assert (run.dir / "checkpoints" / f"checkpoint-{stopped_at}").is_dir()
    assert (run.dir / "adapter" / "adapter_model.safetensors").is_file()

    again = slmnb.finetune(name="resumable", resume=True)
    assert again is run  # the same object, so listeners and dashboards carry on
    again.wait()
    started = [e for e in run.history if isinstance(e, ev.Started)]
    assert started[-1].step == stopped_at
    assert [e.step for e in steps_of(run)] == list(range(1, 17))
    lines = [json.loads(x) for x in (run.dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == list(range(1, 17))
    assert run.status == "finished" and run.step == 16


def test_resume_after_a_crash_drops_the_steps_trained_again(workdir, tiny) -> None:
    run = slmnb.finetune(tiny, name="crashed", save_steps=4).wait()
    folder = run.dir
    # Simulate a crash at step 10 with the last checkpoint at 8: later checkpoints gone, state still running.
    for ckpt in (folder / "checkpoints").glob("checkpoint-*"):
        if int(ckpt.name.split("-")[1]) > 8:
            import shutil

            shutil.rmtree(ckpt)
    kept = [line for line in (folder / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 10]
    (folder / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    state = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**state, "status": "running", "pid": 999999999}))
    loaded = Runs("runs").open("crashed")  # as another kernel would: from the folder only
    assert loaded.status == "interrupted" and loaded.step == 10
    loaded.resume().wait()
    steps = [json.loads(x)["step"] for x in (folder / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == list(range(1, 17))


def test_pause_holds_the_thread_and_resume_continues(workdir, tiny) -> None:
    paused = threading.Event()

    def pause_at_3(event: ev.Event) -> None:
        if isinstance(event, ev.Step) and event.step == 3:
            run.pause()
        if isinstance(event, ev.Paused):
            paused.set()

    run = slmnb.finetune(tiny, name="pausing", listeners=[pause_at_3])
    assert paused.wait(60)
    held = run.step
    time.sleep(1.0)
    assert run.status == "paused" and run.step == held and run.alive
    run.resume()
    run.wait()
    kinds = [type(e) for e in run.history]
    assert kinds.index(ev.Paused) < kinds.index(ev.Resumed) and run.status == "finished"
    assert [e.step for e in steps_of(run)] == list(range(1, 17))


def test_stop_while_paused(workdir, tiny) -> None:
    run = slmnb.finetune(tiny, name="paused-stop", listeners=[lambda e: isinstance(e, ev.Step) and run.pause()])
    while run.status != "paused":
        time.sleep(0.05)
    run.stop()
    run.wait()
    assert run.status == "stopped" and run.step < 16


def test_another_process_stops_a_run_through_its_folder(workdir, tiny) -> None:
    """What the JupyterLab runs panel does while a cell blocks the kernel: it leaves stop-requested in the folder."""
    run = slmnb.finetune(tiny, name="noted", max_steps=100000, eval_steps=100000, save_steps=100000)
    while run.step < 3:
        time.sleep(0.05)
    (run.dir / "stop-requested").write_text("from JupyterLab")
    run.wait()
    assert run.status == "stopped" and run.step < 100000
    assert json.loads((run.dir / "run.json").read_text())["status"] == "stopped"
    assert not (run.dir / "stop-requested").exists()  # used up: a resumed run trains on

    (run.dir / "stop-requested").write_text("left over")
    paused = slmnb.finetune(name="noted", resume=True, listeners=[lambda e: isinstance(e, ev.Step) and run.pause()])
    assert not (run.dir / "stop-requested").exists()  # a request older than this session is dropped
    while paused.status != "paused":
        time.sleep(0.05)
    held = paused.step
    (run.dir / "stop-requested").write_text("from JupyterLab")
    paused.wait()
    assert paused.status == "stopped" and paused.step <= held + 1  # the held step completes, as with stop()


def test_one_active_run_per_process(workdir, tiny) -> None:
    first = slmnb.finetune(tiny, name="first", max_steps=200)
    try:
        with pytest.raises(RunError, match="Run 'first' is still training"):
            slmnb.finetune(tiny, name="second")
        assert slmnb.active_run() is first
    finally:
        first.stop()
        first.wait()
    assert slmnb.active_run() is None


def test_target_modules_are_checked_against_the_model_before_any_folder(workdir, tiny) -> None:
    with pytest.raises(ConfigError, match=r"target_modules vv_proj matches no layer of this model: use some of .*q_pr"):
        slmnb.finetune(tiny, name="typo", target_modules="q_proj,vv_proj")
    with pytest.raises(ConfigError, match=r"lora_r 100 is larger than the layers it adapts \(32 wide\)"):
        slmnb.finetune(tiny, name="wide", lora_r=100)
    assert not (workdir / "runs").exists()


def test_layers_to_transform_adapts_those_layers_only_and_is_checked_against_the_model(workdir, tiny) -> None:
    from safetensors import safe_open

    with pytest.raises(ConfigError, match=r"layers_to_transform 1-9 names layer 2, and tiny-llama has layers 0-1: "
                                          r"pick layers it has, or leave it empty"):
        slmnb.finetune(tiny, name="deep", layers_to_transform="1-9")
    assert not (workdir / "runs").exists()
    for method in ("lora", "qlora"):
        run = slmnb.finetune(tiny, name=f"top-{method}", method=method, layers_to_transform=[1],
                             learning_rate=1e-2).wait()
        assert run.config.layers_to_transform == "1"
        with safe_open(str(run.output_path / "adapter_model.safetensors"), "pt") as weights:
            names = list(weights.keys())
        # Every linear layer of the blocks (all-linear), in layer 1 only.
        assert names and all(".layers.1." in name for name in names)
        assert {name.split(".")[-3] for name in names} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"}
        losses = [e.loss for e in steps_of(run)]
        assert losses[-1] < losses[0]


def test_a_failure_becomes_an_event_and_wait_raises_it(workdir, tiny) -> None:
    from slmnb.models import model_folder

    broken = workdir / "broken-model"
    shutil.copytree(model_folder("tiny-llama"), broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    weights.write_bytes(data[: header + 100])  # the header is whole, the tensors cut short: found only on loading
    run = slmnb.finetune(tiny, name="broken", model_name_or_path=str(broken))
    with pytest.raises(RunError) as raised:
        run.wait()
    assert run.status == "failed" and isinstance(run.history[-1], ev.Failed)
    reason = run.history[-1].reason
    assert str(raised.value) == reason and "error.log" in reason and "\n" not in reason
    state = json.loads((run.dir / "run.json").read_text())
    assert state["status"] == "failed" and state["reason"] == reason
    assert "Traceback" in (run.dir / "error.log").read_text()


def test_training_args_reach_the_trainer_and_mistakes_are_one_sentence_before_any_folder(workdir, tiny) -> None:
    import torch

    run = slmnb.finetune(tiny, name="args", max_steps=2, training_args={"adam_beta2": "0.95", "max_grad_norm": 0.5})
    run.wait()
    assert load_config(run.dir / "config.yaml").training_args == {"adam_beta2": "0.95", "max_grad_norm": 0.5}
    checkpoint = sorted((run.dir / "checkpoints").glob("checkpoint-*"))[-1]
    used = torch.load(checkpoint / "training_args.bin", weights_only=False)  # what the Trainer trained with
    assert (used.adam_beta2, used.max_grad_norm) == (0.95, 0.5)
    for extra, message in [({"max_grad_norn": 1}, "not a transformers TrainingArguments argument \\(did you mean "
                             "max_grad_norm\\?\\)"),
                           ({"learning_rate": 1}, "which is a config field of its own: set learning_rate instead"),
                           ({"report_to": "wandb"}, "cannot set report_to: the dashboard"),
                           ({"max_grad_norm": "big"}, "max_grad_norm must be float, got 'big'"),
                           ({"optim": "adamw_nope"}, "refused by transformers \\(adamw_nope is not a valid")]:
        with pytest.raises(ConfigError, match=message):
            slmnb.finetune(tiny, name="refused", training_args=extra)
    assert not (workdir / "runs" / "refused").exists()


def test_data_mistakes_raise_before_any_thread(workdir, tiny) -> None:
    with pytest.raises(ConfigError, match="which is not a column"):
        slmnb.finetune(tiny, prompt_template="{text}")
    assert not (workdir / "runs").exists()


def test_resume_of_nothing(workdir) -> None:
    with pytest.raises(RunError, match="No run called 'ghost'"):
        slmnb.finetune(name="ghost", resume=True)
    with pytest.raises(RunError, match="is not a run name"):
        slmnb.finetune(name="ghost\n", resume=True)


def test_load_run_and_predict(workdir, tiny) -> None:
    slmnb.finetune(tiny, name="done", learning_rate=3e-2, max_steps=24).wait()
    run = Runs("runs").open("done")
    assert run.status == "finished" and run.step == 24
    assert [e.step for e in steps_of(run)] == list(range(1, 25))
    tuned = run.predict([{"phrase": "sample phrase number 99"}, "another phrase"], max_new_tokens=3)
    base = run.predict([{"phrase": "sample phrase number 99"}, "another phrase"], max_new_tokens=3, adapter=False)
    assert len(tuned) == 2 and all(isinstance(a, str) for a in tuned)
    assert tuned != base
    with pytest.raises(RunError, match="No run called 'nope'"):
        slmnb.load_run("nope")
    with pytest.raises(RunError, match="is not a run folder"):
        slmnb.load_run("../../x")


def test_predict_before_there_are_weights(workdir, tiny) -> None:
    run = slmnb.finetune(tiny, name="early", max_steps=200)
    try:
        with pytest.raises(RunError, match="has no saved weights yet"):
            run.predict(["x"])
    finally:
        run.stop()
        run.wait()


@pytest.mark.parametrize("method", ["full", "qlora"])
def test_full_and_qlora_train(workdir, tiny, method: str) -> None:
    run = slmnb.finetune(tiny, name=method, method=method, learning_rate=1e-2).wait()
    losses = [e.loss for e in steps_of(run)]
    assert losses[-1] < losses[0]
    assert (run.output_path / ("config.json" if method == "full" else "adapter_config.json")).is_file()
    assert run.output_path.name == ("model" if method == "full" else "adapter")


def test_early_stopping_ends_the_run_when_eval_loss_stops_improving(workdir, tiny) -> None:
    # Held-out rows answer Sad while training teaches Joy: their loss climbs as the model learns.
    rows = tiny["rows"][:40] + [{"phrase": f"another phrase {i}", "tone": "Sad"} for i in range(8)]
    run = slmnb.finetune(tiny, name="early-stop", rows=rows, train_split="train[:40]", eval_split="train[40:]",
                         learning_rate=3e-2, max_steps=40, eval_steps=2, early_stopping_patience=2).wait()
    finished = run.history[-1]
    assert isinstance(finished, ev.Finished) and finished.reason == "early stopping"
    assert run.step < 40
    evals = [e.eval_loss for e in run.history if isinstance(e, ev.Eval)]
    assert min(evals[-2:]) >= min(evals)


def test_resuming_a_run_that_still_trains_is_refused(workdir, tiny) -> None:
    run = slmnb.finetune(tiny, name="busy", max_steps=200)
    try:
        with pytest.raises(RunError, match="'busy' is training already"):
            slmnb.finetune(name="busy", resume=True)
    finally:
        run.stop()
        run.wait()


# --- generation-eval while training (issue 15) -----------------------------------------------------------------


def two_tones(tiny: dict) -> list[dict]:
    return [{"phrase": row["phrase"], "tone": "Joy" if i % 2 else "Sad"} for i, row in enumerate(tiny["rows"])]


def test_each_evaluation_scores_generated_answers_into_events_and_run_files(workdir, tiny) -> None:
    run = slmnb.finetune(tiny, name="scored", rows=two_tones(tiny), max_steps=8).wait()
    started = run.history[0]
    assert isinstance(started, ev.Started) and started.metrics == ("accuracy", "f1")
    assert "metrics: accuracy, f1 (the responses take 2 distinct values)" in started.notes
    config = load_config(run.dir / "config.yaml")  # settled when the run started, as target_modules is
    assert config.metrics == ["accuracy", "f1"] and config.eval_generate_samples == 16 and config == run.config
    evals = [e for e in run.history if isinstance(e, ev.Eval)]
    assert [e.step for e in evals] == [4, 8]
    for event in evals:
        assert set(event.metrics) == {"accuracy", "f1"} and all(0 <= v <= 1 for v in event.metrics.values())
    lines = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["metrics"] for line in lines if line["event"] == "eval"] == [e.metrics for e in evals]
    state = json.loads((run.dir / "run.json").read_text())
    assert state["metrics"]["last"] == evals[-1].metrics
    assert state["metrics"]["best"] == {k: max(e.metrics[k] for e in evals) for k in ("accuracy", "f1")}
    # A run read back from its folder has the same scores, and counts the tokens it trained on.
    again = Runs("runs").open(run.dir)
    assert [e.metrics for e in again.history if isinstance(e, ev.Eval)] == [e.metrics for e in evals]
    seen = [e.tokens_seen for e in steps_of(run)]
    assert seen[0] > 0 and seen == sorted(seen) and len(set(seen)) == len(seen)


def test_early_stopping_on_a_generation_metric(workdir, tiny) -> None:
    # Training teaches Joy and the held-out rows answer Sad: accuracy stays 0, so it never improves after the
    # first evaluation, and patience 2 must end the run at the third.
    rows = tiny["rows"][:40] + [{"phrase": f"another phrase {i}", "tone": "Sad"} for i in range(8)]
    run = slmnb.finetune(tiny, name="early-metric", rows=rows, train_split="train[:40]", eval_split="train[40:]",
                         learning_rate=3e-2, max_steps=40, eval_steps=2, early_stopping_patience=2,
                         metrics=["accuracy"], metric_for_best_model="accuracy").wait()
    finished = run.history[-1]
    assert isinstance(finished, ev.Finished) and finished.reason == "early stopping"
    evals = [e for e in run.history if isinstance(e, ev.Eval)]
    assert [e.step for e in evals] == [2, 4, 6] and run.step == 6
    assert all(e.metrics == {"accuracy": 0.0} for e in evals)


def test_generation_eval_off_adds_no_metrics(workdir, tiny) -> None:
    run = slmnb.finetune(tiny, name="no-generation", max_steps=4, eval_steps=2, eval_generate_samples=0).wait()
    started = run.history[0]
    assert isinstance(started, ev.Started) and started.metrics == ()
    assert all(e.metrics == {} for e in run.history if isinstance(e, ev.Eval))
    assert "metrics" not in json.loads((run.dir / "run.json").read_text())
    assert run.config.metrics == ["accuracy", "f1"]  # still chosen: run.evaluate() uses them after training


def test_generation_eval_on_bf16_weights(workdir, tiny) -> None:
    # bf16 LoRA keeps the frozen Linear weights in bf16 and the rest in fp32: generate() runs outside the
    # Trainer's autocast, so without its own it fails on the mixed dtypes.
    run = slmnb.finetune(tiny, name="bf16-generation", max_steps=2, eval_steps=2, precision="bf16").wait()
    evals = [e for e in run.history if isinstance(e, ev.Eval)]
    assert run.history[0].precision == "bf16" and set(evals[-1].metrics) == {"accuracy", "f1"}


LENGTH_RATIO = '''import datasets
import evaluate


class LengthRatio(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description="answer length over reference length", citation="",
                                   features=datasets.Features({"predictions": datasets.Value("string"),
                                                               "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        return {"length_ratio": sum(map(len, predictions)) / max(sum(map(len, references)), 1)}
'''


def test_a_users_metric_module_scores_live_and_a_best_metric_it_lacks_is_one_sentence(workdir, tiny) -> None:
    (workdir / "length_ratio.py").write_text(LENGTH_RATIO)
    run = slmnb.finetune(tiny, name="own-metric", max_steps=2, eval_steps=2, metrics="./length_ratio.py, Accuracy")
    run.wait()
    assert run.config.metrics == ["./length_ratio.py", "accuracy"]
    scores = [e.metrics for e in run.history if isinstance(e, ev.Eval)][-1]
    assert set(scores) == {"length_ratio", "accuracy"}
    # What a user's module computes is known once it has run: then a metric_for_best_model it lacks is refused at
    # once, and before that, at the run's first evaluation.
    with pytest.raises(ConfigError, match="'ratio' is not a score of this run's metrics: use one of eval_loss, "
                                          "perplexity, length_ratio."):
        slmnb.finetune(tiny, name="own-metric-best", metrics=["./length_ratio.py"], metric_for_best_model="ratio")
    (workdir / "never_run.py").write_text(LENGTH_RATIO)
    failing = slmnb.finetune(tiny, name="own-metric-best", max_steps=4, eval_steps=2, early_stopping_patience=1,
                             metrics=["./never_run.py"], metric_for_best_model="ratio")
    with pytest.raises(ConfigError, match=r"^metric_for_best_model ratio is not a score this run computes \(loss, "
                                          r"perplexity, length_ratio\): set it to one of those\.$"):
        failing.wait()
