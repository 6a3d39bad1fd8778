"""Figures of the soft-thresholded confusion analysis: own-vs-other, ROC, sweep, graded, transitions, qtype.

In a combined report whose runs calibrated different thresholds (``conf.row_thresholds``), each row was graded at
its own run's, and every view says which apply to which row: beside the row's name, or in its panel's title.
"""

from __future__ import annotations

from ..schema import Confusion
from .plotting import GRADE_COLORS, heatmaps, label, plotly_modules

REFERENCE_SCALE = [[0.0, "#f7f7f7"], [1.0, "#9a9a9a"]]  # reference rows' panels: light greys, text stays legible


def row_thresholds(conf: Confusion, system: str) -> dict | None:
    """The thresholds a combined report's row was graded at, where its runs' differ: ``{"run", "t", "t_low",
    "t_high", "differs"}`` (:func:`medqa_bench.analysis.runs.combine_analyses`); None otherwise."""
    return conf.row_thresholds.get(system) if conf.row_thresholds else None


def _whose(row: dict) -> str:
    """"run r16's"; a row several runs share whose thresholds differ: "run r16's; r32's differ"."""
    others = ", ".join(f"{label(r)}'s" for r in row.get("differs") or [])
    return f"run {label(row['run'])}'s" + (f"; {others} differ" if others else "")


def _t_text(conf: Confusion, system: str) -> str:
    """" · t=0.41 (run r16's)" for a row matched at its own run's t."""
    row = row_thresholds(conf, system)
    return f" · t={row['t']:.2f} ({_whose(row)})" if row and row.get("t") is not None else ""


def _grades_text(row: dict | None) -> str:
    """" · partial ≥ 0.25, correct ≥ 0.40 (run r16's)" for a row graded at its own run's thresholds."""
    if not row or row.get("t_low") is None:
        return ""
    return f" · partial ≥ {row['t_low']:.2f}, correct ≥ {row['t_high']:.2f} ({_whose(row)})"


def own_vs_other(conf: Confusion, systems, styles):
    panels = []
    cells = (("TP", "FN"), ("FP", "TN"))
    for s in systems:
        r = conf.own_vs_other.get(s)
        if not r or not r["n"]:
            continue
        f1 = "–" if r["f1"] is None else f"{r['f1']:.2f}"
        row = row_thresholds(conf, s)
        whose = f" ({_whose(row)})" if row else ""
        title = f"{styles[s]['name']}<br><sub>t={r['t']:.2f}{whose} · F1={f1} · n={r['n']}</sub>"
        text = [[f"{cells[i][j]}<br>{r['matrix'][i][j]}" for j in range(2)] for i in range(2)]
        scale = REFERENCE_SCALE if styles[s]["reference"] else "Blues"
        panels.append((title, r["matrix"], ["≥ t", "< t"], ["own (s+)", "other (s−)"], text, scale))
    return heatmaps(panels) if panels else None


def roc(conf: Confusion, systems, styles):
    go, _ = plotly_modules()
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bbb", dash="dash"), name="chance"))
    for s in systems:
        r = conf.own_vs_other.get(s)
        if not r or not r.get("roc"):
            continue
        fig.add_trace(
            go.Scatter(
                x=r["roc"]["fpr"],
                y=r["roc"]["tpr"],
                mode="lines",
                line=dict(color=styles[s]["color"], shape="hv", dash=styles[s]["dash"]),
                name=f"{styles[s]['name']} (AUC {r['auc']:.3f})" if r.get("auc") is not None else styles[s]["name"],
            )
        )
    fig.update_layout(
        xaxis_title="false positive rate (distractor ≥ t)",
        yaxis_title="true positive rate (own ≥ t)",
        height=420,
        xaxis=dict(range=[0, 1]),
        yaxis=dict(range=[0, 1.02], scaleanchor="x"),
    )
    return fig


def sweep(conf: Confusion, systems, styles, t):
    go, _ = plotly_modules()
    fig = go.Figure()
    n_models = sum(not styles[s]["reference"] for s in systems)
    for s in systems:
        r = conf.own_vs_other.get(s)
        if not r or not r.get("sweep"):
            continue
        st = styles[s]
        # reference rows: F1 only, as a grey dash-dot bar to clear
        lines = (("f1", "solid"), ("precision", "dash"), ("recall", "dot"))
        for key, dash in lines[:1] if st["reference"] else lines:
            fig.add_trace(
                go.Scatter(
                    x=r["sweep"]["t"],
                    y=r["sweep"][key],
                    mode="lines",
                    line=dict(color=st["color"], dash="dashdot" if st["reference"] else dash,
                              width=1.5 if st["reference"] else 2),
                    name=f"{st['name']} {key}",
                    legendgroup=s,
                    connectgaps=False,
                    # With many systems, precision and recall start hidden (click the legend to show them).
                    visible=True if key == "f1" or n_models <= 2 else "legendonly",
                )
            )
    fig.add_vline(x=t, line=dict(color="#444", dash="dot"), annotation_text=f"t = {t:.2f}")
    fig.update_layout(xaxis_title="threshold t", yaxis_title="value", height=420, yaxis=dict(range=[0, 1.02]))
    return fig


def graded(conf: Confusion, systems, styles):
    go, _ = plotly_modules()
    fig = go.Figure()
    counts = conf.graded.counts
    names = []  # where the runs' thresholds differ, each row's own beside its name
    for s in systems:
        row = row_thresholds(conf, s)
        names.append(f"{styles[s]['name']} · {row['t_low']:.2f} / {row['t_high']:.2f}" if row and row.get("t_low")
                     is not None else styles[s]["name"])
    for grade in conf.graded.labels:
        fig.add_trace(
            go.Bar(
                y=names,
                x=[counts.get(s, {}).get(grade, 0) for s in systems],
                orientation="h",
                name=grade,
                marker_color=GRADE_COLORS[grade],
                marker_opacity=[0.4 if styles[s]["reference"] else 1.0 for s in systems],
                marker_pattern_shape=[styles[s]["pattern"] for s in systems],
                text=[counts.get(s, {}).get(grade, 0) for s in systems],
                textposition="inside",
            )
        )
    fig.update_layout(
        barmode="stack",
        height=120 + 50 * len(systems),
        xaxis_title="items",
        yaxis=dict(autorange="reversed", type="category"),
    )
    return fig


def transitions(conf: Confusion):
    panels = []
    for adapter, t in conf.graded.transitions.items():
        if not t:
            continue
        counts = f"improved {t['improved']} · regressed {t['regressed']} · same {t['same']}"
        grades = _grades_text(row_thresholds(conf, adapter))  # the adapter's run's, its baseline graded alike
        title = f"{label(t['baseline'])} → {label(adapter)}<br><sub>{counts}{grades}</sub>"
        panels.append(
            (
                title,
                t["matrix"],
                [f"adapter {g}" for g in t["labels"]],
                [f"baseline {g}" for g in t["labels"]],
                [[str(v) for v in row] for row in t["matrix"]],
            )
        )
    return heatmaps(panels, cols=2, colorscale="Purples", height_per=340) if panels else None


def qtype(conf: Confusion, systems, styles):
    panels = []
    for s in systems:
        q = conf.qtype.get(s)
        if not q:
            continue
        acc = "–" if q["accuracy"] is None else f"{q['accuracy']:.0%}"
        panels.append(
            (
                f"{styles[s]['name']}<br><sub>same qtype {acc} of {q['n']}{_t_text(conf, s)}</sub>",
                q["matrix"],
                [label(c) for c in q["columns"]],
                [label(r) for r in q["rows"]],
                [[str(v) for v in row] for row in q["matrix"]],
                REFERENCE_SCALE if styles[s]["reference"] else "Greens",
            )
        )
    height = 120 + 45 * max(len(conf.qtype[s]["rows"]) for s in conf.qtype)
    return heatmaps(panels, cols=2, colorscale="Greens", height_per=max(300, height)) if panels else None
