"""slmnb.form(): an ipywidgets form that builds the same FinetuneConfig as a %%finetune cell.

It shows, live, the equivalent cell text, flags each invalid field beside it with the config's own sentence, and
starts the run with its dashboard in place. Fields the form has no widget for are kept from the config it was
opened with, so form -> config -> cell text -> config loses nothing.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from slmnb.config import METHODS, PRECISIONS, FinetuneConfig, check_field, load_config
from slmnb.errors import ConfigError, SlmnbError
from slmnb.models import EMBEDDED_MODEL, TINY_MODEL

CELL_MIME = "application/vnd.slmnb.cell+json"  # the lab extension turns this output into a new cell
TEMPLATES = ("prompt_template", "response_template", "text_template")
PREVIEW_ROWS = 3


def form(config: FinetuneConfig | dict[str, Any] | str | None = None) -> ConfigForm:
    """A config form, filled from a config (or the demo's defaults on the embedded model and bundled tones)."""
    return ConfigForm(load_config(config) if config is not None else None)


class ConfigForm:
    def __init__(self, config: FinetuneConfig | None = None) -> None:
        import ipywidgets as w

        from slmnb.data import with_default_templates
        from slmnb.datafiles import bundled_datasets
        from slmnb.demo import DEMO_CONFIG

        self._base = with_default_templates(config or FinetuneConfig.from_dict(dict(DEMO_CONFIG)))
        self._errors: dict[str, str] = {}
        self.run: Any = None
        b = self._base
        data = b.data_name or (",".join(b.data_files) if b.data_files else "")
        text = {"layout": {"width": "420px"}, "style": {"description_width": "150px"}}
        self.fields: dict[str, Any] = {
            "model_name_or_path": w.Combobox(value=b.model_name_or_path, options=[EMBEDDED_MODEL, TINY_MODEL],
                                             description="model", ensure_option=False, **text),
            "method": w.ToggleButtons(value=b.method, options=list(METHODS), description="method",
                                      style={"description_width": "150px"}),
            "data": w.Combobox(value=data, options=bundled_datasets(), description="data (name or file)",
                               ensure_option=False, **text),
            "prompt_template": w.Textarea(value=b.prompt_template or "", description="prompt_template", **text),
            "response_template": w.Text(value=b.response_template or "", description="response_template", **text),
            "text_template": w.Textarea(value=b.text_template or "", description="text_template", **text),
            "use_chat_template": w.Checkbox(value=b.use_chat_template, description="use_chat_template", indent=True),
            "lora_r": w.IntText(value=b.lora_r, description="lora_r", **text),
            "lora_alpha": w.IntText(value=b.lora_alpha, description="lora_alpha", **text),
            "lora_dropout": w.FloatSlider(value=b.lora_dropout, min=0.0, max=0.5, step=0.01,
                                          description="lora_dropout", **text),
            "learning_rate": w.FloatLogSlider(value=b.learning_rate, base=10, min=-6, max=-2, step=0.05,
                                              readout_format=".1e", description="learning_rate", **text),
            "max_steps": w.IntText(value=b.max_steps or 0, description="max_steps (0: epochs)", **text),
            "per_device_train_batch_size": w.IntText(value=b.per_device_train_batch_size, description="batch size",
                                                     **text),
            "precision": w.Dropdown(value=b.precision, options=list(PRECISIONS), description="precision", **text),
            "name": w.Text(value=b.name or "", description="run name", placeholder="automatic", **text),
        }
        self.flags = {key: w.HTML() for key in self.fields}
        self.columns = w.HBox()
        self.insert_into = w.Dropdown(options=list(TEMPLATES), value="prompt_template", description="insert into",
                                      layout={"width": "260px"})
        self.preview = w.HTML()
        self.problem = w.HTML()
        self.cell = w.HTML()
        self.start_button = w.Button(description="Start", button_style="primary", icon="play")
        self.insert_button = w.Button(description="Insert as cell", icon="plus",
                                      tooltip="Insert the %%finetune cell below (JupyterLab with the slmnb extension)")
        self.output = w.Output()
        self.start_button.on_click(lambda _: self.start())
        self.insert_button.on_click(lambda _: self._insert_cell())
        for key, widget in self.fields.items():
            widget.observe(lambda _change, key=key: self._changed(key), names="value")
        rows = [w.HBox([widget, self.flags[key]]) for key, widget in self.fields.items()]
        data_at = list(self.fields).index("data") + 1
        rows[data_at:data_at] = [self.preview, w.HBox([w.HTML("columns:&nbsp;"), self.columns, self.insert_into])]
        self.widget = w.VBox([*rows, self.problem, self.cell, w.HBox([self.start_button, self.insert_button]),
                              self.output])
        self._changed("data")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # --- values -> config ---------------------------------------------------------------------------

    def values(self) -> dict[str, Any]:
        """The config fields the form sets, as the user left them (not yet checked)."""
        out = {key: widget.value for key, widget in self.fields.items() if key != "data"}
        for key in (*TEMPLATES, "name"):
            out[key] = out[key] or None
        out["max_steps"] = out["max_steps"] or None
        data = self.fields["data"].value.strip()
        from slmnb.datafiles import bundled_datasets

        is_name = data in bundled_datasets() or Path(data).expanduser().is_dir()
        out["data_name"] = data if data and is_name else None
        out["data_files"] = data if data and not is_name else None
        return out

    @property
    def config(self) -> FinetuneConfig:
        """The FinetuneConfig the form describes; raises the ConfigError of the first problem."""
        values = self.values()
        if not (values["data_name"] or values["data_files"]) and self._base.rows:
            return self._base.replace(**values)  # inline rows from the cell it was opened with
        return self._base.replace(rows=None, **values)

    @property
    def cell_text(self) -> str:
        """The %%finetune cell that builds the same config."""
        # The model is always written out: the cell then means the same whatever %config default_model says.
        return "%%finetune\n" + self.config.to_yaml(include_defaults=False, always=("model_name_or_path",))

    # --- reacting -----------------------------------------------------------------------------------

    def _changed(self, key: str) -> None:
        values = self.values()
        self._errors = {}
        for name, value in values.items():
            try:
                check_field(name, value)
            except ConfigError as exc:
                self._errors["data" if name in ("data_name", "data_files") else name] = str(exc)
        if key == "data":
            self._show_data()
        problem = ""
        if not self._errors:
            try:
                config = self.config
                self._check_data(config)
            except ConfigError as exc:
                problem = str(exc)
        for name, flag in self.flags.items():
            flag.value = _error_html(self._errors.get(name, ""))
        self.problem.value = _error_html(problem)
        valid = not self._errors and not problem
        self.start_button.disabled = not valid
        shown = self.cell_text if valid else "(fix the flagged field to see the equivalent cell)"
        self.cell.value = f"<pre style='user-select:text'>{escape(shown)}</pre>"

    def _check_data(self, config: FinetuneConfig) -> None:
        from slmnb.data import check_templates

        if self._columns:
            check_templates(config, self._columns)

    def _show_data(self) -> None:
        """Preview the first rows, and offer the columns as placeholders to insert into a template."""
        import ipywidgets as w

        from slmnb.datafiles import read_splits
        from slmnb.notebook.views import html_table

        self._columns: list[str] = []
        self.preview.value, self.columns.children = "", ()
        if "data" in self._errors:
            return
        values = self.values()
        try:
            rows = read_splits(FinetuneConfig(data_name=values["data_name"], data_files=values["data_files"]))
        except (ConfigError, ValueError) as exc:
            self._errors["data"] = str(exc)
            return
        train = rows.get("train") or next(iter(rows.values()), [])
        self._columns = list(train[0]) if train else []
        table = html_table(self._columns, [[r.get(c, "") for c in self._columns] for r in train[:PREVIEW_ROWS]])
        self.preview.value = (f"<div style='margin-left:154px'>{table}"
                              f"<small>{len(train)} train rows; splits: {', '.join(rows)}</small></div>")
        buttons = []
        for column in self._columns:
            button = w.Button(description=f"{{{column}}}", layout={"width": "auto"},
                              tooltip=f"Insert {{{column}}} into the chosen template")
            button.on_click(lambda _b, column=column: self._insert_placeholder(column))
            buttons.append(button)
        self.columns.children = tuple(buttons)

    def _insert_placeholder(self, column: str) -> None:
        target = self.fields[self.insert_into.value]
        target.value = f"{target.value}{{{column}}}"

    # --- actions ------------------------------------------------------------------------------------

    def start(self) -> Any:
        """Start the run described by the form, with its dashboard below the form."""
        from slmnb.notebook import launch
        from slmnb.training.runs import DEFAULT

        self.output.clear_output()
        with self.output:
            try:
                self.run = launch.start(DEFAULT, self.config)
            except SlmnbError as exc:
                self.problem.value = _error_html(str(exc))
        return self.run

    def _insert_cell(self) -> None:
        from IPython.display import display

        text = self.cell_text
        with self.output:
            display({CELL_MIME: {"source": text},
                     "text/plain": "Copy this into a new cell (the slmnb JupyterLab extension inserts it):\n\n"
                                   + text}, raw=True)


def _error_html(message: str) -> str:
    return f"<span style='color:#c62828'>{escape(message)}</span>" if message else ""

