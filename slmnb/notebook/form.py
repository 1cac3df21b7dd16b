"""slmnb.form() and `%finetune --form`: an ipywidgets form that builds the same FinetuneConfig as a %%finetune cell.

Both open on the demo job (slmnb.demo.DEMO_CONFIG), with the given cell body, options or mapping on top. The form
shows, live, the equivalent cell text and flags each field beside it: an error in red (the config's own sentence;
Start stays off) or a warning in amber (slmnb.checks.field_warnings; the value is kept as typed and Start stays
on). Numbers are plain text boxes, never sliders, so a value is neither clamped nor rounded. Fields the form has no
widget for are kept from the config it was opened with, so form -> config -> cell text -> config loses nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

from slmnb.checks import field_warnings, written
from slmnb.config import (
    METHODS,
    PRECISIONS,
    FinetuneConfig,
    check_field,
    load_config,
    parse_yaml,
    read_config_file,
)
from slmnb.errors import ConfigError, SlmnbError
from slmnb.models import EMBEDDED_MODEL, TINY_MODEL

CELL_MIME = "application/vnd.slmnb.cell+json"  # the lab extension inserts this output's source as a new cell
TEMPLATES = ("prompt_template", "response_template", "text_template")
PREVIEW_ROWS = 3
# What the demo job sets because of its data: a config that brings its own data does not inherit them (a chat
# template, its empty system message and 96 tokens suit the tones phrases, not the user's rows).
DATA_BOUND = ("data_name", "use_chat_template", "system_prompt", "max_seq_len")
# Demo fields tied to its model: the form keeps them only while the model is the demo's.
MODEL_BOUND = ("layers_to_transform",)
ERROR_COLOUR, WARNING_COLOUR = "#c62828", "#a15c00"


def form(config: FinetuneConfig | dict[str, Any] | str | None = None) -> ConfigForm:
    """A config form on the demo job; a mapping, YAML text or config file goes on top of it, a config is used as is."""
    if isinstance(config, FinetuneConfig):
        return ConfigForm(config)
    if config is None:
        return ConfigForm(on_demo({}))
    load_config(config)  # the config's own sentence for a missing file or a bad value, before any demo field
    if isinstance(config, dict):
        return ConfigForm(on_demo(config))
    values = parse_yaml(config)  # YAML text is a mapping; a config file's path reads as one line of text
    return ConfigForm(on_demo(values if isinstance(values, dict) else read_config_file(config)))


def form_for_cell(body: str, overrides: dict[str, Any], default_model: str) -> ConfigForm:
    """`%%finetune --form`: the cell body and the line's options on top of the demo job, like slmnb.form(body)."""
    values = parse_yaml(body) or {}
    if not isinstance(values, dict):
        raise ConfigError("The cell body must be a YAML or JSON mapping, such as 'max_steps: 60'.")
    values = {**values, **overrides}
    values.setdefault("model_name_or_path", default_model)
    return ConfigForm(on_demo(values))


def on_demo(values: Mapping[str, Any]) -> FinetuneConfig:
    """The demo job with the given fields on top; fields tied to the demo's data go when other data is given."""
    from slmnb.demo import DEMO_CONFIG

    base = dict(DEMO_CONFIG)
    other_name = values.get("data_name") not in (None, DEMO_CONFIG["data_name"])
    if other_name or any(values.get(key) for key in ("data_files", "rows")):
        base = {key: value for key, value in base.items() if key not in DATA_BOUND}
    if values.get("text_template") and "use_chat_template" not in values:
        base.pop("use_chat_template", None)  # a chat template needs a prompt and a response, not one text
    if not _keeps_model_bound(values, base["model_name_or_path"], base["method"]):
        base = {key: value for key, value in base.items() if key not in MODEL_BOUND}
    if not values.get("use_chat_template", base.get("use_chat_template")):
        base.pop("system_prompt", None)  # the demo's system message goes with its chat template
    return FinetuneConfig.from_dict({**base, **values})


def _keeps_model_bound(values: Mapping[str, Any], model: str, method: str) -> bool:
    """Whether MODEL_BOUND fields still apply: layer numbers are one model's, and LoRA's."""
    return values.get("model_name_or_path", model) == model and values.get("method", method) != "full"


class ConfigForm:
    def __init__(self, config: FinetuneConfig | None = None) -> None:
        import ipywidgets as w

        from slmnb.data import with_default_templates
        from slmnb.datafiles import bundled_datasets

        _load_magics()
        self._base = with_default_templates(config or on_demo({}))
        self._errors: dict[str, str] = {}
        self._columns: list[str] = []
        self._quiet = False
        self.run: Any = None
        b = self._base
        data = b.data_name or (",".join(b.data_files) if b.data_files else "")
        text = {"layout": {"width": "420px"}, "style": {"description_width": "150px"}}

        def number(key: str, description: str, placeholder: str = "") -> Any:
            value = getattr(b, key)
            return w.Text(value="" if value is None else written(value), description=description,
                          placeholder=placeholder, **text)

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
            "lora_r": number("lora_r", "lora_r"),
            "lora_alpha": number("lora_alpha", "lora_alpha"),
            "lora_dropout": number("lora_dropout", "lora_dropout"),
            "learning_rate": number("learning_rate", "learning_rate", "empty: 3e-3 (LoRA), 2e-5 (full)"),
            "max_steps": number("max_steps", "max_steps", "empty: num_train_epochs"),
            "per_device_train_batch_size": number("per_device_train_batch_size", "batch size"),
            "precision": w.Dropdown(value=b.precision, options=list(PRECISIONS), description="precision", **text),
            "name": w.Text(value=b.name or "", description="run name", placeholder="automatic", **text),
        }
        # The templates last filled from a bundled dataset: replaced when the data changes, unless edited since.
        self._filled = _dataset_templates(b.data_name)
        self.flags = {key: w.HTML() for key in self.fields}
        self.columns = w.HBox()
        self.insert_into = w.Dropdown(options=list(TEMPLATES), value="prompt_template", description="insert into",
                                      layout={"width": "260px"})
        self.preview = w.HTML()
        self.problem = w.HTML()
        self.cell = w.HTML()
        self.start_button = w.Button(description="Start", button_style="primary", icon="play")
        self.insert_button = w.Button(description="Insert as cell", icon="plus",
                                      tooltip="Insert the %%finetune cell below this one (JupyterLab with the slmnb "
                                              "extension; elsewhere, text to copy)")
        self.inserted = w.Output()  # what Insert as cell displays: the extension's note, or the text to copy
        self.output = w.Output()
        self.start_button.on_click(lambda _: self.start())
        self.insert_button.on_click(lambda _: self.insert_cell())
        for key, widget in self.fields.items():
            widget.observe(lambda _change, key=key: self._changed(key), names="value")
        rows = [w.HBox([widget, self.flags[key]]) for key, widget in self.fields.items()]
        data_at = list(self.fields).index("data") + 1
        rows[data_at:data_at] = [self.preview, w.HBox([w.HTML("columns:&nbsp;"), self.columns, self.insert_into])]
        self.widget = w.VBox([*rows, self.problem, self.cell, w.HBox([self.start_button, self.insert_button]),
                              self.inserted, self.output])
        self._changed("data")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # --- values -> config ---------------------------------------------------------------------------

    def values(self) -> dict[str, Any]:
        """The config fields the form sets, as the user left them (not yet checked: numbers are still text)."""
        out = {key: widget.value for key, widget in self.fields.items() if key != "data"}
        for key in (*TEMPLATES, "name"):
            out[key] = out[key] or None
        for key in ("max_steps", "learning_rate"):  # empty: the default (num_train_epochs; the method's rate)
            out[key] = out[key].strip() or None
        data = self.fields["data"].value.strip()
        from slmnb.datafiles import bundled_datasets

        is_name = data in bundled_datasets() or Path(data).expanduser().is_dir()
        out["data_name"] = data if data and is_name else None
        out["data_files"] = data if data and not is_name else None
        return out

    @property
    def config(self) -> FinetuneConfig:
        """The FinetuneConfig the form describes; raises the ConfigError of the first problem."""
        return self._config(self.values())

    def _config(self, values: dict[str, Any]) -> FinetuneConfig:
        if not values.get("use_chat_template", self._base.use_chat_template):
            values = {**values, "system_prompt": None}  # the system message goes with the chat template (no box)
        if not _keeps_model_bound(values, self._base.model_name_or_path, self._base.method):
            values = {**values, **dict.fromkeys(MODEL_BOUND)}  # no box for them: they go, not refuse the config
        if not (values.get("data_name") or values.get("data_files")) and self._base.rows:
            return self._base.replace(**values)  # inline rows from the config it was opened with
        return self._base.replace(rows=None, **values)

    @property
    def cell_text(self) -> str:
        """The %%finetune cell that builds the same config."""
        # The model is always written out: the cell then means the same whatever %config default_model says.
        return "%%finetune\n" + self.config.to_yaml(include_defaults=False, always=("model_name_or_path",))

    # --- reacting -----------------------------------------------------------------------------------

    def _changed(self, key: str) -> None:
        if self._quiet:
            return
        if key == "data":
            self._fill_templates()
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
                self._check_data(self.config)
            except ConfigError as exc:
                problem = str(exc)
        warnings = self._warnings(values)
        for name, flag in self.flags.items():
            flag.value = _flag_html(self._errors.get(name, ""), warnings.pop(name, ""))
        # Warnings about fields the form has no box for (eval_size) go under the form, like a combination problem.
        self.problem.value = _flag_html(problem, " ".join(warnings.values()))
        valid = not self._errors and not problem
        self.start_button.disabled = not valid
        shown = self.cell_text if valid else "(fix the field flagged in red to see the equivalent cell)"
        self.cell.value = f"<pre style='user-select:text'>{escape(shown)}</pre>"

    def _warnings(self, values: dict[str, Any]) -> dict[str, str]:
        """Likely mistakes among the fields that are valid, so a warning shows even while another field is wrong."""
        valid = {name: value for name, value in values.items()
                 if name not in self._errors and not (name in ("data_name", "data_files") and "data" in self._errors)}
        try:
            return field_warnings(self._config(valid))
        except ConfigError:  # the valid fields do not combine yet (say, a prompt_template without its response)
            return {}

    def _fill_templates(self) -> None:
        """Picking a bundled dataset fills its templates, unless the user wrote templates of their own."""
        defaults = _dataset_templates(self.fields["data"].value.strip())
        current = {key: self.fields[key].value for key in TEMPLATES}
        if not defaults or not (current == self._filled or not any(current.values())):
            return
        self._quiet = True  # one check after all three templates change, not one per template
        try:
            for key in TEMPLATES:
                self.fields[key].value = defaults[key]
        finally:
            self._quiet = False
        self._filled = defaults

    def _check_data(self, config: FinetuneConfig) -> None:
        from slmnb.data import check_templates

        if self._columns:
            check_templates(config, self._columns)

    def _show_data(self) -> None:
        """Preview the first rows, and offer the columns as placeholders to insert into a template."""
        import ipywidgets as w

        from slmnb.datafiles import read_splits
        from slmnb.notebook.views import html_table

        self._columns = []
        self.preview.value, self.columns.children = "", ()
        if "data" in self._errors:
            return
        values = self.values()
        try:
            if values["data_name"] or values["data_files"]:
                source = FinetuneConfig(data_name=values["data_name"], data_files=values["data_files"])
            else:
                source = FinetuneConfig(rows=self._base.rows)
            rows = read_splits(source)
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
                self.problem.value = _flag_html(str(exc), "")
        return self.run

    def insert_cell(self) -> None:
        """Offer the cell: the JupyterLab extension inserts it below the form's cell, other front ends show text.

        The output names the form's widget, so the extension finds the cell whose output shows this form; it acts
        on the live message only, so reopening the notebook never inserts the cell again.
        """
        from IPython.display import display

        try:
            bundle = self.insert_bundle()
        except ConfigError as exc:
            self.problem.value = _flag_html(str(exc), "")
            return
        self.inserted.clear_output()
        with self.inserted:
            display(bundle, raw=True)

    def insert_bundle(self) -> dict[str, Any]:
        """The output Insert as cell shows: the cell for the extension, and the same text to copy elsewhere."""
        text = self.cell_text
        return {CELL_MIME: {"source": text, "form": self.widget.model_id},
                "text/plain": "Copy this into a new cell below:\n\n" + text}


def _load_magics() -> None:
    """The form offers a %%finetune cell below itself: after `import slmnb; slmnb.form()` alone, with no
    `%load_ext slmnb`, that cell must still run, now and when the notebook is run again from the top."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None and "finetune" not in shell.magics_manager.magics["cell"]:
        shell.extension_manager.load_extension("slmnb")


def _dataset_templates(data: str | None) -> dict[str, str]:
    """The three templates as a bundled dataset fills them ("" for the ones it leaves empty); {} for other data."""
    from slmnb.data import default_templates
    from slmnb.datafiles import bundled_datasets

    if data not in bundled_datasets():
        return {}
    filled = default_templates(FinetuneConfig(data_name=data))
    return {key: filled.get(key, "") for key in TEMPLATES}


def _flag_html(error: str, warning: str) -> str:
    """An error in red; otherwise a warning in amber, marked as one so it does not read like a refusal."""
    if error:
        return f"<span class='slmnb-form-error' style='color:{ERROR_COLOUR}'>{escape(error)}</span>"
    if warning:
        return f"<span class='slmnb-form-warning' style='color:{WARNING_COLOUR}'>&#9888; {escape(warning)}</span>"
    return ""
