"""The analysis of several runs over the same items: each run analysed alone, then set side by side.

A combined report (:mod:`medqa_bench.report`, several run folders) must not let one run's facts speak for another:
each run is analysed on its own (:func:`medqa_bench.analysis.analyze`: its thresholds calibrated on its own null
scores, its budget, its items, its seed) and given its own verdict; :func:`combine_analyses` then unites what belongs
to a system (comparisons, judged rows, degeneration, lengths, confusion views, under the systems' combined names) and
keeps what belongs to a run under ``runs[label]``; :func:`combine_verdicts` does the same for the verdicts. Nothing
here computes a statistic that the runs' own analyses did not.
"""

from __future__ import annotations

from typing import Any

from ..errors import MetricError
from ..schema import read_results
from . import analyze, choose_metric, metric_infos, similarity_metrics
from .thresholds import keyed_thresholds, spec_thresholds
from .verdict import ALPHA, run_lines

_THRESHOLD_KEYS = ("t", "t_low", "t_high")


def agreed(values: list, empty: Any = None) -> Any:
    """The runs' common value of a fact when every run has the same, else ``empty``.

    >>> agreed([64, 64]), agreed([64, 32]), agreed([{}, {"a": 1}], {})
    (64, None, {})
    """
    return values[0] if values and all(v == values[0] for v in values[1:]) else empty


def common_similarity_metric(parts: dict[str, tuple[dict, list[dict]]], requested: list[str | None]) -> str | None:
    """The bounded similarity metric every run scored: the first one a run asked for, else the default choice
    among them; None when the runs share none (each then keeps its own, and the combined confusion views go)."""
    infos = [metric_infos(r, s) for r, s in parts.values()]
    common = set(similarity_metrics(infos[0])).intersection(*(similarity_metrics(i) for i in infos[1:]))
    for want in requested:
        if want in common:
            return want
    return choose_metric({m: i for m, i in infos[0].items() if m in common}, None)


def _own_metric(results: dict, samples: list[dict], requested: str | None) -> str | None:
    """The similarity metric the run's own analysis chooses (its own report's)."""
    wanted = requested or (read_results(results).spec.get("analysis") or {}).get("similarity_metric")
    try:
        return choose_metric(metric_infos(results, samples), wanted)
    except MetricError:  # its own analysis refuses it; the shared metric is all it can have here
        return None


def _on_metric(results: dict, samples: list[dict], opts: dict, metric: str) -> tuple[dict, dict]:
    """``(results, options)`` to analyse a run on ``metric`` with every metric's thresholds as its own analysis gives
    them: thresholds written without a metric's name (``{"t": ...}``) apply to the similarity metric the run chose
    itself, so they are put under that metric's name before another is chosen for it."""
    own = _own_metric(results, samples, opts.get("similarity_metric"))
    opts = {**opts, "similarity_metric": metric}
    if own == metric:
        return results, opts
    spec = dict(read_results(results).spec)
    from_spec = spec_thresholds(spec)
    if from_spec:
        spec["analysis"] = {**(spec.get("analysis") or {}), "thresholds": keyed_thresholds(from_spec, own)}
        spec.pop("thresholds", None)
        results = {**results, "spec": spec}
    if opts.get("thresholds"):
        opts["thresholds"] = keyed_thresholds(opts["thresholds"], own) or None
    return results, opts


def analyze_runs(parts: dict[str, tuple[dict, list[dict]]], options: dict[str, dict],
                 order: list[str] | None = None) -> dict:
    """The combined analysis (:func:`combine_analyses`) of runs analysed one by one; ``options[label]`` are the
    keyword arguments of :func:`medqa_bench.analysis.analyze` the run was analysed with (its seed, bootstrap, given
    thresholds). All runs are analysed on one similarity metric where they share one; every metric keeps the
    thresholds the run's own analysis gives it, whichever metric that run chose itself."""
    metric = common_similarity_metric(parts, [o.get("similarity_metric") for o in options.values()])
    own = {}
    for label, (results, samples) in parts.items():
        opts = dict(options.get(label) or {})
        if metric is not None:
            results, opts = _on_metric(results, samples, opts, metric)
        own[label] = analyze(results, samples, **opts)
    return combine_analyses(own, order)


def _union(analyses: list[dict], *path: str) -> dict:
    out: dict = {}
    for a in analyses:
        block: Any = a
        for key in path:
            block = (block or {}).get(key)
        for k, v in (block or {}).items():
            out.setdefault(k, v)
    return out


def _comparisons(analyses: list[dict]) -> dict:
    """Every run's comparisons; a pair of shared rows, compared in several runs, keeps the block of most metrics."""
    out: dict[str, dict] = {}
    for a in analyses:
        for system, per in (a.get("comparisons") or {}).items():
            for against, block in per.items():
                kept = out.setdefault(system, {}).get(against)
                if kept is None or len(block.get("metrics") or {}) > len(kept.get("metrics") or {}):
                    out[system][against] = block
    return out


def _row_thresholds(labels: list[str], analyses: list[dict]) -> dict[str, dict]:
    """Which thresholds each row of the combined confusion views was graded at: its run's, and for a row several runs
    share, the first of them's (``run``), with the runs that calibrated others (``differs``)."""
    out: dict[str, dict] = {}
    for label, a in zip(labels, analyses):
        th = {k: (a.get("thresholds") or {}).get(k) for k in _THRESHOLD_KEYS}
        for s in a.get("systems") or []:
            row = out.setdefault(s, {"run": label, **th, "differs": []})
            if row["run"] != label and any(row[k] != th[k] for k in _THRESHOLD_KEYS):
                row["differs"].append(label)
    return out


def _confusion(labels: list[str], analyses: list[dict]) -> dict | None:
    """The runs' confusion views side by side, each row graded at its own run's thresholds; where the runs'
    thresholds differ, ``row_thresholds`` says which apply to which row."""
    blocks = [a.get("confusion") for a in analyses]
    if not all(blocks) or len({b["metric"] for b in blocks}) != 1:
        return None
    qtype = _union(blocks, "qtype") if all(b.get("qtype") for b in blocks) else None
    same = agreed([a.get("thresholds") for a in analyses]) is not None
    return {"metric": blocks[0]["metric"], "own_vs_other": _union(blocks, "own_vs_other"),
            "graded": {"labels": blocks[0]["graded"]["labels"], "counts": _union(blocks, "graded", "counts"),
                       "transitions": _union(blocks, "graded", "transitions")},
            "qtype": qtype, "row_thresholds": None if same else _row_thresholds(labels, analyses)}


def _lengths(analyses: list[dict], labels: list[str]) -> dict:
    """Each system's histograms with its own run's bin edges (runs count tokens with their own tokenizers)."""
    systems: dict[str, dict] = {}
    for a in analyses:
        block = a.get("lengths") or {}
        for s, h in (block.get("systems") or {}).items():
            systems.setdefault(s, {**h, "edges": block.get("edges"), "diff_edges": block.get("diff_edges")})
    first = analyses[0].get("lengths") or {}
    return {**first, "systems": systems, "runs": {
        label: {k: (a.get("lengths") or {}).get(k) for k in ("edges", "reference", "max_new_tokens")}
        for label, a in zip(labels, analyses)}}


def _leakage(analyses: list[dict]) -> dict | None:
    """One audit when the runs' audits agree (the same items flagged at the same threshold), with every run's clean
    values and judged rows; else None, and each run's audit stays in ``runs``."""
    blocks = [a.get("leakage") for a in analyses]
    if not any(blocks):
        return None

    def audit(b: dict | None):
        b = b or {}
        return (b.get("ran", True), b.get("threshold"), b.get("n_items"), [i.get("id") for i in b.get("items") or []])

    if not all(blocks) or any(audit(b) != audit(blocks[0]) for b in blocks[1:]):
        return None
    clean = {**(blocks[0].get("clean") or {})}
    if clean.get("results") is not None:
        clean["results"] = _union(blocks, "clean", "results")
        clean["judged"] = _union(blocks, "clean", "judged")
    return {**blocks[0], "clean": clean}


def _language_modeling(analyses: list[dict]) -> dict | None:
    blocks = [a.get("language_modeling") for a in analyses if a.get("language_modeling")]
    if not blocks:
        return None
    return {"systems": _union(blocks, "systems"), "changes": _union(blocks, "changes")}


def combine_analyses(own: dict[str, dict], order: list[str] | None = None) -> dict:
    """The runs' analyses (``{label: analyze(...)}``, systems already under their combined names) as one: per-system
    blocks united, run-level facts (thresholds, items, leakage audit, budget) kept per run under ``runs``. A top-level
    run fact (``thresholds``, ``match_thresholds``, ``seed``, ``n_bootstrap``) is the runs' when they agree, else None
    (or empty): read each run's own then. ``order``: the systems in the order to show them (the combined results'),
    else run by run."""
    labels, analyses = list(own), list(own.values())
    first = analyses[0]

    def same(key: str, empty=None):
        return agreed([a.get(key) for a in analyses], empty)

    systems = list(dict.fromkeys(s for a in analyses for s in a["systems"]))
    if order:
        systems = [s for s in order if s in systems] + [s for s in systems if s not in order]
    metric = same("similarity_metric")
    confusion = _confusion(labels, analyses) if metric else None
    return {
        "version": first.get("version"),
        "combined": True,
        "similarity_metric": metric if confusion else None,
        "bounded_metrics": list(dict.fromkeys(m for a in analyses for m in a.get("bounded_metrics") or [])),
        "thresholds": same("thresholds") if confusion else None,
        "match_thresholds": same("match_thresholds", {}),
        "systems": systems,
        "kinds": _union(analyses, "kinds"),
        "baselines": _union(analyses, "baselines"),
        "baseline_rows": _union(analyses, "baseline_rows"),
        "reference_rows": list(dict.fromkeys(r for a in analyses for r in a.get("reference_rows") or [])),
        "seed": same("seed"),
        "n_bootstrap": same("n_bootstrap"),
        "n_items": max(a.get("n_items") or 0 for a in analyses),
        "n_nll_items": max(a.get("n_nll_items") or a.get("n_items") or 0 for a in analyses),
        "comparisons": _comparisons(analyses),
        "strongest_baseline": _union(analyses, "strongest_baseline"),
        "paired": _union(analyses, "paired"),
        "confusion": confusion,
        "language_modeling": _language_modeling(analyses),
        "lengths": _lengths(analyses, labels),
        "degeneration": {"stats": _union(analyses, "degeneration", "stats"), "warnings": list({
            (w["system"], w["code"]): w for a in analyses for w in (a.get("degeneration") or {}).get("warnings") or []
        }.values())},
        "leakage": _leakage(analyses),
        "runs": own,
    }


# ------------------------------------------------------------------------------------------ verdicts


def runs_phrase(labels: list[str]) -> str:
    """"in run A", "in runs A and B", "in runs A, B and C"."""
    if len(labels) == 1:
        return f"in run {labels[0]}"
    return f"in runs {', '.join(labels[:-1])} and {labels[-1]}"


def combine_verdicts(own: dict[str, tuple[dict, dict]]) -> dict[str, Any]:
    """The verdicts of a combined report's runs (``{label: (the run's results with its analysis, its verdict)}``) as
    one. Each adapter keeps its own run's verdict (its name carries its run, ``<label>/<adapter>``; ``run`` names
    it). Every statement about a run as a whole (the primary metric, its warnings) is said once, prefixed with the
    runs it holds for ("in run B: …", "in runs A and B: …"), with those runs under ``runs``: a budget, a threshold
    or an item count is never carried from one run to another."""
    adapters: dict[str, Any] = {}
    heads: dict[str, list[str]] = {}
    warnings: dict[str, tuple[dict, list[str]]] = {}
    for label, (results, v) in own.items():
        for name, a in (v.get("adapters") or {}).items():
            adapters[name] = {**a, "run": label}
        for line in run_lines(read_results(results).validity, v.get("adapters") or {}):
            heads.setdefault(line, []).append(label)
        for w in v.get("warnings") or []:
            warnings.setdefault(w["message"], (w, []))[1].append(label)
    run_warnings = [{**w, "runs": labels, "message": f"{runs_phrase(labels)}: {w['message']}"}
                    for w, labels in warnings.values()]
    return {
        "version": 1, "alpha": ALPHA, "correction": "holm", "adapters": adapters, "warnings": run_warnings,
        "primary": agreed([v.get("primary") for _, v in own.values()]),
        "runs": {label: {"primary": v.get("primary")} for label, (_, v) in own.items()},
        "lines": [f"{runs_phrase(labels)}: {line}" for line, labels in heads.items()]
        + [line for a in adapters.values() for line in a["lines"]] + [f"warning: {w['message']}" for w in run_warnings],
    }
