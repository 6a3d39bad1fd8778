"""Load a rendered report in headless Chromium: every chart drawn, no JavaScript error, no planted script runs.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (JSON messages separated by NUL
on file descriptors 3 and 4): no network port, no websocket client, nothing to install but Chromium itself.
Set ``MEDQA_BENCH_CHROMIUM`` to use another binary. A PNG of the full page goes to ``test-artifacts/report.png``.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest_report import XSS, make_run

from medqa_bench.report import render_report

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
)


def chromium_binary() -> str:
    candidates = [
        os.environ.get("MEDQA_BENCH_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        shutil.which("google-chrome"),
    ]
    for c in candidates:
        if c and os.path.exists(c):
            return c
    pytest.fail(
        "headless Chromium is required for the browser test and was not found: install it with "
        "`apt-get install -y chromium` (Debian/Ubuntu) or point MEDQA_BENCH_CHROMIUM at a Chrome binary",
        pytrace=False,
    )


class DevTools:
    """A minimal Chrome DevTools protocol client over the ``--remote-debugging-pipe`` file descriptors."""

    def __init__(self, binary: str, profile: Path, log: Path):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def child_fds():  # fd 3: Chrome reads commands; fd 4: Chrome writes replies (F_DUPFD avoids clobbering)
            a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=child_fds,
            close_fds=False,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id = 0
        self._inbox: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while True:
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                self._inbox.put(None)
                return
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for m in messages:
                self._inbox.put(json.loads(m))

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._inbox.get(timeout=max(0.1, deadline - time.monotonic()))
            if reply is None:
                raise RuntimeError(f"Chromium exited while waiting for {method}")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for e in self.events:
            if e.get("method") == method:
                return e
        while True:
            e = self._inbox.get(timeout=max(0.1, deadline - time.monotonic()))
            if e is None:
                raise RuntimeError(f"Chromium exited while waiting for {method}")
            self.events.append(e)
            if e.get("method") == method:
                return e

    def evaluate(self, session: str, expression: str):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        if "exceptionDetails" in r:
            raise RuntimeError(f"evaluate({expression!r}): {r['exceptionDetails']}")
        return r["result"].get("value")

    def open_report(self, path: Path, width: int, height: int) -> str:
        """A new page of ``width`` x ``height`` CSS pixels showing the report at ``path`` once its charts are drawn
        (or a JavaScript error stopped them); its session id."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
        self.send("Page.navigate", {"url": path.resolve().as_uri()}, session)
        self.wait_event("Page.loadEventFired", timeout=90)
        deadline = time.monotonic() + 90
        while self.evaluate(session, "document.body.getAttribute('data-figures-rendered')") is None:
            if time.monotonic() > deadline or js_errors(self.events):
                break
            time.sleep(0.25)
        return session

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except Exception:  # already gone: fall through to terminate
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        self._log.close()


def js_errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            out.append(f"exception: {d.get('text')} {(d.get('exception') or {}).get('description', '')}")
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(
                "console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", []))
            )
        elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
            out.append(f"log ({p['entry'].get('source')}): {p['entry'].get('text')}")
    return out


VERDICT_STATE = """JSON.stringify((function () {
    var v = document.getElementById('verdict');
    var box = v.getBoundingClientRect();
    var firstWarning = v.querySelector('li.warning');
    var article = v.querySelector('article.verdict-adapter');
    function texts(selector) {
        return Array.from(v.querySelectorAll(selector)).map(function (l) { return l.innerText; });
    }
    function rows(outcome) {
        return Array.from(v.querySelectorAll('tr.verdict-row[data-outcome=' + outcome + ']')).map(function (r) {
            return {metric: r.getAttribute('data-metric'), text: r.innerText}; });
    }
    return {
        first_section: document.querySelector('main section').id,
        top: box.top + window.scrollY,
        summary_top: document.getElementById('summary').getBoundingClientRect().top + window.scrollY,
        visible: box.height > 100 && getComputedStyle(v).display !== 'none'
            && getComputedStyle(v).visibility !== 'hidden',
        adapter: article ? article.getAttribute('data-adapter') : null,
        headline: article ? article.querySelector('.verdict-headline').innerText : '',
        improves: rows('improves'),
        regresses: rows('regresses'),
        no_difference: rows('no_difference'),
        adapter_warnings: texts('ul.verdict-warnings li'),
        conditions: texts('ul.verdict-conditions li'),
        run_warnings: Array.from(v.querySelectorAll('ul.run-warnings li')).map(function (l) {
            return {code: l.getAttribute('data-code'), text: l.innerText}; }),
        references: Array.from(v.querySelectorAll('table.verdict-references tr[data-reference]')).map(function (r) {
            return r.innerText; }),
        clean: (v.querySelector('.verdict-clean') || {}).innerText,
        warning_background: firstWarning ? getComputedStyle(firstWarning).backgroundColor : null,
        text: v.innerText
    };
})())"""


@pytest.fixture(scope="module")
def loaded_report(tmp_path_factory):
    binary = chromium_binary()
    tmp = tmp_path_factory.mktemp("browser")
    # Planted in predictions, question, reference, focus, and a qtype (which plotly draws as axis labels); also in a
    # reference row's description and training item, the adapter's format source (so in the verdict's sentences)
    # and a flagged item's training id.
    qtype = 'treatment <img src=x onerror="window.__xss = 5">'
    report = render_report([make_run(tmp / "run", payload=XSS, qtypes=("symptoms", qtype),
                                     baseline_formats=("chat", "reference"))])
    browser = DevTools(binary, tmp / "profile", tmp / "chromium.log")
    try:
        session = browser.open_report(report, 1360, 900)
        state = browser.evaluate(
            session,
            """JSON.stringify({
            expected: Number(document.body.getAttribute('data-expected-figures')),
            rendered: document.querySelectorAll('.js-plotly-plot').length,
            svgs: document.querySelectorAll('.js-plotly-plot .main-svg').length,
            placeholders: document.querySelectorAll('.plotly-figure').length,
            title: document.title,
            xss: typeof window.__xss,
            items: document.querySelectorAll('#ex-list .item').length,
            explorer_text: document.getElementById('ex-list').innerText,
            planted_elements: document.querySelectorAll(
                'img, #ex-list script, #ex-list svg, #verdict svg, #verdict script, #leakage table svg').length,
            scripts: document.querySelectorAll('script').length,
            leakage_text: document.getElementById('leakage').innerText,
            heatmap_labels: Array.from(document.querySelectorAll('#fig-qtype .ytick text'))
                .map(function (t) { return t.textContent; }),
            legend: Array.from(document.querySelectorAll('#fig-metric-bars .legendtext'))
                .map(function (t) { return t.textContent; })})""",
        )
        verdict = browser.evaluate(session, VERDICT_STATE)
        # The explorer's search control filters the list, and so does the near-duplicate switch.
        searched = browser.evaluate(
            session,
            """(function () {
            var s = document.getElementById('ex-search'); s.value = 'q001';
            s.dispatchEvent(new Event('input')); return document.querySelectorAll('#ex-list .item').length; })()""",
        )
        browser.evaluate(
            session,
            "(function () { var s = document.getElementById('ex-search'); s.value = '';"
            " s.dispatchEvent(new Event('input')); })()",
        )
        near = browser.evaluate(
            session,
            """(function () {
            var c = document.getElementById('ex-neardup'); c.checked = true; c.dispatchEvent(new Event('change'));
            var r = {items: document.querySelectorAll('#ex-list .item').length,
                     badges: document.querySelectorAll('#ex-list .badge.neardup').length,
                     text: document.getElementById('ex-list').innerText};
            c.checked = false; c.dispatchEvent(new Event('change')); return JSON.stringify(r); })()""",
        )
        size = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        shot = browser.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            },
            session,
            timeout=120,
        )
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "report.png").write_bytes(base64.b64decode(shot["data"]))
        # The top of the page as it opens: the verdict must be on it.
        top = browser.send("Page.captureScreenshot", {"format": "png"}, session, timeout=60)
        (ARTIFACTS / "report-top.png").write_bytes(base64.b64decode(top["data"]))
        yield {**json.loads(state), "verdict": json.loads(verdict), "searched": searched, "near": json.loads(near),
               "errors": js_errors(browser.events)}
    finally:
        browser.close()


def test_no_javascript_errors(loaded_report):
    assert loaded_report["errors"] == []


def test_every_chart_is_drawn(loaded_report):
    # metrics, leakage histogram, 6 confusion views, 4 length views, 2 training curves
    assert loaded_report["expected"] == 14
    assert loaded_report["placeholders"] == loaded_report["expected"]
    assert loaded_report["rendered"] == loaded_report["expected"]
    assert loaded_report["svgs"] >= loaded_report["expected"]


def test_reference_rows_are_a_distinct_legend_entry(loaded_report):
    legend = loaded_report["legend"]
    assert {"retrieval (reference)", "boilerplate (reference)", "question (reference)"} <= set(legend)
    assert {"baseline-chat", "baseline-reference", "qlora-medquad"} <= set(legend)


def test_verdict_opens_the_page(loaded_report):
    v = loaded_report["verdict"]
    assert v["first_section"] == "verdict" and v["visible"]
    assert v["top"] < 900  # in the first screen, above the summary table
    assert v["top"] < v["summary_top"]
    assert v["adapter"] == "qlora-medquad"
    assert v["headline"].startswith("qlora-medquad improves on ")


def test_verdict_lists_improvements_regressions_and_warnings_as_text(loaded_report):
    v = loaded_report["verdict"]
    assert v["improves"], "the fixture's adapter improves on some metric"
    for row in v["improves"]:
        assert "improves" in row["text"] and ("baseline-chat" in row["text"] or "baseline-reference" in row["text"])
    assert [r["metric"] for r in v["regresses"]] == ["rougeL"]
    assert "regresses" in v["regresses"][0]["text"] and "baseline-chat" in v["regresses"][0]["text"]
    assert "regresses on rougeL" in v["headline"]
    assert "does not beat the reference rows retrieval (rougeL)" in v["headline"]
    assert {r["metric"] for r in v["improves"] + v["regresses"] + v["no_difference"]} == {
        "embedding_similarity", "fuzzy", "rougeL", "perplexity"}
    assert any("perplexity" == r["metric"] and "baseline-reference" in r["text"]
               for r in v["improves"] + v["regresses"] + v["no_difference"])
    assert len(v["references"]) == 3
    assert any(r.startswith("retrieval") and "✗ worse than it" in r for r in v["references"])
    assert any(r.startswith("boilerplate") and "✗ not significantly better" in r for r in v["references"])
    assert v["adapter_warnings"] and all(w.strip() for w in v["adapter_warnings"])
    assert any("prompt format" in c for c in v["conditions"]) and any("quantization" in c for c in v["conditions"])
    codes = {w["code"] for w in v["run_warnings"]}
    assert {"budget", "leakage", "thresholds", "boilerplate_row"} <= codes
    assert any("references are longer than the 64-token budget" in w["text"] for w in v["run_warnings"])
    assert "verdict holds on the 28 items without near-duplicates" in v["clean"]
    assert v["warning_background"] not in (None, "rgba(0, 0, 0, 0)", "transparent")  # styled as a warning


def test_planted_scripts_do_not_run_and_show_as_text(loaded_report):
    assert loaded_report["xss"] == "undefined"
    assert "XSS" not in loaded_report["title"]
    assert loaded_report["planted_elements"] == 0
    assert "<script>window.__xss = 1;" in loaded_report["explorer_text"]
    assert "<img src=x onerror=" in loaded_report["explorer_text"]
    assert "<script>window.__xss = 1;" in loaded_report["verdict"]["text"]  # the adapter's format source
    assert "t0002 <script>window.__xss = 1;" in loaded_report["leakage_text"]  # a flagged item's training id
    assert loaded_report["scripts"] == loaded_report["expected"] + 3  # plotly, figure data, items, page code
    assert 'treatment <img src=x onerror="window.__xss = 5">' in loaded_report["heatmap_labels"]


def test_item_explorer_lists_searches_and_shows_sources(loaded_report):
    assert loaded_report["items"] == 25  # first page
    assert loaded_report["searched"] == 1
    near = loaded_report["near"]
    assert near["items"] == 2 and near["badges"] == 2
    assert "answer of training item" in near["text"] and "the question itself" in near["text"]
    assert "chat format" in near["text"] and "nearest training item: reference" in near["text"]
    assert "hit max_new_tokens" in near["text"] or "stopped: " in near["text"]  # each model row's stop reason


def test_screenshot_saved(loaded_report):
    png = (ARTIFACTS / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    assert (ARTIFACTS / "report-top.png").read_bytes()[:4] == b"\x89PNG"


COMBINED_EXAMPLE = Path(__file__).resolve().parents[1] / "reports" / "combined-example" / "combined-report.png"


def test_combined_report_of_three_runs_fits_a_laptop_screen(tmp_path):
    """A 3-run combined report at 1,400 px: no sideways scroll, neither of the page nor of any table in its own box
    (every <details> opened), every chart drawn, no JavaScript error. The page's opening goes to
    test-artifacts/combined-report.png (the README shows a copy of it, committed as
    reports/combined-example/combined-report.png), the whole page to test-artifacts/combined-report-full.png."""
    common = dict(n=16, seed=4, analysed=False, adapters=("qlora", "dora"), primary="fuzzy")
    folders = [make_run(tmp_path / name, adapter_seed=k, max_new_tokens=budget, **common)
               for k, (name, budget) in enumerate((("smollm2-r16", 64), ("smollm2-r32", 64), ("smollm2-short", 24)))]
    report = render_report(folders, tmp_path / "combined.html", labels=["r16", "r32", "short"])
    browser = DevTools(chromium_binary(), tmp_path / "profile", tmp_path / "chromium.log")
    try:
        session = browser.open_report(report, 1400, 900)
        # the page's opening (header, runs, the adapter × run matrix) for the README, before any <details> opens
        opening = browser.evaluate(session, "document.querySelector('table.run-matrix').closest('.scroll')"
                                            ".nextElementSibling.getBoundingClientRect().bottom + window.scrollY + 16")
        size = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        ARTIFACTS.mkdir(exist_ok=True)
        for name, height in (("combined-report.png", opening), ("combined-report-full.png", size["height"])):
            shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {
                "x": 0, "y": 0, "width": size["width"], "height": height, "scale": 1}}, session, timeout=120)
            (ARTIFACTS / name).write_bytes(base64.b64decode(shot["data"]))
        state = json.loads(browser.evaluate(session, """JSON.stringify((function () {
            document.querySelectorAll('details').forEach(function (d) { d.open = true; });
            var boxes = Array.from(document.querySelectorAll('.scroll'));
            return {
            scroll_width: document.documentElement.scrollWidth, body_width: document.body.scrollWidth,
            n_boxes: boxes.length,
            wide_boxes: boxes.filter(function (b) { return b.scrollWidth > b.clientWidth; }).map(function (b) {
                var t = b.querySelector('table');
                return (t ? t.className : '?') + (b.getAttribute('data-run') ? ' of run ' + b.getAttribute('data-run')
                    : '') + ': ' + b.scrollWidth + ' > ' + b.clientWidth; }),
            expected: Number(document.body.getAttribute('data-expected-figures')),
            rendered: document.querySelectorAll('.js-plotly-plot').length,
            matrix: Array.from(document.querySelectorAll('table.run-matrix tbody tr')).map(function (r) {
                return r.getAttribute('data-adapter'); }),
            columns: document.querySelectorAll('table.run-matrix thead th[data-run]').length,
            summary: Array.from(document.querySelectorAll('#summary .summary-table')).map(function (b) {
                return [b.getAttribute('data-run'), b.querySelectorAll('thead th.sys').length]; }),
            runs: Array.from(document.querySelectorAll('section.run-detail')).map(function (s) {
                return s.getAttribute('data-run'); })}; })())"""))
        errors = js_errors(browser.events)
    finally:
        browser.close()
    assert errors == []
    assert state["scroll_width"] <= 1400 and state["body_width"] <= 1400, state
    assert state["n_boxes"] > 10 and state["wide_boxes"] == [], state["wide_boxes"]
    assert state["rendered"] == state["expected"] > 0
    assert state["matrix"] == ["qlora", "dora"] and state["columns"] == 3
    assert state["runs"] == ["r16", "r32", "short"]
    # the rows every run shares (the three reference rows), then each run's: r16 and r32 share their baseline (in
    # both tables), short's budget gave it a baseline of its own
    assert state["summary"] == [[None, 3], ["r16", 3], ["r32", 3], ["short", 3]]
    assert all((ARTIFACTS / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
               for n in ("combined-report.png", "combined-report-full.png"))


def test_the_readmes_combined_report_image_is_committed_and_small():
    """The README shows reports/combined-example/combined-report.png: a copy of the browser test's page opening,
    committed (test-artifacts/ is not), 1,400 px wide and a few hundred KB at most."""
    png = COMBINED_EXAMPLE.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and 20_000 < len(png) < 400_000
    assert int.from_bytes(png[16:20], "big") == 1400  # IHDR width
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "](reports/combined-example/combined-report.png)" in readme
