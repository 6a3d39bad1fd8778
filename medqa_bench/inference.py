"""Batched, length-sorted generation and completion negative log-likelihood, cached as they are produced.

**Completion NLL, one definition.** For a prompt P and a reference completion C, the prompt+completion text is
tokenised once and the completion tokens are those after the prompt's tokens (lm-evaluation-harness's
``_encode_pair``: when the joint tokenisation does not extend the prompt's, P and C are tokenised apart). Per item::

    nll_sum    = - sum_{t in C} log p(t | P, C_<t)        (natural log; prompt and padding tokens masked)
    nll_tokens = |C|
    perplexity = exp(nll_sum / nll_tokens)

and over a corpus ``loss = sum nll_sum / sum nll_tokens``, ``perplexity = exp(loss)``: the mean token loss, as
the reference workflow's "Loss" and "Perplexity". Positions are computed from the attention mask, so the value
depends neither on the batch size nor on the padding side. A sequence longer than the model's context is scored
with a strided sliding window: every completion token is scored exactly once, with up to ``max_length - stride``
tokens of preceding context; nothing is silently truncated.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    text: str
    generated_tokens: int  # new tokens, EOS included when the model stopped there
    truncated: bool  # stopped at max_new_tokens


@dataclass(frozen=True)
class CompletionNLL:
    nll_sum: float
    nll_tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / self.nll_tokens) if self.nll_tokens else float("nan")


@dataclass(frozen=True)
class DecodingParams:
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
        }


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=not enabled, leave=False, dynamic_ncols=True)


def token_batches(lengths: Sequence[int], batch_size: int | str, token_budget: int) -> list[list[int]]:
    """Indices grouped into batches, longest first. ``"auto"`` packs up to ``token_budget`` padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current:
            width = lengths[current[0]]  # longest of the batch: sorted descending
            full = (
                len(current) >= batch_size
                if isinstance(batch_size, int)
                else width * (len(current) + 1) > token_budget
            )
            if full:
                batches.append(current)
                current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def default_token_budget(model: Any, for_generation: bool = False) -> int:
    """Padded tokens per batch under ``batch_size="auto"``: small on CPU (cache-friendly), sized by free memory on GPU.

    NLL scoring holds float32 logits (and their log-softmax) for every token: about 12 x vocab bytes a token.
    Generation holds a KV cache per token and logits for the last position only.
    """
    device = next(model.parameters()).device
    if device.type != "cuda":
        return 2048 if for_generation else 4096
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    cfg = model.config
    vocab = int(getattr(cfg, "vocab_size", 32000))
    hidden = int(getattr(cfg, "hidden_size", 2048))
    layers = int(getattr(cfg, "num_hidden_layers", 16))
    heads = int(getattr(cfg, "num_attention_heads", 16))
    kv_heads = int(getattr(cfg, "num_key_value_heads", heads) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    if for_generation:
        per_token = 2 * layers * kv_heads * head_dim * 4 + 16 * hidden * 4
    else:
        per_token = 12 * vocab + 32 * hidden * 4
    return int(max(2048, min(0.4 * free / per_token, 1 << 20)))


def model_context_length(model: Any, tokenizer: Any) -> int:
    n = getattr(model.config, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", 2048)
    return int(min(n, 1 << 20))


# --------------------------------------------------------------------------------------------- encoding


def encode_pair(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """Token ids of (prompt, completion), tokenised jointly where that extends the prompt's own tokens."""
    ctx = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    whole = tokenizer(prompt + completion, add_special_tokens=True)["input_ids"]
    if len(whole) > len(ctx) and whole[: len(ctx)] == ctx:
        return list(ctx), list(whole[len(ctx):])
    return list(ctx), list(tokenizer(completion, add_special_tokens=False)["input_ids"])


# --------------------------------------------------------------------------------------------- NLL


def completion_nll(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    batch_size: int | str = "auto",
    max_length: int | None = None,
    stride: int | None = None,
    padding_side: str = "right",
    progress: bool = True,
    desc: str = "nll",
    on_result: Callable[[int, CompletionNLL], None] | None = None,
) -> list[CompletionNLL]:
    """Per item NLL sum and token count of ``completions[i]`` given ``prompts[i]`` (see the module docstring).

    ``on_result(i, value)`` is called as each item finishes (the cache writes through it).
    """
    import torch

    if len(prompts) != len(completions):
        raise ValueError("prompts and completions differ in length")
    device = next(model.parameters()).device
    max_length = max_length or model_context_length(model, tokenizer)
    stride = stride or max(1, max_length // 2)
    pairs = [encode_pair(tokenizer, p, c) for p, c in zip(prompts, completions)]
    results: list[CompletionNLL | None] = [None] * len(pairs)
    short = [i for i, (a, b) in enumerate(pairs) if len(a) + len(b) <= max_length]
    long = [i for i, (a, b) in enumerate(pairs) if len(a) + len(b) > max_length]
    budget = default_token_budget(model)
    bar = _progress(len(pairs), desc, progress)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.inference_mode():
        for batch in token_batches([len(pairs[i][0]) + len(pairs[i][1]) for i in short], batch_size, budget):
            idx = [short[j] for j in batch]
            seqs = [pairs[i][0] + pairs[i][1] for i in idx]
            starts = [len(pairs[i][0]) for i in idx]
            sums, counts = _score_sequences(model, seqs, starts, pad_id, padding_side, device)
            for i, s, n in zip(idx, sums, counts):
                results[i] = CompletionNLL(s, n)
                if on_result:
                    on_result(i, results[i])
            bar.update(len(idx))
        for i in long:
            results[i] = _sliding_window_nll(model, pairs[i][0], pairs[i][1], max_length, stride, pad_id, device)
            if on_result:
                on_result(i, results[i])
            bar.update(1)
    bar.close()
    return results  # type: ignore[return-value]


def _score_sequences(model, seqs, starts, pad_id, padding_side, device):
    """NLL sums over positions >= start of each sequence (start = first scored token), one forward pass."""
    import torch
    import torch.nn.functional as F

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    target = torch.zeros((len(seqs), width), dtype=torch.bool)
    for r, (s, start) in enumerate(zip(seqs, starts)):
        off = width - len(s) if padding_side == "left" else 0
        ids[r, off: off + len(s)] = torch.tensor(s)
        mask[r, off: off + len(s)] = 1
        target[r, off + start: off + len(s)] = True
    ids, mask, target = ids.to(device), mask.to(device), target.to(device)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    # Token t is predicted by the logits at t-1.
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    tok_logp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    scored = target[:, 1:]
    sums = (-(tok_logp * scored)).sum(-1)
    return [float(x) for x in sums.cpu()], [int(x) for x in scored.sum(-1).cpu()]


def _sliding_window_nll(model, ctx, cont, max_length, stride, pad_id, device) -> CompletionNLL:
    """Score a sequence longer than the context: windows of ``max_length`` tokens advancing by ``stride``.

    Each window scores only tokens no earlier window scored, so every completion token counts once, with at
    least ``max_length - stride`` tokens of context (Hugging Face's strided perplexity, restricted to ``cont``).
    """
    seq = ctx + cont
    scored_to = max(len(ctx), 1)  # position 0 has no predecessor
    total, count = 0.0, 0
    for begin in range(0, len(seq), stride):
        end = min(begin + max_length, len(seq))
        if end > scored_to:
            start = max(scored_to, begin + 1)
            s, n = _score_sequences(model, [seq[begin:end]], [start - begin], pad_id, "right", device)
            total, count, scored_to = total + s[0], count + n[0], end
        if end == len(seq):
            break
    return CompletionNLL(total, count)


# --------------------------------------------------------------------------------------------- generation


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for src in (getattr(model, "generation_config", None), model.config):
        value = getattr(src, "eos_token_id", None) if src is not None else None
        if value is not None:
            ids.extend(value if isinstance(value, (list, tuple)) else [value])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(int(i) for i in ids))


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    decoding: DecodingParams = DecodingParams(),
    *,
    batch_size: int | str = "auto",
    progress: bool = True,
    desc: str = "generate",
    on_result: Callable[[int, Generation], None] | None = None,
) -> list[Generation]:
    """Greedy (or seeded sampled) generation with left padding, stopping at EOS, in length-sorted batches."""
    import torch

    device = next(model.parameters()).device
    eos = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    encoded = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    budget = default_token_budget(model, for_generation=True)
    lengths = [len(e) + decoding.max_new_tokens for e in encoded]
    results: list[Generation | None] = [None] * len(prompts)
    bar = _progress(len(prompts), desc, progress)
    with torch.inference_mode():
        for batch in token_batches(lengths, batch_size, budget):
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
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
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
            new = out[:, width:].cpu().tolist()
            for r, i in enumerate(batch):
                toks = new[r]
                stop = next((k for k, t in enumerate(toks) if t in eos), None)
                kept = toks if stop is None else toks[:stop]
                results[i] = Generation(
                    text=tokenizer.decode(kept, skip_special_tokens=True).strip(),
                    generated_tokens=len(kept) + (0 if stop is None else 1),
                    truncated=stop is None,
                )
                if on_result:
                    on_result(i, results[i])
            bar.update(len(batch))
    bar.close()
    return results  # type: ignore[return-value]
