"""Analysis on hand-made score tables whose answers are known: matrices, AUC, paired tests, lengths, training logs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest_report import make_records
from scipy.stats import binomtest, wilcoxon

from medqa_bench.analysis import analyze, confusion, lengths, stats
from medqa_bench.analysis.training import read_training_log
from medqa_bench.errors import MetricError, RunError, SpecError

SIM = "embedding_similarity"


def _sample(i, qtype, base, adapter, *, dist=(0.1, 0.1), nearest=None, gen=(10, 10), ref=10):
    def sys(score, d, g, nq):
        out = {
            "prediction": "p",
            "generated_tokens": g,
            "truncated": g >= 64,
            "scores": {SIM: score},
            "distractor_scores": {SIM: d},
        }
        if nq:
            out["nearest_qtype"] = {SIM: list(nq)}
        return out

    nearest = nearest or (None, None)
    return {
        "id": f"i{i}",
        "qtype": qtype,
        "reference_tokens": ref,
        "systems": {
            "baseline": sys(base, dist[0], gen[0], nearest[0]),
            "ft": sys(adapter, dist[1], gen[1], nearest[1]),
        },
    }


def _results(metrics=None):
    return {
        "systems": {"baseline": {"kind": "baseline"}, "ft": {"kind": "adapter"}},
        "metrics": metrics or {SIM: {"higher_is_better": True, "kind": "reference", "bounds": [0, 1]}},
        "spec": {},
    }


# ------------------------------------------------------------------------------------------ own versus other


def test_own_vs_other_counts_precision_recall_f1():
    r = confusion.own_vs_other([0.9, 0.8, 0.6, 0.3], [0.2, 0.7, 0.1, 0.65], 0.5)
    assert r["matrix"] == [[3, 1], [2, 2]]  # [[TP, FN], [FP, TN]]
    assert r["precision"] == pytest.approx(3 / 5)
    assert r["recall"] == pytest.approx(3 / 4)
    assert r["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)


def test_threshold_is_inclusive():
    r = confusion.own_vs_other([0.5, 0.49], [0.5, 0.49], 0.5)
    assert r["matrix"] == [[1, 1], [1, 1]]


def test_auc_known_cases():
    # 12 of the 16 (positive, negative) pairs are ordered correctly.
    assert confusion.own_vs_other([0.9, 0.8, 0.6, 0.3], [0.2, 0.7, 0.1, 0.65], 0.5)["auc"] == pytest.approx(0.75)
    separated = confusion.own_vs_other([0.9, 0.8], [0.1, 0.2], 0.5)
    assert separated["auc"] == 1.0
    assert separated["roc"]["thresholds"][0] is None  # roc_curve's +inf, made JSON-safe
    assert confusion.own_vs_other([0.5, 0.5], [0.5, 0.5], 0.5)["auc"] == 0.5


def test_sweep_matches_point_threshold():
    pos, neg = [0.9, 0.8, 0.6, 0.3], [0.2, 0.7, 0.1, 0.65]
    r = confusion.own_vs_other(pos, neg, 0.5, sweep_steps=11)
    k = r["sweep"]["t"].index(0.5)
    assert r["sweep"]["f1"][k] == pytest.approx(r["f1"])
    assert r["sweep"]["precision"][-1] is None  # nothing reaches t = 1: precision undefined, not 0


# ------------------------------------------------------------------------------------------ graded


def test_grade_boundaries():
    assert confusion.grade(0.8, 0.4, 0.8) == "correct"
    assert confusion.grade(0.4, 0.4, 0.8) == "partial"
    assert confusion.grade(0.3999, 0.4, 0.8) == "wrong"


def test_transition_matrix_counts():
    base = [0.1, 0.5, 0.9, 0.9, 0.5]  # wrong, partial, correct, correct, partial
    ft = [0.5, 0.9, 0.9, 0.1, 0.5]  # partial, correct, correct, wrong, partial
    r = confusion.transitions(base, ft, 0.4, 0.8)
    assert r["labels"] == ["wrong", "partial", "correct"]
    assert r["matrix"] == [[0, 1, 0], [0, 1, 1], [1, 0, 1]]
    assert (r["improved"], r["regressed"], r["same"], r["n"]) == (2, 1, 2, 5)
    assert confusion.grade_counts(base, 0.4, 0.8) == {"wrong": 1, "partial": 2, "correct": 2}


# ------------------------------------------------------------------------------------------ question type


def test_qtype_confusion_with_below_t_and_foreign_column():
    r = confusion.qtype_confusion(
        ["a", "a", "b", "b", "b"], [("a", 0.9), ("b", 0.8), ("b", 0.7), ("c", 0.9), ("b", 0.2)], 0.5
    )
    assert r["rows"] == ["a", "b"]
    assert r["columns"] == ["a", "b", "c", confusion.BELOW]
    assert r["matrix"] == [[1, 1, 0, 0], [0, 1, 1, 1]]
    assert r["accuracy"] == pytest.approx(2 / 5)


# ------------------------------------------------------------------------------------------ analyze()


def _table():
    return [
        _sample(0, "symptoms", 0.9, 0.95, dist=(0.2, 0.3), nearest=(("symptoms", 0.9), ("symptoms", 0.95))),
        _sample(1, "symptoms", 0.5, 0.85, dist=(0.75, 0.2), nearest=(("treatment", 0.8), ("symptoms", 0.85))),
        _sample(2, "treatment", 0.3, 0.75, dist=(0.1, 0.72), nearest=(("treatment", 0.3), ("treatment", 0.75))),
        _sample(3, "treatment", 0.72, 0.4, dist=(0.4, 0.1), nearest=(("treatment", 0.72), ("symptoms", 0.6))),
    ]


def test_analyze_matrices_on_known_table():
    a = analyze(_results(), _table(), thresholds={"t": 0.7, "t_low": 0.5, "t_high": 0.8}, n_bootstrap=200)
    assert a["similarity_metric"] == SIM and a["thresholds"]["source"] == "argument"
    own = a["confusion"]["own_vs_other"]
    assert own["baseline"]["matrix"] == [[2, 2], [1, 3]]
    assert own["ft"]["matrix"] == [[3, 1], [1, 3]]
    graded = a["confusion"]["graded"]
    assert graded["counts"]["baseline"] == {"wrong": 1, "partial": 2, "correct": 1}
    assert graded["counts"]["ft"] == {"wrong": 1, "partial": 1, "correct": 2}
    t = graded["transitions"]["ft"]
    # i0 correct->correct, i1 partial->correct, i2 wrong->partial, i3 partial->wrong
    assert t["matrix"] == [[0, 1, 0], [1, 0, 1], [0, 0, 1]] and (t["improved"], t["regressed"]) == (2, 1)
    q = a["confusion"]["qtype"]
    assert q["baseline"]["columns"] == ["symptoms", "treatment", "below t"]
    assert q["baseline"]["matrix"] == [[1, 1, 0], [0, 1, 1]]
    assert q["ft"]["matrix"] == [[2, 0, 0], [0, 1, 1]]
    json.dumps(a, allow_nan=False)


def test_analyze_skips_qtype_view_for_one_qtype_and_is_deterministic():
    samples = [dict(s, qtype="symptoms") for s in _table()]
    a = analyze(_results(), samples, n_bootstrap=300, seed=3)
    assert a["confusion"]["qtype"] is None
    assert a == analyze(_results(), samples, n_bootstrap=300, seed=3)


def _th(a: dict) -> dict:
    return {k: a["thresholds"][k] for k in ("t", "t_low", "t_high", "source")}


def test_threshold_defaults_spec_and_validation():
    a = analyze(_results(), _table(), n_bootstrap=200)  # no null scores: the fallback defaults, and why
    assert _th(a) == {"t": 0.7, "t_low": 0.55, "t_high": 0.8, "source": "default"}
    assert "null pair" in a["thresholds"]["reason"]
    r = _results()
    r["spec"] = {"analysis": {"similarity_metric": None, "thresholds": {SIM: {"t": 0.6}}, "seed": 0}}
    assert _th(analyze(r, _table(), n_bootstrap=200)) == {"t": 0.6, "t_low": 0.55, "t_high": 0.8, "source": "spec"}
    r["spec"]["analysis"]["thresholds"] = {"t_high": 0.9}  # flat: the chosen metric's
    assert analyze(r, _table(), n_bootstrap=200)["thresholds"]["t_high"] == 0.9
    with pytest.raises(SpecError, match="t_low <= t_high"):
        analyze(_results(), _table(), thresholds={"t_low": 0.9, "t_high": 0.5})


def test_thresholds_are_calibrated_on_unrelated_reference_pairs():
    # 20 items whose references score 0.00, 0.05, ..., 0.95 against their distractors' references
    samples = [dict(_sample(i, "a", 0.5, 0.6), null_scores={SIM: i / 20}) for i in range(20)]
    a = analyze(_results(), samples, n_bootstrap=200)
    null = np.arange(20) / 20
    assert a["thresholds"]["source"] == "calibrated" and a["thresholds"]["n_pairs"] == 20
    assert a["thresholds"]["t"] == pytest.approx(np.percentile(null, 95))
    assert a["thresholds"]["t_low"] == pytest.approx(np.percentile(null, 90))
    assert a["match_thresholds"][SIM]["t_high"] == pytest.approx(np.percentile(null, 99))
    # the match threshold of McNemar's test is the calibrated one
    assert a["paired"]["ft"]["metrics"][SIM]["mcnemar"]["t"] == pytest.approx(np.percentile(null, 95))


def test_metric_choice_fallback_and_errors():
    metrics = {
        "bleu": {"kind": "reference", "bounds": [0, 100]},
        "exact_match": {"kind": "reference", "bounds": [0, 1]},
        "advises_doctor": {"kind": "prediction", "bounds": [0, 1]},
        "rougeL": {"kind": "reference", "bounds": [0, 1]},
    }
    scores = {"rougeL": 0.5, "bleu": 20, "exact_match": 0.0, "advises_doctor": 1.0}
    samples = [{"id": "x", "qtype": "a", "systems": {"baseline": {"scores": scores}}}]
    a = analyze({"systems": {"baseline": {"kind": "baseline"}}, "metrics": metrics}, samples, n_bootstrap=100)
    assert a["similarity_metric"] == "rougeL" and a["thresholds"]["t"] == 0.3  # graded similarity before exact_match
    assert a["thresholds"]["source"] == "default"  # one item: too few null pairs to calibrate
    with pytest.raises(MetricError, match="usable metrics are: exact_match, rougeL"):
        analyze({"metrics": metrics}, samples, similarity_metric="advises_doctor")
    none = analyze({"metrics": {"bleu": metrics["bleu"]}}, samples, n_bootstrap=100)
    assert none["similarity_metric"] is None and none["confusion"] is None


def test_adapter_without_baseline_is_refused():
    with pytest.raises(SpecError, match="no baseline"):
        analyze({"systems": {"a": {"kind": "adapter"}, "b": {"kind": "adapter"}}}, _table())


# ------------------------------------------------------------------------------------------ paired tests


def test_mcnemar_exact_matches_binomial():
    # 3 both, 1 baseline only, 7 adapter only, 4 neither: exact p = 2 * P(X <= 1 | n=8, 1/2) = 18/256.
    base = [1] * 3 + [1] * 1 + [0] * 7 + [0] * 4
    ft = [1] * 3 + [0] * 1 + [1] * 7 + [0] * 4
    r = stats.mcnemar_exact(np.array(ft, bool), np.array(base, bool))
    assert r["table"] == [[3, 1], [7, 4]]
    assert r["p"] == pytest.approx(18 / 256)
    assert r["p"] == pytest.approx(binomtest(1, 8, 0.5).pvalue)
    assert stats.mcnemar_exact([True, False], [True, False])["p"] == 1.0


def test_wilcoxon_known_case():
    a = np.arange(1, 9, dtype=float)
    r = stats.wilcoxon_signed_rank(a + np.arange(1, 9), a)  # 8 positive differences: exact p = 2 / 2**8
    assert r["p"] == pytest.approx(2 / 256)
    b = np.array([0.1, -0.4, 0.3, 0.25, -0.05, 0.6, 0.2])
    assert r["n_nonzero"] == 8
    assert stats.wilcoxon_signed_rank(b, np.zeros(7))["p"] == pytest.approx(wilcoxon(b).pvalue)
    assert stats.wilcoxon_signed_rank([1, 2], [1, 2])["p"] == 1.0


def test_paired_bootstrap_ci_contains_truth_and_is_seeded():
    rng = np.random.default_rng(42)
    b = rng.uniform(0.3, 0.7, 60)
    noise = rng.normal(0, 0.05, 60)
    a = b + 0.1 + (noise - noise.mean())  # the items' true mean difference is exactly 0.1
    r = stats.paired_bootstrap(a, b, n_bootstrap=2000, seed=7)
    assert r["ci_low"] < 0.1 < r["ci_high"]
    assert r["mean_diff"] == pytest.approx(0.1)
    assert r["p_bootstrap"] < 0.001
    assert r == stats.paired_bootstrap(a, b, n_bootstrap=2000, seed=7)
    assert r["ci_low"] != stats.paired_bootstrap(a, b, n_bootstrap=2000, seed=8)["ci_low"]


def test_paired_bootstrap_coverage_and_null():
    rng = np.random.default_rng(0)
    covered, rejected = 0, 0
    for k in range(200):
        d = rng.normal(0.05, 0.2, 40)
        r = stats.paired_bootstrap(d, np.zeros(40), n_bootstrap=500, seed=k)
        covered += r["ci_low"] <= 0.05 <= r["ci_high"]
        null = stats.paired_bootstrap(rng.normal(0, 0.2, 40), np.zeros(40), n_bootstrap=500, seed=k)
        rejected += null["p_bootstrap"] < 0.05
    assert 0.88 <= covered / 200 <= 0.99  # nominal 95%; the percentile interval runs slightly narrow at n=40
    assert rejected / 200 <= 0.12  # nominal 5%


def test_corpus_form_is_token_weighted():
    nll_a, tok_a = [10.0, 1.0], [10, 1]  # per-item losses 1.0 and 1.0
    nll_b, tok_b = [20.0, 0.5], [10, 1]  # per-item losses 2.0 and 0.5: mean of means 1.25, corpus 20.5/11
    r = stats.paired_bootstrap_corpus(nll_a, tok_a, nll_b, tok_b, exponentiate=False, n_bootstrap=200)
    assert r["mean_diff"] == pytest.approx(11 / 11 - 20.5 / 11)
    ppl = stats.paired_bootstrap_corpus(nll_a, tok_a, nll_b, tok_b, exponentiate=True, n_bootstrap=200)
    assert ppl["mean_diff"] == pytest.approx(math.exp(1.0) - math.exp(20.5 / 11))


def test_holm_and_marks():
    assert stats.holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
    assert [stats.significance_mark(p) for p in (0.0005, 0.005, 0.03, 0.2, None)] == ["***", "**", "*", "", ""]


def test_analyze_paired_block_on_realistic_run():
    results, samples = make_records(n=30, seed=1)
    a = analyze(results, samples, n_bootstrap=500)
    block = a["paired"]["qlora-medquad"]
    assert block["baseline"] == "baseline"
    es = block["metrics"][SIM]
    assert es["form"] == "mean" and es["n"] == 30 and es["better"] is True
    assert es["mcnemar"]["t"] == 0.7 and es["wilcoxon"]["p"] is not None and es["p_holm"] >= es["p_permutation"]
    ppl = block["metrics"]["perplexity"]
    assert ppl["form"] == "corpus" and ppl["mean_diff"] < 0 and ppl["better"] is True and ppl["mcnemar"] is None
    lm = a["language_modeling"]
    nll = sum(s["systems"]["baseline"]["nll_sum"] for s in samples)
    tok = sum(s["systems"]["baseline"]["nll_tokens"] for s in samples)
    assert lm["systems"]["baseline"]["loss"] == pytest.approx(nll / tok)
    assert lm["systems"]["baseline"]["perplexity"] == pytest.approx(
        results["results"]["baseline"]["perplexity"]["value"]
    )
    assert lm["changes"]["qlora-medquad"]["perplexity"]["pct"] < 0


# ------------------------------------------------------------------------------------------ lengths


def test_length_histograms_counts_and_truncation():
    samples = [
        _sample(0, "a", 0.9, 0.3, gen=(12, 64), ref=10),
        _sample(1, "a", 0.3, 0.3, gen=(30, 64), ref=20),
        _sample(2, "a", 0.6, 0.9, gen=(5, 8), ref=10),
    ]
    grades = {
        "baseline": {"i0": "correct", "i1": "wrong", "i2": "partial"},
        "ft": {"i0": "wrong", "i1": "wrong", "i2": "correct"},
    }
    h = lengths.length_histograms(samples, ["baseline", "ft"], grades)
    edges = h["edges"]
    assert edges[0] <= 5 and edges[-1] > 64 and len(edges) - 1 <= 30
    ft = h["systems"]["ft"]
    assert ft["wrong"]["n"] == 2 and sum(ft["wrong"]["counts"]) == 2 and ft["wrong"]["median"] == 64
    assert ft["truncated"] == {"n": 2, "share": pytest.approx(2 / 3), "n_wrong": 2, "share_of_wrong": 1.0}
    assert h["systems"]["baseline"]["diff"]["median"] == 2  # 12-10, 30-20, 5-10
    assert sum(h["reference"]["counts"]) == 3
    assert sum(h["systems"]["baseline"]["reference_of_wrong"]["counts"]) == 1
    ungraded = lengths.length_histograms(samples, ["baseline"], None)
    assert "wrong" not in ungraded["systems"]["baseline"] and ungraded["systems"]["baseline"]["all"]["n"] == 3


# ------------------------------------------------------------------------------------------ training logs


def test_read_training_log_jsonl(tmp_path):
    rows = [
        {"type": "step", "step": 1, "epoch": 0.5, "loss": 2.0, "learning_rate": 1e-4, "tokens": 100},
        {"type": "step", "step": 2, "epoch": 1.0, "loss": 1.5, "learning_rate": 9e-5, "tokens": 200},
        {"type": "epoch", "epoch": 1, "train_loss": 1.75, "eval_loss": 1.9},
    ]
    (tmp_path / "training_log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    log = read_training_log(tmp_path)
    assert log["source"] == "training_log.jsonl"
    assert [s["loss"] for s in log["steps"]] == [2.0, 1.5] and log["steps"][1]["tokens"] == 200
    assert log["epochs"] == [{"epoch": 1, "train_loss": 1.75, "eval_loss": 1.9}]
    (tmp_path / "training_log.jsonl").write_text('{"type": "step"\n')
    with pytest.raises(RunError, match="training_log.jsonl: line 1 is not valid JSON"):
        read_training_log(tmp_path)


def test_read_training_log_trainer_state(tmp_path):
    history = [
        {"epoch": 0.5, "step": 5, "loss": 2.0, "learning_rate": 2e-4, "grad_norm": 1.0},
        {"epoch": 1.0, "step": 10, "loss": 1.0, "learning_rate": 1e-4},
        {"epoch": 1.0, "step": 10, "eval_loss": 1.6, "eval_runtime": 1.0},
        {"epoch": 1.5, "step": 15, "loss": 0.8, "learning_rate": 5e-5},
        {"epoch": 2.0, "step": 20, "eval_loss": 1.4},
        {"epoch": 2.0, "step": 20, "train_loss": 1.2, "train_runtime": 9.0},
    ]
    for n in (9, 10):  # numeric, not lexical, order of checkpoints
        (tmp_path / f"checkpoint-{n}").mkdir()
        (tmp_path / f"checkpoint-{n}" / "trainer_state.json").write_text(json.dumps({"log_history": history[: n - 6]}))
    assert len(read_training_log(tmp_path)["steps"]) == 3  # checkpoint-10: first 4 entries
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    log = read_training_log(tmp_path)
    assert log["source"] == "trainer_state.json"
    assert [s["step"] for s in log["steps"]] == [5, 10, 15]
    assert log["epochs"] == [
        {"epoch": 1, "train_loss": 1.5, "eval_loss": 1.6},
        {"epoch": 2, "train_loss": 0.8, "eval_loss": 1.4},
    ]


def test_read_training_log_none_when_absent(tmp_path):
    assert read_training_log(tmp_path) is None


def test_permutation_p_is_exact_on_few_items_and_valid_under_the_null():
    # 3 items, all better: of the 2^3 sign flips, two (all +, all -) are as extreme as observed
    r = stats.paired_bootstrap([0.9, 0.8, 0.7], [0.1, 0.2, 0.3], n_bootstrap=500)
    assert r["p_permutation"] == 0.25 and r["p_bootstrap"] < 0.01  # the bootstrap's p is not to be trusted here
    # 5 differences of 1 and 5 of 0: 2 * P(all five positive) = 2/32
    assert stats.paired_bootstrap([1] * 5 + [0] * 5, [0] * 10)["p_permutation"] == pytest.approx(2 / 32)
    corpus = stats.paired_bootstrap_corpus([10, 12, 9], [5, 6, 5], [20, 20, 20], [5, 6, 5], exponentiate=False)
    assert corpus["p_permutation"] == 0.25
    # under the null the test rejects about 5% of the time (60 items: random flips)
    rng = np.random.default_rng(7)
    rejected = sum(stats.paired_bootstrap(rng.normal(size=60), rng.normal(size=60), n_bootstrap=400,
                                          seed=k)["p_permutation"] < 0.05 for k in range(200))
    assert 2 <= rejected <= 20
