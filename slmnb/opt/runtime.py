"""Greedy generation with onnxruntime-genai: one loaded model per ONNX folder, adapters switched per request."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from slmnb.errors import ExportError
from slmnb.opt.telemetry import disable_genai_events, telemetry_off

_loaded: dict[Path, OnnxModel] = {}
_loaded_lock = threading.Lock()


@dataclass
class Timing:
    """How one generation went: time to the first token, tokens written, and their rate."""

    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    tokens: int = 0
    seconds: float = 0.0

    @property
    def decode_seconds(self) -> float:
        """Time after the first token: tokens/s over it is the decode speed, unmixed with the prompt's cost."""
        return self.seconds - (self.first_token or 0.0)

    @property
    def tokens_per_second(self) -> float:
        return (self.tokens - 1) / self.decode_seconds if self.tokens > 1 and self.decode_seconds > 0 else 0.0


class OnnxModel:
    """An ONNX model folder loaded into onnxruntime-genai, with its adapters loaded on first use."""

    def __init__(self, folder: Path) -> None:
        telemetry_off()  # before og loads onnxruntime, which reads it once
        import onnxruntime_genai as og

        disable_genai_events(og)
        self.folder = folder
        try:
            self.model = og.Model(str(folder))
        except Exception as exc:
            raise ExportError(f"onnxruntime-genai cannot load {folder} ({str(exc).splitlines()[0]}): export the "
                              "model again.") from exc
        self.tokenizer = og.Tokenizer(self.model)
        eos = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))["model"]["eos_token_id"]
        self.end_tokens = set(eos if isinstance(eos, list) else [eos])
        self.adapters = og.Adapters(self.model)
        self._adapter_names: dict[tuple[Path, int], str] = {}
        # One generator at a time per model: two threads decoding at once would only share two cores.
        self.lock = threading.Lock()

    def adapter_name(self, path: Path) -> str:
        path = path.resolve()
        key = (path, path.stat().st_mtime_ns)  # an adapter exported again is loaded again
        if key not in self._adapter_names:
            name = f"a{len(self._adapter_names)}"
            try:
                self.adapters.load(str(path), name)
            except Exception as exc:
                raise ExportError(f"{path} does not load into {self.folder} ({str(exc).splitlines()[0]}): was it "
                                  "exported for another base model?") from exc
            self._adapter_names[key] = name
        return self._adapter_names[key]

    def stream(self, ids: list[int], max_new_tokens: int, adapter: Path | None = None,
               timing: Timing | None = None) -> Iterator[str]:
        """Yield the text of each new token (greedy) until the end token or `max_new_tokens`."""
        import onnxruntime_genai as og

        timing = timing or Timing()
        with self.lock:
            params = og.GeneratorParams(self.model)
            params.set_search_options(do_sample=False, max_length=len(ids) + max_new_tokens)
            generator = og.Generator(self.model, params)
            if adapter is not None:
                generator.set_active_adapter(self.adapters, self.adapter_name(adapter))
            decoder = self.tokenizer.create_stream()
            timing.started = time.perf_counter()  # the clock starts at the prompt, not at loading
            generator.append_tokens(ids)
            while not generator.is_done():
                generator.generate_next_token()
                token = generator.get_next_tokens()[0]
                now = time.perf_counter()
                if timing.first_token is None:
                    timing.first_token = now - timing.started
                timing.tokens += 1
                timing.seconds = now - timing.started
                if token in self.end_tokens:
                    break  # the end-of-text token itself is not text
                yield decoder.decode(token)


def onnx_model(folder: Path) -> OnnxModel:
    """The loaded model of a folder, loaded once per process."""
    key = folder.resolve()
    with _loaded_lock:
        if key not in _loaded:
            _loaded[key] = OnnxModel(key)
        return _loaded[key]


def forget(folder: Path) -> None:
    """Drop a loaded model, before its folder is replaced."""
    with _loaded_lock:
        _loaded.pop(folder.resolve(), None)
