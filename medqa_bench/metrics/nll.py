"""Loss and perplexity of the reference answer under each system, from the inference stage's NLL fields.

One definition (STYLE.md: "perplexity is computed in several incompatible ways"; ours is one):

    per item   loss_i = nll_sum_i / nll_tokens_i           perplexity_i = exp(loss_i)
    corpus     loss   = Σ nll_sum / Σ nll_tokens            perplexity   = exp(loss)

i.e. the corpus value is token-weighted, not a mean of per-item values; the bootstrap recomputes this
ratio on every resample. ``nll_sum`` is in nats, summed over the first reference's tokens given the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import MetricError
from .base import Metric, describe_item


def _nll_fields(items: Sequence[dict], metric: str):
    import numpy as np

    missing = [it for it in items if it.get("nll_sum") is None or it.get("nll_tokens") is None]
    if missing:
        raise MetricError(
            f"metric '{metric}' needs nll_sum and nll_tokens, but {len(missing)} of {len(items)} item records lack "
            f"them (first: {describe_item(missing[0])}); run inference with NLL scoring, or drop '{metric}' from "
            "--metrics"
        )
    nll = np.array([float(it["nll_sum"]) for it in items], dtype=np.float64)
    tokens = np.array([float(it["nll_tokens"]) for it in items], dtype=np.float64)
    empty = np.flatnonzero(tokens <= 0)
    if empty.size:
        raise MetricError(
            f"metric '{metric}': {describe_item(items[int(empty[0])])} has nll_tokens = {tokens[empty[0]]:g}; "
            "an empty reference has no loss"
        )
    return nll, tokens


@dataclass(frozen=True)
class CorpusNLL:
    """Σ nll_sum / Σ nll_tokens over the items, exponentiated for perplexity."""

    metric: str
    exponentiate: bool

    def __call__(self, scores, items) -> float:
        import numpy as np

        return float(self.resampled(scores, items, np.arange(len(items))[None, :])[0])

    def resampled(self, scores, items, index):
        import numpy as np

        nll, tokens = _nll_fields(items, self.metric)
        value = nll[index].sum(axis=1) / tokens[index].sum(axis=1)
        return np.exp(value) if self.exponentiate else value


def _per_item(metric: str, exponentiate: bool):
    def score(predictions, references, items):
        import numpy as np

        nll, tokens = _nll_fields(items, metric)
        value = nll / tokens
        return np.exp(value) if exponentiate else value

    return score


def loss() -> Metric:
    return Metric(
        name="loss",
        higher_is_better=False,
        score=_per_item("loss", False),
        aggregate=CorpusNLL("loss", False),
        kind="nll",
        signature="loss|nats/token|reference=first|corpus=sum(nll)/sum(tokens)",
    )


def perplexity() -> Metric:
    return Metric(
        name="perplexity",
        higher_is_better=False,
        score=_per_item("perplexity", True),
        aggregate=CorpusNLL("perplexity", True),
        kind="nll",
        signature="perplexity|exp(nats/token)|reference=first|corpus=exp(sum(nll)/sum(tokens))",
    )
