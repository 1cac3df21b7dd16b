"""The JupyterLab extension's parts that Python can check without a browser (tests/test_browser.py drives the rest).

The cell templates live in labextension/src/templates.json, bundled into the extension; the fine-tune template
must stay the reference job of `make demo`, and the export cell must use options %opt accepts.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

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


def test_the_wheel_ships_the_prebuilt_extension() -> None:
    """What `pip install slmnb` puts where JupyterLab looks: share/jupyter/labextensions/slmnb."""
    import slmnb

    (paths,) = slmnb._jupyter_labextension_paths()
    built = Path(slmnb.__file__).parent / paths["src"]
    package = json.loads((built / "package.json").read_text(encoding="utf-8"))
    assert package["name"] == paths["dest"] == "slmnb"
    remote = package["jupyterlab"]["_build"]["load"]
    assert (built / remote).is_file()
    assert (built / "schemas" / "slmnb" / "plugin.json").is_file()
