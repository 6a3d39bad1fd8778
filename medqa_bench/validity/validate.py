"""Score a judged set with metrics and measure their validity: the content of ``validity.json``.

>>> from medqa_bench.metrics import resolve_metrics
>>> from medqa_bench.validity import bundled_judged_set, validate, write_validity
>>> data = validate(bundled_judged_set(), resolve_metrics(["token_f1", "rougeL"]))   # doctest: +SKIP
>>> data["primary"], data["metrics"]["token_f1"]["figures"]["within_question_spearman"]  # doctest: +SKIP

Each metric scores every (candidate, reference) pair and every (perturbed answer, reference) pair of the set in
**one** batched ``Metric.compute`` call (an embedding model embeds each distinct text once); a candidate's score is
the mean over its references. "nll" metrics (they need a language model's likelihoods) and "context" metrics (they
need retrieved passages) cannot score a judged answer and are skipped with a note. A metric that may leave an answer
unscored (``allows_missing``, an LLM judge) has its NaN candidates counted (``n_unscored``) and left out of its
figures; two metrics are compared on the candidates both scored.

``answer_length`` (the candidate's length in words, longer counted better) is added as a reference-free baseline
row: a metric that does no better than it measures length, not content.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError, SpecError
from ..metrics.base import Metric
from . import robustness as rb
from . import stats
from .judged import JudgedCandidate, JudgedSet
from .schema import PRIMARY_RULE, VALIDITY_VERSION, Comparison, MetricValidity, Validity

log = logging.getLogger(__name__)

LENGTH_BASELINE = "answer_length"
#: Metric kinds that cannot score a judged answer: they need a model's NLL or a system's retrieved passages.
UNSCORABLE_KINDS = {"nll": "needs a language model's completion NLL, which a judged answer does not have",
                    "context": "needs the passages a system was given, which a judged answer does not have"}
PASS_RULE = "passes when the 95% CI's lower bound of the win rate is above 0.5 on every perturbation"


def check_judged_set(judged: JudgedSet, good_threshold: float) -> None:
    """A one-line :class:`DataError` for a set the figures cannot be computed on."""
    grades = [c.grade for c in judged.candidates]
    if not grades:
        raise DataError(f"{judged.name}: no candidates to validate on")
    if not any(g >= good_threshold for g in grades):
        raise DataError(f"{judged.name}: no candidate has a grade >= {good_threshold:g}; set --good-threshold")
    if all(g >= good_threshold for g in grades):
        raise DataError(f"{judged.name}: every candidate has a grade >= {good_threshold:g}; set --good-threshold")


def _item(c: JudgedCandidate, system: str, reference_index: int) -> dict:
    return {"id": f"{c.group}:{c.candidate_id}", "question": c.question, "qtype": "", "focus": "",
            "system": system, "reference_index": reference_index}


def _pairs(candidates: Sequence[JudgedCandidate], suite: rb.Suite):
    """Every pair to score, and which unit each belongs to: candidate k is unit k, perturbed answer u unit n + u."""
    predictions, references, items, owner = [], [], [], []
    for k, c in enumerate(candidates):
        for r, ref in enumerate(c.references):
            predictions.append(c.candidate)
            references.append(ref)
            items.append(_item(c, "candidate", r))
            owner.append(k)
    for u, p in enumerate(suite.perturbed):
        c = candidates[p.candidate]
        for r, ref in enumerate(c.references):
            predictions.append(p.text)
            references.append(ref)
            items.append(_item(c, f"perturbed:{p.perturbation}", r))
            owner.append(len(candidates) + u)
    return predictions, references, items, np.asarray(owner)


def _unit_means(pair_scores: np.ndarray, owner: np.ndarray, n_units: int) -> np.ndarray:
    """The mean over each unit's scored pairs; NaN for a unit with none scored."""
    scored = np.isfinite(pair_scores)
    sums = np.bincount(owner, weights=np.where(scored, pair_scores, 0.0), minlength=n_units)
    counts = np.bincount(owner, weights=scored.astype(np.float64), minlength=n_units)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.where(counts > 0, counts, 1.0), np.nan)


@dataclass(frozen=True)
class _Measure:
    """What every row is measured against: the candidates, their perturbed answers, grades and resamples."""

    candidates: tuple[JudgedCandidate, ...]
    suite: rb.Suite
    grades: np.ndarray
    boot: stats.QuestionBootstrap
    options: dict

    def robustness(self, unit_scores: np.ndarray, higher_is_better: bool) -> dict[str, dict]:
        """Win rate per perturbation over the good candidates with both answers scored."""
        n = len(self.candidates)
        out = {}
        for name in rb.PERTURBATIONS:
            index = np.array([u for u, p in enumerate(self.suite.perturbed) if p.perturbation == name], dtype=np.int64)
            owners = np.array([self.suite.perturbed[u].candidate for u in index], dtype=np.int64)
            good, bad = unit_scores[owners], unit_scores[n + index]
            keep = np.isfinite(good) & np.isfinite(bad)
            values = rb.wins(good[keep], bad[keep], higher_is_better=higher_is_better)
            units = stats.QuestionBootstrap(self.boot.codes[owners[keep]], self.boot.counts, self.boot.groups,
                                            self.boot.seed)
            out[name] = stats.pooled_share(values, units)
        return out

    def row(self, name: str, kind: str, higher_is_better: bool, signature: str, source: str, unit_scores: np.ndarray,
            seconds: float) -> tuple[MetricValidity, np.ndarray, dict[str, np.ndarray]]:
        """The row, the candidates' oriented scores (NaN: unscored) and the figures' replicates (point first)."""
        n = len(self.candidates)
        oriented = (1.0 if higher_is_better else -1.0) * unit_scores[:n]
        scored = np.isfinite(oriented)
        if not scored.all():
            log.warning("%s left %d of %d candidates unscored; its figures are over the other %d", name,
                        int((~scored).sum()), n, int(scored.sum()))
        figures, reps = stats.summarize(oriented[scored], self.grades[scored], self.boot.subset(scored),
                                        **self.options)
        robustness = self.robustness(unit_scores, higher_is_better)
        row: MetricValidity = {
            "name": name, "kind": kind, "higher_is_better": higher_is_better, "signature": signature,
            "source": source, "n_scored": int(scored.sum()), "n_unscored": int((~scored).sum()), "figures": figures,
            "robustness": robustness, "passes_robustness": _passes(robustness),
            "scores": [float(v) if np.isfinite(v) else None for v in unit_scores[:n]], "seconds": round(seconds, 3),
        }
        return row, oriented, reps


def _passes(robustness: dict[str, dict]) -> bool:
    return all(r["ci_low"] is not None and r["ci_low"] > 0.5 for r in robustness.values())


def validate(judged: JudgedSet, metrics: Sequence[Metric], *, good_threshold: float = 3.0, related_grade: float = 2.0,
             n_bootstrap: int = 2000, seed: int = 0, progress: bool = True) -> Validity:
    """Score ``judged`` with ``metrics`` and return the ``validity.json`` content (:class:`~.schema.Validity`)."""
    from tqdm.auto import tqdm

    from .. import __version__

    if n_bootstrap < 1:
        raise SpecError(f"n_bootstrap must be at least 1, not {n_bootstrap}")
    check_judged_set(judged, good_threshold)
    candidates = judged.candidates
    suite = rb.build_suite(candidates, good_threshold=good_threshold, seed=seed)
    measure = _Measure(
        tuple(candidates), suite, np.array([c.grade for c in candidates], dtype=np.float64),
        stats.QuestionBootstrap.draw([c.group for c in candidates], n_bootstrap=n_bootstrap, seed=seed),
        {"good_threshold": good_threshold, "related_grade": related_grade},
    )
    predictions, references, items, owner = _pairs(candidates, suite)
    n_units = len(candidates) + len(suite.perturbed)

    rows: dict[str, MetricValidity] = {}
    replicates: dict[str, dict[str, np.ndarray]] = {}
    oriented: dict[str, np.ndarray] = {}
    skipped = []
    for metric in tqdm(list(metrics), desc="validating", unit="metric", disable=not progress):
        if metric.kind in UNSCORABLE_KINDS:
            skipped.append({"name": metric.name, "reason": f"a {metric.kind} metric {UNSCORABLE_KINDS[metric.kind]}"})
            log.info("skipping %s: %s", metric.name, skipped[-1]["reason"])
            continue
        start = time.perf_counter()
        pair_scores = metric.compute(predictions=predictions, references=references, items=items)
        seconds = time.perf_counter() - start
        info = metric.describe()  # after scoring: a judge's details (its model) are known only now
        rows[metric.name], oriented[metric.name], replicates[metric.name] = measure.row(
            metric.name, "metric", metric.higher_is_better, info.get("signature", ""), info.get("source", ""),
            _unit_means(pair_scores, owner, n_units), seconds)
    words = np.array([len(t.split()) for t in [c.candidate for c in candidates] + [p.text for p in suite.perturbed]],
                     dtype=np.float64)
    rows[LENGTH_BASELINE], oriented[LENGTH_BASELINE], replicates[LENGTH_BASELINE] = measure.row(
        LENGTH_BASELINE, "baseline", True, "answer_length|words=whitespace-split", "builtin", words, 0.0)
    comparisons = _comparisons(list(rows), oriented, measure, replicates)
    primary, reason = choose_primary(rows)
    return {
        "version": VALIDITY_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "medqa_bench_version": __version__,
        "judged_set": judged.describe(),
        "settings": {"good_threshold": float(good_threshold), "related_grade": float(related_grade),
                     "n_bootstrap": int(n_bootstrap), "seed": int(seed), "resampled": "questions",
                     "ci": "95% percentile"},
        "figures": dict(stats.FIGURE_DEFINITIONS),
        "metrics": rows,
        "skipped_metrics": skipped,
        "comparisons": comparisons,
        "robustness": {"perturbations": dict(rb.DESCRIPTIONS), "good_candidates": suite.good_candidates,
                       "skipped": dict(suite.skipped), "boilerplate": suite.boilerplate,
                       "other_reference": dict(suite.other_reference), "pass_rule": PASS_RULE},
        "primary": primary,
        "primary_rule": PRIMARY_RULE,
        "primary_reason": reason,
        "candidates": [{"group": c.group, "candidate_id": c.candidate_id, "grade": c.grade} for c in candidates],
    }


def _comparisons(names, oriented, measure: _Measure, replicates) -> list[Comparison]:
    """Every pair of rows on every figure, on the candidates both scored (the shared replicates where all were)."""
    everyone = [n for n in names if np.isfinite(oriented[n]).all()]
    n_all = int(measure.grades.size)
    rows: list[Comparison] = [{**r, "n": n_all} for r in stats.compare(everyone, replicates)]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if a in everyone and b in everyone:
                continue
            both = np.isfinite(oriented[a]) & np.isfinite(oriented[b])
            sub = measure.boot.subset(both)
            reps = {m: stats.summarize(oriented[m][both], measure.grades[both], sub, **measure.options)[1]
                    for m in (a, b)}
            rows += [{**r, "n": int(both.sum())} for r in stats.compare([a, b], reps)]
    return _holm_by_figure(rows)


def _holm_by_figure(rows: list[Comparison]) -> list[Comparison]:
    """Holm's correction over every pair of one figure (recomputed: partial pairs join the family)."""
    from ..analysis.stats import holm

    for figure in stats.FIGURES:
        family = [r for r in rows if r["figure"] == figure]
        for r, adjusted in zip(family, holm([r["p"] for r in family])):
            r["p_holm"] = adjusted
    order = {f: k for k, f in enumerate(stats.FIGURES)}
    return sorted(rows, key=lambda r: order[r["figure"]])


def choose_primary(rows: dict[str, MetricValidity]) -> tuple[str | None, str]:
    """The primary metric by :data:`~.schema.PRIMARY_RULE`, and one sentence saying why."""
    passing = [r for r in rows.values() if r["kind"] == "metric" and r["passes_robustness"]
               and r["figures"]["within_question_spearman"]["value"] is not None]
    if not passing:
        failing = [r for r in rows.values() if r["kind"] == "metric"]
        if not failing:
            return None, "no metric could score the judged set"
        worst = "; ".join(f"{r['name']} fails {_weakest(r)}" for r in failing)
        return None, f"no metric passes the robustness suite ({worst})"
    best = max(passing, key=lambda r: r["figures"]["within_question_spearman"]["value"])
    wq = best["figures"]["within_question_spearman"]
    others = [r["name"] for r in rows.values() if r["kind"] == "metric" and r not in passing]
    tail = f"; {', '.join(others)} {'fails' if len(others) == 1 else 'fail'} the robustness suite" if others else ""
    return best["name"], (f"{best['name']} has the highest within-question Spearman ({wq['value']:.3f}) of the "
                          f"{len(passing)} metric{'s' if len(passing) != 1 else ''} that pass the robustness "
                          f"suite{tail}")


def _weakest(row: MetricValidity) -> str:
    name, r = min(row["robustness"].items(),
                  key=lambda kv: kv[1]["ci_low"] if kv[1]["ci_low"] is not None else -1.0)
    if r["value"] is None:
        return f"{name} (no pair scored)"
    return f"{name}: win rate {r['value']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"


def write_validity(path: str | Path, data: Validity) -> Path:
    """Write ``validity.json`` atomically (a reader sees the old file or the new one)."""
    from ..storage import atomic

    path = Path(path)
    atomic.write_json(path, data)
    return path


def load_validity(path: str | Path) -> Validity:
    """Read a ``validity.json``; a :class:`DataError` when it is not one of this version."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; `medqa-bench metrics validate` writes one") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable validity.json ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != VALIDITY_VERSION:
        found = data.get("version") if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: validity.json version {found!r}, this medqa-bench reads version "
                        f"{VALIDITY_VERSION!r}; run `medqa-bench metrics validate` again")
    return data
