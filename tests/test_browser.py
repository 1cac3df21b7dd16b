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
    training["source"] = "".join(training["source"]).replace("max_steps: 60", "max_steps: 100000")
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
    page.wait_for_function("el => /Fine-tuning quickstart: step \\d+\\/100000 · loss/.test(el.textContent)",
                           arg=status_bar.element_handle(), timeout=15_000)
    training.scroll_into_view_if_needed()
    shot(page, "01-training")

    # Run all is blocked in run.wait(), so the kernel cannot hear the dashboard's buttons: the runs panel's Stop
    # goes through the run folder instead.
    page.evaluate("() => window.jupyterapp.commands.execute('slmnb:show-runs')")
    page.locator(".slmnb-RunsPanel-run[data-run='quickstart'] .slmnb-RunsPanel-stop").click()
    training.get_by_text("Stopped at step").wait_for(timeout=60_000)
    stopped_at = trace_points(training)
    wait_idle(page)
    assert not errors(page), errors(page)
    assert cell(page, "base, tuned = run.score").locator(".jp-OutputArea-output").inner_text().startswith("base ")
    state = json.loads((lab["folder"] / "runs" / "quickstart" / "run.json").read_text(encoding="utf-8"))
    assert state["status"] == "stopped" and state["step"] < 100000
    assert (lab["folder"] / "runs" / "quickstart" / "adapter" / "adapter_config.json").is_file()
    page.wait_for_selector(".slmnb-RunStatus", state="hidden", timeout=15_000)  # nothing is training now
    assert trace_points(training) == stopped_at, "the chart kept growing after Stop"

    # With the kernel free, the dashboard's own buttons act: Resume continues the count, Stop ends it again.
    training.get_by_role("button", name="Resume").click()
    wait_growth(page, training)
    training.get_by_role("button", name="Stop").click()
    page.wait_for_function("([el, n]) => /Stopped at step (\\d+)/.exec(el.textContent)?.[1] > n",
                           arg=[training.element_handle(), state["step"]], timeout=60_000)
    assert trace_points(training) > stopped_at
    wait_idle(page)
    training.scroll_into_view_if_needed()
    shot(page, "02-stopped")


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

    assert field("name") == "quickstart" and row.locator(".slmnb-status").inner_text() == "stopped"
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
