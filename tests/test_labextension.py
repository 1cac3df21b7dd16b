"""The JupyterLab extension's parts that Python can check without a browser (tests/test_browser.py drives the rest).

The cell templates live in labextension/src/templates.json, bundled into the extension; the fine-tune template
must stay the reference job of `make demo`, and the export cell must use options %opt accepts. The wheel built
from this checkout, installed where Node is absent, must show the extension to JupyterLab as enabled and OK.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from slmnb.config import FinetuneConfig
from slmnb.demo import DEMO_CONFIG
from slmnb.notebook.parsing import parse_cell_line

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = json.loads((ROOT / "labextension" / "src" / "templates.json").read_text(encoding="utf-8"))


def test_the_finetune_template_is_the_demo_job() -> None:
    line, *body = TEMPLATES["finetune"]
    assert line.startswith("%%finetune ")
    args = parse_cell_line(line.removeprefix("%%finetune"))
    assert args.var == "run"  # the export template falls back to {run.name}
    assert FinetuneConfig.from_text("\n".join(body)) == FinetuneConfig.from_dict(DEMO_CONFIG)


def test_the_export_template_uses_options_that_opt_compare_accepts() -> None:
    from slmnb.notebook.opt_commands import _parse
    from slmnb.options import add_compare_options

    code = [line for line in TEMPLATES["exportCompare"] if not line.startswith("#")]
    assert len(code) == 1 and code[0].startswith("view = %opt compare {RUN} ")
    words = shlex.split(code[0].removeprefix("view = %opt compare "))
    options = _parse("compare", add_compare_options, words)
    assert options["runs"] == ["{RUN}"] and options["evaluate"] and options["few_shot"] == 4


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv holding the wheel built from this checkout, as `pip install slmnb` leaves a JupyterLab user.

    The wheel is built without build isolation, with the [build-system] tools that `make setup` puts in the test
    venv (pip's own isolated build env installs jupyterlab again on every build, which was twice as slow); its
    hatch-jupyter-builder hook rebuilds the extension from labextension/ with jlpm and Node. The fresh venv then
    gets jupyterlab and the wheel with --no-deps, Node off PATH: the wheel's own dependencies (torch, transformers...)
    take minutes to install and play no part in how JupyterLab finds the extension, and without Node nothing could
    be built at install time, so what JupyterLab shows there is what the wheel ships.
    """
    work = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--check-build-dependencies",
          "--quiet", "-w", str(work / "dist"), str(ROOT)],
         env={**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])},
         hint="the [build-system] requires of pyproject.toml must be in the test venv: run `make setup`")
    (wheel,) = (work / "dist").glob("slmnb-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    no_node = _without_node(venv)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet"]
    _run([*pip, "-c", str(ROOT / "constraints.txt"), "jupyterlab"], env=no_node)
    _run([*pip, "--no-deps", str(wheel)], env=no_node)
    yield venv
    shutil.rmtree(work)  # 220 MB, which pytest would otherwise keep for its last three sessions


def _without_node(venv: Path) -> dict[str, str]:
    """This environment (pip's settings and cache included) with only the venv on PATH, and Jupyter's own folders
    (per-user extensions, settings) moved to empty ones."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("JUPYTER")}
    env.update(PATH=str(venv / "bin"), JUPYTER_CONFIG_DIR=str(venv.parent / "jupyter-config"),
               JUPYTER_DATA_DIR=str(venv.parent / "jupyter-data"))
    assert shutil.which("node", path=env["PATH"]) is None
    return env


def _run(command: list[str], env: dict[str, str] | None = None, hint: str = "") -> str:
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{shlex.join(command[:7])}... failed{hint and f' ({hint})'}:\n{output[-4000:]}"
    return output


# Building the wheel (about a minute) counts towards the first of these.
@pytest.mark.timeout(480)
def test_the_wheel_ships_the_prebuilt_extension_enabled_and_ok(wheel_venv: Path) -> None:
    """What `pip install slmnb` puts where JupyterLab looks (share/jupyter/labextensions/slmnb), and what it says."""
    listing = _run([str(wheel_venv / "bin" / "jupyter"), "labextension", "list"], env=_without_node(wheel_venv))
    listing = re.sub(r"\x1b\[[0-9;]*m", "", listing)  # its colours
    shared = wheel_venv / "share" / "jupyter" / "labextensions"
    section = listing.partition(str(shared))[2]
    assert re.search(r"^\s+slmnb v\S+ enabled OK \(python, slmnb\)$", section, re.MULTILINE), listing
    built = shared / "slmnb"
    package = json.loads((built / "package.json").read_text(encoding="utf-8"))
    assert (built / package["jupyterlab"]["_build"]["load"]).is_file()
    assert (built / "schemas" / "slmnb" / "plugin.json").is_file()
    assert package["version"] == json.loads((ROOT / "labextension" / "package.json").read_text())["version"]


@pytest.mark.timeout(480)
def test_the_wheel_says_the_version_of_package_json(wheel_venv: Path) -> None:
    """The wheel's metadata takes its version from labextension/package.json, and slmnb.__version__ reads it."""
    code = "import importlib.metadata, slmnb; print(importlib.metadata.version('slmnb'), slmnb.__version__)"
    shown = _run([str(wheel_venv / "bin" / "python"), "-c", code], env=_without_node(wheel_venv)).split()
    version = json.loads((ROOT / "labextension" / "package.json").read_text(encoding="utf-8"))["version"]
    assert shown == [version, version]


def test_the_extension_handles_the_mime_type_the_form_displays() -> None:
    """The form's Insert as cell and the extension's handler name one MIME type, or nothing is ever inserted."""
    from slmnb.notebook.form import CELL_MIME

    source = (ROOT / "labextension" / "src" / "formcell.ts").read_text(encoding="utf-8")
    assert f"export const CELL_MIME = '{CELL_MIME}';" in source
    assert "insertFormCells(notebooks)" in (ROOT / "labextension" / "src" / "index.ts").read_text(encoding="utf-8")


NODE_MODULES = ROOT / "labextension" / "node_modules"


@pytest.mark.skipif(shutil.which("node") is None or not (NODE_MODULES / "typescript").is_dir(),
                    reason="needs Node and the extension's node_modules (make setup)")
def test_the_runs_panel_shows_the_main_metric_as_the_runs_table_does() -> None:
    """labextension/src/metric.ts, compiled by the extension's own TypeScript and run by Node, picks and writes a
    run's main metric from run.json's metrics.last exactly as slmnb's runs table does."""
    from slmnb.metrics import score_text
    from slmnb.notebook.charts import main_metric

    cases = [{"accuracy": 0.91666, "f1": 0.88}, {"eval_loss": 0.3, "perplexity": 3.2, "rougeL": 0.25},
             {"bleu": math.nan, "chrf": 0.4}, {"my_score": 12.5}, {"accuracy": 1.0}, {"exact_match": 0.0},
             {"eval_perplexity": 5.0, "eval_accuracy": 0.5}, {"perplexity": 5.0}, {}]
    script = """
        const ts = require(process.argv[1] + '/typescript');
        const source = require('fs').readFileSync(process.argv[2], 'utf8');
        const js = ts.transpileModule(source, { compilerOptions: { module: ts.ModuleKind.CommonJS } }).outputText;
        const m = {};
        new Function('exports', js)(m);
        const cases = JSON.parse(process.argv[3].replace(/\\bNaN\\b/g, 'null'));
        console.log(JSON.stringify(cases.map(c => {
          const main = m.mainMetric(c);
          return main && [main[0], m.metricText(main[0], main[1])];
        })));
    """
    done = subprocess.run(["node", "-e", script, str(NODE_MODULES), str(ROOT / "labextension" / "src" / "metric.ts"),
                           json.dumps(cases)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    expected = [[main[0], score_text(*main)] if (main := main_metric(c)) else None for c in cases]
    assert json.loads(done.stdout) == expected
    assert expected[:7] == [["accuracy", "91.7%"], ["rougeL", "25.0%"], ["chrf", "40.0%"], ["my_score", "12.5"],
                            ["accuracy", "100.0%"], ["exact_match", "0.0%"], ["eval_accuracy", "50.0%"]]
