"""Issue 31's new metrics: idf_token_f1, bm25_similarity, embedding_chunked_mean/maxsim, on hand-made texts.

Corpora are tiny MedQuAD-format CSVs written here (``corpus=PATH``), so the IDF values can be computed by hand; the
chunked metrics use the real all-MiniLM-L6-v2 on a few texts.
"""

from __future__ import annotations

import csv
import math
from collections import Counter

import numpy as np
import pytest

from medqa_bench.errors import MetricError
from medqa_bench.metrics import list_metrics, resolve_metrics
from medqa_bench.metrics.bm25sim import bm25_tokens, bm25_weights
from medqa_bench.metrics.idf import TermStatistics, weighted_f1
from medqa_bench.metrics.text import squad_tokens

NEW = ("idf_token_f1", "bm25_similarity", "embedding_chunked_mean", "embedding_chunked_maxsim")
DOCS = [
    "Gout causes sudden joint pain and swelling.",
    "Asthma narrows the airways and causes wheezing.",
    "A diet low in purines helps gout.",
    "Fever and cough are common in influenza.",
    "Joint pain can come with fever.",
]


def write_corpus(path, answers, qtype="symptoms"):
    """A MedQuAD-format CSV: one question per answer, distinct foci, so the grouped split keeps them apart."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["qtype", "Question", "Answer", "focus", "qid"])
        w.writeheader()
        for i, a in enumerate(answers):
            w.writerow({"qtype": qtype, "Question": f"What is condition {i}?", "Answer": a, "focus": f"c{i}",
                        "qid": f"q{i}"})
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    # 40 answers: the 80% training split holds enough of them to count in; every word of DOCS recurs.
    return str(write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.csv", DOCS * 8))


def metric(name, **params):
    [m] = resolve_metrics([name], params={name: params} if params else None)
    return m


def score(m, preds, refs):
    return m.compute(predictions=preds, references=refs).tolist()


# --------------------------------------------------------------------------------------------- IDF


def test_idf_values_by_hand():
    stats = TermStatistics.from_documents(["fever cough", "fever rash", "fever"], squad_tokens)
    assert stats.n_docs == 3 and stats.df == {"fever": 3, "cough": 1, "rash": 1}
    assert stats.avg_length == pytest.approx(5 / 3)
    assert stats.idf("fever") == pytest.approx(math.log(1 + 0.5 / 3.5))
    assert stats.idf("rash") == pytest.approx(math.log(1 + 2.5 / 1.5))
    assert stats.idf("never-seen") == pytest.approx(math.log(1 + 3.5 / 0.5))


def test_weighted_f1_by_hand_and_equal_weights_give_token_f1():
    pred, ref = Counter("fever fever cough".split()), Counter("fever rash".split())
    w = {"fever": 0.1, "cough": 2.0, "rash": 1.0}.get
    assert weighted_f1(pred, ref, w) == pytest.approx(2 * 0.1 / (0.1 * 2 + 2.0 + 0.1 + 1.0))
    # unit weights: SQuAD token F1 = 2·overlap / (|pred| + |ref|)
    assert weighted_f1(pred, ref, lambda t: 1.0) == pytest.approx(2 * 1 / 5)
    assert weighted_f1(Counter(), Counter(), w) == 1.0 and weighted_f1(pred, Counter(), w) == 0.0


def test_idf_token_f1_weights_rare_words(corpus):
    m = metric("idf_token_f1", corpus=corpus)
    tf1 = metric("token_f1")
    ref = "Gout causes joint pain."
    # Each answer shares one word with the reference, so token F1 ties; "gout" is in 2 of the 5 documents, "and"
    # in 3, so sharing "gout" weighs more.
    rare, common = "gout symptoms", "and symptoms"
    assert score(tf1, [rare], [ref + " and"]) == score(tf1, [common], [ref + " and"])
    s_rare, s_common = score(m, [rare, common], [ref + " and"] * 2)
    assert s_rare > s_common
    assert score(m, [ref], [ref]) == [1.0] and score(m, ["", ""], ["", "x"]) == [1.0, 0.0]
    assert all(0.0 <= s <= 1.0 for s in score(m, DOCS, DOCS[::-1]))


def test_idf_token_f1_pairwise_equals_score(corpus):
    m = metric("idf_token_f1", corpus=corpus)
    preds, refs = DOCS + ["", "fever"], DOCS[::-1] + [""]
    matrix = m.pairwise(preds, refs)
    for i, p in enumerate(preds):
        np.testing.assert_allclose(matrix[i], score(m, [p] * len(refs), refs), atol=1e-12)


# --------------------------------------------------------------------------------------------- BM25


def test_bm25_weights_equal_bm25s_scores():
    from medqa_bench.data.retrieval import BM25Index

    stats = TermStatistics.from_documents(DOCS, bm25_tokens)
    index = BM25Index.build(DOCS, ids=[str(i) for i in range(len(DOCS))])
    for k, doc in enumerate(DOCS):
        weights = bm25_weights(bm25_tokens(doc), stats, 1.5, 0.75)
        for query in ("joint pain fever", "gout", DOCS[k]):
            distinct = " ".join(dict.fromkeys(bm25_tokens(query)))
            expected = sum(w for t, w in weights.items() if t in set(bm25_tokens(query)))
            assert index.scores(distinct)[k] == pytest.approx(expected, rel=1e-5)


def test_bm25_similarity_bounds_and_forms(corpus):
    f1, recall = metric("bm25_similarity", corpus=corpus), metric("bm25_similarity", corpus=corpus, form="recall")
    ref = "Gout causes sudden joint pain and swelling."
    assert score(f1, [ref], [ref]) == [pytest.approx(1.0)]
    longer = ref + " Asthma narrows the airways. Fever and cough are common."
    s_recall, s_f1 = score(recall, [longer], [ref])[0], score(f1, [longer], [ref])[0]
    assert s_recall == pytest.approx(1.0) and s_f1 < 0.9  # recall does not punish the extra words; F1 does
    # a loop of the reference's words scores what the words once score: distinct query words
    assert score(f1, ["gout gout gout gout"], [ref]) == pytest.approx(score(f1, ["gout"], [ref]), rel=0.2)
    assert score(recall, ["gout gout gout gout"], [ref]) == pytest.approx(score(recall, ["gout"], [ref]))
    values = score(f1, DOCS + ["", "the of"], DOCS[::-1] + ["x y", "it is"])
    assert all(0.0 <= v <= 1.0 for v in values) and values[-1] == 1.0  # two texts without words agree
    with pytest.raises(MetricError, match="form must be one of"):
        metric("bm25_similarity", corpus=corpus, form="max")
    with pytest.raises(MetricError, match="k1 > 0"):
        metric("bm25_similarity", corpus=corpus, k1=0)


# --------------------------------------------------------------------------------------------- corpus, signatures


def test_signatures_name_the_corpus_and_parameters(corpus, tmp_path):
    other = str(write_corpus(tmp_path / "other.csv", DOCS[::-1] * 8))
    sig = metric("idf_token_f1", corpus=corpus).signature
    assert "corpus=corpus.csv@" in sig and "train(qtype=all,grouped-by-qtype,seed=42)" in sig
    assert metric("idf_token_f1", corpus=other).signature != sig
    b = metric("bm25_similarity", corpus=corpus).signature
    assert "k1=1.5,b=0.75" in b and "form=f1" in b
    assert len({b, metric("bm25_similarity", corpus=corpus, k1=0.9).signature,
                metric("bm25_similarity", corpus=corpus, form="recall").signature}) == 3
    m = metric("embedding_chunked_mean")
    assert "chunk_length=256,overlap=0" in m.signature
    assert metric("embedding_chunked_mean", chunk_length=128, overlap=16).signature != m.signature
    assert metric("embedding_chunked_maxsim").signature != m.signature


def test_the_corpus_is_the_training_split(tmp_path):
    # A word only in one validation/test answer has df 0: the statistics count training answers alone.
    from medqa_bench.data.dataset import DataSpec, SplitOptions, load_dataset
    from medqa_bench.metrics.idf import resolve_corpus

    answers = [f"answer number{i} common" for i in range(30)]
    path = write_corpus(tmp_path / "c.csv", answers)
    stats = resolve_corpus(path, "t").statistics("squad", squad_tokens)
    ds = load_dataset(DataSpec(path=str(path), qtype="all", split=SplitOptions(strategy="grouped-by-qtype")))
    train = {ex.answer for ex in ds.split("train")}
    assert stats.n_docs == len(train) < 30 and stats.df["common"] == len(train)
    held = [a.split()[1] for a in answers if a not in train]
    assert held and all(w not in stats.df for w in held)


def test_missing_corpus_is_one_line(tmp_path):
    with pytest.raises(MetricError, match="is not a file"):
        metric("idf_token_f1", corpus=str(tmp_path / "nope.csv"))


def test_listed_not_default_and_light_to_list():
    rows = {r["name"]: r for r in list_metrics()}
    for name in NEW:
        assert rows[name]["kind"] == "reference" and rows[name]["bounds"] == [0.0, 1.0], rows[name]
        assert rows[name]["default"] is False and rows[name]["source"] == "builtin"


# --------------------------------------------------------------------------------------------- chunked embedding


def test_chunk_windows():
    from medqa_bench.metrics.chunked import chunk_windows

    assert chunk_windows([], 4, 0) == [[]]
    assert chunk_windows(list(range(4)), 4, 0) == [[0, 1, 2, 3]]
    assert chunk_windows(list(range(5)), 4, 0) == [[0, 1, 2, 3], [4]]
    assert chunk_windows(list(range(10)), 4, 2) == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9]]


@pytest.fixture(scope="module")
def long_texts():
    """A reference of ~400 word pieces whose second half is about asthma, and an answer about asthma alone."""
    first = " ".join(["Gout is a form of arthritis that causes sudden pain and swelling in the big toe."] * 12)
    second = " ".join(["Asthma narrows the airways of the lungs and causes wheezing and shortness of breath."] * 12)
    return first + " " + second, second


def test_chunked_equals_plain_within_256_pieces_and_differs_beyond(long_texts):
    plain, mean, maxsim = metric("embedding_similarity"), metric("embedding_chunked_mean"), metric("embedding_chunked_maxsim")
    short = ["Gout causes joint pain.", "Fever and cough.", ""]
    refs = ["Gout is a kind of arthritis.", "Influenza brings fever.", "Something."]
    np.testing.assert_allclose(score(mean, short, refs), score(plain, short, refs), atol=1e-5)
    np.testing.assert_allclose(score(maxsim, short, refs), score(plain, short, refs), atol=1e-5)

    reference, asthma = long_texts
    from medqa_bench.metrics.chunked import _load_on

    tok, _ = _load_on(str(mean.score.path), "cpu")
    assert len(tok(reference, add_special_tokens=False, verbose=False)["input_ids"]) > 300
    [p] = score(plain, [asthma], [reference])
    [c] = score(mean, [asthma], [reference])
    [x] = score(maxsim, [asthma], [reference])
    # The plain metric reads only the gout half of the reference; the chunks read the asthma half too.
    assert c > p + 0.1 and x > p + 0.1
    assert 0.0 <= p <= 1.0 and 0.0 <= c <= 1.0 and 0.0 <= x <= 1.0


def test_chunked_mean_pairwise_and_shared_cache(long_texts):
    mean, maxsim = metric("embedding_chunked_mean", chunk_length=64), metric("embedding_chunked_maxsim", chunk_length=64)
    reference, asthma = long_texts
    preds, refs = [asthma, "Gout hurts."], [reference, "Asthma."]
    matrix = mean.pairwise(preds, refs)
    np.testing.assert_allclose(np.diag(matrix), score(mean, preds, refs), atol=1e-12)
    score(maxsim, preds, refs)
    assert maxsim.score.encoded_chunks == 0  # the mean metric's chunks, reused
    with pytest.raises(MetricError, match="whole number"):
        metric("embedding_chunked_mean", chunk_length="long")
    with pytest.raises(MetricError, match="overlap"):
        m = metric("embedding_chunked_mean", chunk_length=8, overlap=6)
        score(m, ["a b c d e f g h i j k"], ["x"])
