"""The leakage audit in the analysis: how many evaluated items nearly repeat a training item, and what the headline
metrics are without them.

The per-item audit (:func:`medqa_bench.data.audit.audit_items`, run by the runner, which holds the training split) is
stored in each sample as ``train_overlap``. Here it is summarised, and every system's corpus values and the judged
comparisons are recomputed on the **clean subset**: the items that are not near-duplicates of a training item. A
gain that holds only on near-duplicates is recall of training text, not medicine.
"""

from __future__ import annotations

from typing import Any

from ..schema import MetricInfo
from . import compare


def leakage(samples: list[dict], systems: list[str], metrics: dict[str, MetricInfo], judged_pairs: dict[str, dict],
            match_t: dict[str, float], *, seed: int, n_bootstrap: int) -> dict[str, Any] | None:
    """Summary, flagged items, corpus values and judged comparisons on the clean subset; None without an audit."""
    from ..data.audit import summarize_audit

    records = [{"id": s["id"], **s["train_overlap"]} for s in samples if s.get("train_overlap")]
    if not records:
        return None
    summary = summarize_audit(records)
    flagged = [r for r in records if r.get("near_duplicate")]
    summary["items"] = sorted(
        ({"id": r["id"], "reference": r["reference"], "question": r["question"]} for r in flagged),
        key=lambda r: -max(r["reference"]["score"] or 0.0, r["question"]["score"] or 0.0),
    )
    flagged_ids = {r["id"] for r in flagged}
    clean = [s for s in samples if s["id"] not in flagged_ids]
    summary["clean"] = {"n_items": len(clean)}
    if not clean or not flagged:
        return summary
    values: dict[str, dict[str, float]] = {}
    for system in systems:
        for m, info in metrics.items():
            v = compare.corpus_value(clean, system, m, info)
            if v is not None:
                values.setdefault(system, {})[m] = v
    summary["clean"]["results"] = values
    summary["clean"]["judged"] = {}
    for adapter, block in judged_pairs.items():
        rows = {}
        for m, row in block["metrics"].items():
            r = compare.compare(clean, adapter, row["against"], {m: metrics[m]}, match_t, seed=seed,
                                n_bootstrap=n_bootstrap).get(m)
            if r is not None:
                rows[m] = {**r, "against": row["against"]}
        from .stats import holm

        for m, p in zip(rows, holm([r["p_permutation"] for r in rows.values()])):
            rows[m]["p_holm"] = p
        summary["clean"]["judged"][adapter] = {"metrics": rows}
    return summary
