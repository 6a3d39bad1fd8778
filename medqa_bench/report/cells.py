"""Numbers as the report's tables print them: values, p-values, intervals and paired differences.

Formatting only: every number here was computed by :mod:`medqa_bench.analysis`.
"""

from __future__ import annotations

import math

from ..analysis.stats import significance_mark

BLANK_DELTA = {"text": "–", "cls": "same", "arrow": "", "mark": "", "title": "", "pct": ""}


def fmt(x, digits: int = 3) -> str:
    """``fmt(0.12345) == "0.123"``, ``fmt(12.345) == "12.35"``, ``fmt(None) == "–"``."""
    if x is None or isinstance(x, bool) or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    x = float(x)
    if abs(x) >= 100:
        return f"{x:.1f}"
    if abs(x) >= 10:
        return f"{x:.2f}"
    return f"{x:.{digits}f}"


def fmt_signed(x, digits: int = 3) -> str:
    text = fmt(x, digits)
    return f"+{text}" if x is not None and text != "–" and float(x) > 0 else text


def fmt_p(p) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_share(x) -> str:
    """A share as a percentage: ``fmt_share(0.25) == "25%"``, one decimal below 10%."""
    if x is None:
        return "–"
    return f"{100 * x:.0f}%" if x >= 0.1 or x == 0 else f"{100 * x:.1f}%"


def ci(row: dict, digits: int = 3) -> str:
    return f"[{fmt(row.get('ci_low'), digits)}, {fmt(row.get('ci_high'), digits)}]"


def delta(row: dict | None, *, pct_of: float | None = None, digits: int = 3, p_key: str = "p_holm") -> dict | None:
    """A paired difference as a table cell: text, arrow, better/worse class (faded when not significant at
    ``p_key`` < 0.05), significance mark and a tooltip with the CI and p-values."""
    if not row or row.get("mean_diff") is None:
        return None
    d = row["mean_diff"]
    p = row.get(p_key)
    significant = p is not None and p < 0.05
    cls = "same" if row.get("better") is None else ("better" if row["better"] else "worse")
    holm = f", Holm p = {fmt_p(row.get('p_holm'))}" if row.get("p_holm") is not None else ""
    return {
        "text": fmt_signed(d, digits),
        "pct": f"{100 * d / pct_of:+.1f}%" if pct_of else "",
        "arrow": "▲" if d > 0 else "▼" if d < 0 else "=",
        "cls": cls + ("" if significant else " ns"),
        "mark": significance_mark(p),
        "title": f"Δ {fmt(d, digits)} {ci(row, digits)}, paired permutation p = {fmt_p(row.get('p_permutation'))}{holm}",
    }
