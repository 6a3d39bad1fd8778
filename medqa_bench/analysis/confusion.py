"""Soft-thresholded confusion matrices over a similarity metric with scores in [0, 1].

A generation is free text, so "correct" is a similarity above a threshold. Three views:

- own versus other reference: is the prediction closer to its own reference (positive, s+) than a threshold,
  and is it *not* that close to another item's reference (negative, s-)? A model that answers every question
  with the same generic text scores high s+ and high s-; this view exposes it.
- graded outcome: correct / partial / wrong by two thresholds, and how items move from baseline to adapter.
- question type: which qtype's references the prediction is nearest to.
"""

from __future__ import annotations

import numpy as np

GRADES = ("wrong", "partial", "correct")  # ordered, so an improvement is a move to the right
BELOW = "below t"


def own_vs_other(s_pos, s_neg, t: float, *, sweep_steps: int = 51) -> dict:
    """2x2 matrix at ``t`` with s+ the positives and s- the negatives, precision/recall/F1, ROC and a sweep.

    ``matrix`` is [[TP, FN], [FP, TN]]: TP = s+ >= t, FN = s+ < t, FP = s- >= t, TN = s- < t.

    >>> r = own_vs_other([0.9, 0.8, 0.3], [0.2, 0.85, 0.1], 0.5)
    >>> r["matrix"], r["auc"]
    ([[2, 1], [1, 2]], 0.6666666666666667)
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    pos = np.asarray(s_pos, dtype=float)
    neg = np.asarray(s_neg, dtype=float)
    out = {"n": int(pos.size), "t": float(t), **_at_threshold(pos, neg, t)}
    if pos.size == 0 or neg.size == 0:
        return {**out, "auc": None, "roc": None, "sweep": None}
    labels = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    scores = np.r_[pos, neg]
    fpr, tpr, thr = roc_curve(labels, scores)
    grid = np.round(np.linspace(0.0, 1.0, sweep_steps), 6)
    rows = [_at_threshold(pos, neg, g) for g in grid]
    return {
        **out,
        "auc": float(roc_auc_score(labels, scores)),
        # roc_curve's first threshold is +inf (nothing predicted positive); JSON has no inf, so store null.
        "roc": {
            "fpr": fpr.tolist(),
            "tpr": tpr.tolist(),
            "thresholds": [None if not np.isfinite(x) else float(x) for x in thr],
        },
        "sweep": {
            "t": grid.tolist(),
            "precision": [r["precision"] for r in rows],
            "recall": [r["recall"] for r in rows],
            "f1": [r["f1"] for r in rows],
            "fpr": [r["matrix"][1][0] / neg.size for r in rows],
        },
    }


def _at_threshold(pos: np.ndarray, neg: np.ndarray, t: float) -> dict:
    tp = int(np.sum(pos >= t))
    fn = int(pos.size - tp)
    fp = int(np.sum(neg >= t))
    tn = int(neg.size - fp)
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"matrix": [[tp, fn], [fp, tn]], "precision": precision, "recall": recall, "f1": f1}


def grade(score: float, t_low: float, t_high: float) -> str:
    """``correct`` when score >= t_high, ``partial`` when t_low <= score < t_high, else ``wrong``."""
    return "correct" if score >= t_high else "partial" if score >= t_low else "wrong"


def grade_counts(scores, t_low: float, t_high: float) -> dict:
    counts = dict.fromkeys(GRADES, 0)
    for s in scores:
        counts[grade(s, t_low, t_high)] += 1
    return counts


def transitions(base_scores, adapter_scores, t_low: float, t_high: float) -> dict:
    """3x3 counts, rows the baseline's grade and columns the adapter's, in the order wrong, partial, correct."""
    matrix = [[0] * 3 for _ in GRADES]
    for b, a in zip(base_scores, adapter_scores):
        matrix[GRADES.index(grade(b, t_low, t_high))][GRADES.index(grade(a, t_low, t_high))] += 1
    improved = sum(matrix[i][j] for i in range(3) for j in range(3) if j > i)
    regressed = sum(matrix[i][j] for i in range(3) for j in range(3) if j < i)
    same = sum(matrix[i][i] for i in range(3))
    return {
        "labels": list(GRADES),
        "matrix": matrix,
        "improved": improved,
        "regressed": regressed,
        "same": same,
        "n": improved + regressed + same,
    }


def qtype_confusion(item_qtypes, nearest, t: float, *, rows: list[str] | None = None) -> dict:
    """Rows: the item's qtype; columns: the qtype of the nearest reference, or ``below t`` when its score < t.

    ``nearest`` is a list of ``[qtype, score]`` pairs (``SystemSample.nearest_qtype[metric]``).
    """
    rows = rows or sorted(set(item_qtypes))
    found = sorted({q for q, s in nearest if s >= t} - set(rows))
    columns = rows + found + [BELOW]
    matrix = [[0] * len(columns) for _ in rows]
    for q, (nq, s) in zip(item_qtypes, nearest):
        if q not in rows:
            continue
        matrix[rows.index(q)][columns.index(nq if s >= t else BELOW)] += 1
    n = sum(map(sum, matrix))
    hits = sum(matrix[i][i] for i in range(len(rows)))
    return {"rows": rows, "columns": columns, "matrix": matrix, "n": n, "accuracy": hits / n if n else None}
