"""Degeneration statistics on hand-made texts whose values are worked out by hand in the comments."""

from __future__ import annotations

import json

import pytest

from medqa_bench.analysis.degeneration import (WARNING_THRESHOLDS, degeneration_stats, degeneration_warnings,
    stop_reason, text_repetition, words)


def _sample(i, ref, **systems):
    return {"id": f"q{i}", "reference": ref, "references": [ref], "systems": systems}


def test_words_are_lowercased_word_tokens():
    assert words("Take 2 pills, TWICE a-day!") == ["take", "2", "pills", "twice", "a", "day"]
    assert words(None) == [] and words("  ...  ") == []


def test_loop_repetition_and_distinct_2():
    # 12 words -> 12 - 4 + 1 = 9 4-grams: abcd bcda cdab dabc | abcd bcda cdab dabc abcd.
    # The first four are new, the other 5 repeat an earlier one: 5/9.
    # 11 bigrams: ab bc cd da ab bc cd da ab bc cd -> 4 distinct: 4/11.
    rep, dist = text_repetition("a b c d a b c d a b c d")
    assert rep == pytest.approx(5 / 9)
    assert dist == pytest.approx(4 / 11)


def test_no_repetition():
    # 6 distinct words: 3 4-grams, all different -> 0/3; 5 bigrams, all different -> 5/5.
    assert text_repetition("drink fluids and rest at home") == (0.0, 1.0)


def test_distinct_2_of_a_known_string_and_case_folding():
    # "The cat the cat sat" -> the cat the cat sat: bigrams (the,cat) (cat,the) (the,cat) (cat,sat)
    # -> 3 distinct of 4 = 0.75; 2 4-grams (the cat the cat) (cat the cat sat): no repeat -> 0.
    assert text_repetition("The cat the cat sat") == (0.0, 0.75)
    # "x x x x x": 2 4-grams, identical -> 1/2; 4 bigrams, one distinct -> 1/4.
    assert text_repetition("x x x x x") == (0.5, 0.25)


def test_short_texts_have_no_value():
    assert text_repetition("") == (None, None)
    assert text_repetition("one") == (None, None)
    assert text_repetition("one two three") == (None, 1.0)  # 3 words: no 4-gram; bigrams 2 of 2


def test_stop_reason_from_new_and_old_records():
    assert stop_reason({"stop_reason": "stop", "truncated": False}) == "stop"
    assert stop_reason({"stop_reason": None}) is None  # a reference row
    assert stop_reason({"truncated": True}) == "length"  # older record
    assert stop_reason({"truncated": False}) == "eos"
    assert stop_reason({"prediction": "x"}) is None


def test_stats_per_system():
    ref = "one two three four"  # 4 words
    samples = [
        # ft: eos, 4 words, no repetition: rep 0, distinct 3/3, ratio 4/4 = 1
        _sample(1, ref, ft={"prediction": "w x y z", "stop_reason": "eos"}),
        # ft: stop sequence, empty: no rep, no distinct, ratio 0/4 = 0
        _sample(2, ref, ft={"prediction": "   ", "stop_reason": "stop"}),
        # ft: length, "a a a a a a" 6 words: 3 identical 4-grams -> 2/3; 5 bigrams, 1 distinct -> 1/5; ratio 6/4
        _sample(3, ref, ft={"prediction": "a a a a a a", "stop_reason": "length"}),
        # ft: old record, truncated False -> eos; 2 words: no 4-gram, distinct 1/1; ratio 2/4
        _sample(4, ref, ft={"prediction": "p q", "truncated": False}),
        # empty reference: counted everywhere except length_ratio; 1 word -> no rep, no distinct
        _sample(5, "", ft={"prediction": "alone", "stop_reason": "eos"}),
    ]
    st = degeneration_stats(samples, ["ft"])["ft"]
    assert st["n"] == 5
    assert st["stop_rate"] == pytest.approx(4 / 5)  # eos, stop, eos(old), eos of 5 known
    assert st["truncation_share"] == pytest.approx(1 / 5)
    assert st["stop_reasons"] == {"eos": 3, "length": 1, "stop": 1}
    assert st["empty_share"] == pytest.approx(1 / 5)
    assert st["repeated_4gram_share"] == pytest.approx((0 + 2 / 3) / 2)  # items 1 and 3 have >= 4 words
    assert st["distinct_2"] == pytest.approx((1 + 1 / 5 + 1) / 3)  # items 1, 3, 4 have >= 2 words
    # ratios of items 1-4: 1, 0, 1.5, 0.5 -> sorted 0, 0.5, 1, 1.5 -> median (0.5 + 1) / 2
    assert st["length_ratio"] == pytest.approx(0.75)
    json.dumps(st)


def test_first_reference_falls_back_to_references_and_missing_systems_are_not_counted():
    samples = [
        {"id": "q1", "references": ["a b"], "systems": {"ft": {"prediction": "a b c d", "stop_reason": "eos"}}},
        {"id": "q2", "reference": "a b", "systems": {"other": {"prediction": "x"}}},  # no ft record
    ]
    st = degeneration_stats(samples, ["ft"])["ft"]
    assert st["n"] == 1
    assert st["length_ratio"] == 2.0  # 4 words / 2 words


def test_reference_rows_have_no_stop_statistics():
    samples = [
        _sample(1, "a b c d", retrieval={"prediction": "a b c d e f g h", "stop_reason": None}),
        _sample(2, "a b c d", retrieval={"prediction": "a b", "stop_reason": None, "truncated": None}),
    ]
    st = degeneration_stats(samples, ["retrieval"])["retrieval"]
    assert st["stop_rate"] is None and st["truncation_share"] is None and st["stop_reasons"] == {}
    assert st["n"] == 2 and st["empty_share"] == 0.0
    assert st["length_ratio"] == pytest.approx((2.0 + 0.5) / 2)
    assert not any(w["code"] == "truncation" for w in degeneration_warnings({"retrieval": st}))


def test_system_without_items_gives_none():
    st = degeneration_stats([_sample(1, "a", ft={"prediction": "a"})], ["ghost"])["ghost"]
    assert st["n"] == 0
    assert all(st[k] is None for k in ("stop_rate", "empty_share", "repeated_4gram_share", "distinct_2",
                                       "length_ratio"))


def _healthy(**over):
    st = {"n": 10, "stop_rate": 1.0, "truncation_share": 0.0, "empty_share": 0.0,
          "repeated_4gram_share": 0.0, "distinct_2": 0.95, "length_ratio": 1.0}
    return {**st, **over}


@pytest.mark.parametrize(
    "stat, warn_value, quiet_value, code",
    [
        ("empty_share", 0.06, 0.05, "empty"),
        ("truncation_share", 0.26, 0.25, "truncation"),
        ("repeated_4gram_share", 0.21, 0.20, "repetition"),
        ("distinct_2", 0.49, 0.50, "low_diversity"),
        ("length_ratio", 0.32, 0.33, "too_short"),
        ("length_ratio", 3.01, 3.0, "too_long"),
    ],
)
def test_warnings_above_and_below_each_threshold(stat, warn_value, quiet_value, code):
    assert WARNING_THRESHOLDS[code]["stat"] == stat
    assert degeneration_warnings({"ft": _healthy(**{stat: quiet_value})}) == []  # equal to the threshold: quiet
    warns = degeneration_warnings({"ft": _healthy(**{stat: warn_value})})
    assert [w["code"] for w in warns] == [code]
    w = warns[0]
    assert w["system"] == "ft" and w["value"] == warn_value
    assert w["threshold"] == WARNING_THRESHOLDS[code]["threshold"]
    assert "ft" in w["message"] and WARNING_THRESHOLDS[code]["reason"] in w["message"]
    json.dumps(warns)


def test_truncation_message_names_the_budget():
    st = {"ft": _healthy(truncation_share=0.98, stop_rate=0.02)}
    (w,) = degeneration_warnings(st, max_new_tokens=512)
    assert w == {
        "code": "truncation",
        "system": "ft",
        "value": 0.98,
        "threshold": 0.25,
        "message": "98% of ft's answers hit the 512-token budget: overlap metrics compare cut-off text",
    }
    (w,) = degeneration_warnings(st)
    assert "max_new_tokens" in w["message"] and "512" not in w["message"]


def test_small_shares_keep_a_decimal_and_skip_and_order():
    stats = {
        "ft": _healthy(empty_share=0.051, distinct_2=0.31),
        "retrieval": _healthy(length_ratio=5.0),
        "baseline": _healthy(),
    }
    warns = degeneration_warnings(stats)
    assert [(w["system"], w["code"]) for w in warns] == [("ft", "empty"), ("ft", "low_diversity"),
                                                         ("retrieval", "too_long")]
    assert warns[0]["message"].startswith("5.1% of ft's answers are empty")
    assert "0.31" in warns[1]["message"] and "5.00x" in warns[2]["message"]
    assert [w["system"] for w in degeneration_warnings(stats, skip=["retrieval"])] == ["ft", "ft"]
