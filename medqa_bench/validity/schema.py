"""``validity.json``: the record of ``medqa-bench metrics validate``, declared as typed dictionaries.

A figure is an :class:`Interval` (value and 95% percentile CI from the bootstrap over questions; None where the figure
is undefined). Figures are on each metric's own direction turned to "higher is a better answer" (a lower-is-better
metric's scores are negated before the statistics), so a positive correlation always means agreement with the experts.

``primary`` names the metric to trust first: among the metrics (not the ``answer_length`` baseline) that pass the
robustness suite (every perturbation's win-rate CI lower bound above 0.5), the one with the highest
within-question Spearman; None when no metric passes. ``primary_reason`` says why in one sentence.
"""

from __future__ import annotations

from typing import Literal, Optional, TypedDict

VALIDITY_VERSION = "1"

PRIMARY_RULE = (
    "among the metrics that pass the robustness suite (the 95% CI of the win rate above 0.5 on every perturbation), "
    "the one with the highest within-question Spearman with the expert grade; none when no metric passes"
)


class Interval(TypedDict):
    value: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]


class WinRate(Interval):
    n: int  # good candidates with this perturbation that the metric scored


class MetricValidity(TypedDict):
    name: str
    kind: Literal["metric", "baseline"]  # baseline: answer length in words, no reference
    higher_is_better: bool
    signature: str
    source: str
    n_scored: int
    n_unscored: int  # candidates the metric could not score (NaN from an allows_missing metric such as a judge)
    figures: dict[str, Interval]  # keys: stats.FIGURES
    robustness: dict[str, WinRate]  # keys: robustness.PERTURBATIONS
    passes_robustness: bool
    scores: list[Optional[float]]  # per candidate, in the order of Validity["candidates"]; None: not scored
    seconds: float  # scoring every candidate and perturbed answer, model loading included


class Comparison(TypedDict):
    figure: str
    a: str
    b: str
    difference: Optional[float]  # a - b
    ci_low: Optional[float]
    ci_high: Optional[float]
    p: Optional[float]  # two-sided bootstrap p (the shifted-null form of medqa_bench.analysis.stats)
    p_holm: Optional[float]  # Holm over every pair of metrics on this figure
    n: int  # candidates both metrics scored


class JudgedSetInfo(TypedDict):
    name: str
    construction: str
    counts: dict
    fingerprint: str
    license: str
    reference_aggregation: str


class Settings(TypedDict):
    good_threshold: float
    related_grade: float
    n_bootstrap: int
    seed: int
    resampled: str  # "questions"
    ci: str  # "95% percentile"


class RobustnessInfo(TypedDict):
    perturbations: dict[str, str]  # name -> what it is
    good_candidates: int
    skipped: dict[str, int]  # perturbed answers identical in words to the good answer, left out
    boilerplate: dict  # {"text": the fixed answer, "instead_for": {question id: the runner-up it got}}
    other_reference: dict[str, str]  # question id -> the question whose reference it got
    pass_rule: str


class SkippedMetric(TypedDict):
    name: str
    reason: str


class Candidate(TypedDict):
    group: str
    candidate_id: str
    grade: float


class Validity(TypedDict):
    version: Literal["1"]
    created: str
    medqa_bench_version: str
    judged_set: JudgedSetInfo
    settings: Settings
    figures: dict[str, str]  # name -> definition
    metrics: dict[str, MetricValidity]
    skipped_metrics: list[SkippedMetric]
    comparisons: list[Comparison]
    robustness: RobustnessInfo
    primary: Optional[str]
    primary_rule: str
    primary_reason: str
    candidates: list[Candidate]
