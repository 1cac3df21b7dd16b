"""Tables the magics show: the dry-run preview and the runs table, as HTML for the notebook and text elsewhere."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Any

from slmnb.data import Preview
from slmnb.metrics import score_text
from slmnb.notebook.charts import main_metric
from slmnb.text import clock, text_table
from slmnb.training import events as ev


def html_table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th style='text-align:left'>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left;white-space:pre-wrap'>{escape(str(c))}</td>"
                                    for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass
class DryRun:
    """What %%finetune --dry-run shows: the resolved config and the preview of what it would train on."""

    preview: Preview
    search: Any = None  # the SearchSpec of a search's dry run: the config shown is what every trial shares

    @property
    def config(self) -> Any:
        return self.preview.config

    def _search_line(self) -> str:
        return f"{self.search.describe()}\n" if self.search is not None else ""

    def _repr_html_(self) -> str:
        p, s = self.preview, self.preview.token_stats
        stats = (f"{p.train_rows} train rows, {p.eval_rows} eval rows; columns {', '.join(p.columns)}. "
                 f"Tokens per example: min {s['min']:.0f}, median {s['median']:.0f}, mean {s['mean']:.1f}, "
                 f"max {s['max']:.0f}; {p.truncated} truncated at max_seq_len {p.config.max_seq_len}, "
                 f"{p.dropped} dropped (no response left).")
        rows = [[r["tokens"], r["prompt"], r["response"]] for r in p.rows]
        return (f"<b>Resolved config</b> (nothing was trained; other fields at their defaults)"
                f"<p>{escape(self._search_line())}</p><pre>{escape(self.yaml)}</pre>"
                f"<p>{escape(stats)}</p>{html_table(['tokens', 'prompt (rendered)', 'response (trained on)'], rows)}")

    def __repr__(self) -> str:
        return (f"Resolved config (nothing was trained; other fields at their defaults):\n{self._search_line()}"
                f"{self.yaml}\n"
                f"{self.preview}")

    @property
    def yaml(self) -> str:
        return self.preview.config.to_yaml(include_defaults=False, always=("model_name_or_path",))


RUN_COLUMNS = ["name", "status", "steps", "loss", "eval loss", "perplexity", "metric", "duration"]


@dataclass
class RunsTable:
    """%finetune runs: one row per run folder, with its last metrics; a search's trials grouped under a row of
    their search (its status, trials done, best objective)."""

    rows: list[dict[str, Any]]
    skipped: list[str] = field(default_factory=list)  # one sentence per run folder that could not be read

    @classmethod
    def of(cls, runs: list[Any], searches: dict[str, dict[str, Any]] | None = None) -> RunsTable:
        rows = []
        for run in runs:
            steps = [e for e in run.history if isinstance(e, ev.Step)]
            evals = [e for e in run.history if isinstance(e, ev.Eval)]
            scored = [e.metrics for e in evals if e.metrics]
            elapsed = run.history[-1].elapsed if run.history else run.folder.read_state().get("elapsed")
            rows.append({
                "name": run.name, "status": run.status, "step": run.step, "max_steps": run.max_steps,
                "loss": steps[-1].loss if steps else None,
                "eval_loss": evals[-1].eval_loss if evals else None,
                "perplexity": evals[-1].perplexity if evals else None,
                "metric": main_metric(scored[-1]) if scored else None,  # (key, value) at the last scored eval
                "duration": elapsed if isinstance(elapsed, int | float) else 0.0, "dir": str(run.dir),
            })
        return cls(_grouped(rows, searches or {}), list(getattr(runs, "skipped", [])))

    def _cells(self) -> list[list[Any]]:
        def num(x: float | None) -> str:
            return "" if x is None or not math.isfinite(x) else f"{x:.4g}"

        def metric(pair: tuple[str, float] | None) -> str:
            return f"{pair[0]} {score_text(*pair)}" if pair else ""

        cells = []
        for r in self.rows:
            if r.get("search") is not None:  # a search's own row
                cells.append([f"{r['name']} (search)", r["status"], r["trials"], "", "", "", r["best"],
                              clock(r["duration"] or 0)])
                continue
            name = f"  └ {r['name']}" if r.get("trial") else r["name"]
            status = f"{r['status']} ({r['trial']})" if r.get("trial") in ("pruned", "failed") else r["status"]
            cells.append([name, status, f"{r['step']}/{r['max_steps'] or '?'}", num(r["loss"]), num(r["eval_loss"]),
                          num(r["perplexity"]), metric(r["metric"]), clock(r["duration"] or 0)])
        return cells
    def _repr_html_(self) -> str:
        table = html_table(RUN_COLUMNS, self._cells()) if self.rows else "<i>No runs yet in this runs folder.</i>"
        notes = "".join(f"<div style='color:#8a6d00'>Skipped: {escape(note)}</div>" for note in self.skipped)
        return table + notes

    def __repr__(self) -> str:
        table = text_table(RUN_COLUMNS, self._cells()) if self.rows else "No runs yet in this runs folder."
        return "\n".join([table, *(f"Skipped: {note}" for note in self.skipped)])

    def __len__(self) -> int:
        return len(self.rows)


def _grouped(rows: list[dict[str, Any]], searches: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each search's row, then its trials' rows (in trial order), where its first trial would stand; other runs
    in their order. A search without trial runs yet stands where it would have started, at the end."""
    trials: dict[str, tuple[str, dict[str, Any]]] = {}  # run name -> (search, its trial's entry in search.json)
    for name, state in searches.items():
        for trial in state.get("trials") or []:
            if isinstance(trial, dict) and isinstance(trial.get("run"), str):
                trials[trial["run"]] = (name, trial)
    out: list[dict[str, Any]] = []
    placed: set[str] = set()
    for row in rows:
        owner = trials.get(row["name"])
        if owner is None:
            out.append(row)
            continue
        name = owner[0]
        if name in placed:
            continue
        placed.add(name)
        out += _search_rows(name, searches[name], rows, trials)
    for name, state in searches.items():
        if name not in placed:
            out += _search_rows(name, state, rows, trials)
    return out


def _search_rows(name: str, state: dict[str, Any], rows: list[dict[str, Any]],
                 trials: dict[str, tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    entries = [t for t in state.get("trials") or [] if isinstance(t, dict)]
    done = sum(1 for t in entries if t.get("state") in ("complete", "pruned", "failed"))
    best = state.get("best") if isinstance(state.get("best"), dict) else None
    objective = str(state.get("objective", "eval_loss"))
    value = best.get("value") if best else None
    mine = sorted((r for r in rows if trials.get(r["name"], ("",))[0] == name),
                  key=lambda r: trials[r["name"]][1].get("number", 0))
    head = {"name": name, "search": True, "status": state.get("status", "unknown"),
            "trials": f"{done}/{state.get('num_trials', '?')} trials",
            "best": f"best {objective} {score_text(objective, value)}" if isinstance(value, int | float) else "",
            "duration": sum(r["duration"] or 0 for r in mine)}
    return [head, *({**r, "trial": trials[r["name"]][1].get("state")} for r in mine)]
