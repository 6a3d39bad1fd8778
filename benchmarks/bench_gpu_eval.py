"""Evaluation throughput on one GPU against the hardware: NLL scoring as model-FLOPs utilisation, generation in tok/s.

    python benchmarks/bench_gpu_eval.py                       # Llama-3.2-1B's shapes, random weights, bf16

The model is Llama-3.2-1B's architecture with random weights (speed does not depend on the values), in bf16, not
quantised. The items are the bundled MedQuAD symptoms items (all splits, --items of them) in the reference template.

- **NLL**: ``medqa_bench.inference.completion_nll`` with ``batch_size="auto"`` beside the plain batched loop of
  ``bench_eval.py`` (fixed batches, full-vocabulary float32 log-softmax). MFU = 2 x parameters x input tokens
  (prompt and completion) / seconds / the card's bf16 matmul rate, measured here on 8192^3 products.
- **Generation**: ``medqa_bench.inference.generation.generate``, greedy, ``--max-new-tokens``, at batch 64 with the dynamic
  and with the static KV cache (compiled by transformers; the first call, which compiles, is not timed), at
  ``batch_size="auto"``, and with the slot engine (``engine="slots"``: today's batches on a slot cache with a
  captured decoding step; ``engine="refill"``: finished rows' slots take the next items; issue 34); beside plain
  ``model.generate`` at batch 64. New tokens count what each item generated up
  to and including its EOS (padding after it is not counted).

Targets (the performance issue): NLL MFU >= 40%; generation >= 10,000 new tokens/s at batch >= 64.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def matmul_rate() -> float:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t) / 10)
    return 2 * 8192**3 / best


def timed(fn):
    """``(fn(), seconds, peak GiB)``, CUDA-synchronised at both ends, peak memory counted from the start."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    value = fn()
    torch.cuda.synchronize()
    return value, time.perf_counter() - t, torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a model folder instead of the random Llama-3.2-1B")
    ap.add_argument("--workdir", default=os.path.join("/tmp", "medqa-bench-bench"))
    ap.add_argument("--tokenizer", help="folder of the SmolLM2 tokenizer for the random model (default: the default model's)")
    ap.add_argument("--items", type=int, default=2000, help="items for NLL scoring")
    ap.add_argument("--gen-items", type=int, default=512, help="items for generation")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--skip-generation", action="store_true")
    args = ap.parse_args()

    import torch

    from bench_eval import reference_generate, reference_nll
    from bench_train import build_random_llama_1b
    from medqa_bench.data.dataset import DataSpec, load_dataset
    from medqa_bench.inference.generation import DecodingParams, generate
    from medqa_bench.inference.nll import completion_nll, encode_pair
    from medqa_bench.inference.models import load_base

    folder = args.model or str(build_random_llama_1b(Path(args.workdir) / "random-llama-3.2-1b-arch", args.tokenizer))
    lm = load_base(folder, device="cuda", dtype="bfloat16")
    model, tok = lm.model, lm.tokenizer
    n_params = sum(p.numel() for p in model.parameters())
    rate = matmul_rate()
    items = load_dataset(DataSpec(qtype="symptoms")).examples
    prompts = [e.prompt("reference", tok) for e in items]
    completions = [e.completion("reference") for e in items]
    n = min(args.items, len(items))
    pairs = [encode_pair(tok, p, c) for p, c in zip(prompts[:n], completions[:n])]
    in_tokens = sum(len(a) + len(b) for a, b in pairs)

    rows = []
    completion_nll(model, tok, prompts[:64], completions[:64], progress=False)  # warm-up
    reference_nll(model, tok, prompts[:16], completions[:16], 16, "cuda")
    ref, ref_t, ref_mem = timed(lambda: reference_nll(model, tok, prompts[:n], completions[:n], 16, "cuda"))
    ours, our_t, our_mem = timed(lambda: completion_nll(model, tok, prompts[:n], completions[:n], progress=False))
    worst = max(abs(a - b.nll_sum) / abs(a) for a, b in zip(ref, ours))
    for side, batch, s, mem in (("plain loop", 16, ref_t, ref_mem), ("medqa-bench", "auto", our_t, our_mem)):
        rows.append(("NLL scoring", side, batch, s, in_tokens / s, mem, f"MFU {2 * n_params * in_tokens / s / rate:.1%}", ref_t / s))

    g = min(args.gen_items, len(items)) if not args.skip_generation else 0
    gp = prompts[:g]
    dec = DecodingParams(max_new_tokens=args.max_new_tokens)
    variants = [(64, {}), (64, {"cache_implementation": "static"}), ("auto", {}),
                (64, {"engine": "slots"}), (64, {"engine": "refill"})] if g else []
    if g:
        reference_generate(model, tok, gp[:64], 64, 8, "cuda")  # warm-up
        ref_new, ref_gt, ref_gmem = timed(lambda: reference_generate(model, tok, gp, 64, args.max_new_tokens, "cuda"))
        ref_rate = ref_new / ref_gt
        rows.append(("generation", "plain model.generate", 64, ref_gt, ref_rate, ref_gmem, "", 1.0))
    for batch, extra in variants:
        label = "medqa-bench" + (f" ({extra['cache_implementation']} cache)" if "cache_implementation" in extra else
                                  f" ({extra['engine']} engine)" if extra else "")
        try:
            generate(model, tok, gp[:batch if isinstance(batch, int) else 64], dec, batch_size=batch, progress=False, **extra)  # compiles
            gens, s, mem = timed(lambda: generate(model, tok, gp, dec, batch_size=batch, progress=False, **extra))
        except TypeError as exc:
            print(f"skipped {label}: {exc}", file=sys.stderr)
            continue
        new = sum(x.generated_tokens for x in gens)
        rows.append(("generation", label, batch, s, new / s, mem, f"{new} new tokens", (new / s) / ref_rate))

    print(f"model {'llama-3.2-1b-arch (random)' if not args.model else args.model}, {n_params / 1e9:.3f} B parameters, bf16; "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}; bf16 matmul {rate / 1e12:.0f} TFLOP/s")
    print(f"NLL: {n} items, {in_tokens:,} input tokens; per-item agreement with the plain loop: max relative {worst:.1e}")
    print(f"generation: {g} items, max_new_tokens {args.max_new_tokens}, greedy\n")
    print("| work | side | batch | seconds | tokens/s | peak GiB | note | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for work, side, batch, s, r, mem, note, ratio in rows:
        print(f"| {work} | {side} | {batch} | {s:.2f} | {r:,.0f} | {mem:.1f} | {note} | {ratio:.2f} |")
    print("\nratio: throughput / the plain loop's. Targets: NLL MFU >= 40%; generation >= 10,000 new tokens/s at batch >= 64.")


if __name__ == "__main__":
    main()
