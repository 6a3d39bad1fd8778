"""What a run records of its plugins' code, and what ``score`` checks when it finds that code again.

A run keeps its plugins by content: the spec holds a plugin file (or an evaluate module) by its resolved absolute path
(:func:`absolute_plugin_spec`), and each plugin metric's info in results.json holds ``plugin``
(:meth:`PluginSource.record`: the path, the sha256 of the bytes that ran and, for a file, ``copy``: those bytes saved in
the run folder as ``plugins/<stem>-<sha12>.py``, :func:`plugin_copies`). A default signature names a plugin by its file
name, never by its path (:func:`signature_source`): the sha256 identifies the code, so two checkouts of one file, or
``metrics validate`` and ``run`` given one file by different paths, agree.

``score`` loads a recorded plugin again only when one of its metrics is computed again
(:func:`find_recorded_plugin`), and never code inside the run folder: a run folder may come from someone else, so its
files, the copies included, are data. Code there runs only when the user names it with ``--plugin``. Each metric
computed again is checked against what the run recorded (:func:`plugin_check`).

Nothing here loads a plugin: :mod:`medqa_bench.metrics.plugins` does, :mod:`medqa_bench.metrics.registry` decides
which code ``score`` takes for each metric.
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import MetricError
from ..storage.fingerprint import sha256_file
from .base import Metric

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PluginSource:
    """Where one ``--plugin`` value's code came from: ``kind`` "file", "module" or "evaluate", the resolved absolute
    ``path`` of its source (a module: its file, if it has one), the ``sha256`` of that source (a file: of the bytes
    that were executed; an evaluate folder: of its .py files, :func:`~medqa_bench.storage.fingerprint.sha256_files`) and the
    ``metrics`` it registered. ``text``: a file plugin's bytes as they were read, hashed and executed, which the run
    folder keeps a copy of."""

    spec: str
    kind: str
    path: str | None
    sha256: str | None
    metrics: tuple[str, ...] = ()
    text: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def copy(self) -> str | None:
        """Where the run folder keeps a file plugin's source: ``plugins/<stem>-<sha12>.py`` (named by content, so a
        re-score with a changed source keeps the copy the other metrics were computed with)."""
        if self.kind != "file" or not self.sha256 or not self.path:
            return None
        return f"plugins/{Path(self.path).stem}-{self.sha256[:12]}.py"

    def record(self) -> dict[str, Any]:
        """``MetricInfo.plugin`` (medqa_bench.schema.PluginRecord)."""
        return {"spec": self.spec, "kind": self.kind, "path": self.path, "sha256": self.sha256, "copy": self.copy}


@dataclass(frozen=True)
class ProvenanceDetails:
    """A plugin metric's :attr:`Metric.details <medqa_bench.metrics.Metric.details>`: its own details (``inner``), then
    ``plugin`` (:meth:`PluginSource.record`) and, when ``score`` computed it again, ``plugin_check`` (how its code was
    found that time: medqa_bench.schema.PluginCheck)."""

    plugin: PluginSource | None
    inner: Callable[[], dict[str, Any]] | None = None
    check: dict[str, Any] | None = None

    def __call__(self) -> dict[str, Any]:
        out = dict(self.inner()) if self.inner is not None else {}
        if self.plugin is not None:
            out["plugin"] = self.plugin.record()
        if self.check is not None:
            out["plugin_check"] = dict(self.check)
        return out


def plugin_source_of(metric: Metric) -> PluginSource | None:
    """The plugin a built metric came from (None: a built-in or an installed entry point)."""
    details = metric.details
    return details.plugin if isinstance(details, ProvenanceDetails) else None


def stamp_provenance(metric: Metric, *, plugin: PluginSource | None = None,
                     check: dict[str, Any] | None = None) -> Metric:
    """``metric`` whose info in results.json also says where its code came from (``plugin``) and how ``score`` found
    it (``plugin_check``): :class:`ProvenanceDetails` around its own details."""
    details = metric.details
    if isinstance(details, ProvenanceDetails):
        plugin, check, details = plugin or details.plugin, check or details.check, details.inner
    return dataclasses.replace(metric, details=ProvenanceDetails(plugin, details, check))


# --------------------------------------------------------------------------------------------- paths and signatures


def plugin_kind(spec: str, base: Path | None = None) -> str:
    """"file", "module" or "evaluate": how a ``--plugin`` value is read (a relative file looked for under ``base``,
    default the working directory)."""
    if spec.startswith("evaluate:"):
        return "evaluate"
    path = Path(spec).expanduser()
    return "file" if spec.endswith(".py") or (path if base is None else base / path).is_file() else "module"


def split_plugin_path(spec: str) -> tuple[str, str, str]:
    """``evaluate:PATH#KEY`` -> ("evaluate:", PATH, "#KEY"); a file -> ("", PATH, "")."""
    if spec.startswith("evaluate:"):
        path, sep, key = spec[len("evaluate:"):].partition("#")
        return "evaluate:", path, sep + key
    return "", spec, ""


def absolute_plugin_spec(spec: str, base: str | Path | None = None) -> str:
    """A ``--plugin`` value that names the same code from any working directory: a file, or an evaluate module's
    path, resolved against ``base`` (default: the working directory); a module name as it is.

    >>> absolute_plugin_spec("metrics/mine.py", "/home/me/project")
    '/home/me/project/metrics/mine.py'
    >>> absolute_plugin_spec("evaluate:modules/overlap#f1", "/srv")
    'evaluate:/srv/modules/overlap#f1'
    >>> absolute_plugin_spec("my_package.metrics:ALL")
    'my_package.metrics:ALL'
    """
    spec = str(spec).strip()
    root = Path.cwd() if base is None else Path(base)
    if plugin_kind(spec, root) == "module":
        return spec
    prefix, path, suffix = split_plugin_path(spec)
    p = Path(path).expanduser()
    return f"{prefix}{(p if p.is_absolute() else root / p).resolve()}{suffix}"


def signature_source(source: str) -> str:
    """A metric source as a default signature names it: a plugin file or an evaluate module by its file name alone
    (the sha256 beside it identifies the code; the folder it lies in does not change a score).

    >>> signature_source("plugin:/home/me/project/nosig.py")
    'plugin:nosig.py'
    >>> signature_source("evaluate:/srv/modules/overlap#f1")
    'evaluate:overlap#f1'
    >>> signature_source("plugin:my_package.metrics:ALL")
    'plugin:my_package.metrics:ALL'
    """
    if source.startswith("plugin:"):
        return "plugin:" + _file_name(source[len("plugin:"):])
    if source.startswith("evaluate:"):
        path, sep, key = source[len("evaluate:"):].partition("#")
        return f"evaluate:{_file_name(path)}{sep}{key}"
    return source


def _file_name(path: str) -> str:
    return Path(path).name or path  # a module name ("package.module:NAME") is its own name


def same_signature(recorded: str | None, now: str | None) -> bool:
    """Whether two signatures are one, whatever path form their plugin sources were written in (a run made before
    signatures named a plugin by its file name wrote the path as typed, or the absolute path)."""
    def form(signature: str | None) -> list[str]:
        return [signature_source(part) for part in str(signature or "").split("|")]

    return form(recorded) == form(now)


# --------------------------------------------------------------------------------------------- finding it again


def locate_recorded_plugin(spec: str, bases: Sequence[Path]) -> str:
    """A plugin value as a run's spec recorded it, made loadable from here. Runs record files by absolute path; an
    older run recorded the path as typed, relative to the directory it ran in: the first of ``bases`` (the working
    directory, the run's) where that file exists. A value that names no file here is returned as is, so loading it
    fails naming the path the run recorded."""
    prefix, path, _ = split_plugin_path(spec)
    if Path(path).expanduser().is_absolute() or not (prefix or path.endswith(".py")):
        return spec  # already absolute, or a module name
    for base in bases:
        if (Path(base) / Path(path).expanduser()).exists():
            return absolute_plugin_spec(spec, base)
    return spec


def recorded_bases(run_dir: Path, output_path: Path) -> list[Path]:
    """Where an older run's relative plugin path may be found: the working directory, then the one the run was made
    in (the run folder less its recorded output path, ``reports/<name>`` by default). Both may lead into the run
    folder itself: :func:`find_recorded_plugin` refuses what lies there."""
    bases = [Path.cwd()]
    parts, out = Path(run_dir).resolve().parts, Path(output_path).parts
    if not Path(output_path).is_absolute() and ".." not in out and parts[len(parts) - len(out):] == out:
        bases.append(Path(*parts[: len(parts) - len(out)]))
    return bases


def find_recorded_plugin(spec: str, names: Sequence[str], *, bases: Sequence[Path], run_dir: Path | None,
                         recorded: Mapping[str, Any], passed_over: Mapping[str, Metric]) -> str:
    """The recorded plugin ``spec`` that metrics ``names`` are computed again with, as ``score`` may load it: located
    (:func:`locate_recorded_plugin`), refused when its code lies inside ``run_dir`` (whatever path, link or module name
    leads there: a run folder's files are data, run only when the user passes them with ``--plugin``), and refused
    when a recorded file is gone, naming what to pass instead. Nothing is imported here."""
    located = locate_recorded_plugin(spec, bases)
    inside = _code_inside(located, run_dir) if run_dir is not None else None
    if inside is not None:
        it = "them" if len(names) > 1 else "it"
        raise MetricError(
            f"metric{'s' if len(names) > 1 else ''} {', '.join(names)} of this run came from the plugin {spec}, whose "
            f"code {inside} lies inside the run folder {run_dir}: score never runs code from a run folder on its own "
            f"(it may come from someone else); read it, and pass --plugin {inside} if you trust it, or leave {it} out "
            f"of --metrics to keep the recorded scores")
    if plugin_kind(located) == "file" and not Path(located).is_file():
        raise MetricError(missing_plugin_message(names, spec, recorded, passed_over, run_dir))
    return located


def _code_inside(spec: str, run_dir: Path) -> str | None:
    """The path of ``spec``'s code that lies in ``run_dir`` (as written or with links followed), or None."""
    prefix, path, _ = split_plugin_path(spec)
    candidates = [path] if prefix or plugin_kind(spec) == "file" else _module_paths(spec)
    folders = {Path(os.path.abspath(run_dir)), Path(run_dir).resolve()}
    for candidate in candidates:
        p = Path(candidate).expanduser()
        for form in (Path(os.path.abspath(p)), p.resolve()):
            if any(form == f or f in form.parents for f in folders):
                return str(form)
    return None


def _module_paths(spec: str) -> list[str]:
    """Where a module plugin's top-level package would be imported from (found, not imported); none if it is
    imported already."""
    top = spec.partition(":")[0].split(".")[0]
    if not top or top in sys.modules:
        return []
    try:
        found = importlib.machinery.PathFinder.find_spec(top)
    except (ImportError, ValueError):
        return []
    if found is None:
        return []
    return [os.path.abspath(p) for p in [found.origin, *(found.submodule_search_locations or [])] if p]


def missing_plugin_message(names: Sequence[str], spec: str, recorded: Mapping[str, Any],
                           passed_over: Mapping[str, Metric], run_dir: Path | None) -> str:
    """The error for a recorded plugin file that is not where the run recorded it: what to pass instead."""
    copy = next((recorded[n]["plugin"].get("copy") for n in names if isinstance(recorded[n].get("plugin"), dict)), None)
    saved = f" (the run folder keeps the source it ran: {Path(run_dir or '.') / copy})" if copy else ""
    installed = "".join(f"; the installed {m.source} gives '{n}' another signature ('{m.signature}', recorded "
                        f"'{recorded[n].get('signature')}')" for n, m in passed_over.items() if n in names)
    relative = "" if Path(spec).is_absolute() else " (a path relative to the directory the run was made in)"
    it = "them" if len(names) > 1 else "it"
    return (f"metric{'s' if len(names) > 1 else ''} {', '.join(names)} of this run came from the plugin file {spec}"
            f"{relative}, which does not exist here{installed}; pass --plugin FILE to compute {it} again with that "
            f"source{saved}, or leave {it} out of --metrics to keep the recorded scores")


def recorded_plugin(name: str, info: Mapping[str, Any], specs: Sequence[str]) -> str | None:
    """The value of ``spec.plugins`` a recorded metric came from: its ``plugin.spec``, or for a run written before
    runs recorded plugins by content, the plugin its ``source`` names. None: a built-in or an entry point."""
    plugin = info.get("plugin")
    if isinstance(plugin, dict) and plugin.get("spec"):
        return str(plugin["spec"])
    source = str(info.get("source") or "")
    if source.startswith("plugin:") and source[len("plugin:"):] in specs:
        return source[len("plugin:"):]
    if source.startswith("evaluate:"):  # evaluate:PATH, recorded as evaluate:PATH#KEY: the key names the metric
        same = [s for s in specs if s.split("#")[0] == source]
        return next((s for s in same if "#" in s and name.endswith(s.split("#", 1)[1])), same[0] if same else None)
    return None


def plugin_check(how: str, info: Mapping[str, Any], metric: Metric, passed_over: Metric | None) -> dict[str, Any]:
    """``MetricInfo.plugin_check`` (medqa_bench.schema.PluginCheck) of a metric ``score`` computed again: ``how`` its
    code was found ("overridden", "entry-point", "recorded"), checked against what the run recorded. A signature that
    differs only in how it wrote its plugin's path is the same signature (:func:`same_signature`)."""
    src = plugin_source_of(metric)
    old = info.get("plugin") if isinstance(info.get("plugin"), dict) else {}
    was, old_sha = old.get("spec") or info.get("source"), old.get("sha256")
    new_sha = src.sha256 if src is not None else None
    where = (src.path or src.spec) if src is not None else metric.source
    differs = bool(old_sha) and old_sha != new_sha
    shas = f"sha256 {old_sha[:12]} recorded, {(new_sha or 'none')[:12]} now" if old_sha else ""
    if how == "overridden":
        status = "overridden"
        note = (f"from --plugin {where} instead of the recorded {was}: "
                + (f"another source ({shas})" if differs else f"the same source ({shas})" if old_sha
                   else "the run recorded no fingerprint to compare it with"))
    elif how == "entry-point":
        status, note = "entry-point", f"from {metric.source} instead of the recorded {was}, with the recorded signature"
    elif not old_sha:
        status = "unverified"
        note = (f"reloaded from {where}; the run recorded no fingerprint to check it against (it was made before runs "
                "recorded their plugins by content)")
    elif differs:
        status = "changed"
        note = (f"{where} changed since the run recorded it ({shas}): computed again with the changed source"
                + (f"; the run's source is kept in {old['copy']}" if old.get("copy") else ""))
    else:
        status, note = "same", f"reloaded from {where}, the source the run recorded (sha256 {old_sha[:12]})"
    if passed_over is not None:
        note += (f"; the installed {passed_over.source} was not used: its signature '{passed_over.signature}' is not "
                 "the recorded one")
    old_signature = info.get("signature")
    signature_changed = bool(old_signature) and not same_signature(old_signature, metric.signature)
    if signature_changed:
        note += f"; its signature changed from '{old_signature}' to '{metric.signature}'"
    recorded = {"source": info.get("source"), "signature": old_signature, "sha256": old_sha, "copy": old.get("copy")}
    return {"status": status, "recorded": recorded, "sha256": new_sha,
            "warning": differs or status == "unverified" or signature_changed, "note": note}


# --------------------------------------------------------------------------------------------- copies


#: Where a run folder keeps a plugin's source: ``MetricInfo.plugin.copy`` is checked against it before the file is
#: read or written, so a results.json from elsewhere cannot point outside the folder.
_COPY_NAME = re.compile(r"plugins/[A-Za-z0-9_][A-Za-z0-9_.\-]*\.py")


def plugin_copies(metrics: Sequence[Metric], kept: Mapping[str, dict[str, Any]] | None = None,
                  run_dir: Path | None = None) -> dict[str, bytes]:
    """The plugin sources a run folder keeps (relative path -> bytes): those ``metrics`` were loaded from, and the
    copies already in ``run_dir`` that a re-score still refers to: those of the metrics it keeps (``kept``: their
    infos), and the run's source of a metric computed again from another (``plugin_check.recorded.copy``). A copy
    that is missing or no longer matches its fingerprint is dropped from its record, with a warning. Copies are read
    as bytes, never imported."""
    files = {src.copy: src.text for m in metrics if (src := plugin_source_of(m)) and src.copy and src.text is not None}
    records = [(m.name, m.details.check.get("recorded")) for m in metrics
               if isinstance(m.details, ProvenanceDetails) and m.details.check]
    for name, info in (kept or {}).items():
        records += [(name, info.get("plugin")), (name, (info.get("plugin_check") or {}).get("recorded"))]
    for name, record in records:
        copy = record.get("copy") if isinstance(record, dict) else None
        if not copy or copy in files:
            continue
        path = Path(run_dir or ".") / copy
        if _COPY_NAME.fullmatch(copy) and path.is_file() and sha256_file(path) == record.get("sha256"):
            files[copy] = path.read_bytes()
        else:
            log.warning("%s: the run folder's copy of its plugin source, %s, is missing or does not match its "
                        "fingerprint; not kept", name, path)
            record["copy"] = None
    return files
