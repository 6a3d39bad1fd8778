"""Soft-match thresholds calibrated on data no system produced, instead of guessed per metric.

A prediction "matches" its reference when a bounded similarity metric reaches ``t``, and is graded wrong /
partial / correct by ``t_low`` and ``t_high``. A hand-set ``t`` suits one data set and not the next (ROUGE-L
``t = 0.30`` gave F1 0.02 for every system on a consumer-health set whose own-vs-other ROC separated near
0.1-0.2), so the cut is read from the metric's **null distribution**:

- a null score is the metric between the first reference of an evaluated item and the first reference of its
  distractor (the seeded item of a different focus the scoring stage picks per item), stored per sample as
  ``null_scores[metric]``. No system produced either text, so the distribution says how similar *unrelated*
  answers of this data set look to this metric;
- ``t_low``, ``t``, ``t_high`` are the 90th, 95th and 99th percentiles of the null scores (``numpy.percentile``,
  linear interpolation). A match is a score that fewer than 5% of unrelated reference pairs reach;
- guards: fewer than :data:`MIN_NULL_PAIRS` finite null scores, fewer than :data:`MIN_DISTINCT` distinct values
  (exact match, all zeros), or a ``t`` equal to the smallest null score (95% or more of unrelated pairs tie at
  the bottom, so every prediction would match) fall back to the given defaults, with the reason;
- thresholds are clipped to [0, 1] and kept ordered ``t_low <= t <= t_high``; tied percentiles stay equal;
- a user-given threshold (run spec, then argument) always wins over calibration, key by key.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..errors import SpecError
from .compare import finite

__all__ = ["RULE", "PERCENTILES", "MIN_NULL_PAIRS", "MIN_DISTINCT", "null_scores", "calibrate", "resolve_thresholds",
           "spec_thresholds", "keyed_thresholds"]

RULE = (
    "t_low, t, t_high = 90th, 95th, 99th percentiles of the metric between the references of unrelated items "
    "(each item's reference vs its distractor's)"
)
PERCENTILES = {"t_low": 90.0, "t": 95.0, "t_high": 99.0}
MIN_NULL_PAIRS = 10  # below this the 95th percentile is one or two pairs' score
MIN_DISTINCT = 3  # a 0/1 (or two-valued) metric has no percentile worth calling a cut
_KEYS = ("t", "t_low", "t_high")


def null_scores(samples: list[dict], metric: str) -> list[float]:
    """``samples[i]["null_scores"][metric]`` over the items that have a finite one, in sample order.

    >>> null_scores([{"null_scores": {"rougeL": 0.1}}, {"null_scores": {}}, {}], "rougeL")
    [0.1]
    """
    out = []
    for s in samples:
        v = finite((s.get("null_scores") or {}).get(metric))
        if v is not None:
            out.append(v)
    return out


def calibrate(null: Sequence[float], *, fallback: dict[str, float]) -> dict:
    """Thresholds from the null scores by :data:`RULE`, or ``fallback`` with the reason calibration is impossible.

    Returns ``{"t", "t_low", "t_high", "source": "calibrated" | "default", "n_pairs", "rule", "reason"}``;
    ``reason`` is ``None`` when calibrated. Non-finite null scores are dropped before counting.

    >>> th = calibrate([i / 100 for i in range(100)], fallback={"t": 0.5, "t_low": 0.35, "t_high": 0.65})
    >>> [round(th[k], 4) for k in ("t_low", "t", "t_high")], th["source"]
    ([0.891, 0.9405, 0.9801], 'calibrated')
    """
    values = np.array([v for x in null if (v := finite(x)) is not None], dtype=float)
    n = int(values.size)
    out = {"source": "default", "n_pairs": n, "rule": RULE, "reason": None}
    default = {k: float(fallback[k]) for k in _KEYS}
    if n < MIN_NULL_PAIRS:
        return {**default, **out, "reason": f"only {n} null pair(s); calibration needs at least {MIN_NULL_PAIRS}"}
    distinct = int(np.unique(values).size)
    if distinct < MIN_DISTINCT:
        return {**default, **out, "reason": (
            f"the null scores take only {distinct} distinct value(s) (a 0/1 metric, or all equal): "
            f"a percentile of them is no cut; calibration needs at least {MIN_DISTINCT}"
        )}
    low, mid, high = np.percentile(values, [PERCENTILES[k] for k in ("t_low", "t", "t_high")], method="linear")
    # Percentiles are monotone; the running max only guards rounding, and clipping keeps the order.
    low, mid, high = np.clip(np.maximum.accumulate([low, mid, high]), 0.0, 1.0)
    if mid <= values.min():
        return {**default, **out, "reason": (
            f"95% or more of the {n} null pairs score the minimum {values.min():g}: t would make every "
            "prediction a match"
        )}
    return {"t": float(mid), "t_low": float(low), "t_high": float(high), **out, "source": "calibrated"}


def spec_thresholds(spec: dict) -> Optional[dict]:
    """The thresholds a run spec sets: ``spec["analysis"]["thresholds"]`` (older specs: ``spec["thresholds"]``).

    >>> spec_thresholds({"analysis": {"thresholds": {"t": 0.4}}})
    {'t': 0.4}
    """
    from ..schema import spec_analysis

    return spec_analysis(spec).thresholds or spec.get("thresholds")  # older specs held them at the top level


def keyed_thresholds(candidate: Optional[dict], chosen: Optional[str]) -> dict:
    """``candidate`` with its flat keys (``{"t": ...}``, which apply to the chosen similarity metric) put under the
    name of ``chosen``, so they keep applying to that metric when another analysis chooses another one. Every metric
    then gets the thresholds it gets with ``chosen`` chosen (a metric named explicitly keeps its own, and flat keys
    beside an explicit entry for ``chosen`` were never used).

    >>> keyed_thresholds({"t": 0.9, "rougeL": {"t": 0.2}}, "fuzzy")
    {'rougeL': {'t': 0.2}, 'fuzzy': {'t': 0.9}}
    >>> keyed_thresholds({"t": 0.9, "fuzzy": {"t": 0.5}}, "fuzzy")
    {'fuzzy': {'t': 0.5}}
    """
    if not candidate:
        return {}
    flat = {k: candidate[k] for k in _KEYS if k in candidate}
    named = {m: v for m, v in candidate.items() if m not in _KEYS}
    if flat and chosen is not None and not isinstance(named.get(chosen), dict):
        named[chosen] = flat
    return named


def _override(candidate: Optional[dict], metric: str, chosen_metric: bool) -> dict:
    """The threshold keys ``candidate`` sets for ``metric``: ``{metric: {...}}`` names it, a flat ``{"t": ...}``
    applies only to the chosen similarity metric."""
    if not candidate:
        return {}
    if isinstance(candidate.get(metric), dict):
        chosen = candidate[metric]
    elif chosen_metric:
        chosen = candidate
    else:
        return {}
    picked = {}
    for k in _KEYS:
        if k in chosen:
            try:
                picked[k] = float(chosen[k])
            except (TypeError, ValueError):
                raise SpecError(f"threshold '{k}' for '{metric}' must be a number; got {chosen[k]!r}") from None
    return picked


def resolve_thresholds(
    metric: str,
    samples: list[dict],
    *,
    defaults: dict[str, float],
    from_spec: Optional[dict] = None,
    given: Optional[dict] = None,
    chosen_metric: bool = False,
) -> tuple[dict, str]:
    """``(thresholds, source)`` for ``metric``: calibrated (or ``defaults`` when calibration is impossible) <
    run spec < argument, key by key.

    ``defaults`` is this metric's ``{"t", "t_low", "t_high"}`` fallback. ``from_spec`` and ``given`` are either
    ``{metric: {"t": ...}}`` (applies to the metric named) or a flat ``{"t": ...}`` (applies only when
    ``chosen_metric``, the analysis's similarity metric). ``source`` is ``"calibrated"``, ``"default"``,
    ``"spec"`` or ``"argument"``: the last layer that set any key. ``thresholds`` holds ``t``, ``t_low``,
    ``t_high`` as resolved, plus ``n_pairs``, ``rule`` and ``reason`` of the calibration attempt and
    ``calibrated``, the values it gave (``None`` when it fell back), so an override can be shown next to the data.

    Raises :class:`SpecError` unless ``0 <= t_low <= t_high <= 1`` and ``0 <= t <= 1``.
    """
    cal = calibrate(null_scores(samples, metric), fallback=defaults)
    values = {k: cal[k] for k in _KEYS}
    origin = dict.fromkeys(_KEYS, cal["source"])
    source = cal["source"]
    for candidate, label in ((from_spec, "spec"), (given, "argument")):
        picked = _override(candidate, metric, chosen_metric)
        if picked:
            values.update(picked)
            origin.update(dict.fromkeys(picked, label))
            source = label
    t, lo, hi = values["t"], values["t_low"], values["t_high"]
    if not (0.0 <= lo <= hi <= 1.0 and 0.0 <= t <= 1.0):
        got = ", ".join(f"{k}={values[k]:g} ({origin[k]})" for k in _KEYS)
        raise SpecError(f"thresholds for '{metric}' must satisfy 0 <= t_low <= t_high <= 1 and 0 <= t <= 1; got {got}")
    return {
        **values,
        "n_pairs": cal["n_pairs"],
        "rule": RULE,
        "reason": cal["reason"],
        "calibrated": {k: cal[k] for k in _KEYS} if cal["source"] == "calibrated" else None,
    }, source
