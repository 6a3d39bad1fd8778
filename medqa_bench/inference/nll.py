"""Completion negative log-likelihood in batched, length-sorted passes, and the batching both it and generation use.

**Completion NLL, one definition.** For a prompt P and a reference completion C, the prompt+completion text is
tokenised once and the completion tokens are those after the prompt's tokens (lm-evaluation-harness's
``_encode_pair``: when the joint tokenisation does not extend the prompt's, P and C are tokenised apart). Per item::

    nll_sum    = - sum_{t in C} log p(t | P, C_<t)        (natural log; prompt and padding tokens masked)
    nll_tokens = |C|
    perplexity = exp(nll_sum / nll_tokens)

and over a corpus ``loss = sum nll_sum / sum nll_tokens``, ``perplexity = exp(loss)``: the mean token loss, as
the reference workflow's "Loss" and "Perplexity". Positions are computed from the attention mask, so the value
depends neither on the batch size nor on the padding side. Only the scored positions go through the model's output
layer (the LM head), and their log-softmax is taken in chunks: the same numbers as full logits, without computing
the logits of prompt and padding positions. A sequence longer than the model's context is scored
with a strided sliding window: every completion token is scored exactly once, with up to ``max_length - stride``
tokens of preceding context; nothing is silently truncated.

**What a trainer scores instead.** A supervised fine-tuning run (TRL's ``SFTTrainer``) appends the EOS token to each
completion, cuts prompt+completion to its ``max_length`` keeping the start, and finds the completion by the common
prefix of the two tokenisations. ``completion_nll(..., append_eos=True, truncation="keep_start",
boundary="common_prefix")`` scores exactly those tokens; :mod:`medqa_bench.inference.loss` turns them into the trainer's
validation loss. The defaults are the definition above.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompletionNLL:
    nll_sum: float
    nll_tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / self.nll_tokens) if self.nll_tokens else float("nan")


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=not enabled, leave=False, dynamic_ncols=True)


def token_batches(
    lengths: Sequence[int], batch_size: int | str, token_budget: int, max_padding: float | None = None
) -> list[list[int]]:
    """Indices grouped into batches, longest first. ``"auto"`` packs up to ``token_budget`` padded tokens and, with
    ``max_padding``, only items at most that fraction shorter than the batch's longest (so little is padding)."""
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
                or (max_padding is not None and width - lengths[i] > max_padding * width)
            )
            if full:
                batches.append(current)
                current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def default_token_budget(model: Any, for_generation: bool = False) -> int:
    """Padded tokens per batch under ``batch_size="auto"``: small on CPU, sized by free memory on GPU.

    On a CPU a forward pass over a few hundred tokens already keeps the matrix units busy (measured on 2 cores:
    one 512-token sequence runs as fast per token as four 128-token ones, a 32-token one at half speed), so larger
    batches only add padding and memory traffic: NLL batches hold about 512 tokens and, see
    :func:`nll_padding_limit`, items of nearly equal length. A CPU decoding step is bound by reading the weights,
    so generation batches are large (8192 tokens: prompt plus new tokens). Generation holds a KV cache per token
    and logits for the last position only. NLL scoring holds the logits of the scored positions in the model's
    dtype (their log-softmax is taken in chunks) and at most 16384 tokens: on an H100 with Llama-3.2-1B's shapes
    the matrix units are saturated at 16k tokens a batch, and larger batches only span wider length bands, i.e.
    more padding, and take more memory (measured with ``benchmarks/gpu/probe_nll.py``: 46.0% MFU at 16k tokens,
    44.1% at 32k; 6.2 and 9.8 GiB).
    """
    device = next(model.parameters()).device
    if device.type != "cuda":
        return 8192 if for_generation else 512
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
        return int(max(2048, min(0.4 * free / per_token, 1 << 20)))
    per_token = 4 * vocab + 32 * hidden * 4  # logits of a scored position (up to 4 bytes each) + activations
    return int(max(2048, min(0.4 * free / per_token, 16384)))


def nll_padding_limit(model: Any) -> float | None:
    """``max_padding`` of NLL batches under ``"auto"``: on a CPU padding costs as much as real tokens, so a batch
    takes only items within 10% of its longest; on GPU (None) the token budget alone packs the batches."""
    return None if next(model.parameters()).device.type == "cuda" else 0.1


def attention_kernels(device: Any):
    """On CUDA, scaled-dot-product attention without its cuDNN backend: cuDNN builds an execution plan for every new
    (batch, length) shape, and length-sorted batches have a new shape almost every time. Flash and memory-efficient
    attention need no plan."""
    import contextlib

    if getattr(device, "type", str(device)) != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def model_context_length(model: Any, tokenizer: Any) -> int:
    n = getattr(model.config, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", 2048)
    return int(min(n, 1 << 20))


# --------------------------------------------------------------------------------------------- encoding

BOUNDARIES = ("prompt", "common_prefix")  # where a completion starts: see encode_pair


def encode_pair(
    tokenizer: Any, prompt: str, completion: str, *, boundary: str = "prompt"
) -> tuple[list[int], list[int]]:
    """Token ids of (prompt, completion), tokenised jointly where that extends the prompt's own tokens.

    Where it does not (a token merges across the boundary, or a chat template renders the prompt alone otherwise),
    ``boundary`` decides: ``"prompt"`` keeps the prompt's tokens and tokenises the completion apart
    (lm-evaluation-harness's ``_encode_pair``); ``"common_prefix"`` cuts the joint tokenisation where it leaves the
    prompt's (TRL's SFT rule, ``common_prefix_length``): the sequence the trainer saw, its completion starting at the
    first token that differs.
    """
    return encode_pairs(tokenizer, [prompt], [completion], boundary=boundary)[0]


def encode_pairs(
    tokenizer: Any, prompts: Sequence[str], completions: Sequence[str], *, boundary: str = "prompt"
) -> list[tuple[list[int], list[int]]]:
    """:func:`encode_pair` for many items, tokenised in two batched calls (a fast tokenizer runs them in parallel)."""
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {', '.join(BOUNDARIES)}, not {boundary!r}")
    if not prompts:
        return []
    ctxs = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    wholes = tokenizer([p + c for p, c in zip(prompts, completions)], add_special_tokens=True)["input_ids"]
    return [_split_pair(tokenizer, ctx, whole, completion, boundary)
            for completion, ctx, whole in zip(completions, ctxs, wholes)]


def _split_pair(tokenizer, ctx, whole, completion, boundary) -> tuple[list[int], list[int]]:
    if len(whole) > len(ctx) and whole[: len(ctx)] == ctx:
        return list(ctx), list(whole[len(ctx):])
    if boundary == "common_prefix":
        n = next((k for k, (a, b) in enumerate(zip(ctx, whole)) if a != b), min(len(ctx), len(whole)))
        return list(whole[:n]), list(whole[n:])
    return list(ctx), list(tokenizer(completion, add_special_tokens=False)["input_ids"])


# --------------------------------------------------------------------------------------------- NLL

TRUNCATIONS = ("window", "keep_start")
#: The shortest sliding window that scores anything: one token of context and the token it predicts.
MIN_WINDOW = 2


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
    append_eos: bool = False,
    truncation: str = "window",
    boundary: str = "prompt",
) -> list[CompletionNLL]:
    """Per item NLL sum and token count of ``completions[i]`` given ``prompts[i]`` (see the module docstring).

    ``on_result(i, value)`` is called as each item finishes (the cache writes through it).

    The defaults are the harness's definition. The other values score what a supervised fine-tuning run scores
    (TRL's ``SFTTrainer``, :mod:`medqa_bench.inference.loss`): ``append_eos`` appends the tokenizer's EOS text to each
    completion (unless it already ends with it) and scores it, one token more per item; ``truncation="keep_start"``
    cuts each prompt+completion to its first ``max_length`` tokens and scores the completion tokens inside them
    (none, ``CompletionNLL(0.0, 0)``, when the prompt fills ``max_length``), where ``"window"`` scores every
    completion token with a sliding window; ``boundary`` is :func:`encode_pair`'s.
    """
    import torch

    if len(prompts) != len(completions):
        raise ValueError("prompts and completions differ in length")
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {', '.join(TRUNCATIONS)}, not {truncation!r}")
    if truncation == "window" and max_length is not None and max_length < MIN_WINDOW:
        from ..errors import SpecError

        raise SpecError(f"max_length (--max-length) is {max_length} tokens: a token is scored from the tokens before it "
                        f"in its window, so a window of 1 scores nothing; give at least {MIN_WINDOW}, or leave it unset "
                        "for the model's context length")
    if append_eos:
        eos = tokenizer.eos_token
        if not eos:
            raise ValueError("append_eos needs a tokenizer with an EOS token")
        completions = [c if c.endswith(eos) else c + eos for c in completions]
    device = next(model.parameters()).device
    max_length = max_length or model_context_length(model, tokenizer)
    stride = stride or max(1, max_length // 2)
    pairs = encode_pairs(tokenizer, prompts, completions, boundary=boundary)
    results: list[CompletionNLL | None] = [None] * len(pairs)
    cut: set[int] = set()  # keep_start: items whose completion begins at or past max_length: nothing to score
    if truncation == "keep_start":
        pairs = [(a[:max_length], b[: max(0, max_length - len(a))]) for a, b in pairs]
        cut = {i for i, (_, b) in enumerate(pairs) if not b}
    short = [i for i, (a, b) in enumerate(pairs) if len(a) + len(b) <= max_length and i not in cut]
    long = [i for i, (a, b) in enumerate(pairs) if len(a) + len(b) > max_length]
    budget = default_token_budget(model)
    bar = _progress(len(pairs), desc, progress)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.inference_mode(), attention_kernels(device):
        for i in sorted(cut):
            results[i] = CompletionNLL(0.0, 0)
            if on_result:
                on_result(i, results[i])
            bar.update(1)
        lengths = [len(pairs[i][0]) + len(pairs[i][1]) for i in short]

        def finish(idx, pending):
            sums, counts = _collect_scores(pending)
            for i, s, n in zip(idx, sums, counts):
                results[i] = CompletionNLL(s, n)
                if on_result:
                    on_result(i, results[i])
            bar.update(len(idx))

        # One batch in flight: batch k+1 is prepared and queued on the GPU before batch k's numbers are read
        # back, so the GPU does not wait for the host between batches.
        previous = None
        for batch in token_batches(lengths, batch_size, budget, nll_padding_limit(model)):
            idx = [short[j] for j in batch]
            seqs = [pairs[i][0] + pairs[i][1] for i in idx]
            starts = [len(pairs[i][0]) for i in idx]
            launched = (idx, _launch_scores(model, seqs, starts, pad_id, padding_side, device))
            if previous is not None:
                finish(*previous)
            previous = launched
        if previous is not None:
            finish(*previous)
        for i in long:
            results[i] = _sliding_window_nll(model, pairs[i][0], pairs[i][1], max_length, stride, pad_id, device)
            if on_result:
                on_result(i, results[i])
            bar.update(1)
    bar.close()
    return results  # type: ignore[return-value]


def _score_sequences(model, seqs, starts, pad_id, padding_side, device, *, full_logits: bool = False):
    """NLL sums over positions >= start of each sequence (start = first scored token), one forward pass.

    The language-model head runs on the scored positions only (:func:`_scored_logits`), and the log-softmax is
    taken in chunks of rows, never over the whole batch and vocabulary at once. ``full_logits=True`` is the plain
    path (the model's logits at every position, with the attention mask, the scored rows picked from them), kept
    as the reference the tests compare against.
    """
    return _collect_scores(_launch_scores(model, seqs, starts, pad_id, padding_side, device, full_logits=full_logits))


def _launch_scores(model, seqs, starts, pad_id, padding_side, device, *, full_logits: bool = False):
    """:func:`_score_sequences` up to the per-token NLLs; on CUDA everything is queued without waiting for the GPU
    (pinned host buffers, asynchronous copies both ways) and :func:`_collect_scores` waits for the numbers."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    rows, cols = [], []  # (row, position) of each position whose logits predict a scored token
    for r, (s, start) in enumerate(zip(seqs, starts)):
        off = width - len(s) if padding_side == "left" else 0
        ids[r, off: off + len(s)] = torch.tensor(s)
        mask[r, off: off + len(s)] = 1
        first = max(start, 1)  # position 0 has no predecessor; token t is predicted by the logits at t-1
        rows.append(torch.full((len(s) - first,), r, dtype=torch.long))
        cols.append(torch.arange(off + first - 1, off + len(s) - 1))
    rows_t, cols_t = torch.cat(rows), torch.cat(cols)
    labels = ids[rows_t, cols_t + 1]
    cuda = torch.device(device).type == "cuda"

    def put(t):
        return t.pin_memory().to(device, non_blocking=True) if cuda else t.to(device)

    inputs = {"input_ids": put(ids)}
    if padding_side == "left" or full_logits:
        # With right padding the mask can be left out: causal attention never lets a real token see the padding
        # after it and positions are 0, 1, ... as without padding, so the model takes its is_causal kernels.
        inputs["attention_mask"] = put(mask)
        inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    rows_d, cols_d = put(rows_t), put(cols_t)
    if full_logits:
        logits = model(**inputs, use_cache=False).logits[rows_d, cols_d]
    else:
        logits = _scored_logits(model, inputs, rows_d, cols_d)
    nll = _token_nll(logits, put(labels))
    if not cuda:
        return nll.cpu(), None, rows_t, len(seqs)
    host = torch.empty(nll.shape, dtype=nll.dtype, pin_memory=True)
    host.copy_(nll, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return host, done, rows_t, len(seqs)


def _collect_scores(pending) -> tuple[list[float], list[int]]:
    """Per-sequence NLL sums and token counts of a :func:`_launch_scores` result, once the GPU has them."""
    import torch

    nll, done, rows_t, n = pending
    if done is not None:
        done.synchronize()
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, rows_t, nll.double())
    counts = torch.bincount(rows_t, minlength=n)
    return [float(x) for x in sums], [int(x) for x in counts]


def _scored_logits(model, inputs, rows, cols):
    """Logits at positions ``(rows[k], cols[k])`` only: the model's hidden states of those positions go through its
    output layer (the LM head), the others never do.

    A forward pre-hook on the model's output embeddings (``get_output_embeddings()``: the LM head, or PEFT's wrapper
    of it when an adapter targets it) swaps its input ``(batch, seq, hidden)`` for the gathered rows
    ``(1, n, hidden)``; whatever the model does after the head (soft-capping, scaling, casting) still applies, as it
    acts position by position. The decoder runs as usual, with any attached adapters. A model whose forward never
    calls that module falls back to gathering from its full logits.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return model(**inputs, use_cache=False).logits[rows, cols]
    seen: list[bool] = []

    def gather(module, args, kwargs):
        seen.append(True)
        if args:
            return (args[0][rows, cols].unsqueeze(0), *args[1:]), kwargs
        return args, {**kwargs, "input": kwargs["input"][rows, cols].unsqueeze(0)}

    handle = head.register_forward_pre_hook(gather, with_kwargs=True)
    try:
        logits = model(**inputs, use_cache=False).logits
    finally:
        handle.remove()
    if not seen:  # the head was not called as a module: the logits are the full ones
        return logits[rows, cols]
    return logits[0]


def _token_nll(logits, labels, chunk: int = 1024):
    """-log p(label) per row, in float32, over ``chunk`` rows at a time (the log-softmax of one chunk at a time).

    On CUDA a compiled kernel (:func:`_fused_nll`) reads the logits once, in their own dtype, and computes the
    log-sum-exp in float32 without writing a float32 copy or a log-softmax of the rows: the same numbers up to
    summation order, a fraction of the memory traffic, which is what the LM head's large vocabulary costs here.
    """
    global _FUSED
    import torch
    import torch.nn.functional as F

    if logits.is_cuda:
        fused = _fused_nll()
        if fused is not None:
            try:
                return torch.cat([fused(logits[a: a + 8 * chunk], labels[a: a + 8 * chunk])
                                  for a in range(0, len(labels), 8 * chunk)])
            except Exception as exc:  # no Triton, or a compiler failure: the eager path gives the same numbers
                log.warning("compiled log-softmax unavailable (%s: %s); using the eager one",
                            type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                _FUSED = False
    out = torch.empty(len(labels), dtype=torch.float32, device=logits.device)
    for a in range(0, len(labels), chunk):
        out[a: a + chunk] = F.cross_entropy(logits[a: a + chunk].float(), labels[a: a + chunk], reduction="none")
    return out


_FUSED: Any = None  # the compiled NLL function; False once compiling it has failed in this process


def _nll_rows(logits, labels):
    """``-log softmax(logits)[label]`` per row as ``logsumexp(x) - x[label]`` in float32: what :func:`_fused_nll`
    compiles."""
    import torch

    x = logits.float()
    return torch.logsumexp(x, dim=-1) - x.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def _fused_nll():
    """:func:`_nll_rows` compiled (Inductor fuses the upcast into one reduction over each row, so the logits are read
    once in their own dtype); None once compiling has failed in this process."""
    global _FUSED
    if _FUSED is None:
        import torch

        _FUSED = torch.compile(_nll_rows, dynamic=True)
    return _FUSED or None


def _sliding_window_nll(model, ctx, cont, max_length, stride, pad_id, device) -> CompletionNLL:
    """Score a sequence longer than the context: windows of ``max_length`` tokens advancing by ``stride``.

    Each window scores only tokens no earlier window scored, so every completion token counts once, with at
    least ``max_length - stride`` tokens of context (Hugging Face's strided perplexity, restricted to ``cont``).
    """
    seq = ctx + cont
    total, count = 0.0, 0
    for begin, end, start in nll_windows(len(ctx), len(seq), max_length, stride):
        s, n = _score_sequences(model, [seq[begin:end]], [start - begin], pad_id, "right", device)
        total, count = total + s[0], count + n[0]
    return CompletionNLL(total, count)


def nll_windows(ctx_len: int, seq_len: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows ``(begin, end, start)`` a sequence of ``seq_len`` tokens, its completion starting at ``ctx_len``, is
    scored in: tokens ``seq[begin:end]`` go in, positions ``start .. end-1`` are scored. One window when it fits in
    ``max_length``; else :func:`_sliding_window_nll`'s strided windows, each scoring only tokens no earlier window
    scored. A backend that scores elsewhere (a server) cuts its requests with this too.

    >>> nll_windows(3, 5, 8, 4), nll_windows(2, 10, 4, 2)
    ([(0, 5, 3)], [(0, 4, 2), (2, 6, 4), (4, 8, 6), (6, 10, 8)])
    """
    scored_to = max(ctx_len, 1)  # position 0 has no predecessor
    if seq_len <= max_length:
        return [(0, seq_len, scored_to)] if seq_len > scored_to else []
    out = []
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        if end > scored_to:
            out.append((begin, end, max(scored_to, begin + 1)))
            scored_to = end
        if end == seq_len:
            break
    return out
