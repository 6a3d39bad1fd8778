"""Plotly figures of the report, drawn from ``results`` and ``results["analysis"]`` only (no statistics here).

Strings from the data pass through :func:`plotting.label` before plotly sees them. Reference rows (no model) are
drawn grey, hatched or dashed and named "(reference)" in legends; the length views leave them out, since they
generated nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..schema import (Analysis, Confusion, Leakage, Lengths, LengthsRun, Results, SystemLengths, read_analysis,
                      read_results)
from . import confusion_figures as cf
from .plotting import LAYOUT, grid, label, plotly_modules, system_styles


def build_figures(results: Results | Mapping[str, Any], analysis: Analysis | Mapping[str, Any]) -> list[dict]:
    """``[{"id", "section", "title", "caption", "figure"}]`` with ``figure`` a plotly Figure, in page order
    (``results`` and ``analysis``: the typed records or their objects)."""
    results, analysis = read_results(results), read_analysis(analysis)
    systems = analysis.systems
    kinds = analysis.kinds
    styles = system_styles(systems, kinds)
    colors = {s: st["color"] for s, st in styles.items()}
    models = [s for s in systems if kinds.get(s) != "reference"]
    out: list[dict] = []

    def add(fig_id, section, title, caption, fig):
        if fig is not None:
            own = fig.layout.to_plotly_json()  # a builder's own margin or legend wins over the defaults
            fig.update_layout(**{k: v for k, v in LAYOUT.items() if k not in own or k in ("template", "font")})
            panels = sum(1 for a in fig.layout if a.startswith("xaxis"))
            out.append(
                {
                    "id": fig_id,
                    "section": section,
                    "title": title,
                    "caption": caption,
                    "figure": fig,
                    "wide": panels > 1 or fig_id == "metric-bars",
                }
            )

    add(
        "metric-bars",
        "metrics",
        "Metrics with 95% bootstrap CIs",
        "Bars: corpus value per system; whiskers: 95% CI. Grey hatched bars: reference rows (no model).",
        _metric_bars(results, systems, styles),
    )
    leak = analysis.leakage
    if leak is not None and leak.ran and leak.histogram:
        add(
            "leakage-histogram",
            "leakage",
            "Similarity of each evaluated item to its nearest training item",
            "Items per bin of the highest reference similarity and question similarity to any training item; "
            "the line marks the near-duplicate threshold.",
            _leakage_hist(leak),
        )
    conf = analysis.confusion
    if conf is not None and conf.raw:  # absent, null or an empty object: none
        m = conf.metric  # page titles are escaped by the template, not here
        # a combined report whose runs calibrated different thresholds: each row graded at its own run's, said where
        own = (" Each row is matched and graded at its own run's thresholds, shown with it (a row several runs "
               "share: the first of them's).") if conf.row_thresholds else ""
        add(
            "own-vs-other",
            "confusion",
            f"Own versus other reference ({m})",
            "Positives: similarity to the item's own reference; negatives: to another item's reference "
            "(distractor)." + own,
            cf.own_vs_other(conf, systems, styles),
        )
        add(
            "roc",
            "confusion",
            f"ROC: own versus other reference ({m})",
            "Separating own-reference from distractor similarity over all thresholds; AUC in the legend.",
            cf.roc(conf, systems, styles),
        )
        add(
            "threshold-sweep",
            "confusion",
            f"Threshold sweep ({m})",
            "Precision (dashed), recall (dotted) and F1 (solid) of own-vs-other matching; the line marks t.",
            _sweep(conf, systems, styles, analysis),
        )
        add(
            "graded",
            "confusion",
            f"Graded outcome ({m})",
            "Correct: s+ ≥ t_high; partial: t_low ≤ s+ < t_high; wrong: below. Faded: reference rows."
            + (" Each row is graded at its own run's thresholds, t_low / t_high beside its name (a row several runs "
               "share: the first of them's)." if own else ""),
            cf.graded(conf, systems, styles),
        )
        add(
            "transitions",
            "confusion",
            "Baseline → adapter transitions",
            "Rows: the baseline's grade; columns: the adapter's. Above the diagonal improved, below regressed." + own,
            cf.transitions(conf),
        )
        if conf.qtype:
            add(
                "qtype",
                "confusion",
                f"Question type of the nearest reference ({m})",
                "Rows: the item's qtype; columns: qtype of the most similar reference, or 'below t'." + own,
                cf.qtype(conf, systems, styles),
            )
    lengths = analysis.lengths
    if lengths.systems and models:
        graded = bool(conf and conf.raw)
        for grade in ("wrong", "partial") if graded else ("all",):
            add(
                f"lengths-{grade}",
                "lengths",
                f"Length of {grade} predictions" if graded else "Length of predictions",
                "Generated tokens, overlaid across model rows; grey: reference tokens of all items.",
                _length_hist(lengths, models, colors, grade),
            )
        add(
            "length-diff",
            "lengths",
            "Prediction length − reference length",
            "Tokens, model rows; right of zero the prediction is longer than the reference.",
            _diff_hist(lengths, models, colors),
        )
        add(
            "truncation",
            "lengths",
            "Truncated at max_new_tokens",
            "Share of predictions that hit the generation limit, of all and of wrong ones (model rows).",
            _truncation(lengths, models, colors),
        )
    logs = {n: results.system(n).training_log for n in systems}
    logs = {n: v for n, v in logs.items() if v}
    if logs:
        add(
            "training-loss",
            "training",
            "Training loss",
            "Logged loss per optimizer step.",
            _training_steps(logs, colors),
        )
        add(
            "learning-curve",
            "training",
            "Learning curve",
            "Mean train loss (solid) and validation loss (dashed) per epoch.",
            _learning_curve(logs, colors),
        )
    return out


def _metric_bars(results: Results, systems, styles):
    go, make_subplots = plotly_modules()
    scored = {m for s in systems for m in results.results.get(s, {})}
    metrics = [m for m in results.metrics if m in scored] + sorted(scored - set(results.metrics))
    if not metrics:
        return None
    rows, cols = grid(len(metrics), 4)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[label(m) for m in metrics], vertical_spacing=0.18)
    for k, m in enumerate(metrics):
        for s in systems:
            v = results.results.get(s, {}).get(m)
            if v is None or v.value is None:
                continue
            lo, hi = v.ci_low, v.ci_high
            st = styles[s]
            fig.add_trace(
                go.Bar(
                    x=[label(s)],
                    y=[v.value],
                    name=st["name"],
                    marker_color=st["color"],
                    marker_pattern_shape=st["pattern"],
                    marker_line=dict(color=st["color"], width=1) if st["reference"] else None,
                    opacity=0.75 if st["reference"] else 1.0,
                    showlegend=not any(t.legendgroup == s for t in fig.data),
                    legendgroup=s,
                    error_y=dict(
                        type="data",
                        symmetric=False,
                        array=[(hi - v.value) if hi is not None else 0],
                        arrayminus=[(v.value - lo) if lo is not None else 0],
                    ),
                    hovertemplate=f"{st['name']}<br>{label(m)} = %{{y:.4g}}<extra></extra>",
                ),
                row=k // cols + 1,
                col=k % cols + 1,
            )
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(
        height=300 * rows + 90,
        bargap=0.3,
        margin=dict(l=60, r=20, t=100, b=30),
        # the legend sits in the top margin, clear of the subplot titles, however many rows there are
        legend=dict(orientation="h", yref="container", yanchor="top", y=1.0, x=0),
    )
    return fig


def _leakage_hist(leak: Leakage):
    go, _ = plotly_modules()
    h = leak.histogram  # {"edges", "reference", "question"}
    edges = h.get("edges") or []
    if len(edges) < 2:
        return None
    x = _centers(edges)
    fig = go.Figure()
    for side, color, name in (("reference", "#0072B2", "reference vs training references"),
                              ("question", "#E69F00", "question vs training questions")):
        if h.get(side):
            fig.add_trace(go.Bar(x=x, y=h[side], name=name, marker_color=color,
                                 hovertemplate=f"{name}<br>%{{x:.2f}}: %{{y}} items<extra></extra>"))
    if leak.threshold is not None:
        fig.add_vline(x=leak.threshold, line=dict(color="#D55E00", dash="dot"),
                      annotation_text=f"near-duplicate ≥ {leak.threshold:g}")
    fig.update_layout(barmode="group", bargap=0.08, xaxis_title="highest similarity to a training item",
                      yaxis_title="items", height=360, xaxis=dict(range=[edges[0], edges[-1]]))
    return fig


def _sweep(conf: Confusion, systems, styles, analysis: Analysis):
    """The threshold sweep, marked at t; in a combined report whose runs calibrated different thresholds, at each
    run's t."""
    runs = analysis.runs
    th = analysis.thresholds
    fig = cf.sweep(conf, systems, styles, th["t"] if th else 0.0)
    if not th:  # the runs differ: drop the mark at 0 and mark each run's own t
        fig.layout.shapes, fig.layout.annotations = (), ()
        marks: dict[float, list[str]] = {}
        for run, a in runs.items():
            t = (read_analysis(a).thresholds or {}).get("t")
            if t is not None:
                marks.setdefault(round(t, 4), []).append(run)
        for t, labels in marks.items():
            fig.add_vline(x=t, line=dict(color="#444", dash="dot"),
                          annotation_text=f"t = {t:.2f} ({label(', '.join(labels))})")
    return fig


def _centers(edges):
    return [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]


def _bins(edges):
    return _centers(edges), edges[1] - edges[0]


def _distinct(lengths: Lengths, key) -> list[tuple[str | None, LengthsRun]]:
    """``[(run labels, block)]``: a combined report's runs grouped by a length fact (their own bin edges and
    references, their budgets), labels None where every run agrees or there is one run."""
    runs = lengths.runs or {"": LengthsRun(lengths.edges, lengths.reference, lengths.max_new_tokens)}
    groups: dict[str, tuple[list, dict]] = {}
    for r, block in runs.items():
        groups.setdefault(json.dumps(key(block), sort_keys=True), ([], block))[0].append(r)
    return [(", ".join(rs) if len(groups) > 1 else None, block) for rs, block in groups.values()]


def _length_hist(lengths: Lengths, systems, colors, grade):
    go, _ = plotly_modules()
    fig = go.Figure()
    for runs, block in _distinct(lengths, lambda b: [b.edges, b.reference]):
        if block.reference:  # each run's references in its own tokenizer's tokens
            x, width = _bins(block.edges or lengths.edges)
            fig.add_trace(go.Bar(x=x, y=block.reference["counts"], width=width, marker_color="#999", opacity=0.45,
                                 name=f"reference (all items{', ' + label(runs) if runs else ''})"))
    for s in systems:
        row = lengths.systems.get(s) or SystemLengths()
        h = row.histogram(grade)
        if h:
            x, width = _bins(row.edges or lengths.edges)
            fig.add_trace(
                go.Bar(
                    x=x,
                    y=h["counts"],
                    width=width,
                    name=f"{label(s)} (n={h['n']})",
                    marker_color=colors[s],
                    opacity=0.6,
                )
            )
    for runs, block in _distinct(lengths, lambda b: b.max_new_tokens):
        if block.max_new_tokens:
            fig.add_vline(x=block.max_new_tokens, line=dict(color="#D55E00", dash="dot"),
                          annotation_text=f"max_new_tokens{' (' + label(runs) + ')' if runs else ''}")
    fig.update_layout(barmode="overlay", xaxis_title="tokens", yaxis_title="items", height=380)
    return fig


def _diff_hist(lengths: Lengths, systems, colors):
    go, _ = plotly_modules()
    fig = go.Figure()
    for s in systems:
        row = lengths.systems.get(s) or SystemLengths()
        h = row.diff
        if h and h["n"]:
            x, width = _bins(row.diff_edges or lengths.diff_edges)
            fig.add_trace(
                go.Bar(
                    x=x,
                    y=h["counts"],
                    width=width,
                    marker_color=colors[s],
                    opacity=0.6,
                    name=f"{label(s)} (median {h['median']:+.0f})",
                )
            )
    fig.add_vline(x=0, line=dict(color="#444"))
    fig.update_layout(barmode="overlay", xaxis_title="generated − reference tokens", yaxis_title="items", height=380)
    return fig


def _truncation(lengths: Lengths, systems, colors):
    go, _ = plotly_modules()
    fig = go.Figure()
    truncated = {s: (lengths.systems.get(s) or SystemLengths()).truncated for s in systems}
    for key, name, pattern in (("share", "of all predictions", ""), ("share_of_wrong", "of wrong predictions", "/")):
        ys = [truncated[s].get(key) for s in systems]
        ns = [truncated[s].get("n" if key == "share" else "n_wrong") for s in systems]
        fig.add_trace(
            go.Bar(
                x=[label(s) for s in systems],
                y=ys,
                name=name,
                marker_color=[colors[s] for s in systems],
                marker_pattern_shape=pattern,
                text=[f"{n}" if n is not None else "" for n in ns],
                textposition="outside",
            )
        )
    fig.update_layout(
        barmode="group",
        yaxis=dict(tickformat=".0%", rangemode="tozero"),
        height=340,
        yaxis_title="truncated",
        xaxis=dict(type="category"),
    )
    return fig


def _training_steps(logs, colors):
    go, _ = plotly_modules()
    fig = go.Figure()
    for s, log in logs.items():
        steps = [r for r in log.get("steps") or [] if r.get("loss") is not None]
        fig.add_trace(
            go.Scatter(
                x=[r.get("step") for r in steps],
                y=[r["loss"] for r in steps],
                mode="lines",
                name=label(s),
                line=dict(color=colors[s]),
            )
        )
    fig.update_layout(xaxis_title="step", yaxis_title="training loss", height=360)
    return fig


def _learning_curve(logs, colors):
    go, _ = plotly_modules()
    fig = go.Figure()
    for s, log in logs.items():
        epochs = log.get("epochs") or []
        for key, dash in (("train_loss", "solid"), ("eval_loss", "dash")):
            pts = [(e["epoch"], e[key]) for e in epochs if e.get(key) is not None]
            if pts:
                fig.add_trace(
                    go.Scatter(
                        x=[p[0] for p in pts],
                        y=[p[1] for p in pts],
                        mode="lines+markers",
                        name=f"{label(s)} {key.split('_')[0]}",
                        line=dict(color=colors[s], dash=dash),
                    )
                )
    fig.update_layout(xaxis_title="epoch", yaxis_title="loss", height=360, xaxis=dict(dtick=1))
    return fig
