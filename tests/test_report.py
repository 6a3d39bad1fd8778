"""The HTML report: rendering, escaping of every data string, combined runs, refusals."""

from __future__ import annotations

import json
import re

import pytest
from conftest_report import XSS, XSS_PAYLOADS, make_records, make_run

from medqa_bench import atomic
from medqa_bench.analysis import analyze
from medqa_bench.errors import RunError, SpecError
from medqa_bench.report import render_report
from medqa_bench.report.page import script_json
from medqa_bench.report.runs import combine_runs, load_run

PLANTED = ("<script>window.__xss", "<img src=x", "<svg onload", "</script><script>")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("r") / "run", payload=XSS)


@pytest.fixture(scope="module")
def html(run):
    return render_report([run]).read_text(encoding="utf-8")


def test_single_run_writes_report_in_the_run_folder(run, html):
    assert (run / "report.html").is_file()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert html.startswith("<!DOCTYPE html>")
    assert html.count("* plotly.js v") == 1  # inlined once
    assert not re.search(r"<script[^>]+src=", html)  # nothing fetched: plotly.js is inline


def test_report_sections_and_tables(html):
    for anchor in ("summary", "statistics", "metrics", "confusion", "lengths", "training", "items", "provenance"):
        assert f'id="{anchor}"' in html
    for fig in (
        "metric-bars",
        "own-vs-other",
        "roc",
        "threshold-sweep",
        "graded",
        "transitions",
        "qtype",
        "lengths-wrong",
        "lengths-partial",
        "length-diff",
        "truncation",
        "training-loss",
        "learning-curve",
    ):
        assert f'id="fig-{fig}"' in html
    assert 'data-expected-figures="13"' in html
    assert "Fine-tuned" in html and "% change" in html and "Perplexity" in html
    assert "sha256:" + "a" * 64 in html  # model fingerprint in provenance
    assert "rougeL|stemmer=on|rouge-score=0.1.2" in html


def test_every_data_string_is_escaped(tmp_path):
    results, samples = make_records(
        n=12,
        payload=XSS,
        adapters=("ft<b>" + XSS_PAYLOADS[1],),
        qtypes=("symptoms", XSS_PAYLOADS[0]),
        run_name="run " + XSS_PAYLOADS[2],
    )
    results["environment"]["hardware"]["gpu"] = XSS_PAYLOADS[3]
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
    nonce = re.search(r"'nonce-([0-9a-f]+)'", html).group(1)
    assert all(
        f'nonce="{nonce}"' in tag for tag in re.findall(r"<script\b[^>]*>", html) if "application/json" not in tag
    )


def test_script_json_cannot_close_its_element():
    value = {"p": "</script><script>alert(1)</script> & <!-- \u2028"}
    text = script_json(value)
    assert not set("<>&") & set(text) and "\u2028" not in text
    assert json.loads(text) == value


def test_plotly_cdn_mode_and_bad_mode(run, tmp_path):
    out = render_report([run], tmp_path / "cdn.html", plotly="cdn")
    text = out.read_text()
    assert re.search(r'<script nonce="[0-9a-f]+" src="https://cdn\.plot\.ly/plotly-[\d.]+\.min\.js"', text)
    assert "* plotly.js v" not in text
    with pytest.raises(SpecError, match="inline, cdn"):
        render_report([run], tmp_path / "x.html", plotly="local")


def test_out_folder_and_stored_analysis_is_used(tmp_path):
    results, samples = make_records(n=10)
    results["analysis"] = analyze(results, samples, thresholds={"t": 0.9}, n_bootstrap=200)
    folder = tmp_path / "run"
    atomic.write_json(folder / "results.json", results)
    atomic.write_jsonl(folder / "samples.jsonl", samples)
    (tmp_path / "out").mkdir()
    out = render_report([folder], tmp_path / "out")
    assert out == tmp_path / "out" / "report.html"
    text = out.read_text()
    assert "t = 0.9," in text and "200 resamples" in text and "computed while rendering" not in text


def test_baseline_only_run_without_bounded_metrics(tmp_path):
    results, samples = make_records(n=8, adapters=())
    results["metrics"] = {"perplexity": results["metrics"]["perplexity"]}
    folder = tmp_path / "run"
    atomic.write_json(folder / "results.json", results)
    atomic.write_jsonl(folder / "samples.jsonl", samples)
    text = render_report([folder]).read_text()
    assert "No metric with bounds [0, 1]" in text and "No adapter in this run" in text
    assert 'id="fig-own-vs-other"' not in text


# ------------------------------------------------------------------------------------------ several runs


def test_combined_runs_compare_each_adapter_with_its_own_baseline(tmp_path):
    r1 = make_run(tmp_path / "a", run_name="smollm2", seed=1, adapters=("qlora",))
    r2 = make_run(tmp_path / "b", run_name="qwen", seed=2, adapters=("qlora", "dora"))
    names = ["smollm2", "qwen"]
    results, samples = combine_runs(names, [load_run(r1), load_run(r2)])
    assert list(results["systems"]) == ["smollm2/baseline", "smollm2/qlora", "qwen/baseline", "qwen/qlora", "qwen/dora"]
    assert set(samples[0]["systems"]) == set(results["systems"])
    a = analyze(results, samples, n_bootstrap=200)
    assert a["baselines"] == {
        "smollm2/qlora": "smollm2/baseline",
        "qwen/qlora": "qwen/baseline",
        "qwen/dora": "qwen/baseline",
    }
    assert a["paired"]["qwen/dora"]["baseline"] == "qwen/baseline"

    out = render_report([r1, r2])
    assert out == r1 / "combined-report.html"
    text = out.read_text()
    assert "smollm2 + qwen" in text and "qwen/dora" in text and text.count("<summary>Run spec</summary>") == 2


def test_runs_over_different_items_are_refused(tmp_path):
    r1 = make_run(tmp_path / "a", n=30)
    r2 = make_run(tmp_path / "b", n=28, id_prefix="q")
    with pytest.raises(RunError, match=r"\(30 items\).*\(28 items\) cover different items: 2 only in"):
        render_report([r1, r2], tmp_path / "c.html")
    assert not (tmp_path / "c.html").exists()


def test_duplicate_run_names_are_made_unique(tmp_path):
    r1 = make_run(tmp_path / "a", run_name="same")
    r2 = make_run(tmp_path / "b", run_name="same", seed=5)
    text = render_report([r1, r2], tmp_path / "c.html").read_text()
    assert "same-2/qlora-medquad" in text


# ------------------------------------------------------------------------------------------ refusals


def test_missing_and_damaged_run_folders(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        render_report([tmp_path / "nope"])
    with pytest.raises(RunError, match="no run folder"):
        render_report([])
    folder = make_run(tmp_path / "run", n=5)
    (folder / "samples.jsonl").unlink()
    with pytest.raises(RunError, match="samples.jsonl is missing"):
        render_report([folder])
    folder = make_run(tmp_path / "run2", n=5)
    (folder / "results.json").write_text("{not json")
    with pytest.raises(RunError, match="not valid JSON"):
        render_report([folder])
    folder = make_run(tmp_path / "run3", n=5)
    with open(folder / "samples.jsonl", "a") as fh:
        fh.write("{broken\n")
    with pytest.raises(RunError, match=r"samples.jsonl: line 6 is not valid JSON .*damaged"):
        render_report([folder])


def test_schema_version_mismatch_is_refused(tmp_path):
    folder = make_run(tmp_path / "run", n=5)
    data = json.loads((folder / "results.json").read_text())
    data["schema_version"] = "0.9"
    (folder / "results.json").write_text(json.dumps(data))
    with pytest.raises(RunError, match="schema_version '0.9'"):
        render_report([folder])


def test_run_readers_share_one_schema_policy(tmp_path):
    """`medqa-bench score` (runner.read_run) and the report read run folders alike: a newer minor version (fields
    only added) is read, another major version is refused by both."""
    from medqa_bench.runner import read_run

    folder = make_run(tmp_path / "run", n=5)
    data = json.loads((folder / "results.json").read_text())
    data["schema_version"] = "1.7"
    (folder / "results.json").write_text(json.dumps(data))
    assert len(read_run(folder)[1]) == 5
    assert len(load_run(folder)[1]) == 5
    data["schema_version"] = "2.0"
    (folder / "results.json").write_text(json.dumps(data))
    for reader in (read_run, load_run):
        with pytest.raises(RunError, match="schema_version '2.0'"):
            reader(folder)
