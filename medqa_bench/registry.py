"""One generic registry of named, lazily loaded objects: metrics (:mod:`medqa_bench.metrics.registry`) and inference
backends (:mod:`medqa_bench.inference.backends`) both use it.

In the manner of lm-evaluation-harness's ``lm_eval/api/registry.py``: entries are lazy (``"module:attr"`` strings or
loaders), so nothing heavy is imported until an entry is used; what an entry loads to is checked; a second entry under a
taken name is refused, naming both; a miss answers "did you mean …" with the registry's own typed error.

>>> reg = Registry("colour", lambda o: isinstance(o, str), "a string")
>>> reg.register("red", "#f00", lazy=False)
>>> reg.get("rde")                               # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
MedQABenchError: unknown colour 'rde'; did you mean red? (colours known: red)
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar, Union

from .errors import MedQABenchError

T = TypeVar("T")


def import_attr(target: str) -> Any:
    """``"package.module:attr.sub"`` → the object."""
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


@dataclass
class _Entry:
    target: Union[str, Callable[[], Any], Any]  # "module:attr", a zero-argument loader, or the object itself
    source: str
    provenance: str = ""  # what identifies the code when the metric declares no signature: version, file digest
    lazy: bool = True
    loaded: Any = None
    is_loaded: bool = False


class Registry(Generic[T]):
    """Names → objects of one kind, registered eagerly or lazily; loading checks what the entry holds."""

    def __init__(self, what: str, check: Callable[[Any], bool], expected: str,
                 error: type[Exception] = MedQABenchError):
        self.what, self._check, self._expected, self._error = what, check, expected, error
        self._entries: dict[str, _Entry] = {}

    def register(
        self, name: str, target: Any, *, source: str = "builtin", provenance: str = "", lazy: bool | None = None
    ) -> None:
        """Add ``name``. ``target``: ``"module:attr"``, a zero-argument loader (``lazy=True``) or the object."""
        if name in self._entries:
            raise self._error(
                f"{self.what} '{name}' from {source} is already registered by {self._entries[name].source}; "
                "rename one of them or uninstall the package that brings the other"
            )
        is_lazy = isinstance(target, str) if lazy is None else lazy
        if not is_lazy and not self._check(target):
            raise self._error(
                f"{self.what} '{name}' from {source} is a {type(target).__name__}, not {self._expected}"
            )
        self._entries[name] = _Entry(target, source, provenance, lazy=is_lazy)

    def get(self, name: str) -> T:
        entry = self._entries.get(name)
        if entry is None:
            raise self._error(self._miss(name))
        if not entry.is_loaded:
            entry.loaded = self._load(name, entry)
            entry.is_loaded = True
        return entry.loaded

    def _load(self, name: str, entry: _Entry) -> Any:
        if not entry.lazy:
            return entry.target
        try:
            obj = import_attr(entry.target) if isinstance(entry.target, str) else entry.target()
        except self._error:
            raise
        except Exception as exc:
            raise self._error(
                f"{self.what} '{name}' from {entry.source} failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        if not self._check(obj):
            raise self._error(f"{self.what} '{name}' from {entry.source} is a {type(obj).__name__}, not {self._expected}")
        return obj

    def _miss(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.6)
        lower = [n for n in self._entries if n.lower() == name.lower() and n not in close]
        close = lower + close
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        known = f"{self.what}s known: {', '.join(self._entries)}"
        return f"unknown {self.what} '{name}'{hint} ({known})"

    def source(self, name: str) -> str:
        return self._entries[name].source

    def provenance(self, name: str) -> str:
        return self._entries[name].provenance

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
