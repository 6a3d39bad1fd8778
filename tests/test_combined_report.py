"""A combined report (issue 32, items 1 and 2): every statement of its verdict takes its facts from the run it names;
runs are labelled by folder or --label; rows several runs share are shown once; an adapter × run matrix of the primary
metric opens it. Hand-made run folders (tests/conftest_report.py), no model."""

from __future__ import annotations

import html as html_lib
import json
import re
import subprocess
import sys

import pytest
from conftest_report import make_records, make_run

from medqa_bench.analysis.verdict import build_verdict
from medqa_bench.errors import SpecError
from medqa_bench.report import render_report

METRICS = ("embedding_similarity", "fuzzy", "rougeL", "perplexity")


def _verdict_lines(page: str) -> list[str]:
    block = re.search(r'<details class="verdict-lines">(.*?)</details>', page, re.S).group(1)
    return [html_lib.unescape(re.sub(r"<[^>]+>", "", li)).strip() for li in re.findall(r"<li>(.*?)</li>", block, re.S)]


def _run_detail(page: str, run: str) -> str:
    start = page.index(f'<section class="run-detail" data-run="{run}">')
    return page[start:page.index("</section>", start)]


def _summary(page: str) -> list[tuple[str, list[str]]]:
    """The summary's tables: each one's title and the rows it shows, in order."""
    block = page[page.index('<section id="summary">'):page.index('<p class="legend">Value with 95% bootstrap CI')]
    titles = [html_lib.unescape(t) for t in re.findall(r'<h3 class="summary-title"[^>]*>(.*?)</h3>', block)]
    tables = [re.findall(r'<th class="sys[^"]*" data-kind="[^"]*" data-system="([^"]+)"', t)
              for t in re.findall(r'<table class="headline">(.*?)</thead>', block, re.S)]
    return list(zip(titles or [None] * len(tables), tables))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """``small``: a 32-token budget, no fuzzy, its rougeL thresholds set in its spec, 14 items, primary rougeL;
    ``big``: a 16-token budget, every metric, null scores on 4 items only, 5 more items scored by loss alone,
    primary fuzzy. The two runs share nothing (other seeds)."""
    root = tmp_path_factory.mktemp("combined")
    small = make_run(root / "smollm2-symptoms-test", n=14, seed=1, max_new_tokens=32, n_bootstrap=200,
                     metrics=("embedding_similarity", "rougeL", "perplexity"), primary="rougeL",
                     spec_thresholds={"rougeL": {"t": 0.25, "t_low": 0.2, "t_high": 0.4}})
    big = make_run(root / "smollm2-symptoms-test-2", n=14, seed=2, max_new_tokens=16, n_bootstrap=200,
                   null_items=4, nll_only=5, primary="fuzzy")
    page = render_report([small, big], root / "combined.html", labels=["small", "big"]).read_text(encoding="utf-8")
    runs = {label: json.loads((folder / "results.json").read_text()) for label, folder in
            (("small", small), ("big", big))}
    return {"page": page, "runs": runs, "folders": (small, big), "root": root}


def _facts(results: dict) -> dict:
    analysis = results["analysis"]
    return {"budget": results["budget"], "metrics": set(results["metrics"]), "n_items": analysis["n_items"],
            "n_nll_items": analysis["n_nll_items"],
            "pairs": {m: th["n_pairs"] for m, th in analysis["match_thresholds"].items()},
            "fallback": {m for m, th in analysis["match_thresholds"].items() if th["source"] == "default"},
            "primary": results["validity"]["primary"]["metric"]}


def _named_runs(line: str, labels: list[str]) -> set[str]:
    """The runs a sentence is about: "in run X:" / "in runs X and Y:" leading it, else the runs of the rows it names
    ("<label>/<row>")."""
    lead = re.match(r"(?:warning: )?in runs? (.+?): ", line)
    if lead:
        return set(re.split(r", | and ", lead.group(1)))
    return {x for x in labels if re.search(rf"(?<![\w-]){re.escape(x)}/", line)}


def _check_against(line: str, facts: dict) -> None:
    """Every fact a sentence states is the run's: its budget, its references, its null pairs, its items, its metrics,
    its primary metric."""
    b = facts["budget"]
    for n in re.findall(r"(\d+)-token budget", line):
        assert int(n) == b["max_new_tokens"], line
    for longer, total in re.findall(r"(\d+) of the evaluated split's (\d+) references", line):
        assert (int(longer), int(total)) == (b["references_longer"], b["n_references"]), line
    for n in re.findall(r"only (\d+) (?:generated )?items", line):
        assert int(n) == facts["n_items"], line
    for n in re.findall(r"perplexity was scored on (\d+) items", line):
        assert int(n) == facts["n_nll_items"], line
    few = re.search(r"too few null pairs for (.+?): calibration needs", line)
    if few:
        named = dict((m, int(n)) for m, n in re.findall(r"(\w+) \((\d+)\)", few.group(1)))
        assert named and all(facts["pairs"][m] == n for m, n in named.items()), line
    if "fallback defaults" in line:
        listed = re.search(r"the soft-match thresholds of (\d+) metric", line)
        assert int(listed.group(1)) == len(facts["fallback"]), line
    for m in METRICS:
        if re.search(rf"\b{m}\b", line):
            assert m in facts["metrics"], (m, line)
    primary = re.search(r"primary metric:? (\w+)", line)
    if primary:
        assert primary.group(1) == facts["primary"], line


def test_every_sentence_of_the_verdict_takes_its_facts_from_the_run_it_names(two_runs):
    page, runs = two_runs["page"], two_runs["runs"]
    facts = {label: _facts(r) for label, r in runs.items()}
    assert facts["small"]["budget"]["max_new_tokens"] == 32 and facts["big"]["budget"]["max_new_tokens"] == 16
    assert facts["big"]["pairs"]["fuzzy"] == 4 and "fuzzy" not in facts["small"]["metrics"]
    lines = _verdict_lines(page)
    assert len(lines) > 20
    for line in lines:
        named = _named_runs(line, list(runs))
        assert named, f"a sentence of a combined report names no run: {line}"
        for label in named:
            _check_against(line, facts[label])
    # the issue's wrong facts, now right: each run's budget, both runs' budget warnings, big's own null pairs
    text = "\n".join(lines)
    assert re.search(r"\d+% of big/qlora-medquad's answers hit the 16-token budget", text)
    assert re.search(r"\d+% of small/qlora-medquad's answers hit the 32-token budget", text)
    assert "in run small: 14 of the evaluated split's 14 references are longer than the 32-token budget" in text
    assert "in run big: 14 of the evaluated split's 14 references are longer than the 16-token budget" in text
    assert "too few null pairs for embedding_similarity (4), fuzzy (4), rougeL (4)" in text
    assert "in run small: primary metric: rougeL" in text and "in run big: primary metric: fuzzy" in text
    # big's perplexity was scored on its 5 loss-only items too: its small-sample warning counts each set
    assert "in run big: only 14 generated items: on the generation metrics the intervals are wide" in text
    assert "perplexity was scored on 19 items, also few" in text
    # each run's warnings sit in its own detail section
    assert "32-token budget" in _run_detail(page, "small") and "16-token budget" not in _run_detail(page, "small")
    assert "16-token budget" in _run_detail(page, "big") and "32-token budget" not in _run_detail(page, "big")


def test_each_run_keeps_its_thresholds_items_and_loss_items(two_runs):
    page = two_runs["page"]
    runs = re.search(r'<table class="runs">(.*?)</table>', page, re.S).group(1)
    small = re.search(r'<tr data-run="small">(.*?)</tr>', runs, re.S).group(1)
    big = re.search(r'<tr data-run="big">(.*?)</tr>', runs, re.S).group(1)
    assert "32 tokens (given); 14 of 14 references longer" in small and "loss on" not in small
    assert "16 tokens (given); 14 of 14 references longer" in big and "loss on 19" in big
    assert "smollm2-symptoms-test-2" in big and ">rougeL<" in small and ">fuzzy<" in big
    # two threshold tables, one per run: small's rougeL from its spec, big's fuzzy fell back on 4 null pairs
    conf = page[page.index('<h3 id="thresholds">'):]
    small_t = conf[conf.index('data-run="small"'):conf.index('data-run="big"')]
    big_t = conf[conf.index('data-run="big"'):conf.index("</table>", conf.index('data-run="big"'))]
    assert 'data-metric="rougeL" data-source="spec"' in small_t and 'data-metric="fuzzy"' not in small_t
    assert 'data-metric="fuzzy" data-source="default"' in big_t and "only 4 null pair(s)" in big_t


def test_the_matrix_shows_each_runs_primary_metric_as_its_verdict_judged_it(two_runs):
    page, runs = two_runs["page"], two_runs["runs"]
    matrix = re.search(r'<table class="run-matrix">(.*?)</table>', page, re.S).group(1)
    heads = re.findall(r'<th data-run="(\w+)">\w+<div class="sub">(\w+) \(primary metric\)', matrix)
    assert heads == [("small", "rougeL"), ("big", "fuzzy")]
    for label, results in runs.items():
        p = results["verdict"]["adapters"]["qlora-medquad"]["primary"]
        cell = re.search(rf'<td class="cell [^"]*" data-adapter="{label}/qlora-medquad"[^>]*>(.*?)</td>', matrix, re.S)
        text = html_lib.unescape(re.sub(r"<[^>]+>", " ", cell.group(1)))
        sign = "+" if p["diff"] > 0 else ""
        assert f"Δ {sign}{p['diff']:.3f}" in text and f"[{p['ci'][0]:.3f}, {p['ci'][1]:.3f}]" in text, text
        p_holm = "< 0.001" if p["p_holm"] < 0.001 else f"{p['p_holm']:.3f}"
        assert f"p (Holm) {p_holm}" in text and f"vs {label}/baseline" in text


def test_runs_are_labelled_by_folder_and_labels_are_checked(two_runs, capsys):
    from medqa_bench.cli import main

    small, big = two_runs["folders"]
    root = two_runs["root"]
    page = render_report([small, big], root / "by-folder.html").read_text(encoding="utf-8")
    # two runs of one generated run_name stay apart by their folders
    assert "smollm2-symptoms-test/qlora-medquad" in page and "smollm2-symptoms-test-2/qlora-medquad" in page
    with pytest.raises(SpecError, match=r"1 label\(s\) for 2 run folder\(s\)"):
        render_report([small, big], root / "x.html", labels=["one"])
    assert main(["report", str(small), str(big), "--label", "a", "--label", "b", "--out", str(root / "l.html")]) == 0
    assert "a/qlora-medquad" in (root / "l.html").read_text(encoding="utf-8")
    assert main(["report", str(small), str(big), "--label", "a", "--label", "a", "--out", str(root / "d.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["medqa-bench: error: label 'a' is given 2 times: each run needs a label of its own"]
    cli = subprocess.run([sys.executable, "-m", "medqa_bench.cli", "report", str(small), str(big), "--label", "x",
                          "--out", str(root / "m.html")], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and cli.stdout == ""
    assert cli.stderr.strip().splitlines() == ["medqa-bench: error: 1 label(s) for 2 run folder(s): give one --label "
                                               "per run folder, in the same order, or none"]
    assert not (root / "x.html").exists() and not (root / "d.html").exists() and not (root / "m.html").exists()


def test_a_row_several_runs_share_is_shown_once_and_each_runs_adapters_are_compared_with_it(tmp_path):
    common = dict(n=12, seed=7, n_bootstrap=200, adapters=("qlora",))
    folders = [make_run(tmp_path / "r16", adapter_seed=1, **common),
               make_run(tmp_path / "r32", adapter_seed=2, **common),
               make_run(tmp_path / "short", adapter_seed=3, max_new_tokens=24, **common)]
    page = render_report(folders, tmp_path / "c.html").read_text(encoding="utf-8")
    # the reference rows answer alike in every run; r16 and r32 share their baseline, short's budget gives it its own.
    # The summary is one table of what every run shares, then one per run (a row two runs share, in both)
    assert _summary(page) == [("Rows every run shares", ["retrieval", "boilerplate", "question"]),
                              ("Run r16", ["r16+r32/baseline", "r16/qlora"]),
                              ("Run r32", ["r16+r32/baseline", "r32/qlora"]),
                              ("Run short", ["short/baseline", "short/qlora"])]
    assert page.count('data-system="r16+r32/baseline"') >= 2
    # the adapters' training eval losses, one number defined alike: one column, not one per run
    assert re.findall(r'<th class="training">(.*?)</th>', page) == [
        "r16/qlora, r32/qlora, short/qlora: training eval loss"]
    lines = _verdict_lines(page)
    for run in ("r16", "r32"):
        assert any(line.startswith(f"condition: prompt format: {run}/qlora in 'reference' (training metadata), "
                                   "r16+r32/baseline in 'chat'") for line in lines)
        assert any(line.startswith(f"{run}/qlora does not significantly beat") and "retrieval" in line
                   for line in lines)
    assert any("short/baseline in 'chat'" in line for line in lines)
    # a statement about a shared row is made once, naming the runs it holds for
    shared = [line for line in lines if "of r16+r32/baseline's answers hit" in line]
    assert len(shared) == 1 and shared[0].startswith("warning: in runs r16 and r32: ")
    assert ("in run short: 12 of the evaluated split's 12 references are longer than the 24-token budget"
            in "\n".join(lines))


def test_the_fallback_thresholds_of_a_small_run_are_one_warning():
    results, _ = make_records(n=3, near_duplicates=0, n_bootstrap=200)
    warnings = [w for w in results["verdict"]["warnings"] if w["code"] == "thresholds"]
    assert len(warnings) == 1
    assert warnings[0]["metrics"] == ["embedding_similarity", "fuzzy", "rougeL"]
    assert warnings[0]["message"] == ("the soft-match thresholds of 3 metric(s) are fallback defaults (too few null "
                                      "pairs for embedding_similarity (3), fuzzy (3), rougeL (3): calibration needs "
                                      "at least 10)")
    lines = results["verdict"]["lines"]
    assert sum("fallback defaults" in line for line in lines) == 1
    assert sum("does not significantly beat" in line for line in lines) == 1  # three reference rows, one sentence
    assert len(lines) <= 14


def test_the_conditions_name_the_base_in_words():
    results, _ = make_records(n=12, n_bootstrap=200)
    results["systems"]["baseline"]["quantization"] = "none"
    results["systems"]["qlora-medquad"]["quantization"] = "4bit"
    lines = build_verdict(results)["lines"]
    assert ("condition: base weights: qlora-medquad runs on the 4-bit base it was trained on, baseline on the "
            "unquantized base (each at its best)") in lines
    results["systems"]["qlora-medquad"]["quantization"] = None  # evaluated on the run's base: the unquantized one
    lines = build_verdict(results)["lines"]
    assert any("was trained on a 4-bit base and is evaluated on the unquantized base" in line for line in lines)
    assert any("on a 4-bit base in bfloat16" in line for line in lines)
    assert not any(re.search(r"\b(none|4bit) base\b", line) for line in lines)


# ------------------------------------------------------------------------------------------ review of items 1-2


def _figure(page: str, fig_id: str) -> dict:
    return json.loads(html_lib.unescape(re.search(rf'id="fig-{fig_id}-data">(.*?)</script>', page, re.S).group(1)))


@pytest.fixture(scope="module")
def two_metrics(tmp_path_factory):
    """Run ``a`` asks for rougeL and sets its rougeL thresholds; run ``b`` asks for fuzzy and sets ``t`` without
    naming a metric (so for fuzzy, its own choice). Same items, same baseline and reference rows."""
    root = tmp_path_factory.mktemp("metrics")
    common = dict(n=16, seed=5, n_bootstrap=200, adapters=("qlora",))
    a = make_run(root / "a", adapter_seed=1, similarity_metric="rougeL",
                 spec_thresholds={"rougeL": {"t": 0.25, "t_low": 0.2, "t_high": 0.4}}, **common)
    b = make_run(root / "b", adapter_seed=2, similarity_metric="fuzzy", spec_thresholds={"t": 0.9}, **common)
    page = render_report([a, b], root / "c.html").read_text(encoding="utf-8")
    own = {label: json.loads((folder / "results.json").read_text())["analysis"] for label, folder in
           (("a", a), ("b", b))}
    return {"page": page, "own": own, "folders": (a, b)}


def test_each_metric_keeps_its_own_runs_thresholds_when_the_runs_ask_for_different_metrics(two_metrics):
    from medqa_bench.analysis.runs import analyze_runs
    from medqa_bench.report import _analysis_options
    from medqa_bench.report.runs import join_runs, load_run

    own = two_metrics["own"]
    assert (own["a"]["similarity_metric"], own["b"]["similarity_metric"]) == ("rougeL", "fuzzy")
    assert own["b"]["match_thresholds"]["fuzzy"]["t"] == 0.9 and own["b"]["match_thresholds"]["fuzzy"]["source"] == "spec"
    loaded = [load_run(f) for f in two_metrics["folders"]]
    joined = join_runs(["a", "b"], loaded)
    combined = analyze_runs(joined.parts, {n: _analysis_options(r) for n, (r, _) in zip("ab", loaded)})
    assert combined["similarity_metric"] == "rougeL"  # the first a run asked for, shared by both
    for label in ("a", "b"):
        got = combined["runs"][label]["match_thresholds"]
        for m, th in own[label]["match_thresholds"].items():  # every metric, as the run's own report has it
            assert {k: got[m][k] for k in ("t", "t_low", "t_high", "source")} == \
                   {k: th[k] for k in ("t", "t_low", "t_high", "source")}, (label, m)
    assert combined["runs"]["b"]["thresholds"]["source"] != "spec"  # b's rougeL: not b's fuzzy t = 0.9
    page = two_metrics["page"]
    conf = page[page.index('<h3 id="thresholds">'):]
    b_table = conf[conf.index('data-run="b"'):conf.index("</table>", conf.index('data-run="b"'))]
    assert re.search(r'data-metric="fuzzy" data-source="spec".*?<td>0\.900</td>', b_table, re.S)
    assert 'data-metric="rougeL" data-source="spec"' not in b_table


def test_the_combined_confusion_views_say_which_thresholds_graded_which_row(two_metrics):
    page, own = two_metrics["page"], two_metrics["own"]
    a_th = own["a"]["match_thresholds"]["rougeL"]
    b_th = own["b"]["match_thresholds"]["rougeL"]
    assert (a_th["t_low"], a_th["t_high"]) != (b_th["t_low"], b_th["t_high"])
    graded = {bar_label for trace in _figure(page, "graded")["data"] for bar_label in trace["y"]}
    assert f"a/qlora · {a_th['t_low']:.2f} / {a_th['t_high']:.2f}" in graded
    assert f"b/qlora · {b_th['t_low']:.2f} / {b_th['t_high']:.2f}" in graded
    # the rows both runs share were graded at run a's thresholds, and say that b's differ
    assert f"retrieval (reference) · {a_th['t_low']:.2f} / {a_th['t_high']:.2f}" in graded
    titles = [x["text"] for x in _figure(page, "own-vs-other")["layout"]["annotations"]]
    assert any(t.startswith("b/qlora<br><sub>t=") and "(run b's)" in t for t in titles), titles
    assert any(t.startswith("baseline<br><sub>t=") and "(run a's; b's differ)" in t for t in titles), titles
    transitions = " ".join(x["text"] for x in _figure(page, "transitions")["layout"]["annotations"])
    assert f"partial ≥ {b_th['t_low']:.2f}, correct ≥ {b_th['t_high']:.2f} (run b's)" in html_lib.unescape(transitions)
    assert "Each row is graded at its own run's thresholds" in html_lib.unescape(page)


def test_labels_cannot_name_another_runs_rows(tmp_path, capsys):
    from medqa_bench.cli import main
    from medqa_bench.report.runs import run_labels

    common = dict(n=10, seed=3, n_bootstrap=200, adapters=("qlora",), analysed=False)
    # a and b share their baseline ("a+b/baseline"); the third run, in a folder named a+b, has its own
    folders = [make_run(tmp_path / "a", adapter_seed=1, **common), make_run(tmp_path / "b", adapter_seed=2, **common),
               make_run(tmp_path / "a+b", adapter_seed=3, max_new_tokens=20, **common)]
    assert run_labels(folders) == ["a", "b", "a-b"]
    page = render_report(folders, tmp_path / "c.html").read_text(encoding="utf-8")
    assert 'data-adapter="a-b/qlora"' in page
    assert _summary(page)[1:] == [("Run a", ["a+b/baseline", "a/qlora"]), ("Run b", ["a+b/baseline", "b/qlora"]),
                                  ("Run a-b", ["a-b/baseline", "a-b/qlora"])]
    for bad in ("a+b", "x/y"):
        with pytest.raises(SpecError, match="a label is a non-empty name without '/' or '\\+'"):
            render_report(folders, tmp_path / "x.html", labels=["a", "b", bad])
    assert main(["report", *map(str, folders), "--label", "a", "--label", "b", "--label", "a+b",
                 "--out", str(tmp_path / "y.html")]) == 2
    assert capsys.readouterr().err.strip() == ("medqa-bench: error: label 'a+b' is not usable: a label is a non-empty "
                                               "name without '/' or '+' (they name the rows of a combined report)")


def test_rows_are_shared_only_over_the_same_references_and_the_header_gives_each_runs_bootstrap(tmp_path):
    common = dict(n=12, seed=9, adapters=("qlora",))
    a = make_run(tmp_path / "a", adapter_seed=1, n_bootstrap=200, **common)
    b = make_run(tmp_path / "b", adapter_seed=2, n_bootstrap=300, **common)
    c = make_run(tmp_path / "c", adapter_seed=3, n_bootstrap=200, **common)
    # run c was made with another answer column: the same outputs, other references on 4 items
    samples = [json.loads(line) for line in (c / "samples.jsonl").read_text().splitlines()]
    for s in samples[:4]:
        s["reference"] = "Another answer column's text."
        s["references"] = [s["reference"]]
    (c / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    page = render_report([a, b, c], tmp_path / "r.html").read_text(encoding="utf-8")
    shared = ["a+b/retrieval", "a+b/boilerplate", "a+b/question"]
    assert _summary(page) == [("Run a", ["a+b/baseline", "a/qlora", *shared]),
                              ("Run b", ["a+b/baseline", "b/qlora", *shared]),
                              ("Run c", ["c/baseline", "c/qlora", "c/retrieval", "c/boilerplate", "c/question"])]
    assert "The references differ from run a&#39;s in run c (4 items)" in page
    header = html_lib.unescape(re.search(r'<span id="bootstrap-line">(.*?)</span>', page, re.S).group(1))
    assert header == "paired bootstrap: runs a, c: 200 resamples, seed 0; run b: 300 resamples, seed 0"
