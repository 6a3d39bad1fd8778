"""The report's contamination section: on an external test set, the evaluated items that nearly repeat an item of the
training corpus, each beside the training item it repeats and the similarity.

Shown when the run's training corpus is another file than the evaluated one (``results["data"]["training"]["source"]``
is ``given``, ``--train-data``, or ``adapters``, the adapters' recorded training data): there, a near-duplicate is an
outside question the model may have learned the answer to. The numbers are the leakage audit's (medqa_bench.data.audit,
stored per item in ``samples.jsonl`` as ``train_overlap``, with the training texts of a near-duplicate in
``train_overlap.nearest``); this module only picks, orders and formats them. Strings stay raw: the template escapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..data.audit import NEAR_DUPLICATE_THRESHOLD, SIDES
from ..schema import Analysis, Results, read_analysis, read_results
from .cells import fmt

#: How the report names where the training corpus came from.
SOURCE_TEXT = {
    "given": "the training corpus named with --train-data",
    "adapters": "the data the adapters were trained on (their training metadata; fingerprints checked)",
}
#: Characters of an evaluated item's reference shown beside its question.
REFERENCE_CHARS = 400


def contamination(results: Results | Mapping[str, Any], samples: list[dict],
                  analysis: Analysis | Mapping[str, Any]) -> dict[str, Any] | None:
    """Template context for the section; None when the run's training corpus is the evaluated data's own split (the
    leakage audit section covers that) or was not recorded (folders before schema 2.3)."""
    training = read_results(results).data.training or {}  # schema.TrainingData
    if training.get("source") not in SOURCE_TEXT:
        return None
    leakage = read_analysis(analysis).leakage
    threshold = (leakage.threshold if leakage else None) or NEAR_DUPLICATE_THRESHOLD
    audited = [s for s in samples if s.get("train_overlap")]
    rows = []
    for s in audited:
        overlap = s["train_overlap"]
        if not overlap.get("near_duplicate"):
            continue
        nearest = overlap.get("nearest") or {}
        sides = []
        for side in SIDES:
            score = (overlap.get(side) or {}).get("score")
            text = nearest.get(side) or {}
            sides.append({"side": side, "score": fmt(score), "flag": score is not None and score >= threshold,
                          "train_id": text.get("id") or (overlap.get(side) or {}).get("train_id") or "–",
                          "train_question": text.get("question") or "", "train_answer": text.get("answer") or ""})
        reference = s.get("reference") or ""
        rows.append({"id": s["id"], "question": s.get("question") or "",
                     "reference": reference if len(reference) <= REFERENCE_CHARS
                     else reference[:REFERENCE_CHARS].rstrip() + " …",
                     "sides": sides, "_max": _max_score(overlap)})
    rows.sort(key=lambda r: -r.pop("_max"))
    closest = max(audited, key=lambda s: _max_score(s["train_overlap"]), default=None)
    return {
        "source_text": SOURCE_TEXT[training["source"]],
        "path": training.get("path") or "",
        "split": training.get("split") or "",
        "qtype": training.get("qtype") or "",
        "n_training": training.get("n_items"),
        "n_items": len(samples),
        "n_audited": len(audited),
        "threshold": threshold,
        "rows": rows,
        "closest": None if closest is None else {"id": closest["id"], "score": fmt(_max_score(closest["train_overlap"]))},
    }


def _max_score(overlap: dict) -> float:
    return max(((overlap.get(side) or {}).get("score") or 0.0 for side in SIDES), default=0.0)
