"""Long jobs show rows done of total, stop cleanly on the kernel's interrupt, and refuse up front what cannot work."""

from __future__ import annotations

import _thread
import threading
from pathlib import Path

import pytest

import slmnb
from slmnb.errors import ExportError


def files_under(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def trained(workdir, tiny):
    return slmnb.finetune(tiny, name="done", max_steps=4, eval_steps=4).wait()


def test_predict_and_score_show_rows_done_of_total(trained, capfd) -> None:
    rows = [f"phrase {i}" for i in range(20)]
    answers = trained.predict(rows, max_new_tokens=2)
    err = capfd.readouterr().err
    assert len(answers) == 20 and "predict: 100%" in err and "20/20 [" in err and "rows/s" in err
    result = trained.evaluate("train[:12]", metrics="accuracy", max_new_tokens=2)
    err = capfd.readouterr().err
    assert len(result.predictions) == 12 and "evaluate train[:12]: 100%" in err and "12/12 [" in err
    trained.predict(rows, max_new_tokens=2, progress=False)
    assert "rows/s" not in capfd.readouterr().err


def test_predict_answers_in_the_rows_order(trained) -> None:
    # Rows are batched by length: the answers must still come back in the order asked.
    rows = ["a", "a much longer phrase with many more words in it than the others", "b c", "d"] * 3
    together = trained.predict(rows, max_new_tokens=3, progress=False)
    alone = [trained.predict([row], max_new_tokens=3, progress=False)[0] for row in rows[:4]]
    assert together[:4] == alone


def test_the_kernels_interrupt_stops_predict_and_the_next_call_works(trained) -> None:
    rows = [f"phrase {i}" for i in range(40)]
    expected = trained.predict(rows, max_new_tokens=2, progress=False)
    before = files_under(trained.dir)
    seen: list[int] = []

    def interrupt_after_a_batch(done: int, total: int) -> None:
        seen.append(done)
        if done == 8:
            _thread.interrupt_main()  # what the kernel's interrupt does: SIGINT's KeyboardInterrupt in this thread

    with pytest.raises(KeyboardInterrupt):
        trained.predict(rows, max_new_tokens=2, progress=interrupt_after_a_batch)
    assert seen[0] == 8 and seen[-1] < 40  # stopped inside the loop, not after it
    assert files_under(trained.dir) == before  # nothing half-written in the run folder
    assert trained.predict(rows, max_new_tokens=2, progress=False) == expected


def test_an_interrupted_bar_says_so(trained, capfd) -> None:
    from slmnb.progress import progress

    with pytest.raises(KeyboardInterrupt), progress(10, "work") as bar:
        bar.update(3)
        raise KeyboardInterrupt
    err = capfd.readouterr().err
    assert "3/10" in err and "interrupted" in err


def test_release_frees_the_loaded_models_and_predict_loads_them_again(trained) -> None:
    first = trained.predict(["x"], max_new_tokens=2, progress=False)
    assert trained._predictor is not None
    trained.release()
    assert trained._predictor is None
    assert trained.predict(["x"], max_new_tokens=2, progress=False) == first


def test_a_cell_bar_keeps_its_last_state_as_text_and_html() -> None:
    from slmnb.progress import CellBar, status_line

    bar = CellBar(total=48, desc="evaluating base model", unit="rows")
    bar.update(48)
    bar.close()
    bundle = bar.bundle()
    assert bundle["text/plain"].startswith("evaluating base model: 48/48 rows [")
    assert "<progress value='48' max='48'" in bundle["text/html"]
    assert status_line("evaluating", 12, 48, 10.0).startswith("evaluating: 12/48 rows [00:10<00:30")


def test_opt_compare_and_export_of_a_live_run_are_one_sentence_and_no_view(workdir, tiny, ip) -> None:
    from IPython.core.error import UsageError

    run = slmnb.finetune(tiny, name="live", max_steps=400)
    try:
        for line in ("compare live --eval", "compare live", "export live"):
            refusal = r"^Run 'live' is still training: wait for it .* then (compare|export)\.$"
            with pytest.raises(UsageError, match=refusal) as caught:
                ip.run_line_magic("opt", line)
            assert str(caught.value).count(". ") == 0  # one sentence
        assert not [t for t in threading.enumerate() if t.name.startswith(("slmnb-compare", "slmnb-export"))]
        with pytest.raises(ExportError, match="still training"):
            slmnb.compare(run)
    finally:
        run.stop()
        run.wait()


def test_a_comparison_that_fails_later_says_failed_in_its_view_and_value(ip) -> None:
    from slmnb.notebook.opt_views import ComparisonView

    def prepare(phase):
        phase("reading the adapter")
        raise ExportError("The export could not write onnx (no space left on device): make room on the disk.")

    view = ComparisonView(prepare, evaluate=False)
    with pytest.raises(ExportError):
        view.wait()
    assert repr(view).startswith("<comparison failed: The export could not write onnx")
    assert view._render()[1].startswith("failed: The export could not write")
