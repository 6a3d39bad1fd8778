"""The page: tables and provenance as template context, figures and items as escaped JSON, one Jinja2 template.

Data strings reach the page two ways, both safe: as template variables (Jinja2 autoescape) and as JSON in
``<script type="application/json">`` blocks, where :func:`script_json` escapes ``<``, ``>`` and ``&`` so a
``</script>`` inside a prediction cannot close the block. The explorer's JS inserts text with ``textContent``.
A nonce-based Content-Security-Policy refuses any script the page did not put there itself.
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib import resources
from typing import Any

from ..analysis.stats import significance_mark
from . import figures

_SECTIONS = {
    "metrics": "Metrics",
    "confusion": "Soft-thresholded confusion matrices",
    "lengths": "Error lengths",
    "training": "Training curves",
}


def script_json(obj: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``<``, ``>``, ``&`` or JS line separators appear literally."""
    text = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, allow_nan=False)
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    x = float(x)
    if abs(x) >= 100:
        return f"{x:.1f}"
    if abs(x) >= 10:
        return f"{x:.2f}"
    return f"{x:.{digits}f}"


def fmt_p(p) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _ci(row: dict, digits: int = 3) -> str:
    return f"[{fmt(row.get('ci_low'), digits)}, {fmt(row.get('ci_high'), digits)}]"


def _delta_cell(row: dict | None, *, pct_of: float | None = None) -> dict | None:
    if not row or row.get("mean_diff") is None:
        return None
    d = row["mean_diff"]
    significant = row.get("p_bootstrap") is not None and row["p_bootstrap"] < 0.05
    cls = "same" if row.get("better") is None else ("better" if row["better"] else "worse")
    return {
        "text": f"{'+' if d > 0 else ''}{fmt(d)}",
        "pct": f"{100 * d / pct_of:+.1f}%" if pct_of else "",
        "arrow": "▲" if d > 0 else "▼" if d < 0 else "=",
        "cls": cls + ("" if significant else " ns"),
        "mark": significance_mark(row.get("p_bootstrap")),
        "title": f"Δ {fmt(d)} {_ci(row)}, paired bootstrap p = {fmt_p(row.get('p_bootstrap'))}",
    }


def _headline(results: dict, analysis: dict) -> dict:
    systems = analysis["systems"]
    paired = analysis.get("paired") or {}
    metric_infos = results.get("metrics") or {}
    names = list(metric_infos) or sorted({m for s in systems for m in (results.get("results") or {}).get(s, {})})
    rows = []
    for m in names:
        info = metric_infos.get(m) or {}
        cells = []
        for s in systems:
            v = ((results.get("results") or {}).get(s) or {}).get(m)
            cell = {
                "value": fmt(v.get("value")) if v else "–",
                "ci": f"[{fmt(v.get('ci_low'))}, {fmt(v.get('ci_high'))}]" if v and v.get("ci_low") is not None else "",
                "n": v.get("n") if v else None,
                "delta": None,
            }
            if s in paired:
                base_v = ((results.get("results") or {}).get(paired[s]["baseline"]) or {}).get(m) or {}
                cell["delta"] = _delta_cell(paired[s]["metrics"].get(m), pct_of=base_v.get("value"))
            cells.append(cell)
        hib = info.get("higher_is_better")
        rows.append(
            {
                "metric": m,
                "direction": "↑ higher is better" if hib else "↓ lower is better" if hib is False else "",
                "signature": info.get("signature") or "",
                "cells": cells,
            }
        )
    return {"systems": systems, "rows": rows}


def _language_modeling(analysis: dict) -> list[dict] | None:
    lm = analysis.get("language_modeling")
    if not lm:
        return None
    rows = []
    for s in analysis["systems"]:
        v = lm["systems"].get(s)
        if not v:
            continue
        change = lm["changes"].get(s)
        rows.append(
            {
                "label": "Baseline" if s not in analysis["baselines"] else "Fine-tuned",
                "system": s,
                "loss": fmt(v["loss"], 4),
                "perplexity": fmt(v["perplexity"]),
                "tokens": v["n_tokens"],
                "change": None,
            }
        )
        if change:
            cells = {}
            for k in ("loss", "perplexity"):
                c = change[k]
                cells[k] = {
                    "pct": "–" if c.get("pct") is None else f"{c['pct']:+.1f}%",
                    "cls": ("better" if (c["mean_diff"] or 0) < 0 else "worse")
                    + ("" if (c.get("p_bootstrap") or 1) < 0.05 else " ns"),
                    "mark": significance_mark(c.get("p_bootstrap")),
                    "title": f"Δ {fmt(c['mean_diff'], 4)} {_ci(c, 4)}, p = {fmt_p(c.get('p_bootstrap'))}",
                }
            rows[-1]["change"] = cells
    return rows


def _paired_rows(analysis: dict) -> list[dict]:
    rows = []
    for adapter, block in (analysis.get("paired") or {}).items():
        for m, r in block["metrics"].items():
            mc = r.get("mcnemar")
            rows.append(
                {
                    "adapter": adapter,
                    "baseline": block["baseline"],
                    "metric": m,
                    "form": r.get("form"),
                    "n": r.get("n"),
                    "diff": _delta_cell(r)
                    or {"text": "–", "cls": "same", "arrow": "", "mark": "", "title": "", "pct": ""},
                    "ci": _ci(r),
                    "p": fmt_p(r.get("p_bootstrap")),
                    "p_holm": fmt_p(r.get("p_holm")),
                    "wilcoxon": fmt_p((r.get("wilcoxon") or {}).get("p")),
                    "mcnemar": (
                        f"{mc['table'][1][0]} / {mc['table'][0][1]} · p {fmt_p(mc['p'])} (t={mc['t']:.2f})"
                        if mc
                        else "–"
                    ),
                    "wtl": f"{r.get('wins')} / {r.get('ties')} / {r.get('losses')}",
                }
            )
    return rows


def _model_reference(results: dict) -> str:
    return str((results.get("model") or {}).get("reference") or (results.get("spec") or {}).get("model") or "?")


def _flatten(d, prefix="") -> list[tuple[str, str]]:
    out = []
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += _flatten(v, key + ".")
        elif isinstance(v, float):
            out.append((key, f"{v:.4g}"))
        else:
            out.append((key, v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)))
    return out


def _provenance(run_name: str, results: dict) -> dict:
    systems = {
        n: {k: v for k, v in (info or {}).items() if k != "training_log"}
        for n, info in (results.get("systems") or {}).items()
    }
    metrics = {
        m: {"signature": i.get("signature"), "source": i.get("source")}
        for m, i in (results.get("metrics") or {}).items()
    }
    tables = [
        (
            "Run",
            _flatten({k: results.get(k) for k in ("run_name", "created", "medqa_bench_version", "schema_version")}),
        ),
        ("Model", _flatten(results.get("model"))),
        ("Systems and adapters", _flatten(systems)),
        ("Data and split", _flatten(results.get("data"))),
        ("Metrics", _flatten(metrics)),
        ("Environment, versions and hardware", _flatten(results.get("environment"))),
        ("Timings (seconds)", _flatten(results.get("timings"))),
    ]
    return {
        "name": run_name,
        "tables": [(t, rows) for t, rows in tables if rows],
        "spec": json.dumps(results.get("spec") or {}, indent=2, ensure_ascii=False),
    }


def _explorer(results: dict, samples: list[dict], analysis: dict) -> dict:
    metric_infos = results.get("metrics") or {}
    metrics = [m for m in metric_infos if metric_infos[m].get("kind") != "nll"] or sorted(
        {m for s in samples for sys in s.get("systems", {}).values() for m in (sys.get("scores") or {})}
    )
    keep = ("prediction", "generated_tokens", "truncated", "scores")
    return {
        "systems": analysis["systems"],
        "comparisons": analysis["baselines"],
        "metrics": metrics,
        "higher_is_better": {
            m: (metric_infos.get(m) or {}).get("higher_is_better", True) is not False for m in metrics
        },
        "default_metric": analysis.get("similarity_metric") or (metrics[0] if metrics else None),
        "items": [
            {
                "id": s["id"],
                "qtype": s.get("qtype"),
                "focus": s.get("focus"),
                "question": s.get("question"),
                "reference": s.get("reference"),
                "systems": {
                    n: {k: v for k, v in (sys or {}).items() if k in keep}
                    for n, sys in (s.get("systems") or {}).items()
                },
            }
            for s in samples
        ],
    }


def render_html(
    results: dict,
    samples: list[dict],
    analysis: dict,
    runs: list[tuple[str, dict]],
    *,
    plotly_mode: str,
    notes: list[str],
) -> str:
    import jinja2
    import plotly.io as pio
    from markupsafe import Markup
    from plotly.offline import get_plotlyjs, get_plotlyjs_version

    figs = figures.build_figures(results, analysis)
    sections = []
    for key, title in _SECTIONS.items():
        items = [
            {**f, "json": Markup(script_json(pio.to_json(f["figure"], validate=False)))}
            for f in figs
            if f["section"] == key
        ]
        if items:
            sections.append({"key": key, "title": title, "figures": items})
    explorer = script_json(_explorer(results, samples, analysis))
    nonce = hashlib.sha256(explorer.encode() + json.dumps(analysis, sort_keys=True).encode()).hexdigest()[:32]
    if plotly_mode == "inline":
        plotly_js, plotly_src = get_plotlyjs().replace("</script", "<\\/script"), None
    else:
        plotly_js, plotly_src = None, f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"

    pkg = resources.files(__package__)
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    template = env.from_string(pkg.joinpath("report.html").read_text(encoding="utf-8"))
    th = analysis.get("thresholds")
    return template.render(
        title=results.get("run_name") or "medqa-bench run",
        created=results.get("created") or "",
        model=", ".join(dict.fromkeys(_model_reference(r) for _, r in runs)),
        n_items=analysis["n_items"],
        analysis=analysis,
        thresholds=th,
        headline=_headline(results, analysis),
        lm_rows=_language_modeling(analysis),
        paired_rows=_paired_rows(analysis),
        sections=sections,
        n_figures=len(figs),
        explorer_json=Markup(explorer),
        provenance=[_provenance(name, r) for name, r in runs],
        notes=notes,
        css=Markup(pkg.joinpath("report.css").read_text(encoding="utf-8")),
        js=Markup(pkg.joinpath("report.js").read_text(encoding="utf-8")),
        plotly_js=Markup(plotly_js) if plotly_js else None,
        plotly_src=plotly_src,
        nonce=nonce,
    )
