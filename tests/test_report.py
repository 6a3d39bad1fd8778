"""The HTML report: rendering, the verdict and the sections of schema 2.x, escaping of every data string, combined
runs, refusals."""

from __future__ import annotations

import html as htmllib
import json
import re

import pytest
from conftest_report import XSS, XSS_PAYLOADS, make_records, make_run

from medqa_bench.storage import atomic
from medqa_bench.analysis import analyze
from medqa_bench.errors import RunError, SpecError
from medqa_bench.report import render_report
from medqa_bench.report.page import script_json
from medqa_bench.report.runs import combine_runs, load_run
from medqa_bench.schema import SCHEMA_VERSION

PLANTED = ("<script>window.__xss", "<img src=x", "<svg onload", "</script><script>")
ADAPTER = "qlora-medquad"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("r") / "run", payload=XSS, baseline_formats=("chat", "reference"))


@pytest.fixture(scope="module")
def html(run):
    return render_report([run]).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def results(run):
    return json.loads((run / "results.json").read_text())


def section(html: str, anchor: str) -> str:
    """The HTML of one top-level section."""
    start = html.index(f'<section id="{anchor}"')
    return html[start : html.index("</section>", start)]


def text(fragment: str) -> str:
    """Tags dropped, entities decoded, whitespace collapsed: what a reader sees."""
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def test_single_run_writes_report_in_the_run_folder(run, html):
    assert (run / "report.html").is_file()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert html.startswith("<!DOCTYPE html>")
    assert html.count("* plotly.js v") == 1  # inlined once
    assert not re.search(r"<script[^>]+src=", html)  # nothing fetched: plotly.js is inline


def test_report_sections_and_figures(html):
    anchors = ("verdict", "summary", "statistics", "degeneration", "leakage", "metrics", "confusion", "lengths",
               "training", "items", "provenance")
    positions = [html.index(f'<section id="{a}"') for a in anchors]
    assert positions == sorted(positions)  # the verdict opens the page, before the summary table
    assert html.index('<section id="verdict"') < html.index('<table class="headline">')
    for fig in (
        "metric-bars", "leakage-histogram", "own-vs-other", "roc", "threshold-sweep", "graded", "transitions",
        "qtype", "lengths-wrong", "lengths-partial", "length-diff", "truncation", "training-loss", "learning-curve",
    ):
        assert f'id="fig-{fig}"' in html
    assert 'data-expected-figures="14"' in html
    assert 'id="fig-leakage-histogram"' in section(html, "leakage")
    assert "Fine-tuned" in html and "% change" in html and "Perplexity" in html
    assert "sha256:" + "a" * 64 in html  # model fingerprint in provenance
    assert "rougeL|stemmer=on|rouge-score=0.1.2" in html


def test_verdict_lists_improvements_regressions_references_warnings_and_conditions(html, results):
    v = section(html, "verdict")
    verdict = results["verdict"]["adapters"][ADAPTER]
    assert f'data-adapter="{ADAPTER}"' in v
    improves = [r["metric"] for r in verdict["improves"]]
    assert improves  # the fixture's adapter is better than the chat baseline
    for r in verdict["improves"]:
        opening = f'<tr class="verdict-row improves" data-outcome="improves" data-metric="{r["metric"]}">'
        row = re.search(re.escape(opening) + "(.*?)</tr>", v, re.S)
        assert row, r["metric"]
        assert r["against"] in row.group(1)  # against which baseline row
        assert "improves" in text(row.group(1))
    assert [r["metric"] for r in verdict["regresses"]] == ["rougeL"]
    assert re.search(r'<tr class="verdict-row regresses" data-outcome="regresses" data-metric="rougeL">', v)
    assert re.search(r'<tr data-reference="retrieval">.*?<td class="does-not-beat" data-metric="rougeL">', v, re.S)
    # perplexity is judged against the baseline row with the lower perplexity, not the first one
    assert results["analysis"]["strongest_baseline"][ADAPTER]["perplexity"] == "baseline-reference"
    ppl = re.search(r'data-metric="perplexity">(.*?)</tr>', v, re.S).group(1)
    assert "baseline-reference" in ppl
    for ref in results["analysis"]["reference_rows"]:
        assert f'data-reference="{ref}"' in v
    for w in verdict["warnings"]:
        assert f'<li class="warning" data-code="{w["code"]}">' in v
    for c in ("prompt_format", "stop_sequences", "quantization", "loss_definition"):
        assert f'<li class="condition" data-code="{c}">' in v
    assert 'class="verdict-clean holds" data-state="holds"' in v
    assert "the verdict holds on the 28 items without near-duplicates" in text(v)
    run_level = v[v.index('<ul class="run-warnings">'):]
    for code in ("budget", "leakage", "thresholds", "boilerplate_row", "empty"):
        assert f'data-code="{code}"' in run_level, code
    assert "12 of the evaluated split's 30 references are longer than the 64-token budget" in text(run_level)


def test_a_run_without_adapters_says_so(tmp_path):
    folder = make_run(tmp_path / "run", n=12, adapters=())
    v = section(render_report([folder]).read_text(), "verdict")
    assert 'data-adapters="0"' in v and "No adapter was evaluated in this run" in v
    assert "no adapter was evaluated" in v  # the verdict's own sentence


def test_reference_rows_are_marked_and_get_no_delta(html, results):
    s = section(html, "summary")
    for ref in ("retrieval", "boilerplate", "question"):
        head = re.search(rf'<th class="sys kind-reference" data-kind="reference" data-system="{ref}" title="([^"]*)"',
                         s)
        assert head, ref
        assert htmllib.unescape(head.group(1)).startswith(results["systems"][ref]["description"][:40])
    assert 'data-system="baseline-chat"' in s and "chat format" in s and "reference format" in s
    ref_cells = re.findall(r'<td class="kind-reference" data-kind="reference">(.*?)</td>', s, re.S)
    assert ref_cells and not any('class="delta' in c for c in ref_cells)
    base_cells = re.findall(r'<td class="kind-baseline[^"]*" data-kind="baseline">(.*?)</td>', s, re.S)
    assert base_cells and not any('class="delta' in c for c in base_cells)
    adapter_cells = re.findall(r'<td class="kind-adapter" data-kind="adapter">(.*?)</td>', s, re.S)
    assert len(adapter_cells) == 4 and all('class="delta' in c for c in adapter_cells)
    assert sum("vs baseline-chat" in c for c in adapter_cells) == 3 and "vs baseline-reference" in adapter_cells[-1]
    assert s.count("strongest baseline") >= 4  # the baseline row each delta is taken against is marked
    # metric notes: a reference row scoring as high as a model row, next to the metric
    from medqa_bench.analysis.verdict import metric_notes

    notes = metric_notes(results, results["analysis"])
    assert {n["code"] for n in notes} >= {"boilerplate_row"}
    for n in notes:
        assert f'class="metric-note warning" data-code="{n["code"]}"' in s


def test_charts_mark_reference_rows(html):
    bars = json.loads(
        htmllib.unescape(re.search(r'id="fig-metric-bars-data">(.*?)</script>', html, re.S).group(1))
    )
    names = {t["name"]: t for t in bars["data"] if t.get("showlegend")}
    assert {"retrieval (reference)", "boilerplate (reference)", "question (reference)"} <= set(names)
    assert names["retrieval (reference)"]["marker"]["pattern"]["shape"] == "/"
    assert names[ADAPTER]["marker"]["pattern"]["shape"] == ""


def test_loss_definitions_side_by_side(html):
    s = section(html, "summary")
    table = s[s.index('<table class="loss-definitions">'):]
    t = text(table[: table.index("</table>")])
    assert "this run's loss" in t and f"{ADAPTER}: training eval loss" in t
    assert "batch-mean" in t and "corpus" in t and "validation" in t and "bfloat16" in t and "1.4321" in t
    assert table.count('class="differs"') >= 5  # form, formula, EOS, truncation, quantization, dtype, split


def test_paired_tests_judged_first_then_every_comparison(html, results):
    s = section(html, "statistics")
    judged = s[s.index('<table class="paired judged">'):s.index("</table>")]
    assert judged.count("<tr") == 1 + 4  # header + one row per metric
    assert "vs" in judged and "baseline-reference" in judged
    details = s[s.index('<details class="all-comparisons">'):]
    n = sum(len(per) for per in results["analysis"]["comparisons"].values())
    assert n == 2 + 3 * 3  # the adapter vs both baseline rows; three model rows vs three reference rows
    assert details.count('<tbody class="comparison"') == n
    groups = re.findall(r'<tbody class="comparison" data-system="([^"]+)" data-against="([^"]+)">', details)
    assert groups[:2] == [(ADAPTER, "baseline-chat"), (ADAPTER, "baseline-reference")]


def test_degeneration_table_and_budget(html, results):
    s = section(html, "degeneration")
    stats = results["analysis"]["degeneration"]["stats"]
    for system in stats:
        assert f'data-system="{system}"' in s
    row = re.search(r'<tr class="kind-baseline" data-system="baseline-reference".*?</tr>', s, re.S).group(0)
    assert stats["baseline-reference"]["empty_share"] > 0.05
    assert row.count('class="breach"') >= 2  # empty answers, and the loop
    ref_rows = re.findall(r'<tr class="kind-reference".*?</tr>', s, re.S)
    assert len(ref_rows) == 3 and not any("breach" in r for r in ref_rows)
    assert "warning &gt; 25%" in s and "repeated 4-gram share" in s
    budget = text(s[s.index('<h3 id="budget">'):])
    assert "max_new_tokens = 64" in budget and "12 of 30" in budget and "automatic rule would have set 81" in budget


def test_leakage_section(html, results):
    s = section(html, "leakage")
    leak = results["analysis"]["leakage"]
    assert leak["n_near_duplicates"] == 2
    t = text(s)
    assert "2 of 30 items are near-duplicates" in t
    assert "2 by their reference, 1 by their question (1 of them by both)" in t
    assert leak["definition"][:60] in t
    for item in leak["items"]:
        assert f'<tr data-item="{item["id"]}">' in s
    assert "t0002 " + XSS_PAYLOADS[0].replace("<", "&lt;").replace(">", "&gt;")[:20] in s  # escaped training id
    clean = s[s.index('<table class="leakage-clean">'):]
    assert "28 of 30 items" in t and 'data-system="retrieval"' in clean


def test_thresholds_table_and_header(html):
    s = section(html, "confusion")
    table = s[s.index('<table class="thresholds">'):s.index("</table>")]
    assert 'data-metric="fuzzy" data-source="calibrated"' in table
    assert 'data-metric="rougeL" data-source="default"' in table
    assert "only 2 distinct value(s)" in table and "t_low, t, t_high = 90th, 95th, 99th percentiles" in s
    header = re.search(r'<span id="threshold-line">(.*?)</span>', html, re.S).group(1)
    assert "embedding_similarity" in header and "fallback defaults: only 6 null pair(s)" in header


def test_explorer_data_carries_formats_stop_reasons_sources_and_overlap(html):
    data = json.loads(re.search(r'id="explorer-data">(.*?)</script>', html, re.S).group(1))
    kinds = {s["name"]: (s["kind"], s["format"]) for s in data["systems"]}
    assert kinds["baseline-chat"] == ("baseline", "chat") and kinds["retrieval"] == ("reference", "")
    assert data["pairs"][0]["a"] == ADAPTER and "strongest baseline" in data["pairs"][0]["label"]
    item = data["items"][0]
    assert set(item["prompts"]) == {"chat", "reference"}
    assert item["systems"]["baseline-chat"]["stop_reason"] in ("eos", "stop", "length")
    assert item["systems"]["retrieval"]["source"]["train_id"].startswith("t0001 ")
    assert sum(1 for it in data["items"] if it["overlap"]["near_duplicate"]) == 2


def test_every_data_string_is_escaped(tmp_path):
    results, samples = make_records(
        n=12,
        payload=XSS,
        adapters=("ft<b>" + XSS_PAYLOADS[1],),
        qtypes=("symptoms", XSS_PAYLOADS[0]),
        run_name="run " + XSS_PAYLOADS[2],
        baseline_formats=("chat", "reference"),
    )
    results["environment"]["hardware"]["gpu"] = XSS_PAYLOADS[3]
    # strings the producers write: threshold reasons, verdict sentences, the budget rule, the audit's definition
    results["analysis"]["match_thresholds"]["rougeL"]["reason"] = XSS_PAYLOADS[1]
    results["analysis"]["leakage"]["definition"] = XSS_PAYLOADS[3]
    results["verdict"]["warnings"].append({"code": XSS_PAYLOADS[0], "message": XSS_PAYLOADS[2]})
    results["budget"]["rule"] = XSS_PAYLOADS[1]
    results["loss_definition"]["formula"] = XSS_PAYLOADS[0]
    folder = tmp_path / "run"
    atomic.write_json(folder / "results.json", results)
    atomic.write_jsonl(folder / "samples.jsonl", samples)
    html = render_report([folder]).read_text(encoding="utf-8")
    for planted in PLANTED:
        assert planted not in html, planted
    # Only the page's own script elements exist: plotly, one JSON block per figure, the items, the page code.
    n_figures = int(re.search(r'data-expected-figures="(\d+)"', html).group(1))
    assert len(re.findall(r"<script\b", html)) == n_figures + 3
    assert "&lt;script&gt;window.__xss" in html  # shown as text (run name in the title, escaped)
    v = section(html, "verdict")
    assert "ft&lt;b&gt;&lt;img src=x" in v and "&lt;/script&gt;&lt;script&gt;window.__xss = 3" in v
    nonce = re.search(r"'nonce-([0-9a-f]+)'", html).group(1)
    assert all(
        f'nonce="{nonce}"' in tag for tag in re.findall(r"<script\b[^>]*>", html) if "application/json" not in tag
    )


def test_script_json_cannot_close_its_element():
    value = {"p": "</script><script>alert(1)</script> & <!-- \u2028"}
    text_ = script_json(value)
    assert not set("<>&") & set(text_) and "\u2028" not in text_
    assert json.loads(text_) == value


def test_plotly_cdn_mode_and_bad_mode(run, tmp_path):
    out = render_report([run], tmp_path / "cdn.html", plotly="cdn")
    page = out.read_text()
    assert re.search(r'<script nonce="[0-9a-f]+" src="https://cdn\.plot\.ly/plotly-[\d.]+\.min\.js"', page)
    assert "* plotly.js v" not in page
    with pytest.raises(SpecError, match="inline, cdn"):
        render_report([run], tmp_path / "x.html", plotly="local")


def test_out_folder_and_stored_analysis_is_used(tmp_path):
    results, samples = make_records(n=10, analysed=False)
    results["analysis"] = analyze(results, samples, thresholds={"t": 0.9}, n_bootstrap=200)
    folder = tmp_path / "run"
    atomic.write_json(folder / "results.json", results)
    atomic.write_jsonl(folder / "samples.jsonl", samples)
    (tmp_path / "out").mkdir()
    out = render_report([folder], tmp_path / "out")
    assert out == tmp_path / "out" / "report.html"
    page = out.read_text()
    assert "t = 0.900," in page and "(given when analysing)" in page and "200 resamples" in page
    assert "computed while rendering" not in page
    assert 'data-adapter="qlora-medquad"' in page  # no stored verdict: built from the stored analysis


def test_an_older_analysis_is_recomputed_keeping_given_thresholds(tmp_path):
    results, samples = make_records(n=12)
    results["analysis"]["version"] = 1
    results["analysis"]["match_thresholds"]["fuzzy"]["source"] = "argument"
    results["analysis"]["match_thresholds"]["fuzzy"]["t"] = 0.77
    folder = tmp_path / "run"
    atomic.write_json(folder / "results.json", results)
    atomic.write_jsonl(folder / "samples.jsonl", samples)
    page = render_report([folder]).read_text()
    assert "computed while rendering" in page
    table = section(page, "confusion")
    assert re.search(r'data-metric="fuzzy" data-source="argument".*?<td>0\.770</td>', table, re.S)
    assert 'data-metric="rougeL" data-source="default"' in table  # not frozen into an "argument"


def test_baseline_only_run_without_bounded_metrics(tmp_path):
    results, samples = make_records(n=8, adapters=(), analysed=False)
    results["metrics"] = {"perplexity": results["metrics"]["perplexity"]}
    folder = tmp_path / "run"
    atomic.write_json(folder / "results.json", results)
    atomic.write_jsonl(folder / "samples.jsonl", samples)
    page = render_report([folder]).read_text()
    assert "No metric with bounds [0, 1]" in page and "No adapter was evaluated in this run" in page
    assert "No adapter in this run: nothing to judge" in page
    assert 'id="fig-own-vs-other"' not in page


# ------------------------------------------------------------------------------------------ several runs


def test_combined_runs_compare_each_adapter_within_its_own_run(tmp_path):
    r1 = make_run(tmp_path / "a", n=16, run_name="smollm2", seed=1, adapters=("qlora",), analysed=False)
    r2 = make_run(tmp_path / "b", n=16, run_name="qwen", seed=2, adapters=("qlora", "dora"),
                  baseline_formats=("chat", "reference"), analysed=False)
    names = ["smollm2", "qwen"]
    results, samples = combine_runs(names, [load_run(r1), load_run(r2)])
    refs = ("retrieval", "boilerplate", "question")
    assert list(results["systems"]) == [
        "smollm2/baseline", "smollm2/qlora", *(f"smollm2/{r}" for r in refs),
        "qwen/baseline-chat", "qwen/baseline-reference", "qwen/qlora", "qwen/dora", *(f"qwen/{r}" for r in refs),
    ]
    assert not any("compared_with" in info for info in results["systems"].values())
    assert {info["run"] for info in results["systems"].values()} == set(names)
    assert set(samples[0]["systems"]) == set(results["systems"])
    assert set(samples[0]["prompts"]) == {"smollm2/chat", "smollm2/reference", "qwen/chat", "qwen/reference"}
    # the runs' budgets cut different shares of their references: no one budget speaks for both, each run keeps its own
    assert "budget" not in results and results["loss_definition"]["form"] == "corpus"
    assert [results["runs"][n]["budget"]["max_new_tokens"] for n in names] == [64, 64]
    a = analyze(results, samples, n_bootstrap=200)
    assert a["baselines"] == {"smollm2/qlora": "smollm2/baseline", "qwen/qlora": "qwen/baseline-chat",
                              "qwen/dora": "qwen/baseline-chat"}
    assert a["baseline_rows"]["qwen/dora"] == ["qwen/baseline-chat", "qwen/baseline-reference"]
    assert set(a["comparisons"]["smollm2/qlora"]) == {"smollm2/baseline", *(f"smollm2/{r}" for r in refs)}
    assert set(a["comparisons"]["qwen/baseline-chat"]) == {f"qwen/{r}" for r in refs}
    assert a["paired"]["qwen/dora"]["baseline"] == "qwen/baseline-chat"

    out = render_report([r1, r2], labels=names)
    assert out == r1 / "combined-report.html"
    page = out.read_text()
    assert "smollm2 + qwen" in page and "qwen/dora" in page and page.count("<summary>Run spec</summary>") == 2
    v = section(page, "verdict")
    for adapter in ("smollm2/qlora", "qwen/qlora", "qwen/dora"):
        assert f'data-adapter="{adapter}"' in v


def test_runs_over_different_items_are_refused(tmp_path):
    r1 = make_run(tmp_path / "a", n=30, analysed=False)
    r2 = make_run(tmp_path / "b", n=28, id_prefix="q", analysed=False)
    with pytest.raises(RunError, match=r"\(30 items\).*\(28 items\) cover different items: 2 only in"):
        render_report([r1, r2], tmp_path / "c.html")
    assert not (tmp_path / "c.html").exists()


def test_duplicate_run_names_are_made_unique(tmp_path):
    # runs are labelled by folder name, not run_name; two folders of one name in different places stay apart
    r1 = make_run(tmp_path / "a" / "same", n=12, run_name="same", analysed=False)
    r2 = make_run(tmp_path / "b" / "same", n=12, run_name="same", seed=5, analysed=False)
    page = render_report([r1, r2], tmp_path / "c.html").read_text()
    assert "same-2/qlora-medquad" in page and "same/qlora-medquad" in page


# ------------------------------------------------------------------------------------------ refusals


def test_missing_and_damaged_run_folders(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        render_report([tmp_path / "nope"])
    with pytest.raises(RunError, match="no run folder"):
        render_report([])
    folder = make_run(tmp_path / "run", n=5, analysed=False)
    (folder / "samples.jsonl").unlink()
    with pytest.raises(RunError, match="samples.jsonl is missing"):
        render_report([folder])
    folder = make_run(tmp_path / "run2", n=5, analysed=False)
    (folder / "results.json").write_text("{not json")
    with pytest.raises(RunError, match="not valid JSON"):
        render_report([folder])
    folder = make_run(tmp_path / "run3", n=5, analysed=False)
    with open(folder / "samples.jsonl", "a") as fh:
        fh.write("{broken\n")
    with pytest.raises(RunError, match=r"samples.jsonl: line 6 is not valid JSON .*damaged"):
        render_report([folder])


def test_schema_version_mismatch_is_refused(tmp_path):
    folder = make_run(tmp_path / "run", n=5, analysed=False)
    data = json.loads((folder / "results.json").read_text())
    data["schema_version"] = "0.9"
    (folder / "results.json").write_text(json.dumps(data))
    with pytest.raises(RunError, match="schema_version '0.9'"):
        render_report([folder])


def test_schema_1_run_folders_are_refused_with_a_clear_message(tmp_path):
    folder = make_run(tmp_path / "run", n=5, analysed=False)
    data = json.loads((folder / "results.json").read_text())
    data["schema_version"] = "1.3"
    (folder / "results.json").write_text(json.dumps(data))
    with pytest.raises(RunError) as err:
        render_report([folder])
    message = str(err.value)
    assert f"schema_version '1.3', but this medqa-bench reads '{SCHEMA_VERSION}'" in message
    assert "schema 1.x run folders have one baseline and no reference rows" in message
    assert "re-run the evaluation with this version (`medqa-bench run`)" in message
    assert not (folder / "report.html").exists()


def test_run_readers_share_one_schema_policy(tmp_path):
    """`medqa-bench score` (runner.read_run) and the report read run folders alike: a newer minor version (fields
    only added) is read, another major version is refused by both."""
    from medqa_bench.runner import read_run

    folder = make_run(tmp_path / "run", n=5, analysed=False)
    data = json.loads((folder / "results.json").read_text())
    for version in ("2.0", "2.7"):  # an older minor version (the committed reports/ folders) and a newer one
        data["schema_version"] = version
        (folder / "results.json").write_text(json.dumps(data))
        assert len(read_run(folder)[1]) == 5
        assert len(load_run(folder)[1]) == 5
    for version in ("1.7", "3.0"):
        data["schema_version"] = version
        (folder / "results.json").write_text(json.dumps(data))
        for reader in (read_run, load_run):
            with pytest.raises(RunError, match=f"schema_version '{version}'"):
                reader(folder)
