"""Every notebook in notebooks/ runs headless on a real kernel, shortened by the environment: runs by SLMNB_MAX_STEPS,
searches by SLMNB_MAX_TRIALS, evaluations and comparisons of a whole split by SLMNB_MAX_EVAL_ROWS.

They run in order in one folder, as a student would: 02 exports the run that 01 trained.

Widgets only give text in nbclient, so the checks run as one more cell in the same kernel, on Python objects:
the run finished, its dashboard's chart holds the points, and the saved notebook keeps the static record.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

# Whole notebooks and a browser session wait longer than the suite's 300 s default per test.
pytestmark = pytest.mark.timeout(1200)

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
CHECKS = {
    "01-quickstart.ipynb": """
from slmnb.notebook.dashboard import dashboards_for
assert run.status == "finished", run.status
assert run.step == 4, run.step
dashboard = dashboards_for(run)[0]
assert list(dashboard.figure.data[0].x) == [1, 2, 3, 4], dashboard.figure.data[0].x
assert tuned.split == "test[:8]" and len(tuned.rows) == 8, tuned.split
""",
    "02-export-and-compare.ipynb": """
assert ex.precision == "int4" and ex.adapter.name == "quickstart.onnx_adapter", ex
assert comparison.status == "done", comparison.status
assert [c.title for c in comparison.columns] == ["base model", "quickstart", "base, 4-shot"]
assert all(all(c.answers) for c in comparison.columns)
assert all(c.accuracy is not None for c in comparison.columns)
assert comparison.columns[1].agreement is not None and comparison.split == "test[:8]", comparison.split
""",
    "03-evaluate.ipynb": """
from slmnb.notebook.dashboard import dashboards_for
assert [e.model for e in result.evaluations] == ["base model", "fine-tuned"]
assert set(tuned.scores) == {"accuracy", "f1", "perplexity"}, tuned.scores
assert result.evaluation.confusion() is not None
assert notes.status == "finished" and notes.config.metrics == ["bleu", "rouge", "chrf"], notes.config.metrics
dashboard = dashboards_for(notes)[0]
assert dashboard.metrics_figure is not None and "rougeL" in [t.name for t in dashboard.metrics_figure.data]
assert comparison.status == "done" and len(comparison.test_rows) == 8
assert "prompt tokens" in comparison.trade_line() and "test[:8] rougeL (ONNX)" in str(comparison)
""",
    "04-search.ipynb": """
from slmnb.notebook.dashboard import dashboards_for
assert search.status == "finished", (search.status, search.reason)
assert len(search.trials) == 2 and all(t.state == "complete" for t in search.trials), search.trials
assert all(t.max_steps == 4 and t.run == f"tones-search-{t.number}" for t in search.trials), search.trials
assert search.best is not None and search.best_cell().startswith("%%finetune --name tones-search-best")
assert overfit.status == "finished" and regularized.status == "finished"
assert regularized.config.early_stopping_patience == 2 and dashboards_for(regularized)
""",
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("notebooks")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_headless(path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = folder
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("SLMNB_MAX_STEPS", "4")
    monkeypatch.setenv("SLMNB_MAX_TRIALS", "2")
    monkeypatch.setenv("SLMNB_MAX_EVAL_ROWS", "8")
    shutil.copy(path, workdir / path.name)
    nb = nbformat.read(workdir / path.name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CHECKS.get(path.name, "")))
    NotebookClient(nb, timeout=900, kernel_name="python3", store_widget_state=False,
                   resources={"metadata": {"path": str(workdir)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[0]["evalue"] if errors else ""
    if path.name == "01-quickstart.ipynb":
        training = next(c for c in nb.cells if c.source.startswith("%%finetune --name"))
        records = [o for o in training.outputs if "image/svg+xml" in o.get("data", {})]
        assert records, "the training cell keeps no static record of its charts"
        svg = records[0]["data"]["image/svg+xml"]
        assert "Finished at step 4/4" in svg and "<polyline" in svg
        assert_renders_without_a_kernel(nb)
    if path.name == "04-search.ipynb":  # the search's view leaves its record too: table, curves, the best cell
        searching = next(c for c in nb.cells if c.source.startswith("%%finetune --name tones-search"))
        svgs = [o["data"]["image/svg+xml"] for o in searching.outputs if "image/svg+xml" in o.get("data", {})]
        assert svgs and "every trial" in svgs[0] and "Best: trial" in svgs[0], "the search keeps no record"


def assert_renders_without_a_kernel(nb: nbformat.NotebookNode) -> None:
    """As GitHub, nbviewer or nbconvert show the saved notebook: no widget repr, the charts once, no traceback."""
    from nbconvert import HTMLExporter

    html, _ = HTMLExporter().from_notebook_node(nb)
    assert "VBox(" not in html and "FigureWidget" not in html, "a widget's Python repr shows in the saved notebook"
    assert "&lt;TrainingRun" not in html, "a stale run snapshot shows under the training cell"
    # nbconvert inlines SVG outputs as base64 images: the record is the notebook's one SVG.
    assert html.count('data-mime-type="image/svg+xml"') == 1, "the charts should show exactly once: the record"
    assert "js-plotly-plot" not in html
    assert "Traceback (most recent call last)" not in html
