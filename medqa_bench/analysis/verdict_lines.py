"""The verdict as plain sentences: what the CLI prints and the report lists (:mod:`medqa_bench.analysis.verdict`
builds the verdict as data; these read it)."""

from __future__ import annotations

from ..schema import Results, RunValidity
from .instruments import primary_line
from .reach import FEW_ITEMS

SMALL_SAMPLE = FEW_ITEMS  # fewer items: CIs too wide to read much into "no difference"


def number(x: float | None) -> str:
    """A difference or a value as a sentence gives it: 3 decimals, 2 from 10 up, "–" for none."""
    if x is None:
        return "–"
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.2f}"


def p_text(p: float | None) -> str:
    """A p-value as a sentence gives it: 3 decimals, "< 0.001" below that, "–" for none."""
    return "–" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def run_lines(validity: RunValidity | None, adapters: dict) -> list[str]:
    """The sentences about the run as a whole that open its verdict: the primary metric, and a run without adapters
    (:func:`medqa_bench.analysis.runs.combine_verdicts` says them once for the runs they hold for)."""
    return ([primary_line(validity)] if validity else []) + (
        [] if adapters else ["no adapter was evaluated: the run compares baseline and reference rows only"])


def _by_reason(rows: list[dict], key: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r[key], []).append(r)
    return out


def _cannot_reach(rows: list[dict]) -> str:
    """"on a, b (why); on c (why)": the rows that cannot reach significance, grouped by the reason."""
    return "; ".join(f"on {', '.join(r['metric'] for r in group)} ({why})"
                     for why, group in _by_reason(rows, "why_unreachable").items())


def adapter_lines(adapter: str, v: dict, results: Results) -> list[str]:
    """The sentences of one adapter's verdict (``v``, as :func:`medqa_bench.analysis.verdict.build_verdict` builds
    it): the primary metric, what improves and regresses, what cannot reach significance and why, CIs that seem to
    disagree with their test, the reference rows it does not beat, the clean subset, its warnings and conditions."""
    def listing(rows: list[dict]) -> str:
        return ", ".join(f"{r['metric']} ({'+' if (r['diff'] or 0) > 0 else ''}{number(r['diff'])} vs {r['against']}, "
                         f"p_holm {p_text(r['p_holm'])})" for r in rows)

    lines = []
    p = v.get("primary")
    if p and p["outcome"] != "not_compared":
        said = {"improves": "improves", "regresses": "regresses", "no_difference": "no significant difference"}
        numbers = (f"{'+' if (p['diff'] or 0) > 0 else ''}{number(p['diff'])} [{number(p['ci'][0])}, {number(p['ci'][1])}] "
                   f"vs {p['against']}, p_holm {p_text(p['p_holm'])}")
        judged_on = results.analysis.n_items if results.analysis else None
        n_items = p.get("n") or judged_on or 0  # the items it was judged on
        if p.get("reachable") is False:
            line = f"{adapter} on the primary metric {p['metric']}: cannot reach significance ({numbers}): " \
                   f"{p['why_unreachable']}"
        else:
            small = (f"; only {n_items} items: see the small-sample warning" if p["outcome"] == "no_difference"
                     and n_items < SMALL_SAMPLE else "")
            line = f"{adapter} on the primary metric {p['metric']}: {said[p['outcome']]} ({numbers}){small}"
        if p.get("ci_note"):
            line += f"; the CI excludes 0 while the test is not significant: {p['ci_note']}"
        lines.append(line)
    elif p:
        lines.append(f"{adapter} on the primary metric {p['metric']}: not compared (no paired scores of it)")
    if v["improves"]:
        lines.append(f"{adapter} beats the strongest baseline on {listing(v['improves'])}")
    if v["regresses"]:
        lines.append(f"{adapter} is worse than the strongest baseline on {listing(v['regresses'])}")
    plain = [r for r in v["no_difference"] if r.get("reachable") is not False]
    unreachable = [r for r in v["no_difference"] if r.get("reachable") is False]
    if not v["improves"] and not v["regresses"]:
        if unreachable and not plain:
            reasons = _by_reason(unreachable, "why_unreachable")
            lines.append(f"{adapter} cannot reach significance on any metric: {next(iter(reasons))}; its differences "
                         "and intervals are descriptive only" if len(reasons) == 1 else
                         f"{adapter} cannot reach significance on any metric: {_cannot_reach(unreachable)}")
        elif unreachable:
            lines.append(f"{adapter} shows no significant difference from the strongest baseline on "
                         f"{', '.join(r['metric'] for r in plain)}, and cannot reach significance "
                         f"{_cannot_reach(unreachable)}")
        else:
            lines.append(f"{adapter} shows no significant difference from the strongest baseline on any metric")
    else:
        if plain:
            lines.append(f"{adapter}: no significant difference on {', '.join(r['metric'] for r in plain)}")
        if unreachable:
            lines.append(f"{adapter} cannot reach significance {_cannot_reach(unreachable)}")
    primary_metric = p["metric"] if p else None
    noted = [r for r in v["no_difference"] if r.get("ci_note") and r["metric"] != primary_metric]
    for note, group in _by_reason(noted, "ci_note").items():
        cis = ", ".join(f"{r['metric']} [{number(r['ci'][0])}, {number(r['ci'][1])}]" for r in group)
        lines.append(f"{adapter}: the bootstrap CI of the difference excludes 0 on {cis} while the paired test is not "
                     f"significant: {note}")
    unbeaten: dict[tuple, list[str]] = {}  # reference rows not beaten on the same metrics: one sentence
    for ref, r in v["references"].items():
        if r["does_not_beat"]:
            unbeaten.setdefault((tuple(r["does_not_beat"]), tuple(r.get("worse_than") or ())), []).append(ref)
    for (metrics, worse_than), refs in unbeaten.items():
        worse = f" (significantly worse on {', '.join(worse_than)})" if worse_than else ""
        rows = f"the {refs[0]} reference row" if len(refs) == 1 else \
            f"the reference rows {', '.join(refs[:-1])} and {refs[-1]}"
        lines.append(f"{adapter} does not significantly beat {rows} on {', '.join(metrics)}{worse}")
    if v["clean_subset"] and not v["clean_subset"]["changed"]:
        lines.append(f"{adapter}: the verdict holds on the {v['clean_subset']['n_items']} items without "
                     "near-duplicates of training items")
    lines += [f"warning: {w['message']}" for w in v["warnings"]]
    lines += [f"condition: {c['message']}" for c in v["conditions"]]
    return lines
