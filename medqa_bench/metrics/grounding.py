"""Grounding metrics of retrieval-augmented systems: how much the passages cover, how much the answer rests on them.

Both are metrics of kind ``"context"``: they score only the systems whose sample records hold ``passages`` (the
rows with retrieval, :mod:`medqa_bench.data.rag`); other rows get no value for them (not applicable, like loss for a
reference row), and a run without retrieval records neither. A ``context`` metric's ``score(predictions,
references, items)`` gets, per pair, the system's prediction, the item's FIRST reference, and in
``items[k]["passages"]`` the texts of the passages that system was given (best first, as in the prompt). Plugins can
declare ``kind="context"`` and receive the same.

- ``context_recall``: ROUGE-1 recall of the retrieved passages against the first reference, i.e. the share of the
  reference's tokens that the passages contain::

      context_recall = sum_t min(count_ref(t), count_passages(t)) / sum_t count_ref(t)

  over rouge-score's tokens (lower case, alphanumeric runs, Porter-stemmed: the tokens of ``rouge1``), the passages'
  counts summed over all ``k`` passages; 0.0 for a reference without tokens. It measures the retriever, not the
  model: 1.0 means every reference word (with its multiplicity) is somewhere in the passages.

- ``answer_grounding``: the share of the answer's sentences that some passage supports. The answer and each passage
  are cut into sentences (:func:`sentences`: at line breaks and after ``.``, ``!`` or ``?`` followed by white space;
  a leading list bullet ``-``, ``*`` or ``•`` is dropped; a piece without a letter or digit is no sentence). A
  sentence is supported when its highest cosine similarity to any sentence of any passage, in all-MiniLM-L6-v2
  embeddings (the ``embedding_similarity`` model and encoder), is at least ``threshold``::

      answer_grounding = |{s in answer sentences : max_{p in passage sentences} cos(s, p) >= threshold}|
                         / |answer sentences|

  0.0 for an answer without sentences (an empty answer grounds nothing). ``threshold`` defaults to
  :data:`GROUNDING_THRESHOLD` = 0.71 (see there for how it was measured). Sentence against sentence, not a whole
  passage: a passage runs past the model's 256 word pieces, and one long text's mean vector blurs the sentence it
  holds.

>>> from medqa_bench.metrics import resolve_metrics
>>> [recall] = resolve_metrics(["context_recall"])
>>> recall.compute(predictions=["x"], references=["fever and cough"],
...                items=[{"passages": ["Fever is common.", "No cough."]}]).tolist()
[0.6666666666666666]
"""

from __future__ import annotations

import re
from collections import Counter
from importlib.metadata import version
from typing import Sequence

from ..errors import MetricError
from .base import Metric

#: The cosine at which an answer sentence counts as supported by a passage sentence: what unrelated passages reach.
#: Measured on the reference sentences of 40 symptoms test items (311 sentences, the first 8 of each reference) against
#: the BM25 top-3 passages of ANOTHER item: 23.5% of them occur there verbatim (cosine 1: MedQuAD's boilerplate
#: sentences recur across diseases, and a verbatim sentence is supported, whatever its topic), and among the rest the
#: best cosine has its 95th percentile at 0.707 (median 0.45). Against their own item's passages, 28% are verbatim
#: and the rest have median 0.52, 90th percentile 0.81. So a sentence is grounded when it is closer to a passage
#: sentence than 95% of non-verbatim sentences are to unrelated passages.
GROUNDING_THRESHOLD = 0.71
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")
_BULLET = re.compile(r"^\s*[-*\u2022]\s*")


def sentences(text: str) -> list[str]:
    """``text`` cut into sentences as ``answer_grounding`` cuts it (see the module docstring).

    >>> sentences("Fever. Cough!\\n- Night sweats\\n--")
    ['Fever.', 'Cough!', 'Night sweats']
    """
    out = []
    for part in _SENTENCE_BREAK.split(text or ""):
        part = _BULLET.sub("", part).strip()
        if any(ch.isalnum() for ch in part):
            out.append(part)
    return out


def _passages(items: Sequence[dict], metric: str) -> list[list[str]]:
    out = []
    for it in items:
        passages = it.get("passages")
        if not isinstance(passages, list) or not all(isinstance(p, str) for p in passages):
            raise MetricError(f"metric '{metric}' needs the passages the system was given (a list of texts in "
                              f"items[k]['passages']), and item '{it.get('id', '?')}' has {type(passages).__name__}; "
                              "it applies to systems with retrieval (--rag) only")
        out.append(passages)
    return out


def _recall(reference: str, passages: Sequence[str]) -> float:
    from .rouge import rouge_tokens

    ref = Counter(rouge_tokens(reference))
    if not ref:
        return 0.0
    have = Counter(t for p in passages for t in rouge_tokens(p))
    return sum(min(c, have[t]) for t, c in ref.items()) / sum(ref.values())


def context_recall() -> Metric:
    """ROUGE-1 recall of the retrieved passages against the first reference (module docstring)."""

    def score(predictions, references, items):
        return [_recall(r, p) for r, p in zip(references, _passages(items, "context_recall"))]

    return Metric(
        name="context_recall",
        higher_is_better=True,
        score=score,
        kind="context",
        signature=f"context_recall|rouge1-recall(passages vs first reference)|stemmer=on"
                  f"|rouge-score={version('rouge-score')}|nltk={version('nltk')}",
        citation="Lin, ROUGE: A Package for Automatic Evaluation of Summaries, ACL Workshop 2004.",
    )


def answer_grounding(threshold: float = GROUNDING_THRESHOLD, model: str | None = None, batch_size: int = 64,
                     device: str | None = None) -> Metric:
    """Share of answer sentences whose best cosine to a passage sentence is >= ``threshold`` (module docstring).

    ``model``: a sentence-transformers folder (default all-MiniLM-L6-v2, as ``embedding_similarity``).
    """
    from pathlib import Path

    from .embedding import EmbeddingSimilarity, default_model_path, model_fingerprint

    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        raise MetricError(f"answer_grounding: threshold must be a number in [0, 1], not {threshold!r}") from None
    if not 0.0 <= threshold <= 1.0:
        raise MetricError(f"answer_grounding: threshold must be a number in [0, 1], not {threshold}")
    path = Path(model).expanduser().resolve() if model else default_model_path()
    if not path.is_dir():
        raise MetricError(f"answer_grounding: model folder {path} does not exist; pass model=PATH of a "
                          "sentence-transformers folder")
    embedder = EmbeddingSimilarity(path, batch_size=int(batch_size), device=device, max_seq_length=None)

    def score(predictions, references, items):
        import numpy as np

        passages = _passages(items, "answer_grounding")
        answer_sents = [sentences(p) for p in predictions]
        passage_sents = [[s for text in ps for s in sentences(text)] for ps in passages]
        embedder.embed([s for group in answer_sents + passage_sents for s in group])  # one batched pass
        out = []
        for a, p in zip(answer_sents, passage_sents):
            if not a or not p:
                out.append(0.0)
                continue
            best = (embedder.embed(a) @ embedder.embed(p).T).max(axis=1)
            # the float32 cosine of a text with itself can land a hair under 1.0: compare at 1e-6
            out.append(float(np.mean(best >= threshold - 1e-6)))
        return out

    name = "all-MiniLM-L6-v2" if path == default_model_path() else path.name
    return Metric(
        name="answer_grounding",
        higher_is_better=True,
        score=score,
        kind="context",
        signature=f"answer_grounding|answer sentences vs passage sentences|cosine>={threshold:g}"
                  f"|model={name}@{model_fingerprint(path)[:12]}|sentence-transformers={version('sentence-transformers')}",
    )
