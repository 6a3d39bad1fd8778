"""Calibrated soft-match thresholds: percentiles of known null lists, fallbacks, and user values winning."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medqa_bench.analysis.thresholds import MIN_NULL_PAIRS, RULE, calibrate, null_scores, resolve_thresholds
from medqa_bench.errors import SpecError

DEFAULTS = {"t": 0.30, "t_low": 0.20, "t_high": 0.45}
M = "rougeL"


def _samples(values, metric=M):
    return [{"id": f"q{i}", "null_scores": {metric: v}} for i, v in enumerate(values)]


def test_percentiles_of_a_known_null_list():
    # 0.00, 0.01, ..., 0.99 (n = 100). Linear interpolation at position p/100 * (n - 1):
    #   90th: 0.90 * 99 = 89.1  -> 0.89 + 0.1  * 0.01 = 0.891
    #   95th: 0.95 * 99 = 94.05 -> 0.94 + 0.05 * 0.01 = 0.9405
    #   99th: 0.99 * 99 = 98.01 -> 0.98 + 0.01 * 0.01 = 0.9801
    th = calibrate([i / 100 for i in range(100)], fallback=DEFAULTS)
    assert th["t_low"] == pytest.approx(0.891)
    assert th["t"] == pytest.approx(0.9405)
    assert th["t_high"] == pytest.approx(0.9801)
    assert th["source"] == "calibrated" and th["n_pairs"] == 100 and th["reason"] is None and th["rule"] == RULE
    json.dumps(th)


def test_percentiles_of_a_small_list():
    # 0.0, 0.1, ..., 1.0 (n = 11): positions 9.0, 9.5, 9.9 -> 0.9, 0.95, 0.99
    th = calibrate([i / 10 for i in range(11)], fallback=DEFAULTS)
    assert (th["t_low"], th["t"], th["t_high"]) == pytest.approx((0.9, 0.95, 0.99))


def test_too_few_pairs_falls_back():
    th = calibrate([0.1, 0.2, 0.3] * 3, fallback=DEFAULTS)  # 9 < 10
    assert MIN_NULL_PAIRS == 10
    assert th["source"] == "default" and th["n_pairs"] == 9
    assert {k: th[k] for k in DEFAULTS} == DEFAULTS
    assert "only 9" in th["reason"] and "10" in th["reason"]


def test_non_finite_scores_are_not_pairs():
    th = calibrate([0.1, 0.2, 0.3] * 3 + [math.nan, math.inf, None], fallback=DEFAULTS)
    assert th["source"] == "default" and th["n_pairs"] == 9


def test_binary_metric_falls_back():
    th = calibrate([0.0] * 50 + [1.0] * 2, fallback={"t": 0.5, "t_low": 0.5, "t_high": 0.5})
    assert th["source"] == "default" and th["t"] == 0.5
    assert "2 distinct" in th["reason"]
    th = calibrate([0.0] * 40, fallback=DEFAULTS)  # all zeros
    assert th["source"] == "default" and "1 distinct" in th["reason"]


def test_mostly_zero_null_would_match_everything_so_falls_back():
    # 96 zeros and 0.1, 0.2, 0.3, 0.4: position 0.95 * 99 = 94.05 lies among the zeros, so t = 0 and every
    # prediction (score >= 0) would be a match.
    th = calibrate([0.0] * 96 + [0.1, 0.2, 0.3, 0.4], fallback=DEFAULTS)
    assert th["source"] == "default" and "every" in th["reason"]


def test_tied_percentiles_stay_equal_and_ordered():
    # 0.2 twenty times, then 0.0 and 0.1: positions 0.9 * 21 = 18.9, 19.95, 20.79 all land among the 0.2s.
    th = calibrate([0.0, 0.1] + [0.2] * 20, fallback=DEFAULTS)
    assert th["source"] == "calibrated"
    assert th["t_low"] == th["t"] == th["t_high"] == pytest.approx(0.2)


def test_ordered_on_random_data_and_clipped():
    rng = np.random.default_rng(0)
    for _ in range(20):
        null = rng.beta(2, 8, size=int(rng.integers(10, 200))).tolist()
        th = calibrate(null, fallback=DEFAULTS)
        assert 0.0 <= th["t_low"] <= th["t"] <= th["t_high"] <= 1.0
    # a metric that strays outside [0, 1] (rounding) is clipped, never beyond the bounds
    th = calibrate([1.0 + i / 100 for i in range(20)] + [0.5], fallback=DEFAULTS)
    assert th["t_low"] == th["t"] == th["t_high"] == 1.0


def test_null_scores_reads_samples_skipping_missing():
    samples = [
        {"id": "a", "null_scores": {M: 0.1, "fuzzy": 0.4}},
        {"id": "b", "null_scores": {"fuzzy": 0.3}},
        {"id": "c"},
        {"id": "d", "null_scores": {M: float("nan")}},
        {"id": "e", "null_scores": {M: None}},
        {"id": "f", "null_scores": {M: True}},
        {"id": "g", "null_scores": {M: "0.2"}},
        {"id": "h", "null_scores": None},
    ]
    assert null_scores(samples, M) == [0.1, 0.2]
    assert null_scores(samples, "fuzzy") == [0.4, 0.3]


def test_resolve_calibrated_and_default():
    th, src = resolve_thresholds(M, _samples([i / 100 for i in range(100)]), defaults=DEFAULTS)
    assert src == "calibrated"
    assert th["t"] == pytest.approx(0.9405) and th["calibrated"]["t"] == pytest.approx(0.9405)
    th, src = resolve_thresholds(M, _samples([0.1] * 3), defaults=DEFAULTS)
    assert src == "default" and {k: th[k] for k in DEFAULTS} == DEFAULTS
    assert th["calibrated"] is None and "only 3" in th["reason"]
    th, src = resolve_thresholds(M, [{"id": "x"}], defaults=DEFAULTS)  # runs scored before null_scores existed
    assert src == "default" and th["n_pairs"] == 0
    json.dumps(th)


def test_user_thresholds_win_over_calibration():
    samples = _samples([i / 100 for i in range(100)])
    th, src = resolve_thresholds(M, samples, defaults=DEFAULTS, from_spec={M: {"t": 0.5}})
    assert src == "spec" and th["t"] == 0.5
    assert th["t_low"] == pytest.approx(0.891) and th["t_high"] == pytest.approx(0.9801)  # the rest calibrated
    assert th["calibrated"]["t"] == pytest.approx(0.9405)  # what the data said, kept next to the override
    th, src = resolve_thresholds(M, samples, defaults=DEFAULTS, from_spec={M: {"t": 0.5}},
                                 given={M: {"t": 0.6, "t_low": 0.1}})
    assert src == "argument" and (th["t"], th["t_low"]) == (0.6, 0.1)
    assert th["t_high"] == pytest.approx(0.9801)


def test_flat_form_applies_only_to_the_chosen_metric():
    samples = _samples([i / 100 for i in range(100)])
    flat = {"t": 0.4, "t_low": 0.3, "t_high": 0.5}
    th, src = resolve_thresholds(M, samples, defaults=DEFAULTS, given=flat, chosen_metric=True)
    assert src == "argument" and (th["t"], th["t_low"], th["t_high"]) == (0.4, 0.3, 0.5)
    th, src = resolve_thresholds(M, samples, defaults=DEFAULTS, given=flat, chosen_metric=False)
    assert src == "calibrated" and th["t"] == pytest.approx(0.9405)
    # per-metric form names its metric, whether chosen or not, and only that one
    th, src = resolve_thresholds(M, samples, defaults=DEFAULTS, from_spec={"fuzzy": {"t": 0.7}})
    assert src == "calibrated"
    th, src = resolve_thresholds("fuzzy", _samples([0.5] * 3, "fuzzy"), defaults=DEFAULTS,
                                 from_spec={"fuzzy": {"t": 0.7}})
    assert src == "spec" and th["t"] == 0.7 and th["t_low"] == 0.2  # default, calibration impossible


@pytest.mark.parametrize(
    "given",
    [{M: {"t": 1.2}}, {M: {"t": -0.1}}, {M: {"t_low": 0.99}}, {M: {"t_high": 1.5}}, {M: {"t": float("nan")}}],
)
def test_out_of_range_is_a_spec_error(given):
    samples = _samples([i / 100 for i in range(100)])
    with pytest.raises(SpecError, match="0 <= t_low <= t_high <= 1"):
        resolve_thresholds(M, samples, defaults=DEFAULTS, given=given)


def test_error_says_where_each_value_came_from():
    # t_low from the argument above the calibrated t_high 0.9801
    with pytest.raises(SpecError, match=r"t_low=0\.99 \(argument\).*t_high=0\.9801 \(calibrated\)"):
        resolve_thresholds(M, _samples([i / 100 for i in range(100)]), defaults=DEFAULTS, given={M: {"t_low": 0.99}})
    with pytest.raises(SpecError, match="must be a number"):
        resolve_thresholds(M, [], defaults=DEFAULTS, given={M: {"t": "high"}})
