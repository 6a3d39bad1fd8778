"""Greedy (or seeded sampled) generation in length-sorted batches, ended by EOS, a stop sequence or the budget.

Per item a :class:`~medqa_bench.inference.decoding.Generation`: the text (special tokens stripped, cut before a stop
sequence), its token count, and why it ended (``stop_reason``). :class:`~medqa_bench.inference.decoding.DecodingParams`
is how every system of a run generates (both live in :mod:`medqa_bench.inference.decoding` and import from here too).
Batching, token budgets and attention kernels are :mod:`medqa_bench.inference.nll`'s, shared with completion NLL.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from .decoding import (DEFAULT_STOP_SEQUENCES, STOP_REASONS, DecodingParams, Generation,  # noqa: F401 - their home
                       StopSequences, before_stop, eos_token_ids, finish_generation, left_padded)
from .nll import _progress, attention_kernels, default_token_budget, token_batches

#: How :func:`generate` decodes: transformers' ``model.generate`` ("generate"), the slot engine of
#: :mod:`medqa_bench.inference.decoder` on today's batches ("slots", exact mode) or with finished rows' slots refilled
#: ("refill"), or "auto": "slots" where it applies (see :func:`resolve_engine`), else "generate".
ENGINES = ("generate", "slots", "refill", "auto")


def resolve_engine(engine: str, device: Any, decoding: "DecodingParams", *, adapter_names: Any = None,
                   cache_implementation: str | None = None) -> str:
    """The engine that runs: "auto" is "slots" on CUDA for greedy decoding without repetition penalty, n-gram
    blocking, mixed adapters or a requested cache implementation, else "generate". An explicit "slots"/"refill" that
    cannot run these settings is refused."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    plain = not decoding.do_sample and decoding.repetition_penalty == 1.0 and not decoding.no_repeat_ngram_size
    if engine == "auto":
        cuda = getattr(device, "type", str(device).split(":")[0]) == "cuda"
        return "slots" if cuda and plain and adapter_names is None and cache_implementation is None else "generate"
    if engine != "generate" and (not plain or adapter_names is not None):
        raise ValueError(f"engine {engine!r} decodes greedily, one system at a time: no sampling, repetition_penalty, "
                         "no_repeat_ngram_size or adapter_names; use engine='generate'")
    return engine


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    decoding: DecodingParams = DecodingParams(max_new_tokens=256),
    *,
    batch_size: int | str = "auto",
    progress: bool = True,
    desc: str = "generate",
    on_result: Callable[[int, Generation], None] | None = None,
    cache_implementation: str | None = None,
    adapter_names: Sequence[str] | None = None,
    stop_sequences: Sequence[Sequence[str]] | None = None,
    engine: str = "generate",
    stats: dict[str, Any] | None = None,
) -> list[Generation]:
    """Greedy (or seeded sampled) generation with left padding, stopping at EOS, in length-sorted batches.

    ``stop_sequences`` (one tuple per prompt) end a generation when its new text contains one of them, as
    lm-evaluation-harness's ``generate_until``: the text is cut before the stop sequence and ``stop_reason`` is
    ``"stop"``. Each row stops on its own sequences only, so a row's output does not depend on its batch.

    ``cache_implementation="static"`` pre-allocates the KV cache, which lets transformers compile the decoding
    step (CUDA graphs): faster per token on a GPU after a first, compiling call. The text is the same as with the
    default dynamic cache up to floating-point ties.

    ``adapter_names`` (one per prompt; ``"__base__"`` for the base alone) runs several systems of a PEFT model in
    the same batches (PEFT's mixed-adapter batches): a decoding step reads the weights once for all of them, which
    is what bounds generation on a CPU.

    ``engine`` (:data:`ENGINES`, :func:`resolve_engine`): "slots" and "refill" decode on the slot cache of
    :mod:`medqa_bench.inference.decoder` (a captured decoding step on CUDA); ``cache_implementation`` does not apply
    to them. ``stats``, when given, receives the decoding steps and their padding share
    (:class:`~medqa_bench.inference.decoder.DecodeStats`; today's engine: :func:`~.decoder.batch_padding` of its
    batches).
    """
    import torch

    if decoding.max_new_tokens is None or decoding.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive number of tokens, not {decoding.max_new_tokens!r}")
    if stop_sequences is not None and len(stop_sequences) != len(prompts):
        raise ValueError("stop_sequences needs one entry per prompt")
    device = next(model.parameters()).device
    engine = resolve_engine(engine, device, decoding, adapter_names=adapter_names,
                            cache_implementation=cache_implementation)
    if engine != "generate":
        from .decoder import generate_slots

        bar = _progress(len(prompts), desc, progress)
        results, counts = generate_slots(model, tokenizer, prompts, decoding, batch_size=batch_size,
                                         stop_sequences=stop_sequences, refill=engine == "refill",
                                         on_result=on_result, progress=bar.update)
        bar.close()
        if stats is not None:
            stats.update(counts.to_dict())
        return results
    eos = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    encoded = tokenizer(list(prompts), add_special_tokens=True)["input_ids"] if prompts else []
    budget = default_token_budget(model, for_generation=True)
    lengths = [len(e) + decoding.max_new_tokens for e in encoded]
    results: list[Generation | None] = [None] * len(prompts)
    bar = _progress(len(prompts), desc, progress)
    batches = token_batches(lengths, batch_size, budget)
    with torch.inference_mode(), attention_kernels(device):
        for batch in batches:
            width = max(len(encoded[i]) for i in batch)
            rows = len(batch)
            if cache_implementation == "static":
                # One compiled decoding step serves every batch only if the shapes repeat: the prompt width is
                # rounded up to a multiple of 64 and a short last batch is filled up with copies of its first row
                # (their outputs are dropped).
                width = -(-width // 64) * 64
                if isinstance(batch_size, int):
                    rows = max(rows, batch_size)
            members = list(batch) + [batch[0]] * (rows - len(batch))
            ids, mask = left_padded(encoded, members, width, pad_id)
            kwargs: dict[str, Any] = {
                "max_new_tokens": decoding.max_new_tokens,
                "do_sample": decoding.do_sample,
                "eos_token_id": eos,
                "pad_token_id": pad_id,
            }
            if decoding.do_sample:
                torch.manual_seed(decoding.seed)
                kwargs.update(temperature=decoding.temperature, top_p=decoding.top_p)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            if decoding.repetition_penalty != 1.0:
                kwargs["repetition_penalty"] = decoding.repetition_penalty
            if decoding.no_repeat_ngram_size:
                kwargs["no_repeat_ngram_size"] = decoding.no_repeat_ngram_size
            if cache_implementation:
                kwargs["cache_implementation"] = cache_implementation
            if adapter_names is not None:
                kwargs["adapter_names"] = [adapter_names[i] for i in members]
            row_stops = [tuple(stop_sequences[i]) if stop_sequences is not None else () for i in members]
            if any(row_stops):
                from transformers import StoppingCriteriaList

                kwargs["stopping_criteria"] = StoppingCriteriaList([StopSequences(tokenizer, row_stops, width)])
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
            new = out[:, width:].cpu().tolist()
            for r, i in enumerate(batch):
                results[i] = finish_generation(tokenizer, new[r], eos, row_stops[r])
                if on_result:
                    on_result(i, results[i])
            bar.update(len(batch))
    bar.close()
    if stats is not None:  # the padding share of today's batches, in the slot engine's terms
        from .decoder import batch_padding

        stats.update(mode="generate", batches=len(batches), **batch_padding(batches, results))
    return results  # type: ignore[return-value]

