"""The whole flow in a real browser: JupyterLab with the slmnb extension, driven by Playwright in Debian's chromium.

The test starts everything itself: a JupyterLab server on a temp copy of notebooks/ (isolated config, runtime,
settings and IPython folders; SLMNB_MODEL=tiny-llama so training takes seconds), and a headless chromium with a
fresh profile. The quickstart's training cell gets a step budget it never reaches, so the test, not the clock,
decides when the run ends: it watches the live chart grow, then presses Stop. Screenshots go to
test-artifacts/browser/.

The tests share one server and one page and run in file order, as a user would go through the notebooks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Whole notebooks and a browser session wait longer than the suite's 300 s default per test.
pytestmark = pytest.mark.timeout(1200)

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "browser"
TOKEN = "slmnb-browser-test"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]
TEMPLATES = json.loads((ROOT / "labextension" / "src" / "templates.json").read_text(encoding="utf-8"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A JupyterLab server on a copy of notebooks/, with the quickstart's run made long enough to stop by hand."""
    base = tmp_path_factory.mktemp("lab")
    notebooks = base / "notebooks"
    shutil.copytree(ROOT / "notebooks", notebooks)
    quickstart = notebooks / "01-quickstart.ipynb"
    nb = json.loads(quickstart.read_text(encoding="utf-8"))
    training = next(c for c in nb["cells"] if "".join(c["source"]).startswith("%%finetune --name"))
    # Trains until a test stops it, evaluating often: a run stopped early still has perplexity points to show.
    source, steps = re.subn(r"(?m)^max_steps: \d+$", "max_steps: 100000", "".join(training["source"]))
    source, evals = re.subn(r"(?m)^eval_steps: \d+$", "eval_steps: 2", source)
    assert steps == evals == 1, "the quickstart's training cell no longer sets max_steps and eval_steps"
    training["source"] = source
    quickstart.write_text(json.dumps(nb), encoding="utf-8")

    env = {**os.environ, "SLMNB_MODEL": "tiny-llama", "HF_HUB_OFFLINE": "1"}
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR",
                 "IPYTHONDIR"):
        env[name] = str(base / name.lower())
    # Every cell stays in the page (JupyterLab may otherwise detach cells scrolled out of view).
    settings = base / "jupyterlab_settings_dir" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}', encoding="utf-8")
    notifications = base / "jupyterlab_settings_dir" / "@jupyterlab" / "apputils-extension"
    notifications.mkdir(parents=True)
    (notifications / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}', encoding="utf-8")
    port = free_port()
    log = (base / "jupyter.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         f"--ServerApp.token={TOKEN}", "--ServerApp.root_dir=" + str(notebooks),
         "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=notebooks, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start; see {log.name}") from None
                time.sleep(0.5)
        yield {"url": url, "folder": notebooks, "log": Path(log.name)}
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def page(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("The browser test needs Debian's chromium: apt-get install chromium (.ci/run does).")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium")), executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 900})
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(60_000)
        try:
            yield page
        finally:
            context.close()


@pytest.fixture(autouse=True)
def shot_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed and "page" in request.fixturenames:
        shot(request.getfixturevalue("page"), f"failed-{request.node.name}")


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def open_notebook(page: Any, lab: dict[str, Any], name: str) -> None:
    page.goto(f"{lab['url']}/lab/tree/{name}?token={TOKEN}")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           f" && window.jupyterapp.shell.currentWidget.context?.path === {name!r}")
    # The kernel must be up before run-all, or the first cells queue behind its start.
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.session?.kernel?.status"
                           " === 'idle'", timeout=120_000)


def run_all(page: Any) -> None:
    # Not awaited: the command's promise settles only when the last cell has run.
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")


def cell(page: Any, starts_with: str) -> Any:
    """The notebook cell whose source starts with the given text."""
    index = page.evaluate("""(start) => {
        const cells = window.jupyterapp.shell.currentWidget.content.widgets;
        return cells.findIndex(c => c.model.sharedModel.getSource().startsWith(start));
    }""", starts_with)
    assert index >= 0, f"no cell starts with {starts_with!r}"
    return cells(page).nth(index)


def cells(page: Any) -> Any:
    """The cells of the current notebook (other open notebooks keep theirs in the page too)."""
    panel = page.evaluate("() => window.jupyterapp.shell.currentWidget.id")
    return page.locator(f"[id='{panel}'] .jp-Cell")


def wait_idle(page: Any, timeout: float = 300) -> None:
    """Until every cell has run: no cell shows [*] and the kernel is idle."""
    page.wait_for_function("""() => {
        const panel = window.jupyterapp.shell.currentWidget;
        const pending = panel.content.widgets.some(
            c => c.model.type === 'code' && c.promptNode?.textContent.includes('*'));
        return !pending && panel.sessionContext.session?.kernel?.status === 'idle';
    }""", timeout=timeout * 1000)


def errors(page: Any) -> list[str]:
    return page.evaluate("""() => window.jupyterapp.shell.currentWidget.content.widgets.flatMap(c =>
        c.model.type === 'code' ? c.model.outputs.toJSON().filter(o => o.output_type === 'error')
                                        .map(o => o.ename + ': ' + o.evalue) : [])""")


def tracebacks(page: Any) -> list[str]:
    """Outputs of the current notebook that show a Python traceback: error outputs, or one printed as text."""
    return page.evaluate("""() => window.jupyterapp.shell.currentWidget.content.widgets.flatMap(c =>
        c.model.type === 'code' ? c.model.outputs.toJSON().filter(o => o.output_type === 'error'
            || JSON.stringify(o.text ?? o.data ?? '').includes('Traceback (most recent call last)'))
            .map(o => JSON.stringify(o).slice(0, 300)) : [])""")


def charts_shown(training: Any) -> bool:
    """Whether the live plotly charts are visible under the cell (the ended run shows its static record instead)."""
    return training.locator(".js-plotly-plot").first.is_visible()


def records(training: Any) -> int:
    """Static SVG records of the charts under the cell."""
    return training.locator(".jp-RenderedSVG").count()


def overflow(training: Any) -> dict[str, Any]:
    """How far the dashboard's charts overflow the cell's output area (cut off behind a horizontal scrollbar)."""
    return training.locator(".js-plotly-plot").first.evaluate("""gd => {
        const area = gd.closest('.jp-OutputArea-output');
        const over = Math.max(gd.getBoundingClientRect().right - area.getBoundingClientRect().right,
                              area.scrollWidth - area.clientWidth);
        return { over, chart: gd._fullLayout?.width, area: area.clientWidth, responsive: gd._context?.responsive };
    }""")


def trace_points(training: Any) -> int:
    """Points in the loss chart's train trace, read from plotly's own graph div in the page."""
    return training.locator(".js-plotly-plot").first.evaluate(
        "gd => (gd.data && gd.data[0].x) ? gd.data[0].x.length : 0")


def plot(training: Any) -> Any:
    return training.locator(".js-plotly-plot").first.element_handle()


def wait_growth(page: Any, training: Any) -> None:
    """Until the loss chart's train trace has gained points since now (it has at least two)."""
    page.wait_for_function("el => el.data && el.data[0].x && el.data[0].x.length >= 2", arg=plot(training),
                           timeout=180_000)
    before = trace_points(training)
    page.wait_for_function("([el, n]) => el.data[0].x.length > n", arg=[plot(training), before], timeout=60_000)


def test_quickstart_trains_live_and_stops(page: Any, lab: dict[str, Any]) -> None:
    open_notebook(page, lab, "01-quickstart.ipynb")
    run_all(page)
    training = cell(page, "%%finetune --name")
    training.locator(".js-plotly-plot").first.wait_for(timeout=180_000)
    wait_growth(page, training)
    status_bar = page.locator(".slmnb-RunStatus")
    page.wait_for_function("el => /Fine-tuning quickstart: step \\d+\\/100000 · loss [\\d.]+ \\(last step\\)/"
                           ".test(el.textContent)", arg=status_bar.element_handle(), timeout=15_000)
    # Run all is blocked in run.wait(), so the kernel would hear the dashboard's buttons only after it: they are
    # off, and the hint says what acts now.
    stop_button = training.get_by_role("button", name="Stop")
    page.wait_for_function("el => el.disabled", arg=stop_button.element_handle(), timeout=15_000)
    assert training.get_by_role("button", name="Pause").is_disabled()
    hint = training.locator(".slmnb-hint").first.inner_text()
    assert "run.wait()" in hint and "Fine-tuning runs panel's Stop acts at once" in hint, hint
    training.scroll_into_view_if_needed()
    shot(page, "01-training")

    # The runs panel's Stop goes through the run folder instead.
    page.evaluate("() => window.jupyterapp.commands.execute('slmnb:show-runs')")
    page.locator(".slmnb-RunsPanel-run[data-run='quickstart'] .slmnb-RunsPanel-stop").click()
    training.get_by_text("Stopped at step").wait_for(timeout=60_000)
    stopped_at = trace_points(training)
    wait_idle(page)
    assert not errors(page), errors(page)
    assert not tracebacks(page), tracebacks(page)
    printed = cell(page, "base = run.evaluate(").locator("[data-mime-type='application/vnd.jupyter.stdout']")
    assert printed.inner_text().startswith("base ")
    # The run ended: its static record replaces the live charts (the same charts twice otherwise), and the
    # buttons are back with the wait over.
    page.wait_for_function("el => !el.disabled", arg=training.get_by_role("button", name="Resume").element_handle(),
                           timeout=15_000)
    assert records(training) == 1 and not charts_shown(training)
    assert training.locator(".slmnb-hint").count() == 0
    state = json.loads((lab["folder"] / "runs" / "quickstart" / "run.json").read_text(encoding="utf-8"))
    assert state["status"] == "stopped" and state["step"] < 100000
    assert (lab["folder"] / "runs" / "quickstart" / "adapter" / "adapter_config.json").is_file()
    page.wait_for_selector(".slmnb-RunStatus", state="hidden", timeout=15_000)  # nothing is training now
    assert trace_points(training) == stopped_at, "the chart kept growing after Stop"

    # With the kernel free, the dashboard's own buttons act: Resume continues the count, Stop ends it again.
    training.get_by_role("button", name="Resume").click()
    wait_growth(page, training)
    assert charts_shown(training) and records(training) == 0  # live again: the record is cleared
    training.get_by_role("button", name="Stop").click()
    page.wait_for_function("([el, n]) => /Stopped at step (\\d+)/.exec(el.textContent)?.[1] > n",
                           arg=[training.element_handle(), state["step"]], timeout=60_000)
    assert trace_points(training) > stopped_at
    wait_idle(page)
    page.wait_for_function("el => el.querySelectorAll('.jp-RenderedSVG').length === 1",
                           arg=training.element_handle(), timeout=15_000)
    assert not charts_shown(training)
    training.scroll_into_view_if_needed()
    shot(page, "02-stopped")


def test_saved_quickstart_renders_without_a_kernel(page: Any, lab: dict[str, Any]) -> None:
    """As GitHub, nbviewer or nbconvert show the saved notebook: no widget repr, the charts once (the SVG)."""
    from nbconvert import HTMLExporter

    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty")
    html, _ = HTMLExporter().from_filename(str(lab["folder"] / "01-quickstart.ipynb"))
    static = ARTIFACTS / "01-quickstart.html"
    static.write_text(html, encoding="utf-8")
    viewer = page.context.new_page()
    try:
        viewer.goto(static.as_uri())
        text = viewer.locator("body").inner_text()
        assert "VBox(" not in text and "<TrainingRun" not in text, "a widget or run repr shows without a kernel"
        assert "Traceback" not in text
        training = viewer.locator(".jp-Cell").filter(has_text="%%finetune --name quickstart")
        assert training.locator(".jp-RenderedSVG img").count() == 1  # the charts once: the record
        assert training.locator(".jp-RenderedSVG img").evaluate("img => img.naturalWidth") > 0
        assert training.locator(".js-plotly-plot").count() == 0
        training.scroll_into_view_if_needed()
        viewer.screenshot(path=str(ARTIFACTS / "02-saved-without-kernel.png"))
    finally:
        viewer.close()


def test_reloaded_page_shows_the_live_charts_and_fits_a_narrow_pane(page: Any, lab: dict[str, Any]) -> None:
    """A page reloaded in a narrow window while the kernel trains on: the charts come back from the kernel's
    widget state with their points (plotly sends points as deltas), and fit the cell's width."""
    training = cell(page, "%%finetune --name")
    training.get_by_role("button", name="Resume").click()
    wait_growth(page, training)
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty")
    page.set_viewport_size({"width": 760, "height": 900})
    try:
        training = reopen_until_live(page, lab)
        training.scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        shot(page, "03-reloaded-narrow")
        measured = overflow(training)
        assert measured["over"] <= 1, f"the charts overflow a narrow pane: {measured}"
    finally:
        page.set_viewport_size({"width": 1400, "height": 900})
    training.get_by_role("button", name="Stop").click()
    training.get_by_text("Stopped at step").wait_for(timeout=60_000)
    wait_idle(page)
    # The reloaded page cannot receive the cell's record (its display id is gone with the old page): it keeps the
    # live charts rather than show neither.
    assert charts_shown(training) and trace_points(training) > 2


def reopen_until_live(page: Any, lab: dict[str, Any]) -> Any:
    """Reopen the quickstart and wait for its live chart to grow again; the training cell.

    Known flake, not understood yet: on 2026-12-01, in 4 of 7 runs of this file (one on a busy machine), the
    reopened page's chart stayed frozen while the run trained on (its metrics.jsonl gained a step every second); once
    the server log also filled with "Cannot handle comm_msg ...: Unknown subshell_id" (JupyterLab 4.6, ipykernel
    7.4). Opening the page again is what a user does, so the test does it once and says so; a chart still frozen
    then fails the test. Once (2026-12-02, the whole suite on a slow machine; this file alone passed right after)
    the reopened page showed no chart at all within 60 s: that too gets the second opening.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    for attempt in (1, 2):
        open_notebook(page, lab, "01-quickstart.ipynb")
        training = cell(page, "%%finetune --name")
        try:
            training.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
            page.wait_for_function("el => el.data && el.data[0].x && el.data[0].x.length >= 2",
                                   arg=plot(training), timeout=30_000)
            wait_growth(page, training)
            return training
        except PlaywrightTimeoutError:
            if attempt == 2:
                raise
            print("the reopened page's chart did not come back live: opening it again (see reopen_until_live)")
    raise AssertionError("unreachable")


def test_finetune_cells_are_yaml_with_marked_magic_line(page: Any) -> None:
    training = cell(page, "%%finetune --name")
    content = training.locator(".cm-content")
    assert content.get_attribute("data-language") == "yaml"
    assert cell(page, "print(run.status").locator(".cm-content").get_attribute("data-language") == "python"
    magic = training.locator(".cm-slmnb-magicLine")
    assert magic.count() == 1 and magic.inner_text().startswith("%%finetune --name")
    # YAML highlighting: keys and numbers get their own colours, unlike plain text.
    colours = training.evaluate("""cell => {
        const colour = text => {
            for (const span of cell.querySelectorAll('.cm-line span')) {
                if (span.textContent.trim() === text) { return getComputedStyle(span).color; }
            }
            return null;
        };
        const plain = getComputedStyle(cell.querySelector('.cm-line')).color;
        return { key: colour('method'), value: colour('16'), plain };
    }""")
    assert colours["key"] and colours["value"], colours
    assert len({colours["key"], colours["value"], colours["plain"]}) == 3, colours
    assert cell(page, "%load_ext slmnb").locator(".cm-content").get_attribute("data-language") == "python"


def test_side_panel_lists_the_run_and_opens_it(page: Any) -> None:
    page.evaluate("() => window.jupyterapp.commands.execute('slmnb:show-runs')")
    row = page.locator(".slmnb-RunsPanel-run[data-run='quickstart']")
    row.wait_for(timeout=15_000)

    def field(name: str) -> str:
        return row.locator(f".slmnb-RunsPanel-{name}").inner_text()

    # The panel polls run.json: a stop asked for just before may still read "stopping" for a poll or two.
    row.locator(".slmnb-status").filter(has_text=re.compile(r"^stopped$")).wait_for(timeout=15_000)
    assert field("name") == "quickstart"
    step, _, max_steps = row.locator(".slmnb-RunsPanel-steps").get_attribute("data-value").partition("/")
    assert int(step) > 2 and max_steps == "100000", field("steps")
    assert float(row.locator(".slmnb-RunsPanel-loss").get_attribute("data-value")) > 0
    assert float(row.locator(".slmnb-RunsPanel-ppl").get_attribute("data-value")) > 1
    assert row.locator(".slmnb-RunsPanel-stop").count() == 0  # only a live run has one
    row.click()
    view = page.locator(".slmnb-RunView")
    view.wait_for(timeout=15_000)
    view.locator("polyline[data-series='train']").wait_for(timeout=15_000)
    assert "status stopped" in view.locator(".slmnb-RunView-summary").inner_text()
    page.wait_for_function("() => [...window.jupyterapp.shell.widgets('main')]"
                           ".some(w => w.context?.path === 'runs/quickstart/config.yaml')")
    shot(page, "03-runs-panel")


def test_insert_cell_commands(page: Any) -> None:
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:open', {path: '01-quickstart.ipynb'})")
    count = cells(page).count()
    page.evaluate("() => window.jupyterapp.commands.execute('slmnb:insert-finetune-cell')")
    page.evaluate("() => window.jupyterapp.commands.execute('slmnb:insert-export-cell')")
    assert cells(page).count() == count + 2  # %load_ext is there already
    sources = page.evaluate("() => window.jupyterapp.shell.currentWidget.content.widgets"
                            ".map(c => c.model.sharedModel.getSource())")
    finetune = "\n".join(TEMPLATES["finetune"])
    assert finetune in sources
    # The export cell names the run that just ended: the one in the side panel.
    export = sources[sources.index(finetune) + 1]
    assert "view = %opt compare quickstart --few-shot 4 --eval --max_new_tokens 16" in export
    inserted = cell(page, "%%finetune -o run").locator(".cm-content")
    assert inserted.get_attribute("data-language") == "yaml"
    # The language follows edits of the first line.
    edit = """([from, to]) => {
        const c = window.jupyterapp.shell.currentWidget.content.widgets.find(
            c => c.model.sharedModel.getSource().startsWith(from));
        c.model.sharedModel.setSource(to + c.model.sharedModel.getSource().slice(from.length));
    }"""
    page.evaluate(edit, ["%%finetune -o run", "# %%finetune -o run"])
    page.wait_for_function("el => el.dataset.language === 'python'", arg=inserted.element_handle())
    page.evaluate(edit, ["# %%finetune -o run", "%%finetune -o run"])
    page.wait_for_function("el => el.dataset.language === 'yaml'", arg=inserted.element_handle())
    toolbar = page.locator(".jp-NotebookPanel-toolbar [data-jp-item-name='slmnb-insert-finetune']")
    assert toolbar.count() == 1
    page.locator(".lm-MenuBar-item", has_text="Fine-tune").click()
    assert page.locator(".lm-Menu-item", has_text="Insert export and compare cell").count() == 1
    page.keyboard.press("Escape")


SEARCH = {"model_name_or_path": "tiny-llama", "data_name": "tones", "max_steps": 4, "eval_steps": 2,
          "search_space": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
          "search_strategy": {"num_trials": 2, "seed": 0}}


def kernel_runs(page: Any, code: str) -> None:
    """Run code in the quickstart's kernel (warm: torch is loaded) without a cell, and wait for its reply."""
    reply = page.evaluate("""async (code) => {
        const panel = [...window.jupyterapp.shell.widgets('main')]
            .find(w => w.context?.path === '01-quickstart.ipynb');
        const done = await panel.sessionContext.session.kernel.requestExecute({ code, store_history: false }).done;
        return done.content;
    }""", code)
    assert reply["status"] == "ok", f"{reply.get('ename')}: {reply.get('evalue')}"


def test_side_panel_lists_a_search_with_its_trials_nested_under_it(page: Any, lab: dict[str, Any]) -> None:
    """A real 2-trial search in the kernel: one search row (Stop while it is live), its trial runs under it."""
    page.evaluate("() => window.jupyterapp.commands.execute('slmnb:show-runs')")
    # Held at once, so the panel surely sees it live: paused before its first trial, or during it.
    kernel_runs(page, f"import slmnb\ntune = slmnb.search({SEARCH!r}, name='tune', root='runs')\ntune.pause()")
    page.evaluate("() => window.jupyterapp.commands.execute('slmnb:show-runs')")  # polls now, not in 5 s
    search = page.locator(".slmnb-RunsPanel-search[data-search='tune']")
    # The search's own Stop, in its top line: paused during its first trial, that trial's row has a Stop too.
    search.locator(":scope > .slmnb-RunsPanel-top > .slmnb-RunsPanel-stop").wait_for(timeout=15_000)
    assert search.get_attribute("data-status") in ("running", "paused")
    shot(page, "03-search-live")

    kernel_runs(page, "tune.resume().wait()")
    page.locator(".slmnb-RunsPanel-search[data-search='tune'][data-status='finished']").wait_for(timeout=15_000)
    state = json.loads((lab["folder"] / "runs" / "tune" / "search.json").read_text(encoding="utf-8"))
    assert search.locator(".slmnb-RunsPanel-stop").count() == 0
    assert search.locator(".slmnb-RunsPanel-count").inner_text() == "2/2 trials"
    best = search.locator(".slmnb-RunsPanel-best-value")
    assert best.get_attribute("data-objective") == "eval_loss"
    assert float(best.get_attribute("data-value")) == pytest.approx(state["best"]["value"], rel=1e-3)
    trials = search.locator(".slmnb-RunsPanel-trials > .slmnb-RunsPanel-run")
    assert trials.evaluate_all("rows => rows.map(r => r.dataset.run)") == ["tune-0", "tune-1"]
    assert trials.locator(".slmnb-RunsPanel-trial").all_inner_texts() == [t["state"] for t in state["trials"]]
    star = search.locator(".slmnb-RunsPanel-best")
    assert star.count() == 1 and star.get_attribute("title") == "best trial"
    assert search.locator(f".slmnb-RunsPanel-run[data-run='{state['best']['run']}'] .slmnb-RunsPanel-best").count()
    # Neither the trials nor the search's own folder are listed again as runs of their own.
    assert page.locator(".slmnb-RunsPanel > .slmnb-RunsPanel-list > [data-run^='tune']").count() == 0
    search.scroll_into_view_if_needed()
    shot(page, "03-search-finished")
    trials.last.click()  # a trial is a run: its row opens it
    page.wait_for_function("() => [...window.jupyterapp.shell.widgets('main')]"
                           ".some(w => w.context?.path === 'runs/tune-1/config.yaml')")


def test_compare_view_fills_base_and_finetuned_columns(page: Any, lab: dict[str, Any]) -> None:
    open_notebook(page, lab, "02-export-and-compare.ipynb")
    run_all(page)
    compare = cell(page, "view = %opt compare")
    table = compare.locator(".jp-OutputArea-output table").first
    table.wait_for(timeout=240_000)
    read = """table => {
        const head = [...table.querySelectorAll('tr')][0];
        const titles = [...head.cells].map(c => c.textContent.trim());
        const rows = [...table.querySelectorAll('tr')].slice(1).map(r => [...r.cells].map(c => c.textContent.trim()));
        return { titles, rows };
    }"""
    deadline = time.monotonic() + 300
    while True:
        seen = table.evaluate(read)
        titles, rows = seen["titles"], seen["rows"]
        base, tuned = titles.index("base model"), titles.index("quickstart")
        answers = [r for r in rows if not r[0].startswith(("tokens/s", "test accuracy", "ONNX agrees"))]
        if answers and all(r[base] and r[tuned] for r in answers):
            break
        assert time.monotonic() < deadline, f"the compare view did not fill its columns: {seen}"
        time.sleep(1)
    compare.scroll_into_view_if_needed()
    shot(page, "04-compare")
    wait_idle(page, timeout=600)
    assert not errors(page), errors(page)
    rows = table.evaluate(read)["rows"]
    accuracy = next(r for r in rows if r[0] == "test accuracy (ONNX)")
    assert accuracy[base].endswith("%") and accuracy[tuned].endswith("%"), rows
    compare.scroll_into_view_if_needed()
    shot(page, "05-compared")


def test_the_forms_insert_as_cell_inserts_the_cell_below_the_form_once(page: Any, lab: dict[str, Any]) -> None:
    """slmnb.form()'s "Insert as cell" once only printed "Copy this into a new cell": nothing handled its output.

    A notebook of its own, so this needs no earlier test: the form's cell, the button, and the cell it inserts
    directly below, once, which then runs as a valid config with --dry-run. A reload with the kernel still running
    shows the form again from the widget state, and inserts nothing more.
    """
    from slmnb.config import FinetuneConfig
    from slmnb.data import with_default_templates
    from slmnb.demo import DEMO_CONFIG

    name = "form.ipynb"
    notebook = {"nbformat": 4, "nbformat_minor": 5, "cells": [
        {"cell_type": "code", "id": "form", "metadata": {}, "execution_count": None, "outputs": [],
         "source": "import slmnb\nslmnb.form()"},
        {"cell_type": "markdown", "id": "after", "metadata": {}, "source": "The end."}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}
    (lab["folder"] / name).write_text(json.dumps(notebook), encoding="utf-8")
    open_notebook(page, lab, name)
    run_all(page)
    form = cell(page, "import slmnb")
    form.get_by_role("button", name="Insert as cell").click()
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.content.widgets.length === 3")
    sources = page.evaluate("() => window.jupyterapp.shell.currentWidget.content.widgets"
                            ".map(c => c.model.sharedModel.getSource())")
    assert sources[0].startswith("import slmnb") and sources[2] == "The end.", sources
    line, _, body = sources[1].partition("\n")
    assert line == "%%finetune"
    assert FinetuneConfig.from_text(body) == with_default_templates(FinetuneConfig.from_dict(DEMO_CONFIG))
    assert body.strip() in form.locator("pre").inner_text()  # the text the form shows
    note = form.locator(".slmnb-InsertedNote")
    assert note.inner_text().startswith("Inserted the %%finetune cell below") and "Copy this" not in form.inner_text()
    page.wait_for_timeout(1000)  # a second insertion, if any, would come from the same message
    assert page.evaluate("() => window.jupyterapp.shell.currentWidget.content.widgets.length") == 3
    form.scroll_into_view_if_needed()
    shot(page, "06-form-inserted")

    # A likely mistake is kept as typed, warned about in amber beside its box, and Start stays on.
    form.get_by_label("learning_rate", exact=True).fill("5")
    warning = form.locator(".slmnb-form-warning", has_text="learning_rate 5 is far above what LoRA uses")
    warning.wait_for(timeout=15_000)
    assert warning.evaluate("el => getComputedStyle(el).color") == "rgb(161, 92, 0)"
    assert form.get_by_role("button", name="Start").is_enabled()
    assert "learning_rate: 5.0" in form.locator("pre").inner_text()

    # The inserted cell is valid as it stands: --dry-run resolves it without training.
    page.evaluate("""() => {
        const notebook = window.jupyterapp.shell.currentWidget.content;
        const inserted = notebook.widgets[1].model.sharedModel;
        inserted.setSource(inserted.getSource().replace('%%finetune', '%%finetune --dry-run'));
        notebook.activeCellIndex = 1;
        window.jupyterapp.commands.execute('notebook:run-cell');
    }""")
    dry_run = cell(page, "%%finetune --dry-run")
    dry_run.get_by_text("Resolved config").wait_for(timeout=120_000)
    wait_idle(page)
    assert not errors(page), errors(page)

    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty")
    open_notebook(page, lab, name)  # a reload of the page, the kernel still running
    cell(page, "import slmnb").get_by_role("button", name="Insert as cell").wait_for(timeout=60_000)
    page.wait_for_timeout(2000)
    assert page.evaluate("() => window.jupyterapp.shell.currentWidget.content.widgets.length") == 3
