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
  var STOP_TEXT = { eos: "stopped: end of turn (eos)", stop: "stopped: stop sequence", length: "hit max_new_tokens" };

  function explorer() {
    var data = readJSON("explorer-data");
    var info = {};
    data.systems.forEach(function (s) { info[s.name] = s; });
    var names = data.systems.map(function (s) { return s.name; });
    var pairs = data.pairs || [];
    var compare = document.getElementById("ex-compare");
    var metricSel = document.getElementById("ex-metric");
    var sortSel = document.getElementById("ex-sort");
    var search = document.getElementById("ex-search");
    var nearOnly = document.getElementById("ex-neardup");
    var list = document.getElementById("ex-list");
    var more = document.getElementById("ex-more");
    var count = document.getElementById("ex-count");
    var pageSize = 25, limit = pageSize;

    if (pairs.length === 0) {
      compare.appendChild(el("option", null, names[0] || "—")).value = "";
      sortSel.querySelector("option[value=regression]").textContent = "lowest score first";
      sortSel.querySelector("option[value=improvement]").textContent = "highest score first";
    }
    pairs.forEach(function (p, i) {
      compare.appendChild(el("option", null, p.label)).value = String(i);
    });
    data.metrics.forEach(function (m) {
      metricSel.appendChild(el("option", null, m)).value = m;
    });
    if (data.default_metric) metricSel.value = data.default_metric;

    function pair() { return compare.value === "" ? null : pairs[Number(compare.value)]; }

    function score(item, system, metric) {
      var s = item.systems[system];
      var v = s && s.scores ? s.scores[metric] : undefined;
      return typeof v === "number" && isFinite(v) ? v : null;
    }

    // Positive = the first system of the pair is better on this metric (sign flipped when lower is better).
    function gain(item) {
      var m = metricSel.value, p = pair();
      var sign = data.higher_is_better[m] ? 1 : -1;
      if (!p) {
        var only = score(item, names[0], m);
        return only === null ? null : sign * only;
      }
      var va = score(item, p.a, m), vb = score(item, p.b, m);
      return va === null || vb === null ? null : sign * (va - vb);
    }

    function haystack(item) {
      var parts = [item.id, item.qtype, item.focus, item.question, item.reference];
      Object.keys(item.systems).forEach(function (k) { parts.push(item.systems[k].prediction); });
      return parts.join("\n").toLowerCase();
    }
    data.items.forEach(function (it) { it._text = haystack(it); });

    function fmt(v) { return v === null || v === undefined ? "–" : Number(v).toFixed(3); }

    function overlapLine(item) {
      var o = item.overlap;
      var line = el("div", "overlap");
      line.appendChild(el("span", "label", "nearest training item: "));
      ["reference", "question"].forEach(function (side, k) {
        var r = o[side] || {};
        var flagged = data.leakage_threshold !== null && typeof r.score === "number" && r.score >= data.leakage_threshold;
        if (k) line.appendChild(el("span", null, " · "));
        line.appendChild(el("span", flagged ? "flag" : null,
          side + " " + fmt(r.score) + (r.train_id ? " (train " + r.train_id + ")" : "")));
      });
      return line;
    }

    function systemHead(s, out) {
      var i = info[s] || {};
      var th = el("th", i.kind === "reference" ? "ref" : null);
      th.appendChild(el("div", "name", s));
      var meta = el("div", "sub");
      meta.appendChild(el("span", "badge kind-" + (i.kind || ""), i.kind || ""));
      if (i.format) meta.appendChild(el("span", null, " " + i.format + " format"));
      if (i.retrieval) meta.appendChild(el("span", "badge rag", "RAG " + i.retrieval));
      th.appendChild(meta);
      if (i.description) th.title = i.description;
      if (i.kind === "reference") {
        var src = out.source;
        th.appendChild(el("div", "sub source", src && src.train_id
          ? "answer of training item " + src.train_id + (typeof src.score === "number" ? " (score " + src.score.toFixed(3) + ")" : "")
          : i.method === "question" ? "the question itself" : "no training item recorded"));
      } else if (out.stop_reason !== undefined) {
        var stop = out.stop_reason === null ? "no stop reason" : (STOP_TEXT[out.stop_reason] || out.stop_reason);
        th.appendChild(el("div", "sub stop stop-" + out.stop_reason, stop + " · " + out.generated_tokens + " tokens"));
      }
      return th;
    }

    // The training passages a system with retrieval was given, best first, as text (never HTML).
    function passageList(passages) {
      var det = el("details", "passages");
      det.appendChild(el("summary", null, "retrieved passages (" + passages.length + ")"));
      passages.forEach(function (p, n) {
        det.appendChild(el("div", "sub", "[" + (n + 1) + "] training item " + p.id +
          (typeof p.score === "number" ? " · score " + p.score.toFixed(3) : "")));
        det.appendChild(el("pre", "text", p.text));
      });
      return det;
    }

    function card(item, g) {
      var box = el("article", "item");
      var p = pair();
      var head = el("header");
      head.appendChild(el("span", "id", item.id));
      if (item.qtype) head.appendChild(el("span", null, item.qtype));
      if (item.focus) head.appendChild(el("span", null, item.focus));
      if (item.overlap && item.overlap.near_duplicate) head.appendChild(el("span", "badge neardup", "near-duplicate of a training item"));
      if (g !== null && p) {
        head.appendChild(el("span", "badge " + (g > 0 ? "better" : g < 0 ? "worse" : "same"),
          (g > 0 ? "▲ " + p.a + " better by " : g < 0 ? "▼ " + p.a + " worse by " : "= unchanged ") + Math.abs(g).toFixed(3)));
      }
      box.appendChild(head);
      box.appendChild(el("div", "q text", item.question));
      box.appendChild(el("div", "ref text", item.reference));
      if (item.overlap) box.appendChild(overlapLine(item));
      var formats = Object.keys(item.prompts || {});
      if (formats.length) {
        var det = el("details", "prompts");
        det.appendChild(el("summary", null, "prompts (" + formats.join(", ") + ")"));
        formats.forEach(function (f) {
          det.appendChild(el("div", "sub", f));
          det.appendChild(el("pre", "text", item.prompts[f]));
        });
        box.appendChild(det);
      }
      var table = el("table");
      var systems = p ? [p.b, p.a] : names.slice();
      names.forEach(function (s) { if (systems.indexOf(s) < 0) systems.push(s); });
      systems.forEach(function (s) {
        var out = item.systems[s];
        if (!out) return;
        var tr = el("tr", (info[s] || {}).kind === "reference" ? "ref" : null);
        tr.appendChild(systemHead(s, out));
        var pred = el("td", "pred");
        if (out.prediction && out.prediction.trim()) pred.appendChild(el("div", "text", out.prediction));
        else pred.appendChild(el("div", "empty", "(empty answer)"));
        if (out.truncated) pred.appendChild(el("div", "trunc", "truncated at max_new_tokens (" + out.generated_tokens + " tokens)"));
        if (Array.isArray(out.passages)) pred.appendChild(passageList(out.passages));
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
      var rows = data.items.filter(function (it) {
        return (!q || it._text.indexOf(q) >= 0) && (!nearOnly.checked || (it.overlap && it.overlap.near_duplicate));
      }).map(function (it) { return { item: it, g: gain(it) }; });
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

    [compare, metricSel, sortSel, nearOnly].forEach(function (c) { c.addEventListener("change", function () { limit = pageSize; render(); }); });
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
