"""The :class:`Metric` record and the one checked way to call it.

A metric is data plus a batched function, as in lighteval's ``metric_utils``: nothing here imports a heavy
library, so ``import medqa_bench.metrics`` stays fast and listing metrics loads no model.

>>> from medqa_bench.metrics import resolve_metrics
>>> [em] = resolve_metrics(["exact_match"])
>>> em.compute(predictions=["The fever."], references=["fever"]).tolist()
[1.0]
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from ..errors import MetricError

#: reference: prediction vs each reference (best kept); nll: from the NLL fields; prediction: the prediction alone;
#: context: systems with retrieval only, with ``items[k]["passages"]`` (medqa_bench.metrics.grounding).
KINDS = ("reference", "nll", "prediction", "context")

#: ``score(predictions, references, items) -> one float per pair``, positional, batched over all pairs.
ScoreFn = Callable[[Sequence[str], Sequence[str], Sequence[dict]], Sequence[float]]
#: ``pairwise(predictions, references) -> array of shape (len(predictions), len(references))``.
PairwiseFn = Callable[[Sequence[str], Sequence[str]], Any]


@dataclass(frozen=True)
class Metric:
    """One metric: a name, a direction, a batched per-pair score function and how it aggregates.

    ``score`` receives three sequences of equal length, positionally: predictions, references and one item
    record per pair (``id``, ``qtype``, ``focus``, ``question``, ``system``, ``reference_index`` and, where the
    system has them, ``nll_sum``/``nll_tokens`` and ``passages``: the texts of the passages a system with retrieval
    was given). It returns one finite float per pair. A ``"context"`` metric scores only systems with passages.

    ``aggregate(scores, items) -> float`` turns per-item scores into the corpus value (``None``: the mean). An
    aggregate may also offer ``resampled(scores, items, index) -> array`` for a vectorised bootstrap, where
    ``index`` is a (resamples, items) integer array.

    ``pairwise`` (optional) scores every prediction against every reference at once; with it, a similarity
    metric also gets ``nearest_qtype`` in the scoring stage.

    ``allows_missing``: the metric may return NaN for a pair it could not score (an LLM judge whose answer cannot be
    parsed). Such an item is recorded as ``None``, left out of the aggregate and the paired tests, and counted in the
    result's ``n_missing``; it is never scored 0. Every other metric must return finite scores.

    ``details`` (optional): what the metric knows only once it has scored, merged into its ``MetricInfo`` (an LLM
    judge's full signature with its model's identity, known after the judge loads, and its judgment counts).
    """

    name: str
    higher_is_better: bool
    score: ScoreFn
    signature: str = ""  # everything that changes the value, e.g. "rougeL|f1|stemmer=on|rouge-score=0.1.2"
    aggregate: Optional[Callable[..., float]] = None  # over per-item scores and item records; None = mean
    kind: str = "reference"  # "reference" | "nll" | "prediction" | "context"
    bounds: Optional[tuple[float, float]] = None  # (0, 1) for similarity metrics the soft confusion can use
    source: str = "builtin"  # "builtin", "entry-point:<dist>", "plugin:<path or module:attr>", "evaluate:<path>"
    citation: str = ""
    pairwise: Optional[PairwiseFn] = None
    allows_missing: bool = False
    details: Optional[Callable[[], dict[str, Any]]] = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip() or any(c.isspace() for c in self.name):
            raise MetricError(f"metric name must be a non-empty string without spaces, not {self.name!r}")
        if not isinstance(self.higher_is_better, bool):
            raise MetricError(f"metric '{self.name}': higher_is_better must be True or False")
        if not isinstance(self.allows_missing, bool):
            raise MetricError(f"metric '{self.name}': allows_missing must be True or False")
        if not callable(self.score):
            raise MetricError(f"metric '{self.name}': score must be callable, not {type(self.score).__name__}")
        if self.kind not in KINDS:
            raise MetricError(f"metric '{self.name}': kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.bounds is not None:
            try:
                lo, hi = (float(b) for b in self.bounds)
            except (TypeError, ValueError):
                raise MetricError(f"metric '{self.name}': bounds must be (low, high), not {self.bounds!r}") from None
            if not lo < hi:
                raise MetricError(f"metric '{self.name}': bounds must have low < high, not {self.bounds!r}")
            object.__setattr__(self, "bounds", (lo, hi))

    @property
    def is_similarity(self) -> bool:
        """Bounded in [0, 1]: usable for distractor scores and the soft confusion analysis."""
        return self.bounds == (0.0, 1.0) and self.kind == "reference"

    def describe(self) -> dict[str, Any]:
        """The ``MetricInfo`` written into ``results.json`` (with :attr:`details`, once the metric has scored)."""
        info: dict[str, Any] = {
            "name": self.name,
            "higher_is_better": self.higher_is_better,
            "signature": self.signature,
            "source": self.source,
            "kind": self.kind,
            "bounds": list(self.bounds) if self.bounds is not None else None,
        }
        if self.allows_missing:
            info["allows_missing"] = True
        if self.details is not None:
            info.update(self.details())
        return info

    def compute(self, *, predictions: Sequence[str], references: Sequence[str], items: Sequence[dict] | None = None):
        """Score pairs and check the answer: one finite number per pair, as a float64 numpy array.

        Keyword-only, so predictions and references cannot be swapped by position. A failure raises
        :class:`MetricError` naming this metric, its source and the item at fault.
        """
        predictions, references = list(predictions), list(references)
        if len(predictions) != len(references):
            raise MetricError(
                f"metric '{self.name}': {len(predictions)} predictions but {len(references)} references"
            )
        items = [{} for _ in predictions] if items is None else list(items)
        if len(items) != len(predictions):
            raise MetricError(f"metric '{self.name}': {len(items)} item records for {len(predictions)} pairs")
        if not predictions:
            import numpy as np

            return np.zeros(0)
        try:
            out = self.score(predictions, references, items)
        except MetricError:
            raise
        except Exception as exc:
            raise self._locate_failure(exc, predictions, references, items) from exc
        return check_scores(self, out, items)

    def _locate_failure(self, exc: Exception, predictions, references, items) -> MetricError:
        """The batch raised: bisect to the first pair that raises on its own, so the message can name it."""
        lo, hi = 0, len(predictions)
        culprit = None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            try:
                self.score(predictions[lo:mid], references[lo:mid], items[lo:mid])
            except Exception:
                hi = mid
                continue
            lo = mid
        if hi - lo == 1:
            try:
                self.score(predictions[lo:hi], references[lo:hi], items[lo:hi])
            except Exception:
                culprit = lo
        where = f" on {describe_item(items[culprit])}" if culprit is not None else f" on a batch of {len(items)} pairs"
        return MetricError(
            f"metric '{self.name}' ({self.source}) raised {type(exc).__name__}{where}: {exc}"
        )


def describe_item(item: dict) -> str:
    parts = [f"item '{item.get('id', '?')}'"]
    if item.get("system"):
        parts.append(f"system '{item['system']}'")
    if item.get("distractor_id"):
        parts.append(f"distractor '{item['distractor_id']}'")
    return ", ".join(parts)


def check_scores(metric: Metric, out: Any, items: Sequence[dict]):
    """One finite real number per pair (or NaN, "not scored", for a metric that ``allows_missing``), or a
    :class:`MetricError` naming the metric, its source and the item."""
    import numpy as np

    who = f"metric '{metric.name}' ({metric.source})"
    if isinstance(out, (str, bytes)) or not hasattr(out, "__len__"):
        raise MetricError(f"{who} returned {type(out).__name__}; it must return one score per pair")
    if len(out) != len(items):
        raise MetricError(
            f"{who} returned {len(out)} scores for {len(items)} pairs (first {describe_item(items[0])}); "
            "it must return exactly one score per (prediction, reference) pair"
        )
    try:
        arr = np.asarray(out, dtype=np.float64)
        if arr.shape != (len(items),):
            raise ValueError(f"shape {arr.shape}")
    except (TypeError, ValueError):
        for k, v in enumerate(out):
            if isinstance(v, bool) or not isinstance(v, (numbers.Real, np.number)) or np.ndim(v) != 0:
                raise MetricError(
                    f"{who} returned {type(v).__name__} {v!r:.40} for {describe_item(items[k])}; scores must be numbers"
                ) from None
        raise MetricError(f"{who} returned scores that are not one number per pair") from None
    bad = np.flatnonzero(np.isinf(arr) if metric.allows_missing else ~np.isfinite(arr))
    if bad.size:
        k = int(bad[0])
        what = "NaN" if math.isnan(arr[k]) else "inf"
        more = f" (and {bad.size - 1} more pairs)" if bad.size > 1 else ""
        raise MetricError(f"{who} returned {what} for {describe_item(items[k])}{more}; scores must be finite")
    return arr
