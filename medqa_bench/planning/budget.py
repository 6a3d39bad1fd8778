"""The generation budget: enough new tokens for the answers the references give, so no system is cut short.

A budget below the references' lengths makes every overlap metric compare cut-off texts (measured: with 256 new
tokens, 230 of 266 chat-baseline answers and all 266 adapter answers on the symptoms test split hit the cap, where
the median reference has about 370 tokens). The automatic budget is::

    max_new_tokens = min(AUTO_CAP, max(AUTO_FLOOR, p95))

where ``p95`` is the 95th percentile (nearest rank) of the token lengths, in the evaluated model's tokenizer, of the
first reference of every item of the evaluated split -- the whole split, not a ``--limit`` sample, so the budget
does not move with the sample. The cap bounds a run's cost on answers of thousands of tokens. ``references_longer``
counts the references a model could not reproduce and end within the budget (``n >= max_new_tokens``: the EOS
needs a token of its own), and the report states it. On a CPU, a run evaluates fewer items rather than cutting answers.

>>> auto_max_new_tokens([10, 20, 30, 40, 400])["max_new_tokens"]
400
"""

from __future__ import annotations

import math
from typing import Any, Sequence

AUTO_PERCENTILE = 95
AUTO_CAP = 1024
AUTO_FLOOR = 32
RULE = (f"max_new_tokens = min({AUTO_CAP}, max({AUTO_FLOOR}, the {AUTO_PERCENTILE}th percentile (nearest rank) of "
        "the evaluated split's reference lengths in the model's tokens))")


def nearest_rank(values: Sequence[int], pct: float) -> int:
    """The nearest-rank percentile: the smallest value with at least ``pct`` % of the values at or below it."""
    ordered = sorted(values)
    return int(ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)])


def auto_max_new_tokens(reference_tokens: Sequence[int]) -> dict[str, Any]:
    """The automatic budget for references of these token lengths, with what went into it (for results.json)."""
    if not reference_tokens:
        return {"max_new_tokens": AUTO_FLOOR, "rule": RULE, "source": "auto", "n_references": 0}
    p = nearest_rank(reference_tokens, AUTO_PERCENTILE)
    budget = min(AUTO_CAP, max(AUTO_FLOOR, p))
    return {
        "max_new_tokens": budget,
        "source": "auto",
        "rule": RULE,
        "percentile": AUTO_PERCENTILE,
        "percentile_tokens": p,
        "capped": p > AUTO_CAP,
        "n_references": len(reference_tokens),
        "references_longer": sum(1 for n in reference_tokens if n >= budget),
    }


def given_budget(max_new_tokens: int, reference_tokens: Sequence[int]) -> dict[str, Any]:
    """A budget the user set, with how many references it cannot hold."""
    return {
        "max_new_tokens": int(max_new_tokens),
        "source": "given",
        "rule": "set by the user (decoding.max_new_tokens / --max-new-tokens)",
        "n_references": len(reference_tokens),
        "references_longer": sum(1 for n in reference_tokens if n >= max_new_tokens),
        "auto_would_be": auto_max_new_tokens(reference_tokens)["max_new_tokens"] if reference_tokens else None,
    }
