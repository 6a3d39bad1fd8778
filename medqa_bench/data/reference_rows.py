"""Reference rows: answers made without a language model, to show what a metric gives for free.

A fine-tuned model's score means little until it is set beside what copying, repeating or saying something generic
scores on the same metric. Each row turns the evaluated items into one answer text per item, drawing only on the
TRAINING corpus (the evaluated data's train split, or another file: ``--train-data``, the adapters' training data; see
medqa_bench.data.training_corpus), never on an evaluated item's own references:

- ``retrieval``: the first reference of the training item whose question is nearest by BM25
  (:class:`medqa_bench.data.retrieval.BM25Index` over the training questions, the item's question as query);
  ``source`` records ``{"train_id", "score"}``. The bar for "learned more than lookup".
- ``boilerplate``: one answer for every item, the training answer most typical of the training set: the one whose
  TF-IDF vector (scikit-learn, English stop words, sublinear tf, fitted on the training answers) has the highest
  cosine similarity with the mean of all training answers' vectors, ties by position; ``source`` records
  ``{"train_id", "score"}``. The bar for "fluent, on-topic, ignores the question".
- ``question``: the item's own question given back as its answer; ``source`` is None. The bar for "repeats the
  prompt's words".

An evaluated item never answers with itself: when an item's id is also in the training list (``--split all``,
or a hand-made list), that training item is left out for it. Retrieval then takes the next nearest question, and
boilerplate gives that one item the runner-up answer. With ``exclude_same_id=False`` (a training corpus from another
file, whose ids say nothing about the evaluated file's) no training item is left out.

>>> from medqa_bench.data import Example
>>> train = [Example("t1", "What are the symptoms of gout?", "Painful swollen joints."),
...          Example("t2", "What are the symptoms of asthma?", "Wheezing and shortness of breath.")]
>>> [a.text for a in reference_answers("retrieval", [Example("e1", "What are the signs of asthma?", "x")], train)]
['Wheezing and shortness of breath.']
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Sequence

from .dataset import Example
from ..errors import SpecError

REFERENCE_ROWS = ("retrieval", "boilerplate", "question")

_DESCRIPTIONS = {
    "retrieval": "Retrieval (no model): each question is answered with the training answer of the most similar "
                 "training question (BM25), the score of copying a look-alike answer, which a fine-tuned model "
                 "must beat to show it learned more than lookup.",
    "boilerplate": "Boilerplate (no model): every question gets the same training answer, the one most typical of "
                   "the training set (TF-IDF nearest the centroid), the score of fluent on-topic text that ignores "
                   "the question.",
    "question": "Question echo (no model): each question is given back as its own answer, the score of merely "
                "repeating the prompt's words.",
}


@dataclass(frozen=True)
class ReferenceAnswer:
    """One reference row's answer to one item, and where it came from (None when it came from the item itself)."""

    text: str
    source: dict[str, Any] | None = None


def _check_method(method: str) -> None:
    if method not in REFERENCE_ROWS:
        close = difflib.get_close_matches(method, REFERENCE_ROWS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise SpecError(f"unknown reference row '{method}'; {hint}choose from: {', '.join(REFERENCE_ROWS)}")


def describe_reference_row(method: str) -> str:
    """One sentence for reports: what the row is and why it is there."""
    _check_method(method)
    return _DESCRIPTIONS[method]


def reference_answers(method: str, items: Sequence[Example], train: Sequence[Example], *,
                      exclude_same_id: bool = True) -> list[ReferenceAnswer]:
    """One answer per item, in item order, made by ``method`` from ``train`` (see the module docstring).

    Raises :class:`SpecError` for an unknown method, or when ``retrieval``/``boilerplate`` has no training item to
    draw from.
    """
    _check_method(method)
    if method == "question":
        return [ReferenceAnswer(item.question) for item in items]
    if not items:
        return []
    if not train:
        raise SpecError(
            f"reference row '{method}' draws its answers from the training split, and the evaluated data has no "
            f"training split (it is empty); use data or split ratios that leave one, name a training corpus with "
            f"--train-data, or drop the '{method}' reference row"
        )
    own = [item.id if exclude_same_id else None for item in items]
    return _retrieval(items, train, own) if method == "retrieval" else _boilerplate(items, train, own)


def _no_other_training_item(method: str, item: Example) -> SpecError:
    return SpecError(
        f"reference row '{method}': item '{item.id}' is the only training item, so it has nothing but itself to "
        f"draw from; use a larger training split or drop the '{method}' reference row"
    )


def _retrieval(items: Sequence[Example], train: Sequence[Example], own: Sequence[str | None]) -> list[ReferenceAnswer]:
    from .retrieval import BM25Index

    index = BM25Index.build([t.question for t in train], [t.id for t in train])
    by_id = {}
    for t in train:
        by_id.setdefault(t.id, t)  # ids are unique in a Dataset; with repeats the first is the one BM25 ranks first
    hits = index.search([item.question for item in items], k=1, exclude=[(i,) if i is not None else () for i in own])
    out = []
    for item, best in zip(items, hits):
        if not best:
            raise _no_other_training_item("retrieval", item)
        train_id, score = best[0]
        out.append(ReferenceAnswer(by_id[train_id].answer, {"train_id": train_id, "score": score}))
    return out


def typicality(answers: Sequence[str]) -> list[float]:
    """Cosine similarity of each answer's TF-IDF vector with the centroid of all of them (0.0 for an empty vector).

    TF-IDF: scikit-learn ``TfidfVectorizer(stop_words="english", sublinear_tf=True)`` fitted on ``answers``.
    """
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        vectors = TfidfVectorizer(stop_words="english", sublinear_tf=True).fit_transform(list(answers))
    except ValueError:  # empty vocabulary: every answer is stop words or punctuation, none is more typical
        return [0.0] * len(answers)
    centroid = np.asarray(vectors.mean(axis=0)).ravel()
    norm = float(np.linalg.norm(centroid))
    if norm == 0.0:
        return [0.0] * len(answers)
    # Rows are already L2-normalised by the vectorizer (an all-zero row stays zero), so the dot product is the cosine.
    return [float(s) for s in vectors @ (centroid / norm)]


def _boilerplate(items: Sequence[Example], train: Sequence[Example], own: Sequence[str | None]) -> list[ReferenceAnswer]:
    import numpy as np

    scores = np.asarray(typicality([t.answer for t in train]))
    ranked = np.argsort(-scores, kind="stable")  # ties by position
    best = int(ranked[0])
    out = []
    for item, own_id in zip(items, own):
        pick = best
        if train[best].id == own_id:  # the chosen answer is this item's own reference: take the runner-up
            others = [int(n) for n in ranked if train[int(n)].id != own_id]
            if not others:
                raise _no_other_training_item("boilerplate", item)
            pick = others[0]
        out.append(ReferenceAnswer(train[pick].answer, {"train_id": train[pick].id, "score": float(scores[pick])}))
    return out


def method_settings(method: str) -> dict[str, Any]:
    """What a results file records so a reference row can be reproduced: the library, its version and parameters."""
    from importlib.metadata import version

    _check_method(method)
    if method == "retrieval":
        from .retrieval import BM25Index

        settings = BM25Index.build(["x"], ["x"]).describe()
        settings.pop("n_documents", None)
        return {"index": "BM25 over the training split's questions; the answer is the nearest one's first reference",
                **settings}
    if method == "boilerplate":
        return {"vectorizer": "scikit-learn TfidfVectorizer(stop_words='english', sublinear_tf=True) on the training "
                              "answers; the answer nearest the centroid (cosine)", "scikit-learn": version("scikit-learn")}
    return {}
