"""Plotting primitives shared by the report's figures: system styles, label escaping, subplot grids, heatmaps.

Every string from the data goes through :func:`label`: plotly renders a small HTML subset in labels, and a
qtype or system name is data, so it is entity-escaped (plotly turns entities back into literal characters).
"""

from __future__ import annotations

import html
import math

# Okabe-Ito: distinguishable with the common colour-vision deficiencies. Language-model rows take these in order.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
# Reference rows (no model) are grey, hatched or dashed: a bar to clear, not a contender.
GREYS = ("#7a7a7a", "#4d4d4d", "#a3a3a3", "#2e2e2e", "#bdbdbd")
GRADE_COLORS = {"wrong": "#D55E00", "partial": "#E69F00", "correct": "#009E73"}
LAYOUT = dict(
    template="plotly_white",
    margin=dict(l=60, r=20, t=50, b=50),
    font=dict(size=12),
    legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
)


def label(text) -> str:
    return html.escape(str(text), quote=False)


def system_styles(systems: list[str], kinds: dict[str, str]) -> dict[str, dict]:
    """``{system: {"color", "dash", "pattern", "reference", "name"}}``: model rows in the palette, solid; reference
    rows grey, dashed and hatched, named "<row> (reference)" in legends (``name`` is already escaped)."""
    styles, lm, ref = {}, 0, 0
    for s in systems:
        if kinds.get(s) == "reference":
            styles[s] = {"color": GREYS[ref % len(GREYS)], "dash": "dash", "pattern": "/", "reference": True,
                         "name": f"{label(s)} (reference)"}
            ref += 1
        else:
            styles[s] = {"color": PALETTE[lm % len(PALETTE)], "dash": "solid", "pattern": "", "reference": False,
                         "name": label(s)}
            lm += 1
    return styles


def plotly_modules():
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    return go, make_subplots


def grid(n: int, cols: int = 3) -> tuple[int, int]:
    cols = min(cols, max(n, 1))
    return math.ceil(n / cols), cols


def heatmaps(panels, *, cols=3, colorscale="Blues", height_per=300):
    """``panels``: ``[(title, z, x, y, text)]`` or ``[(title, z, x, y, text, colorscale)]`` drawn as annotated
    heatmaps, one subplot each (a panel's own colorscale wins over ``colorscale``)."""
    go, make_subplots = plotly_modules()
    rows, cols = grid(len(panels), cols)
    fig = make_subplots(
        rows=rows, cols=cols, subplot_titles=[p[0] for p in panels], horizontal_spacing=0.12, vertical_spacing=0.2
    )
    for k, panel in enumerate(panels):
        _, z, x, y, text = panel[:5]
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=x,
                y=y,
                text=text,
                texttemplate="%{text}",
                colorscale=panel[5] if len(panel) > 5 else colorscale,
                showscale=False,
                hovertemplate="%{y} → %{x}: %{z}<extra></extra>",
            ),
            row=k // cols + 1,
            col=k % cols + 1,
        )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    fig.update_layout(height=height_per * rows + 80, margin=dict(l=60, r=20, t=90, b=50))
    return fig
