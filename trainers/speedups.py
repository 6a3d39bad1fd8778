"""Two host-side speed switches of a QLoRA run: a dequantised-weight cache and regional compilation.

On a GPU a QLoRA step of a 1B model is bound by the host, not the device: at batch 16 the H200 needs about 70 ms of
kernels a step and the host about 150 ms to issue them, about half of that inside bitsandbytes, whose 4-bit
matmul dequantises each weight in Python-driven kernels in every forward and again in every backward
(``benchmarks/RESULTS.md``). Both switches below change how the step is issued, never what it computes:

- ``training.cache_dequantized``: each frozen NF4 weight is dequantised once, with bitsandbytes' own
  ``dequantize_4bit``, to the compute dtype and kept for the run; the 4-bit layers then run a plain ``F.linear`` on
  those values, which are exactly the ones bitsandbytes would rebuild each time. The training is QLoRA's (the LoRA
  learns against the NF4-rounded base, and the saved adapter is evaluated on it), for 2 bytes per base weight of
  extra device memory (about 1.9 GiB for Llama-3.2-1B).
- ``training.compile``: each decoder layer is compiled on its own (``torch.compile``, dynamic shapes), which fuses
  the element-wise work (norms, rotary embedding, SwiGLU, residuals) and issues the layer's kernels from generated
  code; one compiled layer serves all of them. The first steps pay the compilation (about 80 s for
  Llama-3.2-1B on an H200, about 35 s for SmolLM2 on a 2-core CPU, where it was not shown to pay back). The fused
  kernels round every op's result to bf16 as eager does (Inductor's ``emulate_precision_casts``): by default
  Inductor keeps a fused kernel's intermediates in fp32, and then
  every logged training-loss window on SmolLM2 sat 0.001-0.007 below plain TRL's run of the same seed (three seeds);
  with the roundings kept the windows are within 0.0006 either side of TRL's, as TRL's own reruns are, at the same
  speed (``benchmarks/RESULTS.md``, session 14).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["COMPILE_OPTIONS", "cache_dequantized_weights", "compile_decoder_layers"]


def cache_dequantized_weights(model: Any) -> int:
    """:func:`medqa_bench.inference.models.cache_dequantized_weights` (one implementation, shared with the harness)."""
    from medqa_bench.inference.models import cache_dequantized_weights as cache

    return cache(model)


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The model's repeated blocks: transformers' ``GradientCheckpointingLayer`` instances (its decoder layers)."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # transformers before the shared layer class
        return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


# Inductor keeps a fused kernel's intermediates in fp32 unless told to round each op's result to the compute dtype as
# eager does; without it a compiled run's loss sat 0.001-0.007 below TRL's (eager) at every logged window on SmolLM2,
# with it within 0.0006 either side, as close as TRL's own reruns of one seed, at the same speed (benchmarks/RESULTS.md).
COMPILE_OPTIONS = {"emulate_precision_casts": True}


def compile_decoder_layers(model: Any) -> int:
    """``torch.compile`` each decoder layer in place (dynamic shapes: batches change length); return how many.

    The layers keep eager's bf16 roundings (``COMPILE_OPTIONS``), so they compute eager's values, not more precise ones.
    """
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True, options=dict(COMPILE_OPTIONS))
    return len(layers)
