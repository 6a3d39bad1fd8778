"""What a generation is and how it ends: :class:`DecodingParams` (how every system of a run generates, its stop
sequences per prompt format: :data:`DEFAULT_STOP_SEQUENCES`), :class:`Generation` (the text, special tokens stripped
and cut before a stop sequence, its token count and ``stop_reason``), the EOS ids a model ends on, the stopping
criterion of a stop sequence, and :func:`finish_generation`, which makes a row's :class:`Generation` from its new
tokens. Every engine of :func:`medqa_bench.inference.generation.generate` (transformers' ``generate``, the slot
engine of :mod:`medqa_bench.inference.decoder`) ends its rows here, so they end alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


#: Why a generation ended: the model's end of turn, a stop sequence, or the token budget.
STOP_REASONS = ("eos", "stop", "length")


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


def left_padded(encoded: Sequence[Sequence[int]], members: Sequence[int], width: int, pad_id: int):
    """The token ids of ``members`` (positions in ``encoded``) left-padded to ``width``, and their attention mask:
    the batch both engines prefill (tensors on the CPU)."""
    import torch

    ids = torch.full((len(members), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(members), width), dtype=torch.long)
    for r, i in enumerate(members):
        ids[r, width - len(encoded[i]):] = torch.tensor(encoded[i])
        mask[r, width - len(encoded[i]):] = 1
    return ids, mask


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for src in (getattr(model, "generation_config", None), model.config):
        value = getattr(src, "eos_token_id", None) if src is not None else None
        if value is not None:
            ids.extend(value if isinstance(value, (list, tuple)) else [value])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(int(i) for i in ids))


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
