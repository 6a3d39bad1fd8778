"""A backend's generations, completion NLLs and next-token log-probabilities looked up in the cache first, computed
for what is missing: :class:`CachingBackend`, the wrapper lm-evaluation-harness calls ``CachingLM``.

The cache key of an output (:func:`medqa_bench.storage.cache.cache_key`) is the system's identity (:meth:`Backend.identity`:
for the transformers backend weight and adapter fingerprints, quantization, dtype, device type, prompt format and, for a
retrieval-augmented row, its retrieval spec and prompt template version; the passages themselves are in the prompt
text) with the item's exact prompt (and completion) and either the decoding parameters of the system's format (stop
sequences included), the context the NLL is scored in (:attr:`Backend.max_length`) or, for next-token
log-probabilities, the tokens asked for. Under ``accelerate launch`` rank 0 reads the cache and tells the other ranks,
so every rank agrees on what is left to compute.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ...storage.cache import InferenceCache, cache_key
from ..decoding import Generation
from ..nll import CompletionNLL
from . import Backend, GenerationRequest, NextTokenLogprobs, NextTokenRequest, NLLRequest, OnResult


def wrap(backend: Backend, cache: InferenceCache, ranks: Any = None) -> Backend:
    """``backend`` behind the run's cache and, under a multi-process launch (``ranks``), sharded across the processes
    (:class:`~medqa_bench.inference.backends.sharding.ShardedBackend`)."""
    from .sharding import ShardedBackend

    return CachingBackend(backend if ranks is None else ShardedBackend(backend, ranks), cache, ranks)


class CachingBackend:
    """``backend`` behind ``cache``: the same protocol, its :meth:`generate` and :meth:`completion_nll` computing only
    what the cache lacks; every other member is the backend's own."""

    def __init__(self, backend: Backend, cache: InferenceCache, ranks: Any = None):
        self.backend, self.cache, self.ranks = backend, cache, ranks

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def generate(self, requests: Sequence[GenerationRequest], *, progress: bool = False,
                 on_result: OnResult | None = None) -> list[Generation]:
        identity = self._identities(requests)
        keys = [cache_key("generate", identity[r.system],
                          {"prompt": r.prompt, "decoding": r.decoding.for_format(r.system.prompt_format)})
                for r in requests]
        return self._cached("generate", requests, keys, Generation, generation_record, self.backend.generate,
                            progress, on_result)

    def completion_nll(self, requests: Sequence[NLLRequest], *, progress: bool = False,
                       on_result: OnResult | None = None) -> list[CompletionNLL]:
        identity = self._identities(requests)
        max_length = self.backend.max_length if requests else None
        keys = [cache_key("nll", identity[r.system],
                          {"prompt": r.prompt, "completion": r.completion, "max_length": max_length})
                for r in requests]
        return self._cached("nll", requests, keys, CompletionNLL, nll_record, self.backend.completion_nll,
                            progress, on_result)

    def next_token_logprobs(self, requests: Sequence[NextTokenRequest], *, progress: bool = False,
                            on_result: OnResult | None = None) -> list[NextTokenLogprobs]:
        """The asked tokens' next-token log-probabilities (a backend with the "next_token" capability), keyed like a
        generation: the system's identity, the exact prompt and the tokens asked for."""
        identity = self._identities(requests)
        keys = [cache_key("next_token", identity[r.system], {"prompt": r.prompt, "tokens": list(r.tokens)})
                for r in requests]
        return self._cached("next_token", requests, keys, NextTokenLogprobs, next_token_record,
                            self.backend.next_token_logprobs, progress, on_result)

    def _identities(self, requests: Sequence[Any]) -> dict[Any, dict[str, Any]]:
        return {s: self.backend.identity(s) for s in dict.fromkeys(r.system for r in requests)}

    def _cached(self, kind: str, requests: Sequence[Any], keys: list[str], make: Callable[..., Any],
                record: Callable[[Any], dict[str, Any]], compute: Callable[..., list[Any]], progress: bool,
                on_result: OnResult | None) -> list[Any]:
        found = self._lookup(keys)
        out: list[Any] = [make(**found[k]) if k in found else None for k in keys]
        if on_result is not None:
            for i, value in enumerate(out):
                if value is not None:
                    on_result(i, value)
        todo = [i for i, v in enumerate(out) if v is None]
        if todo:
            def store(j: int, value: Any) -> None:  # j: a position in todo
                self.cache.put_many([(keys[todo[j]], kind, record(value))])
                if on_result is not None:
                    on_result(todo[j], value)

            fresh = compute([requests[i] for i in todo], progress=progress, on_result=store)
            for j, i in enumerate(todo):
                out[i] = fresh[j]
        return out

    def _lookup(self, keys: list[str]) -> dict[str, Any]:
        # Multi-process: rank 0 reads the cache and tells the others, so every rank agrees on what is left to do.
        if self.ranks is None:
            return self.cache.get_many(keys)
        return self.ranks.from_main(lambda: self.cache.get_many(keys))


def generation_record(g: Generation) -> dict[str, Any]:
    """A generation as the cache stores it."""
    return {"text": g.text, "generated_tokens": g.generated_tokens, "truncated": g.truncated, "stop_reason": g.stop_reason}


def nll_record(value: CompletionNLL) -> dict[str, Any]:
    """A completion NLL as the cache stores it."""
    return {"nll_sum": value.nll_sum, "nll_tokens": value.nll_tokens}


def next_token_record(value: NextTokenLogprobs) -> dict[str, Any]:
    """Next-token log-probabilities as the cache stores them."""
    return {"logprobs": dict(value.logprobs)}
