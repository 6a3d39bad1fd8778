"""Plain data to typed records: one coercion for run specs and training recipes, each error naming the dotted key.

A spec file (YAML, TOML), a recipe or keyword arguments hold plain values. :func:`build` turns a mapping into a
frozen dataclass, field by field as the annotations say, and refuses an unknown key ("did you mean …") or a value
of the wrong type with the key's dotted path::

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Decoding:
    ...     max_new_tokens: int | None = None
    ...     stop: tuple[str, ...] = ()
    >>> build(Decoding, {"max_new_tokens": 8, "stop": "###"}, doc="run spec", where="decoding.")
    Decoding(max_new_tokens=8, stop=('###',))
    >>> build(Decoding, {"max_new_tokens": "lots"}, doc="run spec", where="decoding.")
    Traceback (most recent call last):
    medqa_bench.errors.SpecError: run spec key 'decoding.max_new_tokens' must be an integer, not 'lots'

What YAML gives loosely is taken: ``2e-4`` (a string in YAML 1.1) where a number is expected, ``3.0`` for an integer,
one name where a list of names is expected. Nothing heavy is imported here: specs hold data only.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, Iterable

from .errors import MedQABenchError, SpecError

_SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of each ``__init__`` field of a dataclass, in field order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def check_keys(raw: Mapping, allowed: Iterable[str], *, doc: str, where: str = "") -> None:
    """Refuse the first key of ``raw`` not in ``allowed``, suggesting the closest allowed key."""
    allowed = list(allowed)
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{where}{close[0]}'? " if close else ""
            raise SpecError(f"unknown {doc} key '{where}{key}'; {hint}keys here are: {', '.join(allowed)}")


def build(cls: type, raw: Any, *, doc: str, where: str = "", exclude: Iterable[str] = ()) -> Any:
    """An instance of the dataclass ``cls`` from the mapping ``raw``, every key checked and every value coerced.

    ``doc`` names the document in messages ("run spec", "recipe"); ``where`` is the dotted prefix of this section
    ("decoding."); ``exclude`` names fields a document may not set. An error raised by ``cls`` itself (a range
    check in ``__post_init__``) comes back as a :class:`SpecError` naming the section.
    """
    section = where.rstrip(".")
    if not isinstance(raw, Mapping):
        if section:
            raise wrong_type(doc, section, "a section (a mapping)", raw)
        raise SpecError(f"a {doc} is a mapping of keys to values, not {show(raw)}")
    types_ = {k: v for k, v in field_types(cls).items() if k not in set(exclude)}
    check_keys(raw, types_, doc=doc, where=where)
    kwargs = {key: coerce(types_[key], value, f"{where}{key}", doc=doc) for key, value in raw.items()}
    try:
        return cls(**kwargs)
    except SpecError:
        raise
    except (TypeError, ValueError, MedQABenchError) as exc:
        raise SpecError(f"{doc} section '{section}': {exc}" if section else f"{doc}: {exc}") from None


def coerce(tp: Any, value: Any, key: str, *, doc: str) -> Any:
    """``value`` as the annotation ``tp`` says (``int | None``, ``tuple[str, ...]``, ``dict[str, Any]``, a
    dataclass, a scalar), or a :class:`SpecError` naming ``key``."""
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is None and len(options) < len(args):
            return None
        if len(options) == 1:
            return coerce(options[0], value, key, doc=doc)
        for option in options:  # in the order written: `int | str` keeps 5 an integer
            try:
                return coerce(option, value, key, doc=doc)
            except SpecError:
                continue
        raise wrong_type(doc, key, describe(tp), value)
    if value is None:
        raise SpecError(f"{doc} key '{key}' needs a value ({describe(tp)}), not null")
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else build(tp, value, doc=doc, where=key + ".")
    if origin in (tuple, list):
        return _sequence(origin, args, value, key, doc)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise wrong_type(doc, key, "a mapping", value)
        ktp, vtp = args or (Any, Any)
        return {coerce(ktp, k, key, doc=doc): coerce(vtp, v, f"{key}.{k}", doc=doc) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 2e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    else:  # an annotation this coercer does not know: taken as given
        return value
    raise wrong_type(doc, key, describe(tp), value)


def _sequence(origin: Any, args: tuple, value: Any, key: str, doc: str) -> Any:
    variadic = not args or (len(args) == 2 and args[1] is Ellipsis)
    if variadic and isinstance(value, str) and args and args[0] is str:
        value = [value]  # one name where a list of names is expected
    if not isinstance(value, (list, tuple)):
        raise wrong_type(doc, key, "a list", value)
    if variadic:
        item = args[0] if args else Any
        items = [coerce(item, v, f"{key}[{i}]", doc=doc) for i, v in enumerate(value)]
    else:
        if len(value) != len(args):
            raise wrong_type(doc, key, f"a list of {len(args)} items", value)
        items = [coerce(t, v, f"{key}[{i}]", doc=doc) for i, (t, v) in enumerate(zip(args, value))]
    return tuple(items) if origin is tuple else items


def describe(tp: Any) -> str:
    """What an annotation asks for, in a message's words: "an integer", "a list", "a string or null"."""
    if tp is Any:
        return "a value"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else describe(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a section (a mapping)"
    if origin in (tuple, list):
        return "a list"
    if origin is dict:
        return "a mapping"
    return _SCALARS.get(tp, getattr(tp, "__name__", str(tp)))


def wrong_type(doc: str, key: str, expected: str, value: Any) -> SpecError:
    return SpecError(f"{doc} key '{key}' must be {expected}, not {show(value)}")


def show(value: Any, width: int = 60) -> str:
    """``repr(value)``, shortened: a message stays one line."""
    text = " ".join(repr(value).split())
    return text if len(text) <= width else text[: width - 3] + "..."
