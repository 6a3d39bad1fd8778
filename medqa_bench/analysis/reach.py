"""What the verdict's paired test can show with the items it has, and why its bootstrap CI may seem to disagree.

The verdict's test is the paired sign-flip permutation test (:func:`medqa_bench.analysis.stats.permutation_p`),
Holm-adjusted over the metrics an adapter is judged on. On few items it cannot reach significance at all: exact over
every sign vector up to 12 items, its smallest two-sided p is 2 / 2^n (5 items: 0.0625), and Holm multiplies the
smallest p of a family of m metrics by m. Items on which the two rows score alike carry no sign to flip, so they do
not count (exact match, which every row scores 0 on, can never differ). :func:`reach` computes, per judged metric,
the smallest Holm p its row could have had, whatever the scores: the floor. A row whose floor is at or above the
verdict's alpha *cannot reach significance*, which the verdict says in those words instead of "no significant
difference".

The 95% bootstrap CI of the difference is read beside the test. Where it excludes 0 while the test is not
significant, :func:`ci_note` gives the reason in one clause: on few items the percentile bootstrap is approximate (it
resamples the few values there are) while the permutation test is exact; on many, the CI is not corrected for the
number of metrics tested and Holm's p is.

Nothing here recomputes a statistic: it reads the rows of ``results["analysis"]["paired"]``.
"""

from __future__ import annotations

import math

from . import stats

FEW_ITEMS = 30  # below this many items a percentile bootstrap CI is approximate (and the verdict says "few")


def _count(x) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) and x >= 0 else None


def _tested(row: dict) -> bool:
    p = row.get("p_permutation")
    return isinstance(p, (int, float)) and math.isfinite(p)


def reach(rows: dict[str, dict], *, alpha: float) -> dict[str, dict]:
    """``{metric: reach}`` for the judged rows of one adapter (``analysis["paired"][adapter]["metrics"]``, one Holm
    family), each ``{"n", "n_differ", "m", "p_min", "p_floor", "reachable"}``: its items, those whose two values
    differ (Wilcoxon's non-zero differences; else all), the family's size, the smallest raw p the test can give and
    the smallest Holm p (the floor), and whether the floor is below ``alpha``. A row without an item count (a
    hand-made table) gets ``reachable: None``: nothing is claimed; it counts as able to reach anything in the
    others' Holm floors, so their floors are never overstated.

    >>> rows = {m: {"n": 5, "p_permutation": 0.5, "wilcoxon": {"n_nonzero": 5}} for m in ("a", "b")}
    >>> r = reach(rows, alpha=0.05)["a"]
    >>> r["p_min"], r["p_floor"], r["reachable"]
    (0.0625, 0.125, False)
    """
    family = [m for m, row in rows.items() if _tested(row)]
    out: dict[str, dict] = {}
    minima: list[float] = []
    for m in family:
        row = rows[m]
        n = _count(row.get("n"))
        differ = _count((row.get("wilcoxon") or {}).get("n_nonzero"))
        differ = n if differ is None or n is None else min(differ, n)
        p_min = stats.smallest_p(differ) if differ is not None else None
        out[m] = {"n": n, "n_differ": differ, "m": len(family), "p_min": p_min}
        minima.append(p_min if p_min is not None else 0.0)
    for m, floor in zip(family, stats.holm(minima)):
        known = out[m]["p_min"] is not None
        out[m]["p_floor"] = floor if known else None
        out[m]["reachable"] = (floor < alpha) if known else None
    return out


def _p(p: float) -> str:
    return f"{p:.4g}"


def reach_text(r: dict) -> str:
    """Why a row cannot reach significance, e.g. "with 5 items the smallest p the paired test can give is 0.0625"."""
    n, differ = r["n"], r["n_differ"]
    if not differ:
        return f"the two rows score alike on all {n} items"
    base = (f"with {n} items the smallest p the paired test can give is {_p(r['p_min'])}" if differ == n else
            f"{differ} of {n} items differ, and the smallest p the paired test can give on them is {_p(r['p_min'])}")
    if r["p_floor"] is not None and r["p_floor"] > r["p_min"]:
        base += f", {_p(r['p_floor'])} after Holm's correction over {r['m']} metrics"
    return base


def ci_note(row: dict, r: dict | None, *, alpha: float) -> str | None:
    """One clause when the bootstrap CI of a row's difference excludes 0 while its Holm p does not reach ``alpha``
    (``row``: a judged row with ``ci_low``/``ci_high``, ``p_permutation``, ``p_holm``); None otherwise."""
    lo, hi, p_holm = row.get("ci_low"), row.get("ci_high"), row.get("p_holm")
    if lo is None or hi is None or not (lo > 0 or hi < 0) or (p_holm is not None and p_holm < alpha):
        return None
    n = (r or {}).get("n") or row.get("n")
    if (r and r.get("reachable") is False) or (isinstance(n, int) and n < FEW_ITEMS):
        return "the bootstrap CI is approximate on few items; the permutation test is exact"
    p = row.get("p_permutation")
    if p is not None and p < alpha:
        m = (r or {}).get("m")
        return (f"the CI is not corrected for the {m or 'several'} metrics tested; Holm's correction is "
                f"(p {_p(p)} before it)")
    return "the percentile bootstrap CI and the permutation test part at the margin; the verdict reads the test"
