"""A backend's own options: declared in its file, stored in the run spec's ``backend_options``, given as flags.

A backend class lists what it takes in ``options``, a tuple of :class:`BackendOption`; the shared spec knows no
backend's options (lm-evaluation-harness's ``create_from_arg_string`` habit). The spec keeps them as
``backend_options: {name: value}``, checked against the chosen backend's declaration when the spec is made, before
anything loads, with every default filled in so that results.json records what ran; the ``run`` command's flags
(``--base-url`` for ``base_url``) are made from the declarations of every registered backend::

    class EchoBackend:
        name = "echo"
        options = (BackendOption("echo_text", str, "hi", "the text every answer is"),)

    >>> resolve_options("transformers", {"base_url": "http://127.0.0.1:8000/v1"})  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    SpecError: --base-url names a server, but backend 'transformers' takes no such option (its options: none); add --backend openai, or drop it
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ... import typed
from ...errors import BackendError, SpecError

#: How spec errors name the document (as medqa_bench.spec does).
DOC = "run spec"
#: Run-spec keys older specs held at the top level (medqa-bench before backend_options), with the value they had when
#: not given: an older spec or run folder is read with the ones it set moved into ``backend_options``.
LEGACY_KEYS: dict[str, Any] = {"base_url": None, "served_model": None, "concurrency": 8, "request_timeout": 300.0,
                               "retries": 4}


@dataclass(frozen=True)
class BackendOption:
    """One option of a backend: ``name`` (the spec key; the flag is ``--name-with-dashes``), its type (an annotation
    :func:`medqa_bench.typed.coerce` reads: ``str``, ``int``, ``float``, ``str | None``), its default, the flag's help.

    ``check(value)`` returns what is wrong with a value (one line) or None; ``required``: the backend cannot run
    without it. ``about`` says what the value names ("names a server"), for the message when it is given to a backend
    that does not take it. ``placement``: how hard or how long the backend is asked, not what the run evaluates, so a
    run folder written with another value still holds the same run (medqa_bench.storage.run_folder).
    """

    name: str
    type: Any = str
    default: Any = None
    help: str = ""
    metavar: str | None = None
    check: Callable[[Any], str | None] | None = None
    required: bool = False
    about: str = ""
    placement: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def declared(backend: str) -> tuple[BackendOption, ...]:
    """The options backend ``backend`` declares (none when its class declares none); unknown name: BackendError."""
    from . import backend_class

    return tuple(getattr(backend_class(backend), "options", ()) or ())


def all_declared() -> dict[str, list[tuple[str, BackendOption]]]:
    """Every registered backend's options by name: ``{name: [(backend, option), ...]}``, backends in registry order. A
    backend that fails to load is left out here (a run that picks it says why)."""
    from . import backend_registry

    out: dict[str, list[tuple[str, BackendOption]]] = {}
    for backend in backend_registry().names():
        try:
            options = declared(backend)
        except BackendError:
            continue
        for opt in options:
            out.setdefault(opt.name, []).append((backend, opt))
    return out


def _misplaced(backend: str, key: str, own: tuple[BackendOption, ...]) -> str:
    """The message for option ``key``, which ``backend`` does not take: who does, or "did you mean"."""
    theirs = all_declared().get(key, [])
    names = ", ".join(o.name for o in own) or "none"
    if theirs:
        owner, opt = theirs[0]
        what = opt.about or f"is an option of backend '{owner}'"
        return (f"{opt.flag} {what}, but backend '{backend}' takes no such option (its options: {names}); add "
                f"--backend {owner}, or drop it")
    near = difflib.get_close_matches(key, [o.name for o in own], n=1)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    return f"backend '{backend}' has no option '{key}'{hint} (its options: {names})"


def resolve_options(backend: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` checked against ``backend``'s declaration, coerced, and completed with the defaults: the
    ``backend_options`` a spec records. A :class:`SpecError` (one line) for an option the backend does not take,
    a value of the wrong type, one its check refuses, or a required one missing."""
    own = declared(backend)
    by_name = {o.name: o for o in own}
    for key in given:
        if key not in by_name:
            raise SpecError(_misplaced(backend, str(key), own))
    out: dict[str, Any] = {}
    for opt in own:
        value = given.get(opt.name, opt.default)
        if value is not None:
            value = typed.coerce(opt.type, value, f"backend_options.{opt.name}", doc=DOC)
        out[opt.name] = value
    missing = [o for o in own if o.required and not str(out[o.name] or "").strip()]
    if missing:
        raise SpecError(f"backend '{backend}' needs {' and '.join(o.flag for o in missing)}: "
                        + "; ".join(o.help for o in missing))
    for opt in own:
        problem = opt.check(out[opt.name]) if opt.check and out[opt.name] is not None else None
        if problem:
            raise SpecError(problem)
    return out


def from_legacy(d: Mapping[str, Any]) -> dict[str, Any]:
    """A spec mapping with the keys older specs held at the top level (:data:`LEGACY_KEYS`) moved into
    ``backend_options``; one left at the value it had when not given is dropped (it said nothing)."""
    if not any(k in d for k in LEGACY_KEYS):
        return dict(d)
    d = dict(d)
    moved = {k: d.pop(k) for k in LEGACY_KEYS if k in d}
    options = dict(d.get("backend_options") or {})
    for k, v in moved.items():
        if v != LEGACY_KEYS[k] and k not in options:
            options[k] = v
    d["backend_options"] = options
    return d


def comparable(d: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded spec (results.json's ``spec``, older or newer) as run folders compare them: older keys moved into
    ``backend_options``, the placement options (:attr:`BackendOption.placement`) and the options at their default left
    out, so that an older run folder of the same run is still the same run."""
    d = from_legacy(d)
    options = dict(d.get("backend_options") or {})
    try:
        own = {o.name: o for o in declared(str(d.get("backend") or "transformers"))}
    except BackendError:
        own = {}
    for name, opt in own.items():
        if name in options and (opt.placement or options[name] == opt.default):
            del options[name]
    d["backend_options"] = options
    return d
