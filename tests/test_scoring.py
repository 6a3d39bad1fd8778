"""The scoring stage: best-reference choice, NLL corpus forms, bootstrap CIs, distractors, nearest qtype, checks."""

from __future__ import annotations

import copy
import math
import os
import random

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from medqa_bench.errors import MetricError, RunError
from medqa_bench.metrics import Metric, resolve_metrics
from medqa_bench.metrics.scoring import assign_distractors, score_samples


def sample(item_id, refs, predictions, *, focus="", qtype="symptoms", nll=None):
    systems = {}
    for name, pred in predictions.items():
        rec = {"prediction": pred}
        if nll is not None:
            rec["nll_sum"], rec["nll_tokens"] = nll[name]
        systems[name] = rec
    return {"id": item_id, "qtype": qtype, "focus": focus or item_id, "question": f"q {item_id}",
            "reference": refs[0], "references": list(refs), "systems": systems}


def run(samples, names, systems=("base",), **kw):
    kw.setdefault("progress", False)
    return score_samples(samples, resolve_metrics(list(names)), list(systems), **kw)


def test_best_reference_is_chosen_and_recorded():
    samples = [
        sample("q1", ["headache", "fever and chills", "rash"], {"base": "fever, chills", "tuned": "a rash"}),
        sample("q2", ["joint pain"], {"base": "joint pain", "tuned": "pain"}),
    ]
    results, info = run(samples, ["token_f1", "exact_match"], systems=("base", "tuned"))
    base, tuned = samples[0]["systems"]["base"], samples[0]["systems"]["tuned"]
    assert base["scores"]["token_f1"] == pytest.approx(0.8) and base["best_reference"]["token_f1"] == 1
    assert tuned["scores"]["exact_match"] == 1.0 and tuned["best_reference"]["exact_match"] == 2
    assert base["best_reference"]["exact_match"] == 0  # all zero: the first reference, deterministically
    assert results["base"]["token_f1"]["value"] == pytest.approx((0.8 + 1.0) / 2)
    assert results["tuned"]["exact_match"]["n"] == 2
    assert info["token_f1"] == {"name": "token_f1", "higher_is_better": True, "signature": info["token_f1"]["signature"],
                                "source": "builtin", "kind": "reference", "bounds": [0.0, 1.0]}


def test_lower_is_better_takes_the_minimum():
    distance = Metric("char_distance", False, lambda p, r, i: [abs(len(a) - len(b)) for a, b in zip(p, r)])
    samples = [sample("q1", ["abcdef", "abc"], {"base": "xyz"})]
    score_samples(samples, [distance], ["base"], progress=False)
    assert samples[0]["systems"]["base"]["scores"]["char_distance"] == 0
    assert samples[0]["systems"]["base"]["best_reference"]["char_distance"] == 1


def test_loss_and_perplexity_corpus_versus_per_item():
    samples = [
        sample("q1", ["a"], {"base": "a"}, nll={"base": (10.0, 5)}),  # loss 2
        sample("q2", ["b"], {"base": "b"}, nll={"base": (3.0, 1)}),  # loss 3
    ]
    results, _ = run(samples, ["loss", "perplexity"])
    recs = [s["systems"]["base"] for s in samples]
    assert [r["scores"]["loss"] for r in recs] == pytest.approx([2.0, 3.0])
    assert [r["scores"]["perplexity"] for r in recs] == pytest.approx([math.exp(2), math.exp(3)])
    # token-weighted corpus form, not the mean of the per-item values
    assert results["base"]["loss"]["value"] == pytest.approx(13 / 6)
    assert results["base"]["perplexity"]["value"] == pytest.approx(math.exp(13 / 6))
    ci = results["base"]["perplexity"]
    assert math.exp(2) <= ci["ci_low"] <= ci["value"] <= ci["ci_high"] <= math.exp(3)


def test_missing_nll_fields_are_a_clear_error():
    samples = [sample("q1", ["a"], {"base": "a"}, nll={"base": (1.0, 1)}), sample("q2", ["b"], {"base": "b"})]
    with pytest.raises(MetricError, match=r"'perplexity' needs nll_sum.*item 'q2', system 'base'.*--metrics"):
        run(samples, ["perplexity"])


def _random_samples(n, seed=1):
    rng = random.Random(seed)
    words = "fever cough rash pain nausea fatigue chills headache swelling dizziness".split()
    out = []
    for i in range(n):
        ref = " ".join(rng.sample(words, 4))
        pred = " ".join(rng.sample(words, rng.randint(1, 5)))
        out.append(sample(f"q{i:03d}", [ref], {"base": pred, "tuned": ref if i % 3 else pred},
                          focus=f"f{i % 7}", qtype=("symptoms", "causes")[i % 2]))
    return out


def test_bootstrap_ci_contains_value_and_is_seeded():
    samples = _random_samples(60)
    r1, _ = run(copy.deepcopy(samples), ["token_f1", "fuzzy"], systems=("base", "tuned"), seed=3, n_bootstrap=500)
    r2, _ = run(copy.deepcopy(samples), ["token_f1", "fuzzy"], systems=("base", "tuned"), seed=3, n_bootstrap=500)
    r3, _ = run(copy.deepcopy(samples), ["token_f1", "fuzzy"], systems=("base", "tuned"), seed=4, n_bootstrap=500)
    assert r1 == r2
    assert r1["base"]["token_f1"]["ci_low"] != r3["base"]["token_f1"]["ci_low"]
    for system in r1.values():
        for v in system.values():
            assert v["ci_low"] < v["value"] < v["ci_high"] and v["n"] == 60
    # The percentile interval of the mean: compare with a direct numpy bootstrap of the same size.
    scored = copy.deepcopy(samples)
    res, _ = run(scored, ["token_f1"], n_bootstrap=2000)
    x = np.array([s["systems"]["base"]["scores"]["token_f1"] for s in scored])
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    assert res["base"]["token_f1"]["ci_high"] - res["base"]["token_f1"]["ci_low"] == pytest.approx(2 * half, rel=0.2)


def test_no_bootstrap_gives_zero_width_interval():
    results, _ = run(_random_samples(5), ["exact_match"], n_bootstrap=0)
    v = results["base"]["exact_match"]
    assert v["ci_low"] == v["value"] == v["ci_high"]


def test_distractors_are_deterministic_of_another_focus_and_order_free():
    samples = _random_samples(40)
    focus = {s["id"]: s["focus"] for s in samples}
    a = dict(zip([s["id"] for s in samples], assign_distractors(samples, seed=7)))
    shuffled = samples[:]
    random.Random(0).shuffle(shuffled)
    b = dict(zip([s["id"] for s in shuffled], assign_distractors(shuffled, seed=7)))
    assert a == b
    assert all(d is not None and focus[d] != focus[i] for i, d in a.items())
    c = dict(zip([s["id"] for s in samples], assign_distractors(samples, seed=8)))
    assert c != a
    same_focus = [sample(f"q{i}", ["x"], {"base": "x"}, focus="flu") for i in range(3)]
    assert assign_distractors(same_focus) == [None, None, None]


def test_distractor_scores_recorded_for_similarity_metrics_only():
    samples = _random_samples(12)
    run(samples, ["token_f1", "exact_match"], systems=("base", "tuned"), seed=5)
    by_id = {s["id"]: s for s in samples}
    for s in samples:
        d = s["distractor_id"]
        assert by_id[d]["focus"] != s["focus"]
        for system in ("base", "tuned"):
            rec = s["systems"][system]
            assert set(rec["distractor_scores"]) == {"token_f1"}
            expected = resolve_metrics(["token_f1"])[0].compute(
                predictions=[rec["prediction"]], references=[by_id[d]["references"][0]])[0]
            assert rec["distractor_scores"]["token_f1"] == pytest.approx(expected)


def test_nearest_qtype():
    samples = [
        sample("s1", ["fever chills and sweating"], {"base": "chills, fever"}, qtype="symptoms"),
        sample("s2", ["itchy red rash"], {"base": "take antihistamines for the rash"}, qtype="symptoms"),
        sample("t1", ["take antihistamines"], {"base": "rest"}, qtype="treatment"),
        sample("t2", ["rest and fluids"], {"base": "fever chills and sweating"}, qtype="treatment"),
    ]
    run(samples, ["token_f1", "fuzzy", "rougeL"])
    near = [s["systems"]["base"]["nearest_qtype"] for s in samples]
    assert near[0]["token_f1"][0] == "symptoms"
    assert near[1]["token_f1"] == ["treatment", pytest.approx(2 * 2 / (4 + 2))]  # "take antihistamines"
    assert near[3]["token_f1"] == ["symptoms", 1.0] and near[3]["fuzzy"] == ["symptoms", 1.0]
    assert all("rougeL" not in n for n in near)  # LCS metrics have no pairwise form
    single = [sample("a", ["x y"], {"base": "x"}), sample("b", ["y z"], {"base": "z"})]
    run(single, ["token_f1"])
    assert all("nearest_qtype" not in s["systems"]["base"] for s in single)


def test_embedding_references_encoded_once_per_run():
    [metric] = resolve_metrics(["embedding_similarity"])
    samples = [
        sample("s1", ["Fever and chills.", "High temperature."], {"base": "fever", "tuned": "chills"}, qtype="symptoms"),
        sample("t1", ["Rest and fluids."], {"base": "rest", "tuned": "fever"}, qtype="treatment"),
    ]
    before = metric.score.encoded
    score_samples(samples, [metric], ["base", "tuned"], progress=False)
    # distinct texts: 3 references + predictions fever, chills, rest -> 6, whatever the systems and N×N matrix
    assert metric.score.encoded - before == 6
    assert samples[0]["systems"]["tuned"]["nearest_qtype"]["embedding_similarity"][0] == "symptoms"


def _bad(name, fn):
    return Metric(name, True, fn, source=f"plugin:bad_{name}.py", bounds=(0, 1))


@pytest.mark.parametrize(
    "fn, message",
    [
        (lambda p, r, i: [1 / 0 if x["id"] == "q002" else 0.5 for x in i],
         r"'oops' \(plugin:bad_oops.py\) raised ZeroDivisionError on item 'q002', system 'base'"),
        (lambda p, r, i: [0.5] * (len(p) - 1), r"'oops' \(plugin:bad_oops.py\) returned \d+ scores for \d+ pairs"),
        (lambda p, r, i: [float("nan") if x["id"] == "q001" else 0.5 for x in i],
         r"'oops' \(plugin:bad_oops.py\) returned NaN for item 'q001'"),
        (lambda p, r, i: [float("inf")] * len(p), r"returned inf for item 'q000'"),
        (lambda p, r, i: ["high" if x["id"] == "q003" else 0.5 for x in i], r"returned str 'high' for item 'q003'"),
    ],
)
def test_bad_scores_name_metric_source_and_item(fn, message):
    with pytest.raises(MetricError, match=message):
        score_samples(_random_samples(5), [_bad("oops", fn)], ["base"], progress=False)


def test_malformed_samples():
    with pytest.raises(RunError, match="no record for system 'tuned'"):
        run([sample("q1", ["a"], {"base": "a"})], ["exact_match"], systems=("tuned",))
    with pytest.raises(RunError, match="appears twice"):
        run([sample("q1", ["a"], {"base": "a"})] * 2, ["exact_match"])
    with pytest.raises(MetricError, match="given twice"):
        score_samples([sample("q1", ["a"], {"base": "a"})], resolve_metrics(["fuzzy"]) * 2, ["base"], progress=False)
