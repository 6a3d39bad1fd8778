"""Each metric's validity beside its value, and the "Which number to trust" section, from ``results["validity"]``
(:func:`medqa_bench.validity.measured.run_validity`, recorded by ``run`` and ``score``).

Formatting only: the figures were measured by ``metrics validate`` and matched to the run's metrics when it was
scored; a run folder written before validity was recorded gets a "not recorded" note. Strings stay raw: the template
escapes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..schema import MetricValidity, Results, read_results
from .cells import fmt

#: Where the README explains the figures, the robustness suite, the primary rule and the floor.
README_SECTION = "the README's section \"Which number to trust\""
NOT_RECORDED = ("This run folder records no validity figures (written before medqa-bench recorded them): "
                "`medqa-bench score RUN_DIR` adds them without loading the model.")
DIFFERENT = ("The combined runs record different validity figures (another validity file or other metric "
             "signatures): each run's own report shows its own.")
_COLUMNS = (("within_question_spearman", "within-question Spearman"), ("spearman", "Spearman"),
            ("pairwise_accuracy", "pairwise accuracy"), ("auc_good", "AUC good vs rest"),
            ("auc_on_topic", "on-topic AUC (good vs related)"))


def _interval(x: dict | None, digits: int = 2) -> dict[str, str]:
    x = x or {}
    if x.get("value") is None:
        return {"value": "–", "ci": "", "text": "–"}
    ci = f"[{fmt(x.get('ci_low'), digits)}, {fmt(x.get('ci_high'), digits)}]" if x.get("ci_low") is not None else ""
    value = fmt(x["value"], digits)
    return {"value": value, "ci": ci, "text": f"{value} {ci}".strip()}


def _weakest(robustness: dict) -> dict[str, str]:
    """The perturbation with the lowest CI lower bound: the check a metric comes closest to failing (or fails)."""
    if not robustness:
        return {"name": "", "text": "–"}
    name, r = min(robustness.items(), key=lambda kv: kv[1].get("ci_low") if kv[1].get("ci_low") is not None else -1.0)
    return {"name": name, "text": _interval(r)["text"]}


def _badge(name: str, entry: MetricValidity, primary: str | None) -> dict[str, Any]:
    """What the headline table shows beside a metric: two figures (CIs on hover) and its status."""
    if not entry.measured:
        return {"measured": False, "status": "not-measured", "label": "not measured", "title": entry.reason or ""}
    figures = entry.figures
    wq, topic = _interval(figures.get("within_question_spearman")), _interval(figures.get("auc_on_topic"))
    if name == primary:
        status, label = "primary", "primary"
    elif entry.below_floor:
        status, label = "below-floor", "below floor"
    elif not entry.passes_robustness:
        status, label = "fails-robustness", "fails robustness"
    else:
        status, label = "measured", ""
    return {"measured": True, "status": status, "label": label, "wq": wq["value"], "topic": topic["value"],
            "title": f"agreement with expert grades: within-question Spearman {wq['text']}, on-topic AUC "
                     f"{topic['text']} (95% CIs); robustness suite {'passed' if entry.passes_robustness else 'failed'}"}


def validity_context(results: Results | Mapping[str, Any], metrics: list[str]) -> dict[str, Any]:
    """Template context: ``recorded`` False with a note for an older run folder; else the section's rows (the run's
    metrics in table order) and ``badges`` by metric for the headline table."""
    results = read_results(results)
    v = results.validity
    if v is None or not v.raw:  # absent, null or an empty object
        note = DIFFERENT if results.validity_differs else NOT_RECORDED
        return {"recorded": False, "note": note, "badges": {}, "rows": []}
    entries = v.metrics
    primary = v.primary.metric
    rows, badges = [], {}
    for m in [m for m in metrics if m in entries] + [m for m in entries if m not in metrics]:
        entry = entries[m]
        badges[m] = _badge(m, entry, primary)
        row = {"metric": m, **badges[m], "reason": entry.reason or "", "cells": [], "robustness": None}
        if entry.measured:
            row["cells"] = [_interval(entry.figures.get(k)) for k, _ in _COLUMNS]
            row["robustness"] = {"weakest": _weakest(entry.robustness), "passes": entry.passes_robustness}
        rows.append(row)
    judged = v.judged_set
    counts = judged.get("counts") or {}
    return {
        "recorded": True,
        "source": "the bundled measurement (medqa_bench/validity/measured.json)" if v.source == "bundled"
        else v.source or "",
        "fingerprint": v.fingerprint or "",
        "created": v.created or "",
        "judged": f"{judged.get('name') or 'judged set'}: {counts.get('candidates', '?')} graded answers to "
                  f"{counts.get('questions', '?')} questions; 95% CIs from {v.settings.get('n_bootstrap', '?')} "
                  f"resamples of questions",
        "floor": {"value": v.floor.value, "rule": v.floor.rule or ""},
        "primary": {"metric": primary, "reason": v.primary.reason or "", "rule": v.primary.rule or ""},
        "columns": [title for _, title in _COLUMNS],
        "rows": rows,
        "badges": badges,
        "readme": README_SECTION,
    }
