"""Paired comparisons between the rows of a run: each adapter against every baseline row, and every language-model
row against every reference row, on the same items.

A comparison of system ``a`` with system ``b`` holds, per metric, the paired bootstrap of the difference (the
metric's own aggregate: the mean, or Σ NLL / Σ tokens for loss and perplexity), Wilcoxon's signed-rank test,
McNemar's exact test at the metric's match threshold, wins/ties/losses, and Holm-adjusted p-values over the
metrics of that one comparison.

The **strongest baseline** of an adapter, per metric, is the baseline row of its run with the best corpus value on
that metric (direction-aware). An adapter is judged against it: beating a baseline prompted in a format it was not
made for proves nothing (measured: an instruct model asked in the reference template left 155 of 266 answers
empty, and in its own chat template beat the adapter on every generation metric).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..schema import MetricInfo, Results, read_record
from . import stats


def finite(x) -> float | None:
    """``x`` as a float when it is a finite number, else None (missing, boolean, text, NaN or infinite): what the
    analysis reads from a recorded score or NLL field.

    >>> finite(0.5), finite("2"), finite(True), finite(float("nan")), finite(None)
    (0.5, 2.0, None, None, None)
    """
    if x is None or isinstance(x, bool):
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def is_perplexity(metric: str) -> bool:
    return "perplex" in metric.lower() or metric.lower() == "ppl"


def per_item(samples: list[dict], system: str, metric: str, info: MetricInfo | Mapping[str, Any]) -> dict[str, float]:
    """``{item id: value}`` of one system on one metric (NLL metrics from the NLL fields), finite values only;
    ``info`` is the metric's record (or its results.json object)."""
    info = read_record(MetricInfo, info, f"metrics.{metric}")
    out = {}
    for s in samples:
        rec = s.get("systems", {}).get(system) or {}
        if info.kind == "nll":
            nll, tok = finite(rec.get("nll_sum")), finite(rec.get("nll_tokens"))
            if nll is not None and tok:
                out[s["id"]] = math.exp(nll / tok) if is_perplexity(metric) else nll / tok
        else:
            v = finite((rec.get("scores") or {}).get(metric))
            if v is not None:
                out[s["id"]] = v
    return out


def compare(samples: list[dict], a: str, b: str, metrics: dict[str, MetricInfo], match_t: dict[str, float], *,
            seed: int, n_bootstrap: int) -> dict[str, dict]:
    """``{metric: row}`` for system ``a`` minus system ``b`` on the items both scored, Holm over the metrics."""
    by_id = {s["id"]: s for s in samples}
    rows: dict[str, dict] = {}
    for m, info in metrics.items():
        a_items, b_items = per_item(samples, a, m, info), per_item(samples, b, m, info)
        ids = [i for i in a_items if i in b_items]
        if not ids:
            continue
        va, vb = np.array([a_items[i] for i in ids]), np.array([b_items[i] for i in ids])
        if info.kind == "nll":
            cols = [[by_id[i]["systems"][sys][f] for i in ids] for sys in (a, b) for f in ("nll_sum", "nll_tokens")]
            boot = stats.paired_bootstrap_corpus(*cols, exponentiate=is_perplexity(m), n_bootstrap=n_bootstrap,
                                                 seed=seed)
        else:
            boot = stats.paired_bootstrap(va, vb, n_bootstrap=n_bootstrap, seed=seed)
        hib = info.higher_is_better
        th = match_t.get(m)
        diff = boot["mean_diff"]
        rows[m] = {
            **boot,
            "kind": info.kind,
            "higher_is_better": hib,
            "form": "corpus" if info.kind == "nll" else "mean",
            "better": None if hib is None or diff is None or diff == 0 else (diff > 0) == bool(hib),
            "wins": int(np.sum(va > vb)) if hib is not False else int(np.sum(va < vb)),
            "losses": int(np.sum(va < vb)) if hib is not False else int(np.sum(va > vb)),
            "ties": int(np.sum(va == vb)),
            "wilcoxon": stats.wilcoxon_signed_rank(va, vb),
            "mcnemar": {**stats.mcnemar_exact(va >= th, vb >= th), "t": th} if th is not None else None,
        }
    for m, p in zip(rows, stats.holm([r["p_permutation"] for r in rows.values()])):
        rows[m]["p_holm"] = p
        rows[m]["mark"] = stats.significance_mark(p)
    return rows


def comparison_pairs(roles: dict) -> list[tuple[str, str]]:
    """(system, against) pairs: each adapter (and each row with retrieval) vs each baseline row of its run; each
    row with retrieval vs its plain row (adapter+rag vs adapter: what retrieval adds); each language-model row vs each
    reference row of its run."""
    pairs = []
    for adapter, bases in roles["baselines"].items():
        pairs += [(adapter, b) for b in bases]
    for system, plain in (roles.get("variants") or {}).items():
        if (system, plain) not in pairs:
            pairs.append((system, plain))
    for system in roles["names"]:
        if roles["kinds"][system] in ("baseline", "adapter"):
            pairs += [(system, r) for r in roles["references"].get(system, [])]
    return pairs


def corpus_value(samples: list[dict], system: str, metric: str,
                 info: MetricInfo | Mapping[str, Any]) -> float | None:
    """A system's corpus value from its per-item records: Σ NLL / Σ tokens (exponentiated for perplexity) for NLL
    metrics, else the mean of the per-item scores (the built-in metrics' aggregate); ``info`` is the metric's record
    (or its results.json object)."""
    info = read_record(MetricInfo, info, f"metrics.{metric}")
    if info.kind == "nll":
        pairs = [((s["systems"].get(system) or {}).get("nll_sum"), (s["systems"].get(system) or {}).get("nll_tokens"))
                 for s in samples]
        pairs = [(a, b) for a, b in pairs if a is not None and b]
        if not pairs:
            return None
        loss = sum(a for a, _ in pairs) / sum(b for _, b in pairs)
        return float(math.exp(loss)) if is_perplexity(metric) else float(loss)
    values = list(per_item(samples, system, metric, info).values())
    return float(np.mean(values)) if values else None


def strongest_baselines(results: Results, samples: list[dict], roles: dict,
                        metrics: dict[str, MetricInfo]) -> dict[str, dict[str, str]]:
    """``{adapter: {metric: the baseline row with the best corpus value on it}}``; ties go to the first row. The
    values are the run's aggregates (``results["results"]``), or computed from the items when absent."""

    def value(b: str, m: str) -> float | None:
        v = finite(results.value(b, m))
        return v if v is not None else corpus_value(samples, b, m, metrics[m])

    out: dict[str, dict[str, str]] = {}
    for adapter, bases in roles["baselines"].items():
        out[adapter] = {}
        for m, info in metrics.items():
            scored = [(b, value(b, m)) for b in bases]
            scored = [(b, v) for b, v in scored if v is not None]
            if not scored:
                continue
            sign = -1.0 if info.higher_is_better is False else 1.0
            out[adapter][m] = max(scored, key=lambda bv: (sign * bv[1], -bases.index(bv[0])))[0]
    return out


def judged(comparisons: dict[str, dict[str, dict]], strongest: dict[str, dict[str, str]]) -> dict[str, dict]:
    """Each adapter against its strongest baseline per metric: ``{adapter: {"metrics": {m: row + "against"}}}``,
    with Holm over these metrics (the family the verdict reads)."""
    out = {}
    for adapter, per_metric in strongest.items():
        rows = {}
        for m, base in per_metric.items():
            row = (((comparisons.get(adapter) or {}).get(base) or {}).get("metrics") or {}).get(m)
            if row is not None:
                rows[m] = {**row, "against": base}
        for m, p in zip(rows, stats.holm([r["p_permutation"] for r in rows.values()])):
            rows[m]["p_holm"] = p
        out[adapter] = {"metrics": rows}
    return out


def to_nested(pairs: list[tuple[str, str]], rows: list[dict[str, dict]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for (a, b), r in zip(pairs, rows):
        out.setdefault(a, {})[b] = r
    return out
