"""Reference rows (retrieval, boilerplate, question) and the BM25 index under them, on hand-made and bundled data."""

from __future__ import annotations

import pytest

from medqa_bench.data.dataset import Example
from medqa_bench.errors import SpecError
from medqa_bench.data.reference_rows import (REFERENCE_ROWS, ReferenceAnswer, describe_reference_row,
    reference_answers, typicality)
from medqa_bench.data.retrieval import BM25Index

TRAIN = [
    Example("t1", "What are the symptoms of gout?", "Sudden severe pain and swelling in the big toe joint."),
    Example("t2", "What are the symptoms of asthma?", "Wheezing, coughing at night and shortness of breath."),
    Example("t3", "How is measles diagnosed?", "A blood test for measles antibodies confirms it."),
    Example("t4", "What causes kidney stones?", "Too little water and too much salt concentrate minerals."),
    Example("t5", "Who gets psoriasis?", "Adults between fifteen and thirty-five most often develop psoriasis."),
]
ITEMS = [
    Example("e1", "Which symptoms does asthma cause?", "EVALREF_ASTHMA_7Q2 narrowed airways."),
    Example("e2", "What causes stones in the kidney?", "EVALREF_KIDNEY_9X4 crystals form."),
]


def test_retrieval_picks_the_paraphrased_training_question():
    answers = reference_answers("retrieval", ITEMS, TRAIN)
    assert [a.text for a in answers] == [TRAIN[1].answer, TRAIN[3].answer]
    assert [a.source["train_id"] for a in answers] == ["t2", "t4"]
    assert all(isinstance(a.source["score"], float) and a.source["score"] > 0 for a in answers)


def test_retrieval_never_returns_an_evaluated_items_own_reference():
    # The evaluated items are also in the "training" list (as with --split all): their own references, which carry
    # a unique planted token, must never come back; each finds the nearest OTHER training question instead.
    pool = TRAIN + ITEMS
    answers = reference_answers("retrieval", ITEMS, pool)
    assert not any("EVALREF_" in a.text for a in answers)
    assert [a.source["train_id"] for a in answers] == ["t2", "t4"]
    # a near-copy of an evaluated question in the pool under another id is fair game (that is leakage, not self)
    twin = Example("twin", ITEMS[0].question, "twin answer")
    assert reference_answers("retrieval", ITEMS[:1], [*pool, twin])[0].source["train_id"] == "twin"


def test_boilerplate_picks_the_most_typical_answer_for_every_item():
    train = [
        Example("a", "q1", "Fever, cough and fatigue, with a rash on the arms."),
        Example("b", "q2", "Fever, cough and fatigue."),  # the core the others share, and nothing else
        Example("c", "q3", "Fever, cough and fatigue after long flights abroad."),
        Example("d", "q4", "Tattoo ink allergies produce itchy red bumps."),
        Example("e", "q5", "Fever and cough in toddlers during winter months."),
    ]
    scores = typicality([t.answer for t in train])
    assert max(range(5), key=lambda i: (scores[i], -i)) == 1 and scores[3] == min(scores)
    answers = reference_answers("boilerplate", ITEMS, train)
    assert {a.text for a in answers} == {train[1].answer}
    assert all(a.source["train_id"] == "b" for a in answers)
    # the chosen item itself, when evaluated, gets the runner-up: never its own reference
    own = reference_answers("boilerplate", [train[1]], train)[0]
    assert own.source["train_id"] != "b" and own.text != train[1].answer


def test_boilerplate_ties_go_to_the_first():
    train = [Example("x", "q", "same words here"), Example("y", "q2", "same words here")]
    assert reference_answers("boilerplate", ITEMS[:1], train)[0].source["train_id"] == "x"


def test_question_row_gives_the_questions_back():
    assert reference_answers("question", ITEMS, []) == [ReferenceAnswer(e.question, None) for e in ITEMS]


@pytest.mark.parametrize("method", ["retrieval", "boilerplate"])
def test_empty_training_split_is_an_actionable_error(method):
    with pytest.raises(SpecError) as err:
        reference_answers(method, ITEMS, [])
    message = str(err.value)
    assert "training split" in message and f"drop the '{method}' reference row" in message and "\n" not in message


def test_unknown_method_suggests_the_valid_ones():
    with pytest.raises(SpecError, match=r"unknown reference row 'retreival'; did you mean 'retrieval'\? choose from: "
                                        r"retrieval, boilerplate, question"):
        reference_answers("retreival", ITEMS, TRAIN)
    with pytest.raises(SpecError, match="unknown reference row"):
        describe_reference_row("oracle")


def test_descriptions_are_one_sentence_each():
    for method in REFERENCE_ROWS:
        text = describe_reference_row(method)
        assert text.count(". ") == 0 and text.endswith(".") and "no model" in text


def test_retrieval_on_bundled_test_split_returns_only_training_answers(symptoms):
    train, test = symptoms.split("train"), symptoms.split("test")
    answers = reference_answers("retrieval", test, train)
    train_by_id = {e.id: e for e in train}
    test_ids = {e.id for e in test}
    assert len(answers) == len(test)
    for a in answers:
        assert a.source["train_id"] in train_by_id and a.source["train_id"] not in test_ids
        assert a.text == train_by_id[a.source["train_id"]].answer
    boiler = reference_answers("boilerplate", test, train)
    assert len({a.text for a in boiler}) == 1 and boiler[0].source["train_id"] in train_by_id


# ------------------------------------------------------------------------------------------------ BM25Index


def test_bm25_ranks_ties_by_position_and_handles_empty_queries():
    index = BM25Index.build(["gout pain", "asthma airways", "gout pain", "the of"], ["a", "b", "c", "d"])
    assert [i for i, _ in index.search(["gout"], k=3)[0]] == ["a", "c", "b"]  # a and c tie: first wins
    # empty, stop words only, unknown words: score 0 everywhere, so the first texts by position
    for query in ("", "the of and", "zzzz"):
        assert index.search([query], k=2) == [[("a", 0.0), ("b", 0.0)]]
    assert index.search(["gout"], k=10)[0][-1][1] == 0.0 and len(index.search(["gout"], k=10)[0]) == 4
    assert [i for i, _ in index.search(["gout"], k=1, exclude=[["a"]])[0]] == ["c"]
    assert BM25Index.build([], []).search(["gout"], k=3) == [[]]


def test_bm25_is_deterministic_and_described():
    texts = [f"symptom {i % 3} fever {i % 5}" for i in range(30)]
    ids = [str(i) for i in range(30)]
    first = BM25Index.build(texts, ids).search(["fever 2", "symptom 1"], k=7)
    assert first == BM25Index.build(texts, ids).search(["fever 2", "symptom 1"], k=7)
    d = BM25Index.build(texts, ids).describe()
    assert d["library"] == "bm25s" and d["version"] and (d["k1"], d["b"]) == (1.5, 0.75)
    assert d["tokenizer"]["stopwords"].startswith("bm25s 'en'") and d["n_documents"] == 30


def test_reference_rows_record_their_settings():
    from medqa_bench.data.reference_rows import method_settings

    r = method_settings("retrieval")
    assert r["library"] == "bm25s" and r["version"] and (r["k1"], r["b"]) == (1.5, 0.75) and "n_documents" not in r
    assert method_settings("boilerplate")["scikit-learn"] and method_settings("question") == {}
    with pytest.raises(Exception):
        method_settings("oracle")
