"""Paired comparisons of an adapter with its baseline on the same items.

Three tests, because they answer different questions:

- the paired bootstrap of the mean (or corpus) difference: how large is the change, with a 95% CI;
- McNemar's exact test on "matches at threshold t": does the adapter flip more items to a match than away;
- the Wilcoxon signed-rank test on per-item scores: is the change consistently signed, not driven by outliers.

Only the paired bootstrap is written here; McNemar comes from statsmodels, Wilcoxon from scipy.
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


def paired_bootstrap(a, b, *, n_bootstrap: int = 2000, seed: int = 0) -> dict:
    """Mean of ``a - b`` over paired items, its 95% percentile CI and a two-sided p-value.

    >>> r = paired_bootstrap([0.9, 0.8, 0.7, 0.9], [0.5, 0.6, 0.4, 0.7], n_bootstrap=500, seed=1)
    >>> round(r["mean_diff"], 3), r["ci_low"] > 0
    (0.275, True)
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size == 0:
        return {"n": 0, "mean_diff": None, "ci_low": None, "ci_high": None, "p_bootstrap": None}
    out = _bootstrap(d.size, lambda idx: d[idx].mean(axis=1), float(d.mean()), n_bootstrap=n_bootstrap, seed=seed)
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
        return {"n": 0, "mean_diff": None, "ci_low": None, "ci_high": None, "p_bootstrap": None}
    f = np.exp if exponentiate else (lambda x: x)

    def statistic(idx):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            la = nll_a[idx].sum(axis=1) / tok_a[idx].sum(axis=1)
            lb = nll_b[idx].sum(axis=1) / tok_b[idx].sum(axis=1)
            return f(la) - f(lb)

    point = float(f(corpus_loss(nll_a, tok_a)) - f(corpus_loss(nll_b, tok_b)))
    return {"n": int(n), **_bootstrap(n, statistic, point, n_bootstrap=n_bootstrap, seed=seed)}


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
    """Holm-adjusted p-values (family = the metrics of one adapter); ``None`` stays ``None``."""
    from statsmodels.stats.multitest import multipletests

    present = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    out: list[float | None] = [None] * len(pvalues)
    if present:
        adjusted = multipletests([pvalues[i] for i in present], method="holm")[1]
        for i, p in zip(present, adjusted):
            out[i] = float(p)
    return out


def significance_mark(p: float | None) -> str:
    """``***`` p < 0.001, ``**`` p < 0.01, ``*`` p < 0.05, else empty."""
    if p is None:
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""
