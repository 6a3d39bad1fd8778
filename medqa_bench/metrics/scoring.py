"""The scoring stage: per-item scores into the sample records, corpus values with 95% bootstrap CIs.

For each metric, every (system, item, reference) pair of the run goes to the metric in **one** batched call,
so shared work (tokenising, embedding a reference) happens once per run rather than once per system. Then:

- reference metrics keep the best score over an item's references (max, or min when lower is better) in
  ``scores[name]`` and its index in ``best_reference[name]``;
- "nll" metrics read ``nll_sum``/``nll_tokens`` (of the first reference) from the system's record;
- similarity metrics (``bounds == (0, 1)``) also score the prediction against a *distractor*: the first
  reference of another item, of a different focus, picked from the seed and the item id (same for every
  system, stored as ``distractor_id``), in ``distractor_scores[name]``; and the item's own first reference
  against that same distractor reference, once per item, in the sample's ``null_scores[name]``: what unrelated
  answers score, on which :mod:`medqa_bench.analysis.thresholds` calibrates the soft-match thresholds;
- "nll" metrics skip systems without NLLs (reference rows: no language model produced them), and "context" metrics
  (:mod:`medqa_bench.metrics.grounding`) systems without ``passages`` (rows without retrieval); a context metric that
  applies to no system is left out of the results altogether;
- when the items span two or more qtypes, similarity metrics with a ``pairwise`` form (embedding_similarity,
  fuzzy, fuzzy_token_set, token_f1, rouge1, rouge2; not the LCS-based rougeL/rougeLsum, whose N×N cost is
  quadratic in Python) record ``nearest_qtype[name] = [qtype, score]``: the qtype of the most similar first
  reference among all items' (the item's own included).

The corpus value is the metric's aggregate over items (the mean, or Σnll/Σtokens for loss and perplexity);
its CI is a seeded percentile bootstrap over items that recomputes that aggregate on every resample. All
metrics and systems share the same resamples, so their intervals are paired. A metric that ``allows_missing``
(an LLM judge, :mod:`medqa_bench.metrics.judge`) may leave an item unscored (NaN): the item's score is recorded as
``None``, the corpus value and its CI are over the items it scored, and ``n_missing`` counts the others.

A run scores loss and perplexity on more items than it generates for (``--nll-limit``): :func:`score_item_sets` gives
each metric the items it applies to.
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional, Sequence

from ..errors import MetricError, RunError
from .base import Metric

_PAIRWISE_ROWS = 1024  # predictions per pairwise block: bounds the N×N matrix in memory


# --------------------------------------------------------------------------------------------- distractors


def _focus_key(sample: dict) -> str:
    focus = str(sample.get("focus") or "").strip().casefold()
    return focus or f"\0{sample['id']}"  # no focus: only the item itself counts as "the same focus"


def _draw(seed: int, item_id: str, attempt: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0{item_id}\0{attempt}".encode()).digest()[:8], "big")


def assign_distractors(samples: Sequence[dict], seed: int = 0) -> list[Optional[str]]:
    """For each item, the id of a seeded item of a different focus (``None`` if every item shares its focus).

    The draw depends only on the seed, the item's id and the set of ids, not on the order of ``samples``, so a
    run and its re-scoring agree, and every system is compared with the same distractor.
    """
    order = sorted(range(len(samples)), key=lambda k: str(samples[k]["id"]))
    keys = [_focus_key(s) for s in samples]
    out: list[Optional[str]] = []
    for i, sample in enumerate(samples):
        pick = None
        for attempt in range(64):
            j = order[_draw(seed, str(sample["id"]), attempt) % len(order)]
            if keys[j] != keys[i]:
                pick = j
                break
        if pick is None:  # the focus holds most items: draw among the others explicitly
            others = [j for j in order if keys[j] != keys[i]]
            pick = others[_draw(seed, str(sample["id"]), 64) % len(others)] if others else None
        out.append(str(samples[pick]["id"]) if pick is not None else None)
    return out


# --------------------------------------------------------------------------------------------- bootstrap


def bootstrap_index(n_items: int, n_bootstrap: int, seed: int):
    """(n_bootstrap, n_items) item indices drawn with replacement; the same for every metric and system."""
    import numpy as np

    rng = np.random.default_rng([seed, 0xB007])
    return rng.integers(0, n_items, size=(n_bootstrap, n_items), dtype=np.int32 if n_items < 2**31 else np.int64)


def bootstrap_ci(metric: Metric, scores, items: Sequence[dict], index) -> tuple[float, float, float]:
    """(value, 2.5th percentile, 97.5th percentile) of the metric's aggregate over the resamples in ``index``."""
    import numpy as np

    agg = metric.aggregate
    if agg is None:
        value = float(scores.mean())
        stats = scores[index].mean(axis=1) if len(index) else np.zeros(0)
    else:
        value = float(agg(scores, items))
        if not len(index):
            stats = np.zeros(0)
        elif hasattr(agg, "resampled"):
            stats = np.asarray(agg.resampled(scores, items, index), dtype=np.float64)
        else:
            stats = np.array([agg(scores[row], [items[k] for k in row]) for row in index], dtype=np.float64)
    if not np.isfinite(value) or not np.all(np.isfinite(stats)):
        raise MetricError(f"metric '{metric.name}' ({metric.source}): its aggregate is not a finite number")
    if not len(stats):
        return value, value, value
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return value, float(lo), float(hi)


# --------------------------------------------------------------------------------------------- scoring


def _check_samples(samples: list[dict], metrics: list[Metric], systems: list[str]) -> None:
    if not samples:
        raise RunError("no samples to score")
    if not systems:
        raise RunError("no systems to score")
    if not metrics:
        raise MetricError("no metrics to score")
    names = [m.name for m in metrics]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise MetricError(f"metric names must be unique; given twice: {', '.join(dupes)}")
    needs_prediction = any(m.kind != "nll" for m in metrics)
    # rows without a language model (reference rows) have no NLL: NLL metrics skip them (see _scored_systems)
    seen: set[str] = set()
    for s in samples:
        if "id" not in s:
            raise RunError("a sample record has no 'id'")
        if s["id"] in seen:
            raise RunError(f"item id '{s['id']}' appears twice in the samples")
        seen.add(s["id"])
        if not s.get("references") and not s.get("reference"):
            raise RunError(f"item '{s['id']}' has no references")
        for name in systems:
            rec = (s.get("systems") or {}).get(name)
            if rec is None:
                raise RunError(f"item '{s['id']}' has no record for system '{name}'; systems are: "
                               f"{', '.join(s.get('systems') or {}) or 'none'}")
            if needs_prediction and not isinstance(rec.get("prediction"), str):
                raise RunError(f"item '{s['id']}', system '{name}': no prediction text to score")


def _context(sample: dict, system: str, reference_index: Optional[int]) -> dict[str, Any]:
    rec = sample["systems"][system]
    ctx = {
        "id": sample["id"],
        "qtype": sample.get("qtype", ""),
        "focus": sample.get("focus", ""),
        "question": sample.get("question", ""),
        "system": system,
        "reference_index": reference_index,
    }
    for key in ("nll_sum", "nll_tokens"):
        if rec.get(key) is not None:
            ctx[key] = rec[key]
    if isinstance(rec.get("passages"), list):  # a system with retrieval: the texts it was given
        ctx["passages"] = [p.get("text", "") if isinstance(p, dict) else str(p) for p in rec["passages"]]
    return ctx


def _score_metric(metric: Metric, samples: list[dict], systems: list[str], refs: list[list[str]],
                  distractors: list[Optional[int]]) -> dict[str, tuple[Any, list[dict]]]:
    """Score one metric for all systems in one call; fill the records; return system -> (scores, item contexts)."""
    import numpy as np

    preds, targets, ctxs, spans = [], [], [], []
    for system in systems:
        for i, sample in enumerate(samples):
            pred = sample["systems"][system].get("prediction") or ""
            candidates = refs[i] if metric.kind == "reference" else refs[i][:1]
            spans.append((len(preds), len(candidates)))
            for r, ref in enumerate(candidates):
                preds.append(pred)
                targets.append(ref)
                ctxs.append(_context(sample, system, r))
    n_main = len(preds)
    with_distractor = metric.is_similarity
    if with_distractor:
        for system in systems:
            for i, sample in enumerate(samples):
                if distractors[i] is not None:
                    d = distractors[i]
                    preds.append(sample["systems"][system].get("prediction") or "")
                    targets.append(refs[d][0])
                    ctxs.append({**_context(sample, system, None), "distractor_id": samples[d]["id"]})
        # The null pairs: an item's first reference against its distractor's, what unrelated answers score
        # (medqa_bench.analysis.thresholds calibrates the soft-match thresholds on them). One per item.
        n_dist = len(preds)
        for i, sample in enumerate(samples):
            if distractors[i] is not None:
                d = distractors[i]
                preds.append(refs[i][0])
                targets.append(refs[d][0])
                ctxs.append({"id": sample["id"], "qtype": sample.get("qtype", ""), "focus": sample.get("focus", ""),
                             "question": sample.get("question", ""), "system": None, "reference_index": 0,
                             "distractor_id": samples[d]["id"]})
    out = metric.compute(predictions=preds, references=targets, items=ctxs)
    if with_distractor:
        k_null = n_dist
        for i, sample in enumerate(samples):
            if distractors[i] is not None:
                sample.setdefault("null_scores", {})[metric.name] = float(out[k_null])
                k_null += 1

    pick = np.argmax if metric.higher_is_better else np.argmin
    per_system: dict[str, tuple[Any, list[dict]]] = {}
    k_span, k_dist = 0, n_main
    for system in systems:
        scores = np.empty(len(samples))
        item_ctx = []
        for i, sample in enumerate(samples):
            start, count = spans[k_span]
            k_span += 1
            best = _best(pick, out[start : start + count])
            scores[i] = out[start + best] if best is not None else np.nan
            item_ctx.append(ctxs[start + (best or 0)])
            rec = sample["systems"][system]
            rec.setdefault("scores", {})[metric.name] = float(scores[i]) if best is not None else None
            if metric.kind == "reference":
                rec.setdefault("best_reference", {})[metric.name] = best
            if with_distractor and distractors[i] is not None:
                rec.setdefault("distractor_scores", {})[metric.name] = float(out[k_dist])
                k_dist += 1
        per_system[system] = (scores, item_ctx)
    return per_system


def _best(pick, candidates) -> int | None:
    """The position of the best candidate score (``pick``: argmax or argmin), ignoring NaN (a pair a metric that
    ``allows_missing`` could not score); None when none was scored."""
    import numpy as np

    scored = np.flatnonzero(~np.isnan(candidates))
    if len(scored) == len(candidates):
        return int(pick(candidates))
    return int(scored[pick(candidates[scored])]) if len(scored) else None


def _nearest_qtype(metric: Metric, samples: list[dict], systems: list[str], refs: list[list[str]]) -> None:
    import numpy as np

    first = [r[0] for r in refs]
    qtypes = [str(s.get("qtype", "")) for s in samples]
    pick = np.argmax if metric.higher_is_better else np.argmin
    for system in systems:
        preds = [s["systems"][system].get("prediction") or "" for s in samples]
        for start in range(0, len(preds), _PAIRWISE_ROWS):
            block = preds[start : start + _PAIRWISE_ROWS]
            try:
                sim = np.asarray(metric.pairwise(block, first), dtype=np.float64)
            except MetricError:
                raise
            except Exception as exc:
                raise MetricError(
                    f"metric '{metric.name}' ({metric.source}): pairwise scoring failed for system '{system}': "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if sim.shape != (len(block), len(first)) or not np.all(np.isfinite(sim)):
                raise MetricError(
                    f"metric '{metric.name}' ({metric.source}): pairwise returned shape {sim.shape} or non-finite "
                    f"values; expected ({len(block)}, {len(first)}) finite scores"
                )
            best = pick(sim, axis=1)
            for row, j in enumerate(best):
                rec = samples[start + row]["systems"][system]
                rec.setdefault("nearest_qtype", {})[metric.name] = [qtypes[j], float(sim[row, j])]


def _scored_systems(metric: Metric, samples: list[dict], systems: list[str]) -> list[str]:
    """The systems a metric scores: all of them, except that an NLL metric skips rows without NLLs (reference
    rows, which no language model produced) and a context metric rows without passages (no retrieval)."""
    if metric.kind == "context":
        return [s for s in systems if all(isinstance((r["systems"].get(s) or {}).get("passages"), list) for r in samples)]
    if metric.kind != "nll":
        return list(systems)
    return [s for s in systems if any((r["systems"].get(s) or {}).get("nll_sum") is not None for r in samples)]


def score_samples(
    samples: list[dict],
    metrics: list[Metric],
    systems: list[str],
    *,
    seed: int = 0,
    n_bootstrap: int = 1000,
    progress: bool = True,
) -> tuple[dict, dict]:
    """Fill per-item scores into samples (in place); return (results, metric_info).

    ``results[system][metric] = {"value", "ci_low", "ci_high", "n"}`` with a 95% percentile bootstrap CI
    (``n_bootstrap`` resamples of items, seeded; 0 gives a zero-width interval); ``metric_info[name]`` is the
    ``MetricInfo`` of ``results.json``. Each sample gets ``distractor_id``; each of its system records gets
    ``scores``, ``best_reference``, ``distractor_scores`` and ``nearest_qtype`` entries (see the module doc).

    >>> from medqa_bench.metrics import resolve_metrics, score_samples
    >>> samples = [{"id": "q1", "focus": "flu", "references": ["Fever and cough."],
    ...             "systems": {"base": {"prediction": "fever, cough"}}},
    ...            {"id": "q2", "focus": "gout", "references": ["Joint pain."],
    ...             "systems": {"base": {"prediction": "pain in the joints"}}}]
    >>> results, info = score_samples(samples, resolve_metrics(["token_f1"]), ["base"], progress=False)
    >>> samples[0]["systems"]["base"]["scores"], samples[0]["distractor_id"]
    ({'token_f1': 0.8}, 'q2')
    """
    from tqdm.auto import tqdm

    _check_samples(samples, metrics, systems)
    refs = [list(s.get("references") or [s["reference"]]) for s in samples]
    ids = [s["id"] for s in samples]
    position = {item_id: k for k, item_id in enumerate(ids)}
    distractor_ids = assign_distractors(samples, seed)
    for s, d in zip(samples, distractor_ids):
        s["distractor_id"] = d
    distractors = [position[d] if d is not None else None for d in distractor_ids]
    several_qtypes = len({str(s.get("qtype", "")) for s in samples}) >= 2
    index = bootstrap_index(len(samples), int(n_bootstrap), seed)

    results: dict[str, dict[str, dict]] = {system: {} for system in systems}
    info: dict[str, dict] = {}
    bar = tqdm(metrics, desc="scoring", unit="metric", disable=not progress)
    for metric in bar:
        bar.set_postfix_str(metric.name)
        scored = _scored_systems(metric, samples, systems)
        if not scored and metric.kind == "context":  # no system retrieved: the metric does not apply to this run
            continue
        info[metric.name] = metric.describe()
        if not scored:
            continue
        per_system = _score_metric(metric, samples, scored, refs, distractors)
        if several_qtypes and metric.is_similarity and metric.pairwise is not None:
            _nearest_qtype(metric, samples, scored, refs)
        for system in scored:
            scores, item_ctx = per_system[system]
            results[system][metric.name] = _corpus_value(metric, scores, item_ctx, index, n_bootstrap, seed)
        info[metric.name] = metric.describe()  # again: a metric's details are known once it has scored
    return results, info


def _corpus_value(metric: Metric, scores, item_ctx: list[dict], index, n_bootstrap: int, seed: int) -> dict:
    """``{"value", "ci_low", "ci_high", "n"}``; for a metric that ``allows_missing``, over the items it scored, with
    ``n_missing`` the others (their own resamples: the run's shared ones would draw items it did not score)."""
    import numpy as np

    if not metric.allows_missing:
        value, lo, hi = bootstrap_ci(metric, scores, item_ctx, index)
        return {"value": value, "ci_low": lo, "ci_high": hi, "n": len(scores)}
    keep = ~np.isnan(scores)
    missing = int(len(scores) - keep.sum())
    if not keep.any():
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0, "n_missing": missing}
    if missing:
        scores, item_ctx = scores[keep], [c for c, k in zip(item_ctx, keep) if k]
        index = bootstrap_index(len(scores), int(n_bootstrap), seed)
    value, lo, hi = bootstrap_ci(metric, scores, item_ctx, index)
    return {"value": value, "ci_low": lo, "ci_high": hi, "n": len(scores), "n_missing": missing}


def score_item_sets(samples: list[dict], metrics: list[Metric], system_kinds: dict[str, str | None], *,
                    seed: int = 0, progress: bool = True) -> tuple[dict, dict]:
    """:func:`score_samples`, each metric on the items it applies to: the NLL metrics on every item, the others on the
    generated items (``generated`` not false; an item the NLL metrics score alone holds no answer and no reference
    row). ``system_kinds``: each system's kind (a ``"reference"`` row answers the generated items only). Each metric's
    info records its items (``items``: "all" or "generated") and each value their number (``n``); the two item sets
    have bootstrap resamples of their own. A run whose items are all generated is scored as one set, as before.
    """
    systems = list(system_kinds)
    generated = [s for s in samples if s.get("generated", True)]
    nll = [m for m in metrics if m.kind == "nll"]
    if len(generated) == len(samples) or not nll:
        scored, info = score_samples(generated, metrics, systems, seed=seed, progress=progress)
    else:
        lm = [n for n in systems if system_kinds[n] != "reference"]
        scored, info = score_samples(samples, nll, lm, seed=seed, progress=progress)
        others = [m for m in metrics if m.kind != "nll"]
        if others:  # scored second: the generated items' distractors are drawn among themselves, as before
            more, more_info = score_samples(generated, others, systems, seed=seed, progress=progress)
            scored = {s: {**scored.get(s, {}), **more.get(s, {})} for s in systems}
            info.update(more_info)
        for s in samples:
            if not s.get("generated", True):
                s.pop("distractor_id", None)  # drawn by the NLL call; no metric of these items uses a distractor
    order = [m.name for m in metrics]
    info = {name: {**info[name], "items": "all" if info[name].get("kind") == "nll" else "generated"}
            for name in order if name in info}
    scored = {s: {name: scored[s][name] for name in order if name in scored.get(s, {})} for s in systems}
    return scored, info
