"""Paired comparisons of two systems on the same items.

Four tests, because they answer different questions:

- the paired bootstrap of the mean (or corpus) difference: how large is the change, with a 95% CI;
- the paired permutation (sign-flip) test of that difference: the p-value the verdict and Holm's correction use.
  Under "no difference" the two systems' values of an item are exchangeable, so the difference's sign is flipped
  item by item: exactly over all 2^n flips up to :data:`EXACT_FLIPS_MAX_N` items, else over seeded random flips.
  Unlike the bootstrap's p-value it stays valid on a handful of items (3 items can never give p < 0.25);
- McNemar's exact test on "matches at threshold t": does the adapter flip more items to a match than away;
- the Wilcoxon signed-rank test on per-item scores: is the change consistently signed, not driven by outliers.

The bootstrap and permutation tests are written here; McNemar comes from statsmodels, Wilcoxon from scipy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

# Resamples are drawn in blocks so memory stays ~ _BLOCK_CELLS indices whatever the number of items.
_BLOCK_CELLS = 2_000_000


def _bootstrap(
    n: int, statistic: Callable[[np.ndarray], np.ndarray], point: float, *, n_bootstrap: int, seed: int
) -> dict:
    """Resample item indices with replacement; ``statistic(idx)`` maps a (B, n) index block to B differences.

    The two-sided p-value is that of the bootstrap distribution shifted to the null (mean difference 0):
    p = (1 + #{|d*_b - d| >= |d|}) / (B + 1).
    """
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // max(n, 1))
    draws = []
    done = 0
    while done < n_bootstrap:
        b = min(block, n_bootstrap - done)
        draws.append(statistic(rng.integers(0, n, size=(b, n))))
        done += b
    boot = np.concatenate(draws)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0 or not math.isfinite(point):
        return {"mean_diff": point, "ci_low": None, "ci_high": None, "p_bootstrap": None}
    lo, hi = np.percentile(boot, [2.5, 97.5])
    extreme = np.count_nonzero(np.abs(boot - point) >= abs(point) - 1e-12)
    return {
        "mean_diff": float(point),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "p_bootstrap": float((1 + extreme) / (boot.size + 1)),
    }


EXACT_FLIPS_MAX_N = 12  # 4,096 sign vectors; above, seeded random flips
#: Random sign flips per test above EXACT_FLIPS_MAX_N items: the smallest p is 1/10,000, so Holm over a hundred
#: metrics can still reach 0.01 (with as few flips as bootstrap resamples, 10 metrics could not go below 0.005).
PERMUTATIONS = 9999


def _flip_signs(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(k, n) matrix of +1/-1: every sign vector for small n, else ``n_resamples`` seeded random ones."""
    if n <= EXACT_FLIPS_MAX_N:
        codes = np.arange(2**n, dtype=np.int64)[:, None] >> np.arange(n)[None, :]
        return np.where(codes & 1, -1.0, 1.0)
    rng = np.random.default_rng([seed, 0x5161])
    return rng.choice(np.array([-1.0, 1.0]), size=(n_resamples, n))


def permutation_p(statistic: Callable[[np.ndarray], np.ndarray], n: int, point: float, *, n_resamples: int = 2000,
                  seed: int = 0) -> float | None:
    """Two-sided p-value of a paired sign-flip test. ``statistic(signs)`` maps a (k, n) matrix of +1/-1 (-1: the
    item's two values swapped) to k statistics; ``point`` is the observed one. Exact: the share of all sign vectors
    at least as extreme; random flips: (1 + #extreme) / (k + 1)."""
    if n == 0 or not math.isfinite(point):
        return None
    signs = _flip_signs(n, n_resamples, seed)
    values = np.concatenate([statistic(signs[i: i + 4096]) for i in range(0, len(signs), 4096)])
    extreme = int(np.count_nonzero(np.abs(values) >= abs(point) - 1e-12))
    if n <= EXACT_FLIPS_MAX_N:
        return float(extreme / len(signs))
    return float((1 + extreme) / (len(signs) + 1))


def smallest_p(n: int, *, n_resamples: int = PERMUTATIONS) -> float:
    """The smallest two-sided p-value :func:`permutation_p` can give on ``n`` items whose differences are all
    non-zero (items that tie carry no sign to flip, so pass the number that differ): ``2 / 2**n`` when every sign
    vector is enumerated (the observed one and its mirror are the only ones as extreme), about the larger of that and
    ``1 / (n_resamples + 1)`` with random flips. 1 without an item that differs.

    >>> smallest_p(5), smallest_p(0)
    (0.0625, 1.0)
    """
    if n <= 0:
        return 1.0
    exact = 2.0 / 2.0**n
    return exact if n <= EXACT_FLIPS_MAX_N else max(exact, 1.0 / (n_resamples + 1))


def paired_bootstrap(a, b, *, n_bootstrap: int = 2000, seed: int = 0) -> dict:
    """Mean of ``a - b`` over paired items, its 95% percentile CI and a two-sided p-value.

    >>> r = paired_bootstrap([0.9, 0.8, 0.7, 0.9], [0.5, 0.6, 0.4, 0.7], n_bootstrap=500, seed=1)
    >>> round(r["mean_diff"], 3), r["ci_low"] > 0
    (0.275, True)
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size == 0:
        return {"n": 0, "mean_diff": None, "ci_low": None, "ci_high": None, "p_bootstrap": None, "p_permutation": None}
    out = _bootstrap(d.size, lambda idx: d[idx].mean(axis=1), float(d.mean()), n_bootstrap=n_bootstrap, seed=seed)
    out["p_permutation"] = permutation_p(lambda signs: (signs * d).mean(axis=1), d.size, float(d.mean()),
                                         n_resamples=PERMUTATIONS, seed=seed)
    return {"n": int(d.size), **out}


def corpus_loss(nll_sum, nll_tokens) -> float:
    """Token-weighted mean NLL over items: sum of NLLs / sum of tokens (the corpus form, not a mean of means)."""
    tokens = float(np.sum(nll_tokens))
    return float(np.sum(nll_sum)) / tokens if tokens > 0 else float("nan")


def paired_bootstrap_corpus(
    nll_a, tok_a, nll_b, tok_b, *, exponentiate: bool, n_bootstrap: int = 2000, seed: int = 0
) -> dict:
    """Difference of corpus loss (or perplexity, ``exponentiate=True``) of a minus b, items resampled in pairs."""
    nll_a, tok_a, nll_b, tok_b = (np.asarray(x, dtype=float) for x in (nll_a, tok_a, nll_b, tok_b))
    n = nll_a.size
    if n == 0:
        return {"n": 0, "mean_diff": None, "ci_low": None, "ci_high": None, "p_bootstrap": None, "p_permutation": None}
    f = np.exp if exponentiate else (lambda x: x)

    def statistic(idx):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            la = nll_a[idx].sum(axis=1) / tok_a[idx].sum(axis=1)
            lb = nll_b[idx].sum(axis=1) / tok_b[idx].sum(axis=1)
            return f(la) - f(lb)

    def swapped(signs):  # -1: the item's (nll, tokens) of a and b trade places
        keep = signs > 0
        na, ta = np.where(keep, nll_a, nll_b), np.where(keep, tok_a, tok_b)
        nb, tb = np.where(keep, nll_b, nll_a), np.where(keep, tok_b, tok_a)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return f(na.sum(axis=1) / ta.sum(axis=1)) - f(nb.sum(axis=1) / tb.sum(axis=1))

    point = float(f(corpus_loss(nll_a, tok_a)) - f(corpus_loss(nll_b, tok_b)))
    out = _bootstrap(n, statistic, point, n_bootstrap=n_bootstrap, seed=seed)
    out["p_permutation"] = permutation_p(swapped, n, point, n_resamples=PERMUTATIONS, seed=seed)
    return {"n": int(n), **out}


def mcnemar_exact(match_a, match_b) -> dict:
    """McNemar's exact test on paired booleans (adapter ``a`` vs baseline ``b``).

    ``table`` is [[both, baseline only], [adapter only, neither]]; the test uses the discordant cells.
    """
    from statsmodels.stats.contingency_tables import mcnemar

    a = np.asarray(match_a, dtype=bool)
    b = np.asarray(match_b, dtype=bool)
    table = [
        [int(np.sum(a & b)), int(np.sum(~a & b))],
        [int(np.sum(a & ~b)), int(np.sum(~a & ~b))],
    ]
    if table[0][1] + table[1][0] == 0:
        # No discordant pair: no evidence of any change (statsmodels would return p=1 too, with a warning).
        return {"table": table, "statistic": 0.0, "p": 1.0}
    res = mcnemar(np.array(table), exact=True)
    return {"table": table, "statistic": float(res.statistic), "p": float(res.pvalue)}


def wilcoxon_signed_rank(a, b) -> dict:
    """Wilcoxon signed-rank test of ``a - b`` (zero differences dropped, two-sided)."""
    from scipy.stats import wilcoxon

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    nonzero = int(np.count_nonzero(d))
    if nonzero == 0:
        return {"statistic": None, "p": 1.0, "n_nonzero": 0}
    try:
        res = wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    except ValueError:  # too few non-zero differences for the test
        return {"statistic": None, "p": None, "n_nonzero": nonzero}
    return {"statistic": float(res.statistic), "p": float(res.pvalue), "n_nonzero": nonzero}


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm-adjusted p-values over a family (e.g. the metrics of one comparison); ``None`` stays ``None``.

    >>> holm([0.01, 0.04, None, 0.03])
    [0.03, 0.06, None, 0.06]
    """
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None and math.isfinite(p))
    out: list[float | None] = [None] * len(pvalues)
    running, m = 0.0, len(present)
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = float(running)
    return out


def significance_mark(p: float | None) -> str:
    """``***`` p < 0.001, ``**`` p < 0.01, ``*`` p < 0.05, else empty."""
    if p is None:
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""
