"""The report's diagnostic tables as template context: what in a run to distrust before reading a score.

Degeneration (did each system stop, answer, loop), the generation budget, the soft-match thresholds and where they
came from, and the leakage audit. Every number comes from ``results`` and ``results["analysis"]``; this module only
picks, orders and formats them. Strings stay raw here: the template escapes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..analysis.degeneration import WARNING_THRESHOLDS
from ..schema import Analysis, Budget, Results, read_analysis, read_results
from .cells import fmt, fmt_share
from .tables import metric_names, value


# ------------------------------------------------------------------------------------------ degeneration


_DEGENERATION_COLUMNS = (
    ("stop_rate", "stop rate", "share"),
    ("truncation_share", "truncation share", "share"),
    ("empty_share", "empty share", "share"),
    ("repeated_4gram_share", "repeated 4-gram share", "share"),
    ("distinct_2", "distinct-2", "number"),
    ("length_ratio", "length ratio", "ratio"),
)


def _threshold_text(stat: str) -> str:
    parts = []
    for rule in WARNING_THRESHOLDS.values():
        if rule["stat"] != stat:
            continue
        cut = f"{rule['threshold']:g}×" if stat == "length_ratio" else (
            fmt_share(rule["threshold"]) if stat.endswith("share") else f"{rule['threshold']:g}")
        parts.append(("> " if rule["above"] else "< ") + cut)
    return "warning " + " or ".join(parts) if parts else ""


def degeneration(analysis: Analysis | Mapping[str, Any]) -> dict | None:
    """Per system: the degeneration statistics, each cell marked when it is beyond its warning threshold
    (:data:`medqa_bench.analysis.degeneration.WARNING_THRESHOLDS`). Reference rows generate nothing, so they are
    shown for comparison and never marked (the analysis does not warn about them either)."""
    analysis = read_analysis(analysis)
    stats = analysis.degeneration.stats
    if not stats:
        return None
    kinds = analysis.kinds
    rows = []
    for s in analysis.systems:
        st = stats.get(s)
        if st is None:
            continue
        reference = kinds.get(s) == "reference"
        cells = []
        for key, _, style in _DEGENERATION_COLUMNS:
            v = st.get(key)
            if style == "share":
                text = fmt_share(v)
            else:
                text = f"{fmt(v, 2)}×" if style == "ratio" and v is not None else fmt(v, 3)
            breaches = [] if reference or v is None else [
                f"{code}: {rule['reason']}" for code, rule in WARNING_THRESHOLDS.items()
                if rule["stat"] == key and (v > rule["threshold"] if rule["above"] else v < rule["threshold"])
            ]
            cells.append({"text": text, "breach": bool(breaches), "title": "; ".join(breaches)})
        reasons = st.get("stop_reasons") or {}
        rows.append({
            "system": s,
            "kind": kinds.get(s),
            "n": st.get("n"),
            "stop_reasons": " · ".join(f"{k} {v}" for k, v in reasons.items()) if reasons else (
                "none (nothing generated)" if reference else "–"),
            "cells": cells,
        })
    return {
        "columns": [{"label": lab, "threshold": _threshold_text(key)} for key, lab, _ in _DEGENERATION_COLUMNS],
        "rows": rows,
        "warnings": analysis.degeneration.warnings,
    }


def _share_longer(b: Budget) -> str | None:
    n, longer = b.n_references or 0, b.references_longer
    return fmt_share(longer / n) if n and longer is not None else None


def budget_text(b: Budget | None) -> str:
    """A run's budget in one phrase, e.g. "64 tokens (auto); 3 of 40 references longer (7.5%)"."""
    if b is None or not b.raw:
        return "not recorded"
    share = _share_longer(b)
    cut = f"; {b.references_longer} of {b.n_references} references longer ({share})" if share else ""
    return f"{b.max_new_tokens} tokens ({b.source or '?'}){cut}"


def budget(results: Results | Mapping[str, Any], runs: list[tuple[str, dict]]) -> list[dict]:
    """How each run's ``max_new_tokens`` was set and how many references it cannot hold."""
    from ..analysis.verdict import BUDGET_CUT_SHARE

    out = []
    for name, r in runs:
        b = read_results(r).budget
        if b is None or not b.raw:
            continue
        n, longer = b.n_references or 0, b.references_longer
        out.append({
            "run": name if len(runs) > 1 else None,
            "max_new_tokens": b.max_new_tokens,
            "source": b.source,
            "rule": b.rule or "",
            "percentile": b.percentile,
            "percentile_tokens": b.percentile_tokens,
            "capped": b.capped,
            "n_references": n,
            "references_longer": longer,
            "share_longer": _share_longer(b) or "–",
            "cuts": bool(n and longer and longer / n > BUDGET_CUT_SHARE),
            "auto_would_be": b.auto_would_be,
        })
    return out


# ------------------------------------------------------------------------------------------ thresholds, leakage


SOURCE_TEXT = {
    "calibrated": "calibrated on unrelated reference pairs",
    "default": "fallback default",
    "spec": "set in the run spec",
    "argument": "given when analysing",
}


def threshold_source_text(th: dict | None) -> str:
    """One phrase: where the similarity metric's thresholds came from (for the page header)."""
    if not th:
        return ""
    src = th.get("source")
    if src == "calibrated":
        return f"calibrated on {th.get('n_pairs')} unrelated reference pairs"
    if src == "default":
        return "fallback defaults" + (f": {th['reason']}" if th.get("reason") else "")
    return SOURCE_TEXT.get(src, str(src))


def thresholds(analysis: Analysis | Mapping[str, Any]) -> dict | None:
    """Each bounded metric's soft-match thresholds, where they came from, the calibration rule and (when
    calibration fell back or was overridden) why and what it gave."""
    analysis = read_analysis(analysis)
    match = analysis.match_thresholds
    if not match and analysis.thresholds and analysis.similarity_metric:  # analysis version 1
        match = {analysis.similarity_metric: analysis.thresholds}
    if not match:
        return None
    rows = []
    for m, th in match.items():
        cal = th.get("calibrated")
        rows.append({
            "metric": m,
            "chosen": m == analysis.similarity_metric,
            "t_low": fmt(th.get("t_low")),
            "t": fmt(th.get("t")),
            "t_high": fmt(th.get("t_high")),
            "source": th.get("source") or "",
            "source_text": SOURCE_TEXT.get(th.get("source"), str(th.get("source"))),
            "n_pairs": th.get("n_pairs"),
            "calibrated": (f"t_low {fmt(cal.get('t_low'))}, t {fmt(cal.get('t'))}, t_high {fmt(cal.get('t_high'))}"
                           if cal and th.get("source") != "calibrated" else ""),
            "reason": th.get("reason") or "",
        })
    return {"rows": rows, "rules": list(dict.fromkeys(th.get("rule") for th in match.values() if th.get("rule")))}


def leakage(results: Results | Mapping[str, Any], analysis: Analysis | Mapping[str, Any]) -> dict[str, Any] | None:
    """The leakage audit: definition, counts, flagged items, and each system's headline values on the items that
    are not near-duplicates next to all items."""
    results, analysis = read_results(results), read_analysis(analysis)
    leak = analysis.leakage
    if leak is None or not leak.raw:  # absent, null or an empty object: no audit
        return None
    kinds = analysis.kinds
    threshold = leak.threshold
    items = []
    for it in leak.items:
        ref, q = it.get("reference") or {}, it.get("question") or {}
        items.append({
            "id": it.get("id"),
            "ref_score": fmt(ref.get("score")), "ref_train": ref.get("train_id") or "–",
            "ref_flag": ref.get("score") is not None and threshold is not None and ref["score"] >= threshold,
            "q_score": fmt(q.get("score")), "q_train": q.get("train_id") or "–",
            "q_flag": q.get("score") is not None and threshold is not None and q["score"] >= threshold,
        })
    clean = leak.clean
    table = None
    if clean.results:
        metrics = [m for m in metric_names(results, analysis)
                   if any(m in clean.results.get(s, {}) for s in analysis.systems)]
        rows = []
        for s in analysis.systems:
            cells = []
            for m in metrics:
                full = v.value if (v := value(results, s, m)) else None
                cl = clean.results.get(s, {}).get(m)
                cells.append({"full": fmt(full), "clean": fmt(cl),
                              "change": fmt(cl - full) if cl is not None and full is not None else "–"})
            rows.append({"system": s, "kind": kinds.get(s), "cells": cells})
        table = {"metrics": metrics, "rows": rows}
    return {
        "ran": leak.ran,
        "note": leak.note or "",
        "definition": leak.definition or "",
        "threshold": threshold,
        "n_items": leak.n_items,
        "n_near_duplicates": leak.n_near_duplicates or 0,
        "by": leak.by,
        "flagged": items,
        "n_clean": clean.n_items,
        "table": table,
    }
