"""Greedy (or seeded sampled) generation in length-sorted batches, ended by EOS, a stop sequence or the budget.

Per item a :class:`Generation`: the text (special tokens stripped, cut before a stop sequence), its token count,
and why it ended (``stop_reason``). :class:`DecodingParams` is how every system of a run generates; its stop
sequences are per prompt format (:data:`DEFAULT_STOP_SEQUENCES`). Batching, token budgets and attention kernels
are :mod:`medqa_bench.inference`'s, shared with completion NLL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .nll import _progress, attention_kernels, default_token_budget, token_batches

#: Why a generation ended: the model's end of turn, a stop sequence, or the token budget.
STOP_REASONS = ("eos", "stop", "length")

#: How :func:`generate` decodes: transformers' ``model.generate`` ("generate"), the slot engine of
#: :mod:`medqa_bench.inference.decoder` on today's batches ("slots", exact mode) or with finished rows' slots refilled
#: ("refill"), or "auto": "slots" where it applies (see :func:`resolve_engine`), else "generate".
ENGINES = ("generate", "slots", "refill", "auto")


@dataclass(frozen=True)
class Generation:
    text: str
    generated_tokens: int  # new tokens, EOS (or the token that completed a stop sequence) included
    truncated: bool  # stopped at max_new_tokens
    stop_reason: str = ""  # "eos" | "stop" | "length" (see STOP_REASONS); "" in records made before it existed

    def __post_init__(self):
        if not self.stop_reason:
            object.__setattr__(self, "stop_reason", "length" if self.truncated else "eos")


#: Stop sequences per prompt format, as lm-evaluation-harness's ``generate_until`` has them. The reference template's
#: own markers end a generation: a base or instruct model prompted in that template otherwise goes on writing
#: ``### Question: ...`` turns of its own until the budget. A chat model ends its turn with its EOS token.
DEFAULT_STOP_SEQUENCES: dict[str, tuple[str, ...]] = {"reference": ("### Question", "### Answer"), "chat": ()}


@dataclass(frozen=True)
class DecodingParams:
    """How every system of a run generates. ``max_new_tokens=None`` is the automatic budget (the runner sets it
    from the references' lengths); ``stop`` maps a prompt format to its stop sequences (None: the defaults above).
    ``repetition_penalty`` (1.0 = off) and ``no_repeat_ngram_size`` (0 = off) are transformers' generation options,
    applied to every system of a run alike."""

    max_new_tokens: int | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: dict[str, tuple[str, ...]] | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    def __post_init__(self):
        if self.stop is not None:
            if not isinstance(self.stop, dict):
                raise ValueError("decoding.stop maps a prompt format to a list of stop sequences, e.g. {reference: ['###']}")
            unknown = [k for k in self.stop if k not in DEFAULT_STOP_SEQUENCES]
            if unknown:
                raise ValueError(f"decoding.stop: '{unknown[0]}' is not a prompt format; formats are: "
                                 f"{', '.join(DEFAULT_STOP_SEQUENCES)}")
            # one string is one sequence, not a list of characters
            object.__setattr__(self, "stop", {str(k): (v,) if isinstance(v, str) else tuple(str(x) for x in (v or ()))
                                              for k, v in self.stop.items()})

    def stop_sequences(self, prompt_format: str | None) -> tuple[str, ...]:
        """The stop sequences of a prompt format: ``stop`` when it names the format, else the default."""
        table = DEFAULT_STOP_SEQUENCES if self.stop is None else {**DEFAULT_STOP_SEQUENCES, **self.stop}
        return tuple(table.get(prompt_format or "", ()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": None if self.stop is None else {k: list(v) for k, v in self.stop.items()},
            "repetition_penalty": self.repetition_penalty,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
        }

    def for_format(self, prompt_format: str | None) -> dict[str, Any]:
        """What one system's generations depend on (its cache key and its record): the run's decoding with the
        stop sequences of that system's prompt format."""
        d = self.to_dict()
        d["stop"] = list(self.stop_sequences(prompt_format))
        return d


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for src in (getattr(model, "generation_config", None), model.config):
        value = getattr(src, "eos_token_id", None) if src is not None else None
        if value is not None:
            ids.extend(value if isinstance(value, (list, tuple)) else [value])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(int(i) for i in ids))


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
    to them. ``stats``, when given, receives the slot engine's step and padding counts.
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
    with torch.inference_mode(), attention_kernels(device):
        for batch in token_batches(lengths, batch_size, budget):
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
            ids = torch.full((rows, width), pad_id, dtype=torch.long)
            mask = torch.zeros((rows, width), dtype=torch.long)
            for r, i in enumerate(members):
                ids[r, width - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[r, width - len(encoded[i]):] = 1
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
    return results  # type: ignore[return-value]


def finish_generation(tokenizer: Any, tokens: Sequence[int], eos: Sequence[int], stops: Sequence[str] = ()) -> Generation:
    """The :class:`Generation` of one row's new tokens: cut at the first EOS, or at the first stop sequence that the
    text reaches before it (the text before the sequence is kept, the tokens up to the one that completed it are
    counted), else the whole budget was used."""
    stop = next((k for k, t in enumerate(tokens) if t in eos), None)
    kept = list(tokens) if stop is None else list(tokens[:stop])
    if stops:
        text = tokenizer.decode(kept, skip_special_tokens=True)
        hits = [(text.find(s), s) for s in stops if s and s in text]
        if hits:
            cut = min(hits)[0]
            # the shortest prefix of tokens whose text holds the stop sequence (bisection: holding it is monotone)
            lo, hi = 1, len(kept)
            while lo < hi:
                mid = (lo + hi) // 2
                if any(s in tokenizer.decode(kept[:mid], skip_special_tokens=True) for _, s in hits):
                    hi = mid
                else:
                    lo = mid + 1
            n = lo
            return Generation(text=text[:cut].strip(), generated_tokens=n, truncated=False, stop_reason="stop")
    text = tokenizer.decode(kept, skip_special_tokens=True).strip()
    if stop is not None:
        return Generation(text=text, generated_tokens=len(kept) + 1, truncated=False, stop_reason="eos")
    return Generation(text=text, generated_tokens=len(kept), truncated=True, stop_reason="length")


def before_stop(text: str, stops: Sequence[str]) -> str:
    """The text before the first stop sequence it holds (all of it when none): what a streamed answer shows.

    >>> before_stop("Fever.###Question", ["###"])
    'Fever.'
    """
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=None)
    return text if cut is None else text[:cut]


class StopSequences:
    """A ``transformers`` stopping criterion that ends each row on its own stop sequences.

    Only the newly generated text is searched (the prompt of the reference template contains its own markers),
    and only its last few tokens each step: enough to hold the longest stop sequence, with margin for tokens that
    span its boundaries.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[Sequence[str]], prompt_width: int):
        self.tokenizer, self.stops, self.prompt_width = tokenizer, [tuple(s) for s in stops], prompt_width
        longest = max((len(tokenizer(s, add_special_tokens=False)["input_ids"]) for row in self.stops for s in row),
                      default=1)
        self.window = longest + 4

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        new = input_ids.shape[1] - self.prompt_width
        if new <= 0:
            return done
        tails = input_ids[:, -min(new, self.window):].tolist()
        for r, (row, tail) in enumerate(zip(self.stops, tails)):
            if row:
                text = self.tokenizer.decode(tail, skip_special_tokens=True)
                done[r] = any(s in text for s in row)
        return done
