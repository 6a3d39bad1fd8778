"""Plotting primitives shared by the report's figures: colours, label escaping, subplot grids, heatmaps.

Every string from the data goes through :func:`label`: plotly renders a small HTML subset in labels, and a
qtype or system name is data, so it is entity-escaped (plotly turns entities back into literal characters).
"""

from __future__ import annotations

import html
import math

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
GRADE_COLORS = {"wrong": "#D55E00", "partial": "#E69F00", "correct": "#009E73"}
LAYOUT = dict(
    template="plotly_white",
    margin=dict(l=60, r=20, t=50, b=50),
    font=dict(size=12),
    legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
)


def label(text) -> str:
    return html.escape(str(text), quote=False)


def system_colors(systems: list[str]) -> dict[str, str]:
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(systems)}


def plotly_modules():
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    return go, make_subplots


def grid(n: int, cols: int = 3) -> tuple[int, int]:
    cols = min(cols, max(n, 1))
    return math.ceil(n / cols), cols


def heatmaps(panels, *, cols=3, colorscale="Blues", height_per=300):
    """``panels``: ``[(title, z, x, y, text)]`` drawn as annotated heatmaps, one subplot each."""
    go, make_subplots = plotly_modules()
    rows, cols = grid(len(panels), cols)
    fig = make_subplots(
        rows=rows, cols=cols, subplot_titles=[p[0] for p in panels], horizontal_spacing=0.12, vertical_spacing=0.2
    )
    for k, (_, z, x, y, text) in enumerate(panels):
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=x,
                y=y,
                text=text,
                texttemplate="%{text}",
                colorscale=colorscale,
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
