"""Length of wrong answers: are errors too short, too long, or cut off at ``max_new_tokens``?

All histograms of one kind share bin edges so systems overlay bin for bin.
"""

from __future__ import annotations

import math

import numpy as np

_MAX_BINS = 30


def _edges(values: list[float]) -> list[float]:
    """Integer-aligned edges, at most ``_MAX_BINS`` bins, covering every value (the last edge is exclusive)."""
    if not values:
        return [0.0, 1.0]
    lo, hi = math.floor(min(values)), math.floor(max(values)) + 1
    width = max(1, math.ceil((hi - lo) / _MAX_BINS))
    return [float(x) for x in range(lo, hi + width, width)]


def _hist(values: list[float], edges: list[float]) -> dict:
    counts, _ = np.histogram(values, bins=edges) if values else (np.zeros(len(edges) - 1, dtype=int), None)
    return {
        "n": len(values),
        "counts": [int(c) for c in counts],
        "median": float(np.median(values)) if values else None,
        "mean": float(np.mean(values)) if values else None,
    }


def length_histograms(samples: list[dict], systems: list[str], grades: dict[str, dict[str, str]] | None) -> dict:
    """Histograms of generated tokens by grade, reference tokens, their difference, and truncation counts.

    ``grades[system][item_id]`` is ``wrong``/``partial``/``correct`` (from the confusion analysis), or ``None``
    when the run has no bounded similarity metric: then only the all-predictions histograms are filled.
    """
    ref_len = {s["id"]: s.get("reference_tokens") for s in samples}
    per: dict[str, dict] = {}
    all_lengths: list[float] = [v for v in ref_len.values() if v is not None]
    all_diffs: list[float] = []
    for name in systems:
        rows = []
        for s in samples:
            sys = s.get("systems", {}).get(name)
            if sys is None or sys.get("generated_tokens") is None:
                continue
            g = (grades or {}).get(name, {}).get(s["id"])
            rows.append((s["id"], sys["generated_tokens"], ref_len[s["id"]], bool(sys.get("truncated")), g))
        per[name] = rows
        all_lengths += [r[1] for r in rows]
        all_diffs += [r[1] - r[2] for r in rows if r[2] is not None]

    edges, diff_edges = _edges(all_lengths), _edges(all_diffs)
    out_systems = {}
    for name, rows in per.items():
        by = {g: [r[1] for r in rows if r[4] == g] for g in ("wrong", "partial", "correct")}
        wrong_ids = {r[0] for r in rows if r[4] == "wrong"}
        truncated = [r for r in rows if r[3]]
        out_systems[name] = {
            "all": _hist([r[1] for r in rows], edges),
            **({g: _hist(v, edges) for g, v in by.items()} if grades else {}),
            "reference_of_wrong": _hist([ref_len[i] for i in wrong_ids if ref_len[i] is not None], edges)
            if grades
            else None,
            "diff": _hist([r[1] - r[2] for r in rows if r[2] is not None], diff_edges),
            "truncated": {
                "n": len(truncated),
                "share": len(truncated) / len(rows) if rows else None,
                "n_wrong": sum(1 for r in truncated if r[4] == "wrong"),
                "share_of_wrong": (sum(1 for r in truncated if r[4] == "wrong") / len(wrong_ids))
                if wrong_ids
                else None,
            },
        }
    return {
        "edges": edges,
        "diff_edges": diff_edges,
        "reference": _hist([v for v in ref_len.values() if v is not None], edges),
        "systems": out_systems,
    }
