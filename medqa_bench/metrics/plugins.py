"""Metrics from outside this repository: installed entry points, plugin modules and local ``evaluate`` modules.

Three ways in, none of which touches medqa-bench's code:

1. **An installed package** declares entry points in the group ``medqa_bench.metrics``, one per metric; each value
   is a :class:`~medqa_bench.metrics.Metric`, a function returning one (called with the metric's parameters), or a
   list such as a plugin module's ``METRICS`` holding a metric of the entry point's name. The entry-point name
   must equal ``Metric.name``. Source: ``entry-point:<distribution>``. Installed metrics are listed by
   ``medqa-bench metrics list`` and scored when named in ``--metrics``::

       [project.entry-points."medqa_bench.metrics"]
       medical_term_recall = "medqa_clinical_terms:medical_term_recall"

   ``examples/metric-plugin/`` is such a package.

2. **A plugin module**: ``--plugin path/to/file.py``, ``--plugin package.module`` or
   ``--plugin package.module:NAME``. The convention for a file or module: if it defines ``METRICS`` (a list),
   those are its metrics; otherwise every module-level ``Metric`` object is. Entries of ``METRICS`` and
   ``NAME`` may be ``Metric`` objects or functions returning one (a function is called without arguments to
   learn the name, and with the metric's parameters when built). Source: ``plugin:<path or module:attr>``.
   Metrics of a ``--plugin`` are scored by default (naming a plugin asks for it)::

       # my_metrics.py
       from medqa_bench.metrics import Metric

       def _mentions_doctor(predictions, references, items):
           return [float("doctor" in p.lower()) for p in predictions]

       ADVISES_DOCTOR = Metric("advises_doctor", higher_is_better=True, score=_mentions_doctor,
                               kind="prediction", bounds=(0, 1), signature="advises_doctor|v1")

3. **A local Hugging Face evaluate module**: ``--plugin evaluate:PATH[#KEY]``, where PATH is an evaluate
   metric script or a folder holding ``<folder>.py`` (loaded with ``evaluate.load(PATH)``; Hub names are not
   loaded, so runs stay offline and reproducible). KEY picks the value out of ``compute()``'s dict (needed
   when it has several keys). A list of one value per pair is used as is; a single number is taken as the
   score of a one-pair call, so the module is called pair by pair (slow but exact). The metric is named after
   the file (``<stem>`` or ``<stem>_<KEY>``); its parameters ``higher_is_better`` (default True) and
   ``bounds`` (e.g. ``[0, 1]``) describe it, any others go to ``compute()``. Source: ``evaluate:<PATH>``.

A plugin whose metric raises, returns the wrong number of scores, NaN, inf or a non-number fails with a
:class:`~medqa_bench.errors.MetricError` naming the metric, its source and the item.

**What a run records** of a plugin (its path, the sha256 of the bytes that ran, a copy in the run folder) and how
``score`` finds it again: :mod:`medqa_bench.metrics.provenance`. A file plugin is read once: those bytes are hashed,
copied into the run folder and executed, so what is recorded is what ran.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import logging
import sys
from importlib.metadata import entry_points, version
from pathlib import Path
from types import ModuleType
from typing import Any, Collection

from ..errors import MetricError
from ..storage.fingerprint import sha256_bytes, sha256_file, sha256_files
from ..registry import Registry, import_attr
from .base import Metric
from .provenance import PluginSource, signature_source

#: The entry-point group an installed package declares its metrics in.
ENTRY_POINT_GROUP = "medqa_bench.metrics"

log = logging.getLogger(__name__)


def load_entry_points(reg: Registry, broken: list[dict[str, Any]] | None = None, *,
                      skip: Collection[str] = ()) -> None:
    """Register (lazily: nothing is imported until a metric is built) every entry point of the ``medqa_bench.metrics``
    group. An entry point names one metric; its target is that :class:`Metric`, a function returning it, or a list
    or tuple (a plugin module's ``METRICS``) holding a metric of the entry point's name.

    With ``broken`` (a list), an entry point that cannot be registered (its name taken) is appended there as a row
    instead of raising, so ``medqa-bench metrics list`` still lists the others. Entry points named in ``skip`` are
    left out: ``score`` takes those metrics from a plugin file (one given with ``--plugin``, or the run's own).
    """
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in skip:
            continue
        dist = getattr(ep, "dist", None)
        dist_name = dist.name if dist is not None else ep.module
        provenance = f"{dist_name}={dist.version}" if dist is not None else ""
        source = f"entry-point:{dist_name}"
        try:
            reg.register(ep.name, functools.partial(_load_entry_point, ep, source), source=source,
                         provenance=provenance, lazy=True)
        except MetricError as exc:
            if broken is None:
                raise
            broken.append({"name": ep.name, "source": source, "error": str(exc)})


def _load_entry_point(ep: Any, source: str) -> Any:
    """The entry point's target; from a list, the metric named like the entry point."""
    target = ep.load()
    if not isinstance(target, (list, tuple)):
        return target
    for obj in target:
        if isinstance(obj, Metric):
            name = obj.name
        elif callable(obj) and not isinstance(obj, type):
            name = _factory_name(obj, source)
        else:
            raise MetricError(f"{source}: entry point '{ep.name}' = {ep.value} holds {obj!r}, a {type(obj).__name__}, "
                              "not a Metric or a function returning one")
        if name == ep.name:
            return obj
    raise MetricError(f"{source}: entry point '{ep.name}' = {ep.value} is a {type(target).__name__} with no metric "
                      f"named '{ep.name}'; an entry point names one metric: point it to that Metric, or name it "
                      "like a metric of the list")


def load_plugin(reg: Registry, spec: str, *, only: Collection[str] | None = None) -> PluginSource:
    """Register the metrics of one ``--plugin`` value (with ``only``, just those of these names); returns where its
    code came from and the names registered."""
    spec = str(spec).strip()
    if not spec:
        raise MetricError("empty --plugin value; give a .py file, package.module[:NAME] or evaluate:PATH")
    if spec.startswith("evaluate:"):
        return _register_evaluate(reg, spec[len("evaluate:") :], only)
    path = Path(spec).expanduser()
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise MetricError(f"plugin file {spec} does not exist")
        text = path.read_bytes()  # read once: these bytes are hashed, copied into the run folder and executed
        digest = sha256_bytes(text)
        module = _import_file(path, spec, text, digest)
        names = _register_all(reg, _module_metrics(module, spec), f"plugin:{spec}", f"sha256={digest[:12]}", only)
        return PluginSource(spec, "file", str(path.resolve()), digest, tuple(names), text)
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise MetricError(f"plugin {spec}: cannot import module '{module_name}': {type(exc).__name__}: {exc}") from exc
    provenance = _module_provenance(module)
    file = getattr(module, "__file__", None)
    where = (str(Path(file).resolve()), sha256_file(file)) if file and Path(file).is_file() else (None, None)
    if not attr:
        names = _register_all(reg, _module_metrics(module, spec), f"plugin:{spec}", provenance, only)
        return PluginSource(spec, "module", *where, tuple(names))
    try:
        obj = import_attr(spec)
    except AttributeError:
        raise MetricError(f"plugin {spec}: module '{module_name}' has no attribute '{attr}'") from None
    objs = list(obj) if isinstance(obj, (list, tuple)) else [obj]
    return PluginSource(spec, "module", *where, tuple(_register_all(reg, objs, f"plugin:{spec}", provenance, only)))


def _module_provenance(module: ModuleType) -> str:
    top = module.__name__.split(".")[0]
    try:
        return f"{top}={version(top)}"
    except Exception:
        file = getattr(module, "__file__", None)
        return f"sha256={sha256_file(file)[:12]}" if file else ""


def _import_file(path: Path, spec: str, text: bytes, digest: str) -> ModuleType:
    """The module of a plugin file whose bytes, ``text``, were read once: those bytes are executed (never the file
    read again, which may have changed since it was hashed)."""
    resolved = path.resolve()
    # named by path and content: a file edited since it was imported in this process is imported again
    name = (f"_medqa_bench_plugin_{resolved.stem}_{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}_"
            f"{digest[:12]}")
    if name in sys.modules:
        return sys.modules[name]
    mod_spec = importlib.util.spec_from_file_location(name, resolved)
    if mod_spec is None or mod_spec.loader is None:
        raise MetricError(f"plugin {spec}: not an importable Python file")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        exec(compile(text, str(resolved), "exec"), module.__dict__)
    except Exception as exc:
        del sys.modules[name]
        raise MetricError(f"plugin {spec} failed to import: {type(exc).__name__}: {exc}") from exc
    return module


def _module_metrics(module: ModuleType, spec: str) -> list[Any]:
    if hasattr(module, "METRICS"):
        found = getattr(module, "METRICS")
        if not isinstance(found, (list, tuple)):
            raise MetricError(f"plugin {spec}: METRICS must be a list of Metric objects or factories")
        return list(found)
    found = [v for v in vars(module).values() if isinstance(v, Metric)]
    if not found:
        hint = ""
        if "evaluate" in sys.modules and any(
            isinstance(v, type) and issubclass(v, sys.modules["evaluate"].Metric) for v in vars(module).values()
        ):
            hint = f"; it looks like an evaluate module: use --plugin evaluate:{spec}"
        raise MetricError(
            f"plugin {spec} defines no metrics: define Metric objects at module level or a METRICS list{hint}"
        )
    return found


def _register_all(reg: Registry, objs: list[Any], source: str, provenance: str,
                  only: Collection[str] | None = None) -> list[str]:
    names = []
    for obj in objs:
        if isinstance(obj, Metric):
            name = obj.name
        elif callable(obj) and not isinstance(obj, type):
            name = _factory_name(obj, source)
        else:
            raise MetricError(f"{source}: {obj!r} is a {type(obj).__name__}, not a Metric or a function returning one")
        if only is not None and name not in only:
            continue
        reg.register(name, obj, source=source, provenance=provenance, lazy=False)
        names.append(name)
    return names


def _factory_name(obj: Any, source: str) -> str:
    """A factory's metric name: called without arguments to learn it (by its function name if it needs some)."""
    try:
        probe = obj()
        return probe.name if isinstance(probe, Metric) else getattr(obj, "__name__", repr(obj))
    except TypeError:  # a factory with required parameters: known by its function name
        return getattr(obj, "__name__", repr(obj))
    except Exception as exc:
        raise MetricError(f"{source}: metric factory {obj!r} failed: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------------------------- evaluate


def _register_evaluate(reg: Registry, spec: str, only: Collection[str] | None = None) -> PluginSource:
    path_s, _, key = spec.partition("#")
    path = Path(path_s).expanduser()
    if path.is_dir():
        script = path / f"{path.name}.py"
        if not script.is_file():
            raise MetricError(f"evaluate:{spec}: folder {path} has no {path.name}.py; evaluate.load needs one")
        digest = sha256_files(sorted(path.glob("*.py")), root=path)
    elif path.is_file() and path.suffix == ".py":
        script = path
        digest = sha256_file(path)
    else:
        raise MetricError(
            f"evaluate:{spec}: {path} is not a local evaluate module (a .py script or a folder with <name>.py); "
            "Hub names are not loaded, download the module folder first"
        )
    stem = script.stem
    name = stem if not key or key == stem else f"{stem}_{key}"
    source = f"evaluate:{path_s}"
    provenance = f"sha256={digest[:12]}"

    def factory(higher_is_better: bool = True, bounds: Any = None, **compute_kwargs: Any) -> Metric:
        return _evaluate_metric(name, str(path), key or None, source, provenance, higher_is_better, bounds,
                                compute_kwargs)

    factory.__name__ = name
    if only is None or name in only:
        reg.register(name, factory, source=source, provenance=provenance, lazy=False)
    return PluginSource(f"evaluate:{spec}", "evaluate", str(path.resolve()), digest,
                        (name,) if only is None or name in only else ())


def _evaluate_metric(name, path, key, source, provenance, higher_is_better, bounds, compute_kwargs) -> Metric:
    import evaluate

    try:
        module = evaluate.load(path, keep_in_memory=True)
    except Exception as exc:
        raise MetricError(f"{source}: evaluate.load failed: {type(exc).__name__}: {exc}") from exc

    def pick(result: Any) -> Any:
        if not isinstance(result, dict):
            raise MetricError(f"metric '{name}' ({source}): compute() returned {type(result).__name__}, not a dict")
        if key is None:
            if len(result) != 1:
                raise MetricError(
                    f"metric '{name}' ({source}): compute() returned keys {sorted(result)}; pick one with "
                    f"--plugin evaluate:{path}#KEY"
                )
            return next(iter(result.values()))
        if key not in result:
            raise MetricError(f"metric '{name}' ({source}): compute() has no key '{key}'; keys: {sorted(result)}")
        return result[key]

    def score(predictions, references, items):
        value = pick(module.compute(predictions=list(predictions), references=list(references), **compute_kwargs))
        if hasattr(value, "__len__") and not isinstance(value, str):
            return list(value)  # one per pair; a wrong count is caught by the caller's check
        if len(predictions) == 1:
            return [value]
        # A corpus-level number: score pair by pair so each item gets its own value.
        return [
            pick(module.compute(predictions=[p], references=[r], **compute_kwargs))
            for p, r in zip(predictions, references)
        ]

    kwargs = "|".join(f"{k}={v}" for k, v in sorted(compute_kwargs.items()))
    named = signature_source(source + (f"#{key}" if key else ""))  # by file name: the sha256 identifies the code
    signature = "|".join(filter(None, [name, named, provenance, kwargs, f"evaluate={version('evaluate')}"]))
    return Metric(
        name=name,
        higher_is_better=bool(higher_is_better),
        score=score,
        signature=signature,
        bounds=tuple(bounds) if bounds is not None else None,
        source=source,
        citation=str(getattr(module, "citation", "") or ""),
    )
