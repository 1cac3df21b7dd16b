"""A custom training loss (`loss: file.py:function`) on the tiny model: used as written, and every way it can be
wrong answered in one sentence, before the run folder is made where the file can tell, else as the run's failure."""

from __future__ import annotations

import functools
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

import slmnb
from slmnb.config import FinetuneConfig, load_config
from slmnb.errors import ConfigError, RunError
from slmnb.training import events as ev
from slmnb.training.runs import Runs

VOCAB = 49152  # tiny-llama's (the embedded model's tokenizer)
EPS = 0.1

LOSSES = '''
import torch.nn.functional as F

EPS = 0.1


def cross_entropy(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def smooth(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), label_smoothing=EPS)


def uniform(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), label_smoothing=1.0)


class Smooth:
    pass
'''


def losses(run) -> list[float]:
    return [e.loss for e in run.history if isinstance(e, ev.Step)]


def eval_losses(run) -> list[float]:
    return [e.eval_loss for e in run.history if isinstance(e, ev.Eval)]


@pytest.fixture
def quick(tiny: dict) -> dict:
    return {**tiny, "eval_generate_samples": 0}  # the loss is under test here, not the generated answers


@pytest.fixture
def loss_file(workdir: Path) -> Path:
    path = workdir / "losses.py"
    path.write_text(LOSSES, encoding="utf-8")
    return path


def test_a_cross_entropy_loss_trains_exactly_as_the_model_s_own_loss(workdir, quick, loss_file) -> None:
    """The logits are lined up with the labels and each micro-batch weighted by its labelled tokens: with answers of
    different lengths accumulated over two micro-batches, the model's own loss and the same loss written by hand
    give the same run."""
    rows = [{"phrase": f"sample phrase number {i}", "tone": "Joy" if i % 3 else "Fear of the dark night"}
            for i in range(48)]
    fields = {**quick, "rows": rows, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
              "max_steps": 6}
    runs = Runs()
    own = runs.start(fields, name="own").wait()
    written = runs.start(fields, name="written", loss="losses.py:cross_entropy").wait()
    assert written.config.loss == "losses.py:cross_entropy"
    assert len(losses(own)) == 6
    assert losses(written) == pytest.approx(losses(own), rel=1e-4)
    assert eval_losses(written) == pytest.approx(eval_losses(own), rel=1e-4)


def test_label_smoothing_is_the_loss_trained_on(workdir, quick, loss_file) -> None:
    """Label smoothing mixes two losses: (1 - eps) x cross-entropy + eps x the cross-entropy against a uniform
    target (eps = 1). At learning rate 0 the three runs see the same weights, data and dropout at every step, so each
    step's smoothed loss is exactly that mix of the other two runs' losses, and their eval losses are equal: the eval
    loss stays the model's cross-entropy, whatever loss trains."""
    fields = {**quick, "learning_rate": 0.0, "max_steps": 3, "eval_steps": 3}
    runs = Runs()
    plain_run = runs.start(fields, name="plain").wait()
    smoothed_run = runs.start(fields, name="smoothed", loss="losses.py:smooth").wait()
    uniform_run = runs.start(fields, name="uniform", loss="losses.py:uniform").wait()
    plain, smoothed, uniform = losses(plain_run), losses(smoothed_run), losses(uniform_run)
    assert len(plain) == 3 and smoothed != pytest.approx(plain, rel=1e-3)
    assert smoothed == pytest.approx([(1 - EPS) * p + EPS * u for p, u in zip(plain, uniform, strict=True)],
                                     rel=1e-5)
    assert min(uniform) >= math.log(VOCAB)  # Jensen: no prediction is closer to a uniform target than uniform
    assert len(eval_losses(plain_run)) == 1
    assert eval_losses(smoothed_run) == eval_losses(uniform_run) == pytest.approx(eval_losses(plain_run))
    assert load_config(workdir / "runs" / "smoothed" / "config.yaml").loss == "losses.py:smooth"


COUNTED = '''
import torch.nn.functional as F

with open("imports.log", "a") as log:
    log.write("imported\\n")


def counted(logits, labels):
    with open("calls.log", "a") as log:
        log.write("call\\n")
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


other = counted
'''


def test_a_resumed_run_imports_its_loss_again_and_trains_with_it(workdir, quick) -> None:
    (workdir / "counted.py").write_text(COUNTED, encoding="utf-8")
    runs = Runs()
    run = runs.start(quick, name="resumed", loss="counted.py:counted", max_steps=2, eval_steps=1).wait()
    # Imported once for the run; called once per training batch and never by evaluation (its loss is the model's).
    assert (workdir / "imports.log").read_text().split() == ["imported"]
    assert (workdir / "calls.log").read_text().split() == ["call"] * 2
    with pytest.raises(RunError, match="^loss cannot change when resuming run 'resumed'"):
        runs.resume("resumed", max_steps=4, loss="counted.py:other")
    assert runs.resume("resumed", max_steps=4).wait() is run and run.config.loss == "counted.py:counted"
    assert (workdir / "imports.log").read_text().split() == ["imported"] * 2
    assert (workdir / "calls.log").read_text().split() == ["call"] * 4
    assert len(losses(run)) == 4 and run.status == "finished"


@pytest.mark.parametrize(("loss", "message"), [
    ("losses.py", "loss 'losses.py' names no function: write it as path/to/file.py:function_name."),
    ("losses.txt:smooth", "loss file 'losses.txt' is not a .py file: write loss as path/to/file.py:function_name."),
    ("losses.py:2x", "loss function '2x' is not a Python name: write loss as path/to/file.py:function_name."),
    ("missing.py:smooth", "loss file 'missing.py' does not exist (looked in {cwd}): check the path."),
    ("losses.py:smoth", "loss file 'losses.py' defines no function smoth (did you mean smooth?): use one of "
                        "cross_entropy, smooth, uniform."),
    ("losses.py:EPS", "loss 'losses.py:EPS' is a value, not a function: point loss at a function "
                      "loss(logits, labels) defined with def."),
    ("losses.py:Smooth", "loss 'losses.py:Smooth' is a class, not a function: point loss at a function "
                         "loss(logits, labels) defined with def."),
    ("broken.py:smooth", "loss file 'broken.py' is not valid Python (expected ':' at line 1): fix it."),
    ("runs.py:smooth", "loss file 'runs.py' is a folder: give the .py file inside it, as "
                       "path/to/file.py:function_name."),
])
def test_a_loss_that_cannot_be_used_is_one_sentence_before_the_run_folder(workdir, quick, loss_file, loss,
                                                                          message) -> None:
    (workdir / "broken.py").write_text("def smooth(logits, labels) return 0\n", encoding="utf-8")
    (workdir / "runs.py").mkdir()
    with pytest.raises(ConfigError) as raised:
        slmnb.finetune(quick, name="refused", loss=loss)
    assert str(raised.value) == message.format(cwd=workdir)
    assert not (workdir / "runs").is_dir()


FAILING = {
    "raises": ("def f(logits, labels):\n    raise ValueError('boom')\n",
               "The loss function failing.py:f raised ValueError at line 2 (boom) on the first batch: fix it, or "
               "leave loss empty for the model's own cross-entropy."),
    "not a scalar": ("import torch.nn.functional as F\n\ndef f(logits, labels):\n"
                     "    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction='none')\n",
                     "The loss function failing.py:f returned a tensor of shape ({shape},) on the first batch, not a "
                     "scalar tensor: reduce it to one number, such as the mean over the labelled positions."),
    "a float": ("def f(logits, labels):\n    return 0.5\n",
                "The loss function failing.py:f returned float 0.5 on the first batch, not a scalar tensor: reduce "
                "it to one number, such as the mean over the labelled positions."),
    "not finite": ("def f(logits, labels):\n    return (logits * 0).sum() / 0\n",
                   "The loss function failing.py:f returned nan on the first batch, before any training: check it "
                   "against labels of -100, which mark positions without loss."),
    "no gradient": ("import torch\n\ndef f(logits, labels):\n    return torch.tensor(1.0)\n",
                    "The loss function failing.py:f returned a tensor without a gradient on the first batch: "
                    "compute it from logits with torch operations, not through .item() or a new tensor."),
    "import fails": ("import no_such_module_for_slmnb\n\ndef f(logits, labels):\n    return logits.sum()\n",
                     "loss file 'failing.py' raised ModuleNotFoundError at line 1 (No module named "
                     "'no_such_module_for_slmnb') while it was imported: fix it, or leave loss empty for the "
                     "model's own cross-entropy."),
}


@pytest.mark.parametrize("case", list(FAILING))
def test_a_loss_that_fails_on_the_first_batch_fails_the_run_with_one_sentence(workdir, quick, case) -> None:
    source, message = FAILING[case]
    (workdir / "failing.py").write_text(source, encoding="utf-8")
    run = slmnb.finetune(quick, name="failing", loss="failing.py:f", max_steps=2)
    with pytest.raises(ConfigError) as raised:
        run.wait()
    reason = run.history[-1].reason
    assert run.status == "failed" and isinstance(run.history[-1], ev.Failed)
    # Not-a-scalar names the shape: one loss per position of the batch's labelled tail (8 rows).
    shape = message.partition("shape (")[2].partition(",)")[0]
    if shape:
        assert reason.startswith(message.partition("shape (")[0]) and reason.endswith(message.partition(",)")[2])
        assert int(reason.partition("shape (")[2].partition(",")[0]) % 8 == 0
    else:
        assert reason == message
    assert str(raised.value) == reason and "\n" not in reason
    assert not [e for e in run.history if isinstance(e, ev.Step)]


def test_the_python_api_takes_a_function_and_the_config_names_its_file(workdir, quick, loss_file) -> None:
    spec = importlib.util.spec_from_file_location("user_losses", loss_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["user_losses"] = module
    try:
        spec.loader.exec_module(module)
        config = load_config(quick, loss=module.smooth)
        run = slmnb.finetune(quick, name="api", loss=module.smooth, max_steps=1).wait()
    finally:
        del sys.modules["user_losses"]
    assert config.loss == f"{loss_file}:smooth"
    assert FinetuneConfig.from_text(config.to_yaml()) == config
    assert load_config(run.dir / "config.yaml").loss == f"{loss_file}:smooth"  # what a resume reads
    assert run.status == "finished" and len(losses(run)) == 1


def test_a_function_no_file_defines_is_refused_with_one_sentence(workdir, quick) -> None:
    with pytest.raises(ConfigError, match="^loss cannot be a lambda, since the run's config.yaml must name it"):
        slmnb.finetune(quick, loss=lambda logits, labels: logits.sum())
    in_a_cell: dict = {"__name__": "__main__"}
    exec("def smooth(logits, labels):\n    return logits.sum()\n", in_a_cell)  # as a notebook cell defines it
    with pytest.raises(ConfigError) as raised:
        slmnb.finetune(quick, loss=in_a_cell["smooth"])
    assert str(raised.value) == (
        "loss function smooth is not defined at the top level of a .py file (a function from a notebook cell is "
        "not), and the run's config.yaml must name it for a resume: move it into a .py file and give "
        "loss='path/to/file.py:smooth'.")

    def nested(logits, labels):
        return logits.sum()

    with pytest.raises(ConfigError, match="^loss function nested is not defined at the top level"):
        slmnb.finetune(quick, loss=nested)
    with pytest.raises(ConfigError, match="^loss must be 'path/to/file.py:function_name' or a function, not "
                                          "partial: define the loss with def in a .py file.$"):
        FinetuneConfig(loss=functools.partial(nested, labels=None))  # type: ignore[arg-type]
    assert not (workdir / "runs").exists()


def test_checking_a_loss_imports_no_torch(loss_file) -> None:
    code = ("import sys, slmnb\nfrom slmnb.config import FinetuneConfig\nfrom slmnb.training.loss import check\n"
            f"config = FinetuneConfig(loss={str(loss_file) + ':smooth'!r})\ncheck(config.loss)\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
