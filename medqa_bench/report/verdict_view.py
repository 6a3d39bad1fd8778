"""The verdict section the page opens with, as template context, from ``results["verdict"]``
(:func:`medqa_bench.analysis.verdict.build_verdict`) and the analysis it was built from.

Per adapter: a metric-by-metric table against the strongest baseline row (what improves, what regresses, against
which row, Holm p, and the same on the items without near-duplicates), a grid of the reference rows it does or does
not beat, its warnings and its unequal conditions; then the run-level warnings.

A combined report (several runs) opens with the runs and their facts, then an adapter × run matrix of each run's
primary metric (its difference to the strongest baseline, CI, Holm p), then each run's detail: its warnings and its
adapters, each read against its own run's analysis.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..analysis.stats import significance_mark
from ..analysis.verdict import base_words
from ..schema import (AdapterVerdict, Analysis, Judged, PrimaryResult, Results, RunFacts, Verdict, VerdictRow,
                      read_analysis, read_results, read_verdict)
from .cells import ci, fmt, fmt_p, fmt_signed

OUTCOMES = ("improves", "regresses", "no_difference")
OUTCOME_TEXT = {"improves": "improves", "regresses": "regresses", "no_difference": "no significant difference"}


def _outcome_text(r: VerdictRow, outcome: str | None) -> str:
    """The outcome in words; a test that cannot reach significance says so and why, and a CI that excludes 0 beside a
    test that is not significant says why they part (the verdict's ``why_unreachable`` and ``ci_note``)."""
    if r.reachable is False:
        text = f"cannot reach significance: {r.why_unreachable}"
    else:
        text = OUTCOME_TEXT.get(outcome, "not compared")
    return text + (f" (the CI excludes 0: {r.ci_note})" if r.ci_note else "")


def _ci(r: VerdictRow) -> str:
    lo, hi = (r.ci or [None, None])[:2]
    return ci({"ci_low": lo, "ci_high": hi})


def _clean_cell(judged: Judged | None, metric: str) -> dict | None:
    row = judged.metrics.get(metric) if judged else None
    if row is None:
        return None
    significant = row.get("p_holm") is not None and row["p_holm"] < 0.05
    outcome = "no_difference" if not significant or row.get("better") is None else (
        "improves" if row["better"] else "regresses")
    return {"diff": fmt_signed(row.get("mean_diff")), "p_holm": fmt_p(row.get("p_holm")), "outcome": outcome,
            "n": row.get("n")}


def _own(analysis: Analysis, v: AdapterVerdict) -> Analysis:
    """The analysis of the adapter's own run (a combined report keeps each run's under ``runs``)."""
    own = analysis.runs.get(v.run) if v.run is not None else None
    return read_analysis(own) if own else analysis


def _metric_rows(v: AdapterVerdict, analysis: Analysis, adapter: str) -> list[dict]:
    judged = analysis.paired.get(adapter)
    paired = judged.metrics if judged else {}
    leakage = _own(analysis, v).leakage
    clean_judged = leakage.clean.judged.get(adapter) if leakage else None
    rows = []
    for outcome in OUTCOMES:
        for r in v.outcome_rows(outcome):
            m = r.metric
            full = paired.get(m, {})
            hib = full.get("higher_is_better")
            rows.append({
                "metric": m,
                "outcome": outcome,
                "outcome_text": _outcome_text(r, outcome),
                "against": r.against or full.get("against") or "",
                "diff": fmt_signed(r.diff),
                "ci": _ci(r),
                "p_holm": fmt_p(r.p_holm),
                "direction": "↑" if hib else "↓" if hib is False else "",
                "clean": _clean_cell(clean_judged, m),
            })
    return rows


def _reference_grid(v: AdapterVerdict, analysis: Analysis, adapter: str, results: Results) -> dict | None:
    comparisons = analysis.comparisons.get(adapter, {})
    # only the reference rows the adapter was compared with (a combined report's other runs have their own)
    refs = {ref: r for ref, r in v.references.items() if ref in comparisons}
    if not refs:
        return None
    metrics = list(dict.fromkeys(m for r in refs.values() for m in (*r.get("beats", []), *r.get("does_not_beat", []))))
    rows = []
    for ref, r in refs.items():
        stats = comparisons[ref].metrics
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
        rows.append({"reference": ref, "description": results.system(ref).description or "",
                     "cells": cells, "not_beaten": r.get("does_not_beat") or []})
    return {"metrics": metrics, "rows": rows}


def _clean_summary(v: AdapterVerdict, analysis: Analysis) -> dict:
    leak = _own(analysis, v).leakage
    clean = v.clean_subset
    if leak is None:
        return {"state": "no-audit", "text": "no leakage audit: the run had no training split to compare with"}
    if not leak.ran:
        why = leak.note or "no training texts"
        return {"state": "no-audit", "text": f"the leakage audit did not run: {why}"}
    if not leak.n_near_duplicates:
        return {"state": "none", "text": f"no item is a near-duplicate of a training item "
                                         f"(similarity ≥ {leak.threshold}): nothing to remove"}
    if clean is None or not clean.raw:
        return {"state": "none", "text": "the clean subset could not be judged"}
    if clean.changed:
        return {"state": "changes", "text": f"on the {clean.n_items} items without near-duplicates of training "
                                            f"items the verdict changes on {', '.join(clean.changed)}"}
    return {"state": "holds", "text": f"the verdict holds on the {clean.n_items} items without "
                                      "near-duplicates of training items"}


def _headline(v: AdapterVerdict, grid: dict | None) -> str:
    imp, reg = [r.metric for r in v.improves], [r.metric for r in v.regresses]
    parts = [f"improves on {', '.join(imp)}" if imp else "improves on no metric",
             f"regresses on {', '.join(reg)}" if reg else "regresses on none"]
    if grid:
        unbeaten = [f"{r['reference']} ({', '.join(r['not_beaten'])})" for r in grid["rows"] if r["not_beaten"]]
        parts.append(f"does not beat the reference rows {'; '.join(unbeaten)}" if unbeaten
                     else "beats every reference row on every metric")
    return "; ".join(parts)


def _primary_cell(p: PrimaryResult | None) -> dict | None:
    """An adapter's result on the run's primary metric, as the verdict recorded it."""
    if p is None or not p.raw:  # absent, null or an empty object
        return None
    return {"metric": p.metric, "outcome": p.outcome, "outcome_text": _outcome_text(p, p.outcome),
            "diff": fmt_signed(p.diff), "ci": _ci(p), "p_holm": fmt_p(p.p_holm), "against": p.against or ""}


def verdict_context(results: Results | Mapping[str, Any], analysis: Analysis | Mapping[str, Any],
                    verdict: Verdict | Mapping[str, Any] | None) -> dict[str, Any]:
    """Template context of the verdict section; ``verdict`` is ``results["verdict"]`` (or one built for this page;
    a combined report's from :func:`medqa_bench.analysis.runs.combine_verdicts`)."""
    results, analysis = read_results(results), read_analysis(analysis)
    verdict = read_verdict(verdict) if verdict else Verdict()
    adapters = []
    for name, v in verdict.adapters.items():
        grid = _reference_grid(v, analysis, name, results)
        info = results.system(name)
        adapters.append({
            "name": name,
            "run": v.run,
            "format": info.prompt_format,
            "format_source": info.format_source or "",
            "headline": _headline(v, grid),
            "n_improves": len(v.improves),
            "n_regresses": len(v.regresses),
            "rows": _metric_rows(v, analysis, name),
            "strongest": sorted(set(v.strongest_baseline.values())),
            "references": grid,
            "warnings": v.warnings,
            "conditions": v.conditions,
            "clean": _clean_summary(v, analysis),
            "lines": v.lines,
            "primary": _primary_cell(v.primary),
        })
    warnings = verdict.warnings
    combined = bool(analysis.runs)
    runs = list(analysis.runs)
    return {
        "adapters": adapters,
        "warnings": warnings,
        "lines": verdict.lines,
        "alpha": 0.05 if verdict.alpha is None else verdict.alpha,
        "correction": verdict.correction or "holm",
        "n_items": analysis.n_items,
        "n_reference_rows": len(analysis.reference_rows),
        "primary": verdict.primary,  # None: no validity recorded when the verdict was built, or runs differ
        "combined": combined,
        "runs": runs_context(results, analysis, verdict) if combined else [],
        "matrix": run_matrix(analysis, verdict) if combined else None,
        # a combined report: each run's detail (its own warnings, its adapters), then what several runs share
        "groups": [{"run": r, "adapters": [a for a in adapters if a["run"] == r],
                    "warnings": [w for w in warnings if w.get("runs") == [r]]} for r in runs],
        "shared_warnings": [w for w in warnings if len(w.get("runs") or []) > 1],
    }


# ------------------------------------------------------------------------------------------ several runs


def _run_primary(verdict: Verdict, run: str) -> str | None:
    """A combined report's run's primary metric, as its verdict recorded it (``runs[label].primary``)."""
    own = verdict.runs.get(run)
    return own.primary.metric if own and own.primary else None


def _matrix_metric(analysis: Analysis, verdict: Verdict, run: str) -> tuple[str | None, str]:
    """The metric a run's column shows: its primary metric, else (no validity recorded) its soft-match metric."""
    primary = _run_primary(verdict, run)
    if primary:
        return primary, "primary metric"
    own = analysis.runs.get(run)
    return (read_analysis(own).similarity_metric if own else None), "no primary metric recorded: the soft-match metric"


def _matrix_cell(analysis: Analysis, adapter: str, v: AdapterVerdict | None, metric: str | None) -> dict | None:
    if v is None:
        return None
    row = next((r for o in OUTCOMES for r in v.outcome_rows(o) if r.metric == metric), None)
    if row is None:
        return {"state": "none", "text": "not compared", "adapter": adapter}
    outcome = next(o for o in OUTCOMES if row in v.outcome_rows(o))
    p = row.p_holm
    return {
        "state": {"improves": "better", "regresses": "worse"}.get(outcome, "same ns"),
        "adapter": adapter,
        "outcome": outcome,
        "outcome_text": _outcome_text(row, outcome),
        "diff": fmt_signed(row.diff),
        "ci": _ci(row),
        "p_holm": fmt_p(p),
        "mark": significance_mark(p),
        "against": row.against or "",
        "n": row.n,
    }


def run_matrix(analysis: Analysis | Mapping[str, Any], verdict: Verdict | Mapping[str, Any]) -> dict | None:
    """Adapters (by name within their run) × runs: each cell the adapter's difference to its strongest baseline on
    its run's primary metric, with the 95% CI and the Holm-adjusted p of the verdict's own test."""
    analysis, verdict = read_analysis(analysis), read_verdict(verdict)
    runs = list(analysis.runs)
    adapters = verdict.adapters
    if not runs or not adapters:
        return None
    columns = []
    for r in runs:
        metric, why = _matrix_metric(analysis, verdict, r)
        columns.append({"run": r, "metric": metric or "–", "why": why})
    names = list(dict.fromkeys(n.split("/", 1)[1] if n.startswith(f"{v.run}/") else n
                               for n, v in adapters.items()))
    rows = []
    for short in names:
        cells = []
        for col in columns:
            full = f"{col['run']}/{short}"
            cells.append(_matrix_cell(analysis, full, adapters.get(full), col["metric"]))
        rows.append({"adapter": short, "cells": cells})
    metrics = {c["metric"] for c in columns}
    return {"columns": columns, "rows": rows, "one_metric": metrics.pop() if len(metrics) == 1 else None}


def runs_context(results: Results, analysis: Analysis, verdict: Verdict) -> list[dict]:
    """One row per run of a combined report: where it comes from and the facts its statements rest on."""
    from .diagnostics import budget_text, threshold_source_text

    shared = {n: info.shared_by for n, info in results.systems.items() if info.shared_by}
    out = []
    for r, own in analysis.runs.items():
        own = read_analysis(own)
        f = results.runs.get(r) or RunFacts()
        th = own.thresholds or {}
        sim = own.similarity_metric
        primary = _run_primary(verdict, r)
        folder = f.folder or ""
        out.append({
            "run": r,
            "folder": Path(folder).name if folder else "",
            "path": folder,
            "run_name": f.run_name or "",
            "model": str(f.model.get("reference") or "?"),
            "base": base_words(f.model["quantization"]) if f.model.get("quantization") else "",
            "n_items": own.n_items,
            "n_nll_items": own.n_nll_items or own.n_items,
            "budget": budget_text(f.budget),
            "soft_match": (f"{sim}: t = {fmt(th.get('t'))} ({threshold_source_text(th)})" if sim and th else "–"),
            "primary": primary or "–",
            "metrics": ", ".join(f.metrics),
            "shared": [n for n, by in shared.items() if r in by],
        })
    return out
