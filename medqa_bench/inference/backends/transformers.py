"""The transformers backend: a model medqa-bench loads itself, in process.

One base is loaded per quantization the rows need (:func:`medqa_bench.inference.models.load_base`, a 4-bit base with each weight
dequantised once), each adapter attached with PEFT to the base it runs on (:func:`medqa_bench.inference.models.attach_adapters`)
and made active for its rows (:func:`medqa_bench.inference.models.system_active`). Generation is
:func:`medqa_bench.inference.generation.generate`, completion NLL :func:`medqa_bench.inference.completion_nll`. In one process,
several rows of one base with LoRA adapters are generated together in mixed-adapter batches (PEFT's ``adapter_names``):
each decoding step reads the base weights once for every row instead of once per row.

A row's cache identity (:func:`identity`) is the one the harness has always keyed its cache by, so existing caches
keep serving.

The engine of :func:`medqa_bench.inference.generation.generate` (:data:`~medqa_bench.inference.generation.ENGINES`)
is "auto": the slot engine ("slots": the slot cache and a decoding step captured as CUDA graphs) on CUDA for greedy
decoding, one system at a time, and transformers' ``generate`` elsewhere, for sampling, repetition penalties and
n-gram blocking, and for mixed-adapter batches, which keep ``generate`` (on one H100 the slot engine ran the README's
headline in 100 s against 195 s with 798 of 798 answers identical: ``benchmarks/RESULTS.md``). The environment
variable ``MEDQA_BENCH_ENGINE`` ("generate", "slots", "refill", "auto") overrides it, for measurements. The engine is
not part of a row's identity, as the batch size is not: "slots" gives today's texts in float32. ``MEDQA_BENCH_ENGINE_STATS`` (a file) receives one JSON line per
row's generation (a mixed-adapter batch's rows joined by ``+``): the engine, its seconds, the decoding steps and
their padding share, and the slot engine's CUDA graphs.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from . import GenerationRequest, NextTokenRequest, NLLRequest, OnResult, by_system, count_tokens

if TYPE_CHECKING:
    from ...data.dataset import Example
    from ..models import LoadedModel
    from ...data.rag import Passage
    from ..systems import System


def identity(loaded: "LoadedModel", system: "System") -> dict[str, Any]:
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


class TransformersBackend:
    """Models loaded with transformers, adapters attached with PEFT; see the module docstring.

    ``spec`` (a :class:`medqa_bench.spec.RunSpec`) gives the model, device, dtype, batch size and NLL context; the
    rows it loads (each on its base, with its adapter folder) come from the plan, in :meth:`load`.
    """

    name = "transformers"
    capabilities = frozenset({"generate", "nll", "adapters", "next_token", "stream"})

    @classmethod
    def check_spec(cls, spec: Any) -> None:
        """An adapter is a folder here: a served LoRA module (``served:LORA``) belongs to ``--backend openai``; a
        ``MEDQA_BENCH_ENGINE`` must name an engine."""
        from ..generation import ENGINES

        engine = os.environ.get("MEDQA_BENCH_ENGINE", "")
        if engine and engine not in ENGINES:
            from ...errors import SpecError

            raise SpecError(f"MEDQA_BENCH_ENGINE={engine!r} is no generation engine; use one of {', '.join(ENGINES)}")
        for name, path in spec.adapters:
            if str(path).startswith("served:"):
                from ...errors import AdapterError

                raise AdapterError(f"adapter '{name}' is a served LoRA module ({path}): evaluate it with --backend "
                                   "openai --base-url URL --served-model NAME")

    def __init__(self, spec: Any, *, ranks: Any = None):
        self.spec, self.ranks = spec, ranks
        self.bases: dict[str, LoadedModel] = {}  # quantization -> the base loaded for it, adapters attached
        self._tokenizer: Any = None
        self._device: str | None = None

    @property
    def device(self) -> str:
        """Where the rows run: the spec's device ("auto": CUDA where there is one), or the launch's. Picked when first
        asked (it imports torch), so building the backend costs nothing."""
        if self._device is None:
            from ..models import pick_device

            self._device = pick_device(self.spec.device) if self.ranks is None else self.ranks.device
        return self._device

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (no weights loaded)."""
        if self._tokenizer is None:
            from ..models import model_tokenizer

            self._tokenizer = model_tokenizer(self.spec.model, self.ranks)
        return self._tokenizer

    def load(self, systems: "Sequence[System]") -> None:
        from ..models import attach_adapters, load_base

        for q in dict.fromkeys(s.quantization for s in systems):
            # 4-bit: each weight dequantised once (bitsandbytes' own values), not in every forward of every token
            self.bases[q] = load_base(self.spec.model, quantization=q, device=self.device, dtype=self.spec.dtype,
                                      dequantize_once=True)
            attach_adapters(self.bases[q], {s.adapter_name: s.adapter for s in systems
                                            if s.kind == "adapter" and s.quantization == q})

    def close(self) -> None:
        self.bases = {}

    # ------------------------------------------------------------------------------------------ who answers

    def identity(self, system: "System") -> dict[str, Any]:
        return identity(self.bases[system.quantization], system)

    @property
    def max_length(self) -> int:
        from ..nll import model_context_length

        first = next(iter(self.bases.values()))
        return self.spec.max_length or model_context_length(first.model, first.tokenizer)

    def describe(self) -> dict[str, dict[str, Any]]:
        return {q: b.describe() for q, b in self.bases.items()}

    @property
    def compute_dtype(self) -> str:
        return next(iter(self.bases.values())).dtype

    # ------------------------------------------------------------------------------------------ text

    def render(self, example: "Example", system: "System", passages: "Sequence[Passage] | None" = None) -> str:
        if system.retrieval is not None:
            from ...data.rag import rag_prompt

            return rag_prompt(example, system.prompt_format, self.tokenizer, passages or ())
        return example.prompt(system.prompt_format, self.tokenizer)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return count_tokens(self.tokenizer, texts)

    # ------------------------------------------------------------------------------------------ inference

    def completion_nll(self, requests: Sequence[NLLRequest], *, progress: bool = False,
                       on_result: OnResult | None = None) -> list:
        from ..nll import completion_nll
        from ..models import system_active

        out: list[Any] = [None] * len(requests)
        for system, positions in by_system(requests):
            loaded = self.bases[system.quantization]
            with system_active(loaded, system.adapter_name or "baseline") as model:
                values = completion_nll(model, loaded.tokenizer, [requests[i].prompt for i in positions],
                                        [requests[i].completion for i in positions], batch_size=self.spec.batch_size,
                                        max_length=self.max_length, progress=progress, desc=f"nll {system.name}",
                                        on_result=_at(positions, on_result))
            for i, value in zip(positions, values):
                out[i] = value
        return out

    def next_token_logprobs(self, requests: Sequence[NextTokenRequest], *, progress: bool = False,
                            on_result: OnResult | None = None) -> list:
        from ..models import system_active

        out: list[Any] = [None] * len(requests)
        for system, positions in by_system(requests):
            loaded = self.bases[system.quantization]
            with system_active(loaded, system.adapter_name or "baseline") as model:
                values = next_token_logprobs(model, loaded.tokenizer, [requests[i] for i in positions],
                                             batch_size=self.spec.batch_size, max_length=self.max_length,
                                             progress=progress, on_result=_at(positions, on_result))
            for i, value in zip(positions, values):
                out[i] = value
        return out

    def generate(self, requests: Sequence[GenerationRequest], *, progress: bool = False,
                 on_result: OnResult | None = None) -> list:
        """Each base's requests: in mixed-adapter batches when they are of several rows with LoRA adapters, else
        row after row, each with its own prompt format's stop sequences."""
        from ..generation import generate, resolve_engine
        from ..models import system_active

        engine = os.environ.get("MEDQA_BENCH_ENGINE", "") or "auto"
        out: list[Any] = [None] * len(requests)
        by_base: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            by_base.setdefault(r.system.quantization, []).append(i)
        for q, on_base in by_base.items():
            loaded, first = self.bases[q], requests[on_base[0]]
            device = next(loaded.model.parameters()).device
            # "auto" keeps mixed-adapter batches where they apply (one pass of the weights for several rows)
            mixed = (len({requests[i].system for i in on_base}) > 1 and _lora_only(loaded)
                     and all(requests[i].decoding == first.decoding for i in on_base)
                     and (engine == "auto" or resolve_engine(engine, device, first.decoding) == "generate"))
            groups = [(None, on_base)] if mixed else by_system([requests[i] for i in on_base])
            for system, part in groups:
                positions = on_base if mixed else [on_base[j] for j in part]
                reqs = [requests[i] for i in positions]
                stops = [r.decoding.stop_sequences(r.system.prompt_format) for r in reqs]
                common = dict(batch_size=self.spec.batch_size, progress=progress, on_result=_at(positions, on_result),
                              stop_sequences=stops)
                stats: dict[str, Any] = {}
                t = time.perf_counter()
                if mixed:
                    values = generate(loaded.model, loaded.tokenizer, [r.prompt for r in reqs], first.decoding,
                                      desc="generate", adapter_names=[r.system.peft_name for r in reqs],
                                      stats=stats, **common)
                    row, used = "+".join(dict.fromkeys(r.system.name for r in reqs)), "generate"
                else:
                    used = resolve_engine(engine, device, reqs[0].decoding)
                    with system_active(loaded, system.adapter_name or "baseline") as model:
                        values = generate(model, loaded.tokenizer, [r.prompt for r in reqs], reqs[0].decoding,
                                          desc=f"generate {system.name}", engine=used, stats=stats, **common)
                    row = system.name
                _record_engine(row, used, len(reqs), time.perf_counter() - t, stats)
                for i, value in zip(positions, values):
                    out[i] = value
        return out

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """The answer to one request as it grows (transformers' ``TextIteratorStreamer``): greedy, ended by EOS, the
        format's stop sequences (cut before them, as :meth:`generate` cuts) or ``max_new_tokens``; the last text is
        the whole answer, stripped."""
        import threading

        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        from ..decoding import StopSequences, before_stop, eos_token_ids
        from ..models import system_active

        system, decoding = request.system, request.decoding
        loaded = self.bases[system.quantization]
        tokenizer = loaded.tokenizer
        stops = tuple(decoding.stop_sequences(system.prompt_format))
        with system_active(loaded, system.adapter_name or "baseline") as model:
            device = next(model.parameters()).device
            ids = tokenizer(request.prompt, add_special_tokens=True, return_tensors="pt")["input_ids"]
            streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
            eos = eos_token_ids(model, tokenizer)
            kwargs: dict[str, Any] = {
                "input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
                "max_new_tokens": decoding.max_new_tokens, "do_sample": False, "temperature": None,
                "top_p": None, "top_k": None, "eos_token_id": eos,
                "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0],
                "streamer": streamer,
            }
            if stops:
                kwargs["stopping_criteria"] = StoppingCriteriaList([StopSequences(tokenizer, [stops], ids.shape[1])])
            failure: list[BaseException] = []

            def work():
                try:
                    with torch.inference_mode():
                        model.generate(**kwargs)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                    failure.append(exc)
                    streamer.end()

            thread = threading.Thread(target=work, daemon=True)
            thread.start()
            text = ""
            for piece in streamer:
                text += piece
                yield before_stop(text, stops)
            thread.join()
            if failure:
                raise failure[0]
        yield before_stop(text, stops).strip()

    def batches(self, kind: str, requests: Sequence[Any]) -> list[list[int]]:
        from ..distributed import generation_batches, nll_batches

        if not requests:
            return []
        loaded = self.bases[requests[0].system.quantization]
        prompts = [r.prompt for r in requests]
        if kind == "nll":
            return nll_batches(loaded.model, loaded.tokenizer, prompts, [r.completion for r in requests],
                               batch_size=self.spec.batch_size, max_length=self.max_length)
        return generation_batches(loaded.model, loaded.tokenizer, prompts, batch_size=self.spec.batch_size,
                                  max_new_tokens=requests[0].decoding.max_new_tokens)


def next_token_logprobs(model: Any, tokenizer: Any, requests: Sequence[NextTokenRequest], *,
                        batch_size: int | str = "auto", max_length: int | None = None, progress: bool = False,
                        on_result: OnResult | None = None) -> list:
    """Each request's tokens' log-probabilities as the token after its prompt: the float32 log-softmax of the
    model's logits at the prompt's last position, one forward pass a prompt. Prompts are batched by length, right-
    padded (causal attention never lets a real token see the padding after it, so each prompt is computed as alone),
    and the language-model head runs on the last positions only (:func:`medqa_bench.inference._scored_logits`)."""
    import torch

    from ...errors import BackendError
    from ..nll import (_progress, _scored_logits, attention_kernels, default_token_budget, nll_padding_limit,
        token_batches)
    from . import NextTokenLogprobs, next_token_ids

    encoded = [next_token_ids(tokenizer, r.prompt, r.tokens) for r in requests]
    too_long = next((len(ctx) for ctx, _ in encoded if max_length and len(ctx) > max_length), None)
    if too_long:
        raise BackendError(f"a prompt of {too_long} tokens is longer than the model's context ({max_length} tokens); "
                           "shorten it")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = token_batches([len(ctx) for ctx, _ in encoded], batch_size, default_token_budget(model),
                            nll_padding_limit(model))
    out: list[Any] = [None] * len(requests)
    bar = _progress(len(requests), "next-token log-probabilities", progress)
    try:
        with torch.inference_mode(), attention_kernels(device):
            for batch in batches:
                width = max(len(encoded[i][0]) for i in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                for row, i in enumerate(batch):
                    ids[row, : len(encoded[i][0])] = torch.tensor(encoded[i][0])
                rows = torch.arange(len(batch), device=device)
                last = torch.tensor([len(encoded[i][0]) - 1 for i in batch], device=device)
                logits = _scored_logits(model, {"input_ids": ids.to(device)}, rows, last)
                logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
                for row, i in enumerate(batch):
                    wanted = encoded[i][1]
                    out[i] = NextTokenLogprobs({t: float(logprobs[row, k]) for t, k in zip(requests[i].tokens, wanted)})
                    if on_result is not None:
                        on_result(i, out[i])
                    bar.update(1)
    finally:
        bar.close()
    return out


def _record_engine(row: str, engine: str, n: int, seconds: float, stats: dict[str, Any]) -> None:
    """With ``MEDQA_BENCH_ENGINE_STATS`` naming a file (GPU experiments), one JSON line per row's generation: the
    engine, its seconds and the slot engine's step, padding and graph counts."""
    path = os.environ.get("MEDQA_BENCH_ENGINE_STATS")
    if path:
        import json

        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"row": row, "engine": engine, "requests": n, "seconds": round(seconds, 3), **stats})
                    + "\n")


def _lora_only(loaded: "LoadedModel") -> bool:
    """Whether PEFT can run this base's rows in mixed-adapter batches: adapters attached, all of them LoRA."""
    return bool(loaded.adapters) and all(getattr(cfg, "peft_type", None) == "LORA"
                                         for cfg in getattr(loaded.model, "peft_config", {}).values())


def _at(positions: list[int], on_result: OnResult | None) -> OnResult | None:
    """``on_result`` for a part of the requests: its ``j`` is ``positions[j]`` of the whole."""
    if on_result is None:
        return None
    return lambda j, value: on_result(positions[j], value)
