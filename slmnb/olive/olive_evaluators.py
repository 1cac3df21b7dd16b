"""Olive's evaluators and search as slmnb's: accuracy and f1 become metrics (scoring the answer after the prompt),
perplexity is always reported, latency points at %opt compare, and searchable values with search_strategy become
the search keys slmnb.tuning reads.
"""

from __future__ import annotations

import re
from typing import Any

from slmnb.checks import kind_of, short_repr
from slmnb.errors import ConfigError
from slmnb.olive.olive_passes import mapping


def read_evaluators(raw: Any, engine: dict[str, Any], ignored: list[tuple[str, str]]) -> tuple[list[str], str | None]:
    """accuracy and f1 become metrics (the first is the search objective); perplexity is always reported."""
    evaluators = mapping(raw, "evaluators")
    named = engine.get("evaluator")
    if isinstance(named, dict):
        evaluators = {**evaluators, "engine.evaluator": named}
    metrics: list[str] = []
    for name, evaluator in evaluators.items():
        entries = mapping(evaluator, f"evaluators.{name}").get("metrics") or []
        if not isinstance(entries, list):
            raise ConfigError(f"evaluators.{name}.metrics must be a list of metrics, not {kind_of(entries)}.")
        for i, metric in enumerate(entries):
            where = f"evaluators.{name}.metrics[{i}]"
            metric = mapping(metric, where)
            metric_type = str(metric.get("type", "")).lower()
            subs = metric.get("sub_types") or [{"name": metric.get("name", metric_type)}]
            if not isinstance(subs, list):
                raise ConfigError(f"{where}.sub_types must be a list, not {kind_of(subs)}.")
            names = [str(mapping(s, f"{where}.sub_types").get("name", "")).lower() for s in subs]
            if metric_type in ("latency", "throughput"):
                ignored.append((where, "%opt compare shows each model's tokens/s beside its answers"))
            elif metric_type == "size_on_disk":
                ignored.append((where, "%opt adapters shows each export's size"))
            elif metric_type == "accuracy":
                for sub in names:
                    mapped = {"accuracy_score": "accuracy", "accuracy": "accuracy", "f1_score": "f1",
                              "f1": "f1"}.get(sub)
                    if mapped:
                        metrics.append(mapped)
                    elif sub != "perplexity":
                        ignored.append((f"{where}.sub_types", f"slmnb scores accuracy and f1 of generated answers, "
                                                              f"not {sub}"))
            elif metric_type != "perplexity" and "perplexity" not in names:
                ignored.append((where, f"slmnb has no {metric_type or 'untyped'} metric (a user_script or custom "
                                       "one does not run here); it reports eval loss and perplexity"))
    metrics = list(dict.fromkeys(metrics))
    return metrics, (metrics[0] if metrics else None)


def read_search(strategy: Any, searchable: dict[str, Any], objective: str | None,
            ignored: list[tuple[str, str]]) -> dict[str, Any] | None:
    """Olive's search_strategy and searchable values as slmnb's search keys (sampler sequential is a grid)."""
    if not searchable:
        if strategy not in (None, False):
            ignored.append(("search_strategy", "no pass value is searchable, so slmnb trains the one config"))
        return None
    raw = strategy if isinstance(strategy, dict) else {}
    sampler = str(raw.get("sampler") or raw.get("search_algorithm") or "random").lower()
    strategy_type = {"sequential": "grid", "exhaustive": "grid", "random": "random", "tpe": "tpe"}.get(sampler)
    if strategy_type is None:
        raise ConfigError(f"search_strategy sampler {short_repr(sampler)} is not one Olive has: use sequential, "
                          "random or tpe.")
    # Olive nests what is not a strategy key into sampler_config, so max_samples and seed may sit flat beside it.
    sampler_config = {**raw, **mapping(raw.get("sampler_config") or raw.get("search_algorithm_config"),
                                       "search_strategy.sampler_config")}
    out: dict[str, Any] = {"type": strategy_type}
    trials = raw.get("max_iter") or sampler_config.get("max_samples") or sampler_config.get("num_samples")
    if trials is not None:
        out["num_trials"] = trials
    for key in ("max_time", "seed"):
        value = raw.get(key, sampler_config.get(key))
        if value is not None:
            out[key] = value
    for key in ("execution_order", "output_model_num", "stop_when_goals_met", "include_pass_params"):
        if raw.get(key) not in (None, False, True if key == "include_pass_params" else None):
            ignored.append((f"search_strategy.{key}", "slmnb searches the training settings jointly and keeps the "
                                                      "best trial"))
    space = {name: {"type": "choice", "values": values} for name, values in searchable.items()}
    return {"search_strategy": out, "search_space": space, "objective": objective or "eval_loss"}


def answer_templates(out: dict[str, Any], metrics: list[str], ignored: list[tuple[str, str]]) -> bool:
    """Olive scores accuracy on the text after the prompt: a text_template ending in a placeholder is split there
    into prompt_template + response_template, so the metrics score that answer. False when it cannot be split."""
    template = out["text_template"]
    end = re.search(r"\{([A-Za-z_][A-Za-z0-9_]*)\}\s*$", template)
    if end is None or not template[:end.start()].strip():
        ignored.append(("evaluators", f"{', '.join(metrics)} score the answer after the prompt, and this "
                                      "text_template does not end with the answer's placeholder: slmnb reports eval "
                                      "loss and perplexity"))
        return False
    out.pop("text_template")
    out.update(prompt_template=template[:end.start()], response_template=f"{{{end.group(1)}}}", metrics=metrics)
    ignored.append(("text_template", f"split at its last placeholder {{{end.group(1)}}} into prompt_template and "
                                     f"response_template, so {', '.join(metrics)} score the generated answer (the "
                                     "loss is then on the answer only)"))
    return True
