"""The analysis of several runs over the same items: each run analysed alone, then set side by side.

A combined report (:mod:`medqa_bench.report`, several run folders) must not let one run's facts speak for another:
each run is analysed on its own (:func:`medqa_bench.analysis.analyze`: its thresholds calibrated on its own null
scores, its budget, its items, its seed) and given its own verdict; :func:`combine_analyses` then unites what belongs
to a system (comparisons, judged rows, degeneration, lengths, confusion views, under the systems' combined names) and
keeps what belongs to a run under ``runs[label]``; :func:`combine_verdicts` does the same for the verdicts. Nothing
here computes a statistic that the runs' own analyses did not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import MetricError
from ..schema import Analysis, Judged, Leakage, read_analysis, read_results, read_verdict, spec_analysis
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
    wanted = requested or spec_analysis(read_results(results).spec).similarity_metric
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
        spec["analysis"] = {**spec_analysis(spec).raw, "thresholds": keyed_thresholds(from_spec, own)}
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


def _union(blocks: list[Mapping[str, Any] | None]) -> dict:
    """The runs' blocks of one kind as one object: each key from the first run that has it."""
    out: dict = {}
    for block in blocks:
        for k, v in (block.items() if block else ()):
            out.setdefault(k, v)
    return out


def _objects(judged: dict[str, Judged]) -> dict[str, Mapping[str, Any]]:
    """Judged rows as the analysis object holds them."""
    return {name: j.raw for name, j in judged.items()}


def _comparisons(analyses: list[Analysis]) -> dict:
    """Every run's comparisons; a pair of shared rows, compared in several runs, keeps the block of most metrics."""
    out: dict[str, dict[str, Judged]] = {}
    for a in analyses:
        for system, per in a.comparisons.items():
            for against, block in per.items():
                kept = out.setdefault(system, {}).get(against)
                if kept is None or len(block.metrics) > len(kept.metrics):
                    out[system][against] = block
    return {system: _objects(per) for system, per in out.items()}


def _own_thresholds(a: Analysis) -> dict[str, Any]:
    return {k: a.thresholds.get(k) if a.thresholds else None for k in _THRESHOLD_KEYS}


def _row_thresholds(labels: list[str], analyses: list[Analysis]) -> dict[str, dict]:
    """Which thresholds each row of the combined confusion views was graded at: its run's, and for a row several runs
    share, the first of them's (``run``), with the runs that calibrated others (``differs``)."""
    out: dict[str, dict] = {}
    for label, a in zip(labels, analyses):
        th = _own_thresholds(a)
        for s in a.systems:
            row = out.setdefault(s, {"run": label, **th, "differs": []})
            if row["run"] != label and any(row[k] != th[k] for k in _THRESHOLD_KEYS):
                row["differs"].append(label)
    return out


def _confusion(labels: list[str], analyses: list[Analysis]) -> dict | None:
    """The runs' confusion views side by side, each row graded at its own run's thresholds; where the runs'
    thresholds differ, ``row_thresholds`` says which apply to which row."""
    blocks = [a.confusion for a in analyses]
    if not all(b is not None and b.raw for b in blocks) or len({b.metric for b in blocks}) != 1:
        return None
    qtype = _union([b.qtype for b in blocks]) if all(b.qtype for b in blocks) else None
    same = agreed([a.thresholds for a in analyses]) is not None
    return {"metric": blocks[0].metric, "own_vs_other": _union([b.own_vs_other for b in blocks]),
            "graded": {"labels": blocks[0].graded.labels, "counts": _union([b.graded.counts for b in blocks]),
                       "transitions": _union([b.graded.transitions for b in blocks])},
            "qtype": qtype, "row_thresholds": None if same else _row_thresholds(labels, analyses)}


def _lengths(analyses: list[Analysis], labels: list[str]) -> dict:
    """Each system's histograms with its own run's bin edges (runs count tokens with their own tokenizers)."""
    systems: dict[str, dict] = {}
    for a in analyses:
        block = a.lengths
        for s, h in block.systems.items():
            systems.setdefault(s, {**h.raw, "edges": block.edges, "diff_edges": block.diff_edges})
    return {**analyses[0].lengths.raw, "systems": systems, "runs": {
        label: {"edges": a.lengths.edges, "reference": a.lengths.reference, "max_new_tokens": a.lengths.max_new_tokens}
        for label, a in zip(labels, analyses)}}


def _leakage(analyses: list[Analysis]) -> dict | None:
    """One audit when the runs' audits agree (the same items flagged at the same threshold), with every run's clean
    values and judged rows; else None, and each run's audit stays in ``runs``."""
    blocks = [a.leakage for a in analyses]
    if not all(b is not None and b.raw for b in blocks):
        return None

    def audit(b: Leakage):
        return (b.ran, b.threshold, b.n_items, [i.get("id") for i in b.items])

    if any(audit(b) != audit(blocks[0]) for b in blocks[1:]):
        return None
    clean = dict(blocks[0].clean.raw)
    if blocks[0].clean.results is not None:
        clean["results"] = _union([b.clean.results for b in blocks])
        clean["judged"] = _union([_objects(b.clean.judged) for b in blocks])
    return {**blocks[0].raw, "clean": clean}


def _language_modeling(analyses: list[Analysis]) -> dict | None:
    blocks = [lm for a in analyses if (lm := a.language_modeling) is not None and lm.raw]
    if not blocks:
        return None
    return {"systems": _union([b.systems for b in blocks]), "changes": _union([b.changes for b in blocks])}


def combine_analyses(own: dict[str, dict], order: list[str] | None = None) -> dict:
    """The runs' analyses (``{label: analyze(...)}``, systems already under their combined names) as one: per-system
    blocks united, run-level facts (thresholds, items, leakage audit, budget) kept per run under ``runs``. A top-level
    run fact (``thresholds``, ``match_thresholds``, ``seed``, ``n_bootstrap``) is the runs' when they agree, else None
    (or empty): read each run's own then. ``order``: the systems in the order to show them (the combined results'),
    else run by run."""
    labels, analyses = list(own), [read_analysis(a) for a in own.values()]

    systems = list(dict.fromkeys(s for a in analyses for s in a.systems))
    if order:
        systems = [s for s in order if s in systems] + [s for s in systems if s not in order]
    metric = agreed([a.similarity_metric for a in analyses])
    confusion = _confusion(labels, analyses) if metric else None
    return {
        "version": analyses[0].version,
        "combined": True,
        "similarity_metric": metric if confusion else None,
        "bounded_metrics": list(dict.fromkeys(m for a in analyses for m in a.bounded_metrics)),
        "thresholds": agreed([a.thresholds for a in analyses]) if confusion else None,
        "match_thresholds": agreed([a.match_thresholds for a in analyses], {}),
        "systems": systems,
        "kinds": _union([a.kinds for a in analyses]),
        "baselines": _union([a.baselines for a in analyses]),
        "baseline_rows": _union([a.baseline_rows for a in analyses]),
        "reference_rows": list(dict.fromkeys(r for a in analyses for r in a.reference_rows)),
        "seed": agreed([a.seed for a in analyses]),
        "n_bootstrap": agreed([a.n_bootstrap for a in analyses]),
        "n_items": max(a.n_items or 0 for a in analyses),
        "n_nll_items": max(a.n_nll_items or a.n_items or 0 for a in analyses),
        "comparisons": _comparisons(analyses),
        "strongest_baseline": _union([a.strongest_baseline for a in analyses]),
        "paired": _union([_objects(a.paired) for a in analyses]),
        "confusion": confusion,
        "language_modeling": _language_modeling(analyses),
        "lengths": _lengths(analyses, labels),
        "degeneration": {"stats": _union([a.degeneration.stats for a in analyses]), "warnings": list({
            (w["system"], w["code"]): w for a in analyses for w in a.degeneration.warnings}.values())},
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
    verdicts = {label: read_verdict(v) for label, (_, v) in own.items()}
    for label, (results, _) in own.items():
        v = verdicts[label]
        for name, a in v.adapters.items():
            adapters[name] = {**a.raw, "run": label}
        for line in run_lines(read_results(results).validity, {name: a.raw for name, a in v.adapters.items()}):
            heads.setdefault(line, []).append(label)
        for w in v.warnings:
            warnings.setdefault(w["message"], (w, []))[1].append(label)
    run_warnings = [{**w, "runs": labels, "message": f"{runs_phrase(labels)}: {w['message']}"}
                    for w, labels in warnings.values()]
    return {
        "version": 1, "alpha": ALPHA, "correction": "holm", "adapters": adapters, "warnings": run_warnings,
        "primary": agreed([v.primary for v in verdicts.values()]),
        "runs": {label: {"primary": v.primary} for label, v in verdicts.items()},
        "lines": [f"{runs_phrase(labels)}: {line}" for line, labels in heads.items()]
        + [line for a in adapters.values() for line in a["lines"]] + [f"warning: {w['message']}" for w in run_warnings],
    }
