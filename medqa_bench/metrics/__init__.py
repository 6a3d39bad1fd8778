"""Metrics: one registry of built-ins and plugins, and the scoring stage that fills per-item scores.

>>> from medqa_bench.metrics import resolve_metrics, list_metrics, DEFAULT_METRICS
>>> [m.name for m in resolve_metrics(["exact_match", "rougeL"])]
['exact_match', 'rougeL']

Importing this package imports no heavy library: the built-ins are lazy registry entries, and
:func:`score_samples` (numpy, tqdm) loads on first use. Plugins: see :mod:`medqa_bench.metrics.plugins`.
"""

from __future__ import annotations

from typing import Any

from .base import KINDS, Metric
from .registry import (BUILTINS, DEFAULT_METRICS, ENTRY_POINT_GROUP, Registry, list_metrics, metric_registry,
    resolve_metrics)

__all__ = [
    "BUILTINS",
    "DEFAULT_METRICS",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "Metric",
    "Registry",
    "assign_distractors",
    "list_metrics",
    "metric_registry",
    "resolve_metrics",
    "score_samples",
]


def __getattr__(name: str) -> Any:
    if name in ("score_samples", "assign_distractors", "bootstrap_ci"):
        from . import scoring

        return getattr(scoring, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
