"""ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F1, equal to ``rouge_score.RougeScorer(use_stemmer=True)``.

Tokens come from rouge-score's own tokenizer and nltk's Porter stemmer (so the numbers are rouge-score's),
but the work is arranged for long medical answers, where rouge-score spends ~15 ms a pair in a Python LCS
table:

- each distinct text is tokenised once per process (a bounded cache the four ROUGE metrics share, so
  rouge2, rougeL and rougeLsum reuse rouge1's work) and each word stemmed once per process;
- the LCS length (ROUGE-L) is computed bit-parallel (Allison-Dix / Hyyrö: one big-integer step per
  prediction token), which returns the same length as the table;
- ROUGE-Lsum's union LCS reads the table's cells out of those bit vectors and backtracks exactly as
  rouge-score's ``_backtrack_norec`` does, so ties resolve to the same tokens.

ROUGE-Lsum treats each line as a sentence (rouge-score's default ``split_summaries=False``): MedQuAD lists
symptoms one per line. Tests check equality with rouge-score on real answers.
"""

from __future__ import annotations

import functools
from collections import Counter
from importlib.metadata import version
from typing import Sequence

from .base import Metric
from .text import overlap_f1_matrix

CITATION = "Lin, ROUGE: A Package for Automatic Evaluation of Summaries, ACL Workshop 2004."
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@functools.lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem import porter

    class CachedStemmer:
        # rouge-score calls stemmer.stem(word) for every token of every text; words repeat a lot.
        stem = staticmethod(functools.lru_cache(maxsize=1 << 18)(porter.PorterStemmer().stem))

    return CachedStemmer()


@functools.lru_cache(maxsize=1 << 14)
def _token_tuple(text: str) -> tuple[str, ...]:
    from rouge_score import tokenize

    return tuple(tokenize.tokenize(text, _stemmer()))


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's tokens of ``text`` (lower case, alphanumeric, Porter-stemmed)."""
    return list(_token_tuple(text))


def _fmeasure(overlap: int, n_pred: int, n_ref: int) -> float:
    # rouge-score's arithmetic, step for step, so results are bit-identical.
    precision = overlap / max(n_pred, 1)
    recall = overlap / max(n_ref, 1)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _masks(ref: Sequence[str]) -> dict[str, int]:
    masks: dict[str, int] = {}
    for i, tok in enumerate(ref):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    return masks


def lcs_length(ref: Sequence[str], can: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel over ``ref``."""
    if not ref or not can:
        return 0
    masks, full = _masks(ref), (1 << len(ref)) - 1
    v = full
    for tok in can:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(ref) - v.bit_count()


def lcs_indices(ref: Sequence[str], can: Sequence[str]) -> list[int]:
    """Indices into ``ref`` of the LCS that rouge-score's ``lcs_ind`` returns (same tie-breaking)."""
    if not ref or not can:
        return []
    masks, full = _masks(ref), (1 << len(ref)) - 1
    # columns[j] encodes table column j: cell (i, j) = i - popcount(columns[j] & low i bits).
    columns = [full]
    v = full
    for tok in can:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
        columns.append(v)

    def cell(i: int, j: int) -> int:
        return i - (columns[j] & ((1 << i) - 1)).bit_count()

    i, j, out = len(ref), len(can), []
    while i > 0 and j > 0:
        if ref[i - 1] == can[j - 1]:
            out.append(i - 1)
            i -= 1
            j -= 1
        elif cell(i, j - 1) > cell(i - 1, j):
            j -= 1
        else:
            i -= 1
    out.reverse()
    return out


def _summary_lcs(ref_sents: list[list[str]], can_sents: list[list[str]]) -> float:
    """rouge-score's ``_summary_level_lcs`` F1: union LCS per reference sentence, without double counting."""
    if not ref_sents or not can_sents:
        return 0.0
    m, n = sum(map(len, ref_sents)), sum(map(len, can_sents))
    if not n or not m:
        return 0.0
    cnt_r = Counter(t for s in ref_sents for t in s)
    cnt_c = Counter(t for s in can_sents for t in s)
    hits = 0
    for r in ref_sents:
        union = sorted(set().union(*(lcs_indices(r, c) for c in can_sents)))
        for t in (r[i] for i in union):
            if cnt_c[t] > 0 and cnt_r[t] > 0:
                hits += 1
                cnt_c[t] -= 1
                cnt_r[t] -= 1
    return _fmeasure(hits, n, m) if hits else 0.0


def _lines(text: str) -> list[str]:
    return [s for s in text.split("\n") if len(s)]


def _rouge_metric(rouge_type: str) -> Metric:
    def score(predictions, references, items):
        toks: dict[str, object] = {}

        def get(text):
            if text not in toks:
                if rouge_type == "rougeLsum":
                    toks[text] = [_token_tuple(s) for s in _lines(text)]
                elif rouge_type == "rougeL":
                    toks[text] = _token_tuple(text)
                else:
                    toks[text] = _ngrams(_token_tuple(text), int(rouge_type[-1]))
            return toks[text]

        out = []
        for p, r in zip(predictions, references):
            tp, tr = get(p), get(r)
            if rouge_type == "rougeLsum":
                out.append(_summary_lcs(tr, tp))
            elif rouge_type == "rougeL":
                out.append(_fmeasure(lcs_length(tr, tp), len(tp), len(tr)) if tp and tr else 0.0)
            else:
                overlap = sum(min(c, tp[g]) for g, c in tr.items())
                out.append(_fmeasure(overlap, sum(tp.values()), sum(tr.values())))
        return out

    pairwise = None
    if rouge_type in ("rouge1", "rouge2"):
        n = int(rouge_type[-1])

        def pairwise(predictions, references):
            def bag(text):
                t = _token_tuple(text)
                return [tuple(t[i : i + n]) for i in range(len(t) - n + 1)]

            return overlap_f1_matrix([bag(p) for p in predictions], [bag(r) for r in references], empty_match=False)

    split = "|sentences=lines" if rouge_type == "rougeLsum" else ""
    return Metric(
        name=rouge_type,
        higher_is_better=True,
        score=score,
        signature=f"{rouge_type}|f1|stemmer=on{split}|rouge-score={version('rouge-score')}|nltk={version('nltk')}",
        bounds=(0.0, 1.0),
        citation=CITATION,
        pairwise=pairwise,
    )


def rouge1() -> Metric:
    return _rouge_metric("rouge1")


def rouge2() -> Metric:
    return _rouge_metric("rouge2")


def rougeL() -> Metric:
    return _rouge_metric("rougeL")


def rougeLsum() -> Metric:
    return _rouge_metric("rougeLsum")
