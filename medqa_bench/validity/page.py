"""``validity.html``: one offline page from a ``validity.json`` (tables, comparisons, score-by-grade plots).

Rendering needs only the record: no metric is run again. Strings from the data reach the page as Jinja2 template
variables (autoescaped) or as plotly JSON inside ``<script type="application/json">`` (escaped by the report's
:func:`~medqa_bench.report.page.script_json`, labels by :func:`~medqa_bench.report.plotting.label`); the page's own
script is the only one its Content-Security-Policy lets run. plotly.js is inlined, so the page works offline.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources

from . import robustness as rb
from . import stats
from .schema import Validity

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'nonce-{{ nonce }}'; style-src 'unsafe-inline'; img-src data: blob:; font-src data:">
<meta name="generator" content="medqa-bench">
<title>medqa-bench · metric validity · {{ data.judged_set.name }}</title>
<style>{{ css }}</style>
<script nonce="{{ nonce }}">{{ plotly_js }}</script>
</head>
<body data-expected-figures="{{ figures|length }}">
<header class="top">
  <h1>Metric validity: {{ data.judged_set.name }}</h1>
  <p class="meta"><span>{{ counts.questions }} questions</span><span>{{ counts.candidates }} candidates</span>
  <span>good: grade ≥ {{ data.settings.good_threshold }}</span><span>{{ data.settings.n_bootstrap }} bootstrap resamples of questions, seed {{ data.settings.seed }}</span>
  <span>{{ data.created }}</span><span>medqa-bench {{ data.medqa_bench_version }}</span></p>
  <nav><a href="#figures">Agreement</a><a href="#robustness">Robustness</a><a href="#comparisons">Comparisons</a><a href="#plots">Scores by grade</a><a href="#set">The judged set</a></nav>
</header>
<main>
<section id="primary">
  <p class="note">Primary metric: <b>{{ data.primary or "none" }}</b>. {{ data.primary_reason }}.
  <br><span class="sub">Rule: {{ data.primary_rule }}.</span></p>
</section>
<section id="figures">
  <h2>Agreement with the expert grades</h2>
  <div class="scroll"><table>
    <thead><tr><th>metric</th>{% for f in figure_names %}<th>{{ titles[f] }}</th>{% endfor %}<th>scored</th><th>robust</th></tr></thead>
    <tbody>
    {% for r in rows %}
      <tr><td>{{ r.name }}{% if r.kind == "baseline" %}<div class="sub">baseline, no reference</div>{% endif %}</td>
      {% for f in figure_names %}{% set v = r.figures[f] %}<td><span class="value">{{ num(v.value) }}</span><div class="ci">{{ ci(v) }}</div></td>{% endfor %}
      <td>{{ r.n_scored }}{% if r.n_unscored %}<div class="sub">{{ r.n_unscored }} unscored</div>{% endif %}</td>
      <td>{{ "yes" if r.passes_robustness else "no" }}</td></tr>
    {% endfor %}
    </tbody>
  </table></div>
  <details><summary>What each figure is</summary><ul>
  {% for f in figure_names %}<li><b>{{ titles[f] }}</b>: {{ data.figures[f] }}.</li>{% endfor %}
  <li>Every interval is the 95% percentile interval of {{ data.settings.n_bootstrap }} bootstrap resamples of questions (each drawn question brings all its candidates). Scores of a lower-is-better metric are negated first, so a positive figure always means agreement.</li>
  </ul></details>
  {% if data.skipped_metrics %}<p class="sub">Not validated: {% for s in data.skipped_metrics %}{{ s.name }} ({{ s.reason }}){% if not loop.last %}; {% endif %}{% endfor %}.</p>{% endif %}
</section>
<section id="robustness">
  <h2>Robustness: how often a good answer beats a perturbed one</h2>
  <p class="legend">For each of the {{ data.robustness.good_candidates }} good candidates, the metric's score against the candidate's references is set beside the score of a perturbed answer against the same references. Win rate: the share where the good answer scores better (a tie counts ½). A metric {{ data.robustness.pass_rule }}.</p>
  <div class="scroll"><table>
    <thead><tr><th>metric</th>{% for p in perturbations %}<th>{{ p }}<div class="sub">{{ data.robustness.perturbations[p] }}</div></th>{% endfor %}<th>passes</th></tr></thead>
    <tbody>
    {% for r in rows %}
      <tr><td>{{ r.name }}</td>
      {% for p in perturbations %}{% set w = r.robustness[p] %}<td class="{{ 'better' if w.ci_low is not none and w.ci_low > 0.5 else 'worse' }}"><span class="value">{{ num(w.value, 2) }}</span><div class="ci">{{ ci(w, 2) }} · n={{ w.n }}</div></td>{% endfor %}
      <td>{{ "yes" if r.passes_robustness else "no" }}</td></tr>
    {% endfor %}
    </tbody>
  </table></div>
  <details><summary>The fixed boilerplate answer</summary><pre>{{ data.robustness.boilerplate.text }}</pre></details>
</section>
<section id="comparisons">
  <h2>Metric against metric</h2>
  <p class="legend">Difference of a figure between two metrics (a − b) on the same bootstrap resamples, its 95% interval, and the two-sided p-value, Holm-corrected over every pair of metrics on that figure.</p>
  {% for f in figure_names %}
  <details{% if f in open_figures %} open{% endif %}><summary>{{ titles[f] }}</summary>
  <div class="scroll"><table>
    <thead><tr><th>a</th><th>b</th><th>a − b</th><th>95% CI</th><th>p</th><th>p (Holm)</th></tr></thead>
    <tbody>
    {% for c in comparisons[f] %}
      <tr class="{{ '' if c.p_holm is not none and c.p_holm < 0.05 else 'ns' }}"><td>{{ c.a }}</td><td>{{ c.b }}</td><td>{{ num(c.difference) }}</td><td>{{ ci(c) }}</td><td>{{ num(c.p) }}</td><td>{{ num(c.p_holm) }}</td></tr>
    {% endfor %}
    </tbody>
  </table></div></details>
  {% endfor %}
</section>
<section id="plots">
  <h2>Scores by grade</h2>
  <div class="figures">
  {% for f in figures %}
    <figure class="card">
      <h3>{{ f.title }}</h3>
      <div class="plotly-figure" id="fig-{{ f.id }}" data-source="fig-{{ f.id }}-data"></div>
      <script type="application/json" id="fig-{{ f.id }}-data">{{ f.json }}</script>
      <figcaption>{{ f.caption }}</figcaption>
    </figure>
  {% endfor %}
  </div>
</section>
<section id="set">
  <h2>The judged set</h2>
  <p>{{ data.judged_set.construction }}</p>
  {% if data.judged_set.license %}<p class="sub">License and attribution: {{ data.judged_set.license }}</p>{% endif %}
  <table class="kv"><tbody>
  {% for k, v in counts_rows %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}
  <tr><th>fingerprint</th><td>{{ data.judged_set.fingerprint }}</td></tr>
  <tr><th>reference aggregation</th><td>{{ data.judged_set.reference_aggregation }}</td></tr>
  </tbody></table>
  <details><summary>Metric signatures</summary><table class="kv"><tbody>
  {% for r in rows %}<tr><th>{{ r.name }}</th><td>{{ r.signature }} ({{ r.source }}; {{ r.seconds }} s)</td></tr>{% endfor %}
  </tbody></table></details>
</section>
</main>
<footer>medqa-bench metrics validate · validity.json version {{ data.version }}</footer>
<script nonce="{{ nonce }}">
(function () {
  "use strict";
  document.querySelectorAll(".plotly-figure").forEach(function (div) {
    var fig = JSON.parse(document.getElementById(div.getAttribute("data-source")).textContent);
    Plotly.newPlot(div, fig.data, fig.layout || {}, { responsive: true, displaylogo: false, displayModeBar: "hover" });
  });
})();
</script>
</body>
</html>
"""


def _num(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ci(interval: dict, digits: int = 3) -> str:
    if interval.get("ci_low") is None:
        return ""
    return f"[{interval['ci_low']:.{digits}f}, {interval['ci_high']:.{digits}f}]"


def score_figures(data: Validity) -> list[dict]:
    """One box-and-points plot per metric: its scores of the candidates of each grade."""
    import plotly.graph_objects as go

    from ..report.plotting import LAYOUT, PALETTE, label

    grades = [c["grade"] for c in data["candidates"]]
    levels = sorted(set(grades))
    out = []
    for k, (name, row) in enumerate(data["metrics"].items()):
        fig = go.Figure()
        for g in levels:
            values = [s for s, grade in zip(row["scores"], grades) if grade == g and s is not None]
            fig.add_trace(go.Box(y=values, name=label(f"{g:g}"), boxpoints="all", jitter=0.5, pointpos=0,
                                 marker=dict(size=3, color=PALETTE[0]), line=dict(color=PALETTE[0]),
                                 showlegend=False))
        fig.update_layout(**LAYOUT, height=320, xaxis_title="expert grade", yaxis_title=label(name))
        wq = row["figures"]["within_question_spearman"]
        out.append({
            "id": k, "title": name, "figure": fig,
            "caption": f"{row['n_scored']} candidates; within-question Spearman {_num(wq['value'])} {_ci(wq)}; "
                       f"{'higher' if row['higher_is_better'] else 'lower'} is better",
        })
    return out


def render_validity_html(data: Validity) -> str:
    """The page for ``data`` (a ``validity.json`` record), as a string."""
    import jinja2
    import plotly.io as pio
    from markupsafe import Markup
    from plotly.offline import get_plotlyjs

    from ..report.page import script_json

    figures = score_figures(data)
    for f in figures:
        f["json"] = Markup(script_json(pio.to_json(f["figure"], validate=False)))
    comparisons: dict[str, list] = {f: [] for f in stats.FIGURES}
    for c in data["comparisons"]:
        comparisons[c["figure"]].append(c)
    counts = data["judged_set"]["counts"]
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    nonce = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:32]
    css = resources.files("medqa_bench.report").joinpath("report.css").read_text(encoding="utf-8")
    return env.from_string(_TEMPLATE).render(
        data=data, counts=counts,
        counts_rows=[(k, json.dumps(v) if isinstance(v, dict) else v) for k, v in counts.items()],
        rows=list(data["metrics"].values()), figure_names=list(stats.FIGURES), titles=stats.FIGURE_TITLES,
        perturbations=list(rb.PERTURBATIONS), comparisons=comparisons,
        open_figures=("within_question_spearman", "auc_on_topic"), figures=figures, num=_num, ci=_ci,
        css=Markup(css), plotly_js=Markup(get_plotlyjs().replace("</script", "<\\/script")), nonce=nonce,
    )
