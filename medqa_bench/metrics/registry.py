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
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import MetricError
from ..registry import Registry
from .base import Metric
from .plugins import ENTRY_POINT_GROUP, load_entry_points, load_plugin  # noqa: F401 - ENTRY_POINT_GROUP: __init__'s
from .provenance import (PluginSource, absolute_plugin_spec, find_recorded_plugin, plugin_check, recorded_plugin,
    same_signature, signature_source, stamp_provenance)

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


def _is_metric_or_factory(obj: Any) -> bool:
    return isinstance(obj, Metric) or (callable(obj) and not isinstance(obj, type))


class MetricRegistry(Registry):
    """The metric registry: the generic one, and where each plugin metric's code came from (``plugin_sources``)."""

    def __init__(self) -> None:
        super().__init__("metric", _is_metric_or_factory, "a Metric or a function returning one", error=MetricError)
        self.plugin_sources: dict[str, PluginSource] = {}


def metric_registry(plugins: Sequence[str] = (), *, entry_points: bool = True) -> Registry:
    """Built-ins, then installed ``medqa_bench.metrics`` entry points, then each ``--plugin`` in order."""
    return _registry(plugins, entry_points=entry_points)[0]


def _registry(plugins: Sequence[str], *, entry_points: bool = True, broken: list[dict[str, Any]] | None = None,
              files_win: bool = False, recorded: Mapping[str, Sequence[str]] | None = None,
              ) -> tuple[MetricRegistry, dict[str, PluginSource]]:
    """The registry and what each plugin brought. With ``broken`` (a list), a plugin or entry point that cannot be
    registered is appended there as a row (``name``, ``source``, ``error``) instead of raising.

    ``files_win`` (``score``): the plugins, then ``recorded`` (a run's plugins, each for the metric names given), are
    registered before the entry points, and an entry point of a name they registered is left out instead of refused.
    """
    reg = MetricRegistry()
    for name, target in BUILTINS.items():
        reg.register(name, target, source="builtin")
    by_plugin: dict[str, PluginSource] = {}

    def add(spec: str, only: Sequence[str] | None = None) -> None:
        try:
            by_plugin[spec] = src = load_plugin(reg, spec, only=only)
        except MetricError as exc:
            if broken is None:
                raise
            broken.append({"name": f"({spec})", "source": f"plugin:{spec}", "error": str(exc)})
            return
        reg.plugin_sources.update(dict.fromkeys(src.metrics, src))

    if entry_points and not files_win:
        load_entry_points(reg, broken=broken)
    for spec in dict.fromkeys(plugins):
        add(spec)
    for spec, names in (recorded or {}).items():
        add(spec, names)
    if entry_points and files_win:
        load_entry_points(reg, broken=broken, skip=set(reg.plugin_sources))
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
    # a plugin by its file name, not its path: the sha256 in its provenance identifies the code
    signature = metric.signature or "|".join(filter(None, [name, signature_source(source), reg.provenance(name)]))
    if source != "builtin":
        # Built-in factories write their parameters into the signature themselves; a plugin's are added here so
        # two runs with different parameters never share a signature.
        extra = [f"{k}={json.dumps(v, sort_keys=True, default=str)}" for k, v in sorted(params.items())
                 if f"{k}=" not in signature]
        signature = "|".join([signature] + extra)
    stamped = dataclasses.replace(metric, source=source, signature=signature)
    src = reg.plugin_sources.get(name) if isinstance(reg, MetricRegistry) else None
    return stamp_provenance(stamped, plugin=src) if src is not None else stamped


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
) -> list[Metric]:
    """Build the named metrics, in order, with their parameters.

    ``names``: metric names (``"default"`` expands to :data:`DEFAULT_METRICS`; comma-separated strings are
    split); ``None``: the defaults. Every metric of the ``plugins`` given here is built too, after the named ones:
    naming a plugin asks for its metrics, so ``--plugin P --metrics rougeL`` scores P's metrics as well, and says so.
    Installed entry-point metrics are available and scored when named (``score``: :func:`resolve_rescore_metrics`).
    ``params``: ``{"embedding_similarity": {"model": "/path"}}``; they show in the signature.
    """
    reg, by_plugin = _registry(plugins)
    wanted = _wanted(names, plugins, by_plugin)
    params = _checked_params(params, wanted)
    return [build_metric(reg, n, metric_params_for(n, params)) for n in wanted]


def _wanted(names: list[str] | None, plugins: Sequence[str], by_plugin: Mapping[str, PluginSource]) -> list[str]:
    """The names to build: ``names`` expanded (None: the defaults), then every metric of the ``plugins`` (a plugin
    given is scored; one left out of ``names`` is added, with a warning)."""
    from_plugins = list(dict.fromkeys(n for spec in dict.fromkeys(plugins) for n in by_plugin[spec].metrics))
    if names is None:
        return _expand(DEFAULT_METRICS + from_plugins)
    wanted = _expand(names)
    if not wanted:
        raise MetricError("no metrics selected; name at least one, e.g. --metrics exact_match,rougeL")
    left_out = [n for n in from_plugins if n not in wanted]
    if left_out:
        log.warning("--metrics leaves out %s of --plugin %s; scoring %s too (a plugin given is scored)",
                    ", ".join(left_out), ", ".join(s for s in plugins if set(by_plugin[s].metrics) & set(left_out)),
                    "it" if len(left_out) == 1 else "them")
    return wanted + left_out


def _checked_params(params: dict[str, dict[str, Any]] | None, wanted: list[str]) -> dict[str, dict[str, Any]]:
    params = dict(params or {})
    for key, value in params.items():
        if key not in wanted and not set(GROUPS.get(key, ())) & set(wanted):
            raise MetricError(
                f"parameters given for metric '{key}', which is not selected (selected: {', '.join(wanted)})"
            )
        if not isinstance(value, dict):
            raise MetricError(f"parameters of metric '{key}' must be a mapping of name to value, not {value!r}")
    return params


def resolve_rescore_metrics(
    names: list[str], recorded: Mapping[str, dict[str, Any]], *, recorded_plugins: Sequence[str] = (),
    plugins: Sequence[str] = (), params: dict[str, dict[str, Any]] | None = None, bases: Sequence[Path] = (),
    run_dir: Path | None = None,
) -> tuple[list[Metric], tuple[str, ...]]:
    """What ``score`` computes again: the metrics ``names`` (and every metric of ``plugins``), each from the code the
    run recorded or from what replaces it, and the plugins the run's spec lists afterwards.

    ``recorded``: results.json's ``metrics``; ``recorded_plugins``: the run's ``spec.plugins``. A metric the run took
    from a plugin comes, in this order, from a ``--plugin`` given now (it overrides the recorded plugin), from an
    installed entry point or built-in of its name whose signature is the recorded one, or from the recorded plugin,
    loaded from the path the run recorded (an older run's relative path: looked for under ``bases``) and only when
    one of its metrics is computed again: never from inside ``run_dir``, which only a ``--plugin`` given now may name
    (:func:`~medqa_bench.metrics.provenance.find_recorded_plugin`). Each such metric's info gets ``plugin_check``: how
    its code was found, its fingerprint against the recorded one, a changed signature
    (:func:`~medqa_bench.metrics.provenance.plugin_check`).
    """
    given = [absolute_plugin_spec(p) for p in dict.fromkeys(plugins)]
    origin = {n: o for n, info in recorded.items() if (o := recorded_plugin(n, info, recorded_plugins))}
    reg, by_plugin = _registry(given, files_win=True)
    wanted = _wanted(names, given, by_plugin)
    params = _checked_params(params, wanted)
    overridden = {n for src in by_plugin.values() for n in src.metrics}
    how: dict[str, str] = {n: "overridden" for n in overridden if n in recorded}
    need: dict[str, list[str]] = {}
    passed_over: dict[str, Metric] = {}  # installed metrics of a recorded plugin's names, with another signature
    for n in wanted:
        if n in overridden or n not in origin:
            continue
        if n in reg:
            try:
                now = build_metric(reg, n, metric_params_for(n, params))
            except MetricError as exc:  # an installed metric that does not load: the run's own file, as recorded
                log.warning("%s: the installed %s does not load (%s); using the run's plugin", n, reg.source(n), exc)
            else:
                if same_signature(recorded[n].get("signature"), now.signature):
                    how[n] = "entry-point"
                    continue
                passed_over[n] = now
        need.setdefault(origin[n], []).append(n)
        how[n] = "recorded"
    located = {o: find_recorded_plugin(o, ns, bases=bases, run_dir=run_dir, recorded=recorded, passed_over=passed_over)
               for o, ns in need.items()}  # nothing is imported before every recorded plugin needed is checked
    if need:
        reg, by_plugin = _registry(given, files_win=True, recorded={located[o]: ns for o, ns in need.items()})
    metrics = []
    for n in wanted:
        metric = build_metric(reg, n, metric_params_for(n, params))
        if n in how:
            check = plugin_check(how[n], recorded[n], metric, passed_over.get(n))
            (log.warning if check["warning"] else log.info)("%s: %s", n, check["note"])
            metric = stamp_provenance(metric, check=check)
        metrics.append(metric)
    kept = []  # a recorded plugin stays the run's unless every metric it brought now comes from elsewhere
    for o in recorded_plugins:
        brought = [n for n, x in origin.items() if x == o]
        if not brought or not all(how.get(n) in ("overridden", "entry-point") for n in brought):
            kept.append(located.get(o, o))
    return metrics, tuple(dict.fromkeys([*kept, *given]))


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
