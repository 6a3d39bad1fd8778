"""The verdict as the terminal shows it after ``run`` and ``score``: what a person reads before opening the report.

Its shape::

    verdict:
      - <at most five findings: each adapter's result on the primary metric, then its significant regressions and
         improvements (the clearest first), then the most important warning>
    warnings and unequal conditions, by kind (N):
      degeneration: 7 (s07-ref-all truncated 79%, repeated 4-grams 66%, distinct-2 0.29; baseline-chat …)
      thresholds: 9 fallback (embedding_similarity, fuzzy, …)
      …
    full verdict: reports/<run>/report.html (every line also in results.json, under verdict.lines)

It reads ``results["verdict"]`` (and the analysis' degeneration figures) and computes nothing. ``results.json``
keeps every line of the verdict; ``--full-verdict`` on ``run`` and ``score`` prints them all.

Above the verdict, :func:`summary_table` gives each metric's value and CI per system, every system named in full.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..schema import AdapterVerdict, MetricValue, Results, Verdict, VerdictRow, read_results, read_verdict
from ..analysis.degeneration import WARNING_THRESHOLDS, degeneration_found, degeneration_label

MAX_FINDINGS = 5
_DETAIL = 150  # characters of a warning group's detail before "…"
_CONDITIONS = {"prompt_format": "prompt format", "stop_sequences": "stop sequences", "retrieval": "retrieval",
               "quantization": "quantization at training", "base_quantization": "base weights",
               "loss_definition": "loss definition"}
# The order warnings are weighed in for the one finding line they get: an adapter's own (a conclusion on weak
# metrics, a verdict that changes without the near-duplicates, its answers degenerating) before the run's.
_PRIORITY = (*(("adapter", c) for c in ("weak_metrics", "leakage", *WARNING_THRESHOLDS)),
             *(("run", c) for c in ("small_sample", "decoding", "budget", "leakage", *WARNING_THRESHOLDS)))


def _kind(code: str) -> str:
    if code in WARNING_THRESHOLDS:
        return "degeneration"
    return {"question_row": "reference rows", "boilerplate_row": "reference rows", "small_sample": "small sample",
            "weak_metrics": "weak metrics"}.get(code, code.replace("_", " "))


def _signed(x: float | None) -> str:
    if x is None:
        return "–"
    s = f"{x:.3f}" if abs(x) < 10 else f"{x:.2f}"
    return s if x < 0 else f"+{s}"


def _clearest(rows: list[VerdictRow]) -> list[VerdictRow]:
    """Significant rows, the clearest first: by Holm p, then by the difference over its CI's half-width (metrics of
    different scales compare by that, not by their raw differences)."""
    def strength(r: VerdictRow) -> float:
        lo, hi = (r.ci or [None, None])[:2]
        half = (hi - lo) / 2 if lo is not None and hi is not None and hi > lo else None
        return abs(r.diff or 0.0) / half if half else 0.0

    return sorted(rows, key=lambda r: (r.p_holm if r.p_holm is not None else 1.0, -strength(r)))


def _top(rows: list[VerdictRow], *, other: bool = False, shown: int = 3) -> str:
    """"2 metrics: fuzzy +0.133, rouge1 +0.143 vs baseline-chat (p_holm < 0.001)"; ``other``: beside the primary."""
    rows = _clearest(rows)
    against = {r.against for r in rows[:shown]}
    each = [f"{r.metric} {_signed(r.diff)}" + ("" if len(against) == 1 else f" vs {r.against}")
            for r in rows[:shown]]
    more = f" and {len(rows) - shown} more" if len(rows) > shown else ""
    worst_p = max((r.p_holm or 0.0) for r in rows)
    p = "< 0.001" if worst_p < 0.001 else f"≤ {worst_p:.3f}"
    vs = f" vs {next(iter(against))}" if len(against) == 1 else ""
    noun = f"{len(rows)}{' other' if other else ''} metric{'s' if len(rows) != 1 else ''}"
    return f"{noun}: {', '.join(each)}{more}{vs} (p_holm {p})"


def _adapter_findings(name: str, v: AdapterVerdict) -> tuple[list[str], list[str]]:
    """(first, later): the findings of one adapter that lead (its primary result, regressions, improvements) and
    those that fill spare lines (the reference rows it is significantly worse than)."""
    lines = v.lines
    p = v.primary
    first = [line for line in lines if line.startswith(f"{name} on the primary metric")][:1]
    pm = p.metric if p else None
    regresses = [r for r in v.regresses if r.metric != pm]
    improves = [r for r in v.improves if r.metric != pm]
    other = bool(first)
    if regresses:
        first.append(f"{name} is worse than its strongest baseline on {_top(regresses, other=other)}")
    if improves:
        first.append(f"{name} beats its strongest baseline on {_top(improves, other=other)}")
    if not v.improves and not v.regresses and not p:
        first += [line for line in lines if line.startswith((f"{name} cannot reach significance on any metric",
                                                              f"{name} shows no significant difference"))][:1]
    later = []
    for ref, r in v.references.items():
        if r.get("worse_than"):
            later.append(f"{name} is significantly worse than the {ref} reference row on {len(r['worse_than'])} "
                         f"metric{'s' if len(r['worse_than']) != 1 else ''} ({', '.join(r['worse_than'][:3])}"
                         f"{', …' if len(r['worse_than']) > 3 else ''})")
    return first, later


def _top_warning(verdict: Verdict) -> str | None:
    found = [("adapter", w) for v in verdict.adapters.values() for w in v.warnings]
    found += [("run", w) for w in verdict.warnings]
    ranked = [(_PRIORITY.index((scope, w.get("code"))) if (scope, w.get("code")) in _PRIORITY else len(_PRIORITY), i, w)
              for i, (scope, w) in enumerate(found) if w.get("code") != "small_sample" or w.get("unreachable")]
    if not ranked:
        return None
    return f"warning: {min(ranked, key=lambda t: t[:2])[2]['message']}"


def findings(verdict: Verdict | Mapping[str, Any]) -> tuple[list[str], int]:
    """At most :data:`MAX_FINDINGS` lines, and how many findings did not fit (``verdict``: the typed record or its
    object)."""
    verdict = read_verdict(verdict)
    first, later = [], []
    for name, v in verdict.adapters.items():
        f, lt = _adapter_findings(name, v)
        first += f
        later += lt
    if not verdict.adapters:
        first += [line for line in verdict.lines if line.startswith("no adapter")]
    warning = _top_warning(verdict)
    room = MAX_FINDINGS - (1 if warning else 0)
    lead = (first + later)[:room]
    return lead + ([warning] if warning else []), max(0, len(first) + len(later) - room)


def _cut(text: str) -> str:
    return text if len(text) <= _DETAIL else text[:_DETAIL - 1].rstrip(" ,;") + "…"


def _degeneration_detail(results: Results, items: list[dict]) -> str:
    by_system: dict[str, list[str]] = {}
    for w in items:
        system = w["system"]
        value = w.get("value")
        if value is None:  # a verdict written before it kept the values: the analysis has them
            value = next((d.get("value") for d in degeneration_found(results, system) if d.get("code") == w["code"]),
                         None)
        by_system.setdefault(system, []).append(degeneration_label(w["code"], value))
    return "; ".join(f"{s} {', '.join(labels)}" for s, labels in by_system.items())


def _detail(kind: str, items: list[dict], results: Results) -> str:
    if kind == "degeneration":
        return _degeneration_detail(results, items)
    if kind == "thresholds":
        metrics = [w.get("metric") or w["message"].split("'s soft-match")[0] for w in items]
        return f"fallback defaults: {', '.join(metrics)}"
    if kind == "reference rows":
        return "; ".join(f"the {w.get('reference') or w['code'].removesuffix('_row')} row scores as high as a model "
                         f"on {len(w.get('metrics') or [])} metric(s)" for w in items)
    if kind == "conditions":
        labels: dict[str, int] = {}
        for w in items:
            label = _CONDITIONS.get(w["code"], w["code"].replace("_", " "))
            labels[label] = labels.get(label, 0) + 1
        return ", ".join(f"{label} ×{n}" if n > 1 else label for label, n in labels.items())
    return "; ".join(w["message"] for w in items)


def warning_groups(results: Results | Mapping[str, Any]) -> list[tuple[str, int, str]]:
    """``(kind, count, detail)`` of every warning and unequal condition of the verdict, in order of first appearance
    (an adapter's own first)."""
    results = read_results(results)
    verdict = results.verdict or Verdict()
    groups: dict[str, list[dict]] = {}
    for name, v in verdict.adapters.items():
        for w in v.warnings:
            groups.setdefault(_kind(w["code"]), []).append({"system": name, **w})
    for w in verdict.warnings:
        groups.setdefault(_kind(w["code"]), []).append(w)
    for v in verdict.adapters.values():
        for c in v.conditions:
            groups.setdefault("conditions", []).append(c)
    return [(kind, len(items), _cut(_detail(kind, items, results))) for kind, items in groups.items()]


def _cell(aggregate: MetricValue | None) -> str:
    if aggregate is None or not aggregate.raw:  # absent, null or an empty object
        return "-"
    text = (f"{aggregate.value:.4f} [{aggregate.ci_low:.4f}, {aggregate.ci_high:.4f}]"
            if aggregate.value is not None else "none scored")
    return text + (f" ({aggregate.n_missing} unscored)" if aggregate.n_missing else "")


def summary_table(results: Results | Mapping[str, Any]) -> list[str]:
    """The headline table: a head line of system names, then one line per metric, ``value [CI]`` per system. Names
    are never cut (an adapter's folder name tells runs apart): each column is as wide as its name or its widest cell,
    and the metric column as its longest metric name.

    >>> agg = {"value": 0.25, "ci_low": 0.1, "ci_high": 0.4}
    >>> r = {"systems": {"baseline": {}, "qlora-r16-alpha32-lr2e-4-symptoms-3-epochs": {}}, "metrics": {"rougeL": {}},
    ...      "results": {"baseline": {"rougeL": agg}, "qlora-r16-alpha32-lr2e-4-symptoms-3-epochs": {"rougeL": agg}}}
    >>> print("\\n".join(summary_table(r)))
    metric                 baseline  qlora-r16-alpha32-lr2e-4-symptoms-3-epochs
    rougeL  0.2500 [0.1000, 0.4000]                     0.2500 [0.1000, 0.4000]
    """
    results = read_results(results)
    systems, metrics = list(results.systems), list(results.metrics)
    cells = {m: [_cell(results.results.get(s, {}).get(m)) for s in systems] for m in metrics}
    first = max([len("metric"), *map(len, metrics)])
    widths = [max([len(s), *(len(cells[m][k]) for m in metrics)]) for k, s in enumerate(systems)]

    def line(head: str, row: list[str]) -> str:
        return f"{head:<{first}}" + "".join(f"  {c:>{w}}" for c, w in zip(row, widths))

    return [line("metric", systems)] + [line(m, cells[m]) for m in metrics]


def verdict_brief(results: Results | Mapping[str, Any], run_dir: str | Path | None = None) -> list[str]:
    """The terminal's verdict: findings, warnings by kind, and where the full verdict is."""
    results = read_results(results)
    lead, more = findings(results.verdict or Verdict())
    out = ["verdict:"] + [f"  - {line}" for line in lead]
    groups = warning_groups(results)
    if groups:
        out.append(f"warnings and unequal conditions, by kind ({sum(n for _, n, _ in groups)}):")
        out += [f"  {kind}: {n} ({detail})" for kind, n, detail in groups]
    extra = f" ({more} more finding{'s' if more != 1 else ''} there)" if more else ""
    if run_dir is None:
        out.append(f"full verdict{extra}: results.json, under verdict.lines")
    elif (Path(run_dir) / "report.html").is_file():
        out.append(f"full verdict{extra}: {Path(run_dir) / 'report.html'} (every line also in results.json, under "
                   "verdict.lines)")
    else:
        out.append(f"full verdict{extra}: {Path(run_dir) / 'results.json'}, under verdict.lines (`medqa-bench report "
                   f"{run_dir}` renders the page)")
    return out
