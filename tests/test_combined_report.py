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
    for n in re.findall(r"only (\d+) items", line):
        assert int(n) == facts["n_items"], line
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
    head = re.search(r'<table class="headline">\s*<thead>(.*?)</thead>', page, re.S).group(1)
    columns = re.findall(r'data-system="([^"]+)"', head)
    # the reference rows answer alike in every run; r16 and r32 share their baseline, short's budget gives it its own
    assert columns == ["retrieval", "boilerplate", "question", "r16+r32/baseline", "r16/qlora", "r32/qlora",
                       "short/baseline", "short/qlora"]
    assert '<th colspan="3" class="group">shared by every run</th>' in head
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
