"""One registry for every metric: built-ins, installed entry points and ``--plugin`` modules.

The generic :class:`~medqa_bench.registry.Registry` (shared with the inference backends): entries are lazy
(``"module:attr"`` strings or loaders), so nothing heavy is imported until a metric is built; what an entry loads to is
checked (a :class:`Metric`, or a factory returning one); a second entry under a taken name is refused, naming both;
a miss answers "did you mean …".

>>> [m.name for m in resolve_metrics(["rougeL", "token_f1"])]
['rougeL', 'token_f1']
>>> resolve_metrics(["rougel"])                 # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
MetricError: unknown metric 'rougel'; did you mean rougeL, rouge1? ...
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from typing import Any, Iterable, Sequence

from ..errors import MetricError
from ..registry import Registry, import_attr  # noqa: F401 - import_attr: plugins.py's, from here
from .base import Metric

log = logging.getLogger(__name__)

#: Built-in metrics, as lazy "module:factory" entries: listing names imports none of them.
BUILTINS: dict[str, str] = {
    "loss": "medqa_bench.metrics.nll:loss",
    "perplexity": "medqa_bench.metrics.nll:perplexity",
    "exact_match": "medqa_bench.metrics.text:exact_match",
    "fuzzy": "medqa_bench.metrics.text:fuzzy",
    "fuzzy_token_set": "medqa_bench.metrics.text:fuzzy_token_set",
    "rouge1": "medqa_bench.metrics.rouge:rouge1",
    "rouge2": "medqa_bench.metrics.rouge:rouge2",
    "rougeL": "medqa_bench.metrics.rouge:rougeL",
    "rougeLsum": "medqa_bench.metrics.rouge:rougeLsum",
    "token_f1": "medqa_bench.metrics.text:token_f1",
    "embedding_similarity": "medqa_bench.metrics.embedding:embedding_similarity",
    "embedding_chunked_mean": "medqa_bench.metrics.chunked:embedding_chunked_mean",
    "embedding_chunked_maxsim": "medqa_bench.metrics.chunked:embedding_chunked_maxsim",
    "idf_token_f1": "medqa_bench.metrics.idf:idf_token_f1",
    "bm25_similarity": "medqa_bench.metrics.bm25sim:bm25_similarity",
    "context_recall": "medqa_bench.metrics.grounding:context_recall",
    "answer_grounding": "medqa_bench.metrics.grounding:answer_grounding",
    "judge_grade": "medqa_bench.metrics.judge:judge_grade",
}

#: Names that stand for several metrics in ``--metrics`` ("default" too), and whose ``--metric-param GROUP.KEY=V``
#: goes to each member (a member's own parameter wins). "judge" names the LLM judge's metric(s).
GROUPS: dict[str, tuple[str, ...]] = {
    "judge": ("judge_grade",),
}

DEFAULT_METRICS = [
    "loss", "perplexity", "exact_match", "fuzzy", "rouge1", "rouge2", "rougeL", "rougeLsum", "token_f1",
    "embedding_similarity", "context_recall", "answer_grounding",
]  # fmt: skip  (the last two score systems with retrieval only; a run without --rag records neither; judge_grade
#    is asked for by name, "--metrics default,judge": each answer costs a forward pass of a judge model)

ENTRY_POINT_GROUP = "medqa_bench.metrics"


def _is_metric_or_factory(obj: Any) -> bool:
    return isinstance(obj, Metric) or (callable(obj) and not isinstance(obj, type))


def metric_registry(plugins: Sequence[str] = (), *, entry_points: bool = True) -> Registry:
    """Built-ins, then installed ``medqa_bench.metrics`` entry points, then each ``--plugin`` in order."""
    return _registry(plugins, entry_points=entry_points)[0]


def _registry(plugins: Sequence[str], *, entry_points: bool = True,
              broken: list[dict[str, Any]] | None = None) -> tuple[Registry, dict[str, list[str]]]:
    """The registry and the metric names each plugin brought. With ``broken`` (a list), a plugin or entry point
    that cannot be registered is appended there as a row (``name``, ``source``, ``error``) instead of raising."""
    from .plugins import load_entry_points, load_plugin

    reg: Registry = Registry("metric", _is_metric_or_factory, "a Metric or a function returning one",
                             error=MetricError)
    for name, target in BUILTINS.items():
        reg.register(name, target, source="builtin")
    if entry_points:
        load_entry_points(reg, broken=broken)
    by_plugin: dict[str, list[str]] = {}
    for spec in dict.fromkeys(plugins):
        try:
            by_plugin[spec] = load_plugin(reg, spec)
        except MetricError as exc:
            if broken is None:
                raise
            broken.append({"name": f"({spec})", "source": f"plugin:{spec}", "error": str(exc)})
    return reg, by_plugin


def build_metric(reg: Registry, name: str, params: dict[str, Any] | None = None) -> Metric:
    """The registered object for ``name``, called with ``params`` if it is a factory; checked and stamped."""
    obj = reg.get(name)
    params = dict(params or {})
    source = reg.source(name)
    if isinstance(obj, Metric):
        if params:
            raise MetricError(f"metric '{name}' ({source}) takes no parameters; got {', '.join(sorted(params))}")
        metric = obj
    else:
        try:
            inspect.signature(obj).bind(**params)
        except TypeError:
            accepted = [p for p in inspect.signature(obj).parameters if p not in ("args", "kwargs")]
            raise MetricError(
                f"metric '{name}' ({source}) does not accept parameters {sorted(params)}; "
                f"it accepts: {', '.join(accepted) or 'none'}"
            ) from None
        except ValueError:  # no introspectable signature (a C callable): let the call decide
            pass
        try:
            metric = obj(**params)
        except MetricError:
            raise
        except Exception as exc:
            raise MetricError(f"metric '{name}' ({source}) failed to build: {type(exc).__name__}: {exc}") from exc
        if not isinstance(metric, Metric):
            raise MetricError(f"metric '{name}' ({source}): its factory returned {type(metric).__name__}, not a Metric")
    if metric.name != name:
        raise MetricError(
            f"metric registered as '{name}' ({source}) is named '{metric.name}'; the entry-point or registered name "
            "must equal Metric.name"
        )
    signature = metric.signature or "|".join(filter(None, [name, source, reg.provenance(name)]))
    if source != "builtin":
        # Built-in factories write their parameters into the signature themselves; a plugin's are added here so
        # two runs with different parameters never share a signature.
        extra = [f"{k}={json.dumps(v, sort_keys=True, default=str)}" for k, v in sorted(params.items())
                 if f"{k}=" not in signature]
        signature = "|".join([signature] + extra)
    return dataclasses.replace(metric, source=source, signature=signature)


def _expand(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        for part in (p.strip() for p in str(n).split(",")):
            if part == "default":
                out.extend(DEFAULT_METRICS)
            elif part in GROUPS:
                out.extend(GROUPS[part])
            elif part:
                out.append(part)
    return list(dict.fromkeys(out))


def resolve_metrics(
    names: list[str] | None, *, plugins: Sequence[str] = (), params: dict[str, dict[str, Any]] | None = None,
    available: Sequence[str] = (),
) -> list[Metric]:
    """Build the named metrics, in order, with their parameters.

    ``names``: metric names (``"default"`` expands to :data:`DEFAULT_METRICS`; comma-separated strings are
    split); ``None``: the defaults. Every metric of the ``plugins`` given here is built too, after the named ones:
    naming a plugin asks for its metrics, so ``--plugin P --metrics rougeL`` scores P's metrics as well, and says so.
    ``available``: plugins whose metrics may be named but are not asked for (the plugins a run recorded, when
    ``score`` computes some of its metrics again). Installed entry-point metrics are available and scored when named.
    ``params``: ``{"embedding_similarity": {"model": "/path"}}``; they show in the signature.
    """
    reg, by_plugin = _registry([*available, *plugins])
    from_plugins = list(dict.fromkeys(n for spec in dict.fromkeys(plugins) for n in by_plugin[spec]))
    if names is None:
        wanted = _expand(DEFAULT_METRICS + from_plugins)
    else:
        wanted = _expand(names)
        if not wanted:
            raise MetricError("no metrics selected; name at least one, e.g. --metrics exact_match,rougeL")
        left_out = [n for n in from_plugins if n not in wanted]
        if left_out:
            log.warning("--metrics leaves out %s of --plugin %s; scoring %s too (a plugin given is scored)",
                        ", ".join(left_out), ", ".join(s for s in plugins if set(by_plugin[s]) & set(left_out)),
                        "it" if len(left_out) == 1 else "them")
            wanted += left_out
    params = dict(params or {})
    for key, value in params.items():
        if key not in wanted and not set(GROUPS.get(key, ())) & set(wanted):
            raise MetricError(
                f"parameters given for metric '{key}', which is not selected (selected: {', '.join(wanted)})"
            )
        if not isinstance(value, dict):
            raise MetricError(f"parameters of metric '{key}' must be a mapping of name to value, not {value!r}")
    return [build_metric(reg, n, metric_params_for(n, params)) for n in wanted]


def metric_params_for(name: str, params: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The parameters metric ``name`` is built with: those of each group it belongs to, then its own (winning)."""
    merged: dict[str, Any] = {}
    for group, members in GROUPS.items():
        if name in members:
            merged.update(params.get(group) or {})
    merged.update(params.get(name) or {})
    return merged or None


def list_metrics(plugins: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every available metric: ``name, higher_is_better, kind, source, signature, bounds, default`` (+ ``error``).

    A metric, a ``--plugin`` or an entry point that fails to load is listed with its ``error`` (``higher_is_better``
    and ``kind`` None) rather than hiding the others or stopping the listing.
    """
    broken: list[dict[str, Any]] = []
    reg, _ = _registry(plugins, broken=broken)
    rows = []
    for name in reg.names():
        row: dict[str, Any] = {"name": name, "source": reg.source(name), "default": name in DEFAULT_METRICS}
        try:
            info = build_metric(reg, name).describe()
            row.update({k: info[k] for k in ("higher_is_better", "kind", "signature", "bounds")})
        except MetricError as exc:
            row.update({"higher_is_better": None, "kind": None, "signature": "", "bounds": None, "error": str(exc)})
        rows.append(row)
    for row in broken:
        rows.append({"higher_is_better": None, "kind": None, "signature": "", "bounds": None, "default": False, **row})
    return rows
