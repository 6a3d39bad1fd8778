"""Inference backends: what answers a run's language-model rows, behind one small protocol.

A backend serves the run's language-model systems (:class:`~medqa_bench.inference.systems.System`), which the planning stage
(:mod:`medqa_bench.planning`) decided: it loads them, says who each one is for the cache key, renders prompts,
counts tokens, generates and scores completion NLLs. It plans nothing. The runner sees nothing else of it, in the
manner of lm-evaluation-harness's ``LM`` (``lm_eval/api/model.py``). Caching and multi-process sharding wrap any backend
(:class:`~medqa_bench.inference.backends.caching.CachingBackend`, :class:`~medqa_bench.inference.backends.sharding.ShardedBackend`;
:func:`~medqa_bench.inference.backends.caching.wrap` puts them together), so a backend computes and never looks anything up.

Backends register like metrics (the generic :class:`~medqa_bench.registry.Registry`): lazy ``"module:attr"`` entries
(nothing heavy is imported until a run picks one), installed packages through the ``medqa_bench.inference.backends`` entry-point
group, and :func:`register_backend` in code. ``--backend NAME`` (``RunSpec.backend``) selects one; an unknown name
answers "did you mean …" with a :class:`~medqa_bench.errors.BackendError` before anything loads.

A backend declares its own options (``options``, a tuple of :class:`~medqa_bench.inference.backends.options.BackendOption`):
the run spec keeps them in ``backend_options``, checked against the declaration when the spec is made, and the
``run`` command's flags are made from them. Adding a backend is its file and its registration, nothing else.

>>> backend_class("transformers").capabilities == frozenset({"generate", "nll", "adapters", "next_token", "stream"})
True
>>> backend_class("transformer")                 # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
BackendError: unknown backend 'transformer'; did you mean transformers? (backends known: transformers)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Protocol, Sequence

from ...errors import BackendError
from ...registry import Registry
from .options import BackendOption  # noqa: F401 - a backend declares its options with it

if TYPE_CHECKING:
    from ...data.dataset import Example
    from ..distributed import ProcessGroup
    from ..decoding import DecodingParams, Generation
    from ..nll import CompletionNLL
    from ...data.rag import Passage
    from ..systems import System

#: What a backend can be asked for. A run needs "generate" and "nll" for its language-model rows and "adapters" for
#: adapter rows; the runner refuses a backend without them before anything loads. "next_token" (optional, a method
#: outside the protocol's required members): :meth:`Backend.next_token_logprobs`, which the LLM judge reads its grade
#: from (medqa_bench.metrics.judge); a backend without it is judged from generated text. "stream" (optional):
#: :meth:`Backend.stream`, an answer as it grows (the chat); a backend without it shows each answer whole.
CAPABILITIES = ("generate", "nll", "adapters", "next_token", "stream")


@dataclass(frozen=True)
class GenerationRequest:
    """Generate an answer to ``prompt`` as ``system``, decoding as ``decoding`` says (with the stop sequences of the
    system's prompt format)."""

    system: "System"
    prompt: str
    decoding: "DecodingParams"


@dataclass(frozen=True)
class NLLRequest:
    """Score ``completion`` after ``prompt`` as ``system``: its NLL sum and token count (medqa_bench.inference)."""

    system: "System"
    prompt: str
    completion: str


@dataclass(frozen=True)
class NextTokenRequest:
    """The log-probabilities of ``tokens`` as the token that comes right after ``prompt``, as ``system``. Each of
    ``tokens`` must be one token where it stands: the prompt's tokens followed by it must tokenise as the prompt's
    tokens and exactly one more (a backend refuses one that is not, with a :class:`BackendError`)."""

    system: "System"
    prompt: str
    tokens: tuple[str, ...]


@dataclass(frozen=True)
class NextTokenLogprobs:
    """``logprobs[token]``: each asked token's log-probability as the next token, the log-softmax over the whole
    vocabulary of the model's raw logits (no temperature); None where the backend could not read it (a server that
    lists only its top-k tokens without it)."""

    logprobs: dict[str, float | None]


#: ``on_result(i, value)``: called as request ``i`` finishes (the cache writes through it, so a killed run keeps it).
OnResult = Callable[[int, Any], None]


class Backend(Protocol):
    """The protocol a backend class meets. It is built as ``cls(spec, ranks=...)``: ``spec`` is the run spec
    (:class:`medqa_bench.spec.RunSpec`: the model, device, dtype, batch size, NLL context and the backend's own
    ``backend_options``); ``ranks`` is the process group under a multi-process launch (None alone). Building one
    loads nothing and connects to nothing.

    What a backend declares of itself is read by the planning stage before anything loads: ``name``,
    ``capabilities``, ``options`` and, optionally, ``check_spec``, ``loads_adapter_folders`` and
    ``served_quantization`` (below)."""

    #: The registry name.
    name: ClassVar[str]
    #: What it can do: a subset of :data:`CAPABILITIES` (and whatever later backends add). An instance may lose one
    #: when it loads (a server without prompt log-probabilities loses "nll"); the runner checks again then.
    capabilities: ClassVar[frozenset[str]]
    #: Its own options (optional; none when absent): ``spec.backend_options`` holds their values, defaults filled in,
    #: and ``medqa-bench run`` has a flag for each. A classmethod ``check_spec(spec)`` (optional) refuses what else of
    #: a spec it cannot do (an adapter reference it cannot load, say), with a :class:`~medqa_bench.errors.SpecError`
    #: or :class:`~medqa_bench.errors.AdapterError`, when the spec is made.
    options: ClassVar[tuple[BackendOption, ...]]
    #: Optional. False: its adapters are a server's, named; the planner then adds no shipped adapter folder by default.
    loads_adapter_folders: ClassVar[bool]
    #: Optional. Where a server chooses the weights: (the quantization its rows record, why, why when the user names
    #: one). None or absent: the planner puts each row on its base (medqa_bench.inference.systems.plan_systems).
    served_quantization: ClassVar[tuple[str, str, str] | None]
    #: Where inference runs ("cpu", "cuda", "cuda:1", "server", ...): sets the automatic ``--limit`` (a sample on a CPU).
    device: str

    def load(self, systems: "Sequence[System]") -> None:
        """Make the language-model ``systems`` ready to answer: load weights, attach adapters, or connect to a
        server and check that it serves them."""

    def identity(self, system: "System") -> dict[str, Any]:
        """What the system's outputs depend on besides the item (weights and adapter fingerprints, or URL + model +
        revision): the cache key's identity. After :meth:`load`."""

    @property
    def max_length(self) -> int:
        """The context completion NLL is scored in, in tokens: part of an NLL's cache key. After :meth:`load`."""

    @property
    def compute_dtype(self) -> str:
        """The dtype its NLL is computed in (``results["loss_definition"]``). After :meth:`load`."""

    def describe(self) -> dict[str, dict[str, Any]]:
        """Provenance of what answered (``results["models"]``), one entry per model it loaded or serves; the first
        is ``results["model"]``. After :meth:`load`. A backend may also have ``describe_row(system)`` (optional):
        what only it knows of one row (a served model's name), for ``results["systems"][name]``."""

    def render(self, example: "Example", system: "System", passages: "Sequence[Passage] | None" = None) -> str:
        """The prompt ``system`` is given for ``example`` in its own format (with ``passages`` when it retrieves)."""

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens in each text, as the model counts them (the references' and answers' lengths)."""

    def generate(self, requests: Sequence[GenerationRequest], *, progress: bool = False,
                 on_result: OnResult | None = None) -> "list[Generation]":
        """One :class:`~medqa_bench.inference.generation.Generation` per request, in order."""

    def completion_nll(self, requests: Sequence[NLLRequest], *, progress: bool = False,
                       on_result: OnResult | None = None) -> "list[CompletionNLL]":
        """One :class:`~medqa_bench.inference.CompletionNLL` per request, in order."""

    def next_token_logprobs(self, requests: Sequence[NextTokenRequest], *, progress: bool = False,
                            on_result: OnResult | None = None) -> list[NextTokenLogprobs]:
        """One :class:`NextTokenLogprobs` per request, in order; only a backend with the "next_token" capability
        has it (it is not among the members a backend class must have)."""

    def stream(self, request: GenerationRequest) -> "Iterator[str]":
        """Optional ("stream" capability): the answer to one request as it grows, the whole text so far at each
        step, the last one the answer :meth:`generate` gives (the chat shows it token by token)."""

    def batches(self, kind: str, requests: Sequence[Any]) -> list[list[int]]:
        """The whole batches (positions in ``requests``, one system's) the backend forms for ``kind`` ("generate" or
        "nll"), so that :class:`~medqa_bench.inference.backends.sharding.ShardedBackend` deals whole batches to the ranks and
        each item is computed in the batch it has in one process. A backend without batches returns one per item."""

    def close(self) -> None:
        """Release what :meth:`load` took (weights, connections); :meth:`count_tokens` keeps working."""


# --------------------------------------------------------------------------------------------- the registry

#: Built-in backends, as lazy "module:class" entries: listing names imports none of them.
BUILTINS: dict[str, str] = {
    "transformers": "medqa_bench.inference.backends.transformers:TransformersBackend",
    "openai": "medqa_bench.inference.backends.openai:OpenAIBackend",
}
DEFAULT_BACKEND = "transformers"
#: The entry-point group of installed backends (its name kept from before the package was laid out by stage).
ENTRY_POINT_GROUP = "medqa_bench.backends"
_MEMBERS = ("load", "identity", "describe", "render", "count_tokens", "generate", "completion_nll", "batches", "close")

_REGISTRY: Registry | None = None


def _is_backend_class(obj: Any) -> bool:
    return (isinstance(obj, type) and isinstance(getattr(obj, "capabilities", None), frozenset)
            and all(callable(getattr(obj, m, None)) for m in _MEMBERS))


def backend_registry() -> Registry:
    """Built-ins, then installed ``medqa_bench.backends`` entry points, then what :func:`register_backend` added."""
    global _REGISTRY
    if _REGISTRY is None:
        from importlib.metadata import entry_points

        reg: Registry = Registry("backend", _is_backend_class,
                                 "a backend class (the members of medqa_bench.inference.backends.Backend)", error=BackendError)
        for name, target in BUILTINS.items():
            reg.register(name, target, source="builtin")
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            reg.register(ep.name, functools.partial(ep.load), source=f"entry-point:{dist.name if dist else ep.module}",
                         provenance=f"{dist.name}={dist.version}" if dist else "", lazy=True)
        _REGISTRY = reg
    return _REGISTRY


def register_backend(name: str, target: Any, *, source: str = "register_backend") -> None:
    """Add a backend: a class, or ``"module:Class"`` (loaded when a run picks it). A taken name is refused."""
    backend_registry().register(name, target, source=source)


def backend_class(name: str) -> type:
    """The class registered as ``name``; a :class:`BackendError` answering "did you mean …" for an unknown one."""
    return backend_registry().get(name)


def create_backend(spec: Any, *, ranks: "ProcessGroup | None" = None) -> Backend:
    """The backend of ``spec`` (a :class:`medqa_bench.spec.RunSpec`; ``spec.backend`` names it), built; nothing is
    loaded yet."""
    return backend_class(spec.backend)(spec, ranks=ranks)


def check_capabilities(backend: Backend, systems: "Sequence[System]", nll_metrics: Sequence[str] = ()) -> None:
    """A :class:`BackendError` unless ``backend`` can do what the language-model ``systems`` need: generation, adapters
    for adapter rows, and completion NLL when the run asks for ``nll_metrics`` (loss, perplexity). A backend without
    NLL runs without it when none is asked for; one may say why it lacks a capability in ``limitations``."""
    needed = {"generate"} if systems else set()
    if systems and nll_metrics:
        needed.add("nll")
    if any(s.kind == "adapter" for s in systems):
        needed.add("adapters")
    missing = sorted(needed - set(backend.capabilities))
    if missing:
        why = "; ".join(getattr(backend, "limitations", {}).get(m, "") for m in missing if
                        getattr(backend, "limitations", {}).get(m))
        hint = (f"; the metrics {', '.join(nll_metrics)} need completion NLL: leave them out with --metrics (e.g. "
                "--metrics rougeL,token_f1,embedding_similarity)" if "nll" in missing else "")
        raise BackendError(f"backend '{backend.name}' cannot do what this run needs: no {', '.join(missing)} "
                           f"(it can: {', '.join(sorted(backend.capabilities)) or 'nothing'})"
                           + (f": {why}" if why else "") + hint)


def count_tokens(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Tokens in each text as ``tokenizer`` counts them, special tokens left out: the one count behind every
    backend's :meth:`Backend.count_tokens` (the budget, the references' and answers' lengths)."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def next_token_ids(tokenizer: Any, prompt: str, tokens: Sequence[str]) -> tuple[list[int], list[int]]:
    """The prompt's ids (special tokens added, as generation tokenises it) and the id of each of ``tokens`` where it
    follows the prompt; a :class:`BackendError` for a token that is not exactly one token there (a tokenizer that
    merges it with the prompt's end, or splits it)."""
    ctx = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    ids = []
    for token in tokens:
        whole = tokenizer(prompt + token, add_special_tokens=True)["input_ids"]
        if len(whole) != len(ctx) + 1 or whole[: len(ctx)] != ctx:
            end = tokenizer.convert_ids_to_tokens(whole[max(0, len(ctx) - 2):])
            raise BackendError(f"{token!r} is not one token after the prompt: the prompt's end and it tokenise as "
                               f"{end} (asked for the next token's log-probability)")
        ids.append(whole[-1])
    return list(ctx), ids


def by_system(requests: Sequence[Any]) -> "list[tuple[System, list[int]]]":
    """The requests' positions grouped by system, systems in order of first appearance."""
    groups: dict[Any, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(r.system, []).append(i)
    return list(groups.items())
