"""From scored items to the analysis the report draws: confusion matrices, paired tests, lengths.

:func:`analyze` reads a ``results.json`` dict and the ``samples.jsonl`` records (see :mod:`medqa_bench.schema`) and
returns plain JSON, stored by the runner as ``results["analysis"]``. Every adapter is compared with its baseline
on the items both scored; ``results["systems"][adapter]["compared_with"]`` names that baseline when a combined
report holds several (otherwise the one system of kind ``baseline``).

Thresholds (``t`` for a match, ``t_low``/``t_high`` for partial/correct) come, first found first, from the
``thresholds`` argument, ``results["spec"]["analysis"]["thresholds"]``, or :data:`DEFAULT_THRESHOLDS`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import MetricError, SpecError
from . import confusion, lengths, stats

ANALYSIS_VERSION = 1
DEFAULT_SIMILARITY_METRIC = "embedding_similarity"

# Starting points for English medical answers, set by reading predictions near each cut on MedQuAD; calibrate on
# your own data. all-MiniLM-L6-v2 cosine sits near 0.3-0.5 for unrelated medical text of one topic, so a match
# needs well above that; ROUGE-L F of paraphrased correct answers is rarely above 0.5.
DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "embedding_similarity": {"t": 0.70, "t_low": 0.55, "t_high": 0.80},
    "fuzzy": {"t": 0.50, "t_low": 0.35, "t_high": 0.65},
    "rougeL": {"t": 0.30, "t_low": 0.20, "t_high": 0.45},
    "rouge1": {"t": 0.35, "t_low": 0.25, "t_high": 0.50},
    "rouge2": {"t": 0.15, "t_low": 0.10, "t_high": 0.25},
    "rougeLsum": {"t": 0.30, "t_low": 0.20, "t_high": 0.45},
    "fuzzy_token_set": {"t": 0.60, "t_low": 0.45, "t_high": 0.75},
    "token_f1": {"t": 0.35, "t_low": 0.25, "t_high": 0.50},
}
GENERIC_THRESHOLDS = {"t": 0.50, "t_low": 0.35, "t_high": 0.65}  # any other metric bounded to [0, 1]

__all__ = [
    "analyze",
    "DEFAULT_THRESHOLDS",
    "DEFAULT_SIMILARITY_METRIC",
    "bounded_metrics",
    "similarity_metrics",
    "system_roles",
]


def analyze(
    results: dict,
    samples: list[dict],
    *,
    similarity_metric: str | None = None,
    thresholds: dict | None = None,
    seed: int = 0,
    n_bootstrap: int = 2000,
) -> dict:
    """JSON-serialisable analysis, stored by the runner as ``results["analysis"]``.

    ``similarity_metric`` picks the bounded metric of the confusion and length views (default
    ``embedding_similarity``, else the first metric with bounds [0, 1]); ``thresholds`` is ``{"t", "t_low",
    "t_high"}`` for that metric or ``{metric: {...}}``. The bootstrap is seeded: same inputs, same output.
    """
    if n_bootstrap < 100:
        raise SpecError(f"n_bootstrap={n_bootstrap} is too few for a 95% interval; use at least 100 (default 2000)")
    spec = results.get("spec") or {}
    spec_analysis = spec.get("analysis") or {}  # spec.AnalysisSpec
    spec_thresholds = spec_analysis.get("thresholds") or spec.get("thresholds")
    systems, baselines = system_roles(results, samples)
    metrics = _metric_infos(results, samples)
    metric = _choose_metric(metrics, similarity_metric or spec_analysis.get("similarity_metric"))
    th, th_source = (None, None) if metric is None else _thresholds(metric, thresholds, spec_thresholds, True)
    match_t = {m: _thresholds(m, thresholds, spec_thresholds, m == metric)[0]["t"] for m in bounded_metrics(metrics)}

    out: dict[str, Any] = {
        "version": ANALYSIS_VERSION,
        "similarity_metric": metric,
        "bounded_metrics": bounded_metrics(metrics),
        "thresholds": None if th is None else {**th, "source": th_source},
        "systems": systems,
        "baselines": baselines,
        "seed": seed,
        "n_bootstrap": n_bootstrap,
        "n_items": len(samples),
    }
    grades = None
    if metric is not None:
        out["confusion"], grades = _confusion(samples, systems, baselines, metric, th)
    else:
        out["confusion"] = None
    out["paired"] = _paired(samples, baselines, metrics, match_t, seed=seed, n_bootstrap=n_bootstrap)
    out["language_modeling"] = _language_modeling(samples, systems, baselines, seed=seed, n_bootstrap=n_bootstrap)
    out["lengths"] = lengths.length_histograms(samples, systems, grades)
    out["lengths"]["max_new_tokens"] = (spec.get("decoding") or {}).get("max_new_tokens")
    return _json_safe(out)


# ------------------------------------------------------------------------------------------------ inputs


def system_roles(results: dict, samples: list[dict]) -> tuple[list[str], dict[str, str]]:
    """System names in run order, and ``{adapter: its baseline}``."""
    info = results.get("systems") or {}
    names = list(info) or list(dict.fromkeys(n for s in samples for n in s.get("systems", {})))
    base_names = [n for n in names if (info.get(n) or {}).get("kind") == "baseline"] or [
        n for n in names if n == "baseline"
    ]
    baselines = {}
    for n in names:
        if n in base_names:
            continue
        b = (info.get(n) or {}).get("compared_with") or (base_names[0] if len(base_names) == 1 else None)
        if b is None:
            raise SpecError(f"system '{n}' has no baseline to compare with: baselines are {base_names or 'none'}")
        baselines[n] = b
    return names, baselines


def _metric_infos(results: dict, samples: list[dict]) -> dict[str, dict]:
    infos = dict(results.get("metrics") or {})
    if not infos:  # older or hand-made runs: metrics known only from the per-item scores
        for s in samples:
            for sys in s.get("systems", {}).values():
                for m in sys.get("scores") or {}:
                    infos.setdefault(m, {"name": m, "kind": "reference", "higher_is_better": None})
    return infos


def bounded_metrics(metrics: dict[str, dict]) -> list[str]:
    """Metrics declared with bounds [0, 1]: usable as a soft match."""
    out = []
    for name, info in metrics.items():
        b = info.get("bounds")
        if b and len(b) == 2 and math.isclose(b[0], 0.0) and math.isclose(b[1], 1.0):
            out.append(name)
    return out


def similarity_metrics(metrics: dict[str, dict]) -> list[str]:
    """Bounded reference metrics: scored against a distractor too, so the confusion views can use them."""
    return [m for m in bounded_metrics(metrics) if (metrics[m].get("kind") or "reference") == "reference"]


def _choose_metric(metrics: dict[str, dict], requested: str | None) -> str | None:
    usable = similarity_metrics(metrics)
    if requested:
        if requested not in usable:
            raise MetricError(
                f"similarity metric '{requested}' is not a reference metric of this run with bounds [0, 1]; "
                f"usable metrics are: {', '.join(usable) or 'none'}"
            )
        return requested
    # Graded similarities before the rest (exact_match is bounded too, but a 0/1 score makes a poor soft match).
    preferred = [DEFAULT_SIMILARITY_METRIC, *DEFAULT_THRESHOLDS]
    ranked = sorted(usable, key=lambda m: preferred.index(m) if m in preferred else len(preferred))
    return ranked[0] if ranked else None


def _thresholds(metric: str, given: dict | None, from_spec: dict | None, chosen_metric: bool) -> tuple[dict, str]:
    """Defaults, overridden by the spec, overridden by the argument. A flat ``{"t": ...}`` applies only to the
    chosen similarity metric; ``{metric: {"t": ...}}`` to the metric it names."""
    base = dict(DEFAULT_THRESHOLDS.get(metric, GENERIC_THRESHOLDS))
    source = "default"
    for candidate, label in ((from_spec, "spec"), (given, "argument")):
        if not candidate:
            continue
        if isinstance(candidate.get(metric), dict):
            chosen = candidate[metric]
        elif chosen_metric:
            chosen = candidate
        else:
            continue
        picked = {k: float(chosen[k]) for k in ("t", "t_low", "t_high") if k in chosen}
        if picked:
            base.update(picked)
            source = label
    if not 0.0 <= base["t_low"] <= base["t_high"] <= 1.0 or not 0.0 <= base["t"] <= 1.0:
        raise SpecError(
            f"thresholds for '{metric}' must satisfy 0 <= t_low <= t_high <= 1 and 0 <= t <= 1; got "
            f"t={base['t']}, t_low={base['t_low']}, t_high={base['t_high']}"
        )
    return base, source


def _finite(x) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _score(sample: dict, system: str, metric: str, field: str = "scores") -> float | None:
    return _finite(((sample.get("systems", {}).get(system) or {}).get(field) or {}).get(metric))


# ------------------------------------------------------------------------------------------------ sections


def _confusion(samples, systems, baselines, metric, th) -> tuple[dict, dict[str, dict[str, str]]]:
    own, counts, grades = {}, {}, {}
    for name in systems:
        pairs = [(_score(s, name, metric), _score(s, name, metric, "distractor_scores")) for s in samples]
        pos = [p for p, _ in pairs if p is not None]
        both = [(p, q) for p, q in pairs if p is not None and q is not None]
        own[name] = confusion.own_vs_other([p for p, _ in both], [q for _, q in both], th["t"])
        counts[name] = confusion.grade_counts(pos, th["t_low"], th["t_high"])
        grades[name] = {
            s["id"]: confusion.grade(v, th["t_low"], th["t_high"])
            for s in samples
            if (v := _score(s, name, metric)) is not None
        }
    moves = {}
    for adapter, base in baselines.items():
        paired = [(_score(s, base, metric), _score(s, adapter, metric)) for s in samples]
        paired = [(b, a) for b, a in paired if b is not None and a is not None]
        moves[adapter] = (
            {"baseline": base, **confusion.transitions(*zip(*paired), th["t_low"], th["t_high"])} if paired else None
        )

    qtypes = sorted({s.get("qtype") or "" for s in samples})
    by_qtype = None
    if len(qtypes) >= 2:
        by_qtype = {}
        for name in systems:
            rows = [
                (s.get("qtype") or "", ((s.get("systems", {}).get(name) or {}).get("nearest_qtype") or {}).get(metric))
                for s in samples
            ]
            rows = [(q, (str(n[0]), float(n[1]))) for q, n in rows if n and len(n) == 2 and _finite(n[1]) is not None]
            if rows:
                by_qtype[name] = confusion.qtype_confusion(
                    [q for q, _ in rows], [n for _, n in rows], th["t"], rows=qtypes
                )
        by_qtype = by_qtype or None
    return {
        "metric": metric,
        "own_vs_other": own,
        "graded": {"labels": list(confusion.GRADES), "counts": counts, "transitions": moves},
        "qtype": by_qtype,
    }, grades


def _per_item(samples, system, metric, info) -> dict[str, float]:
    if info.get("kind") != "nll":
        return {s["id"]: v for s in samples if (v := _score(s, system, metric)) is not None}
    out = {}
    for s in samples:
        sys = s.get("systems", {}).get(system) or {}
        nll, tok = _finite(sys.get("nll_sum")), _finite(sys.get("nll_tokens"))
        if nll is not None and tok:
            out[s["id"]] = math.exp(nll / tok) if _is_perplexity(metric) else nll / tok
    return out


def _is_perplexity(metric: str) -> bool:
    return "perplex" in metric.lower() or metric.lower() == "ppl"


def _paired(samples, baselines, metrics, match_t, *, seed, n_bootstrap) -> dict:
    by_id = {s["id"]: s for s in samples}
    out = {}
    for adapter, base in baselines.items():
        rows = {}
        for m, info in metrics.items():
            a_items, b_items = _per_item(samples, adapter, m, info), _per_item(samples, base, m, info)
            ids = [i for i in a_items if i in b_items]
            if not ids:
                continue
            a, b = np.array([a_items[i] for i in ids]), np.array([b_items[i] for i in ids])
            if info.get("kind") == "nll":
                cols = [
                    [by_id[i]["systems"][sys][f] for i in ids]
                    for sys in (adapter, base)
                    for f in ("nll_sum", "nll_tokens")
                ]
                boot = stats.paired_bootstrap_corpus(
                    *cols, exponentiate=_is_perplexity(m), n_bootstrap=n_bootstrap, seed=seed
                )
            else:
                boot = stats.paired_bootstrap(a, b, n_bootstrap=n_bootstrap, seed=seed)
            hib = info.get("higher_is_better")
            th = match_t.get(m)
            diff = boot["mean_diff"]
            rows[m] = {
                **boot,
                "kind": info.get("kind"),
                "higher_is_better": hib,
                "form": "corpus" if info.get("kind") == "nll" else "mean",
                "better": None if hib is None or diff is None or diff == 0 else (diff > 0) == bool(hib),
                "wins": int(np.sum(a > b)) if hib is not False else int(np.sum(a < b)),
                "losses": int(np.sum(a < b)) if hib is not False else int(np.sum(a > b)),
                "ties": int(np.sum(a == b)),
                "wilcoxon": stats.wilcoxon_signed_rank(a, b),
                "mcnemar": {**stats.mcnemar_exact(a >= th, b >= th), "t": th} if th is not None else None,
            }
        for m, p in zip(rows, stats.holm([r["p_bootstrap"] for r in rows.values()])):
            rows[m]["p_holm"] = p
            rows[m]["mark"] = stats.significance_mark(rows[m]["p_bootstrap"])
        out[adapter] = {"baseline": base, "metrics": rows}
    return out


def _language_modeling(samples, systems, baselines, *, seed, n_bootstrap) -> dict | None:
    """Corpus loss and perplexity of the references per system, and each adapter's change with a paired CI."""
    nll = {name: {} for name in systems}
    for s in samples:
        for name in systems:
            sys = s.get("systems", {}).get(name) or {}
            v, t = _finite(sys.get("nll_sum")), _finite(sys.get("nll_tokens"))
            if v is not None and t:
                nll[name][s["id"]] = (v, t)
    if not any(nll.values()):
        return None
    out: dict[str, Any] = {"systems": {}, "changes": {}}
    for name, rows in nll.items():
        if rows:
            loss = stats.corpus_loss([r[0] for r in rows.values()], [r[1] for r in rows.values()])
            out["systems"][name] = {
                "loss": loss,
                "perplexity": math.exp(loss),
                "n_items": len(rows),
                "n_tokens": int(sum(r[1] for r in rows.values())),
            }
    for adapter, base in baselines.items():
        ids = [i for i in nll[adapter] if i in nll[base]]
        if not ids:
            continue
        cols = [[nll[sys][i][k] for i in ids] for sys in (adapter, base) for k in (0, 1)]
        change = {}
        for label, exp in (("loss", False), ("perplexity", True)):
            boot = stats.paired_bootstrap_corpus(*cols, exponentiate=exp, n_bootstrap=n_bootstrap, seed=seed)
            ref = stats.corpus_loss(cols[2], cols[3])
            ref = math.exp(ref) if exp else ref
            change[label] = {**boot, "pct": 100.0 * boot["mean_diff"] / ref if ref else None}
        out["changes"][adapter] = {"baseline": base, **change}
    return out


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x
