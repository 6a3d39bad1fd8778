"""How well a metric's scores agree with expert grades, with 95% CIs from a bootstrap over questions.

Candidates of one question share its reference and its topic, so they are not independent: every CI here comes
from resampling **questions** (groups) with replacement, each drawn question bringing all its candidates. A resample
is a vector of counts (how often each question was drawn); every figure below is defined for such weights, as the
figure of the data set in which each candidate appears as often as its question was drawn. With all counts 1 it is
the figure of the data as given, which is the point estimate (and what scipy and scikit-learn compute).

The figures, each a function of (scores, grades, groups), on the score **oriented** so that higher means a better
answer (a lower-is-better metric's score is negated first, by the caller):

- ``spearman``: Spearman's rank correlation with the grade over all candidates (ties: mid-ranks);
- ``kendall_tau_b``: Kendall's τ-b with the grade (ties in either variable corrected, as ``scipy.stats.kendalltau``);
- ``within_question_spearman``: the mean over questions of the Spearman correlation inside the question. A question
  whose candidates all share one grade has nothing to agree with and is left out. A question on which the metric
  gives every candidate the same score has no ordering: its correlation is undefined and counted as **0** (no
  agreement), so a metric that cannot tell answers apart is not excused on the questions where it cannot;
- ``pairwise_accuracy``: over all pairs of candidates of the same question with different grades, the share the
  metric orders as the experts did; a pair the metric ties counts 0.5 (a coin flip);
- ``auc_good``: ROC AUC of the score for good answers (grade ≥ the threshold, default 3) against the rest;
- ``auc_on_topic``: the same AUC, good against "related but not an answer" (``related_grade`` ≤ grade < threshold:
  on the LiveQA scale 2-Related, and the mean grades 2.5 of answers judged twice): a detector of the topic alone
  cannot win it, since every negative is on the question's topic.

An AUC is undefined (None) where a resample holds no positive or no negative; its CI is over the resamples where it
is defined. Figures are compared metric against metric by the same resamples (:func:`compare`): the CI of the
difference and a two-sided p-value, Holm-corrected over the pairs of metrics on each figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

FIGURES = ("spearman", "kendall_tau_b", "within_question_spearman", "pairwise_accuracy", "auc_good", "auc_on_topic")
FIGURE_TITLES = {
    "spearman": "Spearman",
    "kendall_tau_b": "Kendall τ-b",
    "within_question_spearman": "within-question Spearman",
    "pairwise_accuracy": "pairwise accuracy",
    "auc_good": "AUC good vs rest",
    "auc_on_topic": "AUC good vs related",
}
FIGURE_DEFINITIONS = {
    "spearman": "Spearman's rank correlation of score and grade over all candidates (mid-ranks for ties)",
    "kendall_tau_b": "Kendall's tau-b of score and grade over all candidates",
    "within_question_spearman": "mean over questions with two or more distinct grades of the Spearman correlation "
                                "inside the question; a question the metric scores constant counts 0",
    "pairwise_accuracy": "share of same-question candidate pairs with different grades that the metric orders as "
                         "the experts did; a metric tie counts 0.5",
    "auc_good": "ROC AUC, good (grade >= threshold) against every other candidate",
    "auc_on_topic": "ROC AUC, good against related (related_grade <= grade < threshold): on topic, not an answer",
}
#: Resample rows per block: bounds the (block, candidates) arrays at about this many cells.
_BLOCK_CELLS = 2_000_000
_PAIR_ROWS = 512  # candidate rows per block of the (rows, candidates) pair matrices


# --------------------------------------------------------------------------------------------- the bootstrap


@dataclass(frozen=True)
class QuestionBootstrap:
    """Seeded resamples of questions: ``counts[b, g]`` is how often question ``g`` is drawn in resample ``b``.

    ``codes[i]`` is candidate ``i``'s question. Every metric of one validation shares these resamples, so two
    metrics' figures are paired and their difference has a CI. :meth:`subset` keeps the resamples and drops
    candidates (a metric that left some unscored).

    >>> boot = QuestionBootstrap.draw(["q1", "q1", "q2", "q3"], n_bootstrap=4, seed=0)
    >>> boot.counts.shape, boot.counts.sum(axis=1).tolist()
    ((4, 3), [3.0, 3.0, 3.0, 3.0])
    """

    codes: np.ndarray
    counts: np.ndarray
    groups: tuple[str, ...]
    seed: int

    @classmethod
    def draw(cls, groups: Sequence[str], *, n_bootstrap: int = 2000, seed: int = 0) -> "QuestionBootstrap":
        names = tuple(dict.fromkeys(str(g) for g in groups))
        index = {name: k for k, name in enumerate(names)}
        codes = np.array([index[str(g)] for g in groups], dtype=np.int64)
        n_groups = len(names)
        rng = np.random.default_rng([seed, 0x9A11D])
        draws = rng.integers(0, n_groups, size=(n_bootstrap, n_groups))
        offsets = (np.arange(n_bootstrap) * n_groups)[:, None]
        counts = np.bincount((draws + offsets).ravel(), minlength=n_bootstrap * n_groups).reshape(n_bootstrap, n_groups)
        return cls(codes, counts.astype(np.float64), names, seed)

    @property
    def n_bootstrap(self) -> int:
        return int(self.counts.shape[0])

    def subset(self, mask) -> "QuestionBootstrap":
        return QuestionBootstrap(self.codes[np.asarray(mask, dtype=bool)], self.counts, self.groups, self.seed)

    def with_counts(self, counts) -> "QuestionBootstrap":
        return QuestionBootstrap(self.codes, np.atleast_2d(np.asarray(counts, dtype=np.float64)), self.groups, self.seed)

    def identity(self) -> "QuestionBootstrap":
        """The data as given: one "resample" drawing every question once (the point estimate)."""
        return self.with_counts(np.ones((1, len(self.groups))))


def _blocks(n_resamples: int, n_cells_per_row: int):
    step = max(1, _BLOCK_CELLS // max(n_cells_per_row, 1))
    for start in range(0, n_resamples, step):
        yield slice(start, min(start + step, n_resamples))


def _onehot(codes: np.ndarray, n_groups: int) -> np.ndarray:
    out = np.zeros((codes.size, n_groups))
    out[np.arange(codes.size), codes] = 1.0
    return out


def _group_midcounts(x: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """``out[i, h]`` = #{j in question h: x_j < x_i} + ½·#{j in h: x_j = x_i}: with counts ``c``, the mid-rank of
    candidate i among the resample's copies is ``out[i] @ c + ½``."""
    out = np.zeros((x.size, n_groups))
    for h in range(n_groups):
        sorted_h = np.sort(x[codes == h])
        if sorted_h.size:
            left = np.searchsorted(sorted_h, x, side="left")
            right = np.searchsorted(sorted_h, x, side="right")
            out[:, h] = left + 0.5 * (right - left)
    return out


def _pair_sums(codes: np.ndarray, n_groups: int, pair: Callable[[slice], np.ndarray]) -> np.ndarray:
    """``out[g, h]`` = Σ over candidates i of g, j of h of ``pair(rows)[i, j]`` (computed in row blocks)."""
    onehot = _onehot(codes, n_groups)
    out = np.zeros((n_groups, n_groups))
    for start in range(0, codes.size, _PAIR_ROWS):
        rows = slice(start, min(start + _PAIR_ROWS, codes.size))
        out += onehot[rows].T @ (pair(rows) @ onehot)
    return out


def _quadratic(counts: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return np.einsum("bg,gh,bh->b", counts, matrix, counts)


def _weighted_pearson(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    sw = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        da = a - ((w * a).sum(axis=1) / sw)[:, None]
        db = b - ((w * b).sum(axis=1) / sw)[:, None]
        return (w * da * db).sum(axis=1) / np.sqrt((w * da * da).sum(axis=1) * (w * db * db).sum(axis=1))


# --------------------------------------------------------------------------------------------- the figures


def _spearman_w(x, y, boot: QuestionBootstrap) -> np.ndarray:
    n_groups = len(boot.groups)
    lx, ly = _group_midcounts(x, boot.codes, n_groups), _group_midcounts(y, boot.codes, n_groups)
    out = []
    for rows in _blocks(boot.n_bootstrap, x.size):
        c = boot.counts[rows]
        out.append(_weighted_pearson(c @ lx.T + 0.5, c @ ly.T + 0.5, c[:, boot.codes]))
    return np.concatenate(out)


def _kendall_w(x, y, boot: QuestionBootstrap) -> np.ndarray:
    n_groups = len(boot.groups)
    sign = _pair_sums(boot.codes, n_groups, lambda r: np.sign(x[r, None] - x[None, :]) * np.sign(y[r, None] - y[None, :]))
    tie_x = _pair_sums(boot.codes, n_groups, lambda r: (x[r, None] == x[None, :]).astype(np.float64))
    tie_y = _pair_sums(boot.codes, n_groups, lambda r: (y[r, None] == y[None, :]).astype(np.float64))
    c = boot.counts
    size = c @ np.bincount(boot.codes, minlength=n_groups).astype(np.float64)  # copies in each resample
    pairs = size * (size - 1) / 2
    # ordered pairs of copies, a copy with itself included (tied in both); unordered distinct pairs: (sum - size) / 2
    untied_x = pairs - (_quadratic(c, tie_x) - size) / 2
    untied_y = pairs - (_quadratic(c, tie_y) - size) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return (_quadratic(c, sign) / 2) / np.sqrt(untied_x * untied_y)


def _auc_w(x, y, boot: QuestionBootstrap, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    n_groups = len(boot.groups)
    pos, neg = positive.astype(np.float64), negative.astype(np.float64)
    wins = _pair_sums(boot.codes, n_groups, lambda r: pos[r, None] * neg[None, :] * (
        (x[r, None] > x[None, :]) + 0.5 * (x[r, None] == x[None, :])))
    c = boot.counts
    n_pos = c @ np.bincount(boot.codes, weights=pos, minlength=n_groups)
    n_neg = c @ np.bincount(boot.codes, weights=neg, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _quadratic(c, wins) / (n_pos * n_neg)


def _by_question(x, y, codes, n_groups, per_question: Callable) -> tuple[np.ndarray, np.ndarray]:
    """(value, weight) per question: ``per_question(x_g, y_g) -> (value, weight)``; weight 0 leaves it out."""
    values, weights = np.zeros(n_groups), np.zeros(n_groups)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(n_groups + 1))
    for g in range(n_groups):
        members = order[bounds[g]: bounds[g + 1]]
        if members.size:
            values[g], weights[g] = per_question(x[members], y[members])
    return values, weights


def question_spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(Spearman within one question, 1), or (0, 0) when its grades are all equal (left out); a metric constant
    on the question scores 0 there (see the module docstring)."""
    from scipy.stats import rankdata

    if np.unique(y).size < 2:
        return 0.0, 0.0
    if np.unique(x).size < 2:
        return 0.0, 1.0
    return float(np.corrcoef(rankdata(x), rankdata(y))[0, 1]), 1.0


def question_pairs(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(pairs ordered as the experts did, ties ½; pairs with different grades) within one question."""
    upper = np.triu(np.ones((x.size, x.size), dtype=bool), k=1)
    differ = upper & (y[:, None] != y[None, :])
    agree = np.sign(x[:, None] - x[None, :]) == np.sign(y[:, None] - y[None, :])
    tied = x[:, None] == x[None, :]
    return float((agree & differ).sum() + 0.5 * (tied & differ).sum()), float(differ.sum())


def _ratio_w(values: np.ndarray, weights: np.ndarray, boot: QuestionBootstrap, *, weighted_mean: bool) -> np.ndarray:
    """Σ_g c_g·v_g·w_g / Σ_g c_g·w_g (a mean of per-question values) or Σ c_g·v_g / Σ c_g·w_g (pooled shares)."""
    num = boot.counts @ (values * weights if weighted_mean else values)
    den = boot.counts @ weights
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def figure_replicates(scores, grades, boot: QuestionBootstrap, *, good_threshold: float = 3.0,
                      related_grade: float = 2.0) -> dict[str, np.ndarray]:
    """Every figure of :data:`FIGURES` under each of ``boot``'s resamples (NaN where undefined)."""
    x, y = np.asarray(scores, dtype=np.float64), np.asarray(grades, dtype=np.float64)
    n_groups = len(boot.groups)
    good = y >= good_threshold
    related = (y >= related_grade) & ~good
    rho, rho_w = _by_question(x, y, boot.codes, n_groups, question_spearman)
    agree, pairs = _by_question(x, y, boot.codes, n_groups, question_pairs)
    return {
        "spearman": _spearman_w(x, y, boot),
        "kendall_tau_b": _kendall_w(x, y, boot),
        "within_question_spearman": _ratio_w(rho, rho_w, boot, weighted_mean=True),
        "pairwise_accuracy": _ratio_w(agree, pairs, boot, weighted_mean=False),
        "auc_good": _auc_w(x, y, boot, good, ~good),
        "auc_on_topic": _auc_w(x, y, boot, good, related),
    }


def _point(name: str, scores, grades, groups, **options) -> float | None:
    boot = QuestionBootstrap.draw(list(groups) if groups is not None else ["all"] * len(scores), n_bootstrap=0)
    value = figure_replicates(scores, grades, boot.identity(), **options)[name][0]
    return float(value) if math.isfinite(value) else None


def spearman(scores, grades, groups=None) -> float | None:
    """Spearman's ρ of scores and grades over all candidates.

    >>> round(spearman([0.1, 0.4, 0.3, 0.9], [1, 2, 3, 4]), 3)
    0.8
    """
    return _point("spearman", scores, grades, groups)


def kendall_tau_b(scores, grades, groups=None) -> float | None:
    """Kendall's τ-b of scores and grades over all candidates."""
    return _point("kendall_tau_b", scores, grades, groups)


def within_question_spearman(scores, grades, groups) -> float | None:
    """The mean over questions of the within-question Spearman (see the module docstring for ties)."""
    return _point("within_question_spearman", scores, grades, groups)


def pairwise_accuracy(scores, grades, groups) -> float | None:
    """Share of same-question pairs with different grades that the scores order as the grades (ties ½)."""
    return _point("pairwise_accuracy", scores, grades, groups)


def auc_good(scores, grades, groups=None, *, good_threshold: float = 3.0) -> float | None:
    """ROC AUC of the scores for grade ≥ ``good_threshold`` against the rest."""
    return _point("auc_good", scores, grades, groups, good_threshold=good_threshold)


def auc_on_topic(scores, grades, groups=None, *, good_threshold: float = 3.0, related_grade: float = 2.0) -> float | None:
    """ROC AUC of the scores for good answers against related ones (``related_grade`` ≤ grade < threshold)."""
    return _point("auc_on_topic", scores, grades, groups, good_threshold=good_threshold, related_grade=related_grade)


# --------------------------------------------------------------------------------------------- summaries


def interval(point: float, replicates: np.ndarray) -> dict:
    """``{"value", "ci_low", "ci_high"}``: the point and the 2.5th/97.5th percentiles of the finite replicates."""
    finite = replicates[np.isfinite(replicates)]
    if not math.isfinite(point):
        return {"value": None, "ci_low": None, "ci_high": None}
    if finite.size == 0:
        return {"value": float(point), "ci_low": None, "ci_high": None}
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return {"value": float(point), "ci_low": float(lo), "ci_high": float(hi)}


def summarize(scores, grades, boot: QuestionBootstrap, **options) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Each figure with its CI, and its replicates with the point first (kept to compare metrics on the same
    resamples). One pass: the point is the resample that draws every question once."""
    both = boot.with_counts(np.vstack([np.ones((1, len(boot.groups))), boot.counts]))
    reps = figure_replicates(scores, grades, both, **options)
    return {name: interval(reps[name][0], reps[name][1:]) for name in FIGURES}, reps


def shifted_null_p(point: float, replicates: np.ndarray) -> float | None:
    """Two-sided bootstrap p-value of a difference, the bootstrap distribution shifted to the null:
    (1 + #{|d* − d| ≥ |d|}) / (B + 1), over the finite replicates (as :mod:`medqa_bench.analysis.stats`)."""
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0 or not math.isfinite(point):
        return None
    extreme = np.count_nonzero(np.abs(finite - point) >= abs(point) - 1e-12)
    return float((1 + extreme) / (finite.size + 1))


def compare(names: Sequence[str], replicates: dict[str, dict[str, np.ndarray]],
            figures: Sequence[str] = FIGURES) -> list[dict]:
    """Every pair of ``names`` on every figure: difference (a − b), its CI, p and Holm's p over the pairs of one
    figure. ``replicates[name][figure]`` holds the point first, then the resamples (:func:`summarize`)."""
    from ..analysis.stats import holm

    rows = []
    for figure in figures:
        block = []
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                diff = replicates[a][figure] - replicates[b][figure]
                point, reps = diff[0], diff[1:]
                block.append({"figure": figure, "a": a, "b": b, **_diff(point, reps)})
        for row, adjusted in zip(block, holm([r["p"] for r in block])):
            row["p_holm"] = adjusted
        rows += block
    return rows


def _diff(point: float, reps: np.ndarray) -> dict:
    ci = interval(point, reps)
    return {"difference": ci["value"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"], "p": shifted_null_p(point, reps)}


def pooled_share(values, boot: QuestionBootstrap) -> dict:
    """The mean of per-unit ``values`` (a win rate: 1, ½ or 0 each) with its CI, units resampled with their question."""
    v = np.asarray(values, dtype=np.float64)
    n_groups = len(boot.groups)
    sums = np.bincount(boot.codes, weights=v, minlength=n_groups)
    units = np.bincount(boot.codes, minlength=n_groups).astype(np.float64)
    point = sums.sum() / units.sum() if units.sum() else float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = (boot.counts @ sums) / (boot.counts @ units)
    return {**interval(point, reps), "n": int(v.size)}
