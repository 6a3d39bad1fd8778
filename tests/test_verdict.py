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
