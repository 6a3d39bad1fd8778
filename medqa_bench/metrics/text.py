"""String metrics: SQuAD exact match and token F1, and rapidfuzz edit-distance similarity.

SQuAD normalisation (``normalize_answer``): lower case (after Unicode NFKC), drop punctuation and symbols
(SQuAD's ASCII rule extended to Unicode: every character that is neither a word character nor a space,
plus ``_``), drop the articles *a*, *an*, *the*, collapse whitespace. As in SQuAD, punctuation is removed
without inserting a space, so "well-known" and "wellknown" match.

>>> normalize_answer("The  Fever, (high)!")
'fever high'
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from importlib.metadata import version
from typing import Sequence

from .base import Metric

_PUNCT = re.compile(r"[^\w\s]|_")
_ARTICLES = re.compile(r"\b(a|an|the)\b")

SQUAD_CITATION = (
    "Rajpurkar et al., SQuAD: 100,000+ Questions for Machine Comprehension of Text, EMNLP 2016."
)


def normalize_answer(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = _PUNCT.sub("", text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def token_f1_score(prediction: str, reference: str) -> float:
    """SQuAD token F1 on normalised tokens; two empty answers agree (1.0), one empty one scores 0."""
    pred, ref = squad_tokens(prediction), squad_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    # 2PR/(P+R) with P = o/|pred|, R = o/|ref| simplifies to 2o/(|pred|+|ref|); the pairwise form uses it too.
    return 2.0 * overlap / (len(pred) + len(ref))


def overlap_f1_matrix(bags_a: Sequence[Sequence], bags_b: Sequence[Sequence], *, empty_match: bool):
    """F1 = 2·|A∩B| / (|A|+|B|) of every multiset in ``bags_a`` against every one in ``bags_b``, as a dense array.

    Multiset intersection becomes a sparse matrix product by counting the k-th occurrence of a token as its
    own feature ``(token, k)``: then Σ_t min(a_t, b_t) = Σ_(t,k) [a has ≥k t][b has ≥k t].
    ``empty_match``: whether two empty bags score 1 (SQuAD) or 0 (ROUGE).
    """
    import numpy as np
    from scipy import sparse

    vocab: dict = {}

    def matrix(bags):
        rows, cols = [], []
        for r, bag in enumerate(bags):
            seen: Counter = Counter()
            for tok in bag:
                seen[tok] += 1
                cols.append(vocab.setdefault((tok, seen[tok]), len(vocab)))
                rows.append(r)
        return rows, cols

    ra, ca = matrix(bags_a)
    rb, cb = matrix(bags_b)
    shape_v = max(len(vocab), 1)
    a = sparse.csr_matrix((np.ones(len(ra), dtype=np.float64), (ra, ca)), shape=(len(bags_a), shape_v))
    b = sparse.csr_matrix((np.ones(len(rb), dtype=np.float64), (rb, cb)), shape=(len(bags_b), shape_v))
    overlap = (a @ b.T).toarray()
    la = np.array([len(x) for x in bags_a], dtype=np.float64)[:, None]
    lb = np.array([len(x) for x in bags_b], dtype=np.float64)[None, :]
    denom = la + lb
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2.0 * overlap / np.where(denom > 0, denom, 1.0), 1.0 if empty_match else 0.0)
    return f1


# --------------------------------------------------------------------------------------------- metrics


def exact_match() -> Metric:
    def score(predictions, references, items):
        norm: dict[str, str] = {}  # a reference recurs once per system: normalise each text once

        def get(text: str) -> str:
            return norm[text] if text in norm else norm.setdefault(text, normalize_answer(text))

        return [float(get(p) == get(r)) for p, r in zip(predictions, references)]

    return Metric(
        name="exact_match",
        higher_is_better=True,
        score=score,
        signature="exact_match|norm=squad(nfkc,lower,punct,articles,ws)",
        citation=SQUAD_CITATION,
    )


def token_f1() -> Metric:
    def score(predictions, references, items):
        cache: dict[str, list[str]] = {}
        out = []
        for p, r in zip(predictions, references):
            tp = cache[p] if p in cache else cache.setdefault(p, squad_tokens(p))
            tr = cache[r] if r in cache else cache.setdefault(r, squad_tokens(r))
            if not tp or not tr:
                out.append(float(tp == tr))
            else:
                out.append(2.0 * sum((Counter(tp) & Counter(tr)).values()) / (len(tp) + len(tr)))
        return out

    def pairwise(predictions, references):
        return overlap_f1_matrix(
            [squad_tokens(p) for p in predictions], [squad_tokens(r) for r in references], empty_match=True
        )

    return Metric(
        name="token_f1",
        higher_is_better=True,
        score=score,
        signature="token_f1|norm=squad(nfkc,lower,punct,articles,ws)|f1",
        bounds=(0.0, 1.0),
        citation=SQUAD_CITATION,
        pairwise=pairwise,
    )


def _rapidfuzz_metric(name: str, scorer_name: str) -> Metric:
    """rapidfuzz similarity / 100 after rapidfuzz's ``default_process`` (lower case, non-alphanumerics to spaces)."""

    def scorer():
        from rapidfuzz import fuzz

        return getattr(fuzz, scorer_name)

    def score(predictions, references, items):
        import numpy as np
        from rapidfuzz import process, utils

        out = process.cpdist(
            predictions, references, scorer=scorer(), processor=utils.default_process, dtype=np.float64, workers=1
        )
        return out / 100.0

    def pairwise(predictions, references):
        import numpy as np
        from rapidfuzz import process, utils

        out = process.cdist(
            predictions, references, scorer=scorer(), processor=utils.default_process, dtype=np.float64, workers=1
        )
        return out / 100.0

    return Metric(
        name=name,
        higher_is_better=True,
        score=score,
        signature=f"{name}|fuzz.{scorer_name}/100|processor=default_process|rapidfuzz={version('rapidfuzz')}",
        bounds=(0.0, 1.0),
        citation="rapidfuzz (Bachmann), https://github.com/rapidfuzz/RapidFuzz",
        pairwise=pairwise,
    )


def fuzzy() -> Metric:
    """Normalised Indel similarity of the two strings, 0..1."""
    return _rapidfuzz_metric("fuzzy", "ratio")


def fuzzy_token_set() -> Metric:
    """rapidfuzz ``token_set_ratio``: word-set similarity, forgiving of order and of extra words on one side."""
    return _rapidfuzz_metric("fuzzy_token_set", "token_set_ratio")
