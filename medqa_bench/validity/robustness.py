"""The robustness suite: answers a metric must score below a good answer, and how often it does.

For every good candidate (grade ≥ the threshold) of the judged set, five perturbed answers are made, each scored
against the same references as the good answer and averaged the same way:

- ``question``: the question echoed (on the bundled set, the proxy question of :mod:`.judged`);
- ``boilerplate``: one fixed answer for every question, the judged text most typical of the whole set: the one
  whose TF-IDF vector is nearest the centroid of all distinct candidate and reference texts
  (:func:`medqa_bench.data.reference_rows.typicality`, the run's boilerplate reference row applied to the judged texts);
  the question it belongs to gets the runner-up that is none of its own texts;
- ``other_reference``: another question's reference, the same one for every good candidate of a question, drawn
  from the seed and the question id (not from the order of the set);
- ``truncated``: the good answer cut after the first 30% of its words (rounded up), its own spacing kept;
- ``loop``: the good answer's first sentence (up to the first ``.``, ``!`` or ``?`` followed by a space, within the
  first line) repeated, words joined by spaces, to the answer's length in words.

A perturbed answer with the same words as the good answer (a one-sentence answer's loop, a three-word answer cut
to 30%) is skipped and counted: no metric can prefer a text to itself.

The **win rate** of a metric on a perturbation is the share of good candidates whose score beats the perturbed
answer's (in the metric's direction; a tie counts ½), with a 95% CI from the same bootstrap over questions
(:func:`medqa_bench.validity.stats.pooled_share`). A metric **passes** the suite when the CI's lower bound is above
0.5 on all five.

>>> truncate_words("one two three four five six seven eight nine ten")
'one two three'
>>> loop_first_sentence("Gout hurts. It swells the joints and it comes back.")
'Gout hurts. Gout hurts. Gout hurts. Gout hurts. Gout hurts.'
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Sequence

from .judged import JudgedCandidate

PERTURBATIONS = ("question", "boilerplate", "other_reference", "truncated", "loop")
DESCRIPTIONS = {
    "question": "the question echoed as the answer",
    "boilerplate": "one fixed answer for every question: the judged text nearest the TF-IDF centroid of all judged "
                   "texts (the runner-up for the question it belongs to)",
    "other_reference": "another question's reference answer (seeded per question)",
    "truncated": "the good answer cut to its first 30% of words",
    "loop": "the good answer's first sentence repeated to the answer's length in words",
}
TRUNCATE_SHARE = 0.3
_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def echo_question(question: str) -> str:
    """The question given back as the answer."""
    return question


def truncate_words(answer: str, share: float = TRUNCATE_SHARE) -> str:
    """The answer up to the end of its first ``ceil(share · words)`` words (at least one), spacing kept."""
    words = list(_WORD.finditer(answer))
    if not words:
        return answer
    keep = max(1, math.ceil(round(share * len(words), 9)))  # 0.3 · 10 is 3.0000000000000004
    return answer[: words[keep - 1].end()]


def first_sentence(answer: str) -> str:
    """Up to the first sentence end (``.``/``!``/``?`` then a space or the end) within the first non-empty line."""
    line = next((ln.strip() for ln in answer.split("\n") if ln.strip()), "")
    end = _SENTENCE_END.search(line)
    return line[: end.end()] if end else line


def loop_first_sentence(answer: str) -> str:
    """The first sentence's words repeated, joined by single spaces, cut to the answer's length in words."""
    n_words = len(answer.split())
    sentence = first_sentence(answer).split()
    if not sentence:
        return answer
    return " ".join((sentence * math.ceil(n_words / len(sentence)))[:n_words])


def most_typical(texts: Sequence[str]) -> list[int]:
    """Indices of ``texts`` from the most typical (TF-IDF cosine with the centroid) down, ties by position."""
    import numpy as np

    from ..data.reference_rows import typicality

    return [int(k) for k in np.argsort(-np.asarray(typicality(texts)), kind="stable")]


def _draw(seed: int, group: str, attempt: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0{group}\0{attempt}".encode()).digest()[:8], "big")


@dataclass(frozen=True)
class Perturbed:
    """One perturbed answer: of candidate ``candidate`` (index into the set), made by ``perturbation``."""

    candidate: int
    perturbation: str
    text: str


@dataclass(frozen=True)
class Suite:
    """The perturbed answers of a judged set, what was skipped, and where the fixed answers came from."""

    perturbed: tuple[Perturbed, ...]
    skipped: dict[str, int]
    good_candidates: int
    boilerplate: dict
    other_reference: dict[str, str]  # question id -> the question its reference came from


def build_suite(candidates: Sequence[JudgedCandidate], *, good_threshold: float = 3.0, seed: int = 0) -> Suite:
    """The five perturbed answers of every good candidate (see the module docstring)."""
    groups = list(dict.fromkeys(c.group for c in candidates))
    own: dict[str, set[str]] = {g: set() for g in groups}
    first_reference: dict[str, str] = {}
    for c in candidates:
        own[c.group].update((c.candidate, *c.references))
        first_reference.setdefault(c.group, c.references[0])
    texts = list(dict.fromkeys(t for c in candidates for t in (c.candidate, *c.references)))
    ranked = most_typical(texts) if texts else []
    boilerplate: dict[str, str] = {}
    for g in groups:
        pick = next((texts[k] for k in ranked if texts[k] not in own[g]), None)
        if pick is not None:
            boilerplate[g] = pick
    other: dict[str, str] = {}
    ordered = sorted(groups)
    for g in groups:
        choices = [h for h in ordered if h != g and first_reference[h] not in own[g]]
        if choices:
            other[g] = choices[_draw(seed, g, 0) % len(choices)]
    perturbed: list[Perturbed] = []
    skipped = {name: 0 for name in PERTURBATIONS}
    good = 0
    for k, c in enumerate(candidates):
        if c.grade < good_threshold:
            continue
        good += 1
        made = {
            "question": echo_question(c.question),
            "boilerplate": boilerplate.get(c.group),
            "other_reference": first_reference[other[c.group]] if c.group in other else None,
            "truncated": truncate_words(c.candidate),
            "loop": loop_first_sentence(c.candidate),
        }
        for name in PERTURBATIONS:
            text = made[name]
            if text is None or text.split() == c.candidate.split():
                skipped[name] += 1
                continue
            perturbed.append(Perturbed(k, name, text))
    most = texts[ranked[0]] if ranked else None
    return Suite(tuple(perturbed), skipped, good,
                 {"text": most, "instead_for": {g: t for g, t in boilerplate.items() if t != most}}, other)


def wins(good_scores, perturbed_scores, *, higher_is_better: bool):
    """1 where the good answer's score beats the perturbed one's in the metric's direction, ½ on a tie, else 0."""
    import numpy as np

    g = np.asarray(good_scores, dtype=np.float64)
    p = np.asarray(perturbed_scores, dtype=np.float64)
    diff = (g - p) if higher_is_better else (p - g)
    tie = np.isclose(g, p, rtol=0.0, atol=1e-12)
    return np.where(tie, 0.5, np.where(diff > 0, 1.0, 0.0))
