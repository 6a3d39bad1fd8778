"""BM25 similarity: how much of each text's BM25 weight the other text's words cover, in [0, 1].

Words are the project's BM25 tokens (:mod:`medqa_bench.data.retrieval`: lower case, the pattern ``\\b\\w\\w+\\b``, Lucene's
33 English stop words removed, no stemmer); IDF and the mean document length come from the training corpus of
:mod:`medqa_bench.metrics.idf` (MedQuAD's training answers by default, ``corpus=PATH`` otherwise). A text ``d`` gives
each of its words the Lucene BM25 weight::

    w_d(t) = idf(t) * tf_d(t) / (tf_d(t) + k1 * (1 - b + b * |d| / avgdl))

which is what ``bm25s`` (``method="lucene"``) scores for ``t`` in ``d``. Querying ``d`` with the distinct words of
another text ``q`` scores ``sum_{t in q} w_d(t)``; querying it with its own words scores the most any query can,
``sum_{t in d} w_d(t)``. So::

    recall    = BM25(query = the answer's words,    document = the reference) / BM25(reference's words, reference)
    precision = BM25(query = the reference's words, document = the answer)    / BM25(answer's words, answer)
    bm25_similarity = 2 * precision * recall / (precision + recall)      (form="f1", the default)
    bm25_similarity = recall                                             (form="recall")

Recall alone never punishes an answer for words the reference lacks, so a long answer that names everything scores
high; the F1 form asks for both directions. A query word counts once however often it repeats, so a looping answer
gains nothing by its loop. Two texts without words agree (1.0); one without words scores 0.

>>> stats = TermStatistics.from_documents(["gout causes joint pain", "asthma narrows airways", "a diet for gout"],
...                                       bm25_tokens)
>>> round(bm25_f1("joint pain", "gout causes joint pain", stats), 3)
0.73
"""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from typing import Sequence

from ..errors import MetricError
from .base import Metric
from .idf import IDF_FORMULA, TermStatistics, resolve_corpus

CITATION = "Robertson and Zaragoza, The Probabilistic Relevance Framework: BM25 and Beyond, 2009."
FORMS = ("f1", "recall")
_WORD = re.compile(r"(?u)\b\w\w+\b")  # medqa_bench.data.retrieval.TOKEN_PATTERN


@functools.lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from ..data.retrieval import _bm25s  # bm25s imported as the retriever imports it (JAX kept off the GPU)

    return frozenset(_bm25s().stopwords.STOPWORDS_EN)


def bm25_tokens(text: str) -> list[str]:
    """The tokens ``medqa_bench.data.retrieval.BM25Index`` indexes: lower case, ``\\b\\w\\w+\\b``, stop words dropped."""
    stop = _stopwords()
    return [w for w in _WORD.findall(text.lower()) if w not in stop]


def bm25_weights(tokens: Sequence[str], stats: TermStatistics, k1: float, b: float) -> dict[str, float]:
    """Each distinct token's Lucene BM25 weight in the text ``tokens``."""
    tf = Counter(tokens)
    norm = k1 * (1.0 - b + b * len(tokens) / stats.avg_length) if stats.avg_length > 0 else k1
    return {t: stats.idf(t) * c / (c + norm) for t, c in tf.items()}


def bm25_f1(prediction: str, reference: str, stats: TermStatistics, *, k1: float = 1.5, b: float = 0.75,
            form: str = "f1") -> float:
    """The metric's value for one pair (see the module docstring)."""
    wp = bm25_weights(bm25_tokens(prediction), stats, k1, b)
    wr = bm25_weights(bm25_tokens(reference), stats, k1, b)
    return _combine(wp, wr, form)


def _combine(wp: dict[str, float], wr: dict[str, float], form: str) -> float:
    if not wp or not wr:
        return float(not wp and not wr)
    recall = sum(w for t, w in wr.items() if t in wp) / sum(wr.values())
    if form == "recall":
        return recall
    precision = sum(w for t, w in wp.items() if t in wr) / sum(wp.values())
    return 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


class BM25Similarity:
    """The score function of ``bm25_similarity``; the corpus statistics load at the first call."""

    def __init__(self, corpus, *, k1: float, b: float, form: str):
        self.corpus, self.k1, self.b, self.form = corpus, k1, b, form
        self._stats: TermStatistics | None = None

    def __call__(self, predictions, references, items):
        if self._stats is None:
            self._stats = self.corpus.statistics("bm25", bm25_tokens)
        weights: dict[str, dict[str, float]] = {}

        def get(text: str) -> dict[str, float]:
            if text not in weights:
                weights[text] = bm25_weights(bm25_tokens(text), self._stats, self.k1, self.b)
            return weights[text]

        return [_combine(get(p), get(r), self.form) for p, r in zip(predictions, references)]


def bm25_similarity(corpus: str | os.PathLike | None = None, k1: float = 1.5, b: float = 0.75,
                    form: str = "f1") -> Metric:
    """BM25 of the answer against the reference and back, each over its self-score (see the module docstring).

    ``corpus``: a MedQuAD-format file whose training split gives IDF and the mean length (None: the fetched
    MedQuAD); ``k1``, ``b``: BM25's, the retriever's defaults; ``form``: ``"f1"`` or ``"recall"``.
    """
    if form not in FORMS:
        raise MetricError(f"bm25_similarity: form must be one of {', '.join(FORMS)}, not {form!r}")
    try:
        k1, b = float(k1), float(b)
    except (TypeError, ValueError):
        raise MetricError(f"bm25_similarity: k1 and b must be numbers, not {k1!r} and {b!r}") from None
    if not (k1 > 0 and 0 <= b <= 1):
        raise MetricError(f"bm25_similarity: needs k1 > 0 and 0 <= b <= 1, not k1={k1}, b={b}")
    source = resolve_corpus(corpus, "bm25_similarity")
    return Metric(
        name="bm25_similarity",
        higher_is_better=True,
        score=BM25Similarity(source, k1=k1, b=b, form=form),
        signature=(
            f"bm25_similarity|tokens=bm25s(lower,\\b\\w\\w+\\b,stopwords=en)|lucene,k1={k1:g},b={b:g}|{IDF_FORMULA}"
            f"|form={form},distinct-query-words|{source.description}"
        ),
        bounds=(0.0, 1.0),
        citation=CITATION,
    )
