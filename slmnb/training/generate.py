"""Greedy generation with PyTorch for a run: the fine-tuned model, or the base model it started from."""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmnb.config import FinetuneConfig
from slmnb.data import prompt_ids, render
from slmnb.errors import RunError
from slmnb.models import load_model, load_tokenizer, quiet_libraries


class Predictor:
    """Loads the base model (and the run's adapter or full model) once, then answers batches of rows."""

    def __init__(self, config: FinetuneConfig, output_path: Path) -> None:
        self.config = config
        self.output_path = output_path
        self._tokenizer: Any = None
        self._models: dict[bool, Any] = {}

    def predict(self, rows: Sequence[dict[str, Any] | str], max_new_tokens: int = 32, adapter: bool = True,
                batch_size: int = 8) -> list[str]:
        quiet_libraries()  # before peft's import pulls in bitsandbytes
        import torch

        model, tokenizer = self._model(adapter), self._tok()
        prompts = [prompt_ids(self.config, self._tok(), row) for row in rows]
        answers: list[str] = []
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            width = max(len(p) for p in batch)
            # Left padding keeps every prompt's last token at the end, where generation continues.
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=tokenizer.pad_token_id)
            answers.extend(tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out)
        return answers

    def _tok(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.config.model_name_or_path)
        return self._tokenizer

    def _model(self, adapter: bool) -> Any:
        # LoRA runs share one model: the adapter is switched off for base answers instead of loading twice.
        key = adapter if self.config.method == "full" else True
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

                model = PeftModel.from_pretrained(load_model(self.config.model_name_or_path), self.output_path)
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


def first_word(text: str) -> str:
    """The label a classification answer gives: its first word, without punctuation or case."""
    words = text.strip().split()
    return words[0].strip(string.punctuation).lower() if words else ""


@dataclass(frozen=True)
class Score:
    """Answers to a split's rows, and the share whose first word is the expected response's first word."""

    accuracy: float
    answers: list[str]
    expected: list[str]
    rows: list[dict[str, Any]]


def score(answers: Sequence[str], rows: Sequence[dict[str, Any]], response_template: str) -> Score:
    expected = [render(response_template, row, "response_template") for row in rows]
    hits = sum(first_word(a) == first_word(e) for a, e in zip(answers, expected, strict=True))
    return Score(accuracy=hits / max(len(rows), 1), answers=list(answers), expected=expected, rows=list(rows))
