"""Greedy generation on a slot cache with one preallocated decoding step (issue 34): the "slots" engine of
:func:`medqa_bench.inference.generation.generate`.

Each row of the batch is a *slot* with its own position: a per-row KV cache (:class:`SlotLayer`, one per layer, in a
transformers ``Cache``) writes each row's new key and value at that row's next index, and attention reads a bucket
of the first ``kv_len`` keys under a mask ``start <= key <= pos``. Every tensor the decoding step touches is
allocated once, so on CUDA the step (``window`` of them, unrolled) is captured once per (slots, bucket) as a CUDA
graph and replayed; on the CPU the same step runs eagerly. The host sees the new tokens once per window: EOS, stop
sequences and the budget are checked there, token by token, exactly as ``generate``'s stopping criteria would have
(a row seen late only wastes steps), and each row's result is :func:`~.generation.finish_generation` of its tokens.

Two modes:

- **exact** (``refill=False``): the batches of today's ``generate`` (same length-sorted batches, same left padding);
  each batch is prefilled by the very same ``model.generate`` call (one new token), then decoded in the slot loop at
  today's positions and batch size. Same kernels and shapes as today: the texts are expected to be identical.
- **refill** (``refill=True``): a slot freed by a finished row takes the next prompt (prefilled with the other slots
  freed in the same window, left-padded among themselves), so no step waits on the longest row of a batch. Prefill
  groups differ from today's, which may change rounding.

:class:`DecodeStats` counts decoding steps and the row-steps spent on rows that had already finished (or on idle
slots): the padding share of the decoding work. :func:`batch_padding` gives the same figures for today's path.

Works with transformers 5.17 and 5.25: the layer accepts both ``update`` signatures, the cache argument's name is
read from the model's ``forward`` signature (``cache`` in 5.25, ``past_key_values`` before).
"""

from __future__ import annotations

import inspect
import logging
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
from transformers import Cache
from transformers.cache_utils import CacheLayerMixin

from .decoding import DecodingParams, Generation, StopSequences, eos_token_ids, finish_generation, left_padded
from .nll import attention_kernels, default_token_budget, token_batches

log = logging.getLogger(__name__)

#: Steps decoded between two looks of the host at the new tokens (and, on CUDA, steps in one captured graph).
WINDOW = 8
#: Attention reads the first ``kv_len`` cached positions, ``kv_len`` a multiple of this (one graph per bucket).
BUCKET = 256


@dataclass
class DecodeStats:
    """What a slot-engine call did. ``idle_row_steps``: row-steps of decoding on slots whose row had already ended
    (or on empty slots); ``padding_share`` is their share of all ``row_steps``."""

    mode: str = "exact"
    steps: int = 0  # decoding steps (forward passes over all slots), prefill not counted
    row_steps: int = 0  # steps x slots
    useful_row_steps: int = 0  # new tokens kept after the first (the first comes from the prefill)
    prefills: int = 0
    graphs: int = 0  # CUDA graphs captured
    capture_s: float = 0.0
    graph_fallback: str = ""  # why the step ran eagerly on CUDA ("" when it did not)
    seconds: float = 0.0

    @property
    def idle_row_steps(self) -> int:
        return self.row_steps - self.useful_row_steps

    @property
    def padding_share(self) -> float:
        return self.idle_row_steps / self.row_steps if self.row_steps else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "idle_row_steps": self.idle_row_steps, "padding_share": round(self.padding_share, 4)}


def batch_padding(batches: Sequence[Sequence[int]], results: Sequence[Generation]) -> dict[str, Any]:
    """Today's ``generate`` in the same terms as :class:`DecodeStats`: a batch decodes until its longest row ends
    (``max(generated_tokens) - 1`` steps after the prefill's token) and every row takes part in every step."""
    steps = row_steps = useful = 0
    for batch in batches:
        n = max(0, max(results[i].generated_tokens for i in batch) - 1)
        steps += n
        row_steps += n * len(batch)
        useful += sum(max(0, results[i].generated_tokens - 1) for i in batch)
    return {"steps": steps, "row_steps": row_steps, "useful_row_steps": useful, "idle_row_steps": row_steps - useful,
            "padding_share": round((row_steps - useful) / row_steps, 4) if row_steps else 0.0}


class SlotLayer(CacheLayerMixin):
    """One layer's keys and values, ``(slots, kv_heads, capacity, head_dim)``, preallocated: a decoding step writes
    row ``b``'s new key at ``owner.pos[b]`` and attention reads the first ``owner.kv_len`` positions of the first
    ``owner.slots`` rows (views: fixed addresses, as a captured graph needs)."""

    is_compileable = True
    is_sliding = False

    def __init__(self, keys: Any, values: Any, owner: "SlotCache"):
        super().__init__()
        self.keys, self.values, self.owner, self.is_initialized = keys, values, owner, True

    def lazy_initialization(self, key_states: Any, value_states: Any) -> None:
        pass

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any):
        # *args/**kwargs: transformers 5.17 passes cache_kwargs, 5.25 kwargs=; neither is needed here
        o = self.owner
        s, rows, pos = o.slots, o.rows[:o.slots], o.pos[:o.slots]
        self.keys[rows, :, pos] = key_states[:, :, 0]
        self.values[rows, :, pos] = value_states[:, :, 0]
        return self.keys[:s, :, :o.kv_len], self.values[:s, :, :o.kv_len]

    def get_seq_length(self) -> int:
        return 0

    def get_mask_sizes(self, query_length: Any) -> tuple[int, int]:
        return self.owner.kv_len, 0

    def get_max_length(self) -> int:
        return self.keys.shape[2]


class SlotCache:
    """Per-row-position KV cache over all layers, and the decoding state beside it (all device tensors, allocated
    once): ``pos`` (next write index of each row), ``start`` (its first real position: left padding before it),
    ``cur`` (its last token) and ``out`` (the tokens of the current window)."""

    def __init__(self, model: Any, slots: int, capacity: int, window: int, device: Any, dtype: Any):
        cfg = model.config
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        shape = (slots, kv_heads, capacity, head_dim)
        self.capacity, self.max_slots, self.window = capacity, slots, window
        self.slots, self.kv_len = slots, min(capacity, BUCKET)
        layers = [SlotLayer(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype),
                            self) for _ in range(cfg.num_hidden_layers)]
        self.layers = layers
        self.cache = Cache(layers=layers)
        new = lambda *s, **kw: torch.zeros(s, dtype=torch.long, device=device, **kw)  # noqa: E731
        self.rows = torch.arange(slots, device=device)
        self.ar = torch.arange(capacity, device=device)
        self.pos, self.start, self.cur = new(slots), new(slots), new(slots)
        self.out = new(slots, window)

    def load(self, slots: list[int], dynamic_cache: Any, width: int, lengths: list[int], first: Any) -> None:
        """Rows prefilled together (left-padded to ``width``) into ``slots``: their keys and values at ``[0, width)``."""
        idx = torch.tensor(slots, device=self.pos.device)
        for layer, src in zip(self.layers, dynamic_cache.layers):
            layer.keys[idx, :, :width] = src.keys.to(layer.keys.dtype)
            layer.values[idx, :, :width] = src.values.to(layer.values.dtype)
        self.start[idx] = torch.tensor([width - n for n in lengths], device=idx.device)
        self.pos[idx] = width
        self.cur[idx] = first.to(idx.device)

    def park(self, slot: int) -> None:
        """An empty slot: it keeps decoding (its output is ignored) from position 0."""
        self.pos[slot] = 0
        self.start[slot] = 0


def packed_gqa_sdpa(original: Callable) -> Callable:
    """transformers' ``sdpa`` attention, except that one query token of a model with grouped KV heads attends with
    its query heads packed onto the KV heads, ``(batch, heads, 1, dim) -> (batch, kv_heads, groups, dim)``, instead
    of copying every KV head ``groups`` times (``repeat_kv``): what transformers itself does from 5.25 on
    (``pack_gqa``); 5.17, the GPU image's version, copies the whole cache every decoding step. Same arithmetic, each
    query row against the same keys under the same mask; anything else goes to ``original``."""
    import torch.nn.functional as F

    def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                  scaling: float | None = None, is_causal: bool | None = None, **kwargs: Any):
        groups = getattr(module, "num_key_value_groups", 1)
        if (groups <= 1 or query.shape[2] != 1 or dropout or kwargs.get("position_bias") is not None
                or kwargs.get("softcap") is not None or kwargs.get("output_attentions")
                or (attention_mask is not None and attention_mask.shape[1] != 1)):
            return original(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                            is_causal=is_causal, **kwargs)
        batch, heads, _, dim = query.shape
        out = F.scaled_dot_product_attention(query.reshape(batch, heads // groups, groups, dim), key, value,
                                             attn_mask=attention_mask, dropout_p=0.0, scale=scaling, is_causal=False)
        return out.reshape(out.shape[0], heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None

    return attention


class _PackedAttention:
    """While it is entered, transformers' ``sdpa`` attention is :func:`packed_gqa_sdpa` of itself (the global
    attention interface's local entry, put back as it was on leaving)."""

    def __enter__(self) -> "_PackedAttention":
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as functions

        self.functions, self.had = functions, "sdpa" in functions._local_mapping
        self.before = functions._local_mapping.get("sdpa")
        functions["sdpa"] = packed_gqa_sdpa(functions["sdpa"])
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.had:
            self.functions["sdpa"] = self.before
        else:
            del self.functions["sdpa"]


def _cache_argument(model: Any) -> str:
    """The name under which this transformers version's causal LM takes the cache (``cache`` from 5.25 on)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(type(base).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class StepRunner:
    """The greedy decoding step over the first ``sc.slots`` slots, ``window`` times: eager, or replayed from a CUDA
    graph captured per (slots, kv_len) on CUDA. A failed capture warns once and runs eagerly from then on."""

    def __init__(self, model: Any, sc: SlotCache, stats: DecodeStats, graphs: bool):
        self.model, self.sc, self.stats = model, sc, stats
        self.cache_arg = _cache_argument(model)
        self.use_graphs = graphs and sc.pos.device.type == "cuda"
        self.graphs: dict[tuple[int, int], Any] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.use_graphs else None

    def _step(self, k: int) -> None:
        sc = self.sc
        s = sc.slots
        pos, start, cur = sc.pos[:s], sc.start[:s], sc.cur[:s]
        idx = sc.ar[:sc.kv_len]
        mask = ((idx[None, :] >= start[:, None]) & (idx[None, :] <= pos[:, None]))[:, None, None, :]
        logits = self.model(input_ids=cur[:, None], attention_mask=mask, position_ids=(pos - start)[:, None],
                            use_cache=True, **{self.cache_arg: sc.cache}).logits
        nxt = logits[:, -1].float().argmax(-1)  # as generate: the last logits in float32, then argmax
        sc.out[:s, k].copy_(nxt)
        cur.copy_(nxt)
        pos.add_(1).clamp_(max=sc.capacity - 1)

    def _window(self) -> None:
        for k in range(self.sc.window):
            self._step(k)

    def run_window(self) -> None:
        if self.use_graphs:
            key = (self.sc.slots, self.sc.kv_len)
            graph = self.graphs.get(key)
            if graph is None:
                graph = self._capture()
            if graph is not None:
                graph.replay()
                return
        self._window()

    def _capture(self) -> Any:
        sc = self.sc
        saved = (sc.pos.clone(), sc.cur.clone())  # warm-up steps advance the state; keys written past pos are unread
        t = time.perf_counter()
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._window()
            torch.cuda.current_stream().wait_stream(side)
            sc.pos.copy_(saved[0])
            sc.cur.copy_(saved[1])
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self._window()
        except Exception as e:  # anything in the forward that syncs the host breaks capture
            try:
                torch.cuda.synchronize()
            except Exception:  # a broken capture may leave an error pending; the restore below reports real trouble
                pass
            sc.pos.copy_(saved[0])
            sc.cur.copy_(saved[1])
            self.use_graphs = False
            self.stats.graph_fallback = f"{type(e).__name__}: {str(e)[:200]}"
            warnings.warn(f"CUDA graph capture of the decoding step failed ({self.stats.graph_fallback}); "
                          "decoding eagerly on the slot cache", RuntimeWarning, stacklevel=2)
            return None
        self.graphs[(sc.slots, sc.kv_len)] = graph
        self.stats.graphs += 1
        self.stats.capture_s += time.perf_counter() - t
        return graph


class _RowStopper:
    """Where a row ends, decided token by token as ``generate`` decides it: EOS, a stop sequence in the decoded
    window of its last tokens (:class:`~.generation.StopSequences`' test), or the budget. Rows whose window holds
    no token with a stop sequence's first character are not decoded (exact for ASCII first characters)."""

    _tables: dict[tuple[int, str], Any] = {}

    def __init__(self, tokenizer: Any, eos: Sequence[int], max_new: int, stops: Sequence[Sequence[str]]):
        self.tokenizer, self.eos, self.max_new = tokenizer, set(eos), max_new
        self.window = StopSequences(tokenizer, stops, 0).window if any(stops) else 1
        firsts = "".join(sorted({s[0] for row in stops for s in row if s}))
        self.flags = self._table(tokenizer, firsts) if firsts and all(c.isascii() and not c.isspace() for c in firsts) \
            else None

    @classmethod
    def _table(cls, tokenizer: Any, chars: str) -> list[bool]:
        key = (id(tokenizer), chars)
        if key not in cls._tables:
            pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=True)
            cls._tables[key] = [any(c in p for c in chars) for p in pieces]
        return cls._tables[key]

    def end(self, tokens: list[int], begin: int, stops: Sequence[str]) -> int | None:
        """The number of tokens the row keeps, if it ended among ``tokens[begin:]``; None if it goes on."""
        for n in range(begin + 1, len(tokens) + 1):
            if tokens[n - 1] in self.eos:
                return n
            if stops:
                tail = tokens[max(0, n - self.window):n]
                if self.flags is None or any(t >= len(self.flags) or self.flags[t] for t in tail):
                    text = self.tokenizer.decode(tail, skip_special_tokens=True)
                    if any(s in text for s in stops):
                        return n
            if n >= self.max_new:
                return n
        return None


def generate_slots(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    decoding: DecodingParams,
    *,
    batch_size: int | str = "auto",
    stop_sequences: Sequence[Sequence[str]] | None = None,
    refill: bool = False,
    slots: int | None = None,
    window: int = WINDOW,
    graphs: bool = True,
    on_result: Callable[[int, Generation], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Generation], DecodeStats]:
    """Greedy generation on the slot cache; see the module docstring. ``slots`` (refill mode): how many rows decode
    at once (default: the largest of ``generate``'s batches). ``graphs``: capture the step on CUDA."""
    if decoding.do_sample or decoding.repetition_penalty != 1.0 or decoding.no_repeat_ngram_size:
        raise ValueError("the slots engine decodes greedily without repetition_penalty or no_repeat_ngram_size; "
                         "use engine='generate'")
    if decoding.max_new_tokens is None or decoding.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive number of tokens, not {decoding.max_new_tokens!r}")
    t0 = time.perf_counter()
    stats = DecodeStats(mode="refill" if refill else "exact")
    results: list[Generation | None] = [None] * len(prompts)
    if not prompts:
        return [], stats
    device = next(model.parameters()).device
    eos = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    encoded = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    max_new = decoding.max_new_tokens
    row_stops = [tuple(stop_sequences[i]) if stop_sequences is not None else () for i in range(len(prompts))]
    stopper = _RowStopper(tokenizer, eos, max_new, row_stops)
    lengths = [len(e) + max_new for e in encoded]
    batches = token_batches(lengths, batch_size, default_token_budget(model, for_generation=True))
    n_slots = max(len(b) for b in batches) if not refill else (slots or max(len(b) for b in batches))
    capacity = max(len(e) for e in encoded) + max_new + 2 * window
    with torch.inference_mode(), attention_kernels(device), _PackedAttention():
        sc = SlotCache(model, n_slots, capacity, window, device, model.get_input_embeddings().weight.dtype)
        runner = StepRunner(model, sc, stats, graphs)
        gen_kwargs = {"max_new_tokens": 1, "do_sample": False, "eos_token_id": eos, "pad_token_id": pad_id,
                      "temperature": None, "top_p": None, "top_k": None, "return_dict_in_generate": True}

        def prefill(members: list[int], into: list[int]) -> list[int]:
            """``generate``'s own prefill of these prompts (left-padded together) into these slots; their first tokens."""
            width = max(len(encoded[i]) for i in members)
            ids, mask = left_padded(encoded, members, width, pad_id)
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **gen_kwargs)
            first = out.sequences[:, width]
            sc.load(into, out.past_key_values, width, [len(encoded[i]) for i in members], first)
            stats.prefills += 1
            return first.tolist()

        def finish(i: int, tokens: list[int], n: int) -> None:
            results[i] = finish_generation(tokenizer, tokens[:n], eos, row_stops[i])
            stats.useful_row_steps += results[i].generated_tokens - 1
            if on_result:
                on_result(i, results[i])
            if progress:
                progress(1)

        queue = [i for b in batches for i in b]  # longest first, as generate's batches
        groups = [list(b) for b in batches] if not refill else [queue]
        for group in groups:
            sc.slots = len(group) if not refill else n_slots
            pending = list(group)
            held: list[int | None] = [None] * sc.slots  # the item each slot decodes
            toks: dict[int, list[int]] = {}
            hpos = [0] * sc.slots  # host copy of pos (no sync needed to pick the bucket)

            def fill(free: list[int]) -> None:
                take = pending[:len(free)]
                del pending[:len(take)]
                into = free[:len(take)]
                if take:
                    firsts = prefill(take, into)
                    width = max(len(encoded[i]) for i in take)
                    for b, i, f in zip(into, take, firsts):
                        held[b], toks[i], hpos[b] = i, [f], width
                        end = stopper.end(toks[i], 0, row_stops[i])
                        if end is not None:  # ended on its first token: the slot is free again
                            finish(i, toks[i], end)
                            held[b] = None
                for b in free[len(take):]:
                    held[b] = None
                    sc.park(b)
                    hpos[b] = 0

            fill(list(range(sc.slots)))
            while any(h is not None for h in held) or (refill and pending):
                if refill and pending and any(h is None for h in held):
                    fill([b for b, h in enumerate(held) if h is None])
                    continue
                live = [hpos[b] for b, h in enumerate(held) if h is not None]
                sc.kv_len = min(sc.capacity, -(-(max(live) + window) // BUCKET) * BUCKET)
                runner.run_window()
                stats.steps += window
                stats.row_steps += window * sc.slots
                new = sc.out[:sc.slots].tolist()
                for b, i in enumerate(held):
                    hpos[b] = min(hpos[b] + window, sc.capacity - 1)
                    if i is None:
                        continue
                    begin = len(toks[i])
                    toks[i].extend(new[b])
                    end = stopper.end(toks[i], begin, row_stops[i])
                    if end is not None:
                        finish(i, toks[i], end)
                        held[b] = None  # the slot decodes on unread (exact mode: as generate's finished rows)
    stats.seconds = time.perf_counter() - t0
    return results, stats  # type: ignore[return-value]
