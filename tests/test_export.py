"""ONNX export on the tiny model: logits against PyTorch, the adapter file, reuse, bad input, compare, magics."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import slmnb
from slmnb.errors import ConfigError, ExportError, RunError

PROMPT = "The quick brown fox jumps over the lazy dog, and then"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny all-linear LoRA run on tones, exported as fp32 and as int4 (the default), in one folder.

    It trains on the original weights, so its fp32 export is exactly the PyTorch model (tests/test_int4_fidelity.py
    checks a run on the int4 base against its int4 export)."""
    folder = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        run = slmnb.finetune(model_name_or_path="tiny-llama", data_name="tones", name="tuned", max_steps=8,
                             target_modules="all-linear", learning_rate=5e-3, per_device_train_batch_size=8,
                             precision="fp32", eval_steps=8, base_weights="original").wait()
        fp32 = slmnb.export(run, precision="fp32")
        int4 = slmnb.export(run)
        yield {"folder": folder, "run": run, "fp32": fp32, "int4": int4}


@pytest.fixture
def inside(exported: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.chdir(exported["folder"])
    return exported


def onnx_logits(export_folder: Path, ids: list[int], adapter: dict | None = None) -> np.ndarray:
    """Logits of one forward pass through the exported graph, with the adapter's weights fed as inputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the LoRA inputs with defaults draw a warning per input
    session = ort.InferenceSession(str(export_folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    decoder = json.loads((export_folder / "genai_config.json").read_text())["model"]["decoder"]
    feeds = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
    empty = np.zeros((1, decoder["num_key_value_heads"], 0, decoder["head_size"]), dtype=np.float32)
    for item in session.get_inputs():
        if item.name.startswith("past_key_values"):
            feeds[item.name] = empty
    return session.run(["logits"], {**feeds, **(adapter or {})})[0][0]


def torch_logits(run, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch logits of the base model and of the fine-tune."""
    import torch
    from peft import PeftModel

    from slmnb.models import load_model

    model = PeftModel.from_pretrained(load_model("tiny-llama"), run.output_path).eval()
    with torch.no_grad():
        tuned = model(input_ids=torch.tensor([ids])).logits[0].numpy()
        with model.disable_adapter():
            base = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    return base, tuned


def prompt_ids() -> list[int]:
    from slmnb.models import load_tokenizer

    return load_tokenizer("tiny-llama")(PROMPT)["input_ids"]


def test_fp32_logits_match_pytorch_without_and_with_the_adapter(inside) -> None:
    from slmnb.opt.adapters import read_adapter

    ids = prompt_ids()
    base, tuned = torch_logits(inside["run"], ids)
    assert np.abs(tuned - base).max() > 0.05  # the adapter matters, so matching both means something
    ex = inside["fp32"]
    assert np.abs(onnx_logits(ex.folder, ids) - base).max() < 1e-4
    assert np.abs(onnx_logits(ex.folder, ids, read_adapter(ex.adapter)) - tuned).max() < 1e-4


def test_int4_logits_follow_pytorch_and_the_adapter_still_steers(inside) -> None:
    """int4 is lossy, and most on a random model: measured here, logits correlate 0.90 with PyTorch's and the
    adapter's change to them 0.82. The bounds below leave room for that and fail on a broken graph or adapter
    (a wrong transpose or scale drops the adapter correlation near 0). Greedy agreement of int4 answers with
    PyTorch's is checked on the embedded model, where it means something (tests/test_quality.py)."""
    from slmnb.opt.adapters import read_adapter

    ids = prompt_ids()
    base, tuned = torch_logits(inside["run"], ids)
    ex = inside["int4"]
    got_base = onnx_logits(ex.folder, ids)
    got_tuned = onnx_logits(ex.folder, ids, read_adapter(ex.adapter))
    for got, reference in ((got_base, base), (got_tuned, tuned)):
        assert np.corrcoef(got.ravel(), reference.ravel())[0, 1] > 0.8
    steer = np.corrcoef((got_tuned - got_base).ravel(), (tuned - base).ravel())[0, 1]
    assert steer > 0.6


def test_the_adapter_file_holds_the_runs_lora_transposed_and_scaled(inside) -> None:
    from safetensors.torch import load_file

    from slmnb.opt.adapters import read_adapter

    ex = inside["fp32"]
    weights = read_adapter(ex.adapter)
    peft = load_file(str(inside["run"].output_path / "adapter_model.safetensors"))
    a = peft["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].numpy()
    b = peft["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"].numpy()
    scale = inside["run"].config.lora_alpha / inside["run"].config.lora_r
    np.testing.assert_array_equal(weights["model.layers.1.mlp.down_proj.lora_A.MatMul.weight"], a.T)
    np.testing.assert_allclose(weights["model.layers.1.mlp.down_proj.lora_B.MatMul.weight"], b.T * scale, rtol=1e-6)
    assert len(weights) == 2 * 7 * 2  # A and B, seven projections, two layers
    meta = json.loads(ex.adapter.with_suffix(".json").read_text())
    assert meta["run"] == "tuned" and meta["rank"] == 8


def test_export_predict_matches_pytorch_predict(inside) -> None:
    rows = [{"phrase": "My dog ran away this morning."}, {"phrase": "We won the lottery!"}]
    run, ex = inside["run"], inside["fp32"]
    assert ex.predict(rows, max_new_tokens=5) == run.predict(rows, max_new_tokens=5)
    assert ex.predict(rows, max_new_tokens=5, adapter=False) == run.predict(rows, max_new_tokens=5, adapter=False)
    pieces = list(slmnb.generate(ex, "I lost my keys", max_new_tokens=4))
    assert len(pieces) == 4 and "".join(pieces).strip() == ex.predict(["I lost my keys"], max_new_tokens=4)[0]


def test_export_evaluate_scores_as_run_evaluate_does(inside) -> None:
    """fp32 ONNX is the PyTorch model (logits within 1e-4 above), so on the same rows it gives the same answers and
    so exactly the same scores (tolerance 0); the base model too. Perplexity is PyTorch's only."""
    run, ex = inside["run"], inside["fp32"]
    asked = {"split": "test[:12]", "metrics": ["accuracy", "f1", "perplexity"], "max_new_tokens": 4}
    for adapter in (True, False):
        onnx, pytorch = ex.evaluate(**asked, adapter=adapter), run.evaluate(**asked, adapter=adapter)
        assert onnx.predictions == pytorch.predictions and len(onnx.predictions) == 12
        assert onnx.references == pytorch.references and onnx.per_row == pytorch.per_row
        assert onnx.scores == {k: v for k, v in pytorch.scores.items() if k != "perplexity"}
        assert set(onnx.scores) == {"accuracy", "f1"} and "perplexity" in pytorch.scores
        assert onnx.prompt_tokens == pytorch.prompt_tokens and onnx.seconds > 0
        assert onnx.model == ("ONNX fp32 + adapter" if adapter else "ONNX fp32 base model")
    shots = ex.evaluate(split="test[:4]", metrics="exact_match", adapter=False, max_new_tokens=2,
                        examples=run_rows(run)[:2], progress=False)
    assert shots.model == "ONNX fp32 base, 2-shot" and list(shots.scores) == ["exact_match"]
    assert shots.prompt_tokens > onnx.prompt_tokens  # the two solved examples ride along in every prompt


def run_rows(run) -> list[dict]:
    from slmnb.datafiles import read_splits

    return list(read_splits(run.config)["train"])


def test_export_evaluate_mistakes_are_one_sentence(inside) -> None:
    from slmnb.errors import ConfigError
    from slmnb.opt.export import Export

    ex = inside["fp32"]
    for options, problem in [({"split": "dev"}, "names no split of the run's data: the splits are"),
                             ({"metrics": ["acuracy"]}, "acuracy"),
                             ({"max_new_tokens": 0}, "max_new_tokens must be a whole number of at least 1")]:
        with pytest.raises((ConfigError, ExportError), match=problem) as failure:
            ex.evaluate(**options)
        one_sentence(str(failure.value))
    with pytest.raises(ExportError, match="was exported without a run, so it has no data split") as failure:
        Export(ex.folder).evaluate()
    one_sentence(str(failure.value))
    with pytest.raises(ConfigError, match="Unknown metric 'acuracy' \\(did you mean accuracy\\?\\)") as failure:
        slmnb.compare("tuned", evaluate=True, metrics="accuracy,acuracy")  # before any export or generation
    one_sentence(str(failure.value))


def test_exporting_again_reuses_everything_and_a_second_run_only_adds_its_adapter(inside) -> None:
    ex = inside["fp32"]
    built = (ex.folder / "model.onnx").stat().st_mtime_ns
    adapter = ex.adapter.stat().st_mtime_ns
    again = slmnb.export("tuned", precision="fp32")
    assert again.folder == ex.folder and again.adapter.stat().st_mtime_ns == adapter
    other = slmnb.finetune(inside["run"].config.to_dict(), name="tuned-again", max_steps=2, seed=7).wait()
    second = slmnb.export(other, precision="fp32")
    assert second.folder == ex.folder and (ex.folder / "model.onnx").stat().st_mtime_ns == built
    assert second.adapter.name == "tuned-again.onnx_adapter"
    listed = {e.folder.name: [a["run"] for a in e.adapters] for e in slmnb.list_exports()}
    assert listed[ex.folder.name] == ["tuned", "tuned-again"]
    ids = prompt_ids()
    from slmnb.opt.adapters import read_adapter

    one, two = (onnx_logits(ex.folder, ids, read_adapter(p)) for p in (ex.adapter, second.adapter))
    assert np.abs(one - two).max() > 1e-3  # two adapters, two different models from one base


def test_a_run_of_some_layers_joins_the_every_layer_base_and_answers_as_in_pytorch(inside, tmp_path) -> None:
    """layers_to_transform: the adapter of layer 1 alone goes into the base the every-layer run built (no second
    build), the layers it leaves alone add nothing, and onnxruntime-genai answers as PyTorch does. Exported first,
    elsewhere, it builds that same every-layer base itself."""
    from slmnb.opt.adapters import read_adapter

    ex = inside["fp32"]
    built = (ex.folder / "model.onnx").stat().st_mtime_ns
    config = {**inside["run"].config.to_dict(), "layers_to_transform": "1"}
    top = slmnb.finetune(config, name="top-layer", max_steps=4).wait()
    assert top.status == "finished", top.reason
    joined = slmnb.export(top, precision="fp32")
    assert joined.folder == ex.folder and (ex.folder / "model.onnx").stat().st_mtime_ns == built
    weights = read_adapter(joined.adapter)
    # Every input of the base is set (onnxruntime wants one rank throughout): layer 0's to zeros.
    assert set(weights) == set(json.loads((ex.folder / "slmnb-export.json").read_text())["lora_inputs"])
    assert {name.split(".")[2] for name, array in weights.items() if np.any(array)} == {"1"}
    ids = prompt_ids()
    base, tuned = torch_logits(top, ids)
    assert np.abs(tuned - base).max() > 0.05
    assert np.abs(onnx_logits(ex.folder, ids, weights) - tuned).max() < 1e-4
    rows = [{"phrase": "My dog ran away this morning."}, {"phrase": "We won the lottery!"}]
    assert joined.predict(rows, max_new_tokens=5) == top.predict(rows, max_new_tokens=5)
    alone = slmnb.export(top, precision="fp32", output=tmp_path)
    assert alone.folder.name == ex.folder.name and not list(alone.folder.glob(".every-layer-adapter"))
    manifest = json.loads((alone.folder / "slmnb-export.json").read_text())
    assert manifest["lora_inputs"] == json.loads((ex.folder / "slmnb-export.json").read_text())["lora_inputs"]
    assert np.abs(onnx_logits(alone.folder, ids, weights) - tuned).max() < 1e-4


def test_an_adapter_of_fewer_projections_joins_a_base_given_as_output(inside) -> None:
    """A q_proj/v_proj run exported into the all-linear base's folder: its file sets every input of that base (zeros
    for the projections it leaves alone). onnxruntime wants one size for every input of the symbolic rank: leaving
    some at their empty default happened to work here, and failed with a shape mismatch for an adapter of one layer."""
    from slmnb.opt.adapters import read_adapter

    ex = inside["fp32"]
    config = {**inside["run"].config.to_dict(), "target_modules": ["q_proj", "v_proj"]}
    narrow = slmnb.finetune(config, name="q-and-v", max_steps=4).wait()
    assert narrow.status == "finished", narrow.reason
    joined = slmnb.export(narrow, precision="fp32", output=ex.folder)
    assert joined.folder == ex.folder
    weights = read_adapter(joined.adapter)
    assert set(weights) == set(json.loads((ex.folder / "slmnb-export.json").read_text())["lora_inputs"])
    assert {name.split(".")[4] for name, array in weights.items() if np.any(array)} == {"q_proj", "v_proj"}
    ids = prompt_ids()
    assert np.abs(onnx_logits(ex.folder, ids, weights) - torch_logits(narrow, ids)[1]).max() < 1e-4


def test_merged_export_is_the_fine_tune(inside) -> None:
    ex = slmnb.export("tuned", precision="fp32", adapters="merged")
    assert ex.merged and ex.adapter is None and ex.folder.name == "tuned-fp32-merged"
    ids = prompt_ids()
    _, tuned = torch_logits(inside["run"], ids)
    assert np.abs(onnx_logits(ex.folder, ids) - tuned).max() < 1e-4
    with pytest.raises(ExportError, match="merged into its weights"):
        ex.predict(["hello"], adapter=False)


def test_bad_inputs_get_one_sentence(inside, tmp_path) -> None:
    with pytest.raises(RunError, match="No run called 'nosuch'"):
        slmnb.export("nosuch")
    with pytest.raises(ExportError, match=r"precision 'int3' is not supported: use one of int4, int8, fp32\."):
        slmnb.export("tuned", precision="int3")
    with pytest.raises(ExportError, match="cpu"):
        slmnb.export("tuned", device="gpu")
    # A run whose adapter is gone (a crash before the first save looks the same).
    shutil.copytree("runs/tuned", "runs/no-adapter", ignore=shutil.ignore_patterns("adapter"))
    config = Path("runs/no-adapter/config.yaml")
    config.write_text(config.read_text().replace("name: tuned", "name: no-adapter"))
    with pytest.raises(ExportError, match="'no-adapter' has no saved adapter"):
        slmnb.export("no-adapter")
    # An adapter trained on another base model, sent to the tiny model's base folder.
    manifest = inside["fp32"].folder / "slmnb-export.json"
    other = tmp_path / "other-base"
    shutil.copytree(inside["fp32"].folder, other)
    data = json.loads(manifest.read_text())
    (other / "slmnb-export.json").write_text(json.dumps({**data, "base_model": "smollm2-135m-instruct"}))
    with pytest.raises(ExportError, match="trained on tiny-llama, but other-base .* is another base model"):
        slmnb.export("tuned", precision="fp32", output=other)


def test_an_adapter_of_another_shape_does_not_fit() -> None:
    from slmnb.opt.adapters import RANK_DIM, fitted

    inputs = {"model.layers.0.attn.q_proj.lora_A.MatMul.weight": [64, RANK_DIM]}
    with pytest.raises(ExportError, match="trained on another base model"):
        fitted({"model.layers.0.attn.q_proj.lora_A.MatMul.weight": np.zeros((576, 8))}, inputs, "run x", "base")
    with pytest.raises(ExportError, match="has no LoRA input for"):
        fitted({"model.layers.9.attn.q_proj.lora_A.MatMul.weight": np.zeros((64, 8))}, inputs, "run x", "base")


def test_compare_puts_base_run_and_few_shot_side_by_side(inside, capfd) -> None:
    comparison = slmnb.compare("tuned", prompts=["I lost my keys", "We won!"], max_new_tokens=4, few_shot=2,
                               evaluate=True)
    rows = len(comparison.test_rows)
    err = capfd.readouterr().err  # outside a notebook, each column's evaluation counts its rows on stderr
    assert "evaluating base model on the test split: 100%" in err and f"{rows}/{rows} [" in err
    assert "evaluating base, 2-shot on the test split" in err and "predict (base model)" in err
    assert [c.title for c in comparison.columns] == ["base model", "tuned", "base, 2-shot"]
    assert all(len(c.answers) == 2 and all(c.answers) for c in comparison.columns)
    assert all(c.tokens_per_second > 0 and c.first_token > 0 for c in comparison.columns)
    run_column = comparison.columns[1]
    assert run_column.answers == inside["int4"].predict(["I lost my keys", "We won!"], max_new_tokens=4)
    assert run_column.accuracy is not None and run_column.agreement is not None
    assert comparison.columns[2].agreement is None  # few-shot has no PyTorch twin
    text = str(comparison)
    assert "test accuracy (ONNX)" in text and "I lost my keys" in text
    # Every metric of the run per column, ONNX beside PyTorch (the few-shot column has no PyTorch twin).
    assert all(set(c.evaluation.scores) == {"accuracy", "f1"} for c in comparison.columns)
    assert set(run_column.pytorch.scores) == {"accuracy", "f1"} and comparison.columns[2].pytorch is None
    labels = [row[0] for row in comparison.summary_rows()]
    assert labels[1] == "ONNX answers = PyTorch's"
    assert {"test f1 (ONNX)", "test f1 (PyTorch)", "prompt tokens/request (test)", "time/request (test)",
            "training once: time, tokens"} <= set(labels)
    trade = comparison.trade_line()
    assert trade is not None and trade.startswith("tuned: the fine-tune ") and "than 2-shot prompting" in text
    assert trade in text


def test_compare_scores_a_slice_or_another_split(inside) -> None:
    comparison = slmnb.compare("tuned", prompts=["I lost my keys"], max_new_tokens=2, evaluate=True, split="test[:3]")
    assert len(comparison.test_rows) == 3
    assert all(len(c.evaluation.predictions) == 3 for c in comparison.columns)
    assert "test[:3] accuracy (ONNX)" in str(comparison) and "test accuracy" not in str(comparison)
    with pytest.raises(ConfigError, match="split 'dev' names no split of the run's data") as failure:
        slmnb.compare("tuned", evaluate=True, split="dev")  # before any export or generation
    one_sentence(str(failure.value))


def test_the_trade_line_follows_what_was_measured(inside) -> None:
    """The sentence's numbers are the comparison's: change a measured time and the sentence changes with it."""
    comparison = slmnb.compare("tuned", prompts=["I lost my keys"], max_new_tokens=2, few_shot=2, evaluate=True)
    tuned, shots = comparison.columns[1], comparison.columns[2]
    seconds, tokens = tuned.training()
    assert seconds == pytest.approx(inside["run"].history[-1].elapsed, rel=0.01)
    assert tokens == next(e for e in reversed(inside["run"].history) if type(e).__name__ == "Step").tokens_seen > 0
    rows = len(comparison.test_rows)
    tuned.evaluation.seconds, shots.evaluation.seconds = 0.1 * rows, 0.3 * rows  # 0.2 s saved per request
    line = comparison.trade_line()
    assert f"pays back after {math.ceil(seconds / 0.2):,} requests of prompt time (100 ms against 300 ms" in line
    points = round((tuned.accuracy - shots.accuracy) * 100)
    quality = f"is {abs(points)} points {'more' if points > 0 else 'less'} accurate" if points else "is as accurate"
    assert line.startswith(f"tuned: the fine-tune {quality} and uses ")
    ratio = shots.prompt_tokens() / tuned.prompt_tokens()
    assert f"uses {ratio:.1f}x fewer prompt tokens per request" in line
    shots.evaluation.seconds = 0.05 * rows
    assert "it is not faster per request (100 ms against 50 ms per request)" in comparison.trade_line()
    assert comparison.trade_line() in str(comparison)


def test_opt_magic_exports_lists_and_compares(inside, ip) -> None:
    from IPython.core.error import UsageError

    job = ip.run_line_magic("opt", "export tuned --precision fp32 --wait")
    assert job.result.folder == inside["fp32"].folder
    table = ip.run_line_magic("opt", "adapters")
    assert "tuned" in repr(table) and "fp32" in repr(table)
    view = ip.run_line_magic("opt", "compare tuned --max_new_tokens 3 --wait")
    assert view.comparison.status == "done" and len(view.comparison.columns) == 2
    assert "Fine-tune or prompt?" not in view._render()[0]  # no few-shot column, nothing to weigh
    view = ip.run_line_magic("opt", "compare tuned --max_new_tokens 3 --few-shot 2 --wait")
    html, text = view._render()
    trade = view.comparison.trade_line()  # without --eval: the prompts shown are what was measured
    assert "than 2-shot prompting" in trade and "time/request (shown)" in text
    assert f"Fine-tune or prompt?</b> {trade}" in html.replace("&#x27;", "'") and text.endswith(trade)
    seen: list[str] = []
    view = ip.run_line_magic("opt", "compare tuned --max_new_tokens 3 --eval")
    while not view.done:  # the status line while it works: rows done of total, and how to stop it
        seen.append(view._render()[1].split("\n")[0])
        time.sleep(0.02)
    view.wait()
    rows = len(view.comparison.test_rows)
    assert any(re.match(rf"evaluating tuned on the test split: \d+/{rows} rows \[", line) for line in seen)
    assert any("checking tuned against PyTorch:" in line for line in seen)
    assert all("stop() on this cell's value ends it" in line for line in seen if "rows [" in line)
    assert view._render()[1].split("\n")[0] == "done"
    with pytest.raises(UsageError, match="No run called 'nosuch'"):
        ip.run_line_magic("opt", "export nosuch")
    with pytest.raises(UsageError, match="has no subcommand 'frobnicate'"):
        ip.run_line_magic("opt", "frobnicate")
    with pytest.raises(UsageError, match="precision 'int3' is not a precision the model builder makes"):
        ip.run_line_magic("opt", "export tuned --precision int3")


def test_cli_export(inside) -> None:
    done = subprocess.run([sys.executable, "-m", "slmnb.cli", "export", "tuned", "--precision", "fp32"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert f"exported to onnx/{inside['fp32'].folder.name}" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "slmnb.cli", "export", "nosuch"], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: No run called 'nosuch'")


def test_a_failed_build_is_one_sentence_with_the_builders_own_lines(tmp_path) -> None:
    from slmnb.opt.builder import run_builder

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "nosucharch"}')
    log = tmp_path / "builder.log"
    with pytest.raises(ExportError) as failure:
        run_builder(tmp_path / "model", tmp_path / "out", "fp32", log_path=log)
    message = str(failure.value)
    assert message.startswith("The ONNX model builder failed (exit code 1): ")
    assert "nosucharch" in message and str(log) in message and "\n" not in message
    assert "Traceback" in log.read_text()


# --- bad adapters, leftovers, names and outputs: one sentence each, and before the builder starts -------------

INTERNAL = ("Traceback", "Error:", "Errno", "KeyError", "ValueError", "SafetensorError", "object has no attribute")


def one_sentence(message: str) -> None:
    assert "\n" not in message and not any(word in message for word in INTERNAL), message


def copy_run(name: str, **config_changes: str) -> Path:
    """A copy of the `tuned` run under another name, with config.yaml lines replaced."""
    shutil.copytree("runs/tuned", f"runs/{name}")
    config = Path(f"runs/{name}/config.yaml")
    text = config.read_text().replace("name: tuned", f"name: {name}")
    for key, value in config_changes.items():
        text = "\n".join(f"{key}: {value}" if line.startswith(f"{key}:") else line for line in text.splitlines())
    config.write_text(text + "\n")
    return Path(f"runs/{name}/adapter")


@pytest.fixture
def no_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks must stop a bad adapter before the minute-long builder: reaching it fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the builder was started")

    monkeypatch.setattr("slmnb.opt.export.run_builder", refuse)


def save_lora(adapter: Path, change) -> None:
    """Rewrite the adapter's weights: change(name, tensor) gives the new {name: tensor} for each one."""
    from safetensors.torch import load_file, save_file

    tensors = {}
    for name, tensor in load_file(str(adapter / "adapter_model.safetensors")).items():
        tensors.update(change(name, tensor))
    save_file(tensors, str(adapter / "adapter_model.safetensors"))


def test_a_broken_adapter_is_one_sentence_before_the_builder(inside, tmp_path, no_builder) -> None:
    empty = copy_run("empty-adapter")
    shutil.rmtree(empty)
    empty.mkdir()
    truncated = copy_run("cut-adapter")
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    garbled = copy_run("garbled-config")
    (garbled / "adapter_config.json").write_bytes(b"\xff\xfe{")
    cases = {"empty-adapter": "is empty", "cut-adapter": "is truncated or damaged",
             "garbled-config": "is damaged"}
    for name, problem in cases.items():
        for adapters in ("switchable", "merged"):
            with pytest.raises(ExportError, match=problem) as failure:
                slmnb.export(name, precision="fp32", adapters=adapters, output=tmp_path / "fresh")
            assert "resume the run or train it again" in str(failure.value)
            one_sentence(str(failure.value))


def test_an_adapter_of_another_base_model_is_refused_before_the_builder(inside, tmp_path, no_builder) -> None:
    import torch

    wider = copy_run("wider")  # trained on a model with hidden size 96 where tiny-llama has 64
    save_lora(wider, lambda name, t: {name: torch.zeros(t.shape[0], 96) if ".lora_A." in name else t})
    deeper = copy_run("deeper")  # a model with more layers
    save_lora(deeper, lambda name, t: {name: t, name.replace("layers.1.", "layers.5."): t.clone()})
    other = copy_run("other-modules")  # a GPT-2 style model's fused c_attn
    save_lora(other, lambda name, t: {name.replace("q_proj", "c_attn"): t})
    named = copy_run("named-other")  # adapter_config.json names another base than the run's config
    config = json.loads((named / "adapter_config.json").read_text())
    (named / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "smollm2-135m"}))
    cases = {"wider": r"does not fit tiny-llama: its layer 0 \w+ has 96 inputs where tiny-llama has (64|128)",
             "deeper": "adapts layer 5 where tiny-llama has 2 layers",
             "other-modules": "adapts c_attn modules, which tiny-llama does not have",
             "named-other": "adapter was trained on smollm2-135m .* but the run's config names tiny-llama"}
    for name, problem in cases.items():
        for adapters in ("switchable", "merged"):
            with pytest.raises(ExportError, match=problem) as failure:
                slmnb.export(name, precision="fp32", adapters=adapters, output=tmp_path / "fresh")
            one_sentence(str(failure.value))


def test_a_failed_build_keeps_the_log_it_names(inside, tmp_path) -> None:
    """The builder fails inside an export (here: a base model of an unknown architecture): the message keeps
    the builder's own error line, and the log it names exists afterwards, with nothing half-built left."""
    from slmnb.models import model_folder

    model = tmp_path / "odd-model"
    shutil.copytree(model_folder("tiny-llama"), model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "nosucharch"}))
    adapter = copy_run("odd", model_name_or_path=str(model))
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**adapter_config, "base_model_name_or_path": str(model)}))
    out = tmp_path / "out"
    with pytest.raises(ExportError) as failure:
        slmnb.export("odd", precision="fp32", output=out)
    message = str(failure.value)
    assert message.startswith("The ONNX model builder failed (exit code 1): ") and "nosucharch" in message
    log = Path(message.split("its whole output is in ")[1].split(";")[0])
    assert log.is_file() and "nosucharch" in log.read_text() and log.parent == out
    assert [p.name for p in out.iterdir() if not p.name.endswith((".lock", ".builder.log"))] == []


def dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    return int(child.stdout)


def test_temps_of_killed_writers_are_removed_at_the_next_export(inside) -> None:
    """Temps carry their writer's pid: a dead writer's are swept, a live one's (maybe mid-write) are kept."""
    from slmnb.paths import slmnb_home

    dead = dead_pid()
    base = inside["fp32"].folder
    # Folders and files, in every folder an export writes temps into.
    leftovers = [Path("onnx") / f".tuned-fp32-merged.tmp-{dead}-0123abcd",
                 base / f".slmnb-export.json.tmp-{dead}-0a1b2c3d",
                 base / "adapters" / f".tuned.onnx_adapter.old-{dead}-89abcdef",
                 slmnb_home() / "models" / f".tiny-llama-v0.tmp-{dead}-fedcba98"]
    live = [Path("onnx") / f".tuned-int8-merged.tmp-{os.getpid()}-01234567",
            base / "adapters" / f".tuned.onnx_adapter.tmp-{os.getpid()}-76543210"]
    for path in leftovers[::2] + live[:1]:
        path.mkdir(parents=True)
        (path / "model.onnx.data").write_bytes(b"half")
    for path in leftovers[1::2] + live[1:]:
        path.write_bytes(b"half")
    ex = slmnb.export("tuned", precision="fp32")
    assert ex.folder == base
    assert [path for path in leftovers if path.exists()] == []
    assert all(path.exists() for path in live)
    for path in live:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def test_run_names_never_leave_the_runs_folder(inside, tmp_path, ip) -> None:
    from IPython.core.error import UsageError

    for name in ("../../x", "a/b", "..", "runs/../../nosuch", "a\\b"):
        with pytest.raises(ExportError, match="neither a run folder .* nor a run name") as failure:
            slmnb.export(name, precision="fp32")
        one_sentence(str(failure.value))
    with pytest.raises(ExportError, match="neither a run folder"):
        slmnb.compare(["tuned", "../../x"])
    with pytest.raises(UsageError, match="neither a run folder"):
        ip.run_line_magic("opt", "export ../../x")
    with pytest.raises(UsageError, match="neither a run folder"):
        ip.run_line_magic("opt", "compare ../../x")
    # A path that is a run folder stays a way to name a run.
    assert slmnb.export(str(Path("runs/tuned").resolve()), precision="fp32").folder == inside["fp32"].folder


def test_bad_options_and_outputs_are_one_sentence(inside, tmp_path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    cases = [({"output": a_file}, "is a file: give a folder"),
             ({"output": a_file / "sub"}, "which is a file: give another output folder"),
             ({"output": 5}, "not a folder path"),
             ({"adapters": "merge"}, r"adapters 'merge' is not supported: use one of switchable, merged\."),
             ({"precision": None}, "precision None is not supported"),
             ({"output": "/proc/slmnb-export"}, "could not write|cannot be written")]
    for options, problem in cases:
        with pytest.raises(ExportError, match=problem) as failure:
            slmnb.export("tuned", **{"precision": "fp32", **options})
        one_sentence(str(failure.value))
    for options, problem in [({"few_shot": -1}, "few_shot must be a whole number of at least 0"),
                             ({"max_new_tokens": 0}, "max_new_tokens must be a whole number of at least 1")]:
        with pytest.raises(ExportError, match=problem):
            slmnb.compare("tuned", **options)


def test_a_full_disk_during_export_is_one_sentence(inside, monkeypatch) -> None:
    import errno

    def full(weights, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    copy_run("no-room")
    monkeypatch.setattr("slmnb.opt.export.write_adapter", full)
    with pytest.raises(ExportError, match=r"could not write .*no-room.onnx_adapter \(no space left on device\): "
                                          r"make room on the disk, then export again\.") as failure:
        slmnb.export("no-room", precision="fp32")
    one_sentence(str(failure.value))


@pytest.mark.slow  # two builds from scratch (about 5 min here): make test-slow, to keep make test within its time
@pytest.mark.timeout(900)
def test_stopping_an_export_job_keeps_nothing_half_written_and_the_next_export_works(inside, tmp_path, ip) -> None:
    from slmnb.notebook.opt_views import ExportJob, ExportStopped

    out = tmp_path / "onnx"
    job = ExportJob(inside["run"], {"precision": "fp32", "output": str(out)})
    while job.phase == "starting" and not job.done:  # the builder is under way once a phase is shown
        time.sleep(0.05)
    assert "stop() on this cell's value ends it" in job._render()[1]
    job.stop()
    with pytest.raises(ExportStopped, match="was stopped before it finished, and nothing of it was kept"):
        job.wait()
    assert job._render()[1].startswith("The export of tuned was stopped")
    left = [p for p in out.iterdir() if p.is_dir()]
    assert left == []  # no model folder, finished or temporary
    assert slmnb.export(inside["run"], precision="fp32", output=out).folder.parent == out
