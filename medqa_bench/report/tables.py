"""The report's tables as template context: systems, summary, loss and its definitions, paired tests.

Every number comes from ``results`` and ``results["analysis"]``; this module only picks, orders and formats them.
Strings stay raw here: the template escapes them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..schema import Analysis, MetricInfo, MetricValue, Results, read_analysis, read_results
from .cells import BLANK_DELTA, ci, delta, fmt, fmt_p


def value(results: Results, system: str, metric: str) -> MetricValue | None:
    """``results[system][metric]`` (value, CI, n), or None."""
    return results.results.get(system, {}).get(metric)


def metric_names(results: Results | Mapping[str, Any], analysis: Analysis | Mapping[str, Any]) -> list[str]:
    results = read_results(results)
    return list(results.metrics) or sorted(
        {m for s in read_analysis(analysis).systems for m in results.results.get(s, {})})


def systems_context(results: Results | Mapping[str, Any], analysis: Analysis | Mapping[str, Any]) -> list[dict]:
    """One entry per system, in run order: its kind, prompt format and why, stop sequences, and (reference rows)
    what the row is. The template draws table headers and badges from these."""
    results, analysis = read_results(results), read_analysis(analysis)
    kinds = analysis.kinds
    out = []
    for s in analysis.systems:
        info = results.system(s)
        kind = kinds.get(s) or info.kind or ("baseline" if s == "baseline" else "adapter")
        stops = info.stop_sequences
        why = info.format_source or "no reason recorded"
        out.append({
            "name": s,
            "kind": kind,
            "format": info.prompt_format,
            "format_source": info.format_source or "",
            "stop_sequences": ", ".join(repr(x) for x in stops) if stops else ("none" if stops is not None else ""),
            "description": info.description or "",
            "method": info.method or "",
            "title": info.description or (
                f"{kind} row, prompt format {info.prompt_format} ({why})" if info.prompt_format else f"{kind} row"),
        })
    return out


# ------------------------------------------------------------------------------------------ summary


def summary_tables(results: Results | Mapping[str, Any], analysis: Analysis | Mapping[str, Any],
                   notes: list[dict]) -> list[dict]:
    """The summary as tables ``[{"title", "run", "systems", "rows"}]`` (``systems``: :func:`systems_context`'s entries
    of its columns; ``rows``: :func:`headline`'s). One run: one table. A combined report: the rows every run shares
    (the reference rows, a baseline they all answered alike), then one table per run with its other rows (a row that
    some runs share stands in each of theirs), so a table is never wider than one run, however many runs there are.
    A metric note stands in the tables holding the reference row it is about."""
    results, analysis = read_results(results), read_analysis(analysis)
    columns = systems_context(results, analysis)
    own = analysis.runs
    if not own:
        return [{"title": None, "run": None, "systems": columns, "rows": headline(results, analysis, notes)["rows"]}]
    def runs_of(name: str) -> list:
        info = results.system(name)
        return info.shared_by or [info.run]

    every = [c for c in columns if set(own) <= set(runs_of(c["name"]))]
    groups = [("Rows every run shares", None, every)] if every else []
    for r, a in own.items():  # in the run's own order: baselines, adapters, reference rows
        order = {name: k for k, name in enumerate(read_analysis(a).systems)}
        cols = [c for c in columns if r in runs_of(c["name"]) and c not in every]
        groups.append((f"Run {r}", r, sorted(cols, key=lambda c: order.get(c["name"], len(order)))))
    tables = []
    for title, run, cols in groups:
        if not cols:
            continue
        names = [c["name"] for c in cols]
        mine = [n for n in notes if n.get("reference") in names]
        rows = [r for r in headline(results, analysis, mine, names)["rows"]  # a metric none of them scored: none
                if any(c["value"] != "–" for c in r["cells"])]
        tables.append({"title": title, "run": run, "systems": cols, "rows": rows})
    return tables


def headline(results: Results, analysis: Analysis, notes: list[dict], systems: list[str] | None = None) -> dict:
    """Rows of metrics, one cell per system (``systems``, default every row of the analysis); each adapter's delta
    is against the strongest baseline row of that metric (named in the cell); baselines and reference rows get none.
    ``notes``: verdict.metric_notes()."""
    systems = systems if systems is not None else analysis.systems
    kinds, paired, strongest = analysis.kinds, analysis.paired, analysis.strongest_baseline
    rows = []
    for m in metric_names(results, analysis):
        info = results.metrics.get(m) or MetricInfo()
        # marked only where there is a choice: an adapter with several baseline rows
        strongest_rows = {per[m] for a, per in strongest.items()
                          if m in per and len(analysis.baseline_rows.get(a) or []) > 1}
        cells = []
        for s in systems:
            v = value(results, s, m)
            cell = {
                "system": s,
                "kind": kinds.get(s),
                "value": fmt(v.value) if v else "–",
                "ci": f"[{fmt(v.ci_low)}, {fmt(v.ci_high)}]" if v and v.ci_low is not None else "",
                "delta": None,
                "against": None,
                "strongest": s in strongest_rows,
            }
            judged = paired.get(s)
            row = judged.metrics.get(m) if judged else None
            if row is not None:
                against = row.get("against") or judged.baseline
                base_v = value(results, against, m)
                cell["delta"] = delta(row, pct_of=base_v.value if base_v else None)
                cell["against"] = against
            cells.append(cell)
        hib = info.higher_is_better
        rows.append({
            "metric": m,
            "direction": "↑ higher is better" if hib else "↓ lower is better" if hib is False else "",
            "signature": info.signature or "",
            "notes": [_note(n) for n in notes if n.get("metric") == m] + _missing_notes(results, systems, m),
            "cells": cells,
        })
    return {"rows": rows}


def _missing_notes(results: Results, systems: list[str], metric: str) -> list[dict]:
    """The items a metric could not score (``n_missing``: an LLM judge's unparseable answers), per row, as a note:
    its values are over the other items."""
    missing = {s: v.n_missing if (v := value(results, s, metric)) else None for s in systems}
    missing = {s: n for s, n in missing.items() if n}
    if not missing:
        return []
    per_row = ", ".join(f"{s} {n}" for s, n in missing.items())
    message = (f"{metric} could not score some items (unparseable judgments: {per_row}); each value is over the "
               "items it scored")
    return [{"code": "unscored", "message": message, "text": f"unscored items: {per_row}"}]


def _note(note: dict) -> dict:
    """A metric note, short for a table cell: what the metric measures here and which rows it concerns; the
    verdict's full sentence goes to the tooltip (and stands in the verdict's run warnings)."""
    message = note.get("message") or ""
    head, sep, what = message.rpartition(f"{note.get('metric')} measures ")
    systems = note.get("systems") or []
    rows = ", ".join(systems) if len(systems) <= 2 else f"{len(systems)} model rows"
    short = f"{note.get('reference')} row ({fmt(note.get('value'))}) scores as high as {rows}"
    return {"code": note.get("code") or "", "message": message,
            "text": f"measures {what}: {short}" if sep else message}


def language_modeling(results: Results | Mapping[str, Any],
                      analysis: Analysis | Mapping[str, Any]) -> list[dict] | None:
    """Loss and perplexity of the reference answers per language-model row, each adapter's change against the
    baseline row the analysis compared it with (the strongest on loss)."""
    analysis = read_analysis(analysis)
    lm = analysis.language_modeling
    if lm is None or not lm.raw:  # absent, null or an empty object
        return None
    kinds = analysis.kinds
    results = read_results(results)
    rows = []
    for s in analysis.systems:
        v = lm.systems.get(s)
        if not v:
            continue
        change = lm.changes.get(s)
        row = {
            "label": "Fine-tuned" if kinds.get(s) == "adapter" else "Baseline",
            "system": s,
            "format": results.system(s).prompt_format or "",
            "loss": fmt(v["loss"], 4),
            "perplexity": fmt(v["perplexity"]),
            "tokens": v["n_tokens"],
            "change": None,
        }
        if change:
            row["against"] = change.get("baseline")
            cells = {}
            for k in ("loss", "perplexity"):
                c = change[k]
                cell = delta(c, digits=4)
                cells[k] = {**(cell or BLANK_DELTA), "pct": "–" if c.get("pct") is None else f"{c['pct']:+.1f}%"}
            row["change"] = cells
        rows.append(row)
    return rows


_LOSS_FIELDS = (
    ("value", "value"),
    ("form", "form"),
    ("formula", "formula"),
    ("eos", "EOS token scored"),
    ("truncation", "truncation"),
    ("max_length", "max length (tokens)"),
    ("quantization", "base quantization"),
    ("compute_dtype", "compute dtype"),
    ("split", "split"),
)


def _show(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return fmt(v, 4)
    return str(v)


def loss_definitions(results: Results | Mapping[str, Any], analysis: Analysis | Mapping[str, Any],
                     runs: list[tuple[str, dict]]) -> dict | None:
    """The harness's loss definition beside each adapter's training eval loss and its definition, field by field
    (adapters whose training eval loss is the same number, defined alike, share a column: the table does not grow
    with the runs of a combined report); rows where the columns differ are marked, so a reader sees why the numbers
    differ."""
    columns = []
    harness = [(name, d) for name, r in runs if (d := read_results(r).loss_definition)]
    distinct = list({repr(sorted(d.items())): (n, d) for n, d in harness}.values())
    modeled = read_analysis(analysis).language_modeling
    lm = modeled.systems if modeled else {}
    for name, d in distinct:
        title = "this run's loss (the table above)" if len(distinct) == 1 else f"run {name}: loss"
        columns.append({"title": title, "kind": "harness", "values": {"value": "per row, above", **d}})
    training: dict[str, dict] = {}  # adapters whose training eval loss is the same number, defined alike: one column
    for s, info in read_results(results).systems.items():
        tel = info.training_eval_loss
        if tel is None or not tel.raw:  # absent, null or an empty object
            continue
        here = lm.get(s, {}).get("loss")
        values = {**tel.definition, "value": tel.value}
        column = training.setdefault(json.dumps(values, sort_keys=True, default=str),
                                     {"kind": "training", "values": values, "systems": [], "losses": []})
        column["systems"].append(s)
        column["losses"].append(fmt(here, 4) if here is not None else None)
    for c in training.values():
        one = len(c["systems"]) == 1
        here = c["losses"][0] if one else "; ".join(f"{s} {x or '–'}" for s, x in zip(c["systems"], c["losses"]))
        columns.append({**c, "title": f"{', '.join(c['systems'])}: training eval loss", "here": here,
                        "system": c["systems"][0]})
    if not columns:
        return None
    keys = [k for k, _ in _LOSS_FIELDS]
    keys += sorted({k for c in columns for k in c["values"]} - set(keys))
    labels = dict(_LOSS_FIELDS)
    rows = []
    for k in keys:
        cells = [_show(c["values"].get(k)) for c in columns]
        rows.append({"field": labels.get(k, k), "cells": cells,
                     "differs": k != "value" and len({c for c in cells}) > 1})
    return {"columns": columns, "rows": rows}


# ------------------------------------------------------------------------------------------ paired tests


def _test_row(a: str, b: str, m: str, r: dict) -> dict:
    mc = r.get("mcnemar")
    return {
        "system": a,
        "against": b,
        "metric": m,
        "form": r.get("form"),
        "n": r.get("n"),
        "diff": delta(r) or BLANK_DELTA,
        "ci": ci(r),
        "p": fmt_p(r.get("p_permutation")),
        "p_holm": fmt_p(r.get("p_holm")),
        "significant": r.get("p_holm") is not None and r["p_holm"] < 0.05,
        "wilcoxon": fmt_p((r.get("wilcoxon") or {}).get("p")),
        "mcnemar": (
            f"{mc['table'][1][0]} / {mc['table'][0][1]} · p {fmt_p(mc['p'])} (t={mc['t']:.2f})"
            if mc and mc.get("table") and mc.get("t") is not None else "–"
        ),
        "wtl": f"{r.get('wins')} / {r.get('ties')} / {r.get('losses')}",
    }


def paired_tests(analysis: Analysis | Mapping[str, Any]) -> dict:
    """``judged``: each adapter against its strongest baseline row per metric (Holm over the adapter's metrics, the
    family the verdict reads); ``groups``: every comparison the analysis made, adapters against baseline rows
    first, then model rows against reference rows, each with Holm over its own metrics."""
    analysis = read_analysis(analysis)
    judged = []
    for adapter, block in analysis.paired.items():
        for m, r in block.metrics.items():
            judged.append(_test_row(adapter, r.get("against") or block.baseline, m, r))
    kinds = analysis.kinds
    groups = []
    for a, per in analysis.comparisons.items():
        for b, block in per.items():
            kind = "adapter vs baseline" if kinds.get(b) == "baseline" else "model vs reference row"
            groups.append({
                "system": a, "against": b, "kind": kind, "reference": kinds.get(b) == "reference",
                "rows": [_test_row(a, b, m, r) for m, r in block.metrics.items()],
            })
    groups.sort(key=lambda g: g["reference"])  # stable: run order within each kind
    return {"judged": judged, "groups": groups, "n_comparisons": len(groups)}
