"""`slmnb.export(run)`: a run as ONNX for onnxruntime-genai, and the `Export` that answers prompts with it.

Switchable (the default, Olive's generate-adapter workflow): the run's base model is exported once per
precision and LoRA layout with LoRA inputs that default to nothing, and the run becomes a small
`.onnx_adapter`; a further run of the same base only converts its adapter. Merged: the LoRA is merged into the
weights first, giving one self-contained model.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from slmnb.errors import ExportError
from slmnb.opt import store
from slmnb.opt.adapters import (
    adapter_rank,
    every_layer,
    fitted,
    lora_nodes,
    make_switchable,
    peft_weights,
    spread_over_every_layer,
    write_adapter,
)
from slmnb.opt.builder import run_builder, use_one_thread_if_small
from slmnb.opt.inputs import (
    base_config,
    check_base,
    check_choice,
    check_output,
    check_saved_output,
    model_size,
    open_run,
)
from slmnb.opt.runtime import Timing, forget, onnx_model
from slmnb.paths import build_folder_once, replace_folder, slmnb_home, sweep_temps, temp_sibling

PRECISIONS = ("int4", "int8", "fp32")
ADAPTER_MODES = ("switchable", "merged")
Phase = Callable[[str], None]


class Export:
    """An exported run (or a bare ONNX folder): its model folder, its adapter, and greedy answers from them."""

    def __init__(self, folder: Path, adapter: Path | None = None, run: Any = None, seconds: float = 0.0) -> None:
        self.folder = Path(folder)
        self.adapter = adapter
        self.run = run
        self.seconds = seconds  # what this export call took; near 0 when everything was on disk already
        self.manifest = store.read_json(self.folder / store.MANIFEST) or {}
        self._tokenizer: Any = None

    @property
    def precision(self) -> str:
        return self.manifest.get("precision", "?")

    @property
    def merged(self) -> bool:
        return self.manifest.get("kind") == "merged"

    @property
    def size_mb(self) -> float:
        return store.model_size_mb(self.folder)

    @property
    def fidelity(self) -> str | None:
        """What keeps this export's answers from being the fine-tune's, in one sentence (None: nothing known).

        A LoRA trained on the int4 base (base_weights: int4) and exported as an int4 switchable adapter computes
        what PyTorch trained, up to the runtime's int8 activations; every other pairing quantizes something the
        fine-tune never saw.
        """
        config = getattr(self.run, "config", None)
        if config is None or config.method == "full" or config.method == "qlora":
            return None
        on_int4 = config.base_weights == "int4"
        if on_int4 and self.precision != "int4":
            return (f"The run trained on the int4 base; this {self.precision} export runs on other base weights, so "
                    "some answers may differ from the fine-tune's (the default int4 export keeps them).")
        if self.merged and self.precision != "fp32":
            return (f"Merged, the LoRA is quantized to {self.precision} with the base, so some answers may differ "
                    "from the fine-tune's; the switchable int4 adapter keeps them.")
        if not on_int4 and self.precision != "fp32":
            return (f"The run trained on the original weights, not the {self.precision} base this export runs on, so "
                    "some answers may differ from the fine-tune's: train with base_weights: int4 (LoRA's default).")
        return None

    def __repr__(self) -> str:
        what = f"run {self.run.name!r}" if self.run is not None else "model"
        adapter = f" + {self.adapter.name}" if self.adapter else ""
        return f"<Export of {what}: {self.precision} {self.folder}{adapter}>"

    def prompt_ids(self, row: dict[str, Any] | str, examples: Sequence[dict[str, Any]] = ()) -> list[int]:
        """The prompt's tokens, rendered as the run's training rendered them (a bare model: its chat template)."""
        from slmnb.data import prompt_ids

        tokenizer = self.tokenizer()
        if self.run is not None:
            return prompt_ids(self.run.config, tokenizer, row, examples)
        if not isinstance(row, str):
            raise ExportError("A model exported without a run takes prompts as text: pass strings.")
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template([{"role": "user", "content": row}], tokenize=False,
                                                 add_generation_prompt=True)
            return tokenizer(text, add_special_tokens=False)["input_ids"]
        return tokenizer(row)["input_ids"]

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from slmnb.models import open_tokenizer

            # The tokenizer the builder copied into the folder: prompts are encoded exactly as in training.
            self._tokenizer = open_tokenizer(self.folder)
        return self._tokenizer

    def _adapter_for(self, adapter: bool) -> Path | None:
        if not adapter:
            if self.merged:
                raise ExportError(f"{self.folder} has the LoRA merged into its weights, so it has no base model "
                                  "to answer with: export the run with adapters='switchable' for base answers.")
            return None
        return self.adapter

    def stream(self, row: dict[str, Any] | str, max_new_tokens: int = 128, adapter: bool = True,
               timing: Timing | None = None, examples: Sequence[dict[str, Any]] = ()) -> Iterator[str]:
        """The greedy answer to one row, a token's text at a time."""
        ids = self.prompt_ids(row, examples)
        return onnx_model(self.folder).stream(ids, max_new_tokens, self._adapter_for(adapter), timing)

    def predict(self, rows: Sequence[dict[str, Any] | str], max_new_tokens: int = 32,
                adapter: bool = True) -> list[str]:
        """Greedy answers to rows rendered with the run's prompt template (adapter=False: the base model)."""
        return ["".join(self.stream(row, max_new_tokens, adapter)).strip() for row in rows]

    def generate(self, prompt: dict[str, Any] | str, adapter: bool = True, stream: bool = False,
                 max_new_tokens: int = 128) -> str | Iterator[str]:
        pieces = self.stream(prompt, max_new_tokens, adapter)
        return pieces if stream else "".join(pieces).strip()

    def evaluate(self, split: str = "test", metrics: Sequence[str] | str | None = None, adapter: bool = True,
                 max_new_tokens: int | None = None, examples: Sequence[dict[str, Any]] = (),
                 progress: bool | Callable[[int, int], None] = True, model: str | None = None,
                 rows: Sequence[dict[str, Any]] | None = None) -> Any:
        """The run's split answered by this export with onnxruntime-genai and scored: an Evaluation, as
        `run.evaluate` gives for PyTorch (slices work: test[:20]; metrics=None: the run's, else chosen from the data).

        `examples` makes it a few-shot prompt of the base model (adapter=False). Requests go one at a time, as a
        deployed model gets them, so `seconds` over the rows is the time per request; `prompt_tokens` is the mean
        prompt length in tokens. Perplexity, if asked for, is left out of the scores (shown as "-"): it is the
        model's loss on the reference answers, and onnxruntime-genai's generator only continues a prompt with its
        own tokens, so the loss of given text is not something it computes; PyTorch's run.evaluate has it.
        progress=True shows a bar of rows; a function gets (done, total) instead, and may raise to stop between rows.
        `rows` replaces the split's rows (then `split` only names them): a comparison answers one run's rows
        with every column. `model` titles the Evaluation's column.
        """
        from slmnb.evaluation import capped, evaluate_answers

        run = self._scored_run()
        split = split if rows is not None else capped(split)
        rows, metrics, max_new_tokens = _evaluation_inputs(run, split, metrics, max_new_tokens, self.tokenizer, rows)
        model = model or self._evaluation_title(adapter, len(examples))
        path = self._adapter_for(adapter)
        onnx = onnx_model(self.folder)  # loaded before the clock starts: loading is not a request's time
        prompts = [self.prompt_ids(row, examples) for row in rows]
        answers, seconds = _answer_all(onnx, prompts, max_new_tokens, path, progress,
                                       f"evaluating {model} on the {split} split")
        return evaluate_answers(run.config, rows, answers, split=split, model=model, metrics=metrics,
                                seconds=seconds, prompt_tokens=sum(map(len, prompts)) / len(prompts))

    def _scored_run(self) -> Any:
        if self.run is None:
            raise ExportError(f"{self.folder} was exported without a run, so it has no data split or templates to "
                              "evaluate on: evaluate the export of a run (slmnb.export(run)).")
        return self.run

    def _evaluation_title(self, adapter: bool, shots: int) -> str:
        if shots:
            return f"ONNX {self.precision} base, {shots}-shot"
        if self.merged:
            return f"ONNX {self.precision} merged"
        return f"ONNX {self.precision} + adapter" if adapter else f"ONNX {self.precision} base model"


def _evaluation_inputs(run: Any, split: str, metrics: Sequence[str] | str | None, max_new_tokens: int | None,
                       tokenizer: Callable[[], Any], rows: Sequence[dict[str, Any]] | None = None
                       ) -> tuple[list[dict[str, Any]], list[str], int]:
    """The split's rows, the settled metric names and the answer length: every mistake before any generation,
    in the same words as run.evaluate's."""
    from slmnb.evaluation import metric_names, references_of, split_rows
    from slmnb.training.generation_eval import answer_length

    rows = list(rows) if rows is not None else split_rows(run.config, split)
    if not rows:
        raise ExportError(f"There are no rows to evaluate run {run.name!r} on: give a split that has some.")
    names = metric_names(run.config, references_of(run.config, rows), metrics)
    if max_new_tokens is None:
        max_new_tokens = answer_length(run.config, tokenizer())
    elif not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ExportError(f"max_new_tokens must be a whole number of at least 1, not {max_new_tokens!r}.")
    return rows, names, max_new_tokens


def _answer_all(onnx: Any, prompts: list[list[int]], max_new_tokens: int, adapter: Path | None,
                progress: bool | Callable[[int, int], None], what: str) -> tuple[list[str], float]:
    """Greedy answers to prompt ids, one request at a time, and the wall time they took."""
    from slmnb.progress import progress as progress_bar

    answers: list[str] = []
    seconds = 0.0
    with progress_bar(len(prompts), what, show=progress is True) as bar:
        for ids in prompts:
            started = time.perf_counter()
            answers.append("".join(onnx.stream(ids, max_new_tokens, adapter)).strip())
            seconds += time.perf_counter() - started  # a progress callback's own time is not the model's
            bar.update()
            if callable(progress):
                progress(len(answers), len(prompts))
    return answers, seconds


def export(run_or_dir: Any, precision: str = "int4", adapters: str = "switchable", output: str | Path | None = None,
           device: str = "cpu", provider: str = "CPUExecutionProvider", on_phase: Phase | None = None) -> Export:
    """Export a run (its object, name or folder) to ONNX for onnxruntime-genai and return the Export.

    Whatever is on disk and current already (the base model, the adapter) is reused, not rebuilt.
    `output` is the exports folder (default ./onnx), or one base model's folder to add the adapter to.
    """
    run = exportable(run_or_dir, precision, adapters, device, provider, output=output)
    root = check_output(output or store.EXPORTS_DIR)
    phase = on_phase or (lambda text: None)
    started = time.perf_counter()
    try:
        # Leftovers of exports and model conversions that were killed mid-write (their writer's pid is dead).
        sweep_temps(root)
        sweep_temps(slmnb_home() / "models")
        if adapters == "merged":
            folder, adapter = _merged(run, precision, root, phase), None
        else:
            folder, adapter = _switchable(run, precision, root, phase)
    except OSError as exc:  # a full disk, a folder made read-only midway: what failed, and what to do
        raise ExportError(_write_failure(exc, root)) from exc
    return Export(folder, adapter, run, time.perf_counter() - started)


def _write_failure(exc: OSError, root: Path) -> str:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    fix = "make room on the disk" if full else "give a writable output folder"
    reason = (exc.strerror or "input/output error").lower()
    return f"The export could not write {exc.filename or root} ({reason}): {fix}, then export again."


def exportable(run_or_dir: Any, precision: str = "int4", adapters: str = "switchable", device: str = "cpu",
               provider: str = "CPUExecutionProvider", output: str | Path | None = None) -> Any:
    """The run to export, once every option and the run itself are checked: each problem is one sentence.

    Cheap enough for a notebook cell to call before it starts the export in the background.
    """
    check_choice("precision", precision, PRECISIONS)
    check_choice("adapters", adapters, ADAPTER_MODES)
    if device != "cpu" or provider != "CPUExecutionProvider":
        raise ExportError("slmnb exports for --device cpu with the CPUExecutionProvider only: drop those options.")
    check_output(output or store.EXPORTS_DIR)
    run = open_run(run_or_dir)
    if run.status.live:
        raise ExportError(f"Run {run.name!r} is still training: wait for it (run.wait()) or stop it, then export.")
    if adapters == "switchable" and run.config.method == "full":
        raise ExportError(f"Run {run.name!r} fine-tuned the whole model, so there is no adapter to switch: export "
                          "it with adapters='merged'.")
    check_saved_output(run)
    return run


def _base_model(run: Any) -> tuple[Path, dict[str, Any]]:
    """The base model's folder and config, once the run's adapter is known to fit it (before the builder)."""
    from slmnb.models import model_folder

    hf_dir = Path(model_folder(run.config.model_name_or_path))
    return hf_dir, check_base(run, hf_dir)


def _switchable(run: Any, precision: str, output: Path, phase: Phase) -> tuple[Path, Path]:
    phase("reading the adapter")
    hf_dir, config = _base_model(run)
    weights = peft_weights(run.output_path)
    base_model = run.config.model_name_or_path
    layers, parameters = model_size(config, base_model)
    if (output / store.MANIFEST).is_file():
        folder = output  # an existing base model's folder: the adapter joins it if it fits
    else:
        # Named by the adapter's projections on every layer: a run of some layers shares its base with the others.
        folder = output / store.base_folder_name(base_model, precision, every_layer(weights, layers))
    manifest = store.read_json(folder / store.MANIFEST)
    if manifest is None:
        log = _log_beside(folder)

        def build(tmp: Path) -> None:
            raw, spread = tmp / ".builder-output", tmp / ".every-layer-adapter"
            run_builder(hf_dir, raw, precision, adapter_dir=spread_over_every_layer(run.output_path, layers, spread),
                        keep_float=lora_nodes(layers), layers=layers, on_phase=phase, log_path=log)
            phase("making the LoRA inputs switchable")
            inputs = make_switchable(raw / "model.onnx", tmp)
            for item in raw.iterdir():
                if item.is_file() and not item.name.startswith("model.onnx"):
                    shutil.copy2(item, tmp / item.name)
            shutil.rmtree(raw)
            shutil.rmtree(spread, ignore_errors=True)
            use_one_thread_if_small(tmp, parameters)
            store.write_json(tmp / store.MANIFEST, {
                "format": store.FORMAT, "kind": "base", "base_model": base_model, "precision": precision,
                "quantization": _quantization(precision), "lora_inputs": inputs, "created": time.time(),
                "builder": _builder_version()})
            os.replace(log, tmp / "builder.log")

        build_folder_once(folder, build)
        manifest = store.read_json(folder / store.MANIFEST) or {}
    elif manifest.get("kind") != "base":
        raise ExportError(f"{folder} is a merged model, which takes no adapters: export to an exports folder.")
    what, base = f"Run {run.name!r}", f"{folder.name} (an export of {manifest.get('base_model')})"
    if manifest.get("base_model") != base_model:
        raise ExportError(f"{what} was trained on {base_model}, but {base} is another base model: export it "
                          "to another output folder.")
    if manifest.get("precision") != precision:
        raise ExportError(f"{base} is {manifest.get('precision')}, not {precision}: export to another output folder.")
    inputs = manifest.get("lora_inputs")
    if not isinstance(inputs, dict):
        raise ExportError(f"{folder / store.MANIFEST} is damaged: delete {folder} and export again.")
    weights = fitted(weights, inputs, what, base)
    sweep_temps(folder)
    sweep_temps(folder / "adapters")
    return folder, _adapter_file(run, folder, weights, phase)


def _log_beside(folder: Path) -> Path:
    """Where the builder writes its output: beside the folder being built, not inside its temp folder.

    A failed build removes its temp folder, and the error names this log, so it must outlive the failure; a
    successful build moves it into the finished folder.
    """
    return folder.parent / f"{folder.name}.builder.log"


def _adapter_file(run: Any, folder: Path, weights: dict[str, Any], phase: Phase) -> Path:
    """The run's `.onnx_adapter` in the base folder, converted again only when the run's adapter changed."""
    path = folder / "adapters" / f"{store.slug(run.name)}.onnx_adapter"
    meta_path = path.with_suffix(".json")
    digest = store.file_digest(run.output_path / "adapter_model.safetensors")
    meta = store.read_json(meta_path)
    # The count of inputs: an adapter written before it brought zeros for every input of its base is written again.
    if meta and meta.get("digest") == digest and meta.get("inputs") == len(weights) and path.is_file():
        return path
    phase("writing the adapter")
    started = time.perf_counter()
    write_adapter(weights, path)
    store.write_json(meta_path, {"run": run.name, "run_dir": str(run.dir.resolve()), "rank": adapter_rank(weights),
                                 "digest": digest, "inputs": len(weights), "created": time.time(),
                                 "seconds": round(time.perf_counter() - started, 3)})
    return path


def _merged(run: Any, precision: str, output: Path, phase: Phase) -> Path:
    from slmnb.models import load_tokenizer

    if run.config.method != "full":
        _base_model(run)
    source = run.output_path / ("model.safetensors" if run.config.method == "full" else "adapter_model.safetensors")
    digest = store.file_digest(source) if source.is_file() else str(run.output_path.stat().st_mtime)
    folder = output / store.merged_folder_name(run.name, precision)
    manifest = store.read_json(folder / store.MANIFEST)
    if manifest and manifest.get("digest") == digest and manifest.get("format") == store.FORMAT:
        return folder
    tmp = temp_sibling(folder)
    try:
        hf_dir = tmp / ".merged-weights"
        phase("merging the LoRA into the weights")
        model = _merged_model(run, precision)
        model.save_pretrained(hf_dir)
        load_tokenizer(run.config.model_name_or_path).save_pretrained(hf_dir)
        del model
        layers, parameters = model_size(base_config(hf_dir, run.name), run.name)
        log = _log_beside(folder)
        run_builder(hf_dir, tmp, precision, layers=layers, on_phase=phase, log_path=log)
        os.replace(log, tmp / "builder.log")
        use_one_thread_if_small(tmp, parameters)
        shutil.rmtree(hf_dir)
        shutil.rmtree(tmp / ".builder-cache", ignore_errors=True)
        store.write_json(tmp / store.MANIFEST, {
            "format": store.FORMAT, "kind": "merged", "base_model": run.config.model_name_or_path,
            "run": run.name, "precision": precision, "quantization": _quantization(precision), "digest": digest,
            "created": time.time(), "builder": _builder_version()})
        forget(folder)
        replace_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _merged_model(run: Any, precision: str) -> Any:
    """The fine-tune as one model in memory: the full model's folder, or the base with the LoRA merged in."""
    from slmnb.errors import SlmnbError
    from slmnb.models import load_model

    try:
        if run.config.method == "full":
            return load_model(str(run.output_path))
        from peft import PeftModel

        from slmnb.training.base import load_base

        # Merged into the base the run trained on (its int4 values, where it trained on them), as PyTorch answers;
        # except for an int4 merge: on weights that sit on the int4 grid already, quantizing again rounds almost
        # every LoRA change away (31% instead of 92% on the demo's test split), so it merges into the original ones.
        config = run.config.replace(base_weights="original") if precision == "int4" else run.config
        return PeftModel.from_pretrained(load_base(config), run.output_path).merge_and_unload()
    except (SlmnbError, OSError, MemoryError):
        raise
    except Exception as exc:  # transformers and peft refuse a model they cannot read in their own words
        raise ExportError(f"Run {run.name!r} could not be loaded on its base model {run.config.model_name_or_path} "
                          "for merging: check that the run's predict() works, then export again.") from exc


def _quantization(precision: str) -> str:
    return {"int4": "k_quant int4 in blocks of 32, last MatMul int8", "int8": "int8", "fp32": "none"}[precision]


def _builder_version() -> str:
    from importlib.metadata import version

    return f"onnxruntime-genai {version('onnxruntime-genai')}"


def open_export(target: Any) -> Export:
    """An Export for what a user hands over: an Export, a run (object, name or folder), or an ONNX folder."""
    if isinstance(target, Export):
        return target
    if isinstance(target, str | Path) and (Path(target) / "genai_config.json").is_file():
        return Export(Path(target))
    return export(target)


def generate(model_or_run: Any, prompt: dict[str, Any] | str, adapter: bool = True, stream: bool = True,
             max_new_tokens: int = 128) -> str | Iterator[str]:
    """Greedy generation with onnxruntime-genai: the text, or its pieces as they come with stream=True.

    `model_or_run` is an Export, an ONNX folder, or a run (exported first with the defaults if it is not yet).
    """
    return open_export(model_or_run).generate(prompt, adapter=adapter, stream=stream, max_new_tokens=max_new_tokens)
