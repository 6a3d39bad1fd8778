"""What the verdict reads from ``results["validity"]`` (:mod:`medqa_bench.validity.measured`): the primary metric and
an adapter's result on it, and the warning when a conclusion rests only on weak or unmeasured instruments.

Numbers only come from the validity block and the judged comparisons; nothing is computed here.
"""

from __future__ import annotations

from ..schema import MetricValidity, RunValidity


def _interval(x: dict | None, digits: int = 2) -> str:
    x = x or {}
    if x.get("value") is None:
        return "–"
    if x.get("ci_low") is None:
        return f"{x['value']:.{digits}f}"
    return f"{x['value']:.{digits}f} [{x['ci_low']:.{digits}f}, {x['ci_high']:.{digits}f}]"


def primary_result(primary: str | None, versus: dict[str, list[dict]]) -> dict | None:
    """The adapter's result on the primary metric: its outcome and the judged comparison's numbers."""
    if not primary:
        return None
    for outcome in ("improves", "regresses", "no_difference"):
        for r in versus[outcome]:
            if r["metric"] == primary:
                return {"metric": primary, "outcome": outcome, **{k: r[k] for k in ("against", "diff", "ci", "p_holm")}}
    return {"metric": primary, "outcome": "not_compared", "against": None, "diff": None, "ci": [None, None],
            "p_holm": None}


def weak_metrics_warning(adapter: str, versus: dict[str, list[dict]], validity: RunValidity,
                          primary: dict | None) -> dict | None:
    """A warning when every metric on which ``adapter`` differs significantly from its strongest baseline is below
    the validity floor or was not measured against expert grades: the conclusion rests on weak instruments alone."""
    significant = [(r["metric"], outcome) for outcome in ("improves", "regresses") for r in versus[outcome]]
    if not significant:
        return None
    floor = validity.floor
    weak = []
    for metric, outcome in significant:
        entry = validity.metrics.get(metric)
        if entry is None or not entry.raw:  # absent, null or an empty object
            entry = MetricValidity(reason="no validity figures recorded for it")
        if entry.measured and entry.below_floor is False:
            return None  # one valid instrument carries the conclusion
        if entry.measured:
            wq = entry.figures.get(floor.figure or "within_question_spearman")
            why = f"within-question Spearman {_interval(wq)} < {floor.value}"
        else:
            why = "not measured against expert grades: " + str(entry.reason or "")
        weak.append({"metric": metric, "outcome": outcome, "measured": entry.measured, "why": why})
    listing = "; ".join(f"{w['metric']} ({w['outcome']}; {w['why']})" for w in weak)
    tail = ""
    if primary and primary["outcome"] == "no_difference":
        tail = f"; on the primary metric {primary['metric']} the difference is not significant"
    return {"code": "weak_metrics", "metrics": [w["metric"] for w in weak], "message":
            f"the conclusion rests only on metrics that agree weakly with expert grades or were not measured against "
            f"them: every metric on which {adapter} differs significantly from its strongest baseline is below the "
            f"validity floor (within-question Spearman {floor.value}) or unmeasured: {listing}{tail}"}


def primary_line(validity: RunValidity) -> str:
    primary = validity.primary
    where = "the bundled measurement" if validity.source == "bundled" else validity.source
    if not primary.metric:
        return f"no primary metric: {primary.reason} (validity figures: {where})"
    entry = validity.metrics.get(primary.metric) or MetricValidity()
    wq = entry.figures.get("within_question_spearman")
    return (f"primary metric: {primary.metric}, within-question Spearman with expert grades {_interval(wq)} "
            f"({primary.reason}; validity figures: {where})")
