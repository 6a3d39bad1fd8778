// medqa-bench report: draw the plotly figures and the item explorer. Data arrives as JSON text and is inserted
// with textContent only, never as HTML.
(function () {
  "use strict";

  function readJSON(id) {
    return JSON.parse(document.getElementById(id).textContent);
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  // ---------------------------------------------------------------------------------------------- figures
  function drawFigures() {
    var divs = document.querySelectorAll(".plotly-figure");
    var pending = [];
    divs.forEach(function (div) {
      try {
        var fig = readJSON(div.getAttribute("data-source"));
        pending.push(Plotly.newPlot(div, fig.data, fig.layout || {}, { responsive: true, displaylogo: false, displayModeBar: "hover" }));
      } catch (err) {
        div.appendChild(el("p", "plotly-error", "This chart could not be drawn: " + err));
        console.error("medqa-bench: figure " + div.id + " failed", err);
      }
    });
    Promise.all(pending).then(function () {
      document.body.setAttribute("data-figures-rendered", String(document.querySelectorAll(".js-plotly-plot").length));
    }, function (err) {
      console.error("medqa-bench: figure rendering failed", err);
    });
  }

  // ---------------------------------------------------------------------------------------------- explorer
  function explorer() {
    var data = readJSON("explorer-data");
    var adapters = Object.keys(data.comparisons);
    var compare = document.getElementById("ex-compare");
    var metricSel = document.getElementById("ex-metric");
    var sortSel = document.getElementById("ex-sort");
    var search = document.getElementById("ex-search");
    var list = document.getElementById("ex-list");
    var more = document.getElementById("ex-more");
    var count = document.getElementById("ex-count");
    var pageSize = 25, limit = pageSize;

    if (adapters.length === 0) {
      compare.appendChild(el("option", null, data.systems[0] || "—")).value = "";
      sortSel.querySelector("option[value=regression]").textContent = "lowest score first";
      sortSel.querySelector("option[value=improvement]").textContent = "highest score first";
    }
    adapters.forEach(function (a) {
      compare.appendChild(el("option", null, a + "  vs  " + data.comparisons[a])).value = a;
    });
    data.metrics.forEach(function (m) {
      metricSel.appendChild(el("option", null, m)).value = m;
    });
    if (data.default_metric) metricSel.value = data.default_metric;

    function score(item, system, metric) {
      var s = item.systems[system];
      var v = s && s.scores ? s.scores[metric] : undefined;
      return typeof v === "number" && isFinite(v) ? v : null;
    }

    // Positive = the adapter is better on this metric (sign flipped when lower is better).
    function gain(item) {
      var m = metricSel.value, a = compare.value;
      var sign = data.higher_is_better[m] ? 1 : -1;
      if (!a) {
        var only = score(item, data.systems[0], m);
        return only === null ? null : sign * only;
      }
      var va = score(item, a, m), vb = score(item, data.comparisons[a], m);
      return va === null || vb === null ? null : sign * (va - vb);
    }

    function haystack(item) {
      var parts = [item.id, item.qtype, item.focus, item.question, item.reference];
      Object.keys(item.systems).forEach(function (k) { parts.push(item.systems[k].prediction); });
      return parts.join("\n").toLowerCase();
    }
    data.items.forEach(function (it) { it._text = haystack(it); });

    function fmt(v) { return v === null || v === undefined ? "–" : Number(v).toFixed(3); }

    function card(item, g) {
      var box = el("article", "item");
      var head = el("header");
      head.appendChild(el("span", "id", item.id));
      if (item.qtype) head.appendChild(el("span", null, item.qtype));
      if (item.focus) head.appendChild(el("span", null, item.focus));
      if (g !== null && compare.value) {
        head.appendChild(el("span", "badge " + (g > 0 ? "better" : g < 0 ? "worse" : "same"),
          (g > 0 ? "▲ improved " : g < 0 ? "▼ regressed " : "= unchanged ") + Math.abs(g).toFixed(3)));
      }
      box.appendChild(head);
      box.appendChild(el("div", "q text", item.question));
      box.appendChild(el("div", "ref text", item.reference));
      var table = el("table");
      var systems = compare.value ? [data.comparisons[compare.value], compare.value] : data.systems;
      data.systems.forEach(function (s) { if (systems.indexOf(s) < 0) systems.push(s); });
      systems.forEach(function (s) {
        var out = item.systems[s];
        if (!out) return;
        var tr = el("tr");
        var name = el("th", null, s);
        tr.appendChild(name);
        var pred = el("td", "pred");
        pred.appendChild(el("div", "text", out.prediction));
        if (out.truncated) pred.appendChild(el("div", "trunc", "truncated at max_new_tokens (" + out.generated_tokens + " tokens)"));
        tr.appendChild(pred);
        var sc = el("td", "scores");
        data.metrics.forEach(function (m) {
          var line = el(m === metricSel.value ? "b" : "div", null, m + ": " + fmt(score(item, s, m)));
          sc.appendChild(line);
          if (m === metricSel.value) sc.appendChild(el("br"));
        });
        tr.appendChild(sc);
        table.appendChild(tr);
      });
      box.appendChild(table);
      return box;
    }

    function render() {
      var q = search.value.trim().toLowerCase();
      var rows = data.items.filter(function (it) { return !q || it._text.indexOf(q) >= 0; })
        .map(function (it) { return { item: it, g: gain(it) }; });
      var mode = sortSel.value;
      rows.sort(function (x, y) {
        if (mode === "id") return x.item.id < y.item.id ? -1 : x.item.id > y.item.id ? 1 : 0;
        if (x.g === null) return 1;
        if (y.g === null) return -1;
        if (mode === "regression") return x.g - y.g;
        if (mode === "improvement") return y.g - x.g;
        return Math.abs(y.g) - Math.abs(x.g);
      });
      list.textContent = "";
      rows.slice(0, limit).forEach(function (r) { list.appendChild(card(r.item, r.g)); });
      count.textContent = "showing " + Math.min(limit, rows.length) + " of " + rows.length + " items";
      more.style.display = rows.length > limit ? "" : "none";
    }

    [compare, metricSel, sortSel].forEach(function (c) { c.addEventListener("change", function () { limit = pageSize; render(); }); });
    search.addEventListener("input", function () { limit = pageSize; render(); });
    more.addEventListener("click", function () { limit += pageSize; render(); });
    render();
  }

  function start() {
    try { explorer(); } catch (err) { console.error("medqa-bench: item explorer failed", err); }
    if (typeof Plotly === "undefined") {
      console.error("medqa-bench: plotly.js did not load (offline with plotly='cdn'?)");
      return;
    }
    drawFigures();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
