"""Figures of the soft-thresholded confusion analysis: own-vs-other, ROC, sweep, graded, transitions, qtype."""

from __future__ import annotations

from .plotting import GRADE_COLORS, heatmaps, label, plotly_modules

REFERENCE_SCALE = [[0.0, "#f7f7f7"], [1.0, "#9a9a9a"]]  # reference rows' panels: light greys, text stays legible


def own_vs_other(conf, systems, styles):
    panels = []
    cells = (("TP", "FN"), ("FP", "TN"))
    for s in systems:
        r = conf["own_vs_other"].get(s)
        if not r or not r["n"]:
            continue
        f1 = "–" if r["f1"] is None else f"{r['f1']:.2f}"
        title = f"{styles[s]['name']}<br><sub>t={r['t']:.2f} · F1={f1} · n={r['n']}</sub>"
        text = [[f"{cells[i][j]}<br>{r['matrix'][i][j]}" for j in range(2)] for i in range(2)]
        scale = REFERENCE_SCALE if styles[s]["reference"] else "Blues"
        panels.append((title, r["matrix"], ["≥ t", "< t"], ["own (s+)", "other (s−)"], text, scale))
    return heatmaps(panels) if panels else None


def roc(conf, systems, styles):
    go, _ = plotly_modules()
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bbb", dash="dash"), name="chance"))
    for s in systems:
        r = conf["own_vs_other"].get(s)
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


def sweep(conf, systems, styles, t):
    go, _ = plotly_modules()
    fig = go.Figure()
    n_models = sum(not styles[s]["reference"] for s in systems)
    for s in systems:
        r = conf["own_vs_other"].get(s)
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


def graded(conf, systems, styles):
    go, _ = plotly_modules()
    fig = go.Figure()
    counts = conf["graded"]["counts"]
    for grade in conf["graded"]["labels"]:
        fig.add_trace(
            go.Bar(
                y=[styles[s]["name"] for s in systems],
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


def transitions(conf):
    panels = []
    for adapter, t in (conf["graded"].get("transitions") or {}).items():
        if not t:
            continue
        counts = f"improved {t['improved']} · regressed {t['regressed']} · same {t['same']}"
        title = f"{label(t['baseline'])} → {label(adapter)}<br><sub>{counts}</sub>"
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


def qtype(conf, systems, styles):
    panels = []
    for s in systems:
        q = conf["qtype"].get(s)
        if not q:
            continue
        acc = "–" if q["accuracy"] is None else f"{q['accuracy']:.0%}"
        panels.append(
            (
                f"{styles[s]['name']}<br><sub>same qtype {acc} of {q['n']}</sub>",
                q["matrix"],
                [label(c) for c in q["columns"]],
                [label(r) for r in q["rows"]],
                [[str(v) for v in row] for row in q["matrix"]],
                REFERENCE_SCALE if styles[s]["reference"] else "Greens",
            )
        )
    height = 120 + 45 * max(len(conf["qtype"][s]["rows"]) for s in conf["qtype"])
    return heatmaps(panels, cols=2, colorscale="Greens", height_per=max(300, height)) if panels else None
