"""The demo job is defined once (slmnb.demo.DEMO_CONFIG); every place that shows it to people must say the same."""

from __future__ import annotations

import json
import re
from pathlib import Path

from slmnb.config import FinetuneConfig
from slmnb.demo import DEMO_CONFIG, GENERATION_DEMO_CONFIG

ROOT = Path(__file__).resolve().parent.parent
DEMO = FinetuneConfig.from_dict(dict(DEMO_CONFIG))


def _body(cell: str) -> str:
    return cell.split("\n", 1)[1]


def test_the_quickstart_trains_the_demo_job() -> None:
    notebook = json.loads((ROOT / "notebooks" / "01-quickstart.ipynb").read_text(encoding="utf-8"))
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    finetune_cells = [c for c in cells if c.startswith("%%finetune")]
    assert len(finetune_cells) == 2
    for cell in finetune_cells:
        assert FinetuneConfig.from_text(_body(cell)) == DEMO


def test_the_evaluation_lab_trains_the_generation_demo_job() -> None:
    notebook = json.loads((ROOT / "notebooks" / "03-evaluate.ipynb").read_text(encoding="utf-8"))
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    [cell] = [c for c in cells if c.startswith("%%finetune")]
    assert FinetuneConfig.from_text(_body(cell)) == FinetuneConfig.from_dict(dict(GENERATION_DEMO_CONFIG))


def test_the_readme_shows_the_demo_job() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first = re.search(r"```yaml\n(%%finetune[^\n]*\n.*?)```", readme, re.S)
    assert first is not None
    assert FinetuneConfig.from_text(_body(first.group(1))) == DEMO


def test_the_form_opens_on_the_demo_job() -> None:
    from slmnb.data import with_default_templates
    from slmnb.notebook.form import ConfigForm

    assert ConfigForm().config == with_default_templates(DEMO)
