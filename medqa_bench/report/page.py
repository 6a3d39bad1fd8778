"""The page: tables and provenance as template context, figures and items as escaped JSON, one Jinja2 template.

The page opens with the verdict (:mod:`.verdict_view`), then the summary with each metric's validity beside it and
"Which number to trust" (:mod:`.validity_view`), paired tests, degeneration, leakage audit and thresholds
(:mod:`.tables`), on an external test set the contamination (:mod:`.contamination`), the figures (:mod:`.figures`), the item explorer and the provenance.

Data strings reach the page two ways, both safe: as template variables (Jinja2 autoescape) and as JSON in
``<script type="application/json">`` blocks, where :func:`script_json` escapes ``<``, ``>`` and ``&`` so a
``</script>`` inside a prediction cannot close the block. The explorer's JS inserts text with ``textContent``.
A nonce-based Content-Security-Policy refuses any script the page did not put there itself.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from collections.abc import Callable, Mapping
from typing import Any

from . import diagnostics, figures, tables
from .cells import fmt
from ..schema import Analysis, Results, SystemInfo, read_analysis, read_results
from .contamination import contamination
from .runs import SEPARATOR, row_prompt_key
from .validity_view import validity_context
from .verdict_view import verdict_context

# Figure sections, in page order; "leakage" figures sit inside the leakage audit section.
_SECTIONS = {
    "leakage": "Leakage audit",
    "metrics": "Metric charts",
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


def _model_reference(results: Results) -> str:
    return str(results.model.get("reference") or results.spec.get("model") or "?")


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


def _provenance(run_name: str, results: Results) -> dict:
    systems = {n: {k: v for k, v in info.raw.items() if k != "training_log"} for n, info in results.systems.items()}
    metrics = {m: {"signature": i.signature, "source": i.source} for m, i in results.metrics.items()}
    run = {"run_name": results.run_name, "created": results.created,
           "medqa_bench_version": results.medqa_bench_version, "schema_version": results.schema_version}
    tables_ = [
        ("Run", _flatten(run)),
        ("Model", _flatten(results.model)),
        ("Systems and adapters", _flatten(systems)),
        ("Data and split", _flatten(results.data.raw)),
        ("Generation budget", _flatten(results.budget.raw if results.budget else None)),
        ("Loss definition (this run)", _flatten(results.loss_definition)),
        ("Metrics", _flatten(metrics)),
        ("Environment, versions and hardware", _flatten(results.environment)),
        ("Timings (seconds)", _flatten(results.timings)),
    ]
    return {
        "name": run_name,
        "tables": [(t, rows) for t, rows in tables_ if rows],
        "spec": json.dumps(results.spec, indent=2, ensure_ascii=False),
    }


def _comparison_pairs(analysis: Analysis, default_metric: str | None) -> list[dict]:
    """The explorer's "compare" choices: each adapter against its strongest baseline row (on the default metric)
    first, its other baseline rows, then every model row against every reference row."""
    kinds, strongest = analysis.kinds, analysis.strongest_baseline
    pairs = []
    for a, per in analysis.comparisons.items():
        best = strongest.get(a, {}).get(default_metric) if default_metric else None
        for b in sorted(per, key=lambda b: (kinds.get(b) == "reference", b != best)):
            tag = "strongest baseline" if b == best else kinds.get(b) or ""
            pairs.append({"a": a, "b": b, "label": f"{a}  vs  {b} ({tag})" if tag else f"{a}  vs  {b}"})
    if not pairs:  # an analysis without comparisons (older runs): each adapter against its first baseline row
        pairs = [{"a": a, "b": b, "label": f"{a}  vs  {b}"} for a, b in analysis.baselines.items()]
    pairs.sort(key=lambda p: (kinds.get(p["a"]) != "adapter", kinds.get(p["b"]) == "reference"))
    return pairs


def _prompt_key(info: SystemInfo) -> str:
    """Where the explorer finds a row's prompt: :func:`.runs.row_prompt_key`, under ``<run>/`` in a combined report."""
    key = row_prompt_key(info)
    if not key:
        return ""
    return f"{info.run}{SEPARATOR}{key}" if info.run else key


def _explorer(results: Results, samples: list[dict], analysis: Analysis) -> dict:
    metric_infos = results.metrics
    metrics = [m for m, info in metric_infos.items() if info.kind != "nll"] or sorted(
        {m for s in samples for sys in s.get("systems", {}).values() for m in (sys.get("scores") or {})}
    )
    keep = ("prediction", "generated_tokens", "truncated", "stop_reason", "source", "scores", "passages")
    default_metric = analysis.similarity_metric or (metrics[0] if metrics else None)
    kinds = analysis.kinds
    systems = []
    for n in analysis.systems:
        info = results.system(n)
        systems.append({
            "name": n,
            "kind": kinds.get(n) or info.kind or "",
            "format": info.prompt_format or "",
            # combined reports keep each run's prompts apart: "<run>/<format>"; a row with retrieval "<format>+rag"
            "prompt_key": _prompt_key(info),
            "retrieval": (info.retrieval or {}).get("label") or "",
            "description": info.description or "",
            "method": info.method or "",
        })
    return {
        "systems": systems,
        "pairs": _comparison_pairs(analysis, default_metric),
        "metrics": metrics,
        "higher_is_better": {
            m: m not in metric_infos or metric_infos[m].higher_is_better is not False for m in metrics
        },
        "default_metric": default_metric,
        "leakage_threshold": analysis.leakage.threshold if analysis.leakage else None,
        "items": [
            {
                "id": s["id"],
                "qtype": s.get("qtype"),
                "focus": s.get("focus"),
                "question": s.get("question"),
                "reference": s.get("reference"),
                "prompts": s.get("prompts") or ({"prompt": s["prompt"]} if s.get("prompt") else {}),
                "overlap": s.get("train_overlap"),
                "systems": {
                    n: {k: v for k, v in (sys or {}).items() if k in keep}
                    for n, sys in (s.get("systems") or {}).items()
                },
            }
            for s in samples
            if s.get("generated", True)  # an item scored by the NLL metrics alone has no answer to explore
        ],
    }


def _per_run(analysis: Analysis, fact: Callable[[Analysis], Any], build: Callable[[Analysis], Any]) -> list[dict]:
    """``[{"run", "table"}]``: one section built from the analysis, or, in a combined report whose runs differ on a
    ``fact`` (their thresholds, their leakage audits: the combined analysis has none), one per run from that run's
    own analysis."""
    own = {r: read_analysis(a) for r, a in analysis.runs.items()}
    if own and not fact(analysis) and any(fact(a) for a in own.values()):
        return [{"run": r, "table": t} for r, a in own.items() if (t := build(a))]
    table = build(analysis)
    return [{"run": None, "table": table}] if table else []


def _bootstrap_text(analysis: Analysis) -> str:
    """The paired bootstrap's resamples and seed; in a combined report whose runs differ on them, each run's."""
    if not analysis.runs or (analysis.n_bootstrap is not None and analysis.seed is not None):
        return f"{analysis.n_bootstrap} resamples, seed {analysis.seed}"
    groups: dict[tuple, list[str]] = {}
    for label, a in analysis.runs.items():
        a = read_analysis(a)
        groups.setdefault((a.n_bootstrap, a.seed), []).append(label)
    return "; ".join(f"{'run' if len(labels) == 1 else 'runs'} {', '.join(labels)}: {n} resamples, seed {seed}"
                     for (n, seed), labels in groups.items())


def render_html(
    results: Results | Mapping[str, Any],
    samples: list[dict],
    analysis: Mapping[str, Any],
    verdict: Mapping[str, Any] | None,
    runs: list[tuple[str, dict]],
    *,
    plotly_mode: str,
    notes: list[str],
) -> str:
    import jinja2
    import plotly.io as pio
    from markupsafe import Markup
    from plotly.offline import get_plotlyjs, get_plotlyjs_version

    from ..analysis.verdict import metric_notes

    typed, stored = read_results(results), analysis  # stored: the analysis object, as results.json holds it
    analysis = read_analysis(analysis)
    figs = figures.build_figures(typed, analysis)
    sections = {}
    for key, title in _SECTIONS.items():
        items = [
            {**f, "json": Markup(script_json(pio.to_json(f["figure"], validate=False)))}
            for f in figs
            if f["section"] == key
        ]
        sections[key] = {"key": key, "title": title, "figures": items}
    explorer = script_json(_explorer(typed, samples, analysis))
    nonce = hashlib.sha256(explorer.encode() + json.dumps(stored, sort_keys=True).encode()).hexdigest()[:32]
    if plotly_mode == "inline":
        plotly_js, plotly_src = get_plotlyjs().replace("</script", "<\\/script"), None
    else:
        plotly_js, plotly_src = None, f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"

    pkg = resources.files(__package__)
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    template = env.from_string(pkg.joinpath("report.html").read_text(encoding="utf-8"))
    th = analysis.thresholds
    systems = tables.systems_context(typed, analysis)
    own = [read_analysis(a) for a in analysis.runs.values()]  # a combined report: each run's own analysis
    nll_counts = {a.n_nll_items or a.n_items for a in own}
    return template.render(
        title=typed.run_name or "medqa-bench run",
        created=typed.created or "",
        model=", ".join(dict.fromkeys(_model_reference(read_results(r)) for _, r in runs)),
        n_items=analysis.n_items,
        n_nll_items=(analysis.n_nll_items or analysis.n_items) if len(nll_counts) <= 1 else None,
        run_labels=list(analysis.runs),
        bootstrap=_bootstrap_text(analysis),
        analysis=analysis,
        thresholds=th,
        threshold_source=diagnostics.threshold_source_text(th),
        systems=systems,
        system_info={s["name"]: s for s in systems},
        verdict=verdict_context(typed, analysis, verdict),
        summary=tables.summary_tables(typed, analysis, metric_notes(typed, analysis)),
        validity=validity_context(typed, tables.metric_names(typed, analysis)),
        lm_rows=tables.language_modeling(typed, analysis),
        loss_definitions=tables.loss_definitions(typed, analysis, runs),
        tests=tables.paired_tests(analysis),
        degeneration=diagnostics.degeneration(analysis),
        budgets=diagnostics.budget(typed, runs),
        threshold_tables=_per_run(analysis, lambda a: a.match_thresholds, diagnostics.thresholds),
        leakages=_per_run(analysis, lambda a: a.leakage, lambda a: diagnostics.leakage(typed, a)),
        contamination=contamination(typed, samples, analysis),
        sections=sections,
        n_figures=len(figs),
        explorer_json=Markup(explorer),
        provenance=[_provenance(name, read_results(r)) for name, r in runs],
        notes=notes,
        css=Markup(pkg.joinpath("report.css").read_text(encoding="utf-8")),
        js=Markup(pkg.joinpath("report.js").read_text(encoding="utf-8")),
        plotly_js=Markup(plotly_js) if plotly_js else None,
        plotly_src=plotly_src,
        nonce=nonce,
    )
