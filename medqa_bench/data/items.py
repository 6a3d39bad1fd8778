"""Which items of a split a run evaluates and a training run learns from: one seeded draw for both.

The evaluation (:mod:`medqa_bench.runner`) and the trainer (``trainers.qlora``) draw their samples here, so a
``limit`` and a ``seed`` name the same items wherever they are used. The draw is part of what a run records: run
folders, cache keys and adapter manifests hold the items it chose, so it must not change (``tests/test_items.py``
holds it to ids recorded by the code that wrote the committed reports).

>>> select_items(list("abcdefgh"), 3, seed=0)
['d', 'g', 'h']
>>> select_item_sets(list("abcdefgh"), 2, 4, seed=0)
(['d', 'f', 'g', 'h'], [False, False, True, True])
"""

from __future__ import annotations

import random
from typing import Sequence, TypeVar

__all__ = ["select_items", "select_item_sets"]

T = TypeVar("T")


def select_items(examples: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """A seeded sample of ``limit`` items (``0`` or ``None``: all), kept in split order (the draw is random, the
    order is not)."""
    if not limit or limit >= len(examples):
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


def select_item_sets(examples: Sequence[T], limit: int, nll_limit: int, seed: int) -> tuple[list[T], list[bool]]:
    """The items of a run and, for each, whether it is generated: the seeded sample of ``limit`` items
    (:func:`select_items`, so the generated items do not move with ``nll_limit``) and, scored by the NLL metrics only,
    a seeded sample of the other items that makes ``nll_limit`` in all (0: every item), in split order."""
    generated = select_items(examples, limit, seed)
    chosen = {id(e) for e in generated}
    if nll_limit and nll_limit <= len(generated) or len(generated) == len(examples):
        return generated, [True] * len(generated)
    rest = [e for e in examples if id(e) not in chosen]
    more = {id(e) for e in select_items(rest, nll_limit - len(generated) if nll_limit else 0, seed)}
    items = [e for e in examples if id(e) in chosen or id(e) in more]
    return items, [id(e) in chosen for e in items]
