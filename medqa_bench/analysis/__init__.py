"""From scored items to the analysis the report draws: comparisons, verdict inputs, confusion matrices, lengths.

:func:`analyze` reads a ``results.json`` dict and the ``samples.jsonl`` records (see :mod:`medqa_bench.schema`) and
returns plain JSON, stored by the runner as ``results["analysis"]``:

- ``comparisons[a][b]``: paired statistics of system ``a`` against ``b`` on the items both scored, for each adapter
  against every baseline row of its run and every language-model row against every reference row
  (:mod:`medqa_bench.analysis.compare`);
- ``strongest_baseline[adapter][metric]`` and ``paired[adapter]``: each adapter judged against the best baseline
  row per metric, Holm-adjusted over those metrics;
- ``match_thresholds``: each bounded metric's soft-match thresholds, calibrated on unrelated reference pairs
  (:mod:`medqa_bench.analysis.thresholds`) unless the spec or the caller sets them;
- ``degeneration`` (stop, truncation, empty, repetition, length; :mod:`medqa_bench.analysis.degeneration`) and
  ``leakage`` (near-duplicates of training items and the clean subset; :mod:`medqa_bench.analysis.leakage`);
- ``confusion``, ``language_modeling`` and ``lengths`` as before.

:data:`DEFAULT_THRESHOLDS` are only the fallback when calibration is impossible (too few or two-valued null scores).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import MetricError, SpecError
from ..schema import MetricInfo, Results, read_results, spec_analysis, spec_decoding
from . import confusion, lengths, stats
from .compare import finite

ANALYSIS_VERSION = 3
DEFAULT_SIMILARITY_METRIC = "embedding_similarity"

# Fallbacks when the null distribution cannot calibrate a metric (medqa_bench.analysis.thresholds), set by reading
# predictions near each cut on MedQuAD. all-MiniLM-L6-v2 cosine sits near 0.3-0.5 for unrelated medical text of one topic, so a match
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
    "choose_metric",
    "metric_infos",
    "run_roles",
]


def analyze(
    results: Results | Mapping[str, Any],
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
    ``results`` is the typed record (:func:`medqa_bench.schema.read_results`) or the dict it is read from.
    """
    if n_bootstrap < 100:
        raise SpecError(f"n_bootstrap={n_bootstrap} is too few for a 95% interval; use at least 100 (default 2000)")
    from . import compare
    from .degeneration import degeneration_stats, degeneration_warnings
    from .leakage import leakage
    from .thresholds import resolve_thresholds, spec_thresholds

    results = read_results(results)
    spec = results.spec
    asked = spec_analysis(spec)
    roles = run_roles(results, samples)
    # Items scored by the NLL metrics alone (generated false) have no answers: the views of answers skip them. The
    # comparisons and the leakage audit take every item, each metric on the items it scored.
    generated = [s for s in samples if s.get("generated", True)]
    systems, baselines = roles["names"], {a: bases[0] for a, bases in roles["baselines"].items()}
    metrics = metric_infos(results, samples)
    metric = choose_metric(metrics, similarity_metric or asked.similarity_metric)
    match: dict[str, dict] = {}
    from_spec = spec_thresholds(spec)
    for m in bounded_metrics(metrics):
        values, source = resolve_thresholds(m, generated, defaults=dict(DEFAULT_THRESHOLDS.get(m, GENERIC_THRESHOLDS)),
                                            from_spec=from_spec, given=thresholds, chosen_metric=m == metric)
        match[m] = {**values, "source": source}
    th = match.get(metric) if metric is not None else None
    match_t = {m: v["t"] for m, v in match.items()}

    out: dict[str, Any] = {
        "version": ANALYSIS_VERSION,
        "similarity_metric": metric,
        "bounded_metrics": bounded_metrics(metrics),
        "thresholds": th,
        "match_thresholds": match,
        "systems": systems,
        "kinds": roles["kinds"],
        "baselines": baselines,
        "baseline_rows": roles["baselines"],
        "reference_rows": sorted({r for rows in roles["references"].values() for r in rows}, key=systems.index),
        "seed": seed,
        "n_bootstrap": n_bootstrap,
        # the items every system answered (the generation metrics'); the NLL metrics may score more: n_nll_items
        "n_items": len(generated),
        "n_nll_items": len(samples),
    }
    pairs = compare.comparison_pairs(roles)
    out["comparisons"] = compare.to_nested(pairs, [
        {"metrics": compare.compare(samples, a, b, metrics, match_t, seed=seed, n_bootstrap=n_bootstrap)}
        for a, b in pairs])
    strongest = out["strongest_baseline"] = compare.strongest_baselines(results, samples, roles, metrics)
    # One baseline per adapter where a view needs one (confusion transitions, item explorer): the strongest row on
    # the similarity metric, else the first row.
    baselines = {a: strongest.get(a, {}).get(metric or "", b) for a, b in baselines.items()}
    out["baselines"] = baselines
    out["paired"] = compare.judged(out["comparisons"], strongest)
    for adapter, block in out["paired"].items():
        block["baseline"] = baselines[adapter]
        for row in block["metrics"].values():
            row["mark"] = stats.significance_mark(row["p_holm"])
    grades = None
    if metric is not None:
        out["confusion"], grades = _confusion(generated, systems, baselines, metric, th)
    else:
        out["confusion"] = None
    loss_against = {a: strongest.get(a, {}).get("loss") or strongest.get(a, {}).get("perplexity") or b
                    for a, b in baselines.items()}
    out["language_modeling"] = _language_modeling(samples, systems, loss_against, seed=seed, n_bootstrap=n_bootstrap)
    out["lengths"] = lengths.length_histograms(generated, systems, grades)
    max_new_tokens = spec_decoding(spec).max_new_tokens
    out["lengths"]["max_new_tokens"] = max_new_tokens
    degeneration = degeneration_stats(generated, systems)
    out["degeneration"] = {
        "stats": degeneration,
        "warnings": degeneration_warnings(degeneration, max_new_tokens=max_new_tokens, skip=[
            n for n in systems if roles["kinds"][n] == "reference"]),
    }
    out["leakage"] = leakage(samples, systems, metrics, out["paired"], match_t, seed=seed, n_bootstrap=n_bootstrap)
    return _json_safe(out)


# ------------------------------------------------------------------------------------------------ inputs


def run_roles(results: Results | Mapping[str, Any], samples: list[dict]) -> dict[str, Any]:
    """Who is compared with whom. ``names``: systems in run order; ``kinds``: baseline / adapter / reference;
    ``baselines``: ``{judged row: [baseline rows of its run]}`` for each adapter and each row with retrieval (a
    ``+rag`` row, baseline or adapter, is judged against the plain baseline rows; no row is judged against a ``+rag``
    baseline); ``references``: ``{system: [reference rows of its run]}``; ``variants``: ``{+rag row: its plain
    row}``. A combined report (several run folders) keeps comparisons within each run (``info["run"]``); an adapter's
    ``compared_with`` (older combined reports) names its one baseline.
    """
    results = read_results(results)
    info = {n: results.system(n) for n in results.systems or dict.fromkeys(
        n for s in samples for n in s.get("systems", {}))}
    names = list(info)
    kinds = {}
    for n in names:
        kind = info[n].kind
        kinds[n] = kind if kind in ("baseline", "adapter", "reference") else ("baseline" if n == "baseline" else "adapter")
    run_of = {n: info[n].run for n in names}
    rag = {n: bool(info[n].retrieval) for n in names}
    variants = {n: v for n in names if rag[n] and (v := info[n].variant_of) in names}
    baselines: dict[str, list[str]] = {}
    references: dict[str, list[str]] = {}
    for n in names:
        same_run = [m for m in names if run_of[m] == run_of[n]]
        if kinds[n] == "adapter" or (rag[n] and kinds[n] == "baseline"):
            given = info[n].compared_with
            bases = [given] if given else [m for m in same_run if kinds[m] == "baseline" and not rag[m]]
            if not bases:
                all_bases = [m for m in names if kinds[m] == "baseline"]
                raise SpecError(f"system '{n}' has no baseline to compare with: baselines are {all_bases or 'none'}")
            baselines[n] = bases
        if kinds[n] != "reference":
            references[n] = [m for m in same_run if kinds[m] == "reference"]
    return {"names": names, "kinds": kinds, "baselines": baselines, "references": references, "variants": variants}


def metric_infos(results: Results | Mapping[str, Any], samples: list[dict]) -> dict[str, MetricInfo]:
    """``results["metrics"]``: each metric's declaration; for an older or hand-made run without one, the metrics
    its per-item scores name."""
    infos = dict(read_results(results).metrics)
    if not infos:  # older or hand-made runs: metrics known only from the per-item scores
        for s in samples:
            for sys in s.get("systems", {}).values():
                for m in sys.get("scores") or {}:
                    infos.setdefault(m, MetricInfo(name=m, kind="reference", higher_is_better=None))
    return infos


def bounded_metrics(metrics: dict[str, MetricInfo]) -> list[str]:
    """Metrics declared with bounds [0, 1]: usable as a soft match."""
    out = []
    for name, info in metrics.items():
        b = info.bounds
        if b and len(b) == 2 and math.isclose(b[0], 0.0) and math.isclose(b[1], 1.0):
            out.append(name)
    return out


def similarity_metrics(metrics: dict[str, MetricInfo]) -> list[str]:
    """Bounded reference metrics: scored against a distractor too, so the confusion views can use them."""
    return [m for m in bounded_metrics(metrics) if metrics[m].reference_like]


def choose_metric(metrics: dict[str, MetricInfo], requested: str | None) -> str | None:
    """The similarity metric of the confusion and length views: ``requested`` (a bounded reference metric, else
    :class:`MetricError`), else ``embedding_similarity``, else the first of :data:`DEFAULT_THRESHOLDS`' metrics
    scored, else any bounded reference metric; None when there is none."""
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


def _score(sample: dict, system: str, metric: str, field: str = "scores") -> float | None:
    return finite(((sample.get("systems", {}).get(system) or {}).get(field) or {}).get(metric))


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
            rows = [(q, (str(n[0]), float(n[1]))) for q, n in rows if n and len(n) == 2 and finite(n[1]) is not None]
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


def _language_modeling(samples, systems, baselines, *, seed, n_bootstrap) -> dict | None:
    """Corpus loss and perplexity of the references per system, and each adapter's change with a paired CI."""
    nll = {name: {} for name in systems}
    for s in samples:
        for name in systems:
            sys = s.get("systems", {}).get(name) or {}
            v, t = finite(sys.get("nll_sum")), finite(sys.get("nll_tokens"))
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
