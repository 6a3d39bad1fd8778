"""A small BM25 index over texts with ids: the one lexical retriever the reference rows, the audit and later RAG share.

It wraps `bm25s <https://github.com/xhluca/bm25s>`_ so one definition of "nearest by BM25" holds everywhere, and
``describe()`` says what a results file must record to reproduce it.

What it does, exactly:

- tokenizer: bm25s's own (lowercase, the scikit-learn pattern ``(?u)\\b\\w\\w+\\b``, bm25s's ``"en"`` stop words,
  which are Lucene's 33 English ones, no stemmer); query words missing from the indexed texts are dropped;
- scoring: bm25s ``lucene`` BM25 with ``k1`` and ``b`` (1.5 and 0.75 by default);
- ranking: by score, ties by position in the indexed texts (first wins), so results are deterministic;
- every query gets ``min(k, len(index))`` hits, zero-score ones included. A query that is empty, or only stop
  words, or only words the texts never use, scores 0 everywhere and therefore gets the first ``k`` texts with score
  0.0: callers that need a real match check ``score > 0``;
- ``search(..., exclude=...)`` leaves given ids out per query, so an item indexed among the training texts never
  finds itself.

>>> index = BM25Index.build(["gout causes joint pain", "asthma narrows the airways", "a diet for gout"],
...                         ids=["a", "b", "c"])
>>> [hit_id for hit_id, score in index.search(["what narrows the airways?"], k=2)[0]]
['b', 'a']
>>> index.search(["the of"], k=2)        # only stop words: score 0, first texts
[[('a', 0.0), ('b', 0.0)]]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Sequence

from ..errors import DataError

def _bm25s():
    """bm25s, imported without JAX.

    Importing bm25s runs a JAX top-k when JAX is installed: JAX then claims its default platform, on a CUDA machine
    75% of the GPU's memory, for a top-k this module never uses (it ranks with numpy). Measured on an H200 whose image
    ships jax[cuda]: 105 GiB held by each process that built an index, and the evaluations beside it ran out of
    memory; on a CPU, importing JAX adds ~1.5 s to every process that builds an index. Unless the application has
    imported JAX itself, bm25s is imported with JAX hidden (``sys.modules["jax"] = None`` makes its ``import jax``
    fail), so bm25s takes its numpy top-k and JAX is neither imported nor started; the application can import JAX
    afterwards as usual.
    """
    import logging
    import sys

    if "bm25s" not in sys.modules and "jax" not in sys.modules:
        sys.modules["jax"] = None  # type: ignore[assignment]
        try:
            import bm25s
        finally:
            del sys.modules["jax"]
    import bm25s

    # bm25s sets its own logger to DEBUG on import, which prints "Building index…" under any root handler;
    # hand the level back to the application.
    logging.getLogger("bm25s").setLevel(logging.NOTSET)
    return bm25s


#: bm25s's tokenizer settings, written into ``describe()``.
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
STOPWORDS = "en"


@dataclass(frozen=True)
class BM25Index:
    """An index built once over ``texts``; ``search`` returns ``(id, score)`` lists, best first."""

    ids: tuple[str, ...]
    k1: float = 1.5
    b: float = 0.75
    _retriever: Any = field(default=None, repr=False, compare=False)
    _tokenizer: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def build(cls, texts: Sequence[str], ids: Sequence[str], *, k1: float = 1.5, b: float = 0.75) -> "BM25Index":
        """Index ``texts`` under ``ids`` (one id per text, used as given; duplicates are allowed but ambiguous)."""
        bm25s = _bm25s()
        if len(texts) != len(ids):
            raise DataError(f"BM25 index: {len(texts)} texts but {len(ids)} ids; give one id per text")
        tokenizer = bm25s.tokenization.Tokenizer(lower=True, splitter=TOKEN_PATTERN, stopwords=STOPWORDS)
        corpus = _token_ids(tokenizer, texts, update_vocab=True)
        retriever = None
        if any(corpus):  # no texts, or only stop words: nothing to score, every query scores 0
            retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
            retriever.index((corpus, tokenizer.get_vocab_dict()), show_progress=False)
        return cls(tuple(str(i) for i in ids), k1, b, retriever, tokenizer)

    def __len__(self) -> int:
        return len(self.ids)

    def scores(self, query: str):
        """BM25 score of every indexed text for one query (a float32 numpy array in index order)."""
        return self._scores(self._query_tokens([query])[0])

    def _query_tokens(self, queries: Sequence[str]) -> list[list[int]]:
        if self._retriever is None:
            return [[] for _ in queries]
        return _token_ids(self._tokenizer, queries, update_vocab=False)

    def _scores(self, tokens: list[int]):
        import numpy as np

        if not tokens:
            return np.zeros(len(self.ids), dtype="float32")
        return self._retriever.get_scores_from_ids(tokens)

    def search(
        self, queries: Sequence[str], k: int, *, exclude: Sequence[Collection[str]] | None = None
    ) -> list[list[tuple[str, float]]]:
        """The ``k`` best ``(id, score)`` per query, best first, ties by index position; see the module docstring.

        ``exclude`` gives, per query, ids that must not be returned (an evaluated item that is also in the indexed
        training items must not find itself); those texts are dropped before the top ``k`` are taken.
        """
        import numpy as np

        if k < 0:
            raise DataError(f"BM25 search: k must be 0 or more, not {k}")
        if exclude is not None and len(exclude) != len(queries):
            raise DataError(f"BM25 search: {len(queries)} queries but {len(exclude)} exclude sets; give one per query")
        positions: dict[str, list[int]] = {}
        for n, i in enumerate(self.ids):
            positions.setdefault(i, []).append(n)
        out = []
        for q, tokens in enumerate(self._query_tokens(queries)):
            scores = self._scores(tokens)
            keep = np.ones(len(self.ids), dtype=bool)
            for i in exclude[q] if exclude is not None else ():
                keep[positions.get(i, [])] = False
            # A stable sort of the negated scores keeps equal scores in index order; bm25s's own top-k
            # (argpartition) does not.
            order = np.flatnonzero(keep)[np.argsort(-scores[keep], kind="stable")]
            out.append([(self.ids[n], float(scores[n])) for n in order[:k]])
        return out

    def save(self, folder: str | Path) -> None:
        """Write the index into ``folder``: bm25s's own files (numpy arrays saved without pickle, JSON vocabularies
        and parameters) and ``ids.json``. :meth:`load` reads it back; the scores are the same."""
        import json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self._retriever is not None:
            self._retriever.save(str(folder), allow_pickle=False, show_progress=False)
            self._tokenizer.save_vocab(str(folder))
        meta = {"ids": list(self.ids), "k1": self.k1, "b": self.b, "empty": self._retriever is None}
        (folder / "ids.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> "BM25Index":
        """An index written by :meth:`save` (arrays loaded with ``allow_pickle=False``)."""
        import json

        bm25s = _bm25s()
        folder = Path(folder)
        meta = json.loads((folder / "ids.json").read_text(encoding="utf-8"))
        retriever = tokenizer = None
        if not meta["empty"]:
            retriever = bm25s.BM25.load(str(folder), mmap=False, allow_pickle=False, show_progress=False)
            tokenizer = bm25s.tokenization.Tokenizer(lower=True, splitter=TOKEN_PATTERN, stopwords=STOPWORDS)
            tokenizer.load_vocab(str(folder))
        return cls(tuple(meta["ids"]), meta["k1"], meta["b"], retriever, tokenizer)

    def describe(self) -> dict[str, Any]:
        """What a results file records so the retrieval can be reproduced: library, parameters, tokenizer."""
        from importlib.metadata import version

        bm25s = _bm25s()

        return {
            "library": "bm25s",
            "version": version("bm25s"),  # bm25s.__version__ read "0.0.1dev0" in the 0.2 releases
            "method": "lucene",
            "k1": self.k1,
            "b": self.b,
            "tokenizer": {
                "lower": True,
                "pattern": TOKEN_PATTERN,
                "stopwords": f"bm25s '{STOPWORDS}': Lucene's English set, {len(bm25s.stopwords.STOPWORDS_EN)} words",
                "stemmer": None,
            },
            "ties": "by position in the indexed texts",
            "n_documents": len(self.ids),
        }


def _token_ids(tokenizer: Any, texts: Sequence[str], *, update_vocab: bool) -> list[list[int]]:
    """Token ids per text, without bm25s's placeholder for a text with no tokens.

    Recent bm25s gives such a text (empty, or stop words only) an "empty string" token, which an empty query would
    then match with a positive score; dropping it makes "no tokens" score 0 against everything, in every version.
    """
    ids = tokenizer.tokenize(list(texts), update_vocab=update_vocab, return_as="ids", show_progress=False)
    empty = tokenizer.get_vocab_dict().get("")
    return [[t for t in doc if t != empty] for doc in ids]
