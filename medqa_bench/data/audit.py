"""Leakage and near-duplicate audit: how close each evaluated item comes to something the model trained on.

A score on test items that (nearly) repeat training items measures recall, not medicine; the report needs to say
how many there are. For every evaluated item the audit gives the highest similarity of its first reference to any
training reference, and of its question to any training question, with the training item that gives it.

Definitions, exactly:

- text normalisation: Unicode NFKC, casefold, runs of whitespace collapsed to one space (and stripped);
  references are then cut to their first 1,500 characters, questions are used whole;
- reference similarity: rapidfuzz ``fuzz.ratio(a, b) / 100``, the normalised Indel similarity of the normalised
  texts (1.0 identical, 0.0 nothing in common). Candidates: the 50 training references nearest by BM25
  (:class:`medqa_bench.data.retrieval.BM25Index` over the same normalised texts; every reference of every training
  item is a text) are scored exactly, so the audit scales to all MedQuAD question types. The maximum is over those
  candidates, not over the whole training split: a training text that BM25 does not rank in the first 50 is not
  seen (on the symptoms test split this finds 71 near-duplicate references where an exhaustive scan finds 72);
  ties go to the candidate BM25 ranks first;
- question similarity: the cosine of TF-IDF word vectors (scikit-learn, sublinear tf, every word including single
  characters and digits, fitted on the training and evaluated questions together), over every training question. Character similarity is wrong for questions: "What are the symptoms
  of Liddle syndrome?" and "... of Alagille syndrome?" share 93% of their characters and nothing of substance,
  while TF-IDF weighs the words that name the condition above the template words every question shares;
- a training item with the evaluated item's own id is never a candidate (no self-match, e.g. with ``--split all``),
  unless the training corpus is another file than the evaluated one (``exclude_same_id=False``: ``--train-data``, or
  the adapters' training data; medqa_bench.data.training_corpus), where a shared id says nothing;
- near-duplicate: either similarity >= :data:`NEAR_DUPLICATE_THRESHOLD` (0.9).

>>> from medqa_bench.data import Example
>>> train = [Example("t1", "What are the symptoms of gout?", "Painful, swollen joints, often the big toe.")]
>>> record = audit_items([Example("e1", "What are signs of gout?", "Painful swollen joints, often the big toe.")],
...                      train)[0]
>>> record["reference"]["train_id"], round(record["reference"]["score"], 2), round(record["question"]["score"], 2)
('t1', 0.99, 0.58)
>>> record["near_duplicate"]
True
"""

from __future__ import annotations

import unicodedata
from typing import Any, Sequence

from .dataset import Example

#: An item whose reference or question is at least this similar to a training one is a near-duplicate: at 0.9 the
#: texts differ by a few words in a paragraph (an edited copy, or shared boilerplate), not by paraphrase.
NEAR_DUPLICATE_THRESHOLD = 0.9
#: References are compared on their first characters only: long answers share a start or not, and it bounds the cost.
REFERENCE_CHARS = 1500
#: Training references scored exactly per item, nearest first by BM25 (20 found 69 of the 72 near-duplicate
#: references of the symptoms test split, 50 found 71, at the same cost).
CANDIDATES = 50
#: Histogram bin edges of the similarities in the summary (the last bin includes 1.0).
HISTOGRAM_EDGES = tuple(round(i / 10, 1) for i in range(11))
SIDES = ("reference", "question")


def definition(threshold: float = NEAR_DUPLICATE_THRESHOLD) -> str:
    """The audit's definition in one paragraph, for the summary and the report."""
    return (
        "For each evaluated item, the highest similarity of its first reference to any training reference and of "
        "its question to any training question. Texts are NFKC-normalised, casefolded and whitespace-collapsed; "
        f"references are cut to their first {REFERENCE_CHARS:,} characters. Reference similarity is rapidfuzz "
        f"fuzz.ratio / 100 (normalised Indel similarity), computed exactly for the {CANDIDATES} training references "
        "nearest by BM25; question similarity is the cosine of TF-IDF word vectors fitted on all the questions. "
        "A training item with the evaluated item's own id is never a candidate. An item is a near-duplicate when "
        f"either similarity is at least {threshold:g}."
    )


def normalize_text(text: str) -> str:
    """NFKC, casefold, whitespace collapsed: the form the audit compares."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _best_matches(
    queries: Sequence[str], texts: Sequence[str], text_ids: Sequence[str], own_ids: Sequence[str | None]
) -> list[dict[str, Any]]:
    """Per query: the highest fuzz.ratio/100 over its BM25 candidates, and the training id that gives it."""
    from rapidfuzz import fuzz

    from .retrieval import BM25Index

    # Indexed by position, so a candidate is one text even when a training item has several references.
    index = BM25Index.build(texts, [str(n) for n in range(len(texts))])
    positions: dict[str, list[str]] = {}
    for n, i in enumerate(text_ids):
        positions.setdefault(i, []).append(str(n))
    hits = index.search(queries, CANDIDATES, exclude=[positions.get(i, []) for i in own_ids])
    out = []
    for query, candidates in zip(queries, hits):
        best: dict[str, Any] = {"score": None, "train_id": None}
        for n, _ in candidates:
            score = fuzz.ratio(query, texts[int(n)]) / 100
            if best["score"] is None or score > best["score"]:
                best = {"score": score, "train_id": text_ids[int(n)]}
        out.append(best)
    return out


def _question_matches(
    queries: Sequence[str], texts: Sequence[str], text_ids: Sequence[str], own_ids: Sequence[str | None]
) -> list[dict[str, Any]]:
    """Per query: the highest TF-IDF cosine with a training question (its own id excluded), and that question's id."""
    if not texts:
        return [{"score": None, "train_id": None} for _ in queries]
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        # Fitted on the evaluated questions too: a word no training question has (the name of a new condition) must
        # count, not vanish; single characters and digits count ("type 1" vs "type 2").
        vectorizer = TfidfVectorizer(sublinear_tf=True, token_pattern=r"(?u)\b\w+\b").fit([*texts, *queries])
    except ValueError:  # no word in any training question
        return [{"score": 0.0, "train_id": text_ids[0]} for _ in queries]
    sim = (vectorizer.transform(queries) @ vectorizer.transform(texts).T).toarray()
    position = {i: n for n, i in enumerate(text_ids)}
    out = []
    for row, own in zip(sim, own_ids):
        if own in position:
            row[position[own]] = -1.0
        best = int(np.argmax(row))
        out.append({"score": round(float(min(1.0, max(0.0, row[best]))), 6), "train_id": text_ids[best]})
    return out


def audit_items(
    items: Sequence[Example], train: Sequence[Example], *, threshold: float = NEAR_DUPLICATE_THRESHOLD,
    exclude_same_id: bool = True,
) -> list[dict[str, Any]]:
    """One JSON-ready record per item, in item order (see the module docstring for the definitions).

    ``exclude_same_id``: a training item with an evaluated item's id is that item, never its candidate; False when
    ``train`` comes from another file than ``items``.

    ``{"id", "reference": {"score", "train_id"}, "question": {"score", "train_id"}, "near_duplicate"}``; with no
    training item to compare with (an empty training split) the scores and ids are None and nothing is flagged.

    A training item with several references has each as a text of its own: one item can take several of the
    candidate places (CANDIDATES).
    """
    own = [item.id if exclude_same_id else None for item in items]
    ref_texts, ref_ids = [], []
    for t in train:
        for ref in t.references:
            ref_texts.append(normalize_text(ref)[:REFERENCE_CHARS])
            ref_ids.append(t.id)
    references = _best_matches([normalize_text(i.answer)[:REFERENCE_CHARS] for i in items], ref_texts, ref_ids, own)
    questions = _question_matches([normalize_text(i.question) for i in items],
                                  [normalize_text(t.question) for t in train], [t.id for t in train], own)
    return [
        {
            "id": item.id,
            "reference": ref,
            "question": q,
            "near_duplicate": any(side["score"] is not None and side["score"] >= threshold for side in (ref, q)),
        }
        for item, ref, q in zip(items, references, questions)
    ]


#: Characters of a training answer kept beside a near-duplicate (the report's contamination section).
NEAREST_ANSWER_CHARS = 400


def nearest_training_texts(record: dict[str, Any], train_by_id: dict[str, Example]) -> dict[str, Any]:
    """The training items an :func:`audit_items` record names, as text: per side (``reference``, ``question``) the
    training item's id, question and first reference (cut to :data:`NEAREST_ANSWER_CHARS` characters, "…" marking
    a cut); None for a side without a match.

    >>> train = {"t1": Example("t1", "What are the symptoms of gout?", "Painful swollen joints.")}
    >>> nearest_training_texts({"reference": {"train_id": "t1"}, "question": {"train_id": None}}, train)["reference"]
    {'id': 't1', 'question': 'What are the symptoms of gout?', 'answer': 'Painful swollen joints.'}
    """
    out: dict[str, Any] = {}
    for side in SIDES:
        t = train_by_id.get((record.get(side) or {}).get("train_id"))
        answer = t.answer if t is not None else ""
        out[side] = None if t is None else {
            "id": t.id, "question": t.question,
            "answer": answer if len(answer) <= NEAREST_ANSWER_CHARS else answer[:NEAREST_ANSWER_CHARS].rstrip() + " …",
        }
    return out


def summarize_audit(records: Sequence[dict[str, Any]], threshold: float = NEAR_DUPLICATE_THRESHOLD) -> dict[str, Any]:
    """Counts and histograms of :func:`audit_items` records, flagged again at ``threshold`` from the scores.

    ``ran`` is False (with a ``note``) when no item had a training text to compare with, i.e. no training split.
    """
    import numpy as np

    def flagged(r: dict[str, Any], side: str) -> bool:
        return r[side]["score"] is not None and r[side]["score"] >= threshold

    ran = any(r[side]["score"] is not None for r in records for side in SIDES)
    summary: dict[str, Any] = {
        "threshold": threshold,
        "definition": definition(threshold),
        "ran": ran,
        "n_items": len(records),
        "n_near_duplicates": sum(any(flagged(r, side) for side in SIDES) for r in records),
        "by": {side: sum(flagged(r, side) for r in records) for side in SIDES},
        "histogram": {"edges": list(HISTOGRAM_EDGES)},
    }
    summary["by"]["both"] = sum(all(flagged(r, side) for side in SIDES) for r in records)
    for side in SIDES:
        scores = [r[side]["score"] for r in records if r[side]["score"] is not None]
        summary["histogram"][side] = np.histogram(scores, bins=HISTOGRAM_EDGES)[0].tolist()
    if not ran:
        summary["note"] = ("the audit could not run: there is no training split to compare with"
                           if records else "no items to audit")
    return summary
