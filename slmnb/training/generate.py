"""Greedy generation with PyTorch for a run: the fine-tuned model, or the base model it started from."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from slmnb.config import FinetuneConfig
from slmnb.data import prompt_ids
from slmnb.errors import RunError
from slmnb.models import load_model, load_tokenizer, quiet_libraries
from slmnb.progress import progress as progress_bar
from slmnb.training.base import load_base

RowsDone = Callable[[int, int], None]


class Predictor:
    """Loads the base model (and the run's adapter or full model) once, then answers batches of rows."""

    def __init__(self, config: FinetuneConfig, output_path: Path) -> None:
        self.config = config
        self.output_path = output_path
        self._tokenizer: Any = None
        self._models: dict[bool, Any] = {}

    def predict(self, rows: Sequence[dict[str, Any] | str], max_new_tokens: int = 32, adapter: bool = True,
                batch_size: int = 8, progress: bool | RowsDone = True, label: str = "predict") -> list[str]:
        """Greedy answers in the rows' order. progress=True shows a bar when there is more than one batch or the
        model is still to load; a function is called as progress(done, total) instead, for code that draws its own
        (a view's thread, where a bar would land in whichever cell runs then).

        Ctrl-C (the kernel's interrupt) stops between two tokens; nothing is written, so the next call just works.
        """
        quiet_libraries()  # before peft's import pulls in bitsandbytes
        show = progress is True and (len(rows) > batch_size or not self.loaded(adapter))
        what = label if adapter else f"{label} (base model)"
        with progress_bar(len(rows), f"{what}: loading the model", show=show) as bar:
            model, tokenizer = self._model(adapter), self.tokenizer()
            bar.set_description_str(what)
            prompts = [prompt_ids(self.config, tokenizer, row) for row in rows]
            # Rows of similar length share a batch, so less of each batch is padding the model computes for nothing.
            order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
            answers: list[str] = [""] * len(prompts)
            with inference_threads():
                for start in range(0, len(order), batch_size):
                    batch = order[start:start + batch_size]
                    for i, answer in zip(batch, self._generate(model, [prompts[i] for i in batch], max_new_tokens),
                                         strict=True):
                        answers[i] = answer
                    bar.update(len(batch))
                    if callable(progress):
                        progress(start + len(batch), len(order))
        return answers

    def _generate(self, model: Any, batch: list[list[int]], max_new_tokens: int) -> list[str]:
        from slmnb.training.generation_eval import generate

        return generate(model, self.tokenizer(), batch, max_new_tokens)

    def release(self) -> None:
        """Drop the loaded models (hundreds of MB each); the next predict loads them again."""
        self._models.clear()
        self._tokenizer = None

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.config.model_name_or_path)
        return self._tokenizer

    def loaded(self, adapter: bool) -> bool:
        return self._key(adapter) in self._models

    def load(self, adapter: bool = True) -> None:
        """Load the model now (a timed evaluation then measures answering, not loading)."""
        self._model(adapter)

    @contextmanager
    def forward(self, adapter: bool = True) -> Iterator[Any]:
        """The model for a forward pass (a loss, not generation); for a LoRA run's base, its adapter switched off."""
        model = self._model(adapter)
        if isinstance(model, _AdapterOff):
            with model.model.disable_adapter():
                yield model.model
        else:
            yield model

    def _key(self, adapter: bool) -> bool:
        # LoRA runs share one model: the adapter is switched off for base answers instead of loading twice.
        return adapter if self.config.method == "full" else True

    def _model(self, adapter: bool) -> Any:
        key = self._key(adapter)
        if key in self._models:
            model = self._models[key]
        else:
            if (adapter or self.config.method != "full") and not self.output_path.is_dir():
                raise RunError(f"Run {self.config.name!r} has no saved weights yet at {self.output_path}: wait for "
                               "it to finish or stop it.")
            if self.config.method == "full":
                model = load_model(str(self.output_path) if adapter else self.config.model_name_or_path)
            else:
                from peft import PeftModel

                model = PeftModel.from_pretrained(load_base(self.config), self.output_path)
            model.eval()
            self._models[key] = model
        return model if adapter or self.config.method == "full" else _AdapterOff(model)


class _AdapterOff:
    """A PeftModel seen with its adapter disabled, for the base model's answers."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def generate(self, **kwargs: Any) -> Any:
        with self.model.disable_adapter():
            return self.model.generate(**kwargs)


@contextmanager
def inference_threads() -> Iterator[None]:
    """Generate with one torch thread, then give the caller back its thread count.

    Greedy decoding of a small model runs thousands of short parallel regions, and with two OpenMP threads each one
    waits until both are scheduled. On a 2-core machine that a notebook shares with its browser and server (or a
    Binder session with its neighbours), that wait dominated: the tones test split (48 rows, SmolLM2-135M + LoRA)
    scored in 33 s on one thread against 124-186 s on two, in one process on a loaded machine.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
