"""A language-model system's completion NLLs and generations, looked up in the cache first and computed (and
stored as they finish) for what is missing.

The cache key of an output is the system's identity (:func:`identity`: weight and adapter fingerprints,
quantization, dtype, device type, prompt format and, for a retrieval-augmented row, its retrieval spec and prompt
template version; the passages themselves are in the prompt text) with the item's exact prompt (and completion)
and the decoding parameters of its format (stop sequences included). ``prompts`` are keyed by
:attr:`System.prompt_key` (the format, or ``<format>+rag``). Under ``accelerate launch`` rank 0 reads the cache and
every rank computes whole batches of the single-process plan (:mod:`medqa_bench.distributed`).
"""

from __future__ import annotations

from typing import Any

from . import distributed
from .cache import InferenceCache, cache_key
from .generation import Generation, generate
from .inference import CompletionNLL, completion_nll, model_context_length
from .models import LoadedModel, system_active
from .systems import System


def identity(loaded: LoadedModel, system: System) -> dict[str, Any]:
    """What a system's outputs depend on besides the item: weights, adapter, quantization, dtype, device type and the
    prompt format (the prompt text carries it too; the format is named so the key says so). A row with retrieval adds
    its spec and the prompt template's version (the passages are in the prompt text); rows without it keep the keys
    they had before retrieval existed."""
    adapter = loaded.adapters.get(system.adapter_name) if system.adapter_name else None
    out = {
        "model": loaded.source.fingerprint,
        "adapter": adapter.fingerprint if adapter else None,
        "quantization": loaded.quantization,
        "dtype": loaded.dtype,
        "device": loaded.device.split(":")[0],
        "prompt_format": system.prompt_format,
    }
    if system.retrieval is not None:
        out["retrieval"] = system.retrieval.to_dict()
    return out


def _lookup(cache: InferenceCache, keys: list[str], ranks) -> dict[str, Any]:
    # Multi-process: rank 0 reads the cache and tells the others, so every rank agrees on what is left to do.
    return cache.get_many(keys) if ranks is None else ranks.from_main(lambda: cache.get_many(keys))


def cached_nll(loaded, system: System, prompts, completions, spec, cache, progress, ranks=None) -> list[CompletionNLL]:
    max_length = spec.max_length or model_context_length(loaded.model, loaded.tokenizer)
    ident = identity(loaded, system)
    keys = [cache_key("nll", ident, {"prompt": p, "completion": c, "max_length": max_length})
            for p, c in zip(prompts, completions)]
    found = _lookup(cache, keys, ranks)
    out: list[CompletionNLL | None] = [CompletionNLL(**found[k]) if k in found else None for k in keys]
    todo = [i for i, v in enumerate(out) if v is None]
    if todo:
        with system_active(loaded, system.adapter_name or "baseline") as model:
            def nll(part: list[int]) -> list[CompletionNLL]:  # part: positions in todo
                def store(j: int, value: CompletionNLL) -> None:
                    cache.put_many([(keys[todo[part[j]]], "nll", {"nll_sum": value.nll_sum, "nll_tokens": value.nll_tokens})])

                return completion_nll(model, loaded.tokenizer, [prompts[todo[p]] for p in part],
                                      [completions[todo[p]] for p in part], batch_size=spec.batch_size,
                                      max_length=max_length, progress=progress, desc=f"nll {system.name}",
                                      on_result=store)

            if ranks is None:
                fresh = nll(list(range(len(todo))))
            else:  # each rank scores whole batches of the single-process plan (see medqa_bench.distributed)
                plan = ranks.from_main(lambda: distributed.nll_batches(
                    model, loaded.tokenizer, [prompts[i] for i in todo], [completions[i] for i in todo],
                    batch_size=spec.batch_size, max_length=max_length))
                fresh = ranks.compute_sharded(len(todo), plan, nll)
        for j, i in enumerate(todo):
            out[i] = fresh[j]
    return out  # type: ignore[return-value]


def _generation_lookup(loaded, system: System, prompts, spec, cache, ranks) -> tuple[list[str], list[Generation | None]]:
    """The cache keys of ``system``'s generations of ``prompts``, and the cached ones (None where not cached)."""
    ident, decoding = identity(loaded, system), spec.decoding.for_format(system.prompt_format)
    keys = [cache_key("generate", ident, {"prompt": p, "decoding": decoding}) for p in prompts]
    found = _lookup(cache, keys, ranks)
    return keys, [Generation(**found[k]) if k in found else None for k in keys]


def _cached_generate(loaded, system: System, prompts, spec, cache, progress, ranks=None) -> list[Generation]:
    keys, out = _generation_lookup(loaded, system, prompts, spec, cache, ranks)
    todo = [i for i, v in enumerate(out) if v is None]
    stops = spec.decoding.stop_sequences(system.prompt_format)
    if todo:
        with system_active(loaded, system.adapter_name or "baseline") as model:
            def gen(part: list[int]) -> list[Generation]:  # part: positions in todo
                def store(j: int, g: Generation) -> None:
                    cache.put_many([(keys[todo[part[j]]], "generate", _generation_record(g))])

                return generate(model, loaded.tokenizer, [prompts[todo[p]] for p in part], spec.decoding,
                                batch_size=spec.batch_size, progress=progress, desc=f"generate {system.name}",
                                on_result=store, stop_sequences=[stops] * len(part))

            if ranks is None:
                fresh = gen(list(range(len(todo))))
            else:  # each rank generates whole batches of the single-process plan (see medqa_bench.distributed)
                plan = ranks.from_main(lambda: distributed.generation_batches(
                    model, loaded.tokenizer, [prompts[i] for i in todo], batch_size=spec.batch_size,
                    max_new_tokens=spec.decoding.max_new_tokens))
                fresh = ranks.compute_sharded(len(todo), plan, gen)
        for j, i in enumerate(todo):
            out[i] = fresh[j]
    return out  # type: ignore[return-value]


def _generation_record(g: Generation) -> dict[str, Any]:
    return {"text": g.text, "generated_tokens": g.generated_tokens, "truncated": g.truncated, "stop_reason": g.stop_reason}


def cached_generate_systems(loaded, systems: list[System], prompts, spec, cache, progress, ranks=None) -> dict[str, list[Generation]]:
    """Every language-model system's generations of its own prompts (``prompts[system.prompt_key]``). In one process
    with LoRA adapters, all systems' uncached items are generated together in mixed-adapter batches
    (:func:`generate`'s ``adapter_names``): each decoding step reads the base weights once for every system instead
    of once per system. Each row keeps its own prompt format and stop sequences. Otherwise system after system."""
    mixable = ranks is None and len(systems) > 1 and loaded.adapters and all(
        getattr(cfg, "peft_type", None) == "LORA" for cfg in getattr(loaded.model, "peft_config", {}).values())
    if not mixable:
        return {s.name: _cached_generate(loaded, s, prompts[s.prompt_key], spec, cache, progress, ranks)
                for s in systems}
    keys, out, todo = {}, {}, []
    for s in systems:
        keys[s.name], out[s.name] = _generation_lookup(loaded, s, prompts[s.prompt_key], spec, cache, None)
        todo += [(s, i) for i, v in enumerate(out[s.name]) if v is None]
    if todo:
        def store(j: int, g: Generation) -> None:
            s, i = todo[j]
            cache.put_many([(keys[s.name][i], "generate", _generation_record(g))])

        fresh = generate(loaded.model, loaded.tokenizer, [prompts[s.prompt_key][i] for s, i in todo], spec.decoding,
                         batch_size=spec.batch_size, progress=progress, desc="generate", on_result=store,
                         adapter_names=[s.peft_name for s, _ in todo],
                         stop_sequences=[spec.decoding.stop_sequences(s.prompt_format) for s, _ in todo])
        for (s, i), g in zip(todo, fresh):
            out[s.name][i] = g
    return out
