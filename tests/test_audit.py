"""The leakage and near-duplicate audit: planted duplicates found, dissimilar items left alone, bundled data."""

from __future__ import annotations

import json
import time

from medqa_bench.data.audit import NEAR_DUPLICATE_THRESHOLD, audit_items, normalize_text, summarize_audit
from medqa_bench.data.dataset import Example

ANSWERS = [
    "Gout attacks start suddenly at night with intense pain, redness and swelling of the big toe joint; the joint "
    "is hot and so tender that even a bed sheet hurts. Attacks last days to weeks and come back after months.",
    "Asthma narrows the airways: wheezing, a tight chest, coughing at night or early morning and shortness of "
    "breath, often set off by exercise, cold air, smoke or a respiratory infection.",
    "Measles begins with a high fever, runny nose, cough and red watery eyes; tiny white spots appear inside the "
    "mouth and a blotchy rash spreads from the face down the body three to five days later.",
    "Kidney stones may cause no symptoms until they move: then severe pain in the side and back spreads to the "
    "lower abdomen and groin, in waves, with pink or brown urine and nausea.",
]
QUESTIONS = [
    "What are the symptoms of gout?",
    "What are the symptoms of asthma?",
    "What are the symptoms of measles?",
    "What are the symptoms of kidney stones?",
]
TRAIN = [Example(f"t{i}", q, a) for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS))]


def test_planted_reference_duplicate_is_found_with_its_training_item():
    edited = ANSWERS[2].replace("high fever", "very high fever").replace("three to five", "3-5")
    item = Example("e1", "How does an infection with rubeola show itself?", edited)
    [record] = audit_items([item], TRAIN)
    assert record["reference"]["train_id"] == "t2" and record["reference"]["score"] >= 0.9
    assert record["question"]["score"] < 0.9
    assert record["near_duplicate"] is True
    json.dumps(record)  # JSON-ready


def test_dissimilar_item_is_not_flagged():
    item = Example("e2", "How is tinnitus treated?", "Hearing aids, sound therapy and counselling help most people "
                   "live with ringing in the ears; no drug removes it.")
    [record] = audit_items([item], TRAIN)
    assert record["reference"]["score"] < 0.6 and record["question"]["score"] < 0.9
    assert record["near_duplicate"] is False


def test_question_near_duplicate_is_flagged():
    item = Example("e3", "what are the  symptoms of Kidney Stones ?", "Nothing like any training answer, truly.")
    [record] = audit_items([item], TRAIN)
    assert record["question"] == {"score": record["question"]["score"], "train_id": "t3"}
    assert record["question"]["score"] >= 0.9 and record["reference"]["score"] < 0.9 and record["near_duplicate"]


def test_an_item_never_matches_itself():
    # With --split all the evaluated items are in the training list too: identical by id is not leakage.
    pool = TRAIN + [Example("e4", "What are the symptoms of chickenpox?", "An itchy blister rash, fever, tiredness.")]
    records = audit_items(pool, pool)
    assert all(r["reference"]["train_id"] != r["id"] and r["question"]["train_id"] != r["id"] for r in records)
    assert all(r["reference"]["score"] < 0.9 for r in records)
    # an exact copy under ANOTHER id is a duplicate
    copy = Example("copy", TRAIN[0].question, TRAIN[0].answer)
    [record] = audit_items([copy], pool)
    assert record["reference"] == {"score": 1.0, "train_id": "t0"} and record["question"]["score"] == 1.0


def test_normalisation_and_truncation():
    assert normalize_text("  Ｆever\u00a0and\n\nCOUGH ") == "fever and cough"
    long_a = "x" * 1500 + " entirely different tail " * 40
    long_b = "x" * 1500 + " nothing alike at all here " * 40
    [record] = audit_items([Example("e", "q one", long_a)], [Example("t", "q two", long_b)])
    assert record["reference"]["score"] == 1.0  # only the first 1,500 characters count


def test_summary_counts_and_histogram():
    items = [
        Example("p", "How does rubeola show itself?", ANSWERS[2].replace("high fever", "very high fever")),
        Example("q", "what are the symptoms of kidney stones", "Unrelated words about tinnitus and hearing aids."),
        Example("r", "How is tinnitus treated?", "Hearing aids and sound therapy help with ringing in the ears."),
    ]
    records = audit_items(items, TRAIN)
    summary = summarize_audit(records)
    assert summary["ran"] and summary["threshold"] == NEAR_DUPLICATE_THRESHOLD
    assert summary["n_items"] == 3 and summary["n_near_duplicates"] == 2
    assert summary["by"] == {"reference": 1, "question": 1, "both": 0}
    assert summary["histogram"]["edges"][0] == 0.0 and summary["histogram"]["edges"][-1] == 1.0
    assert sum(summary["histogram"]["reference"]) == sum(summary["histogram"]["question"]) == 3
    assert "fuzz.ratio" in summary["definition"] and "BM25" in summary["definition"]
    json.dumps(summary)
    assert summarize_audit(records, threshold=0.5)["n_near_duplicates"] >= 2


def test_empty_training_split_cannot_run():
    records = audit_items(TRAIN[:2], [])
    assert records[0] == {"id": "t0", "reference": {"score": None, "train_id": None},
                          "question": {"score": None, "train_id": None}, "near_duplicate": False}
    summary = summarize_audit(records)
    assert summary["ran"] is False and "no training split" in summary["note"] and summary["n_near_duplicates"] == 0


def test_bundled_symptoms_test_split(symptoms):
    test, train = symptoms.split("test"), symptoms.split("train")
    start = time.perf_counter()
    records = audit_items(test, train)
    seconds = time.perf_counter() - start
    summary = summarize_audit(records)
    print(f"\naudit of {len(test)} symptoms test items against {len(train)} training items: {seconds:.2f} s; "
          f"near-duplicates {summary['n_near_duplicates']} (reference {summary['by']['reference']}, "
          f"question {summary['by']['question']}, both {summary['by']['both']})")
    train_ids = {e.id for e in train}
    assert len(records) == len(test) == 266
    assert all(r[side]["train_id"] in train_ids for r in records for side in ("reference", "question"))
    assert all(0.0 <= r[side]["score"] <= 1.0 for r in records for side in ("reference", "question"))
    # grouped split: no test question equals a training question after normalisation
    assert all(r["question"]["score"] < 1.0 for r in records)
