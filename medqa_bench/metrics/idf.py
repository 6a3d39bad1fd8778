"""Term statistics of a training corpus, and the IDF-weighted token F1 that uses them.

**The corpus.** A metric that weights words by how rare they are needs documents to count them in. By default they
are the training answers of the fetched MedQuAD (:func:`medqa_bench.storage.paths.default_dataset`): every question type,
split as ``--qtype all --split-strategy grouped-by-qtype`` splits it (seed 42, 80/10/10), so no validation or test
item of any question type, the default run's symptoms test items included, is among the documents; each distinct
reference answer of a training item is one document (6,147 of them). ``corpus=PATH`` takes the training split of
another MedQuAD-format table (CSV or JSONL with MedQuAD's columns) the same way. The statistics are computed on first
use (about a second), kept in memory per process, and named in the metric's signature by the file's sha256 and the
split, so a run scored against other documents never looks comparable.

No grade and no judged answer goes into the statistics by construction; but the expert-judged set's answers are
MedQuAD answers, and about 270 of its 2,479 are also training documents (each adds 1 to the document frequency of its
words, out of ~6,000 documents).

**IDF** is Lucene's BM25 form, the one ``bm25s`` and :mod:`medqa_bench.data.retrieval` use, for every metric here::

    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

with ``N`` documents of which ``df(t)`` contain ``t``: always positive, near 0 for a word in every document, and
ln(2N + 2) for a word the corpus never uses.

**idf_token_f1** is SQuAD token F1 with every token weighted by its IDF: SQuAD-normalised tokens
(:func:`medqa_bench.metrics.text.squad_tokens`), document frequencies counted on those tokens, and::

    overlap = sum_t idf(t) * min(count_pred(t), count_ref(t))
    idf_token_f1 = 2 * overlap / (sum_t idf(t) * count_pred(t) + sum_t idf(t) * count_ref(t))

(weighted precision overlap / W_pred and recall overlap / W_ref, their harmonic mean). With equal weights it is
``token_f1``. Two answers without tokens agree (1.0), one empty answer scores 0, as in SQuAD.

>>> stats = TermStatistics.from_documents(["fever and cough", "fever and rash", "fever"], squad_tokens)
>>> round(stats.idf("fever"), 3), round(stats.idf("rash"), 3), round(stats.idf("unseen"), 3)
(0.134, 0.981, 2.079)
"""

from __future__ import annotations

import functools
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import MetricError
from .base import Metric
from .text import SQUAD_CITATION, squad_tokens

#: How the corpus's training split is made: every question type, grouped by question type, the data's default seed.
CORPUS_SPLIT = "train(qtype=all,grouped-by-qtype,seed=42)"
IDF_FORMULA = "idf=ln(1+(N-df+0.5)/(df+0.5))"
IDF_CITATION = "Sparck Jones, A statistical interpretation of term specificity and its application in retrieval, 1972."


@dataclass(frozen=True)
class TermStatistics:
    """Document frequencies of one tokenizer's tokens over a corpus: ``n_docs``, ``df``, the mean document length."""

    n_docs: int
    df: dict[str, int]
    avg_length: float

    @classmethod
    def from_documents(cls, documents: Sequence[str], tokenize: Callable[[str], list[str]]) -> "TermStatistics":
        df: Counter = Counter()
        total = 0
        for doc in documents:
            tokens = tokenize(doc)
            total += len(tokens)
            df.update(set(tokens))
        return cls(len(documents), dict(df), total / len(documents) if documents else 0.0)

    def idf(self, token: str) -> float:
        df = self.df.get(token, 0)
        return math.log(1.0 + (self.n_docs - df + 0.5) / (df + 0.5))


@dataclass(frozen=True)
class Corpus:
    """Where a metric's term statistics come from: a MedQuAD-format file, read on first use."""

    path: Path
    fingerprint: str  # sha256 of the file, as the data loader computes it

    @property
    def description(self) -> str:
        return f"corpus={self.path.name}@{self.fingerprint[:12]}:{CORPUS_SPLIT}"

    def documents(self) -> list[str]:
        return list(_documents(str(self.path), self.fingerprint))

    def statistics(self, tokenizer: str, tokenize: Callable[[str], list[str]]) -> TermStatistics:
        """The statistics for ``tokenize`` (named ``tokenizer`` in the cache), computed once per process."""
        key = (str(self.path), self.fingerprint, tokenizer)
        if key not in _STATISTICS:
            _STATISTICS[key] = TermStatistics.from_documents(self.documents(), tokenize)
        return _STATISTICS[key]


_STATISTICS: dict[tuple[str, str, str], TermStatistics] = {}


@functools.lru_cache(maxsize=4)
def _documents(path: str, fingerprint: str) -> tuple[str, ...]:
    from ..data.dataset import DataSpec, SplitOptions, load_dataset

    dataset = load_dataset(DataSpec(path=path, qtype="all", split=SplitOptions(strategy="grouped-by-qtype")))
    docs = dict.fromkeys(ref for ex in dataset.split("train") for ref in ex.references)
    if not docs:
        raise MetricError(f"the corpus {path} has no training answers to count words in; give another corpus=PATH")
    return tuple(docs)


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    from ..storage.fingerprint import sha256_file

    return sha256_file(path)


def resolve_corpus(corpus: str | os.PathLike | None, metric: str) -> Corpus:
    """The corpus a metric's ``corpus`` parameter names (None: the fetched MedQuAD), or a :class:`MetricError`."""
    from ..errors import DataError
    from ..storage.paths import default_dataset

    if corpus is None:
        try:
            path = default_dataset()
        except DataError as exc:
            raise MetricError(f"{metric}: its IDF corpus is the MedQuAD training split; {exc}") from None
    else:
        path = Path(corpus).expanduser().resolve()
        if not path.is_file():
            raise MetricError(f"{metric}: corpus {path} is not a file; give a MedQuAD-format CSV or JSONL")
    stat = path.stat()
    return Corpus(path, _file_digest(str(path), stat.st_size, stat.st_mtime_ns))


# --------------------------------------------------------------------------------------------- idf_token_f1


def weighted_f1(pred: Counter, ref: Counter, weight: Callable[[str], float]) -> float:
    """2 · Σ_t w(t)·min(pred_t, ref_t) / (Σ_t w(t)·pred_t + Σ_t w(t)·ref_t); SQuAD's rule for empty bags."""
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum(weight(t) * min(c, ref[t]) for t, c in pred.items() if t in ref)
    total = sum(weight(t) * c for t, c in pred.items()) + sum(weight(t) * c for t, c in ref.items())
    return 2.0 * overlap / total if total > 0 else 0.0


class IdfTokenF1:
    """The score and pairwise functions of ``idf_token_f1``; the statistics load at the first call."""

    def __init__(self, corpus: Corpus):
        self.corpus = corpus
        self._stats: TermStatistics | None = None
        self._idf: dict[str, float] = {}

    def weight(self, token: str) -> float:
        if token not in self._idf:
            if self._stats is None:
                self._stats = self.corpus.statistics("squad", squad_tokens)
            self._idf[token] = self._stats.idf(token)
        return self._idf[token]

    def __call__(self, predictions, references, items):
        bags: dict[str, Counter] = {}

        def bag(text: str) -> Counter:
            return bags[text] if text in bags else bags.setdefault(text, Counter(squad_tokens(text)))

        return [weighted_f1(bag(p), bag(r), self.weight) for p, r in zip(predictions, references)]

    def pairwise(self, predictions, references):
        """Every prediction against every reference: the multiset trick of ``overlap_f1_matrix`` with weights."""
        import numpy as np
        from scipy import sparse

        vocab: dict = {}
        weights: list[float] = []

        def matrix(texts):
            rows, cols = [], []
            for r, text in enumerate(texts):
                seen: Counter = Counter()
                for tok in squad_tokens(text):
                    seen[tok] += 1
                    key = (tok, seen[tok])
                    if key not in vocab:
                        vocab[key] = len(vocab)
                        weights.append(self.weight(tok))
                    rows.append(r)
                    cols.append(vocab[key])
            return rows, cols

        (ra, ca), (rb, cb) = matrix(predictions), matrix(references)
        w = np.asarray(weights, dtype=np.float64)
        size = max(len(vocab), 1)
        a = sparse.csr_matrix((np.ones(len(ra)), (ra, ca)), shape=(len(predictions), size))
        b = sparse.csr_matrix((np.ones(len(rb)), (rb, cb)), shape=(len(references), size))
        if not len(w):
            w = np.zeros(1)
        overlap = (a.multiply(w[None, :]) @ b.T).toarray()
        wa, wb = a @ w, b @ w
        na, nb = np.asarray(a.sum(axis=1)).ravel(), np.asarray(b.sum(axis=1)).ravel()
        denom = wa[:, None] + wb[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(denom > 0, 2.0 * overlap / np.where(denom > 0, denom, 1.0), 0.0)
        both_empty = (na[:, None] == 0) & (nb[None, :] == 0)
        return np.where(both_empty, 1.0, f1)


def idf_token_f1(corpus: str | os.PathLike | None = None) -> Metric:
    """SQuAD token F1 with each token weighted by its IDF in a training corpus (see the module docstring).

    ``corpus``: a MedQuAD-format CSV/JSONL whose training split gives the documents; None: the fetched MedQuAD.
    """
    source = resolve_corpus(corpus, "idf_token_f1")
    fn = IdfTokenF1(source)
    return Metric(
        name="idf_token_f1",
        higher_is_better=True,
        score=fn,
        signature=f"idf_token_f1|norm=squad(nfkc,lower,punct,articles,ws)|weighted-f1|{IDF_FORMULA}|{source.description}",
        bounds=(0.0, 1.0),
        citation=f"{SQUAD_CITATION} {IDF_CITATION}",
        pairwise=fn.pairwise,
    )
