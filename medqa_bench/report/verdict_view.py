"""The verdict section the page opens with, as template context, from ``results["verdict"]``
(:func:`medqa_bench.analysis.verdict.build_verdict`) and the analysis it was built from.

Per adapter: a metric-by-metric table against the strongest baseline row (what improves, what regresses, against
which row, Holm p, and the same on the items without near-duplicates), a grid of the reference rows it does or does
not beat, its warnings and its unequal conditions; then the run-level warnings.
"""

from __future__ import annotations

from typing import Any

from .cells import ci, fmt_p, fmt_signed

OUTCOMES = ("improves", "regresses", "no_difference")
OUTCOME_TEXT = {"improves": "improves", "regresses": "regresses", "no_difference": "no significant difference"}


def _outcome_text(r: dict, outcome: str) -> str:
    """The outcome in words; a test that cannot reach significance says so and why, and a CI that excludes 0 beside a
    test that is not significant says why they part (the verdict's ``why_unreachable`` and ``ci_note``)."""
    if r.get("reachable") is False:
        text = f"cannot reach significance: {r.get('why_unreachable')}"
    else:
        text = OUTCOME_TEXT.get(outcome, "not compared")
    return text + (f" (the CI excludes 0: {r['ci_note']})" if r.get("ci_note") else "")


def _clean_cell(judged: dict | None, metric: str) -> dict | None:
    row = ((judged or {}).get("metrics") or {}).get(metric)
    if row is None:
        return None
    significant = row.get("p_holm") is not None and row["p_holm"] < 0.05
    outcome = "no_difference" if not significant or row.get("better") is None else (
        "improves" if row["better"] else "regresses")
    return {"diff": fmt_signed(row.get("mean_diff")), "p_holm": fmt_p(row.get("p_holm")), "outcome": outcome,
            "n": row.get("n")}


def _metric_rows(v: dict, analysis: dict, adapter: str) -> list[dict]:
    paired = ((analysis.get("paired") or {}).get(adapter) or {}).get("metrics") or {}
    clean_judged = (((analysis.get("leakage") or {}).get("clean") or {}).get("judged") or {}).get(adapter)
    rows = []
    for outcome in OUTCOMES:
        for r in v.get(outcome) or []:
            m = r["metric"]
            full = paired.get(m) or {}
            hib = full.get("higher_is_better")
            rows.append({
                "metric": m,
                "outcome": outcome,
                "outcome_text": _outcome_text(r, outcome),
                "against": r.get("against") or full.get("against") or "",
                "diff": fmt_signed(r.get("diff")),
                "ci": ci({"ci_low": (r.get("ci") or [None, None])[0], "ci_high": (r.get("ci") or [None, None])[1]}),
                "p_holm": fmt_p(r.get("p_holm")),
                "direction": "↑" if hib else "↓" if hib is False else "",
                "clean": _clean_cell(clean_judged, m),
            })
    return rows


def _reference_grid(v: dict, analysis: dict, adapter: str, results: dict) -> dict | None:
    comparisons = (analysis.get("comparisons") or {}).get(adapter) or {}
    # only the reference rows the adapter was compared with (a combined report's other runs have their own)
    refs = {ref: r for ref, r in (v.get("references") or {}).items() if ref in comparisons}
    if not refs:
        return None
    metrics = list(dict.fromkeys(m for r in refs.values() for m in (*r.get("beats", []), *r.get("does_not_beat", []))))
    infos = results.get("systems") or {}
    rows = []
    for ref, r in refs.items():
        stats = (comparisons.get(ref) or {}).get("metrics") or {}
        cells = []
        for m in metrics:
            row = stats.get(m) or {}
            if m in r.get("beats", []):
                state = "beats"
            elif m in r.get("does_not_beat", []):
                state = "does-not-beat"
            else:
                state = "none"
            worse = row.get("better") is False and row.get("p_holm") is not None and row["p_holm"] < 0.05
            label = {"beats": "✓ beats", "none": "–"}.get(
                state, "✗ worse than it" if worse else "✗ not significantly better")
            cells.append({"state": state, "label": label, "diff": fmt_signed(row.get("mean_diff")),
                          "p_holm": fmt_p(row.get("p_holm")), "metric": m})
        rows.append({"reference": ref, "description": (infos.get(ref) or {}).get("description") or "",
                     "cells": cells, "not_beaten": r.get("does_not_beat") or []})
    return {"metrics": metrics, "rows": rows}


def _clean_summary(v: dict, analysis: dict) -> dict:
    leak = analysis.get("leakage")
    clean = v.get("clean_subset")
    if leak is None:
        return {"state": "no-audit", "text": "no leakage audit: the run had no training split to compare with"}
    if not leak.get("ran", True):
        why = leak.get("note") or "no training texts"
        return {"state": "no-audit", "text": f"the leakage audit did not run: {why}"}
    if not leak.get("n_near_duplicates"):
        return {"state": "none", "text": f"no item is a near-duplicate of a training item "
                                         f"(similarity ≥ {leak.get('threshold')}): nothing to remove"}
    if not clean:
        return {"state": "none", "text": "the clean subset could not be judged"}
    if clean.get("changed"):
        return {"state": "changes", "text": f"on the {clean.get('n_items')} items without near-duplicates of training "
                                            f"items the verdict changes on {', '.join(clean['changed'])}"}
    return {"state": "holds", "text": f"the verdict holds on the {clean.get('n_items')} items without "
                                      "near-duplicates of training items"}


def _headline(v: dict, grid: dict | None) -> str:
    imp, reg = [r["metric"] for r in v.get("improves") or []], [r["metric"] for r in v.get("regresses") or []]
    parts = [f"improves on {', '.join(imp)}" if imp else "improves on no metric",
             f"regresses on {', '.join(reg)}" if reg else "regresses on none"]
    if grid:
        unbeaten = [f"{r['reference']} ({', '.join(r['not_beaten'])})" for r in grid["rows"] if r["not_beaten"]]
        parts.append(f"does not beat the reference rows {'; '.join(unbeaten)}" if unbeaten
                     else "beats every reference row on every metric")
    return "; ".join(parts)


def _primary_cell(p: dict | None) -> dict | None:
    """An adapter's result on the run's primary metric, as the verdict recorded it."""
    if not p:
        return None
    ci_ = p.get("ci") or [None, None]
    return {"metric": p.get("metric"), "outcome": p.get("outcome"),
            "outcome_text": _outcome_text(p, p.get("outcome")),
            "diff": fmt_signed(p.get("diff")), "ci": ci({"ci_low": ci_[0], "ci_high": ci_[1]}),
            "p_holm": fmt_p(p.get("p_holm")), "against": p.get("against") or ""}


def verdict_context(results: dict, analysis: dict, verdict: dict | None) -> dict[str, Any]:
    """Template context of the verdict section; ``verdict`` is ``results["verdict"]`` (or one built for this page)."""
    verdict = verdict or {}
    infos = results.get("systems") or {}
    adapters = []
    for name, v in (verdict.get("adapters") or {}).items():
        grid = _reference_grid(v, analysis, name, results)
        info = infos.get(name) or {}
        adapters.append({
            "name": name,
            "format": info.get("prompt_format"),
            "format_source": info.get("format_source") or "",
            "headline": _headline(v, grid),
            "n_improves": len(v.get("improves") or []),
            "n_regresses": len(v.get("regresses") or []),
            "rows": _metric_rows(v, analysis, name),
            "strongest": sorted(set((v.get("strongest_baseline") or {}).values())),
            "references": grid,
            "warnings": v.get("warnings") or [],
            "conditions": v.get("conditions") or [],
            "clean": _clean_summary(v, analysis),
            "lines": v.get("lines") or [],
            "primary": _primary_cell(v.get("primary")),
        })
    return {
        "adapters": adapters,
        "warnings": verdict.get("warnings") or [],
        "lines": verdict.get("lines") or [],
        "alpha": verdict.get("alpha", 0.05),
        "correction": verdict.get("correction") or "holm",
        "n_items": analysis.get("n_items"),
        "n_reference_rows": len(analysis.get("reference_rows") or []),
        "primary": verdict.get("primary"),  # None: no validity recorded when the verdict was built
    }
