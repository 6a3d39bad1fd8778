"""The verdict on hand-made score tables whose answer is known: strongest baseline per metric, Holm, reference rows,
metric notes, degeneration and leakage warnings, unequal conditions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medqa_bench.analysis import analyze
from medqa_bench.analysis.verdict import build_verdict, metric_notes

N = 40
METRICS = {
    "rougeL": {"higher_is_better": True, "kind": "reference", "bounds": [0, 1]},
    "token_f1": {"higher_is_better": True, "kind": "reference", "bounds": [0, 1]},
    "embedding_similarity": {"higher_is_better": True, "kind": "reference", "bounds": [0, 1]},
    "loss": {"higher_is_better": False, "kind": "nll", "bounds": None},
}


def _table(seed: int = 0, n_dup: int = 5):
    """Per item and system: scores with known orderings.

    - rougeL: ft = baseline-chat + 0.10 (a clear gain), baseline-reference far below both;
    - token_f1: ft = baseline-chat - 0.10 (a clear loss), baseline-reference below both;
    - embedding_similarity: ft = baseline-chat + noise (no difference); the question row scores above every model;
    - loss: ft below baseline-chat (a gain), from nll_sum / nll_tokens.
    """
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.5, size=N)
    samples = []
    for i in range(N):
        noise = rng.normal(0, 0.01)
        rows = {
            "baseline-chat": {"rougeL": base[i], "token_f1": base[i] + 0.2, "embedding_similarity": base[i] + 0.2},
            "baseline-reference": {"rougeL": base[i] - 0.15, "token_f1": base[i] - 0.1,
                                   "embedding_similarity": base[i]},
            "ft": {"rougeL": base[i] + 0.10, "token_f1": base[i] + 0.1, "embedding_similarity": base[i] + 0.2 + noise},
            "question": {"rougeL": 0.05, "token_f1": 0.05, "embedding_similarity": 0.9},
            "retrieval": {"rougeL": base[i] + 0.3, "token_f1": base[i] + 0.3, "embedding_similarity": 0.8},
        }
        systems = {}
        for name, scores in rows.items():
            rec = {"prediction": f"an answer of {name} to item {i} with some words", "generated_tokens": 20,
                   "truncated": False, "stop_reason": "eos", "scores": {k: float(v) for k, v in scores.items()}}
            if name.startswith("baseline") or name == "ft":
                per_token = {"ft": 1.5, "baseline-chat": 2.0, "baseline-reference": 2.4}[name]
                rec.update(nll_sum=per_token * 50 + rng.normal(0, 1), nll_tokens=50)
            else:
                rec.update(stop_reason=None)
            systems[name] = rec
        # the reference-format baseline stops at once on half the items: empty answers
        if i % 2 == 0:
            systems["baseline-reference"]["prediction"] = ""
        samples.append({"id": f"q{i}", "qtype": "symptoms", "focus": f"f{i}", "reference": "the reference answer",
                        "reference_tokens": 20, "systems": systems,
                        "train_overlap": {"reference": {"score": 0.95 if i < n_dup else 0.3, "train_id": f"t{i}"},
                                          "question": {"score": 0.2, "train_id": f"t{i}"},
                                          "near_duplicate": i < n_dup}})
    return samples


def _results(samples):
    systems = {
        "baseline-chat": {"kind": "baseline", "prompt_format": "chat", "format_source": "baseline_formats",
                          "stop_sequences": []},
        "baseline-reference": {"kind": "baseline", "prompt_format": "reference", "format_source": "baseline_formats",
                               "stop_sequences": ["### Question", "### Answer"]},
        "ft": {"kind": "adapter", "prompt_format": "reference", "format_source": "training metadata",
               "stop_sequences": ["### Question", "### Answer"],
               "adapter": {"training": {"resolved": {"quantization": "4bit"}}}},
        "question": {"kind": "reference", "method": "question"},
        "retrieval": {"kind": "reference", "method": "retrieval"},
    }
    values = {}
    for name in [n for n in systems if n in samples[0]["systems"]]:
        for m, info in METRICS.items():
            if info["kind"] == "nll":
                recs = [s["systems"][name] for s in samples if "nll_sum" in s["systems"][name]]
                if recs:
                    v = sum(r["nll_sum"] for r in recs) / sum(r["nll_tokens"] for r in recs)
                    values.setdefault(name, {})[m] = {"value": v}
            else:
                values.setdefault(name, {})[m] = {"value": float(np.mean([s["systems"][name]["scores"][m]
                                                                           for s in samples]))}
    return {"systems": systems, "metrics": METRICS, "results": values, "spec": {"decoding": {"max_new_tokens": 64}},
            "model": {"quantization": "none"}, "budget": {"max_new_tokens": 64, "n_references": N,
                                                          "references_longer": 10}}


@pytest.fixture(scope="module")
def verdict():
    samples = _table()
    results = _results(samples)
    results["analysis"] = analyze(results, samples, n_bootstrap=500)
    return results, build_verdict(results)


def test_adapter_is_judged_against_the_strongest_baseline_per_metric(verdict):
    results, v = verdict
    ft = v["adapters"]["ft"]
    # the chat baseline is the stronger row on every metric, so the adapter is judged against it, not the weak
    # reference-template row it would beat everywhere
    assert set(ft["strongest_baseline"].values()) == {"baseline-chat"}
    assert [r["metric"] for r in ft["improves"]] == ["rougeL", "loss"]
    assert [r["metric"] for r in ft["regresses"]] == ["token_f1"]
    assert [r["metric"] for r in ft["no_difference"]] == ["embedding_similarity"]
    assert all(r["against"] == "baseline-chat" and r["p_holm"] < 0.05 for r in ft["improves"] + ft["regresses"])
    assert ft["improves"][0]["diff"] == pytest.approx(0.10)
    # against the weak row alone it would "improve" token F1 as well: the strongest-baseline rule is what prevents it
    weak = results["analysis"]["comparisons"]["ft"]["baseline-reference"]["metrics"]["token_f1"]
    assert weak["better"] is True and weak["p_holm"] < 0.05


def test_reference_rows_the_adapter_does_not_beat(verdict):
    _, v = verdict
    refs = v["adapters"]["ft"]["references"]
    assert set(refs["retrieval"]["does_not_beat"]) == {"rougeL", "token_f1", "embedding_similarity"}
    assert refs["question"]["beats"] == ["rougeL", "token_f1"] and refs["question"]["does_not_beat"] == [
        "embedding_similarity"]
    assert any("does not significantly beat the retrieval reference row" in line for line in v["lines"])


def test_metric_notes_name_the_metric_that_measures_topic(verdict):
    results, v = verdict
    notes = metric_notes(results, results["analysis"])
    assert [(n["metric"], n["reference"]) for n in notes] == [("embedding_similarity", "question")]
    assert set(notes[0]["systems"]) == {"baseline-chat", "ft"}  # the rows the verdict rests on, not the weak one
    [note] = [w for w in v["warnings"] if w["code"] == "question_row"]
    assert note["metrics"] == ["embedding_similarity"] and "measure topic, not content" in note["message"]


def test_warnings_degeneration_leakage_budget_and_conditions(verdict):
    _, v = verdict
    codes = [w["code"] for w in v["warnings"]]
    assert "budget" in codes and "leakage" in codes
    empty = [w for w in v["warnings"] if w["code"] == "empty"]
    assert [w.get("system") for w in empty] == ["baseline-reference"] and "50%" in empty[0]["message"]
    ft = v["adapters"]["ft"]
    conditions = {c["code"] for c in ft["conditions"]}
    assert conditions == {"prompt_format", "stop_sequences", "quantization"}
    # the gains do not come from the 5 near-duplicates: the verdict holds without them
    assert ft["clean_subset"]["n_items"] == N - 5 and ft["clean_subset"]["changed"] == []
    json.dumps(v, allow_nan=False)


def test_verdict_changes_when_the_gain_is_only_on_near_duplicates():
    samples = _table(n_dup=15)
    for i, s in enumerate(samples):  # rougeL gain only on the 15 near-duplicates
        if i >= 15:
            s["systems"]["ft"]["scores"]["rougeL"] = s["systems"]["baseline-chat"]["scores"]["rougeL"]
        else:
            s["systems"]["ft"]["scores"]["rougeL"] = 1.0
    results = _results(samples)
    results["analysis"] = analyze(results, samples, n_bootstrap=500)
    ft = build_verdict(results)["adapters"]["ft"]
    assert "rougeL" in ft["clean_subset"]["changed"]
    assert any(w["code"] == "leakage" and "rougeL" in w["message"] for w in ft["warnings"])


def test_no_adapter_run_says_so():
    samples = [{**s, "systems": {k: v for k, v in s["systems"].items() if k != "ft"}} for s in _table()]
    results = _results(samples)
    results["systems"].pop("ft")
    results["analysis"] = analyze(results, samples, n_bootstrap=200)
    v = build_verdict(results)
    assert v["adapters"] == {} and v["lines"][0].startswith("no adapter was evaluated")


def test_an_adapters_verdict_does_not_depend_on_the_other_adapters_of_its_run():
    """benchmarks/gpu/sweep.py validates the adapters in several runs side by side (the same items, baseline rows,
    reference rows and seed): each adapter's verdict must be what one run with every adapter gives it."""
    import copy

    from conftest_report import make_records

    results, samples = make_records(n=30, seed=3, adapters=("a1", "a2"), baseline_formats=("chat", "reference"),
                                    analysed=False)

    def verdict_of(r: dict, s: list[dict]) -> dict:
        r["analysis"] = analyze(r, s, n_bootstrap=500)
        return build_verdict(r)["adapters"]

    together = verdict_of(copy.deepcopy(results), copy.deepcopy(samples))
    assert set(together) == {"a1", "a2"}
    for keep, drop in (("a1", "a2"), ("a2", "a1")):
        r, s = copy.deepcopy(results), copy.deepcopy(samples)
        for table in ("results", "systems"):
            r.get(table, {}).pop(drop, None)
        for x in s:
            x["systems"].pop(drop)
        alone = verdict_of(r, s)
        assert set(alone) == {keep}
        assert json.dumps(alone[keep], sort_keys=True) == json.dumps(together[keep], sort_keys=True)
        assert any(e["p_holm"] < 0.05 for e in alone[keep]["improves"])  # the comparison is not vacuous


@pytest.mark.parametrize("decoding, named", [({"no_repeat_ngram_size": 3}, "no_repeat_ngram_size 3"),
                                             ({"repetition_penalty": 1.2}, "repetition_penalty 1.2"),
                                             ({"repetition_penalty": 1.0, "no_repeat_ngram_size": 0}, None)])
def test_a_run_decoded_against_repetition_says_its_repetition_warnings_say_little(decoding, named):
    samples = _table()
    results = _results(samples)
    results["spec"]["decoding"].update(decoding)
    results["analysis"] = analyze(results, samples, seed=0, n_bootstrap=200)
    v = build_verdict(results)
    found = [w for w in v["warnings"] if w["code"] == "decoding"]
    if named is None:
        assert not found
    else:
        assert len(found) == 1 and named in found[0]["message"] and "say little" in found[0]["message"]
        assert any(named in line for line in v["lines"])


# ------------------------------------------------------------------------------------------ what a test can reach


def _few_items_run(n: int, *, validity: bool = True) -> dict:
    """The hand-made run of conftest_report on ``n`` items, its primary metric embedding_similarity."""
    from conftest_report import make_records

    results, samples = make_records(n=n, near_duplicates=0, analysed=False)
    if validity:
        results["validity"] = {
            "source": "bundled", "floor": {"figure": "within_question_spearman", "value": 0.3, "rule": "r"},
            "primary": {"metric": "embedding_similarity", "rule": "rule", "reason": "the reason"},
            "metrics": {"embedding_similarity": {"measured": True, "below_floor": False, "figures": {
                "within_question_spearman": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}}}}}
    results["analysis"] = analyze(results, samples, n_bootstrap=500)
    results["verdict"] = build_verdict(results)
    return results


@pytest.fixture(scope="module")
def five_items():
    return _few_items_run(5)


def test_with_five_items_the_verdict_says_no_test_can_reach_significance(five_items):
    v = five_items["verdict"]
    ft = v["adapters"]["qlora-medquad"]
    why = "with 5 items the smallest p the paired test can give is 0.0625, 0.25 after Holm's correction over 4 metrics"
    assert ft["primary"]["reachable"] is False and ft["primary"]["p_floor"] == pytest.approx(0.25)
    assert ft["lines"][0].startswith("qlora-medquad on the primary metric embedding_similarity: cannot reach "
                                     "significance (+0.097 [-0.044, 0.216] vs baseline, p_holm 0.250): " + why)
    assert f"qlora-medquad cannot reach significance on any metric: {why}; its differences and intervals are " \
           "descriptive only" in ft["lines"]
    assert not any("no significant difference" in line for line in v["lines"])
    [small] = [w for w in v["warnings"] if w["code"] == "small_sample"]
    assert small["unreachable"] and "no paired test of this run can reach significance" in small["message"]


def test_a_ci_that_excludes_zero_beside_a_test_that_does_not_is_explained(five_items):
    """The CI and the test must not seem to disagree without a reason: every such row carries one, and a line says
    it."""
    for results in (five_items, _few_items_run(8), _few_items_run(12, validity=False)):
        for name, a in results["verdict"]["adapters"].items():
            for r in a["no_difference"]:
                lo, hi = r["ci"]
                assert bool(r.get("ci_note")) == (lo > 0 or hi < 0), (name, r)
            noted = [r for r in a["no_difference"] if r.get("ci_note") and r["metric"] != "embedding_similarity"]
            if noted:
                assert any(line.startswith(f"{name}: the bootstrap CI of the difference excludes 0 on "
                                           f"{noted[0]['metric']} [") and line.endswith(
                    "while the paired test is not significant: the bootstrap CI is approximate on few items; the "
                    "permutation test is exact") for line in a["lines"])


def test_reach_counts_the_items_that_differ_and_holms_family():
    from medqa_bench.analysis.reach import ci_note, reach, reach_text

    def rows(n, m, differ=None):
        return {f"m{k}": {"n": n, "p_permutation": 0.5, "wilcoxon": {"n_nonzero": n if differ is None else differ}}
                for k in range(m)}

    assert reach(rows(6, 1), alpha=0.05)["m0"]["reachable"] is True  # 2/64 = 0.031
    two = reach(rows(6, 2), alpha=0.05)["m0"]  # Holm doubles it: 0.0625
    assert two["reachable"] is False and reach_text(two) == (
        "with 6 items the smallest p the paired test can give is 0.03125, 0.0625 after Holm's correction over 2 "
        "metrics")
    few = reach(rows(30, 1, differ=3), alpha=0.05)["m0"]
    assert reach_text(few) == "3 of 30 items differ, and the smallest p the paired test can give on them is 0.25"
    assert reach_text(reach(rows(30, 1, differ=0), alpha=0.05)["m0"]) == "the two rows score alike on all 30 items"
    assert reach(rows(266, 10), alpha=0.05)["m0"]["p_floor"] == pytest.approx(0.001)  # 9,999 flips, times 10
    # a row without an item count claims nothing
    assert reach({"a": {"p_permutation": 0.3}}, alpha=0.05)["a"]["reachable"] is None
    # on many items a CI that excludes 0 beside Holm's p is the correction's doing
    row = {"n": 200, "ci_low": 0.01, "ci_high": 0.05, "p_permutation": 0.02, "p_holm": 0.08}
    assert ci_note(row, reach(rows(200, 4), alpha=0.05)["m0"], alpha=0.05) == (
        "the CI is not corrected for the 4 metrics tested; Holm's correction is (p 0.02 before it)")
    assert ci_note({**row, "p_holm": 0.01}, None, alpha=0.05) is None
    assert ci_note({**row, "ci_low": -0.01}, None, alpha=0.05) is None


# ------------------------------------------------------------------------------------------ the terminal's verdict


def _committed(name: str) -> dict:
    from pathlib import Path

    return json.loads((Path(__file__).resolve().parents[1] / "reports" / name / "results.json").read_text())


@pytest.mark.parametrize("which", ["five_items", "headline-other-types", "headline-rag"])
def test_the_terminal_verdict_leads_with_five_findings_and_groups_the_warnings(which, five_items):
    from medqa_bench.report.terminal import MAX_FINDINGS, verdict_brief, warning_groups

    results = five_items if which == "five_items" else _committed(which)
    out = verdict_brief(results, "reports/x")
    assert out[0] == "verdict:"
    head = out.index(next(line for line in out if line.startswith("warnings and unequal conditions, by kind (")))
    findings = out[1:head]
    assert 1 <= len(findings) <= MAX_FINDINGS and all(line.startswith("  - ") for line in findings)
    v = results["verdict"]
    n_all = len(v["warnings"]) + sum(len(a["warnings"]) + len(a["conditions"]) for a in v["adapters"].values())
    groups = warning_groups(results)
    assert sum(n for _, n, _ in groups) == n_all and f"({n_all}):" in out[head]
    assert len({kind for kind, _, _ in groups}) == len(groups) == len(out) - head - 2
    assert out[-1].startswith("full verdict") and "reports/x/results.json, under verdict.lines" in out[-1]
    assert len(out) < len(v["lines"])  # results.json keeps every line
    if which == "five_items":
        assert findings[0].startswith("  - qlora-medquad on the primary metric embedding_similarity: cannot reach")
        assert ("small sample", 1) in [(k, n) for k, n, _ in groups]
    if which == "headline-other-types":  # no primary metric recorded: the regressions lead
        assert findings[0].startswith("  - s07-ref-all is worse than its strongest baseline on 7 metrics: ")
        assert findings[-1] == "  - warning: 66% of s07-ref-all's answers hit the 639-token budget: overlap " \
                               "metrics compare cut-off text"
        assert out[head + 1].startswith("  degeneration: 6 (s07-ref-all truncated 66%, repeated 4-grams 56%")


def test_summary_prints_the_brief_verdict_and_every_line_on_request(tmp_path, five_items):
    from medqa_bench.api import Results

    res = Results(tmp_path, five_items, [])
    brief, full = res.summary(), res.summary(full_verdict=True)
    assert "warnings and unequal conditions, by kind" in brief and f"full verdict: {tmp_path}/results.json" in brief
    assert all(f"  - {line}" in full for line in five_items["verdict"]["lines"])
    (tmp_path / "report.html").write_text("<html></html>")
    assert res.summary().splitlines()[-1].startswith(f"full verdict: {tmp_path}/report.html")


def test_the_reports_verdict_table_says_what_the_test_cannot_reach(five_items):
    from medqa_bench.report.verdict_view import verdict_context

    ctx = verdict_context(five_items, five_items["analysis"], five_items["verdict"])
    [a] = ctx["adapters"]
    assert a["primary"]["outcome_text"].startswith("cannot reach significance: with 5 items the smallest p")
    fuzzy = next(r for r in a["rows"] if r["metric"] == "fuzzy")
    assert fuzzy["outcome_text"].endswith("(the CI excludes 0: the bootstrap CI is approximate on few items; the "
                                          "permutation test is exact)")


def test_the_small_sample_warning_judges_each_metric_on_the_items_it_was_scored_on():
    """A run with NLL-only items: the generation metrics on its 5 generated items cannot reach significance, while
    perplexity, scored on every item, can; the warning says which metrics it concerns and on how many items."""
    from conftest_report import make_records

    def small(**kwargs) -> dict:
        results, _ = make_records(n=5, n_bootstrap=200, **kwargs)
        [w] = [w for w in results["verdict"]["warnings"] if w["code"] == "small_sample"]
        return w

    few = small(nll_only=15)
    assert few["message"] == (
        "only 5 generated items: no paired test of the generation metrics can reach significance (the smallest p any "
        "of them can give, after Holm's correction, is 0.1875, not below 0.05); every difference on them is "
        "descriptive; perplexity was scored on 20 items, also few: its intervals are wide (--limit 0 evaluates the "
        "whole split)")
    assert few["unreachable"] and few["n"] == {"embedding_similarity": 5, "fuzzy": 5, "rougeL": 5, "perplexity": 20}
    enough = small(nll_only=30)
    assert enough["message"].endswith("every difference on them is descriptive; perplexity was scored on 35 items "
                                      "(--limit 0 evaluates the whole split)")
    assert "no paired test of this run can reach significance" in small()["message"]  # every metric on 5 items
