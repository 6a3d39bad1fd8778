"""The one writer of ``results.json``: its sections in their order, from the run's typed pieces.

A run writes results.json in two steps: :func:`build_results` makes the head (provenance, the spec, the rows, the
data) once inference is done; :func:`with_sections` sets what scoring adds (``metrics``, ``results``, ``validity``,
then ``analysis``, ``verdict``, ``timings``). ``score`` reads a run folder's file and sets the same sections again.
A section the file already holds keeps its place and a new one goes last, so a folder written by an older minor
version keeps its order; :data:`SECTIONS` is the order of a file this version writes. The shapes are declared in
:mod:`medqa_bench.schema` (and read back by :func:`medqa_bench.schema.read_results`).

>>> head = build_results(spec={}, environment={}, models={"none": {"reference": "m"}}, systems={}, budget={},
...                      loss_definition={}, data={}, cache={}, run_name="r", created="2025-01-01T00:00:00+00:00")
>>> list(with_sections(head, metrics={}, results={}))[-3:]
['cache', 'metrics', 'results']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from datetime import datetime, timezone
from typing import Any

from .schema import SCHEMA_VERSION

#: The sections of results.json as this version writes them, in order.
SECTIONS = ("schema_version", "medqa_bench_version", "created", "run_name", "spec", "environment", "model", "models",
            "systems", "budget", "loss_definition", "data", "cache", "metrics", "results", "validity", "analysis",
            "verdict", "timings")
_SCORED = SECTIONS[SECTIONS.index("metrics"):]


def record_dict(record: Any) -> dict[str, Any]:
    """A record of :mod:`medqa_bench.schema` as results.json holds it: every declared field in declaration order
    (``raw`` left out); a mapping is copied as it is."""
    if is_dataclass(record):
        return {f.name: getattr(record, f.name) for f in fields(record) if f.name != "raw"}
    return dict(record)


def build_results(*, spec: Mapping[str, Any], environment: Mapping[str, Any], models: Mapping[str, Mapping[str, Any]],
                  systems: Mapping[str, Mapping[str, Any]], budget: Mapping[str, Any],
                  loss_definition: Mapping[str, Any], data: Any, cache: Mapping[str, Any], run_name: str,
                  created: str | None = None, schema_version: str = SCHEMA_VERSION,
                  medqa_bench_version: str | None = None) -> dict[str, Any]:
    """The head of results.json, before scoring: ``model`` is the first of ``models`` (the backend's describe());
    ``data`` is a :class:`medqa_bench.schema.DataRecord` (or the mapping a file holds); ``created`` defaults to now
    (UTC, seconds), ``medqa_bench_version`` to this package's."""
    if medqa_bench_version is None:
        from . import __version__ as medqa_bench_version
    return {
        "schema_version": schema_version,
        "medqa_bench_version": medqa_bench_version,
        "created": created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_name": run_name,
        "spec": spec,
        "environment": environment,
        "model": next(iter(models.values())),
        "models": models,
        "systems": systems,
        "budget": budget,
        "loss_definition": loss_definition,
        "data": record_dict(data),
        "cache": cache,
    }


def with_sections(record: Mapping[str, Any], /, **sections: Any) -> dict[str, Any]:
    """``record`` (results.json as a dict) with the scored sections set, in the order given: a section it holds
    keeps its place, a new one goes last (a dict's assignment). Only :data:`SECTIONS` from ``metrics`` on are set
    this way.

    >>> list(with_sections({"metrics": 1, "timings": 2}, validity=3, metrics=4).items())
    [('metrics', 4), ('timings', 2), ('validity', 3)]
    """
    unknown = [k for k in sections if k not in _SCORED]
    if unknown:
        raise TypeError(f"with_sections: {unknown[0]!r} is not a scored section ({', '.join(_SCORED)})")
    out = dict(record)
    for key, value in sections.items():
        out[key] = value
    return out
