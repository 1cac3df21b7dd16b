"""Tests run offline on the tiny model, each in its own working folder so runs/ never leaks between tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Built models are cached across test sessions (the Makefile shares the cache with `make demo`).
os.environ.setdefault("SLMNB_HOME", str(ROOT / ".cache" / "slmnb"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", str(ROOT / ".cache" / "huggingface"))
os.environ["TOKENIZERS_PARALLELISM"] = "false"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh current folder: runs go to ./runs inside it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tiny() -> dict:
    """A small learnable task on the tiny model: every phrase answers its label."""
    rows = [{"phrase": f"sample phrase number {i}", "tone": "Joy"} for i in range(48)]
    return {
        "model_name_or_path": "tiny-llama",
        "rows": rows,
        "prompt_template": "{phrase}",
        "response_template": "{tone}",
        "max_steps": 16,
        "learning_rate": 5e-3,
        "per_device_train_batch_size": 8,
        "eval_steps": 4,
        "precision": "fp32",
    }


@pytest.fixture(scope="session")
def ip():
    """An IPython test shell with slmnb loaded, as a notebook user has it after `%load_ext slmnb`."""
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython()
    shell.run_line_magic("load_ext", "slmnb")
    return shell


class RecordingComm:
    """Stands in for a kernel comm: widgets send their state here, and tests count the messages."""

    comm_id = "recording"
    kernel = "a kernel"

    def __init__(self, **kwargs) -> None:
        self.messages: list = []

    def open(self, *args, **kwargs) -> None:
        pass

    def on_msg(self, *args, **kwargs) -> None:
        pass

    def send(self, data=None, metadata=None, buffers=None) -> None:
        self.messages.append(data)

    def close(self, *args, **kwargs) -> None:
        pass


@pytest.fixture
def comms(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every widget made in the test gets a RecordingComm; the list holds them in creation order."""
    import comm

    made: list = []

    def create_comm(**kwargs):
        made.append(RecordingComm(**kwargs))
        return made[-1]

    monkeypatch.setattr(comm, "create_comm", create_comm)
    return made


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so a fixture can tell whether its test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)
